"""Static int8 quantisation of the judge's MiniLM encoders, calibrated on representative text.

Three ways to run a MiniLM-L6 in int8 on CPU were measured here (``docs/benchmarks.md``,
Throughput):

- *weight-only* (``MatMulNBits``, int8 weights, float compute): exact in any batch, but no
  faster than float on a CPU with int8 dot-product instructions (about 260 pairs/s on 2 cores);
- *dynamic* (``quantize_dynamic``): about 650 pairs/s, but every batch scales its activations by
  its own range, so a text's vector moves with whatever else is in its batch;
- *static* (this module): each weight MatMul's input is quantised with a fixed scale and zero
  point, measured once (MinMax) over calibration text, and its weights per output channel
  (symmetric int8). 720 to 870 pairs/s with the graph fixes below (before the bias folding and
  the unfused layer norms of ``afterword.embed``, which add about a quarter), and a text's
  vector no longer depends on its batch.

Only the weight MatMuls are quantised (Q, K, V, attention output, the two feed-forward layers),
and their outputs stay float (``OpTypesToExcludeOutputQuantization``), so onnxruntime fuses each
into one ``MatMulIntegerToFloat``; attention scores, softmax, GELU and layer norms stay float.
The token-embedding table is int8 per tensor (a lookup: no activation is quantised). After
``quantize_static`` three rewrites: :func:`keep_float_elsewhere` (the residual stream stays
float), :func:`drop_nan_guards` (an attention guard that cannot fire here) and
:func:`fold_biases` (each int8 MatMul adds its own bias). Against the float model
the vectors keep a cosine of 0.9986 on average, 0.987 at worst, over 2,000 MWOZ test pairs.

Needs ``onnx`` (the ``train`` extra) to build a model; running one needs onnxruntime only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CALIBRATION_SIZE",
    "calibration_batches",
    "dequantize_weights",
    "drop_nan_guards",
    "fold_biases",
    "keep_float_elsewhere",
    "quantize_embedding_tables",
    "quantize_static_int8",
    "quiet_quantizer",
]

#: Calibration inputs used for the shipped encoders (more changed no range noticeably).
CALIBRATION_SIZE = 2000


@contextlib.contextmanager
def quiet_quantizer() -> Iterator[None]:
    """onnxruntime's quantisers log a line per node (INFO) and advice to pre-process (root WARNING)."""
    loggers = [logging.getLogger(), logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def calibration_batches(
    inputs: Sequence[str | tuple[str, str]], batch_size: int = 64, limit: int | None = CALIBRATION_SIZE, seed: int = 0
) -> list[dict[str, np.ndarray]]:
    """Model feeds for ``inputs`` (texts, or pairs for a pair encoder), batched as
    :class:`afterword.embed.Embedder` batches them at run time: by token count, so little padding.
    At most ``limit`` inputs, drawn at random (``seed``) when there are more."""
    from afterword.embed import load_tokenizer

    chosen = list(inputs)
    if limit is not None and len(chosen) > limit:
        chosen = random.Random(seed).sample(chosen, limit)
    tok = load_tokenizer()
    encs = tok.encode_batch([x if isinstance(x, str) else (x[0] or " ", x[1] or " ") for x in chosen])
    encs.sort(key=lambda e: len(e.ids))
    feeds = []
    for start in range(0, len(encs), batch_size):
        chunk = encs[start : start + batch_size]
        width = max(len(e.ids) for e in chunk)
        ids = np.zeros((len(chunk), width), dtype=np.int64)
        types = np.zeros_like(ids)
        mask = np.zeros_like(ids)
        for row, e in enumerate(chunk):
            n = len(e.ids)
            ids[row, :n] = e.ids
            types[row, :n] = e.type_ids
            mask[row, :n] = 1
        feeds.append({"input_ids": ids, "attention_mask": mask, "token_type_ids": types})
    return feeds


def dequantize_weights(model: Any) -> Any:
    """``model`` (an ``onnx.ModelProto``) with every ``MatMulNBits`` turned back into a float MatMul
    (plus its bias Add), with exactly the weights the int8 blocks held: the float model that the
    weight-only export computes, ready to be quantised another way."""
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    nodes, drop, added = [], set(), []
    for node in model.graph.node:
        if node.op_type != "MatMulNBits":
            nodes.append(node)
            continue
        at = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        k, n, block, bits = at["K"], at["N"], at["block_size"], at["bits"]
        if len(node.input) > 3 and node.input[3]:
            raise ValueError(f"MatMulNBits node {node.name!r} has zero points; only symmetric weights are handled")
        q = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32).reshape(n, -1, block)
        scales = numpy_helper.to_array(inits[node.input[2]]).astype(np.float32).reshape(n, -1)
        w = ((q - 2 ** (bits - 1)) * scales[:, :, None]).reshape(n, -1)[:, :k].T.copy()
        name = node.input[1] + "_float"
        added.append(numpy_helper.from_array(w, name))
        drop.update(node.input[1:3])
        bias = node.input[5] if len(node.input) > 5 and node.input[5] else None
        out = node.output[0]
        if bias:
            nodes.append(helper.make_node("MatMul", [node.input[0], name], [out + "_nobias"], name=node.name))
            nodes.append(helper.make_node("Add", [out + "_nobias", bias], [out], name=node.name + "_bias"))
        else:
            nodes.append(helper.make_node("MatMul", [node.input[0], name], [out], name=node.name))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    keep = [i for i in model.graph.initializer if i.name not in drop]
    del model.graph.initializer[:]
    model.graph.initializer.extend([*keep, *added])
    return model


def keep_float_elsewhere(model: Any) -> Any:
    """Let only the MatMuls read the quantised copy of an activation: the quantiser hands every
    consumer of a quantised tensor its dequantised copy, so the residual stream (the Adds and
    layer norms that also read a layer norm's output) ran through uint8 as well, and paid a
    DequantizeLinear for it. Other consumers get the float tensor back; unused DQ nodes go."""
    weights = {i.name for i in model.graph.initializer}
    quantized = {
        n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in weights
    }
    float_of = {
        n.output[0]: quantized[n.input[0]]
        for n in model.graph.node
        if n.op_type == "DequantizeLinear" and n.input[0] in quantized
    }
    for node in model.graph.node:
        if node.op_type == "MatMul":
            continue
        for i, name in enumerate(node.input):
            if name in float_of:
                node.input[i] = float_of[name]
    return _prune(model)


def drop_nan_guards(model: Any) -> Any:
    """Remove ``Where(IsNaN(p), 0, p)`` after each attention softmax: torch's SDPA export guards
    against a query that may attend to nothing (its softmax row is NaN). The mask here only
    hides padded *keys*, and every input keeps its [CLS] and [SEP] tokens, so no row is empty
    and the guard, two passes over every (batch, 12, tokens, tokens) score tensor, changes
    nothing (the tests compare outputs with and without it)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    replace: dict[str, str] = {}
    dead: set[int] = set()
    for node in model.graph.node:
        if node.op_type != "Where" or len(node.input) != 3:
            continue
        cond = producer.get(node.input[0])
        if cond is not None and cond.op_type == "IsNaN" and cond.input[0] == node.input[2]:
            replace[node.output[0]] = node.input[2]
            dead.update({id(node), id(cond)})
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name in replace:
                node.input[i] = replace[name]
    keep = [n for n in model.graph.node if id(n) not in dead]
    del model.graph.node[:]
    model.graph.node.extend(keep)
    return _prune(model)


def fold_biases(model: Any) -> Any:
    """Give each quantised MatMul its bias: ``MatMul(DQ(x_q), DQ(w_q)) + b`` becomes one
    ``com.microsoft.MatMulIntegerToFloat(x_q, w_q, scales, zero points, b)``, which adds ``b`` as
    it writes its float output. onnxruntime's own QDQ rewrite builds that node without the bias
    and keeps the Add, one more pass over every MatMul's output (30 Adds on a MiniLM-L6: 7 % of
    the encoder's time here; the first feed-forward layer's Add went into ``BiasGelu`` and now
    goes here instead). A MatMul without such an Add is left for onnxruntime to fuse."""
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    readers: dict[str, list[Any]] = {}
    for n in model.graph.node:
        for name in n.input:
            readers.setdefault(name, []).append(n)
    swap: dict[int, Any] = {}
    gone: set[int] = set()
    for node in model.graph.node:
        if node.op_type != "MatMul":
            continue
        x, w = (producer.get(name) for name in node.input)
        if x is None or w is None or x.op_type != "DequantizeLinear" or w.op_type != "DequantizeLinear":
            continue
        if w.input[0] not in inits or len(x.input) < 3 or len(w.input) < 3:
            continue
        users = readers.get(node.output[0], [])
        if len(users) != 1 or users[0].op_type != "Add":
            continue
        add = users[0]
        bias = next(name for name in add.input if name != node.output[0])
        if bias not in inits or numpy_helper.to_array(inits[bias]).ndim != 1:
            continue
        swap[id(node)] = helper.make_node(
            "MatMulIntegerToFloat",
            [x.input[0], w.input[0], x.input[1], w.input[1], x.input[2], w.input[2], bias],
            [add.output[0]],
            name=node.name + "_bias",
            domain="com.microsoft",
        )
        gone.add(id(add))
    nodes = [swap.get(id(n), n) for n in model.graph.node if id(n) not in gone]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    if swap and not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return _prune(model)


def _prune(model: Any) -> Any:
    """Drop nodes and initializers nothing reads any more."""
    outputs = {o.name for o in model.graph.output}
    while True:
        used = {i for n in model.graph.node for i in n.input} | outputs
        keep = [n for n in model.graph.node if any(o in used for o in n.output)]
        if len(keep) == len(model.graph.node):
            break
        del model.graph.node[:]
        model.graph.node.extend(keep)
    inits = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(inits)
    return model


def quantize_embedding_tables(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Write ``src`` to ``dst`` with its embedding tables int8 per tensor (``quantize_dynamic`` of
    the Gathers: a lookup, so no activation is quantised). Both int8 formats start here."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=["Gather"])


def quantize_static_int8(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    calibration: Sequence[str | tuple[str, str]],
    keep_float: Sequence[str] = (),
) -> Path:
    """Write ``src`` (a float MiniLM ONNX graph, or one with ``MatMulNBits`` weights, which is
    dequantised first) to ``dst`` with its weight MatMuls statically quantised (see the module
    docstring), calibrated on ``calibration`` (at most :data:`CALIBRATION_SIZE` of them, drawn
    at random). A float embedding table is made int8 as well. MatMuls whose node name contains
    one of ``keep_float`` stay float (for sensitivity studies). The write is atomic."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    feeds = calibration_batches(calibration)
    if not feeds:
        raise ValueError("static quantisation needs calibration inputs")

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    out = Path(dst)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, quiet_quantizer():
        model = onnx.load(str(src))
        if any(n.op_type in ("QuantizeLinear", "DynamicQuantizeLinear") for n in model.graph.node):
            raise ValueError(
                f"{src}: its activations are quantised already; give the float or weight-only (MatMulNBits) model"
            )
        if any(n.op_type == "MatMulNBits" for n in model.graph.node):
            model = dequantize_weights(model)
        float_path = Path(tmp) / "float.onnx"
        onnx.save(model, str(float_path))
        if not any(n.op_type == "DequantizeLinear" for n in model.graph.node):  # a float embedding table
            gathered = Path(tmp) / "gather_int8.onnx"
            quantize_embedding_tables(float_path, gathered)
            float_path = gathered
            model = onnx.load(str(float_path))
        weights = {i.name for i in model.graph.initializer}
        matmuls = [
            n.name
            for n in model.graph.node
            if n.op_type == "MatMul" and n.input[1] in weights and not any(k in n.name for k in keep_float)
        ]
        final = Path(tmp) / "static.onnx"
        quantize_static(
            str(float_path),
            str(final),
            _Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul"],
            nodes_to_quantize=matmuls,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={
                "ActivationSymmetric": False,
                "WeightSymmetric": True,
                "OpTypesToExcludeOutputQuantization": ["MatMul"],
            },
        )
        part = out.with_suffix(out.suffix + ".part")  # same folder as ``out``, so the rename is atomic
        onnx.save(fold_biases(drop_nan_guards(keep_float_elsewhere(onnx.load(str(final))))), str(part))
        os.replace(part, out)
    return out
