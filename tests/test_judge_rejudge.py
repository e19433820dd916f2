"""Re-judging: explicit feedback stored after a judgment, and ``--rejudge`` after calibrating."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import sqlalchemy as sa
from typer.testing import CliRunner

from afterword.importers import run_import
from afterword.judge.runner import judge_store, pending_conversations
from afterword.store import schema as t

_TURNS = [
    ("user", "What's the boiling point of water at sea level in Fahrenheit?", "2026-09-10T09:00:00Z"),
    ("assistant", "Water boils at 200°F at sea level.", "2026-09-10T09:00:02Z"),
    ("user", "great, thanks!", "2026-09-10T09:00:30Z"),
]


def _record(feedback=None, session="zed-001"):
    rec = {
        "user": "zed",
        "session_id": session,
        "timestamp": "2026-09-10T09:00:00Z",
        "model": "gpt-4o-mini",
        "messages": [{"role": r, "content": c, "timestamp": ts} for r, c, ts in _TURNS],
    }
    if feedback is not None:
        rec["feedback"] = feedback
    return rec


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


# Given by the user minutes after the answer: long before any judgment is written.
_LATE = [{"thumbs": -1, "correction": "Water boils at 212°F at sea level.", "timestamp": "2026-09-10T09:05:00Z"}]


def _answer(store, session="zed-001"):
    conv = store.get_conversation(session)
    return conv, conv.messages[1]


def test_feedback_imported_after_the_judgment_is_rejudged(store, tmp_path):
    run_import(store, _write(tmp_path / "a.jsonl", [_record()]))
    first = judge_store(store)
    assert first["judged"] == 1
    conv, answer = _answer(store)
    (j,) = store.judgments_for([answer.id], source="hindsight-model")
    assert j.label == "satisfied"
    assert pending_conversations(store) == []

    # Same conversation again, now with a thumbs-down and a correction (older than the judgment).
    run_import(store, _write(tmp_path / "b.jsonl", [_record(feedback=_LATE)]))
    assert pending_conversations(store) == [conv.id]
    again = judge_store(store)
    assert again["judged"] == 1
    (j,) = store.judgments_for([answer.id], source="hindsight-model")
    assert j.label == "dissatisfied" and j.score == -1.0 and j.confidence == 1.0
    assert [e.signal for e in j.evidence] == ["explicit_correction"]
    assert j.evidence[0].message_id == answer.id

    # Settled: nothing pending, and importing the same feedback again changes nothing.
    assert pending_conversations(store) == []
    run_import(store, _write(tmp_path / "b2.jsonl", [_record(feedback=_LATE)]))
    assert judge_store(store)["judged"] == 0


def test_a_later_feedback_that_flips_the_verdict_is_rejudged(store, tmp_path):
    run_import(store, _write(tmp_path / "a.jsonl", [_record(feedback=_LATE)]))
    judge_store(store)
    _, answer = _answer(store)
    (j,) = store.judgments_for([answer.id], source="hindsight-model")
    assert j.label == "dissatisfied"
    # The user changed their mind later on (the latest feedback wins).
    up = [*_LATE, {"thumbs": 1, "timestamp": "2026-09-10T10:00:00Z"}]
    run_import(store, _write(tmp_path / "b.jsonl", [_record(feedback=up)]))
    assert judge_store(store)["judged"] == 1
    (j,) = store.judgments_for([answer.id], source="hindsight-model")
    assert j.label == "satisfied" and [e.signal for e in j.evidence] == ["explicit_thumbs"]
    assert judge_store(store)["judged"] == 0


def _created(store):
    with store.read() as conn:
        return dict(conn.execute(sa.select(t.judgments.c.message_id, t.judgments.c.created_utc)).all())


def test_rejudge_rejudges_everything_in_scope(store, tmp_path):
    recs = [_record(session="zed-001"), _record(session="zed-002")]
    recs[1]["user"], recs[1]["timestamp"] = "amy", "2026-10-01T09:00:00Z"
    run_import(store, _write(tmp_path / "a.jsonl", recs))
    assert judge_store(store)["judged"] == 2
    before = _created(store)
    assert judge_store(store)["judged"] == 0

    res = judge_store(store, rejudge=True)
    assert res["conversations"] == 2 and res["judged"] == 2
    after = _created(store)
    assert set(after) == set(before) and all(after[m] > before[m] for m in before)

    only = judge_store(store, rejudge=True, since=datetime(2026, 9, 20, tzinfo=UTC))
    assert only["conversations"] == 1 and only["judged"] == 1
    assert judge_store(store)["judged"] == 0  # rejudging leaves nothing pending


def _cli(db, *args):
    from afterword.cli import app

    res = CliRunner().invoke(app, ["--db", str(db), *args], catch_exceptions=False)
    assert res.exit_code == 0, res.stdout + res.stderr
    return res.stdout


def test_cli_rejudge_and_calibrate_help(tmp_path):
    db = tmp_path / "cli.db"
    _cli(db, "import", str(_write(tmp_path / "a.jsonl", [_record()])), "--json")
    assert json.loads(_cli(db, "judge", "--json").strip().splitlines()[-1])["judged"] == 1
    assert json.loads(_cli(db, "judge", "--json").strip().splitlines()[-1])["judged"] == 0
    assert json.loads(_cli(db, "judge", "--rejudge", "--json").strip().splitlines()[-1])["judged"] == 1
    assert "--rejudge" in _cli(db, "judge", "calibrate", "--help")


def test_calibrate_says_how_to_apply_a_stored_calibrator(tmp_path, monkeypatch):
    import afterword.judge.calibrate as cal

    rep = {"n": 40, "label_counts": {}, "replaced": True, "reason": "cross-validated UAR gain +0.050"}
    monkeypatch.setattr(cal, "calibrate", lambda store, **kw: dict(rep))
    db = tmp_path / "cli.db"
    assert "afterword judge --rejudge" in " ".join(_cli(db, "judge", "calibrate").split())
    assert json.loads(_cli(db, "judge", "calibrate", "--json").strip().splitlines()[-1])["next"] == (
        "afterword judge --rejudge"
    )
