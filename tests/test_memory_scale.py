"""The SQLite memory index at scale: the inverted-file index (memory_ivf) and the full-text term filter.

The thresholds are lowered on the store's index so that a few hundred memories take the paths that a
large store takes (see ``MemoryIndex.ivf_min`` and ``lexical_max_df``).
"""

from __future__ import annotations

import numpy as np
import pytest

from afterword.memory import MemoryConfig, add_memories, forget_user_memories, rebuild_index, retrieve
from afterword.memory.index import get_index
from afterword.records import Memory


def _vectors(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(12, 384)).astype(np.float32)
    v = centres[rng.integers(0, 12, n)] + 0.6 * rng.normal(size=(n, 384)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _fill(store, n_global: int = 500, n_user: int = 150):
    vecs = _vectors(n_global + 2 * n_user)
    mems = [Memory(kind="fact", scope="global", text=f"global note {i} topic{i % 7}") for i in range(n_global)]
    mems += [Memory(kind="fact", scope="user", user_id="u1", text=f"u1 note {i} topic{i % 7}") for i in range(n_user)]
    mems += [Memory(kind="fact", scope="user", user_id="u2", text=f"u2 note {i} topic{i % 7}") for i in range(n_user)]
    ids = add_memories(store, mems, vectors=vecs)
    return ids, vecs, mems


def _exact(ids, vecs, allowed, q, k):
    sims = vecs[allowed] @ q
    return [ids[allowed[i]] for i in np.argsort(-sims)[:k]]


@pytest.fixture
def scaled(store):
    idx = get_index(store)
    idx.ivf_min, idx.ivf_exact = 400, 200  # 800 memories: the IVF is trained; u1 and u2 are "small" owners
    ids, vecs, mems = _fill(store)
    return store, idx, ids, vecs, mems


def _state(store):
    with store.read() as conn:
        return conn.exec_driver_sql("SELECT version, trained_n, n FROM memory_ivf_state").first()


def _count(store, sql):
    with store.read() as conn:
        return conn.exec_driver_sql(sql).scalar()


def test_ivf_takes_over_from_sqlite_vec_and_matches_exact(scaled):
    store, idx, ids, vecs, _ = scaled
    assert idx.kind == "sqlite-vec"
    st = _state(store)
    assert st is not None and st.n == 800  # every vector moved into memory_ivf, none left in vec0
    assert _count(store, "SELECT count(*) FROM memory_ivf") == 800
    assert _count(store, "SELECT count(*) FROM memory_vec") == 0
    glob = np.arange(500)
    queries = [vecs[i] + 0.05 * _vectors(1, seed=i)[0] for i in range(0, 500, 25)]
    # All cells probed: the int8 codes give the exact top 10 (up to near-ties).
    idx.ivf_nprobe = 10_000
    overlap = [len(set(dict(idx.dense(q, ["*"], 10))) & set(_exact(ids, vecs, glob, q, 10))) / 10 for q in queries]
    assert np.mean(overlap) >= 0.95
    # The default probe count: approximate, still close, and the near-duplicate found first.
    idx.ivf_nprobe = type(idx).ivf_nprobe
    overlap = [len(set(dict(idx.dense(q, ["*"], 10))) & set(_exact(ids, vecs, glob, q, 10))) / 10 for q in queries]
    assert np.mean(overlap) >= 0.8
    for n, q in zip(range(0, 500, 25), queries, strict=True):
        assert idx.dense(q, ["*"], 1)[0][0] == ids[n]


def test_ivf_owners_isolated_and_small_owners_exact(scaled):
    store, idx, ids, vecs, _ = scaled
    u1 = np.arange(500, 650)
    q = vecs[510] + 0.05 * _vectors(1, seed=99)[0]
    got = [i for i, _ in idx.dense(q, ["u1"], 10)]
    ref = _exact(ids, vecs, u1, q, 10)
    assert got[0] == ref[0] == ids[510] and len(set(got) & set(ref)) >= 9  # a small owner is scanned in full
    u2_ids = set(ids[650:])
    for o in (["u1", "*"], ["*"], ["u1"]):
        assert not u2_ids & {i for i, _ in idx.dense(q, o, 50)}
    top = retrieve(store, "u1 note", user_id="u1", k=50, query_vec=q)
    assert top and all(s.memory.user_id in ("u1", None) for s in top)


def test_retrieve_on_the_ivf_matches_exact_candidates(scaled):
    store, idx, ids, vecs, mems = scaled
    for i in (3, 120, 333, 520):
        q = vecs[i] + 0.05 * _vectors(1, seed=i)[0]
        text = mems[i].text
        approx = [s.memory.id for s in retrieve(store, text, user_id="u1", k=5, query_vec=q)]
        idx.ivf_nprobe, idx.lexical_max_df, idx._df = 10_000, 10_000, {}
        exact = [s.memory.id for s in retrieve(store, text, user_id="u1", k=5, query_vec=q)]
        idx.ivf_nprobe, idx.lexical_max_df, idx._df = type(idx).ivf_nprobe, type(idx).lexical_max_df, {}
        assert approx[0] == exact[0] == ids[i]
        assert len(set(approx) & set(exact)) >= 4


def test_forget_and_delete_remove_from_the_ivf(scaled):
    store, idx, ids, vecs, _ = scaled
    res = forget_user_memories(store, "u1")
    assert len(res["memory_ids"]) == 150
    assert _count(store, "SELECT count(*) FROM memory_ivf WHERE owner = 'u1'") == 0
    assert _state(store).n == 650
    assert idx.dense(vecs[510], ["u1"], 10) == []
    assert all(s.memory.user_id != "u1" for s in retrieve(store, "u1 note", user_id="u1", k=50, query_vec=vecs[510]))


def test_growth_retrains_and_rebuild_trains_once(scaled):
    store, idx, ids, vecs, _ = scaled
    first = _state(store)
    more = [Memory(kind="fact", scope="global", text=f"later note {i}") for i in range(2500)]
    add_memories(store, more, vectors=_vectors(2500, seed=7))
    st = _state(store)
    assert st.version != first.version and st.trained_n == st.n == 3300  # grew 4x: re-trained over everything
    assert rebuild_index(store)["indexed"] == 3300
    st2 = _state(store)
    assert st2.trained_n == st2.n == 3300 and st2.version != st.version
    assert idx.dense(vecs[42], ["*"], 1)[0][0] == ids[42]


def test_common_terms_left_out_of_full_text(store):
    idx = get_index(store)
    idx.lexical_max_df = 3
    texts = [f"weather report number{i}" for i in range(6)] + ["the axolotl prefers cold water"]
    add_memories(store, [Memory(kind="fact", scope="global", text=x) for x in texts], vectors=_vectors(7))
    add_memories(store, [Memory(kind="fact", scope="user", user_id="u9", text="axolotl diary")], vectors=_vectors(1))
    # "weather" and "report" are in 6 documents (> 3): dropped; "axolotl" and "number2" are rare: kept.
    assert idx.lexical("weather report", ["*"], 5) == []
    assert [i for i, _ in idx.lexical("weather report number2", ["*"], 5)] == [
        m.id for m in _by_text(store, "weather report number2")
    ]
    # The global owner holds more than lexical_max_df memories (filtered after the query); u9 is small.
    got = {i for i, _ in idx.lexical("axolotl", ["*"], 5)}
    assert got == {m.id for m in _by_text(store, "the axolotl prefers cold water")}
    both = {i for i, _ in idx.lexical("axolotl", ["u9", "*"], 5)}
    assert len(both) == 2
    assert retrieve(store, "axolotl", user_id="u9", config=MemoryConfig(), mode="bm25", query_vec=_vectors(1)[0])


def _by_text(store, text):
    from afterword.memory import list_memories

    return [m for m in list_memories(store, include_inactive=True) if m.text == text]
