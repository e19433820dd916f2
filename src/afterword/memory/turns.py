"""Episodic retrieval over raw conversation turns (what LoCoMo measures).

Lessons and preferences are distilled memories; sometimes the evidence is
just something said in a past session ("when did Caroline go to the support
group?"). :class:`TurnIndex` indexes one user's turns for that, in process:

- each turn is embedded once, as ``"Speaker: text"``; its *context vector* is
  the normalised sum of its own and its neighbours' vectors in the same
  session (the ±1 window, with no extra encoding);
- BM25 (light stemming) runs over the turn and over its window;
- hybrid score = mean cosine of turn and context vectors + ``lexical_weight``
  × (turn BM25 + ½ window BM25, each scaled by its best score);
- then *neighbour smoothing*: a turn gains ``smoothing`` × the best score of
  its session neighbours, because an answer often sits one turn after the
  question that names the topic.

``mode="dense"`` and ``mode="bm25"`` are the single-signal baselines
(turn cosine only, turn BM25 only).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from afterword.embed import get_embedder
from afterword.memory.index import BM25

__all__ = ["Turn", "TurnIndex"]


@dataclass
class Turn:
    id: str
    session: str
    speaker: str
    text: str


class TurnIndex:
    """One user's turns, searchable by hybrid, dense-only or BM25-only scoring."""

    def __init__(
        self,
        turns: Sequence[Turn],
        vectors: np.ndarray | None = None,
        *,
        lexical_weight: float = 0.3,
        smoothing: float = 0.3,
    ) -> None:
        self.turns = list(turns)
        self.lexical_weight = lexical_weight
        self.smoothing = smoothing
        texts = [f"{t.speaker}: {t.text}" for t in self.turns]
        self.vecs = vectors if vectors is not None else get_embedder().encode(texts)
        n = len(self.turns)
        self.prev = np.array(
            [i - 1 if i > 0 and self.turns[i - 1].session == t.session else -1 for i, t in enumerate(self.turns)]
        )
        self.next = np.array(
            [i + 1 if i + 1 < n and self.turns[i + 1].session == t.session else -1 for i, t in enumerate(self.turns)]
        )
        ctx = self.vecs.copy()
        for nb in (self.prev, self.next):
            has = nb >= 0
            ctx[has] += self.vecs[nb[has]]
        self.ctx = ctx / np.clip(np.linalg.norm(ctx, axis=1, keepdims=True), 1e-12, None)
        self.bm_turn = BM25()
        self.bm_win = BM25()
        for i, text in enumerate(texts):
            window = [texts[j] for j in (self.prev[i], i, self.next[i]) if j >= 0]
            self.bm_turn.add(str(i), "", text)
            self.bm_win.add(str(i), "", " ".join(window))

    def __len__(self) -> int:
        return len(self.turns)

    def _bm(self, bm: BM25, query: str) -> np.ndarray:
        out = np.zeros(len(self.turns), dtype=np.float32)
        for i, s in bm.search(query, [""], len(self.turns)):
            out[int(i)] = s
        return out

    def scores(self, query: str, qvec: np.ndarray | None = None, mode: str = "hybrid") -> np.ndarray:
        if mode == "bm25":
            return self._bm(self.bm_turn, query)
        q = qvec if qvec is not None else get_embedder().encode_one(query)
        if mode == "dense":
            return self.vecs @ q
        s = (self.vecs @ q + self.ctx @ q) / 2
        for bm, w in ((self.bm_turn, 1.0), (self.bm_win, 0.5)):
            b = self._bm(bm, query)
            if b.max() > 0:
                s = s + self.lexical_weight * w * b / b.max()
        best_nb = np.full(len(s), -np.inf)
        for nb in (self.prev, self.next):
            has = nb >= 0
            best_nb[has] = np.maximum(best_nb[has], s[nb[has]])
        return s + self.smoothing * np.where(np.isfinite(best_nb), best_nb, 0.0)

    def search(
        self, query: str, k: int = 10, mode: str = "hybrid", qvec: np.ndarray | None = None
    ) -> list[tuple[Turn, float]]:
        s = self.scores(query, qvec, mode)
        top = np.argsort(-s, kind="stable")[:k]
        return [(self.turns[i], float(s[i])) for i in top]
