"""The review queue: which judged responses a human should look at first, and what they decide.

The queue holds every judged assistant response without a ``human``
judgment, plus explicit entries in ``review_items`` (tandem disagreements).
It is ordered by **uncertainty × impact**:

- uncertainty is ``1 − confidence`` of the winning judgment (a tandem
  disagreement counts as fully uncertain: a human and the AI disagree);
- impact is ``(1 + log2(1 + n)) × w``, where ``n`` is how many other judged
  responses answered the same request (normalised text) and ``w`` is 1.5 for
  a response judged dissatisfied (a missed failure costs more than a missed
  success), else 1.

A reviewer's decision is recorded as ordinary records, so every later stage
reads it with no special case: accepting or overriding writes a ``human``
judgment (which overrides all others), and a correction writes a
``correction`` feedback record (source ``reviewer``) plus a ``human``
judgment of ``dissatisfied``. The dataset builder turns the correction into
a DPO pair; the lesson is built at once when :mod:`afterword.memory` is
installed (else the memory stage builds it from the correction later).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from afterword.errors import ConfigError, NotFoundError
from afterword.evals.failures import judged_responses
from afterword.records import Evidence, Feedback, Judgment, Label, stable_id, utcnow
from afterword.store import schema as t
from afterword.store.store import Store

__all__ = [
    "review_queue",
    "review_detail",
    "accept",
    "set_label",
    "correct",
    "add_review_item",
    "build_lesson",
    "LABEL_SCORES",
]

LABEL_SCORES = {"dissatisfied": -1.0, "neutral": 0.0, "satisfied": 1.0}


def _norm(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.lower()))


def add_review_item(
    store: Store, message_id: str, reason: str, *, priority: float = 1.0, detail: dict[str, Any] | None = None
) -> str:
    """Put a message in the queue explicitly (idempotent per message and reason)."""
    rid = stable_id("review", message_id, reason)
    with store.write() as conn:
        conn.execute(t.review_items.delete().where(t.review_items.c.id == rid))
        conn.execute(
            t.review_items.insert().values(
                id=rid,
                message_id=message_id,
                reason=reason,
                priority=priority,
                detail_json=detail,
                created_utc=utcnow(),
            )
        )
    return rid


def _reviewed(store: Store) -> set[str]:
    with store.read() as conn:
        return set(conn.execute(sa.select(t.judgments.c.message_id).where(t.judgments.c.source == "human")).scalars())


def review_queue(
    store: Store,
    *,
    label: str | None = None,
    user_id: str | None = None,
    reason: str | None = None,
    query: str | None = None,
    since: datetime | None = None,
    include_reviewed: bool = False,
    limit: int | None = 200,
) -> list[dict[str, Any]]:
    """Queue entries, highest priority first (see the module docstring).

    Filters: the winning ``label``, the conversation's ``user_id``, ``reason``
    (``judgment`` or an explicit reason such as ``tandem-disagreement``), and
    ``query`` (a substring of the request or response, case-insensitive).
    """
    responses = judged_responses(store, since=since)
    reviewed = set() if include_reviewed else _reviewed(store)
    freq = Counter(_norm(r.prompt) for r in responses)
    with store.read() as conn:
        explicit = {
            r.message_id: r
            for r in conn.execute(sa.select(t.review_items).where(t.review_items.c.resolved_utc.is_(None)))
        }
    by_id = {r.message_id: r for r in responses}
    missing = [m for m in explicit if m not in by_id]
    out: list[dict[str, Any]] = []
    for mid in missing:  # explicit entries for messages with no judgment yet
        msg, cid = store.get_message(mid)
        conv = store.get_conversation(cid)
        prompt = next((m.content for m in reversed(conv.messages) if m.role == "user" and m.id != mid), "")
        pos = [m.id for m in conv.messages].index(mid)
        prompt = next((m.content for m in reversed(conv.messages[:pos]) if m.role == "user"), prompt)
        out.append(
            {
                "message_id": mid,
                "conversation_id": cid,
                "user_id": conv.user_id,
                "prompt": prompt,
                "response": msg.content,
                "label": None,
                "score": None,
                "confidence": None,
                "source": None,
                "created_utc": msg.created_utc.isoformat() if msg.created_utc else None,
                "_freq": freq.get(_norm(prompt), 0),
            }
        )
    for r in responses:
        out.append(
            {
                "message_id": r.message_id,
                "conversation_id": r.conversation_id,
                "user_id": r.user_id,
                "prompt": r.prompt,
                "response": r.response,
                "label": r.label,
                "score": r.score,
                "confidence": r.confidence,
                "source": r.source,
                "created_utc": r.created_utc.isoformat() if r.created_utc else None,
                "_freq": freq.get(_norm(r.prompt), 1),
            }
        )
    rows = []
    q = query.lower() if query else None
    for e in out:
        mid = e["message_id"]
        ex = explicit.get(mid)
        if ex is None and (mid in reviewed or e["source"] == "human"):
            continue
        e["reason"] = ex.reason if ex is not None else "judgment"
        if reason and e["reason"] != reason:
            continue
        if label and e["label"] != label:
            continue
        if user_id and e["user_id"] != user_id:
            continue
        if q and q not in e["prompt"].lower() and q not in e["response"].lower():
            continue
        n = max(0, e.pop("_freq") - 1)
        uncertainty = 1.0 if ex is not None else 1.0 - float(e["confidence"] or 0.0)
        impact = (1 + math.log2(1 + n)) * (1.5 if e["label"] == "dissatisfied" else 1.0)
        if ex is not None:
            impact *= max(1.0, float(ex.priority))
        e.update(
            uncertainty=round(uncertainty, 4),
            impact=round(impact, 4),
            priority=round(uncertainty * impact, 4),
            similar=n,
        )
        rows.append(e)
    rows.sort(key=lambda e: (-e["priority"], e["created_utc"] or "", e["message_id"]))
    return rows[:limit] if limit else rows


def review_detail(store: Store, message_id: str) -> dict[str, Any]:
    """One queue entry in full: the conversation, every judgment with its evidence, feedback."""
    msg, cid = store.get_message(message_id)
    if msg.role != "assistant":
        raise ConfigError(f"message {message_id} is a {msg.role} message; only assistant responses are reviewed")
    conv = store.get_conversation(cid)
    judgments = store.judgments_for([message_id])
    evidence_ids = sorted({e.message_id for j in judgments for e in j.evidence if e.message_id})
    with store.read() as conn:
        items = conn.execute(
            sa.select(t.review_items).where(
                t.review_items.c.message_id == message_id, t.review_items.c.resolved_utc.is_(None)
            )
        ).all()
    return {
        "message_id": message_id,
        "conversation_id": cid,
        "user_id": conv.user_id,
        "messages": [
            {
                "id": m.id,
                "role": m.role,
                "content": m.content,
                "created_utc": m.created_utc.isoformat() if m.created_utc else None,
                "target": m.id == message_id,
                "evidence": m.id in evidence_ids,
            }
            for m in conv.messages
        ],
        "judgments": [
            {
                "source": j.source,
                "label": j.label,
                "score": j.score,
                "confidence": j.confidence,
                "model_version": j.model_version,
                "evidence": [e.model_dump() for e in j.evidence],
            }
            for j in sorted(judgments, key=lambda j: j.source)
        ],
        "feedback": [f.model_dump(mode="json") for f in store.feedback_for_messages([message_id])],
        "evidence_ids": evidence_ids,
        "review_items": [{"reason": r.reason, "detail": r.detail_json} for r in items],
    }


def _winning(store: Store, message_id: str) -> Judgment | None:
    js = {j.source: j for j in store.judgments_for([message_id])}
    for s in ("human", "combined", "hindsight-model", "llm-judge", "explicit"):
        if s in js:
            return js[s]
    return None


def _resolve(store: Store, message_id: str) -> None:
    with store.write() as conn:
        conn.execute(
            t.review_items.update()
            .where(t.review_items.c.message_id == message_id, t.review_items.c.resolved_utc.is_(None))
            .values(resolved_utc=utcnow())
        )


def set_label(store: Store, message_id: str, label: str, reviewer: str = "reviewer", note: str | None = None) -> dict:
    """Record a reviewer's label as the ``human`` judgment of ``message_id``."""
    if label not in LABEL_SCORES:
        raise ConfigError(f"unknown label {label!r}; choose from {', '.join(LABEL_SCORES)}")
    msg, _ = store.get_message(message_id)
    if msg.role != "assistant":
        raise ConfigError(f"message {message_id} is not an assistant response")
    store.put_judgments(
        [
            Judgment(
                message_id=message_id,
                source="human",
                label=Label(label),
                score=LABEL_SCORES[label],
                confidence=1.0,
                evidence=[Evidence(signal="reviewer", message_id=message_id, weight=LABEL_SCORES[label], detail=note)],
                model_version=f"review:{reviewer}",
            )
        ]
    )
    _resolve(store, message_id)
    return {"message_id": message_id, "label": label, "reviewer": reviewer}


def accept(store: Store, message_id: str, reviewer: str = "reviewer") -> dict[str, Any]:
    """Confirm the judge's verdict: it becomes the human judgment."""
    j = _winning(store, message_id)
    if j is None:
        raise NotFoundError("judgment for message", message_id)
    return {**set_label(store, message_id, str(j.label), reviewer, note="accepted"), "accepted": True}


def correct(store: Store, message_id: str, text: str, reviewer: str = "reviewer") -> dict[str, Any]:
    """A reviewer's correction: a correction record, a human ``dissatisfied`` judgment, and a lesson."""
    text = text.strip()
    if not text:
        raise ConfigError("a correction needs text")
    msg, cid = store.get_message(message_id)
    if msg.role != "assistant":
        raise ConfigError(f"message {message_id} is not an assistant response")
    fid = store.add_feedback(
        Feedback(kind="correction", message_id=message_id, correction=text, comment=f"by {reviewer}", source="reviewer")
    )
    set_label(store, message_id, "dissatisfied", reviewer, note="corrected")
    return {
        "message_id": message_id,
        "feedback_id": fid,
        "lesson_id": build_lesson(store, message_id, text),
        "reviewer": reviewer,
    }


def build_lesson(store: Store, message_id: str, correction: str, source: str = "reviewer") -> str | None:
    """Build and store the lesson of a correction now, when :mod:`afterword.memory` is installed.

    Returns the memory id, or None when memory is not part of the build or its lesson
    builder has another shape (the memory stage then builds the lesson from the record).
    """
    try:
        from afterword.memory.control import add_memories
        from afterword.memory.lessons import context_of, lesson_from_correction
    except ImportError:
        return None
    msg, cid = store.get_message(message_id)
    situation, _next = context_of(store, message_id)
    user_id = store.get_conversation(cid).user_id
    try:
        mem = lesson_from_correction(msg, situation, correction, user_id=user_id, conversation_id=cid, source=source)
    except TypeError:
        return None
    if mem is None:
        return None
    return add_memories(store, [mem])[0]
