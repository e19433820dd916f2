"""The recall reranker: a cross-encoder that reads the question and a candidate turn together.

The hybrid (:class:`~afterword.memory.turns.TurnIndex`) embeds a question and a turn apart and compares the
vectors; a cross-encoder reads ``[CLS] question [SEP] speaker: turn [SEP]`` as one input, so every word of the
question attends to every word of the turn ("When did Caroline go to the support group?" against "Caroline: I
went to a LGBTQ support group yesterday"). That is too slow for every turn of a history, so it rescores the
hybrid's best :attr:`Reranker.depth` (15) only, and the final score is a blend of the two, each standardised
over those candidates::

    score = blend · z(hybrid) + z(cross-encoder)

A reranker is all-MiniLM-L6-v2 fine-tuned by ``scripts/train_recall_reranker.py``
(:mod:`afterword.memory.rerank_finetune`) on (question, evidence turn) data in LoCoMo's format: mean pooling, then
a linear head, exported as static int8 ONNX (~23 MB) with the head, ``blend`` and ``depth`` in the ``.json``
beside it. The choice is the :data:`RERANKER_ENV` variable (or ``recall(..., rerank=...)``): a path to such a
file, ``off``, or unset/``default`` for ``assets/recall_reranker.onnx`` when the package has one.

**None ships.** Trained on LoCoMo's 7 conversations it added +0.4 to +1.0 points of held-out recall@5 over the
recall encoder's hybrid (docs/benchmarks.md) for about 120 ms a question (15 candidates, p50 on 2 AMD EPYC
cores): too little for a second 23 MB model in every install. The code is here for users with more (question,
turn) data of their own. The proxy's injection path leaves a configured reranker off unless
``MemoryConfig.recall_rerank`` (its overhead budget is 15 ms).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from afterword.embed import EMBED_DIM, Embedder
from afterword.memory.turns import Turn, memory_asset

__all__ = ["Reranker", "RERANKER_ENV", "reranker_path", "get_reranker", "rerank_document", "blend_scores"]

#: Environment variable that picks the recall reranker: a path, ``off``, or unset/``default`` (the assets' one, if any).
RERANKER_ENV = "AFTERWORD_RECALL_RERANKER"
RERANKER_FILE = "recall_reranker.onnx"
#: How many of the hybrid's best turns are rescored when the ``.json`` does not say.
DEPTH = 15


def rerank_document(turn: Turn) -> str:
    """What the cross-encoder reads of a turn: ``speaker: text`` (the question names speakers)."""
    return f"{turn.speaker}: {turn.text}" if turn.speaker else turn.text


def reranker_path(choice: str | bool | None = None) -> Path | None:
    """The reranker's ONNX file, or ``None`` for no reranking.

    ``choice``: a path, ``False``/``"off"``, or ``True``/``"default"``/empty for ``assets/recall_reranker.onnx``
    (``None`` while the package has none, as it ships); ``None`` reads the :data:`RERANKER_ENV` variable."""
    if choice is False:
        return None
    raw = (os.environ.get(RERANKER_ENV, "") if choice is None else "" if choice is True else str(choice)).strip()
    if raw.lower() in ("off", "none", "0", "false"):
        return None
    return memory_asset(raw, RERANKER_ENV, RERANKER_FILE, "off")


def _z(x: np.ndarray) -> np.ndarray:
    return (x - x.mean()) / (x.std() + 1e-9)


def blend_scores(hybrid: np.ndarray, cross: np.ndarray, blend: float) -> np.ndarray:
    """``blend · z(hybrid) + z(cross)`` over one question's candidates."""
    return blend * _z(np.asarray(hybrid, np.float64)) + _z(np.asarray(cross, np.float64))


class Reranker:
    """A cross-encoder ONNX file (a MiniLM-L6 export, as :class:`~afterword.embed.Embedder` runs) and its head."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        meta = self.path.with_suffix(".json")
        try:
            info = json.loads(meta.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"{meta}: a reranker needs its .json (head, blend) beside the ONNX file") from exc
        except ValueError as exc:
            raise ValueError(f"{meta}: not valid JSON ({exc})") from exc
        self.info: dict[str, Any] = info if isinstance(info, dict) else {}
        try:
            head = np.asarray(self.info["head"], dtype=np.float32)
            self.bias = float(self.info.get("bias", 0.0))
            self.blend = float(self.info.get("blend", 1.0))
            self.depth = int(self.info.get("depth", DEPTH))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{meta}: field 'head' must be a list of {EMBED_DIM} numbers") from exc
        if head.shape != (EMBED_DIM,):
            raise ValueError(f"{meta}: field 'head' must be a list of {EMBED_DIM} numbers, not {head.shape}")
        self.head = head
        self.embedder = Embedder(model_path=self.path)

    def scores(self, query: str, documents: Sequence[str]) -> np.ndarray:
        """The cross-encoder's relevance logit of each document for ``query``."""
        if not documents:
            return np.zeros(0)
        return (self.embedder.encode_pairs([(query, d) for d in documents]) @ self.head + self.bias).astype(np.float64)

    def rerank(self, query: str, documents: Sequence[str], hybrid: np.ndarray) -> np.ndarray:
        """Blended scores of the candidates ``documents`` (whose hybrid scores are ``hybrid``)."""
        if len(documents) < 2:
            return np.asarray(hybrid, np.float64)
        return blend_scores(hybrid, self.scores(query, documents), self.blend)


@functools.lru_cache(maxsize=4)
def get_reranker(path: Path) -> Reranker:
    """One loaded :class:`Reranker` per file (loading an ONNX session takes ~0.2 s)."""
    return Reranker(path)
