"""Tandem mode: a human and the AI answer the same task independently, and are compared.

1. :func:`add_task` registers the task (a request, and optionally a reference
   answer or a rubric).
2. :func:`answer_human` and :func:`answer_ai` record the two answers, in any
   order. The AI answer is also stored as an ordinary conversation (source
   ``tandem``), so reviews, corrections and training pairs can hang off it.
3. :func:`compare_task` decides who was right, by one of three methods:
   ``reference`` (reference-match score of each answer ≥ ``threshold``),
   ``rubric`` (an LLM judge grades each answer against the rubric), or
   ``pick`` (a reviewer says which answers are correct).

Outcomes: ``agree`` (both right), ``both_wrong``, ``ai_wrong``, ``human_wrong``.
A disagreement decided automatically goes to the review queue (reason
``tandem-disagreement``) for a human to confirm. Where the AI was wrong, the
human's answer (else the reference) becomes a ``correction`` record on the AI
message: the dataset builder turns it into a DPO pair, and the lesson is built
at once when :mod:`afterword.memory` is installed (else by the memory stage).
Where the human was wrong, a coaching item for that human holds the task,
their answer and the better one. :func:`tandem_stats` gives per-human and
per-model accuracy, overall and per week.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from afterword.errors import ConfigError, NotFoundError
from afterword.evals.scoring import reference_match, rubric_score, similarities
from afterword.llm import LLMClient
from afterword.records import Conversation, Feedback, Message, stable_id, utcnow
from afterword.store import schema as t
from afterword.store.store import Store, aware

__all__ = [
    "TandemTask",
    "METHODS",
    "add_task",
    "answer_human",
    "answer_ai",
    "compare_task",
    "get_task",
    "list_tasks",
    "coaching_items",
    "tandem_stats",
]

METHODS = ("reference", "rubric", "pick")
_PICKS = {"human": (True, False), "ai": (False, True), "both": (True, True), "neither": (False, False)}


@dataclass
class TandemTask:
    id: str
    prompt: str
    reference: str | None
    rubric: str | None
    human_id: str | None
    human_answer: str | None
    model: str | None
    ai_answer: str | None
    message_id: str | None
    method: str | None
    human_score: float | None
    ai_score: float | None
    human_correct: bool | None
    ai_correct: bool | None
    outcome: str | None
    created_utc: datetime
    compared_utc: datetime | None
    metadata: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        for k in ("created_utc", "compared_utc"):
            d[k] = d[k].isoformat() if d[k] else None
        return d


def _from_row(r: Any) -> TandemTask:
    return TandemTask(
        id=r.id,
        prompt=r.prompt,
        reference=r.reference,
        rubric=r.rubric,
        human_id=r.human_id,
        human_answer=r.human_answer,
        model=r.model,
        ai_answer=r.ai_answer,
        message_id=r.message_id,
        method=r.method,
        human_score=r.human_score,
        ai_score=r.ai_score,
        human_correct=r.human_correct,
        ai_correct=r.ai_correct,
        outcome=r.outcome,
        created_utc=aware(r.created_utc),  # type: ignore[arg-type]
        compared_utc=aware(r.compared_utc),
        metadata=r.metadata_json or {},
    )


def get_task(store: Store, task_id: str) -> TandemTask:
    with store.read() as conn:
        r = conn.execute(sa.select(t.tandem_tasks).where(t.tandem_tasks.c.id == task_id)).first()
    if r is None:
        raise NotFoundError("tandem task", task_id)
    return _from_row(r)


def list_tasks(store: Store, *, human_id: str | None = None, outcome: str | None = None) -> list[TandemTask]:
    q = sa.select(t.tandem_tasks).order_by(t.tandem_tasks.c.created_utc)
    if human_id:
        q = q.where(t.tandem_tasks.c.human_id == human_id)
    if outcome:
        q = q.where(t.tandem_tasks.c.outcome == outcome)
    with store.read() as conn:
        return [_from_row(r) for r in conn.execute(q)]


def _update(store: Store, task_id: str, **values: Any) -> TandemTask:
    with store.write() as conn:
        n = conn.execute(t.tandem_tasks.update().where(t.tandem_tasks.c.id == task_id).values(**values)).rowcount
    if not n:
        raise NotFoundError("tandem task", task_id)
    return get_task(store, task_id)


def add_task(
    store: Store,
    prompt: str,
    *,
    reference: str | None = None,
    rubric: str | None = None,
    human_id: str | None = None,
    metadata: dict[str, Any] | None = None,
    created_utc: datetime | None = None,
) -> TandemTask:
    """Register a task for a human and the AI to answer independently."""
    if not prompt.strip():
        raise ConfigError("a tandem task needs a prompt")
    now = created_utc or utcnow()
    tid = stable_id("tandem", prompt, human_id, now.isoformat(), n=12)
    with store.write() as conn:
        conn.execute(
            t.tandem_tasks.insert().values(
                id=tid,
                prompt=prompt,
                reference=reference,
                rubric=rubric,
                human_id=human_id,
                created_utc=now,
                metadata_json=metadata,
            )
        )
    return get_task(store, tid)


def answer_human(
    store: Store, task_id: str, text: str, *, human_id: str | None = None, when: datetime | None = None
) -> TandemTask:
    task = get_task(store, task_id)
    who = human_id or task.human_id
    if not who:
        raise ConfigError("whose answer is it? pass human_id")
    return _update(store, task_id, human_answer=text, human_id=who, human_answered_utc=when or utcnow())


def answer_ai(
    store: Store,
    task_id: str,
    *,
    text: str | None = None,
    endpoint: str | None = None,
    model: str | None = None,
    system_prompt: str | None = None,
    max_tokens: int = 256,
    when: datetime | None = None,
) -> TandemTask:
    """Record the AI's answer: ``text`` as given, or asked from ``model`` at ``endpoint``."""
    task = get_task(store, task_id)
    if text is None:
        given = {k: v for k, v in (("base_url", endpoint), ("model", model)) if v}
        client = LLMClient(**given)  # unset ones come from AFTERWORD_LLM_URL / AFTERWORD_LLM_MODEL
        try:
            msgs = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
                {"role": "user", "content": task.prompt}
            ]
            text = client.chat(msgs, max_tokens=max_tokens)
            model = client.model
        finally:
            client.close()
    when = when or utcnow()
    conv = store.add_conversation(
        Conversation(
            external_id=f"tandem:{task.id}",
            source="tandem",
            started_utc=when,
            metadata={"tandem_task": task.id},
            messages=[
                Message(role="user", content=task.prompt, created_utc=when),
                Message(role="assistant", content=text, model=model, created_utc=when),
            ],
        )
    )
    mid = next(m.id for m in reversed(conv.messages) if m.role == "assistant" and m.content == text)
    return _update(store, task_id, ai_answer=text, model=model or "unknown", ai_answered_utc=when, message_id=mid)


def _outcome(human_ok: bool, ai_ok: bool) -> str:
    if human_ok and ai_ok:
        return "agree"
    if not human_ok and not ai_ok:
        return "both_wrong"
    return "ai_wrong" if human_ok else "human_wrong"


def compare_task(
    store: Store,
    task_id: str,
    *,
    method: str | None = None,
    pick: str | None = None,
    judge: LLMClient | None = None,
    threshold: float = 0.5,
    reviewer: str | None = None,
    when: datetime | None = None,
) -> TandemTask:
    """Decide who was right and act on it (see the module docstring)."""
    task = get_task(store, task_id)
    if task.human_answer is None or task.ai_answer is None:
        raise ConfigError(f"task {task_id} needs both answers before it can be compared")
    method = method or ("pick" if pick else "reference" if task.reference else "rubric" if task.rubric else None)
    if method not in METHODS:
        raise ConfigError("no way to compare: give the task a reference or a rubric, or pass a reviewer's pick")
    hs = as_ = None
    if method == "pick":
        if pick not in _PICKS:
            raise ConfigError(f"pick must be one of {', '.join(_PICKS)}")
        human_ok, ai_ok = _PICKS[pick]
    elif method == "reference":
        if not task.reference:
            raise ConfigError(f"task {task_id} has no reference answer")
        sims = similarities([(task.human_answer, task.reference), (task.ai_answer, task.reference)])
        hs = reference_match(task.human_answer, task.reference, sims[0], task.prompt)["reference"]
        as_ = reference_match(task.ai_answer, task.reference, sims[1], task.prompt)["reference"]
        human_ok, ai_ok = hs >= threshold, as_ >= threshold
    else:
        if judge is None or not task.rubric:
            raise ConfigError("rubric comparison needs a rubric on the task and an LLM judge")
        hs, _ = rubric_score(judge, task.prompt, task.human_answer, task.rubric, task.reference)
        as_, _ = rubric_score(judge, task.prompt, task.ai_answer, task.rubric, task.reference)
        if hs is None or as_ is None:
            raise ConfigError("the rubric judge gave no grade; compare by pick instead")
        human_ok, ai_ok = hs >= threshold, as_ >= threshold
    outcome = _outcome(human_ok, ai_ok)
    now = when or utcnow()
    meta = {**task.metadata, "reviewer": reviewer} if reviewer else task.metadata
    task = _update(
        store,
        task_id,
        method=method,
        human_score=hs,
        ai_score=as_,
        human_correct=human_ok,
        ai_correct=ai_ok,
        outcome=outcome,
        compared_utc=now,
        metadata_json=meta or None,
    )
    if outcome in ("ai_wrong", "human_wrong") and method != "pick" and task.message_id:
        from afterword.ui.review import add_review_item

        add_review_item(
            store,
            task.message_id,
            "tandem-disagreement",
            priority=2.0,
            detail={"task": task.id, "outcome": outcome, "human": task.human_id, "human_answer": task.human_answer},
        )
    if outcome == "ai_wrong" and task.message_id:
        _ai_wrong(store, task, now)
    if outcome == "human_wrong" and task.human_id:
        _coach(store, task, now)
    return task


def _ai_wrong(store: Store, task: TandemTask, now: datetime) -> None:
    """The AI answer gets a correction (-> DPO pair) and, where memory is installed, a lesson."""
    better = task.human_answer or task.reference or ""
    existing = [f for f in store.feedback_for_messages([task.message_id or ""]) if f.source == "tandem"]
    if existing or not better:
        return
    store.add_feedback(
        Feedback(
            kind="correction",
            message_id=task.message_id,
            correction=better,
            comment=f"tandem task {task.id}: {task.human_id} was right ({task.method})",
            source="tandem",
            created_utc=now,
        )
    )
    from afterword.ui.review import build_lesson

    build_lesson(store, task.message_id or "", better, source="tandem")


def _coach(store: Store, task: TandemTask, now: datetime) -> None:
    score = f" (your score {task.human_score:.2f}, AI {task.ai_score:.2f})" if task.human_score is not None else ""
    with store.write() as conn:
        cid = stable_id("coach", task.id, task.human_id)
        conn.execute(t.coaching_items.delete().where(t.coaching_items.c.id == cid))
        conn.execute(
            t.coaching_items.insert().values(
                id=cid,
                human_id=task.human_id,
                task_id=task.id,
                prompt=task.prompt,
                your_answer=task.human_answer,
                better_answer=task.reference or task.ai_answer,
                note=f"judged by {task.method}{score}",
                created_utc=now,
            )
        )


def coaching_items(store: Store, human_id: str | None = None) -> list[dict[str, Any]]:
    q = sa.select(t.coaching_items).order_by(t.coaching_items.c.created_utc)
    if human_id:
        q = q.where(t.coaching_items.c.human_id == human_id)
    with store.read() as conn:
        rows = conn.execute(q).all()
    return [
        {
            "id": r.id,
            "human_id": r.human_id,
            "task_id": r.task_id,
            "prompt": r.prompt,
            "your_answer": r.your_answer,
            "better_answer": r.better_answer,
            "note": r.note,
            "created_utc": aware(r.created_utc).isoformat(),  # type: ignore[union-attr]
        }
        for r in rows
    ]


def tandem_stats(store: Store) -> dict[str, Any]:
    """Per-human and per-model accuracy (overall and per week) and the outcome counts."""
    from afterword.evals.dashboard import tandem_weekly

    tasks = [x for x in list_tasks(store) if x.outcome]
    overall: dict[str, dict[str, dict[str, Any]]] = {"human": {}, "model": {}}
    for kind, who_attr, ok_attr in (("human", "human_id", "human_correct"), ("model", "model", "ai_correct")):
        for x in tasks:
            who, ok = getattr(x, who_attr), getattr(x, ok_attr)
            if who is None or ok is None:
                continue
            d = overall[kind].setdefault(who, {"n": 0, "correct": 0})
            d["n"] += 1
            d["correct"] += int(ok)
        for d in overall[kind].values():
            d["accuracy"] = round(d["correct"] / d["n"], 4)
    outcomes: dict[str, int] = {}
    for x in tasks:
        outcomes[x.outcome or ""] = outcomes.get(x.outcome or "", 0) + 1
    return {
        "tasks": len(tasks),
        "outcomes": outcomes,
        "agreement_rate": round(outcomes.get("agree", 0) / len(tasks), 4) if tasks else None,
        "human": overall["human"],
        "model": overall["model"],
        "weekly": tandem_weekly(store),
    }
