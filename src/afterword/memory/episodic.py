"""Episodic memory: recall what was said in a user's earlier conversations ("when did I go to the support group?").

Lessons and preferences are distilled memories; sometimes the answer is just
one turn of a past session. :func:`recall` searches every stored turn of one
user (both sides of each conversation) with the hybrid
:class:`~afterword.memory.turns.TurnIndex`: dense and BM25 scores of the turn
and its neighbours, its session, the speaker and the date the question names,
in a learned blend. Turns and questions are embedded by the recall encoder
(:func:`~afterword.memory.turns.recall_encoder_path`: by default MiniLM
fine-tuned on question→turn pairs, the general MiniLM with
``AFTERWORD_RECALL_ENCODER=general``; each keeps its own cached index). The
hybrid's best turns can then be rescored by a recall reranker, a cross-encoder
(:mod:`afterword.memory.rerank`; none ships, ``AFTERWORD_RECALL_RERANKER`` or
``rerank=`` names one). This
is the retrieval the LoCoMo benchmark measures
(``afterword bench locomo``): the benchmark imports the file into a store and
asks through this function.

A user's index is built on first use (each turn embedded once) and kept in
process, keyed by the store and the user. Every call first reads a
fingerprint of the user's messages (count, newest id and time) from the store
and rebuilds the index when it moved, re-embedding only the turns it has not
seen; so a message logged a moment ago is found, and a forgotten user's turns
are gone from the next call on (:func:`drop` also frees them at once, and
``forget`` calls it).

Only the user whose id is given is searched; there is no global scope for
raw turns. The first call for a user embeds all of their turns (about 1,400 a
second on the 2-core development machine with the default static int8 encoder,
400 with the general MiniLM; at most :data:`MAX_TURNS`, the latest), so a proxy whose memory
timeout is shorter goes on without recall for that request while the index
finishes for the next one.
"""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import sqlalchemy as sa

from afterword.embed import EMBED_DIM, get_embedder
from afterword.memory.rerank import get_reranker, rerank_document, reranker_path
from afterword.memory.turns import Turn, TurnIndex, encoder_document, recall_encoder_path, turn_documents
from afterword.store import schema as t
from afterword.store.store import Store, aware

__all__ = ["RecalledTurn", "recall", "user_turn_index", "drop"]

Mode = Literal["hybrid", "dense", "bm25"]

#: How many users' indexes stay in memory (least recently used dropped first).
CACHE_USERS = 32
#: Only a user's latest turns are searched (by conversation start): ~75 MB of vectors at most per user.
MAX_TURNS = 50_000


@dataclass
class RecalledTurn:
    """One earlier turn: where it was said, by whom, when, and how well it matched."""

    message_id: str
    conversation_id: str
    role: str
    speaker: str
    text: str
    created_utc: datetime | None
    score: float
    cosine: float
    metadata: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {
            **{k: v for k, v in self.__dict__.items() if k != "created_utc"},
            "created_utc": self.created_utc.isoformat() if self.created_utc else None,
        }


@dataclass
class _Entry:
    fingerprint: tuple[Any, ...]
    index: TurnIndex
    rows: list[Any]  # message rows, in index order
    vectors: dict[tuple[str, str], np.ndarray]  # (message id, the text the encoder read) -> vector


_cache: OrderedDict[tuple[str, str, str], _Entry] = OrderedDict()
_lock = threading.Lock()
_build_locks = [threading.Lock() for _ in range(64)]


def _key(store: Store, user_id: str, encoder: Path | None) -> tuple[str, str, str]:
    return (store.url, user_id, str(encoder))  # switching encoders never mixes their vectors


def _fingerprint(conn: sa.Connection, user_id: str) -> tuple[Any, ...]:
    m = t.messages
    row = conn.execute(
        sa.select(sa.func.count(), sa.func.max(m.c.id), sa.func.min(m.c.id), sa.func.max(m.c.created_utc)).where(
            m.c.user_id == user_id, m.c.role.in_(("user", "assistant"))
        )
    ).one()
    return tuple(row)


def _rows(conn: sa.Connection, user_id: str) -> list[Any]:
    m, c = t.messages, t.conversations
    q = (
        sa.select(m.c.id, m.c.conversation_id, m.c.role, m.c.content, m.c.created_utc, m.c.metadata_json)
        .join(c, c.c.id == m.c.conversation_id)
        .where(m.c.user_id == user_id, m.c.role.in_(("user", "assistant")))
        .order_by(c.c.started_utc.desc(), m.c.conversation_id.desc(), m.c.seq.desc())
        .limit(MAX_TURNS)
    )
    return [r for r in conn.execute(q) if (r.content or "").strip()][::-1]


def _speaker(row: Any) -> str:
    meta = row.metadata_json or {}
    return str(meta.get("speaker") or row.role) if isinstance(meta, dict) else str(row.role)


def user_turn_index(store: Store, user_id: str, encoder: str | None = None) -> tuple[TurnIndex, list[Any]]:
    """The user's :class:`TurnIndex` and its message rows, built or refreshed as needed (see the module doc).

    ``encoder``: the recall encoder to embed with, as :func:`~afterword.memory.turns.recall_encoder_path` reads
    it (default: the configured one)."""
    path = recall_encoder_path(encoder)
    key = _key(store, user_id, path)
    with _build_locks[hash(key) % len(_build_locks)]:  # concurrent first calls for a user build it once
        return _refresh(store, user_id, key, path)


def _refresh(
    store: Store, user_id: str, key: tuple[str, str, str], encoder: Path | None
) -> tuple[TurnIndex, list[Any]]:
    with store.read() as conn:
        fp = _fingerprint(conn, user_id)
        with _lock:
            entry = _cache.get(key)
            if entry is not None and entry.fingerprint == fp:
                _cache.move_to_end(key)
                return entry.index, entry.rows
        rows = _rows(conn, user_id)
    turns = [Turn(r.id, r.conversation_id, _speaker(r), r.content, aware(r.created_utc)) for r in rows]
    # a turn's vector is keyed by what the encoder read (with a window encoder, the previous turn too): a turn
    # whose document changed (its previous turn fell out of the latest MAX_TURNS) is embedded again; nothing else is
    keys = list(zip([r.id for r in rows], turn_documents(turns, encoder_document(encoder)), strict=True))
    known = entry.vectors if entry is not None else {}
    new = [k for k in keys if k not in known]
    vectors = {k: known[k] for k in keys if k in known}
    if new:
        enc = get_embedder(encoder).encode([doc for _, doc in new])
        vectors.update({k: v for k, v in zip(new, enc, strict=True)})
    mat = np.stack([vectors[k] for k in keys]) if rows else np.zeros((0, EMBED_DIM), np.float32)
    index = TurnIndex(turns, mat, encoder=encoder if encoder is not None else "general")
    with _lock:
        _cache[key] = _Entry(fp, index, rows, vectors)
        _cache.move_to_end(key)
        while len(_cache) > CACHE_USERS:
            _cache.popitem(last=False)
    return index, rows


def drop(store: Store | None = None, user_id: str | None = None) -> None:
    """Free cached indexes: one user's, one store's, or all."""
    with _lock:
        for key in list(_cache):
            if (store is None or key[0] == store.url) and (user_id is None or key[1] == user_id):
                del _cache[key]


def recall(
    store: Store,
    query: str,
    *,
    user_id: str,
    k: int = 5,
    mode: Mode = "hybrid",
    exclude_conversation: str | None = None,
    encoder: str | None = None,
    rerank: bool | str | None = None,
) -> list[RecalledTurn]:
    """The ``k`` turns of ``user_id``'s conversations that best answer ``query``, best first.

    ``encoder`` picks the recall encoder for this call (``"general"``, ``"default"`` or an ONNX path; default:
    the ``AFTERWORD_RECALL_ENCODER`` setting, else the shipped fine-tuned one). ``rerank`` picks the
    cross-encoder that rescores the hybrid's best turns (:mod:`afterword.memory.rerank`: an ONNX path, ``False``
    or ``"off"``, ``True`` or ``"default"`` for one in the package's assets; default: the
    ``AFTERWORD_RECALL_RERANKER`` setting, else the assets' one; none ships, so none); hybrid mode only. A
    reranked turn's ``score`` is the blend of its standardised hybrid and cross-encoder scores."""
    if not user_id:
        raise ValueError("recall needs a user id: raw turns are searched one user at a time")
    if mode not in ("hybrid", "dense", "bm25"):
        raise ValueError(f"mode must be hybrid, dense or bm25, not {mode!r}")
    index, rows = user_turn_index(store, user_id, encoder)
    if not rows or k <= 0 or not query.strip():
        return []
    qvec = index.query_vector(query) if mode != "bm25" else None
    scores = index.scores(query, qvec, mode)
    cos = index.vecs @ qvec if qvec is not None else np.zeros(len(rows))
    reranker_file = reranker_path(rerank) if mode == "hybrid" else None
    reranker = get_reranker(reranker_file) if reranker_file is not None else None
    ranked = (
        int(i)
        for i in np.argsort(-scores, kind="stable")
        if exclude_conversation is None or rows[i].conversation_id != exclude_conversation
    )
    order = list(itertools.islice(ranked, max(k, reranker.depth) if reranker is not None else k))
    if reranker is not None:  # rescore the hybrid's best turns with the cross-encoder
        blended = reranker.rerank(query, [rerank_document(index.turns[i]) for i in order], scores[order])
        scores = scores.astype(np.float64).copy()
        scores[order] = blended
        order = [order[j] for j in np.argsort(-blended, kind="stable")]
    out: list[RecalledTurn] = []
    for i in order[:k]:
        r = rows[i]
        meta = r.metadata_json if isinstance(r.metadata_json, dict) else {}
        out.append(
            RecalledTurn(
                r.id,
                r.conversation_id,
                r.role,
                _speaker(r),
                r.content,
                aware(r.created_utc),
                float(scores[i]),
                float(cos[i]),
                meta,
            )
        )
    return out
