"""Search structures over memories: a vector index and a full-text index.

The ``memories`` table is the source of truth (text, situation, float32
embedding); what lives here is derived and can be rebuilt at any time with
:func:`rebuild_index`. Only active memories are indexed, under an *owner*:
the user id for user-scope memories and ``"*"`` for global ones, so every
search names the owners it may see and per-user isolation is a property of
the index query itself, not a filter applied afterwards.

Backends, chosen per store (``MemoryConfig.index``, ``auto`` by default):

- ``sqlite-vec``: a ``vec0`` table partitioned by owner, plus an FTS5 table
  (``memory_search``, BM25) where the owner is an indexed token. The tables
  are created on first use rather than by a migration because ``vec0``
  exists only on connections that loaded the extension.
- ``pgvector``: a ``memory_vectors`` table with an HNSW cosine index, plus a
  GIN full-text index over the memories; created on first use for the same
  reason (``CREATE EXTENSION vector`` may be refused).
- ``numpy``: when neither loads, an in-process :class:`NumpyIndex` filled
  from the ``memories`` table, and an in-process BM25 for full text.

:class:`NumpyIndex` is also the fast path at scale: exact search per owner
while an owner is small, and a coarse-quantised (IVF) search when it is not.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
import weakref
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import sqlalchemy as sa

from afterword.embed import EMBED_DIM
from afterword.records import stable_id
from afterword.store import schema as t
from afterword.store.store import Store

__all__ = [
    "GLOBAL_OWNER",
    "owner_of",
    "to_blob",
    "from_blob",
    "NumpyIndex",
    "BM25",
    "MemoryIndex",
    "get_index",
    "rebuild_index",
    "tokenize",
    "stem",
]

log = logging.getLogger("afterword.memory")

GLOBAL_OWNER = "*"

_STOP = frozenset(
    "a an and are as at be but by did do does for from had has have he her his how i if in into is it its me my "  # noqa: SIM905
    "of on or our she so than that the their them then there these they this to up was we were what when where "
    "which who whom why will with would you your yours can could should about after before just also not no yes "
    "been being am any some".split()
)


def tokenize(text: str) -> list[str]:
    """Lower-cased word tokens without stop words (the full-text query terms)."""
    return [w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in _STOP and len(w) > 1]


def stem(word: str) -> str:
    """A light suffix-stripping stemmer (close to what FTS5's porter does for English), for the in-process BM25."""
    for suf in ("ations", "ation", "ingly", "ings", "ing", "edly", "ed", "ies", "es", "s", "ly", "ment", "ness"):
        if word.endswith(suf) and len(word) - len(suf) >= 3:
            word = word[: -len(suf)]
            break
    if word.endswith("i"):
        word = word[:-1] + "y"
    if len(word) > 3 and word[-1] == word[-2] and word[-1] not in "ls":
        word = word[:-1]
    return word


def owner_of(scope: str, user_id: str | None) -> str:
    return GLOBAL_OWNER if scope == "global" or not user_id else user_id


def owner_tag(owner: str) -> str:
    """An owner as one full-text token (user ids may hold any characters; ``*`` holds none)."""
    return "o" + stable_id("owner", owner, n=16)


def to_blob(vec: np.ndarray) -> bytes:
    return np.asarray(vec, dtype="<f4").tobytes()


def from_blob(blob: bytes | None) -> np.ndarray | None:
    if not blob:
        return None
    return np.frombuffer(blob, dtype="<f4")


# -- in-process vector index ---------------------------------------------------------


class NumpyIndex:
    """Cosine search over unit vectors, partitioned by owner.

    Owners with at most ``exact_limit`` vectors are searched exactly (a
    matrix-vector product over their rows). Larger owners are searched
    through an inverted-file index: ``nlist`` k-means centroids, of which
    the ``nprobe`` nearest are scanned. Built once with :meth:`build`;
    :meth:`add` and :meth:`remove` keep it current between rebuilds.
    """

    def __init__(self, exact_limit: int = 50_000, nlist: int | None = None, nprobe: int = 16, seed: int = 0) -> None:
        self.exact_limit = exact_limit
        self.nlist = nlist
        self.nprobe = nprobe
        self.seed = seed
        self.ids: list[str] = []
        self.vecs = np.zeros((0, EMBED_DIM), dtype=np.float32)
        self.alive = np.zeros(0, dtype=bool)
        self.by_owner: dict[str, np.ndarray] = {}
        self._pos: dict[str, int] = {}
        self.centroids: np.ndarray | None = None
        self._lists: dict[str, list[np.ndarray]] = {}  # owner -> rows per centroid
        self._owners: list[str] = []

    def __len__(self) -> int:
        return int(self.alive.sum())

    def build(self, ids: Sequence[str], owners: Sequence[str], vecs: np.ndarray) -> NumpyIndex:
        self.ids = list(ids)
        self._owners = list(owners)
        self.vecs = np.ascontiguousarray(vecs, dtype=np.float32)
        self.alive = np.ones(len(self.ids), dtype=bool)
        self._pos = {m: i for i, m in enumerate(self.ids)}
        groups: dict[str, list[int]] = defaultdict(list)
        for i, o in enumerate(owners):
            groups[o].append(i)
        self.by_owner = {o: np.asarray(r, dtype=np.int64) for o, r in groups.items()}
        self._lists = {}
        big = [o for o, r in self.by_owner.items() if len(r) > self.exact_limit]
        if big:
            self._train([r for o in big for r in self.by_owner[o]])
            for o in big:
                self._lists[o] = self._assign(self.by_owner[o])
        return self

    def _train(self, rows: list[int]) -> None:
        rng = np.random.default_rng(self.seed)
        n = len(rows)
        nlist = self.nlist or max(16, int(2 * math.sqrt(n)))
        sample = self.vecs[rng.choice(rows, size=min(n, nlist * 20), replace=False)]
        cent = sample[rng.choice(len(sample), size=nlist, replace=False)].copy()
        for _ in range(6):  # spherical k-means: a few rounds are plenty for a coarse quantiser
            assign = np.argmax(sample @ cent.T, axis=1)
            sums = np.zeros_like(cent)
            np.add.at(sums, assign, sample)
            norms = np.linalg.norm(sums, axis=1, keepdims=True)
            empty = norms[:, 0] == 0
            cent = np.where(empty[:, None], cent, sums / np.clip(norms, 1e-12, None))
        self.centroids = cent.astype(np.float32)

    def _assign(self, rows: np.ndarray) -> list[np.ndarray]:
        assert self.centroids is not None
        labels = np.empty(len(rows), dtype=np.int64)
        for s in range(0, len(rows), 65536):
            chunk = rows[s : s + 65536]
            labels[s : s + len(chunk)] = np.argmax(self.vecs[chunk] @ self.centroids.T, axis=1)
        order = np.argsort(labels, kind="stable")
        bounds = np.searchsorted(labels[order], np.arange(len(self.centroids) + 1))
        return [rows[order[bounds[c] : bounds[c + 1]]] for c in range(len(self.centroids))]

    def add(self, ids: Sequence[str], owners: Sequence[str], vecs: np.ndarray) -> None:
        self.remove(ids)
        start = len(self.ids)
        self.ids.extend(ids)
        self._owners.extend(owners)
        self.vecs = np.concatenate([self.vecs, np.asarray(vecs, dtype=np.float32).reshape(-1, EMBED_DIM)])
        self.alive = np.concatenate([self.alive, np.ones(len(ids), dtype=bool)])
        for j, (m, o) in enumerate(zip(ids, owners, strict=True)):
            i = start + j
            self._pos[m] = i
            self.by_owner[o] = np.append(self.by_owner.get(o, np.zeros(0, dtype=np.int64)), i)
            if o in self._lists and self.centroids is not None:
                c = int(np.argmax(self.centroids @ self.vecs[i]))
                self._lists[o][c] = np.append(self._lists[o][c], i)

    def remove(self, ids: Iterable[str]) -> None:
        for m in ids:
            i = self._pos.pop(m, None)
            if i is not None:
                self.alive[i] = False

    def search(self, query: np.ndarray, owners: Sequence[str], k: int) -> list[tuple[str, float]]:
        q = np.asarray(query, dtype=np.float32)
        found: list[tuple[float, int]] = []
        for o in dict.fromkeys(owners):
            rows = self.by_owner.get(o)
            if rows is None or not len(rows):
                continue
            if o in self._lists and self.centroids is not None:
                near = np.argsort(-(self.centroids @ q))[: self.nprobe]
                rows = np.concatenate([self._lists[o][c] for c in near])
            rows = rows[self.alive[rows]]
            if not len(rows):
                continue
            sims = self.vecs[rows] @ q
            top = np.argpartition(-sims, min(k, len(sims)) - 1)[:k] if len(sims) > k else np.arange(len(sims))
            found.extend((float(sims[i]), int(rows[i])) for i in top)
        found.sort(key=lambda x: -x[0])
        return [(self.ids[i], s) for s, i in found[:k]]


# -- in-process BM25 -------------------------------------------------------------------


@dataclass
class BM25:
    """Okapi BM25 over a small in-process corpus (the numpy backend's full text)."""

    k1: float = 1.2
    b: float = 0.75
    docs: list[Counter[str]] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    owners: list[str] = field(default_factory=list)
    df: Counter[str] = field(default_factory=Counter)
    postings: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    lengths: list[int] = field(default_factory=list)
    total_len: int = 0

    def add(self, ident: str, owner: str, text: str) -> None:
        tf = Counter(stem(w) for w in tokenize(text))
        i = len(self.docs)
        self.docs.append(tf)
        self.ids.append(ident)
        self.owners.append(owner)
        self.lengths.append(sum(tf.values()))
        self.total_len += self.lengths[-1]
        for w in tf:
            self.df[w] += 1
            self.postings[w].append(i)

    def search(self, query: str, owners: Sequence[str], k: int) -> list[tuple[str, float]]:
        allowed = set(owners)
        n = max(len(self.docs), 1)
        avg = self.total_len / n or 1.0
        scores: dict[int, float] = defaultdict(float)
        for w in {stem(w) for w in tokenize(query)}:
            df = self.df.get(w)
            if not df:
                continue
            idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
            for i in self.postings[w]:
                if self.owners[i] not in allowed:
                    continue
                tf = self.docs[i][w]
                dl = self.lengths[i]
                scores[i] += idf * tf * (self.k1 + 1) / (tf + self.k1 * (1 - self.b + self.b * dl / avg))
        best = sorted(scores.items(), key=lambda x: -x[1])[:k]
        return [(self.ids[i], s) for i, s in best]


# -- store-backed index ----------------------------------------------------------------


def _fts_match(query: str) -> str:
    # Quoted terms OR-ed: user text must never be parsed as FTS5 syntax.
    return " OR ".join(f'"{w}"' for w in dict.fromkeys(tokenize(query)))


def _load_sqlite_vec(dbapi_conn: Any) -> None:
    import sqlite_vec

    dbapi_conn.enable_load_extension(True)
    sqlite_vec.load(dbapi_conn)
    dbapi_conn.enable_load_extension(False)


class MemoryIndex:
    """The vector and full-text index of one store's memories (see the module docstring).

    ``kind`` is the vector backend (``sqlite-vec``, ``pgvector`` or ``numpy``) and
    ``lexical_kind`` the full-text one (``fts5`` on SQLite, ``tsvector`` on
    PostgreSQL, in-process ``bm25`` otherwise); they are chosen independently,
    so ``index="numpy"`` on SQLite still ranks full text with FTS5.
    """

    #: How often (seconds) the numpy backend checks the table for writes by other processes.
    recheck_s = 5.0

    def __init__(self, store: Store, kind: str = "auto") -> None:
        self.store = store
        self._lock = threading.Lock()
        self._np: NumpyIndex | None = None
        self._bm25: BM25 | None = None
        self._np_sig: tuple[Any, ...] | None = None
        self._checked_at = 0.0
        self.kind = self._open(kind)
        self.lexical_kind = self._open_lexical()

    def _open(self, kind: str) -> str:
        if kind in ("auto", "sqlite-vec") and self.store.is_sqlite:
            try:
                self._setup_sqlite_vec()
                return "sqlite-vec"
            except Exception as exc:
                if kind == "sqlite-vec":
                    raise
                log.info("sqlite-vec unavailable (%s); using the numpy index", exc)
        if kind in ("auto", "pgvector") and not self.store.is_sqlite:
            try:
                self._setup_pgvector()
                return "pgvector"
            except Exception as exc:
                if kind == "pgvector":
                    raise
                log.info("pgvector unavailable (%s); using the numpy index", exc)
        return "numpy"

    def _open_lexical(self) -> str:
        try:
            with self.store.write() as conn:
                if self.store.is_sqlite:
                    # The owner is an indexed token, not an UNINDEXED column: filtering on an
                    # UNINDEXED column would score every user's matches and then drop most of them.
                    conn.exec_driver_sql(
                        "CREATE VIRTUAL TABLE IF NOT EXISTS memory_search USING fts5("
                        "body, owner_tag, memory_id UNINDEXED, tokenize='porter unicode61')"
                    )
                    return "fts5"
                conn.exec_driver_sql(
                    "CREATE INDEX IF NOT EXISTS ix_memories_body_fts ON memories USING gin "
                    "(to_tsvector('english', coalesce(situation, '') || ' ' || text))"
                )
                return "tsvector"
        except Exception as exc:
            log.info("no full-text index in the database (%s); using in-process BM25", exc)
            return "bm25"

    def _setup_sqlite_vec(self) -> None:
        engine = self.store.engine
        if not getattr(engine, "_afterword_vec", False):
            sa.event.listen(engine, "connect", lambda c, _r: _load_sqlite_vec(c))
            engine._afterword_vec = True  # type: ignore[attr-defined]
            engine.dispose()  # pooled connections predate the listener
        with self.store.write() as conn:
            conn.exec_driver_sql(
                "CREATE VIRTUAL TABLE IF NOT EXISTS memory_vec USING vec0("
                f"memory_id text primary key, owner text partition key, embedding float[{EMBED_DIM}] "
                "distance_metric=cosine)"
            )

    def _setup_pgvector(self) -> None:
        with self.store.write() as conn:
            conn.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS vector")
            conn.exec_driver_sql(
                "CREATE TABLE IF NOT EXISTS memory_vectors (memory_id text PRIMARY KEY, owner text NOT NULL, "
                f"embedding vector({EMBED_DIM}) NOT NULL)"
            )
            conn.exec_driver_sql("CREATE INDEX IF NOT EXISTS ix_memory_vectors_owner ON memory_vectors (owner)")
            conn.exec_driver_sql(
                "CREATE INDEX IF NOT EXISTS ix_memory_vectors_hnsw ON memory_vectors "
                "USING hnsw (embedding vector_cosine_ops)"
            )

    # -- writes (inside the caller's transaction) --------------------------------------

    def add(self, conn: sa.Connection, rows: Sequence[dict[str, Any]]) -> None:
        """Index memory rows (dicts of the ``memories`` table); inactive ones are removed instead."""
        live = [r for r in rows if r.get("active", True) and r.get("embedding")]
        self.remove(conn, [r["id"] for r in rows])
        if not live:
            return
        owners = [owner_of(r["scope"], r["user_id"]) for r in live]
        if self.kind == "sqlite-vec":
            conn.exec_driver_sql(
                "INSERT INTO memory_vec(memory_id, owner, embedding) VALUES (?, ?, ?)",
                [(r["id"], o, r["embedding"]) for r, o in zip(live, owners, strict=True)],
            )
        elif self.kind == "pgvector":
            conn.execute(
                sa.text("INSERT INTO memory_vectors(memory_id, owner, embedding) VALUES (:i, :o, CAST(:e AS vector))"),
                [
                    {"i": r["id"], "o": o, "e": _pg_vec(from_blob(r["embedding"]))}
                    for r, o in zip(live, owners, strict=True)
                ],
            )
        if self.lexical_kind == "fts5":
            conn.exec_driver_sql(
                "INSERT INTO memory_search(body, owner_tag, memory_id) VALUES (?, ?, ?)",
                [(_body(r), owner_tag(o), r["id"]) for r, o in zip(live, owners, strict=True)],
            )
        with self._lock:
            if self._np is not None:  # keep the in-process structures current without a rebuild
                self._np.add([r["id"] for r in live], owners, np.stack([from_blob(r["embedding"]) for r in live]))
            if self._bm25 is not None:
                for r, o in zip(live, owners, strict=True):
                    self._bm25.add(r["id"], o, _body(r))
            self._checked_at = 0.0

    def remove(self, conn: sa.Connection, ids: Sequence[str]) -> None:
        ids = list(ids)
        for s in range(0, len(ids), 500):
            chunk = ids[s : s + 500]
            marks = ",".join("?" * len(chunk))
            if self.kind == "sqlite-vec":
                conn.exec_driver_sql(f"DELETE FROM memory_vec WHERE memory_id IN ({marks})", tuple(chunk))
            elif self.kind == "pgvector":
                conn.execute(sa.text("DELETE FROM memory_vectors WHERE memory_id = ANY(:ids)"), {"ids": chunk})
            if self.lexical_kind == "fts5":
                conn.exec_driver_sql(f"DELETE FROM memory_search WHERE memory_id IN ({marks})", tuple(chunk))
        with self._lock:
            if self._np is not None:
                self._np.remove(ids)
            if self._bm25 is not None:
                self._bm25 = None  # rebuilt on next use (removal is rare)
            self._checked_at = 0.0

    def clear(self, conn: sa.Connection) -> None:
        if self.kind == "sqlite-vec":
            conn.exec_driver_sql("DELETE FROM memory_vec")
        elif self.kind == "pgvector":
            conn.exec_driver_sql("DELETE FROM memory_vectors")
        if self.lexical_kind == "fts5":
            conn.exec_driver_sql("DELETE FROM memory_search")
        with self._lock:
            self._np = self._bm25 = None

    # -- searches ---------------------------------------------------------------------

    def dense(self, query: np.ndarray, owners: Sequence[str], k: int) -> list[tuple[str, float]]:
        """The ``k`` nearest memories of ``owners`` as (id, cosine similarity), best first."""
        if self.kind == "sqlite-vec":
            out: list[tuple[str, float]] = []
            blob = to_blob(query)
            with self.store.read() as conn:
                for o in dict.fromkeys(owners):
                    rows = conn.exec_driver_sql(
                        "SELECT memory_id, distance FROM memory_vec WHERE embedding MATCH ? AND k = ? AND owner = ?",
                        (blob, k, o),
                    ).all()
                    out.extend((r[0], 1.0 - float(r[1])) for r in rows)
            return sorted(out, key=lambda x: -x[1])[:k]
        if self.kind == "pgvector":
            with self.store.read() as conn:
                rows = conn.execute(
                    sa.text(
                        "SELECT memory_id, 1 - (embedding <=> CAST(:q AS vector)) AS sim FROM memory_vectors "
                        "WHERE owner = ANY(:o) ORDER BY embedding <=> CAST(:q AS vector) LIMIT :k"
                    ),
                    {"q": _pg_vec(query), "o": list(owners), "k": k},
                ).all()
            return [(r[0], float(r[1])) for r in rows]
        return self._numpy().search(query, owners, k)

    def lexical(self, query: str, owners: Sequence[str], k: int) -> list[tuple[str, float]]:
        """The ``k`` best full-text matches as (id, BM25-like score > 0), best first."""
        if not tokenize(query):
            return []
        if self.lexical_kind == "fts5":
            tags = " OR ".join(f'"{owner_tag(o)}"' for o in dict.fromkeys(owners))
            match = f"body : ({_fts_match(query)}) AND owner_tag : ({tags})"
            with self.store.read() as conn:
                rows = conn.exec_driver_sql(
                    "SELECT memory_id, bm25(memory_search) FROM memory_search WHERE memory_search MATCH ? "
                    "ORDER BY bm25(memory_search) LIMIT ?",
                    (match, k),
                ).all()
            return [(r[0], -float(r[1])) for r in rows]
        if self.lexical_kind == "tsvector":
            m = t.memories
            body = sa.func.coalesce(m.c.situation, "") + " " + m.c.text
            tsq = sa.func.to_tsquery("english", " | ".join(dict.fromkeys(tokenize(query))))
            tsv = sa.func.to_tsvector("english", body)
            rank = (sa.func.ts_rank(tsv, tsq) * 10).label("rank")
            q = (
                sa.select(m.c.id, rank)
                .where(tsv.op("@@")(tsq), m.c.active.is_(True), _owner_clause(owners))
                .order_by(rank.desc())
                .limit(k)
            )
            with self.store.read() as conn:
                return [(r[0], float(r[1])) for r in conn.execute(q)]
        return self._bm25_index().search(query, owners, k)

    # -- in-process backends ---------------------------------------------------------------

    def _signature(self) -> tuple[Any, ...]:
        m = t.memories
        with self.store.read() as conn:
            return tuple(
                conn.execute(sa.select(sa.func.count(), sa.func.max(m.c.updated_utc)).where(m.c.active.is_(True))).one()
            )

    def _fresh(self) -> bool:
        """False when another process may have written memories since the in-process index was built."""
        now = time.monotonic()
        if now - self._checked_at < self.recheck_s:
            return True
        sig = self._signature()
        self._checked_at = now
        if sig == self._np_sig:
            return True
        self._np_sig = sig
        return False

    def _rows(self) -> list[Any]:
        m = t.memories
        with self.store.read() as conn:
            return conn.execute(
                sa.select(m.c.id, m.c.scope, m.c.user_id, m.c.embedding, m.c.situation, m.c.text).where(
                    m.c.active.is_(True), m.c.embedding.is_not(None)
                )
            ).all()

    def _numpy(self) -> NumpyIndex:
        with self._lock:
            if self._np is None or not self._fresh():
                rows = self._rows()
                vecs = np.stack([from_blob(r.embedding) for r in rows]) if rows else np.zeros((0, EMBED_DIM))
                self._np = NumpyIndex().build([r.id for r in rows], [owner_of(r.scope, r.user_id) for r in rows], vecs)
                self._bm25 = None
                self._np_sig, self._checked_at = self._signature(), time.monotonic()
            return self._np

    def _bm25_index(self) -> BM25:
        with self._lock:
            if self._bm25 is None or not self._fresh():
                bm = BM25()
                for r in self._rows():
                    bm.add(r.id, owner_of(r.scope, r.user_id), _body(r._mapping))
                self._bm25 = bm
                self._np = None
                self._np_sig, self._checked_at = self._signature(), time.monotonic()
            return self._bm25


def _body(r: Any) -> str:
    return f"{r.get('situation') or ''} {r.get('text') or ''}".strip()


def _pg_vec(v: np.ndarray | None) -> str:
    assert v is not None
    return "[" + ",".join(f"{x:.7g}" for x in np.asarray(v, dtype=np.float32)) + "]"


def _owner_clause(owners: Sequence[str]) -> Any:
    m = t.memories
    users = [o for o in owners if o != GLOBAL_OWNER]
    parts = [sa.and_(m.c.scope == "user", m.c.user_id.in_(users))] if users else []
    if GLOBAL_OWNER in owners:
        parts.append(sa.or_(m.c.scope == "global", m.c.user_id.is_(None)))
    return sa.or_(*parts) if parts else sa.false()


_indexes: weakref.WeakKeyDictionary[Store, dict[str, MemoryIndex]] = weakref.WeakKeyDictionary()
_indexes_lock = threading.Lock()


def get_index(store: Store, kind: str = "auto") -> MemoryIndex:
    """The store's memory index (one per store and kind, created on first use)."""
    with _indexes_lock:
        per = _indexes.setdefault(store, {})
        if kind not in per:
            per[kind] = MemoryIndex(store, kind)
        return per[kind]


def rebuild_index(store: Store, kind: str = "auto") -> dict[str, Any]:
    """Re-derive the index from the ``memories`` table (after a restore, or to switch backends)."""
    idx = get_index(store, kind)
    m = t.memories
    with store.read() as conn:
        rows = [dict(r._mapping) for r in conn.execute(sa.select(m).where(m.c.active.is_(True)))]
    with store.write() as conn:
        idx.clear(conn)
        for s in range(0, len(rows), 1000):
            idx.add(conn, rows[s : s + 1000])
    return {"index": idx.kind, "indexed": len(rows)}
