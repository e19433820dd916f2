"""``afterword memory …`` end to end on a real SQLite file (each command with --json)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from afterword.cli import app
from afterword.records import Conversation, Feedback, Message
from afterword.store import Store


def _run(db: str, *args: str) -> object:
    res = CliRunner().invoke(app, ["--db", db, *args, "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.output.strip().splitlines()[-1])


def test_memory_commands(tmp_path):
    db = str(tmp_path / "cli.db")
    s = Store(db)
    conv = s.add_conversation(
        Conversation(
            user_id="u1",
            external_id="s1",
            messages=[
                Message(role="user", content="What is the capital of Australia? I prefer metric units."),
                Message(role="assistant", content="Sydney."),
            ],
        )
    )
    s.add_feedback(Feedback(kind="correction", message_id=conv.messages[1].id, correction="Canberra"))
    s.close()

    built = _run(db, "memory", "build", "--no-llm")
    assert built["lessons_new"] == 1 and built["preferences"] == 1
    listed = _run(db, "memory", "list", "--user", "u1")
    assert {m["kind"] for m in listed} == {"lesson", "preference"}
    lesson = next(m for m in listed if m["kind"] == "lesson")
    assert _run(db, "memory", "show", lesson["id"])["right"] == "Canberra"
    hits = _run(db, "memory", "search", "capital city of Australia", "--user", "u1")
    assert hits[0]["memory_id"] == lesson["id"]
    assert _run(db, "memory", "search", "capital city of Australia", "--user", "u2") == []
    inj = _run(db, "memory", "inject", "Which city is Australia's capital?", "--user", "u1")
    assert [i["memory_id"] for i in inj["items"]] == [lesson["id"]] and inj["tokens"] > 0
    assert _run(db, "memory", "edit", lesson["id"], "--text", "Canberra is the capital.")["text"] == (
        "Canberra is the capital."
    )
    assert _run(db, "memory", "pin", lesson["id"])["pinned"] is True
    assert _run(db, "memory", "reindex")["indexed"] == 2
    assert _run(db, "memory", "delete", lesson["id"]) == {"deleted": lesson["id"]}
    bad = CliRunner().invoke(app, ["--db", db, "memory", "show", lesson["id"], "--json"])
    assert bad.exit_code == 1 and "not found" in json.loads(bad.output.strip().splitlines()[-1])["error"]
    forgot = _run(db, "memory", "forget", "--user", "u1", "--yes")
    assert len(forgot["memory_ids"]) == 1
    assert _run(db, "memory", "list", "--all") == []
