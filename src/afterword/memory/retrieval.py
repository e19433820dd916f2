"""Hybrid retrieval: which memories fit this request, and how well.

One query runs a dense search (cosine over embeddings) and a full-text
search (BM25) over the memories the caller may see: the user's own plus
the global ones. Isolation is decided by the index query (see
``memory.index``) and checked again on the rows, so a user's memory is never
returned for anyone else. The candidates of both searches are then scored
on the same footing (each candidate's cosine is computed from its stored
embedding even when only full text found it) and combined, by weighted sum
or reciprocal-rank fusion, with small bonuses for recency, learned
usefulness and pinning. ``relevance`` (the cosine, lifted a little by a
strong full-text match) is kept apart from the final score because the
injector gates on it: a memory must be about this request, however useful
it was elsewhere.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import sqlalchemy as sa

from afterword.embed import get_embedder
from afterword.memory.control import to_memory
from afterword.memory.index import GLOBAL_OWNER, get_index, owner_of
from afterword.memory.memory_config import MemoryConfig
from afterword.records import Memory, utcnow
from afterword.store import schema as t
from afterword.store.store import Store, aware

__all__ = ["ScoredMemory", "retrieve", "count_tokens", "Mode"]

Mode = Literal["hybrid", "dense", "bm25"]

#: A full-text score of this size counts half (BM25 scores are unbounded; this saturates them).
_LEX_HALF = 4.0


def count_tokens(text: str) -> int:
    """A tokenizer-free estimate of LLM tokens (words, punctuation, and long words split ~every 6 chars)."""
    pieces = re.findall(r"\w+|[^\w\s]", text)
    return sum(1 + (len(p) - 1) // 6 for p in pieces) or (1 if text else 0)


@dataclass
class ScoredMemory:
    memory: Memory
    score: float
    relevance: float  # cosine to the query, lifted a little by a strong full-text match
    dense: float
    lexical: float  # saturated BM25 in [0, 1)
    tokens: int

    def as_dict(self) -> dict[str, object]:
        return {
            "memory_id": self.memory.id,
            "kind": self.memory.kind,
            "scope": self.memory.scope,
            "text": self.memory.text,
            "score": round(self.score, 4),
            "relevance": round(self.relevance, 4),
            "dense": round(self.dense, 4),
            "lexical": round(self.lexical, 4),
            "tokens": self.tokens,
        }


def retrieve(
    store: Store,
    query: str,
    *,
    user_id: str | None = None,
    k: int = 5,
    kinds: Sequence[str] | None = None,
    config: MemoryConfig | None = None,
    mode: Mode = "hybrid",
    query_vec: np.ndarray | None = None,
    min_relevance: float | None = None,
) -> list[ScoredMemory]:
    """The ``k`` best memories for ``query`` that ``user_id`` may see, best first.

    ``mode`` picks hybrid, dense-only or BM25-only (the baselines of the
    benchmarks). ``min_relevance`` drops candidates below that relevance.
    """
    cfg = config or MemoryConfig()
    owners = [user_id, GLOBAL_OWNER] if user_id else [GLOBAL_OWNER]
    idx = get_index(store, cfg.index)
    n = max(cfg.candidates, k)
    qv = query_vec if query_vec is not None else get_embedder().encode_one(query)
    dense = idx.dense(qv, owners, n) if mode != "bm25" else []
    lex = idx.lexical(query, owners, n) if mode != "dense" else []
    ids = list(dict.fromkeys([i for i, _ in dense] + [i for i, _ in lex]))
    if not ids:
        return []
    m = t.memories
    # Score on the few columns scoring reads; whole rows are fetched for the final k only.
    cols = (m.c.id, m.c.scope, m.c.user_id, m.c.embedding, m.c.created_utc, m.c.usefulness, m.c.pinned)
    q = sa.select(*cols).where(m.c.id.in_(ids), m.c.active.is_(True))
    if kinds:
        q = q.where(m.c.kind.in_(list(kinds)))
    with store.read() as conn:
        rows = {r.id: r for r in conn.execute(q)}
    d_rank = {i: r for r, (i, _) in enumerate(dense)}
    l_rank = {i: r for r, (i, _) in enumerate(lex)}
    l_raw = dict(lex)
    now = utcnow()
    scored: list[tuple[float, float, float, float, Any]] = []
    allowed = set(owners)
    kept = [r for mid in ids if (r := rows.get(mid)) is not None and owner_of(r.scope, r.user_id) in allowed]
    # Every candidate's cosine in one product (a memory without a vector scores 0).
    width = qv.shape[0] * 4
    blobs = b"".join(r.embedding if r.embedding and len(r.embedding) == width else bytes(width) for r in kept)
    cosines = (np.frombuffer(blobs, dtype="<f4").reshape(len(kept), -1) @ qv).tolist() if kept else []
    for r, cos in zip(kept, cosines, strict=True):
        mid = r.id
        lx = l_raw.get(mid, 0.0)
        lsat = lx / (lx + _LEX_HALF) if lx > 0 else 0.0
        relevance = cos + 0.15 * lsat
        if min_relevance is not None and relevance < min_relevance:
            continue
        if mode == "dense":
            base = cos
        elif mode == "bm25":
            base = lx
        elif cfg.fusion == "rrf":
            base = sum(1.0 / (cfg.rrf_k + rk[mid] + 1) for rk in (d_rank, l_rank) if mid in rk)
        else:
            base = cfg.dense_weight * cos + cfg.lexical_weight * lsat
        if mode == "hybrid":
            created = aware(r.created_utc)
            age_days = max((now - created).total_seconds() / 86400, 0.0) if created else 0.0
            base += cfg.recency_weight * math.exp(-age_days * math.log(2) / cfg.recency_half_life_days)
            base += cfg.usefulness_weight * float(r.usefulness or 0.0)
            base += cfg.pinned_bonus if r.pinned else 0.0
        scored.append((base, relevance, cos, lsat, r))
    scored.sort(key=lambda x: -x[0])
    scored = scored[:k]
    if not scored:
        return []
    with store.read() as conn:
        full = {r.id: r for r in conn.execute(sa.select(m).where(m.c.id.in_([x[4].id for x in scored])))}
    out = []
    for base, relevance, cos, lsat, r in scored:
        if r.id not in full:  # deleted between the two reads
            continue
        mem = to_memory(full[r.id])
        out.append(ScoredMemory(mem, base, relevance, cos, lsat, count_tokens(mem.text)))
    return out
