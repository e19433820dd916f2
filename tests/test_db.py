"""``afterword db``: migrate, copy SQLite <-> PostgreSQL (streaming, idempotent, resumable), verify."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from afterword.records import Conversation, Evidence, Feedback, Judgment, Message
from afterword.store import Store
from afterword.store import schema as t
from afterword.store.copy import copy_store, table_counts, verify_store
from afterword.store.search import search, sync_fulltext


def fill(store: Store, n: int = 30) -> None:
    convs = []
    for i in range(n):
        convs.append(
            Conversation(
                user_id=f"user{i % 4}",
                external_id=f"s{i}",
                started_utc=datetime(2026, 2, 1 + i % 20, 9, tzinfo=UTC),
                metadata={"n": i},
                messages=[
                    Message(role="user", content=f"how do I sort list number {i}?"),
                    Message(role="assistant", content=f"use sorted(x) for list {i}", latency_ms=12.5),
                    Message(role="user", content="great thanks"),
                ],
                feedback=[Feedback(kind="thumbs", thumbs=1, message_index=1)],
            )
        )
    store.import_conversations(convs)
    with store.read() as conn:
        mids = list(conn.execute(sa.select(t.messages.c.id).where(t.messages.c.role == "assistant")).scalars())
    store.put_judgments(
        Judgment(
            message_id=m,
            source="hindsight-model",
            label="satisfied",
            score=0.8,
            confidence=0.9,
            evidence=[Evidence(signal="explicit:thumbs", message_id=m, weight=1.0)],
        )
        for m in mids
    )
    now = datetime(2026, 3, 1, tzinfo=UTC)
    with store.write() as conn:
        conn.execute(
            t.memories.insert(),
            [
                {
                    "id": f"mem{i}",
                    "kind": "lesson",
                    "scope": "user",
                    "user_id": f"user{i}",
                    "text": f"lesson {i}",
                    "pinned": False,
                    "uses": 0,
                    "helpful": 0.0,
                    "harmful": 0.0,
                    "usefulness": 0.0,
                    "active": True,
                    "created_utc": now,
                    "updated_utc": now,
                }
                for i in range(3)
            ],
        )
        conn.execute(
            t.memory_injections.insert(),
            [
                {
                    "memory_id": "mem0",
                    "message_id": mids[0],
                    "user_id": "user0",
                    "tokens": 7,
                    "credited": False,
                    "created_utc": now,
                }
            ],
        )
        conn.execute(
            t.exports.insert(),
            [{"id": "exp1", "kind": "sft", "format": "trl", "created_utc": now, "card_json": {"rows": 2}}],
        )
        conn.execute(
            t.export_items.insert(), [{"export_id": "exp1", "message_id": m, "user_id": "user0"} for m in mids[:2]]
        )
    sync_fulltext(store)


@pytest.mark.pg
def test_copy_sqlite_to_pg_and_back(tmp_path, pg_url):
    src = Store(str(tmp_path / "src.db"))
    fill(src)
    dst = Store(pg_url)
    res = copy_store(src, dst, batch_size=7)  # small pages: many round trips, keyset paging exercised
    assert res["match"] and res["verify"]["ok"], res
    counts = table_counts(src)
    for name in (
        "conversations",
        "messages",
        "feedback",
        "judgments",
        "memories",
        "memory_injections",
        "exports",
        "export_items",
        "users",
    ):
        assert res["dst_counts"][name] == counts[name] > 0
    # Values survive: timestamps stay UTC, JSON stays JSON, full text works on the target.
    a = src.conversations_by_id(src.conversation_ids())[3]
    b = dst.conversations_by_id([a.id])[0]
    assert a.model_dump() == b.model_dump()
    assert search(dst, "sorted list", limit=50)
    # Idempotent: a second copy writes nothing.
    again = copy_store(src, dst, batch_size=7)
    assert again["match"] and sum(v["written"] for v in again["tables"].values()) == 0
    # The serial sequence moved on: a new injection row gets a fresh id.
    with dst.write() as conn:
        conn.execute(
            t.memory_injections.insert().values(
                memory_id="mem1", tokens=1, credited=False, created_utc=datetime.now(UTC)
            )
        )
    # And back to a fresh SQLite file: the FTS index is rebuilt there, not copied.
    back = Store(str(tmp_path / "back.db"))
    res2 = copy_store(dst, back)
    assert res2["match"] and res2["verify"]["ok"], res2
    assert res2["derived"]["fulltext_indexed"] == counts["messages"]
    assert search(back, "sorted list", limit=50)
    for s in (src, dst, back):
        s.close()


def test_copy_resumes_after_partial(tmp_path):
    src = Store(str(tmp_path / "src.db"))
    fill(src, 20)
    dst = Store(str(tmp_path / "dst.db"))
    # A copy that died after some pages: only part of messages is there.
    with src.read() as conn:
        rows = [dict(r._mapping) for r in conn.execute(sa.select(t.messages).limit(11))]
    with dst.write() as conn:
        conn.execute(t.messages.insert(), rows)
    assert not verify_store(dst)["ok"]  # messages without their conversations
    res = copy_store(src, dst, batch_size=5)
    assert res["match"] and res["verify"]["ok"]
    assert res["tables"]["messages"]["written"] == table_counts(src)["messages"] - 11


def test_verify_finds_problems(tmp_path):
    s = Store(str(tmp_path / "v.db"))
    fill(s, 5)
    assert verify_store(s)["ok"]
    with s.write() as conn:
        conn.execute(
            t.feedback.insert().values(
                id="f-orphan", message_id="nope", kind="thumbs", thumbs=1, source="user", created_utc=datetime.now(UTC)
            )
        )
        conn.execute(t.messages.delete().where(t.messages.c.seq == 1))  # a hole in every conversation
        conn.exec_driver_sql("DELETE FROM messages_fts WHERE rowid = (SELECT min(rowid) FROM messages)")
    rep = verify_store(s)
    assert not rep["ok"]
    assert rep["problems"]["feedback_without_message"] >= 1
    assert rep["problems"]["judgments_without_message"] == 5
    assert rep["problems"]["conversations_with_seq_gaps"] == 5
    assert rep["problems"]["fts_orphans"] == 5 and rep["problems"]["fts_missing"] == 1


def _cli(*args: str) -> tuple[int, dict]:
    p = subprocess.run(
        [sys.executable, "-c", "from afterword.cli import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return p.returncode, json.loads(p.stdout.strip().splitlines()[-1])


def test_cli_migrate_copy_verify(tmp_path):
    a, b = tmp_path / "a.db", tmp_path / "b.db"
    s = Store(str(a))
    fill(s, 4)
    s.close()
    code, out = _cli("--db", str(tmp_path / "new.db"), "db", "migrate", "--json")
    assert code == 0 and out["from"] is None and out["to"] == out["head"]
    code, out = _cli("--db", str(tmp_path / "new.db"), "db", "migrate", "--json")
    assert code == 0 and not out["changed"]
    code, out = _cli("db", "copy", str(a), str(b), "--json")
    assert code == 0 and out["match"] and out["verify"]["ok"]
    code, out = _cli("--db", str(b), "db", "verify", "--json")
    assert code == 0 and out["ok"] and out["counts"]["messages"] == 12
    code, out = _cli("db", "copy", str(a), str(a), "--json")
    assert code == 1 and "same store" in out["error"]
