"""Retrieval latency at 100k and 1M memories.

Embedding a million texts with MiniLM on this CPU would take hours, so the
corpus is built honestly but cheaply: a few thousand real texts are embedded,
and every synthetic memory is a *recombination* of two of them (the
normalised sum ``a·v_i + (1-a)·v_j`` plus Gaussian noise, and the text: the
first half of text i joined to the second half of text j). Queries are real
texts held out of the pool, embedded by the real model. The vectors thus
live where real MiniLM vectors live and cluster the way they do, which is
what an IVF index is sensitive to; uniform random vectors would flatter it.

Measured, each with p50/p95 over the same queries:

- ``numpy-flat``: exact search (matrix-vector product) over every vector;
- ``numpy-ivf``: :class:`~afterword.memory.index.NumpyIndex` coarse-quantised,
  with its recall@10 against the exact top 10;
- ``sqlite-vec``: a ``vec0`` table (brute force in C), where asked;
- ``store``: the product path on a real SQLite store file, where asked:
  ``retrieve`` is :func:`~afterword.memory.retrieval.retrieve` exactly as the
  injector and the proxy call it (dense + FTS5 candidates, row fetch,
  scoring; ``k`` = 24, the injector's ``max_items * 3``), with ``dense`` (the
  store's vector index alone, :meth:`MemoryIndex.dense`) and ``lexical`` (FTS5
  alone) beside it. The memories are written straight into the ``memories``
  table (ids as the store makes them) and indexed with
  :func:`~afterword.memory.index.rebuild_index`, which is what the build
  time measures. Recall: the store's dense top 10 against the exact top 10,
  and ``retrieve``'s top 10 against the same call with exact candidates
  (every IVF cell probed, no full-text term left out) on ``exact_queries``
  of the queries.

Query embedding time is reported apart (it does not grow with the corpus);
every measured call is given the query vector.
Beside wall-clock p50/p95, ``cpu_p*_ms`` is the querying thread's CPU time
(``time.thread_time``): on a machine shared with other jobs, wall-clock
tails mostly measure waiting for a core, CPU time measures the work.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from afterword.embed import get_embedder

__all__ = ["synthetic_corpus", "run_scale_bench", "REFERENCE_P95_MS"]

#: Published search p95 of other memory layers (their own reports), printed for reference.
REFERENCE_P95_MS = {"Mem0": 200.0, "Zep": 155.0}


def synthetic_corpus(
    base_vecs: np.ndarray, base_texts: Sequence[str], n: int, seed: int = 0, noise: float = 0.02
) -> tuple[np.ndarray, list[str]]:
    """``n`` vectors and texts recombined from the embedded ``base`` pool (see the module docstring)."""
    rng = np.random.default_rng(seed)
    m = len(base_vecs)
    out = np.empty((n, base_vecs.shape[1]), dtype=np.float32)
    texts: list[str] = []
    halves = [(t[: len(t) // 2], t[len(t) // 2 :]) for t in base_texts]
    for s in range(0, n, 100_000):
        c = min(100_000, n - s)
        i = rng.integers(0, m, c)
        j = rng.integers(0, m, c)
        a = rng.uniform(0.5, 0.9, (c, 1)).astype(np.float32)
        v = a * base_vecs[i] + (1 - a) * base_vecs[j] + noise * rng.standard_normal((c, base_vecs.shape[1]))
        out[s : s + c] = v / np.linalg.norm(v, axis=1, keepdims=True)
        texts.extend(halves[x][0] + halves[y][1] for x, y in zip(i, j, strict=True))
    return out, texts


class _Times(list):  # wall-clock ms per call, with the thread's CPU ms per call beside it
    cpu: list[float]


def _lat(fn: Callable[[int], Any], n: int) -> tuple[_Times, list[Any]]:
    times, results = _Times(), []
    times.cpu = []
    for q in range(n):
        c0, t0 = time.thread_time(), time.perf_counter()
        results.append(fn(q))
        times.append((time.perf_counter() - t0) * 1000)
        times.cpu.append((time.thread_time() - c0) * 1000)
    return times, results


def _p(xs: list[float]) -> dict[str, float]:
    out = {"p50_ms": round(float(np.percentile(xs, 50)), 2), "p95_ms": round(float(np.percentile(xs, 95)), 2)}
    cpu = getattr(xs, "cpu", None)
    if cpu:
        out["cpu_p50_ms"] = round(float(np.percentile(cpu, 50)), 2)
        out["cpu_p95_ms"] = round(float(np.percentile(cpu, 95)), 2)
    return out


def run_scale_bench(
    texts: Sequence[str],
    sizes: Sequence[int] = (100_000, 1_000_000),
    *,
    pool: int = 2000,
    queries: int = 200,
    nprobe: int = 16,
    sqlite_vec_max: int = 100_000,
    store_max: int = 1_000_000,
    store_index: str = "auto",
    exact_queries: int = 30,
    numpy_ivf_max: int = 1_000_000,
    k: int = 10,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    texts = list(dict.fromkeys(t for t in texts if len(t) > 20))
    rng = np.random.default_rng(1)
    order = rng.permutation(len(texts))
    base = [texts[i] for i in order[:pool]]
    qtexts = [texts[i] for i in order[pool : pool + queries]]
    emb = get_embedder()
    t0 = time.perf_counter()
    base_vecs = emb.encode(base)
    embed_s = time.perf_counter() - t0
    qlat, qvecs_l = _lat(lambda q: emb.encode_one(qtexts[q]), len(qtexts))
    qvecs = np.stack(qvecs_l)
    log(f"embedded {len(base)} pool texts in {embed_s:.1f}s; query embedding p50/p95 {_p(qlat)}")
    out: dict[str, Any] = {
        "pool_texts": len(base),
        "queries": len(qtexts),
        "query_embedding": _p(qlat),
        "reference_p95_ms": REFERENCE_P95_MS,
        "sizes": {},
    }
    for n in sizes:
        vecs, corpus = synthetic_corpus(base_vecs, base, n)
        ids = [str(i) for i in range(n)]
        res: dict[str, Any] = {}
        flat_t, flat_r = _lat(lambda q, v=vecs: np.argpartition(-(v @ qvecs[q]), k)[:k], len(qvecs))
        res["numpy-flat"] = _p(flat_t)
        if n > numpy_ivf_max:
            log(f"n={n:,}: numpy-flat {res['numpy-flat']}")
        else:
            _numpy_ivf(res, ids, vecs, qvecs, flat_r, nprobe, k, log)
        if n <= sqlite_vec_max:
            res["sqlite-vec"] = _sqlite_vec(vecs, qvecs, k)
            log(f"n={n:,}: sqlite-vec {res['sqlite-vec']}")
        if n <= store_max:
            store_res = _store(vecs, corpus, qvecs, qtexts, flat_r, store_index, exact_queries, log)
            for name, v in store_res.items():
                res[name] = v
                log(f"n={n:,}: {name} {v}")
        out["sizes"][str(n)] = res
    return out


def _numpy_ivf(
    res: dict[str, Any],
    ids: list[str],
    vecs: np.ndarray,
    qvecs: np.ndarray,
    flat_r: list[Any],
    nprobe: int,
    k: int,
    log: Callable[[str], None],
) -> None:
    from afterword.memory.index import NumpyIndex

    n = len(ids)
    t0 = time.perf_counter()
    ivf = NumpyIndex(exact_limit=0, nprobe=nprobe).build(ids, ["*"] * n, vecs)
    build_s = time.perf_counter() - t0
    ivf_t, ivf_r = _lat(lambda q, x=ivf: x.search(qvecs[q], ["*"], k), len(qvecs))
    recall = np.mean([len({int(i) for i, _ in r} & set(f.tolist())) / k for r, f in zip(ivf_r, flat_r, strict=True)])
    res["numpy-ivf"] = {
        **_p(ivf_t),
        "recall_at_10_vs_exact": round(float(recall), 4),
        "nlist": len(ivf.centroids) if ivf.centroids is not None else 0,
        "nprobe": nprobe,
        "build_s": round(build_s, 1),
    }
    log(f"n={n:,}: numpy-flat {res['numpy-flat']}  numpy-ivf {res['numpy-ivf']}")


def _sqlite_vec(vecs: np.ndarray, qvecs: np.ndarray, k: int) -> dict[str, Any]:
    import sqlite_vec

    from afterword.store.engine import _sqlite_module

    mod = _sqlite_module()
    if mod is None:
        return {"skipped": "pysqlite3 not installed"}
    con = mod.connect(":memory:")
    con.enable_load_extension(True)
    sqlite_vec.load(con)
    con.execute(f"CREATE VIRTUAL TABLE v USING vec0(embedding float[{vecs.shape[1]}] distance_metric=cosine)")
    t0 = time.perf_counter()
    for s in range(0, len(vecs), 10_000):
        con.executemany(
            "INSERT INTO v(rowid, embedding) VALUES (?, ?)",
            ((s + i + 1, vecs[s + i].tobytes()) for i in range(min(10_000, len(vecs) - s))),
        )
    load_s = time.perf_counter() - t0
    times, _ = _lat(
        lambda q: con.execute(
            "SELECT rowid, distance FROM v WHERE embedding MATCH ? AND k = ?", (qvecs[q].tobytes(), k)
        ).fetchall(),
        len(qvecs),
    )
    con.close()
    return {**_p(times), "load_s": round(load_s, 1)}


def _rss_mb() -> float:
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 0)


def _store(
    vecs: np.ndarray,
    corpus: list[str],
    qvecs: np.ndarray,
    qtexts: list[str],
    flat_r: list[np.ndarray],
    index: str,
    exact_queries: int,
    log: Callable[[str], None],
) -> dict[str, Any]:
    import sqlalchemy as sa

    from afterword.memory.index import get_index, rebuild_index
    from afterword.memory.memory_config import MemoryConfig
    from afterword.memory.retrieval import retrieve
    from afterword.records import stable_id, utcnow
    from afterword.store import schema as t
    from afterword.store.store import Store

    k_inject = MemoryConfig().max_items * 3  # what MemoryInjector.inject asks retrieve() for
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(dir=_tmp_dir()) as d:
        path = Path(d) / "scale.db"
        store = Store(str(path))
        now = utcnow()
        t0 = time.perf_counter()
        for s in range(0, len(vecs), 20_000):
            rows = []
            for i in range(s, min(s + 20_000, len(vecs))):
                text = f"{corpus[i]} [{i}]"  # unique: recombined halves repeat at 1M
                rows.append(
                    {
                        "id": stable_id("mem", "fact", "global", "", text, text),  # as control.memory_id_for
                        "kind": "fact",
                        "scope": "global",
                        "user_id": None,
                        "text": text,
                        "embedding": vecs[i].astype("<f4").tobytes(),
                        "evidence_json": [],
                        "pinned": False,
                        "uses": 0,
                        "helpful": 0.0,
                        "harmful": 0.0,
                        "usefulness": 0.0,
                        "active": True,
                        "created_utc": now,
                        "updated_utc": now,
                    }
                )
            with store.write() as conn:
                conn.execute(t.memories.insert(), rows)
        rows_s = time.perf_counter() - t0
        log(f"  {len(vecs):,} memory rows written in {rows_s:.0f}s; indexing")
        t0 = time.perf_counter()
        rebuild_index(store, index)
        build_s = time.perf_counter() - t0
        idx = get_index(store, index)
        cfg = MemoryConfig(index=index)  # type: ignore[arg-type]
        retrieve(store, qtexts[0], k=k_inject, query_vec=qvecs[0], config=cfg)  # warm: connections, caches
        nq = len(qvecs)
        ret_t, ret_r = _lat(lambda q: retrieve(store, qtexts[q], k=k_inject, query_vec=qvecs[q], config=cfg), nq)
        dense_t, dense_r = _lat(lambda q: idx.dense(qvecs[q], ["*"], 10), nq)
        lex_t, lex_r = _lat(lambda q: idx.lexical(qtexts[q], ["*"], cfg.candidates), nq)
        pos = {}  # memory id -> corpus position (the text ends with it)
        with store.read() as conn:
            for mid in {i for r in dense_r for i, _ in r}:
                txt = conn.execute(sa.select(t.memories.c.text).where(t.memories.c.id == mid)).scalar_one()
                pos[mid] = int(txt.rsplit("[", 1)[1].rstrip("]"))
        recall = np.mean(
            [len({pos[i] for i, _ in r} & set(f.tolist())) / 10 for r, f in zip(dense_r, flat_r, strict=True)]
        )
        # retrieve() on the first queries with every IVF cell probed (exact dense candidates), then also with
        # no full-text term left out (which changes the BM25 scores themselves, not only the candidates).
        ne = min(exact_queries, nq)
        saved = idx.ivf_nprobe, idx.lexical_max_df
        idx.ivf_nprobe = 1 << 30
        exd_t, exd_r = _lat(lambda q: retrieve(store, qtexts[q], k=k_inject, query_vec=qvecs[q], config=cfg), ne)
        idx.lexical_max_df, idx._df = 1 << 30, {}
        ex_t, ex_r = _lat(lambda q: retrieve(store, qtexts[q], k=k_inject, query_vec=qvecs[q], config=cfg), ne)
        idx.ivf_nprobe, idx.lexical_max_df = saved
        idx._df = {}

        def overlap(got: list[Any], ref: list[Any]) -> float:
            return round(
                float(
                    np.mean(
                        [
                            len({m.memory.id for m in a[:10]} & {m.memory.id for m in b[:10]}) / max(1, min(10, len(b)))
                            for a, b in zip(got, ref, strict=True)
                        ]
                    )
                ),
                4,
            )

        with store.read() as conn:
            st = conn.exec_driver_sql("SELECT trained_n, length(centroids) / 1536 FROM memory_ivf_state").first()
        db_mb = sum(f.stat().st_size for f in Path(d).iterdir()) / 1e6
        store.close()
    out["store-retrieve"] = {
        **_p(ret_t),
        "k": k_inject,
        "top10_vs_exact_dense": overlap(ret_r[:ne], exd_r),
        "top10_vs_exact_dense_all_terms": overlap(ret_r[:ne], ex_r),
        "exact_dense": {**_p(exd_t), "queries": ne},
        "exact_dense_all_terms": {**_p(ex_t), "queries": ne},
        "rows_written_s": round(rows_s, 1),
        "index_build_s": round(build_s, 1),
        "db_mb": round(db_mb, 0),
        "peak_rss_mb": _rss_mb(),
    }
    out["store-dense"] = {
        **_p(dense_t),
        "index": idx.kind + (f"+ivf (cells {st[1]}, nprobe {idx.ivf_nprobe})" if st else ""),
        "recall_at_10_vs_exact": round(float(recall), 4),
    }
    out["store-lexical"] = {
        **_p(lex_t),
        "queries_with_matches": round(float(np.mean([bool(r) for r in lex_r])), 3),
        "max_df": idx.lexical_max_df,
    }
    return out


def _tmp_dir() -> str | None:
    import os

    return os.environ.get("AFTERWORD_BENCH_TMP") or None
