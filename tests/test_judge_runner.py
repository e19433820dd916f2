"""The store-backed judge: incremental, resumable, explicit feedback wins, calibration, the LLM judge."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from afterword.importers import run_import
from afterword.judge.calibrate import calibrate, load_calibrator
from afterword.judge.llm_judge import LLMJudge
from afterword.judge.runner import combine, explain, judge_store, pending_conversations
from afterword.records import Conversation, Evidence, Feedback, Judgment, Message
from afterword.store import schema as t

T0 = datetime(2026, 11, 1, 10, tzinfo=UTC)


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _conv(user, session, day, turns, feedback=None):
    rec = {
        "user": user,
        "session_id": session,
        "timestamp": (T0 + timedelta(days=day)).isoformat(),
        "messages": [{"role": r, "content": c} for r, c in turns],
    }
    if feedback:
        rec["feedback"] = feedback
    return rec


@pytest.fixture
def judged_store(store, tmp_path):
    recs = [
        _conv(
            "ana",
            "a1",
            0,
            [
                ("user", "How many km is 10 miles?"),
                ("assistant", "10 miles is 12 km."),
                ("user", "That's wrong, it's 16.09 km."),
                ("assistant", "Right: 16.09 km."),
                ("user", "thanks!"),
            ],
            feedback=[{"message_index": 1, "correction": "10 miles is 16.09 km"}],
        ),
        _conv(
            "ana",
            "a2",
            2,
            [
                ("user", "How do I reverse a list in Python?"),
                ("assistant", "Use my_list.reverse() or my_list[::-1]."),
                ("user", "Perfect, that worked, thank you!"),
            ],
        ),
        _conv(
            "bob",
            "b1",
            1,
            [("user", "My build fails with error E42"), ("assistant", "Try clearing the cache with make clean.")],
        ),
    ]
    run_import(store, _write(tmp_path / "a.jsonl", recs))
    return store


def _judgment_rows(store):
    with store.read() as conn:
        return conn.execute(sa.select(t.judgments.c.message_id, t.judgments.c.source)).all()


def test_judges_every_assistant_message_once_and_is_incremental(judged_store):
    res = judge_store(judged_store)
    assert res["judged"] == 4  # four assistant messages
    rows = _judgment_rows(judged_store)
    assert len(rows) == len(set(rows)) == 4
    assert pending_conversations(judged_store) == []
    again = judge_store(judged_store)
    assert again["judged"] == 0


def test_explicit_correction_overrides_and_is_the_evidence(judged_store):
    judge_store(judged_store)
    conv = judged_store.get_conversation("a1")
    wrong = conv.messages[1]
    (j,) = judged_store.judgments_for([wrong.id], source="hindsight-model")
    assert j.label == "dissatisfied" and j.score == -1.0 and j.confidence == 1.0
    assert j.evidence[0].signal == "explicit_correction"
    assert j.evidence[0].message_id == wrong.id


def test_late_feedback_triggers_rejudging(judged_store):
    judge_store(judged_store)
    conv = judged_store.get_conversation("a2")
    answer = conv.messages[1]
    judged_store.add_feedback(Feedback(kind="thumbs", thumbs=-1, message_id=answer.id))
    assert conv.id in pending_conversations(judged_store)
    judge_store(judged_store)
    (j,) = judged_store.judgments_for([answer.id], source="hindsight-model")
    assert j.label == "dissatisfied"
    assert j.evidence[0].signal == "explicit_thumbs"


def test_a_later_conversation_of_the_same_user_reopens_the_earlier_one(judged_store, tmp_path):
    judge_store(judged_store)
    assert pending_conversations(judged_store) == []
    later = _conv(
        "bob",
        "b2",
        3,
        [
            ("user", "The build still fails with E42 after make clean, it did not work"),
            ("assistant", "Then reinstall the toolchain."),
        ],
    )
    run_import(judged_store, _write(tmp_path / "b.jsonl", [later]))
    b1 = judged_store.get_conversation("b1")
    b2 = judged_store.get_conversation("b2")
    assert set(pending_conversations(judged_store)) == {b1.id, b2.id}
    judge_store(judged_store)
    (j,) = judged_store.judgments_for([b1.messages[1].id], source="hindsight-model")
    later_ids = {m.id for m in b2.messages}
    later_ev = [e for e in j.evidence if e.message_id in later_ids]
    assert later_ev, f"expected evidence from the later session, got {[e.signal for e in j.evidence]}"
    assert j.score < 0


def test_resumes_after_a_partial_run(judged_store):
    first = judge_store(judged_store, limit=1, batch_size=1)
    assert first["conversations"] == 1 and len(_judgment_rows(judged_store)) == 2
    # The earlier session of a user is queued again while a later one of theirs is pending.
    assert len(pending_conversations(judged_store)) == 3
    judge_store(judged_store, batch_size=1)
    rows = _judgment_rows(judged_store)
    assert len(rows) == len(set(rows)) == 4
    assert pending_conversations(judged_store) == []


def test_explain_shows_the_evidence_messages(judged_store):
    judge_store(judged_store)
    conv = judged_store.get_conversation("a2")
    data = explain(judged_store, conv.messages[1].id)
    (j,) = data["judgments"]
    texts = {e["message_id"]: e["text"] for e in j["evidence"] if e["message_id"]}
    assert conv.messages[2].id in texts
    assert "worked" in texts[conv.messages[2].id]


def test_combine_keeps_explicit_and_averages_otherwise():
    base = Judgment(
        message_id="m",
        source="hindsight-model",
        label="satisfied",
        score=0.8,
        confidence=0.9,
        evidence=[Evidence(signal="gratitude", weight=0.8)],
    )
    llm = Judgment(
        message_id="m",
        source="llm-judge",
        label="dissatisfied",
        score=-0.8,
        confidence=0.3,
        evidence=[Evidence(signal="llm_dissatisfaction", weight=-1)],
    )
    c = combine(base, llm)
    assert c.source == "combined" and 0 < c.score < 0.8 and len(c.evidence) == 2
    explicit = base.model_copy(update={"evidence": [Evidence(signal="explicit_thumbs", weight=1)]})
    assert combine(explicit, llm).score == 0.8
    assert combine(base, None) is None


def test_calibrate_reports_cv_before_replacing(store):
    convs = []
    for i in range(30):
        good = i % 2 == 0
        reaction = "great, thanks, that solved it" if good else "no, this is useless and wrong"
        convs.append(
            Conversation(
                user_id=f"u{i % 5}",
                external_id=f"s{i}",
                started_utc=T0 + timedelta(hours=i),
                messages=[
                    Message(role="user", content=f"question number {i} about invoices"),
                    Message(role="assistant", content=f"answer {i}"),
                    Message(role="user", content=reaction),
                ],
                feedback=[Feedback(kind="thumbs", thumbs=1 if good else -1, message_index=1)],
            )
        )
    store.import_conversations(convs)
    rep = calibrate(store, dry_run=True)
    assert rep["n"] == 30 and rep["label_counts"]["satisfied"] == 15
    assert set(rep["before"]) == {"uar", "macro_f1", "acc"} and set(rep["after"]) == {"uar", "macro_f1", "acc"}
    assert rep["replaced"] is False and load_calibrator(store) is None
    few = calibrate(store, min_items=100)
    assert few["replaced"] is False and "need at least" in few["reason"]


@pytest.mark.llm
def test_llm_judge_against_the_real_local_model(llm):
    judge = LLMJudge(llm.client(timeout_s=300))
    conv = Conversation(
        id="c",
        messages=[
            Message(id="1", role="user", content="How many km is 10 miles?"),
            Message(id="2", role="assistant", content="10 miles is 12 km."),
            Message(id="3", role="user", content="That's wrong. It is 16 km."),
        ],
    )
    j = judge.judge_message(conv, "2")
    assert j is not None, "the grammar-constrained reply should always parse"
    assert j.source == "llm-judge" and -1 <= j.score <= 1 and 0 <= j.confidence <= 1
    assert j.evidence[-1].signal == "llm_verdict"
    assert all(e.message_id == "3" for e in j.evidence)


@pytest.mark.llm
def test_bench_runs_the_llm_judge_baseline_on_the_real_local_model(llm, tmp_path):
    from afterword.judge.bench import METRIC_KEYS, run_bench

    lines = [
        ("Find a cheap hotel.|||The Acorn is cheap.", "Thanks, that is perfect!", 2),
        ("Find a cheap hotel.|||The Acorn is expensive.", "No, that's wrong, I said cheap.", 0),
        ("Book a table.|||For how many people?", "Four people please.", 1),
    ]
    d = tmp_path / "mwoz"
    d.mkdir()
    text = "".join(f"{[c, r + '|||']!r}\t[0, 0]\t{y}\n" for c, r, y in lines)
    (d / "test_mwoz.txt").write_text(text, encoding="utf-8")
    (d / "valid_mwoz.txt").write_text(text * 3, encoding="utf-8")
    out = run_bench("asap", [d / "test_mwoz.txt"], endpoint=llm.base_url, llm_limit=2)
    llm_row = out["baselines"]["llm_judge"]
    assert set(METRIC_KEYS) <= set(llm_row)
    # Two evenly spread examples (the first and the last), each judged by the model through the rubric.
    assert llm_row["n"] == 2 and llm_row["turns_per_s"] > 0
    assert llm_row["unusable"] == 0, "the grammar-constrained reply should always parse"
    assert set(llm_row["afterword_same_sample"]) == set(METRIC_KEYS)
