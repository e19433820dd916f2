"""Many concurrent writers against one real PostgreSQL: threads and processes, proxy-style capture and
overlapping imports. Afterwards: no lost rows, no duplicates, whole conversations only, a pool that
never grew past its limits and gave every connection back.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import sqlalchemy as sa

from afterword.capture.logger import CaptureLogger
from afterword.capture.spool import Spool
from afterword.records import Conversation, Message
from afterword.store import Store
from afterword.store import schema as t
from afterword.store.copy import verify_store

pytestmark = [pytest.mark.pg, pytest.mark.slow]


def chat(tag: str, i: int, turns: int = 1) -> Conversation:
    """A proxy-style log: the app resends the whole history, so turn k repeats turns 0..k-1."""
    msgs = []
    for k in range(turns):
        msgs += [Message(role="user", content=f"{tag} q{i}.{k}"), Message(role="assistant", content=f"{tag} a{i}.{k}")]
    return Conversation(user_id=f"{tag}-u{i % 11}", external_id=f"{tag}-{i}", source="proxy", messages=msgs)


def write_shared_jsonl(path: Path, n: int) -> None:
    with open(path, "w") as fh:
        for i in range(n):
            rec = {
                "user": f"imp{i % 17}",
                "session_id": f"shared-{i}",
                "messages": [
                    {"role": "user", "content": f"shared question {i}"},
                    {"role": "assistant", "content": f"shared answer {i}"},
                    {"role": "user", "content": "ok"},
                ],
            }
            fh.write(json.dumps(rec) + "\n")


def _import_proc(url: str, path: str, batch: int, out: mp.Queue) -> None:
    from afterword.importers import run_import

    store = Store(url, migrate=False, pool_size=2, max_overflow=0)
    counts = run_import(store, path, "openai", batch_size=batch)
    out.put((counts.conversations, counts.conversations_present, counts.messages))
    store.close()


def _capture_proc(url: str, tag: str, n: int, spool: str) -> None:
    store = Store(url, migrate=False, pool_size=2, max_overflow=0)
    logger = CaptureLogger(store, spool=Spool(spool), max_batch=32)
    for i in range(n):
        # Each call logs the growing history, as a client resending it would.
        for turns in (1, 2):
            logger.log(chat(tag, i, turns))
    logger.flush()
    logger.close()
    store.close()


def test_concurrent_writers_lose_and_duplicate_nothing(pg_url, tmp_path):
    Store(pg_url).close()  # migrate once
    shared = tmp_path / "shared.jsonl"
    n_shared = 1500
    write_shared_jsonl(shared, n_shared)
    ctx = mp.get_context("spawn")
    results: mp.Queue = ctx.Queue()
    # 3 processes import the same file at once (overlapping data), with different batch sizes.
    importers = [ctx.Process(target=_import_proc, args=(pg_url, str(shared), b, results)) for b in (300, 700, 2000)]
    # 2 processes capture like proxy workers.
    capturers = [
        ctx.Process(target=_capture_proc, args=(pg_url, f"proc{p}", 150, str(tmp_path / f"spool{p}.jsonl")))
        for p in range(2)
    ]
    for p in importers + capturers:
        p.start()

    # Meanwhile, in this process: 8 threads share one CaptureLogger-free store and one small pool.
    store = Store(pg_url, pool_size=4, max_overflow=2, pool_timeout=60)
    peak = {"checked_out": 0}
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            peak["checked_out"] = max(peak["checked_out"], store.engine.pool.checkedout())
            time.sleep(0.002)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()

    def thread_writer(k: int) -> int:
        n = 0
        for i in range(60):
            # Overlap on purpose: every thread also writes thread 0's conversations.
            for tag in (f"thr{k}", "thr0"):
                store.import_conversations([chat(tag, i, 2)], default_source="proxy")
                n += 1
        return n

    with ThreadPoolExecutor(8) as pool:
        assert sum(pool.map(thread_writer, range(8))) == 8 * 60 * 2
    stop.set()
    watcher.join()
    for p in importers + capturers:
        p.join(240)
        assert p.exitcode == 0, f"writer process {p.name} failed"
    imported = [results.get(timeout=5) for _ in importers]

    # The pool stayed within pool_size + max_overflow and every connection came back.
    assert 1 <= peak["checked_out"] <= 6
    assert store.engine.pool.checkedout() == 0

    def count(*where: object) -> int:
        with store.read() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(t.conversations).where(*where)).scalar())

    # Overlapping imports: every conversation once; together the importers wrote each exactly once.
    assert count(t.conversations.c.external_id.like("shared-%")) == n_shared
    # The importers' own "imported" counts are check-then-insert (a known over-count when two processes
    # import the same rows at the same moment on PostgreSQL); the rows themselves are exact (above).
    assert sum(new for new, _present, _m in imported) >= n_shared
    assert all(new + present == n_shared for new, present, _m in imported)
    # Threads: 8 distinct tags x 60, thr0 written by all 8 threads but stored once.
    assert count(t.conversations.c.external_id.like("thr%")) == 8 * 60
    # Capture processes: each history stored once, with the longer resend adding only the new turn.
    assert count(t.conversations.c.external_id.like("proc%")) == 2 * 150
    with store.read() as conn:
        per_conv = dict(
            conn.execute(
                sa.select(t.conversations.c.external_id, sa.func.count(t.messages.c.id))
                .join(t.messages, t.messages.c.conversation_id == t.conversations.c.id)
                .group_by(t.conversations.c.external_id)
            ).all()
        )
        dups = conn.execute(
            sa.select(t.messages.c.conversation_id, t.messages.c.seq)
            .group_by(t.messages.c.conversation_id, t.messages.c.seq)
            .having(sa.func.count() > 1)
        ).all()
    assert all(per_conv[f"shared-{i}"] == 3 for i in range(n_shared))
    assert all(per_conv[f"thr{k}-{i}"] == 4 for k in range(8) for i in range(60))
    assert all(per_conv[f"proc{p}-{i}"] == 4 for p in range(2) for i in range(150))
    assert dups == []  # no message stored twice at the same position
    assert not any(Path(tmp_path / f"spool{p}.jsonl").exists() for p in range(2))  # nothing had to spool
    rep = verify_store(store)
    assert rep["ok"], rep["problems"]
    store.close()


def test_pool_exhaustion_is_a_clean_store_error(pg_url):
    """More concurrent transactions than connections: callers wait, then get StoreError, never hang."""
    from afterword.errors import StoreError

    store = Store(pg_url, pool_size=1, max_overflow=0, pool_timeout=0.5)
    held = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with store.write() as conn:
            conn.execute(sa.select(1))
            held.set()
            release.wait(10)

    th = threading.Thread(target=hold)
    th.start()
    assert held.wait(10)
    t0 = time.perf_counter()
    with pytest.raises(StoreError), store.read() as conn:
        conn.execute(sa.select(1))
    assert time.perf_counter() - t0 < 5
    release.set()
    th.join()
    with store.read() as conn:  # and the pool recovers
        assert conn.execute(sa.select(1)).scalar() == 1
    store.close()
