"""Importers: the formats, bad records (file, line, field), transactions, and a SIGKILL part-way."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from afterword.errors import ImportRecordError, StoreError
from afterword.importers import detect_format, run_import
from afterword.store import Store
from afterword.store import schema as t

CLI = [sys.executable, "-c", "from afterword.cli import main; main()"]


def write_jsonl(path: Path, records: list) -> Path:
    with open(path, "w", encoding="utf-8") as fh:
        for r in records:
            fh.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return path


def test_openai_all_fields(store: Store, tmp_path: Path) -> None:
    rec = {
        "user_id": 42,
        "conversation_id": "c-1",
        "timestamp": 1767261600,  # Unix seconds
        "model": "gpt-4o-mini",
        "metadata": {"app": "web"},
        "messages": [
            {"role": "developer", "content": "Be brief."},
            {
                "role": "user",
                "content": [{"type": "text", "text": "What's in "}, {"type": "text", "text": "this file?"}],
                "created_at": "2026-01-01T10:00:05Z",
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "t1", "type": "function", "function": {"name": "read", "arguments": "{}"}}],
                "latency_ms": 850,
                "usage": {"prompt_tokens": 30, "completion_tokens": 7},
                "timestamp": 1767261607000,  # Unix milliseconds
            },
            {"role": "function", "content": "hello world"},
            {"role": "assistant", "content": "It says hello world.", "model": "gpt-4o", "metadata": {"x": 1}},
        ],
        "feedback": [
            {"message_index": 2, "thumbs": "down", "timestamp": "2026-01-01T10:01:00+01:00"},
            {"rating": 4},  # no index: the last assistant message
            {"message_index": 4, "correction": "It says 'hello world' in lowercase.", "comment": "picky"},
        ],
    }
    counts = run_import(store, write_jsonl(tmp_path / "chat.jsonl", [rec]), "openai")
    assert (counts.conversations, counts.messages, counts.feedback, counts.skipped) == (1, 5, 3, 0)
    c = store.get_conversation("c-1")
    assert c.user_id == "42" and c.metadata == {"app": "web"} and c.source == "import:openai"
    assert c.started_utc == datetime(2026, 1, 1, 10, 0, tzinfo=UTC)
    assert [m.role for m in c.messages] == ["system", "user", "assistant", "tool", "assistant"]
    assert c.messages[1].content == "What's in this file?"
    assert c.messages[1].created_utc == datetime(2026, 1, 1, 10, 0, 5, tzinfo=UTC)
    a = c.messages[2]
    assert a.content == "" and a.tool_calls[0]["function"]["name"] == "read"
    assert (a.latency_ms, a.prompt_tokens, a.completion_tokens, a.model) == (850, 30, 7, "gpt-4o-mini")
    assert a.created_utc == datetime(2026, 1, 1, 10, 0, 7, tzinfo=UTC)
    assert c.messages[4].model == "gpt-4o" and c.messages[4].metadata == {"x": 1}
    assert c.messages[0].created_utc == c.started_utc  # only the line has a time: kept in order
    fb = {(f.message_id, f.kind): f for f in c.feedback}
    assert fb[(a.id, "thumbs")].thumbs == -1
    assert fb[(a.id, "thumbs")].created_utc == datetime(2026, 1, 1, 9, 1, tzinfo=UTC)
    assert fb[(c.messages[4].id, "rating")].rating == 4
    corr = fb[(c.messages[4].id, "correction")]
    assert corr.correction.startswith("It says") and corr.comment == "picky" and corr.source == "import"


def test_sharegpt_jsonl_and_json_array(store: Store, tmp_path: Path) -> None:
    conv = {
        "id": "sg-1",
        "system": "You are helpful.",
        "conversations": [
            {"from": "human", "value": "Name a prime."},
            {"from": "gpt", "value": "7"},
        ],
    }
    jl = write_jsonl(tmp_path / "sg.jsonl", [conv, {**conv, "id": "sg-2", "user": "u2"}])
    assert detect_format(jl) == "sharegpt"
    counts = run_import(store, jl)
    assert (counts.conversations, counts.messages) == (2, 6)
    c = store.get_conversation("sg-1")
    assert [(m.role, m.content) for m in c.messages] == [
        ("system", "You are helpful."),
        ("user", "Name a prime."),
        ("assistant", "7"),
    ]
    assert c.source == "import:sharegpt" and store.get_conversation("sg-2").user_id == "u2"

    arr = tmp_path / "sg.json"
    bad = {"conversations": [{"from": "alien", "value": "hi"}]}
    arr.write_text(json.dumps([{**conv, "id": "sg-3"}, bad]), encoding="utf-8")
    counts = run_import(store, arr, "sharegpt")
    assert (counts.conversations, counts.skipped) == (1, 1)
    assert counts.errors[0]["field"] == "[1].conversations[0].from" and counts.errors[0]["line"] == 2


def test_locomo(store: Store, tmp_path: Path) -> None:
    sample = {
        "sample_id": "conv-7",
        "conversation": {
            "speaker_a": "Caroline",
            "speaker_b": "Melanie",
            "session_1_date_time": "1:56 pm on 8 May, 2023",
            "session_1": [
                {"speaker": "Caroline", "dia_id": "D1:1", "text": "I went to a support group yesterday."},
                {"speaker": "Melanie", "dia_id": "D1:2", "text": "That's great!", "blip_caption": "a sunset"},
            ],
            "session_2_date_time": "10:37 am on 27 June, 2023",
            "session_2": [{"speaker": "Melanie", "dia_id": "D2:1", "text": "How was the parade?"}],
            "session_10": [{"speaker": "Caroline", "dia_id": "D10:1", "text": "late session"}],
        },
        "qa": [{"question": "When did Caroline go?", "answer": "7 May 2023", "evidence": ["D1:1"], "category": 2}],
        "observation": {
            "session_1_observation": {
                "Caroline": [["Caroline went to a support group.", "D1:1"]],
                "Melanie": [["Melanie shared a sunset photo.", ["D1:2", "D2:1"]], ["malformed"]],
            },
            "session_2_observation": "not a mapping",
        },
    }
    path = tmp_path / "locomo10.json"
    path.write_text(json.dumps([sample]), encoding="utf-8")
    assert detect_format(path) == "locomo"
    counts = run_import(store, path)
    assert (counts.conversations, counts.messages) == (3, 4)
    s1 = store.get_conversation("conv-7:session_1")
    assert s1.user_id == "conv-7" and s1.started_utc == datetime(2023, 5, 8, 13, 56, tzinfo=UTC)
    assert [m.role for m in s1.messages] == ["user", "assistant"]
    assert s1.messages[1].content == "That's great! [shares a photo: a sunset]"
    assert s1.messages[0].metadata == {"dia_id": "D1:1", "speaker": "Caroline"}
    assert store.get_conversation("conv-7:session_2").messages[0].role == "assistant"
    assert store.get_conversation("conv-7:session_10").messages[0].content == "late session"

    from afterword.importers.locomo import load_observations, load_qa

    assert load_qa(path)[0]["sample_id"] == "conv-7"
    obs = load_observations(path)  # statements with the turns they rest on; malformed entries skipped
    assert [(o["speaker"], o["text"], o["evidence"]) for o in obs] == [
        ("Caroline", "Caroline went to a support group.", ["D1:1"]),
        ("Melanie", "Melanie shared a sunset photo.", ["D1:2", "D2:1"]),
    ]
    assert {o["sample_id"] for o in obs} == {"conv-7"} and obs[0]["session"] == "session_1_observation"


GOOD = {"user": "u1", "session_id": "ok-{n}", "messages": [{"role": "user", "content": "hi {n}"}]}


def good(n: int) -> str:
    return json.dumps(GOOD).replace("{n}", str(n))


def malformed_file(path: Path) -> Path:
    lines = [
        good(1),  # 1
        '{"messages": [{"role": "user", "content": "unterminated"',  # 2 invalid JSON
        good(3),  # 3
        b'{"messages": [{"role": "user", "content": "caf\xe9"}]}',  # 4 invalid UTF-8 (latin-1)
        '{"messages": [{"role": "user", "content": 42}]}',  # 5 wrong type
        '{"messages": [{"role": "wizard", "content": "x"}]}',  # 6 bad role
        '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],'
        ' "feedback": [{"message_index": 7, "thumbs": 1}]}',  # 7 feedback index out of range
        '{"user": {"id": 1}, "messages": [{"role": "user", "content": "x"}]}',  # 8 wrong type
        '{"conversation": []}',  # 9 no messages
        "",  # 10 blank: ignored
        "[1, 2]",  # 11 not an object
        '{"messages": [{"role": "user", "content": "x", "usage": {"prompt_tokens": "many"}}]}',  # 12
        '{"messages": [{"role": "user", "content": "x"}], "feedback": [{"message_index": 0, "rating": 9}]}',  # 13
        good(14),  # 14
    ]
    with open(path, "wb") as fh:
        for line in lines:
            fh.write((line if isinstance(line, bytes) else line.encode()) + b"\n")
    return path


EXPECTED_ERRORS = {
    2: None,
    4: None,
    5: "messages[0].content",
    6: "messages[0].role",
    7: "feedback[0].message_index",
    8: "user",
    9: "messages",
    11: None,
    12: "messages[0].usage.prompt_tokens",
    13: "feedback[0].rating",
}


def test_malformed_lines_are_skipped_and_named(store: Store, tmp_path: Path) -> None:
    path = malformed_file(tmp_path / "bad.jsonl")
    counts = run_import(store, path, "openai")
    assert (counts.conversations, counts.skipped) == (3, len(EXPECTED_ERRORS))
    got = {e["line"]: e["field"] for e in counts.errors}
    assert got == EXPECTED_ERRORS
    assert all(e["file"] == str(path) and e["error"] for e in counts.errors)
    by_line = {e["line"]: e["error"] for e in counts.errors}
    assert "invalid JSON" in by_line[2] and "UTF-8" in by_line[4] and "wizard" in by_line[6]
    assert "out of range" in by_line[7]
    assert sorted(c.external_id for c in store.iter_conversations()) == ["ok-1", "ok-14", "ok-3"]


def test_strict_aborts_on_the_first_bad_record(store: Store, tmp_path: Path) -> None:
    path = malformed_file(tmp_path / "bad.jsonl")
    with pytest.raises(ImportRecordError) as info:
        run_import(store, path, "openai", strict=True)
    assert (info.value.path, info.value.line, info.value.field) == (str(path), 2, None)
    assert f"{path}:2" in str(info.value)
    assert store.stats()["conversations"] == 0  # the batch holding line 1 was never written


def test_a_batch_is_one_transaction(store: Store, tmp_path: Path) -> None:
    """A database failure in the middle of a batch leaves nothing of the batch behind."""
    with store.write() as c:  # a real constraint violation, raised by SQLite itself mid-insert
        c.exec_driver_sql(
            "CREATE TRIGGER no_boom BEFORE INSERT ON messages WHEN NEW.content = 'boom' "
            "BEGIN SELECT RAISE(ABORT, 'boom refused'); END"
        )
    recs = [json.loads(good(n)) for n in range(5)]
    recs[3]["messages"].append({"role": "assistant", "content": "boom"})
    path = write_jsonl(tmp_path / "chat.jsonl", recs)
    with pytest.raises(StoreError, match="boom refused"):
        run_import(store, path, "openai")
    s = store.stats()
    assert (s["conversations"], s["messages"], s["users"]) == (0, 0, 0)
    # batches of about 2 messages: [ok-0, ok-1] commits; [ok-2, ok-3 + boom] is rolled back whole
    with pytest.raises(StoreError):
        run_import(store, path, "openai", batch_size=2)
    with store.read() as c:
        convs = c.execute(sa.select(t.conversations.c.external_id)).scalars().all()
    assert sorted(convs) == ["ok-0", "ok-1"]


def test_import_counts_and_reimport(store: Store, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "c.jsonl", [good(n) for n in range(50)])
    first = run_import(store, path, batch_size=7)
    assert (first.conversations, first.messages) == (50, 50)
    again = run_import(store, path, batch_size=7)
    assert (again.conversations, again.messages, again.conversations_present, again.messages_present) == (0, 0, 50, 50)


def test_detect_format(tmp_path: Path) -> None:
    assert detect_format(write_jsonl(tmp_path / "a.jsonl", [good(1)])) == "openai"
    assert detect_format(write_jsonl(tmp_path / "b.jsonl", [{"conversations": [{"from": "human"}]}])) == "sharegpt"


def _big_file(path: Path, n_convs: int) -> dict[str, int]:
    """Conversations of 2-12 messages with varied text; returns session -> message count."""
    sizes = {}
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n_convs):
            n = 2 + (i * 7) % 11
            msgs = [
                {
                    "role": "user" if k % 2 == 0 else "assistant",
                    "content": f"turn {k} of conversation {i}: {i * k % 97}",
                }
                for k in range(n)
            ]
            sid = f"s{i}"
            sizes[sid] = n
            fh.write(json.dumps({"user": f"u{i % 50}", "session_id": sid, "messages": msgs}) + "\n")
    return sizes


def _count(db: Path, sql: str) -> int:
    with sqlite3.connect(db, timeout=30) as c:
        return c.execute(sql).fetchone()[0]


def test_sigkill_leaves_no_partial_conversation_and_rerun_completes(tmp_path: Path) -> None:
    data, db = tmp_path / "big.jsonl", tmp_path / "kill.db"
    sizes = _big_file(data, 20_000)
    total = sum(sizes.values())
    Store(str(db)).close()  # schema in place, so the poll below can read the tables
    env = {**os.environ, "AFTERWORD_DB": str(db)}
    proc = subprocess.Popen([*CLI, "import", str(data), "--json"], env=env, stdout=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while _count(db, "SELECT count(*) FROM messages") == 0:
            assert proc.poll() is None, "the import finished before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    with sqlite3.connect(db) as c:
        per_conv = c.execute(
            "SELECT c.external_id, count(m.id) FROM conversations c LEFT JOIN messages m ON m.conversation_id = c.id "
            "GROUP BY c.id"
        ).fetchall()
        n_msgs = c.execute("SELECT count(*) FROM messages").fetchone()[0]
    assert 0 < n_msgs < total, "killed part-way"
    assert all(n == sizes[sid] for sid, n in per_conv), "a conversation was written partially"
    assert sum(n for _, n in per_conv) == n_msgs  # no orphan messages either

    out = subprocess.run([*CLI, "import", str(data), "--json"], env=env, capture_output=True, text=True, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["imported_messages"] + res["present_messages"] == total
    assert res["present_conversations"] == len(per_conv)
    assert _count(db, "SELECT count(*) FROM messages") == total
    assert _count(db, "SELECT count(*) FROM conversations") == len(sizes)
