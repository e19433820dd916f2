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
  exists only on connections that loaded the extension. ``vec0`` searches
  by brute force (about 0.4 µs a vector here), so from
  :attr:`MemoryIndex.ivf_min` indexed vectors on the vectors move to an
  inverted-file index kept in SQLite (``memory_ivf``: k-means cells, one
  float16 code per memory, clustered by owner and cell), and a query reads
  only the few cells nearest to it. It is written in the same transactions
  as the memories, so it is durable, shared by every process, and forget
  removes from it like from the rest.
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
import os
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


def ivf_nlist(n: int) -> int:
    """How many k-means cells an inverted-file index over ``n`` vectors gets (about 2·√n)."""
    return max(16, int(2 * math.sqrt(n)))


def kmeans(sample: np.ndarray, nlist: int, seed: int = 0, rounds: int = 6) -> np.ndarray:
    """``nlist`` unit centroids of ``sample`` (spherical k-means; a few rounds are plenty for a coarse quantiser)."""
    rng = np.random.default_rng(seed)
    sample = np.asarray(sample, dtype=np.float32)
    nlist = min(nlist, len(sample))
    cent = sample[rng.choice(len(sample), size=nlist, replace=False)].copy()
    for _ in range(rounds):
        assign = np.argmax(sample @ cent.T, axis=1)
        sums = np.zeros_like(cent)
        np.add.at(sums, assign, sample)
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        empty = norms[:, 0] == 0
        cent = np.where(empty[:, None], cent, sums / np.clip(norms, 1e-12, None))
    return cent.astype(np.float32)


#: int8 codes of ``memory_ivf``: unit MiniLM vectors' components stay within ±0.3 (±0.2 for 99.99 % of them),
#: so ±0.25 maps onto ±127 and the rare larger ones clip. Cosine ignores the common scale.
_CODE_SCALE = 127 / 0.25


def ivf_code(vecs: np.ndarray) -> np.ndarray:
    """Vectors as int8 codes for ``memory_ivf``."""
    return np.clip(np.rint(np.asarray(vecs, dtype=np.float32) * _CODE_SCALE), -127, 127).astype(np.int8)


def nearest_cells(vecs: np.ndarray, centroids: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """The cell (nearest centroid) of each vector, in chunks to bound memory."""
    out = np.empty(len(vecs), dtype=np.int64)
    for s in range(0, len(vecs), chunk):
        out[s : s + chunk] = np.argmax(vecs[s : s + chunk] @ centroids.T, axis=1)
    return out


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
        nlist = self.nlist or ivf_nlist(n)
        self.centroids = kmeans(self.vecs[rng.choice(rows, size=min(n, nlist * 20), replace=False)], nlist, self.seed)

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


def _fts_match(terms: Iterable[str]) -> str:
    # Quoted terms OR-ed: user text must never be parsed as FTS5 syntax (tokenize() leaves only [a-z0-9]).
    return " OR ".join(f'"{w}"' for w in dict.fromkeys(terms))


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
    #: From this many indexed vectors on, the SQLite backend leaves sqlite-vec's brute force for ``memory_ivf``.
    ivf_min = 10_000
    #: An owner with fewer vectors than this is scanned in full (exact); a larger one through its nearest cells.
    ivf_exact = 2_000
    #: Cells read per query and owner (recall against speed; see docs/benchmarks.md, "Scale").
    ivf_nprobe = 16
    #: The cells are re-trained (and every vector re-assigned) once the index has grown this many times over.
    ivf_regrow = 4.0
    #: Full-text terms in more documents than this are left out of the FTS5 query: ranking their matches
    #: costs time in proportion to the matches, and so common a word says little about relevance.
    lexical_max_df = 1_000
    #: Seconds a term's document count is remembered.
    df_ttl_s = 600.0

    def __init__(self, store: Store, kind: str = "auto") -> None:
        self.store = store
        self._lock = threading.Lock()
        self._np: NumpyIndex | None = None
        self._bm25: BM25 | None = None
        self._np_sig: tuple[Any, ...] | None = None
        self._checked_at = 0.0
        self._cells: tuple[int, np.ndarray] | None = None  # (version, centroids) of memory_ivf
        self._df: dict[str, int] = {}
        self._df_at = 0.0
        self._large: dict[str, bool] = {}  # owner -> has ivf_exact vectors or more
        self._large_at = 0.0
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
            # The inverted-file index at scale (see the module docstring): clustered by (owner, cell), so a
            # query's cells are contiguous ranges; code = the vector as int8 (see ivf_code), scored in C by
            # sqlite-vec's vec_distance_cosine.
            conn.exec_driver_sql(
                "CREATE TABLE IF NOT EXISTS memory_ivf (owner TEXT NOT NULL, cell INTEGER NOT NULL, "
                "memory_id TEXT NOT NULL, code BLOB NOT NULL, PRIMARY KEY (owner, cell, memory_id)) WITHOUT ROWID"
            )
            conn.exec_driver_sql("CREATE INDEX IF NOT EXISTS ix_memory_ivf_memory_id ON memory_ivf (memory_id)")
            # One row once the IVF is in use: the centroids, their version, and the vector counts.
            conn.exec_driver_sql(
                "CREATE TABLE IF NOT EXISTS memory_ivf_state (id INTEGER PRIMARY KEY CHECK (id = 1), "
                "version INTEGER NOT NULL, trained_n INTEGER NOT NULL, n INTEGER NOT NULL, centroids BLOB NOT NULL)"
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

    def add(self, conn: sa.Connection, rows: Sequence[dict[str, Any]], replace: bool = True) -> None:
        """Index memory rows (dicts of the ``memories`` table); inactive ones are removed instead.

        ``replace=False`` skips removing earlier entries of the same ids (a rebuild into a cleared index).
        """
        live = [r for r in rows if r.get("active", True) and r.get("embedding")]
        if replace:
            self.remove(conn, [r["id"] for r in rows])
        if not live:
            return
        owners = [owner_of(r["scope"], r["user_id"]) for r in live]
        if self.kind == "sqlite-vec":
            self._vec_add(conn, [r["id"] for r in live], owners, [r["embedding"] for r in live])
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
                gone = conn.exec_driver_sql(f"DELETE FROM memory_ivf WHERE memory_id IN ({marks})", tuple(chunk))
                if gone.rowcount:
                    conn.exec_driver_sql("UPDATE memory_ivf_state SET n = n - ?", (gone.rowcount,))
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
            conn.exec_driver_sql("DELETE FROM memory_ivf")
            conn.exec_driver_sql("DELETE FROM memory_ivf_state")
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
                if self._ivf_centroids(conn) is not None:
                    return self._ivf_search(conn, query, owners, k)
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
            sql = (
                "SELECT memory_id, bm25(memory_search), owner_tag FROM memory_search WHERE memory_search MATCH ? "
                "ORDER BY bm25(memory_search) LIMIT ?"
            )
            found: list[tuple[str, float]] = []
            with self.store.read() as conn:
                terms = self._rare_terms(conn, list(dict.fromkeys(tokenize(query))))
                if not terms:
                    return []
                body = f"body : ({_fts_match(terms)})"
                cap = self.lexical_max_df
                tags = {owner_tag(o): self._df_of(conn, "owner_tag", owner_tag(o), cap) for o in dict.fromkeys(owners)}
                small = [g for g, n in tags.items() if n <= cap]
                large = {g for g, n in tags.items() if n > cap}
                if small:  # the owner as a token in the query: its doclist is short, so the AND is cheap
                    match = f"{body} AND owner_tag : ({_fts_match(small)})"
                    found += [(r[0], -float(r[1])) for r in conn.exec_driver_sql(sql, (match, k)).all()]
                if large:  # an AND with a long owner doclist costs more than the rare terms' matches: filter after
                    rows = conn.exec_driver_sql(sql, (body, 4 * k)).all()
                    found += [(r[0], -float(r[1])) for r in rows if r[2] in large][:k]
            return sorted(found, key=lambda x: -x[1])[:k]
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

    # -- SQLite at scale: the inverted-file index and the full-text term filter -------------

    def _df_of(self, conn: sa.Connection, column: str, token: str, cap: int) -> int:
        """How many documents hold ``token`` in ``column``, counted up to ``cap + 1`` (and remembered a while)."""
        now = time.monotonic()
        if now - self._df_at > self.df_ttl_s or len(self._df) > 100_000:
            self._df, self._df_at = {}, now
        key = f"{column}:{token}"
        if key not in self._df:
            self._df[key] = conn.exec_driver_sql(
                "SELECT count(*) FROM (SELECT 1 FROM memory_search WHERE memory_search MATCH ? LIMIT ?)",
                (f'{column} : "{token}"', cap + 1),
            ).scalar_one()
        return self._df[key]

    def _rare_terms(self, conn: sa.Connection, terms: list[str]) -> list[str]:
        """The terms in at most :attr:`lexical_max_df` documents."""
        return [w for w in terms if self._df_of(conn, "body", w, self.lexical_max_df) <= self.lexical_max_df]

    def _ivf_state(self, conn: sa.Connection) -> Any:
        return conn.exec_driver_sql("SELECT version, trained_n, n FROM memory_ivf_state").first()

    def _ivf_centroids(self, conn: sa.Connection) -> np.ndarray | None:
        """The cells' centroids while the IVF is in use (cached by version), else None."""
        version = conn.exec_driver_sql("SELECT version FROM memory_ivf_state").scalar()
        if version is None:
            return None
        cached = self._cells
        if cached is None or cached[0] != version:
            blob = conn.exec_driver_sql("SELECT centroids FROM memory_ivf_state").scalar_one()
            cached = self._cells = (version, np.frombuffer(blob, dtype="<f4").reshape(-1, EMBED_DIM))
        return cached[1]

    def _vec_add(self, conn: sa.Connection, ids: list[str], owners: list[str], blobs: list[bytes]) -> None:
        state = self._ivf_state(conn)
        if state is None:
            conn.exec_driver_sql(
                "INSERT INTO memory_vec(memory_id, owner, embedding) VALUES (?, ?, ?)",
                list(zip(ids, owners, blobs, strict=True)),
            )
            if conn.exec_driver_sql("SELECT count(*) FROM memory_vec").scalar_one() >= self.ivf_min:
                self._ivf_train(conn)
            return
        cent = self._ivf_centroids(conn)
        assert cent is not None
        vecs = np.frombuffer(b"".join(blobs), dtype="<f4").reshape(-1, EMBED_DIM)
        self._ivf_insert(conn, ids, owners, vecs, nearest_cells(vecs, cent))
        conn.exec_driver_sql("UPDATE memory_ivf_state SET n = n + ?", (len(ids),))
        if state.n + len(ids) >= self.ivf_regrow * state.trained_n:
            self._ivf_train(conn)

    @staticmethod
    def _ivf_insert(
        conn: sa.Connection, ids: Sequence[str], owners: Sequence[str], vecs: np.ndarray, cells: np.ndarray
    ) -> None:
        codes = ivf_code(vecs)
        order = sorted(range(len(ids)), key=lambda i: (owners[i], int(cells[i])))
        for s in range(0, len(order), 10_000):
            conn.exec_driver_sql(
                "INSERT INTO memory_ivf(owner, cell, memory_id, code) VALUES (?, ?, ?, ?)",
                [(owners[i], int(cells[i]), ids[i], codes[i].tobytes()) for i in order[s : s + 10_000]],
            )

    def _ivf_train(self, conn: sa.Connection, sample: np.ndarray | None = None, expected: int | None = None) -> None:
        """(Re)train the cells and move every indexed vector into ``memory_ivf`` under them.

        With ``sample`` (a rebuild that knows its rows up front), train on it and start empty, expecting
        ``expected`` vectors; otherwise read every vector from ``memory_vec`` and ``memory_ivf``.
        """
        t0 = time.perf_counter()
        ids: list[str] = []
        owners: list[str] = []
        vecs = np.zeros((0, EMBED_DIM), dtype=np.float32)
        if sample is None:
            parts = []
            for sql, dt in (
                ("SELECT memory_id, owner, embedding FROM memory_vec", "<f4"),
                ("SELECT memory_id, owner, code FROM memory_ivf", "i1"),
            ):
                rows = conn.exec_driver_sql(sql).all()
                ids.extend(r[0] for r in rows)
                owners.extend(r[1] for r in rows)
                if rows:
                    part = np.frombuffer(b"".join(r[2] for r in rows), dtype=dt).reshape(-1, EMBED_DIM)
                    parts.append(part.astype(np.float32) / _CODE_SCALE if dt == "i1" else part)
            vecs = np.concatenate(parts).astype(np.float32) if parts else vecs
            sample = vecs
            expected = len(ids)
        if not len(sample):
            return
        n = max(expected or 0, len(sample))
        nlist = ivf_nlist(n)
        rng = np.random.default_rng(0)
        pick = rng.choice(len(sample), size=min(len(sample), nlist * 20), replace=False)
        cent = kmeans(sample[pick], nlist)
        version = int.from_bytes(os.urandom(7), "little")  # unique, so a rolled-back retrain is never mistaken
        conn.exec_driver_sql("DELETE FROM memory_vec")
        conn.exec_driver_sql("DELETE FROM memory_ivf")
        conn.exec_driver_sql("DELETE FROM memory_ivf_state")
        conn.exec_driver_sql(
            "INSERT INTO memory_ivf_state(id, version, trained_n, n, centroids) VALUES (1, ?, ?, ?, ?)",
            (version, n, len(ids), to_blob(cent)),
        )
        if ids:
            self._ivf_insert(conn, ids, owners, vecs, nearest_cells(vecs, cent))
        log.info("memory index: %d cells trained over %d vectors in %.1fs", nlist, n, time.perf_counter() - t0)

    def _owner_is_large(self, conn: sa.Connection, owner: str) -> bool:
        """Whether ``owner`` has ``ivf_exact`` vectors or more (remembered as long as term counts are).

        A stale answer only changes the path, not what may be seen: a grown owner is scanned in
        full a while longer, a shrunken one searched by cells.
        """
        now = time.monotonic()
        if now - self._large_at > self.df_ttl_s or len(self._large) > 100_000:
            self._large, self._large_at = {}, now
        large = self._large.get(owner)
        if large is None:
            size = conn.exec_driver_sql(
                "SELECT count(*) FROM (SELECT 1 FROM memory_ivf WHERE owner = ? LIMIT ?)", (owner, self.ivf_exact)
            ).scalar_one()
            large = self._large[owner] = size >= self.ivf_exact
        return large

    def _ivf_search(
        self, conn: sa.Connection, query: np.ndarray, owners: Sequence[str], k: int
    ) -> list[tuple[str, float]]:
        cent = self._ivf_centroids(conn)
        assert cent is not None
        q = np.asarray(query, dtype=np.float32)
        code = ivf_code(q[None, :])[0].tobytes()
        near: list[int] | None = None
        out: list[tuple[str, float]] = []
        for o in dict.fromkeys(owners):
            if not self._owner_is_large(conn, o):  # a small owner: all of its vectors
                rows = conn.exec_driver_sql(
                    "SELECT memory_id, vec_distance_cosine(vec_int8(code), vec_int8(?)) AS d FROM memory_ivf "
                    "WHERE owner = ? ORDER BY d LIMIT ?",
                    (code, o, k),
                ).all()
            else:  # a large owner: its vectors in the cells nearest to the query
                if near is None:
                    near = np.argsort(-(cent @ q))[: self.ivf_nprobe].tolist()
                marks = ",".join("?" * len(near))
                rows = conn.exec_driver_sql(
                    "SELECT memory_id, vec_distance_cosine(vec_int8(code), vec_int8(?)) AS d FROM memory_ivf "
                    f"WHERE owner = ? AND cell IN ({marks}) ORDER BY d LIMIT ?",
                    (code, o, *near, k),
                ).all()
            out.extend((r[0], 1.0 - float(r[1])) for r in rows)
        return sorted(out, key=lambda x: -x[1])[:k]

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
    live = sa.and_(m.c.active.is_(True), m.c.embedding.is_not(None))
    cols = (m.c.id, m.c.scope, m.c.user_id, m.c.embedding, m.c.situation, m.c.text)
    total = 0
    with store.write() as conn:
        idx.clear(conn)
        n = conn.execute(sa.select(sa.func.count()).where(live)).scalar_one()
        if idx.kind == "sqlite-vec" and n >= idx.ivf_min:  # train the cells once, on an even sample
            step = max(1, n // (ivf_nlist(n) * 20))
            blobs = conn.execute(sa.select(m.c.embedding).where(live, sa.literal_column("rowid") % step == 0)).all()
            idx._ivf_train(conn, np.frombuffer(b"".join(b[0] for b in blobs), "<f4").reshape(-1, EMBED_DIM), n)
        last = None
        while True:  # in id order, a chunk at a time (a million rows do not fit comfortably in memory at once)
            q = sa.select(*cols).where(live).order_by(m.c.id).limit(5000)
            rows = [dict(r._mapping) for r in conn.execute(q if last is None else q.where(m.c.id > last))]
            if not rows:
                break
            idx.add(conn, rows, replace=False)
            total += len(rows)
            last = rows[-1]["id"]
    return {"index": idx.kind, "indexed": total}
