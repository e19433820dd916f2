"""Tandem mode: human and AI answer independently; compare; act on who was wrong."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from afterword.errors import ConfigError
from afterword.evals.tandem import (
    add_task,
    answer_ai,
    answer_human,
    coaching_items,
    compare_task,
    get_task,
    tandem_stats,
)
from afterword.ui.review import review_queue

W1 = datetime(2026, 10, 5, 9, tzinfo=UTC)
W2 = W1 + timedelta(days=7)


def _task(store, prompt, reference, human, ai, who="hana", when=W1, model="bot-v1"):  # noqa: ANN001, ANN202
    task = add_task(store, prompt, reference=reference, human_id=who, created_utc=when)
    answer_human(store, task.id, human, when=when)
    answer_ai(store, task.id, text=ai, model=model, when=when)
    return task


def test_ai_wrong_becomes_correction_review_item_and_lesson(store):
    task = _task(
        store,
        "Convert 5 miles to kilometres",
        "5 miles is about 8.05 kilometres.",
        human="About 8.05 kilometres.",
        ai="5 miles is 3.1 kilometres.",
    )
    done = compare_task(store, task.id, when=W1)
    assert done.method == "reference" and done.outcome == "ai_wrong"
    assert done.human_correct and not done.ai_correct and done.human_score > done.ai_score
    # The AI message is an ordinary stored conversation with a correction on it (-> DPO pair).
    fbs = store.feedback_for_messages([done.message_id])
    assert [(f.kind, f.source, f.correction) for f in fbs] == [("correction", "tandem", "About 8.05 kilometres.")]
    assert store.corrections()[0][1].id == done.message_id
    # The disagreement is in the review queue, first.
    queue = review_queue(store)
    assert queue[0]["message_id"] == done.message_id and queue[0]["reason"] == "tandem-disagreement"
    assert review_queue(store, reason="tandem-disagreement")[0]["response"] == "5 miles is 3.1 kilometres."
    # A lesson, when the memory stage is part of the build.
    try:
        from afterword.memory.control import list_memories
    except ImportError:
        return
    lessons = [m for m in list_memories(store) if m.kind == "lesson"]
    assert any("8.05" in (m.right or "") for m in lessons)
    # Comparing again does not duplicate the correction.
    compare_task(store, task.id, when=W1)
    assert len(store.feedback_for_messages([done.message_id])) == 1


def test_human_wrong_becomes_coaching_and_stats(store):
    t1 = _task(store, "Capital of Australia?", "Canberra is the capital.", "Sydney", "Canberra is the capital.")
    t2 = _task(store, "2+2?", "4", "4", "4", when=W2)
    t3 = _task(store, "Largest planet?", "Jupiter", "Saturn", "Mars", who="ivan", when=W2)
    assert compare_task(store, t1.id, when=W1).outcome == "human_wrong"
    assert compare_task(store, t2.id, when=W2).outcome == "agree"
    assert compare_task(store, t3.id, when=W2).outcome == "both_wrong"
    coach = coaching_items(store, "hana")
    assert len(coach) == 1 and coach[0]["your_answer"] == "Sydney" and "Canberra" in coach[0]["better_answer"]
    assert coaching_items(store, "ivan") == []
    stats = tandem_stats(store)
    assert stats["tasks"] == 3 and stats["outcomes"] == {"human_wrong": 1, "agree": 1, "both_wrong": 1}
    assert stats["human"]["hana"] == {"n": 2, "correct": 1, "accuracy": 0.5}
    assert stats["model"]["bot-v1"]["accuracy"] == pytest.approx(2 / 3, abs=1e-3)
    weeks = {(r["who"], r["week"]): r["accuracy"] for r in stats["weekly"]["human"]}
    assert weeks == {("hana", "2026-10-05"): 0.0, ("hana", "2026-10-12"): 1.0, ("ivan", "2026-10-12"): 0.0}


def test_pick_and_errors(store):
    task = add_task(store, "Write a friendly greeting", rubric="Warm and short.", human_id="hana")
    with pytest.raises(ConfigError):
        compare_task(store, task.id)  # no answers yet
    answer_human(store, task.id, "Hi there!")
    answer_ai(store, task.id, text="Greetings, human.", model="bot-v1")
    with pytest.raises(ConfigError):
        compare_task(store, task.id, method="rubric")  # no judge
    done = compare_task(store, task.id, pick="human", reviewer="rita")
    assert done.outcome == "ai_wrong" and done.method == "pick" and done.metadata["reviewer"] == "rita"
    # A reviewer already decided: no review item, but still the correction.
    assert review_queue(store, reason="tandem-disagreement") == []
    assert store.feedback_for_messages([done.message_id])[0].correction == "Hi there!"


@pytest.mark.llm
def test_ai_answer_from_real_model(store, llm):
    task = add_task(store, "What is the capital of France? Answer in one word.", reference="Paris", human_id="hana")
    answer_human(store, task.id, "Paris")
    got = answer_ai(store, task.id, endpoint=llm.base_url, model=llm.model, max_tokens=16)
    assert got.ai_answer and got.model == llm.model
    msg, _ = store.get_message(got.message_id)
    assert msg.role == "assistant" and msg.content == got.ai_answer
    done = compare_task(store, task.id)
    assert done.outcome in ("agree", "ai_wrong") and done.human_correct
    assert get_task(store, task.id).ai_score is not None
