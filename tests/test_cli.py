"""The command line: --json contracts, errors naming file:line:field, export redaction, the main job."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from afterword.cli import app
from afterword.pipeline import sample_path

runner = CliRunner()


def cli(db: Path, *args: str, code: int = 0) -> str:
    res = runner.invoke(app, ["--db", str(db), *[str(a) for a in args]], catch_exceptions=False)
    assert res.exit_code == code, res.stdout + res.stderr
    return res.stdout


def last_json(out: str):
    """--json prints one JSON document, and it is the last line of stdout."""
    lines = out.strip().splitlines()
    assert lines, "no output"
    return json.loads(lines[-1])


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "cli.db"


@pytest.fixture
def loaded(db: Path) -> Path:
    res = last_json(cli(db, "import", sample_path(), "--json"))
    assert res["imported_conversations"] == 75 and res["skipped"] == 0
    return db


def test_every_command_prints_one_json_document(loaded: Path, tmp_path: Path) -> None:
    stats = last_json(cli(loaded, "stats", "--json"))
    assert (stats["users"], stats["conversations"], stats["messages"], stats["feedback"]) == (10, 75, 259, 64)

    hits = last_json(cli(loaded, "search", "pandas append", "--json"))
    assert hits and {h["user_id"] for h in hits} <= {"priya", "tom"}
    wrong = last_json(cli(loaded, "search", "cup flour", "--feedback", "correction", "--role", "assistant", "--json"))
    assert [h["user_id"] for h in wrong] == ["marco"] and "500 g" in wrong[0]["content"]
    assert last_json(cli(loaded, "search", "flour", "--user", "tom", "--json")) == []
    late = last_json(cli(loaded, "search", "flour", "--since", "2026-09-10", "--until", "2026-09-20", "--json"))
    assert late and all("2026-09-10" <= h["created_utc"][:10] < "2026-09-20" for h in late)

    shown = last_json(cli(loaded, "show", "marco-002", "--json"))
    assert shown["user_id"] == "marco" and len(shown["messages"]) == 5
    answer = shown["messages"][1]["id"]
    assert any(f["kind"] == "correction" for f in shown["feedback"])

    fb = last_json(cli(loaded, "feedback", answer, "--thumbs", "down", "--comment", "still wrong", "--json"))
    assert fb["message_id"] == answer
    again = last_json(cli(loaded, "show", shown["id"], "--json"))
    assert len(again["feedback"]) == len(shown["feedback"]) + 1

    out = tmp_path / "export.jsonl"
    exp = last_json(cli(loaded, "export", "--out", out, "--user", "hannah", "--json"))
    assert exp["conversations"] == 8 and exp["redacted"] is True

    forgot = last_json(cli(loaded, "forget", "--user", "hannah", "--yes", "--json"))
    assert forgot["removed"]["messages"] > 0 and forgot["stale_exports"] == [exp["export_id"]]
    assert last_json(cli(loaded, "stats", "--json"))["users"] == 9


def test_errors_are_json_too(loaded: Path) -> None:
    out = cli(loaded, "show", "no-such-conversation", "--json", code=1)
    assert "not found" in last_json(out)["error"]
    out = cli(loaded, "feedback", "whatever", "--json", code=1)
    assert "--thumbs" in last_json(out)["error"]
    out = cli(loaded, "search", "flour", "--feedback", "sideways", "--json", code=1)
    assert "sideways" in last_json(out)["error"]
    out = cli(loaded, "import", sample_path(), "--format", "nope", "--json", code=1)
    assert "unknown import format 'nope'" in last_json(out)["error"]
    out = cli(loaded, "judge", "--head", "no-such-head.npz", "--json", code=1)
    assert "not a shipped head (finetuned, lr)" in last_json(out)["error"]


BAD = [
    '{"user": "a", "messages": [{"role": "user", "content": "fine"}]}',
    '{"user": "a", "messages": [{"role": "robot", "content": "bad role"}]}',
    "not json at all",
    '{"user": "b", "messages": [{"role": "user", "content": "also fine"}]}',
]


def test_import_errors_name_file_line_and_field(db: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(BAD) + "\n", encoding="utf-8")
    res = last_json(cli(db, "import", bad, "--json"))
    assert (res["imported_conversations"], res["skipped"]) == (2, 2)
    assert [(e["file"], e["line"], e["field"]) for e in res["errors"]] == [
        (str(bad), 2, "messages[0].role"),
        (str(bad), 3, None),
    ]
    text = cli(db, "import", bad)  # human output names each bad line too
    assert f"{bad}:2" in text and "messages[0].role" in text and f"{bad}:3" in text
    assert "already present 2" in text

    strict = cli(tmp_path / "strict.db", "import", bad, "--strict", "--json", code=1)
    err = last_json(strict)
    assert err["record"] == {"file": str(bad), "line": 2, "field": "messages[0].role", "error": err["record"]["error"]}
    assert f"{bad}:2: field 'messages[0].role'" in err["error"]


def test_export_redacts_by_default(loaded: Path, tmp_path: Path) -> None:
    pii = ["hannah.keller@example.com", "+44 7700 900123", "sk-live-4f9a8b7c6d5e4f3a2b1c0d9e8f7a", "(415) 555-0134"]
    raw = sample_path().read_text(encoding="utf-8")
    assert all(p in raw for p in pii)

    red = tmp_path / "redacted.jsonl"
    res = last_json(cli(loaded, "export", "--out", red, "--json"))
    text = red.read_text(encoding="utf-8")
    assert res["conversations"] == 75 and len(text.splitlines()) == 75
    assert not [p for p in pii if p in text]
    assert "<EMAIL>" in text and "<PHONE>" in text and "<API_KEY>" in text
    assert res["redaction"]["by_type"]["EMAIL"] >= 2
    # ordinary text survives:
    assert "1 US cup of all-purpose flour is about 120-125 g" in text

    plain = tmp_path / "raw.jsonl"
    res = last_json(cli(loaded, "export", "--out", plain, "--no-redact", "--json"))
    text = plain.read_text(encoding="utf-8")
    assert res["redacted"] is False and all(p in text for p in pii)
    # the export is the import format: it reads back
    back = last_json(cli(tmp_path / "back.db", "import", plain, "--json"))
    assert (back["imported_conversations"], back["imported_messages"], back["skipped"]) == (75, 259, 0)


def test_run_the_foundation_stages_on_a_fresh_db(db: Path, tmp_path: Path, monkeypatch) -> None:
    """`afterword run` with only import + stats (later stages are tested by their own issues)."""
    monkeypatch.setattr("afterword.pipeline.STAGES", [])
    out = cli(db, "run", "--out-dir", tmp_path / "out", "--json")
    summary = last_json(out)
    assert summary["file"] == str(sample_path())
    imp = summary["stages"]["import"]
    assert (imp["imported_conversations"], imp["imported_messages"], imp["imported_feedback"]) == (75, 259, 64)
    assert summary["stats"]["messages"] == 259
    again = last_json(cli(db, "run", "--out-dir", tmp_path / "out", "--json"))
    assert again["stages"]["import"]["imported_messages"] == 0
    assert again["stages"]["import"]["present_messages"] == 259


@pytest.mark.slow  # every stage of the main job, on the shipped sample
def test_afterword_run_end_to_end(tmp_path: Path) -> None:
    """The README's first command, as a user runs it: a fresh directory, the default store."""
    env = {k: v for k, v in os.environ.items() if k != "AFTERWORD_DB"}
    proc = subprocess.run(
        [sys.executable, "-c", "from afterword.cli import main; main()", "run", "--json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = last_json(proc.stdout)
    assert summary["stages"]["import"]["imported_messages"] == 259
    assert (tmp_path / "afterword.db").exists()


def test_stored_text_is_printed_literally_not_as_markup(db: Path, tmp_path: Path) -> None:
    """Brackets in user text are data: `x[/i]` once crashed rich's markup parser, `[df, y]` vanished."""
    f = tmp_path / "brackets.jsonl"
    turns = [
        {"role": "user", "content": "pandas: index x[/i] then concat [df, y]"},
        {"role": "assistant", "content": "use [b]x[i][/b]"},
    ]
    f.write_text(json.dumps({"user": "mk", "session": "s1", "messages": turns}) + "\n", encoding="utf-8")
    cli(db, "import", f)
    shown = cli(db, "show", "s1")
    assert "x[/i]" in shown and "[df, y]" in shown and "[b]x[i][/b]" in shown
    assert "x[/i]" in cli(db, "search", "pandas")
    recalled = cli(db, "memory", "recall", "pandas concat", "--user", "mk")
    assert "x[/i]" in recalled and "[df, y]" in recalled


def test_usage_errors_are_json_with_json(db: Path, capsys) -> None:
    """Bad options and values (click's own errors) also print one JSON line when --json is given."""
    from afterword.cli import main

    for args, needle in [
        (["feedback", "m1", "--rating", "9"], "--rating"),
        (["judge", "--since", "not-a-date"], "--since"),
        (["keys", "create", "--no-such-option"], "--no-such-option"),
    ]:
        with pytest.raises(SystemExit) as exc:
            main(["--db", str(db), *args, "--json"])
        assert exc.value.code == 2
        err = last_json(capsys.readouterr().out)
        assert needle in err["error"] and err["usage"] is True


def test_path_errors_missing_models_and_unknown_users_are_clean(loaded: Path, tmp_path: Path) -> None:
    out = tmp_path / "no-such-dir" / "x.jsonl"
    err = last_json(cli(loaded, "export", "--out", out, "--no-redact", "--json", code=1))
    assert err["path"] == str(out) and "No such file" in err["error"]
    err = last_json(cli(loaded, "score", "--model", tmp_path / "no-model", "--json", code=1))
    assert "train one first" in err["error"]
    err = last_json(cli(loaded, "db", "copy", tmp_path / "typo.db", tmp_path / "copy.db", "--json", code=1))
    assert "must exist" in err["error"] and not (tmp_path / "typo.db").exists()
    assert last_json(cli(loaded, "forget", "--user", "nobody", "--yes", "--json"))["found"] is False
    assert last_json(cli(loaded, "forget", "--user", "tom", "--yes", "--json"))["found"] is True


def test_a_message_needs_content_unless_it_called_a_tool(db: Path, tmp_path: Path) -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}
    lines = [
        {"user": "a", "messages": [{"role": "user"}]},
        {"user": "a", "messages": [{"role": "user", "content": None}]},
        {"user": "a", "messages": [{"role": "user", "content": "rain?"}, {"role": "assistant", "tool_calls": [call]}]},
    ]
    f = tmp_path / "content.jsonl"
    f.write_text("\n".join(json.dumps(x) for x in lines) + "\n", encoding="utf-8")
    res = last_json(cli(db, "import", f, "--json"))
    assert res["imported_conversations"] == 1
    assert [(e["line"], e["field"], e["error"]) for e in res["errors"]] == [
        (1, "messages[0].content", "missing"),
        (2, "messages[0].content", "null"),
    ]


def test_run_names_each_bad_record(db: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("afterword.pipeline.STAGES", [])
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(BAD) + "\n", encoding="utf-8")
    text = cli(db, "run", bad, "--out-dir", tmp_path / "out")
    assert f"{bad}:2" in text and "messages[0].role" in text


def test_a_dataset_rebuilt_in_the_same_folder_replaces_its_record(loaded: Path, tmp_path: Path) -> None:
    for _ in range(2):  # the second build overwrites the first's files, so its record goes too
        cli(loaded, "dataset", "build", "--kind", "sft", "--out", tmp_path / "sft", "--no-redact")
    rows = last_json(cli(loaded, "dataset", "list", "--json"))
    assert [r["path"] for r in rows] == [str((tmp_path / "sft").resolve())]


def test_bad_option_values_are_usage_errors(db: Path, capsys) -> None:
    from afterword.cli import main

    for args, needle in [
        (["dataset", "build", "--kind", "sft", "--split", "bogus"], "user, time, none"),
        (["dataset", "build", "--kind", "sft", "--test-fraction", "1.5"], "--test-fraction"),
        (["dataset", "build", "--kind", "sft", "--min-confidence", "2"], "--min-confidence"),
        (["train", "reward", "--head", "bogus"], "logreg, mlp"),
        (["train", "sft", "--batch-size", "0"], "--batch-size"),
    ]:
        with pytest.raises(SystemExit) as exc:
            main(["--db", str(db), *args, "--json"])
        assert exc.value.code == 2
        assert needle in last_json(capsys.readouterr().out)["error"]


def test_an_eval_run_that_measured_nothing_fails_and_report_checks_its_runs(loaded: Path, tmp_path: Path) -> None:
    cli(loaded, "suite", "create", "fixes", "--from", "corrections", "--limit", "3")
    dead = "http://127.0.0.1:9/v1"  # nothing listens on the discard port: every call fails
    out = cli(loaded, "eval", "run", "--suite", "fixes", "--endpoint", dead, "--model", "m", "--json", code=1)
    err = last_json(out)
    assert "every item" in err["error"] and err["run"]["summary"]["errors"] == 3
    err = last_json(cli(loaded, "report", "--out", tmp_path / "r.html", "--a", err["run"]["id"], "--json", code=1))
    assert "both --a and --b" in err["error"]
    err = last_json(cli(loaded, "report", "--out", tmp_path / "r.html", "--a", "nope", "--b", "nope", "--json", code=1))
    assert "not found" in err["error"] and not (tmp_path / "r.html").exists()
