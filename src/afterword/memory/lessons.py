"""Lessons: what a correction or a bad judgment teaches, in a form that can be retrieved.

A lesson is built structurally, with no LLM, from the record and the turns
around it: the *situation* is the user message the response answered (this
is what gets embedded, so a later paraphrase of the request finds it), *wrong*
is the response, *right* is the correction (or, for a response judged
dissatisfied, the user's follow-up when it reads as a correction). When an
OpenAI-compatible LLM is configured it distils the lessons that have no
right answer (a response the user was unhappy with, nothing more) into one
short rule, which replaces the structural text; the structure is kept in
the other fields, and a reply that is not a usable rule is ignored. A lesson
with a right answer keeps it: the user's own correction is the ground truth,
and an abstract rule in its place is what a small model fails to apply.

The text (what is injected) is short, direct and answer-bearing:
``Previously the user asked: <request> The correct answer is: <correction>``.
It deliberately leaves out the wrong answer (kept in ``wrong``): small models
copy whatever a note contains, and a note saying "…, not <wrong answer>" made
SmolLM2-135M repeat the very mistake (docs/benchmarks.md, repeat-mistake
benchmark: 10/16 mistakes recurred with the wrong answer in the note, 4/16
without it, 13/16 with the earlier abstract wording).

Corrections by users make user-scope lessons (``MemoryConfig.lesson_scope``
may widen them); corrections by reviewers make global ones.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import sqlalchemy as sa

from afterword.llm import LLMClient
from afterword.memory.control import add_memories, edit_memory, memory_id_for
from afterword.memory.memory_config import MemoryConfig
from afterword.records import Memory, Message
from afterword.store import schema as t
from afterword.store.store import Store

__all__ = ["lesson_from_correction", "lesson_from_judgment", "context_of", "distill_rule", "build_lessons", "shorten"]

log = logging.getLogger("afterword.memory")

_CORRECTIVE = re.compile(
    r"^\s*(no\b|nope\b|wrong\b|incorrect\b|actually\b|that'?s (not|wrong|incorrect)|not quite\b|it'?s actually\b|"
    r"the (right|correct) answer is\b)",
    re.IGNORECASE,
)


def shorten(text: str | None, n: int) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= n else text[: n - 1].rstrip() + "…"


#: How lessons began before the current wording (see the module docstring); ``build_lessons`` rewrites them.
_LEGACY_PREFIXES = ("Correction from an earlier conversation: to ", "From an earlier conversation: ")


def _sentence(text: str) -> str:
    """``text`` ending like a sentence, so the next sentence of a lesson does not run into it."""
    return text if not text or text[-1] in ".?!…:;" else text + "."


def context_of(store: Store, message_id: str) -> tuple[str, str | None]:
    """The user request a message answered and the user's reply to it, followed along ``parent_id``.

    The parent chain, not the position in the conversation: when an app sends
    independent one-turn requests under one session id, positions repeat and
    only the parent links say which question a response answered.
    """
    m = t.messages
    before = ""
    with store.read() as conn:
        pid = conn.execute(sa.select(m.c.parent_id).where(m.c.id == message_id)).scalar()
        for _ in range(50):
            if not pid:
                break
            r = conn.execute(sa.select(m.c.role, m.c.content, m.c.parent_id).where(m.c.id == pid)).first()
            if r is None:
                break
            if r.role == "user":
                before = r.content
                break
            pid = r.parent_id
        nxt = conn.execute(
            sa.select(m.c.content).where(m.c.parent_id == message_id, m.c.role == "user").limit(1)
        ).scalar()
    return before, nxt


def lesson_from_correction(
    msg: Message,
    situation: str,
    correction: str,
    *,
    user_id: str | None,
    conversation_id: str | None = None,
    scope: str = "user",
    source: str = "user",
) -> Memory | None:
    """A lesson from a correction of the assistant message ``msg``, which answered ``situation``."""
    if not correction.strip():
        return None
    situation = situation or msg.content
    asked = _sentence(shorten(situation, 160))
    text = f"Previously the user asked: {asked} The correct answer is: {_sentence(shorten(correction, 240))}"
    return Memory(
        kind="lesson",
        scope="global" if source == "reviewer" or not user_id else scope,
        user_id=user_id,
        text=text,
        situation=shorten(situation, 1000),
        wrong=shorten(msg.content, 1000),
        right=correction.strip(),
        evidence_ids=[msg.id] if msg.id else [],
        metadata={"source": "correction", "conversation_id": conversation_id, "by": source},
    )


def lesson_from_judgment(
    msg: Message,
    situation: str,
    after: str | None,
    *,
    user_id: str | None,
    conversation_id: str | None = None,
    scope: str = "user",
    source: str = "",
) -> Memory | None:
    """A lesson from a response judged dissatisfied; the user's reply is the right answer when it corrects."""
    if msg.role != "assistant" or not situation:
        return None
    right = after.strip() if after and _CORRECTIVE.search(after) else None
    if right:
        text = (
            f"Previously the user asked: {_sentence(shorten(situation, 160))} "
            f"The user corrected: {_sentence(shorten(right, 240))}"
        )
    else:
        # Nothing right is known: the only thing to say is what did not work.
        text = (
            f"Previously the user asked: {_sentence(shorten(situation, 160))} The user was unhappy with the answer "
            f'"{shorten(msg.content, 100)}"; answer differently.'
        )
    return Memory(
        kind="lesson",
        scope=scope if user_id else "global",
        user_id=user_id,
        text=text,
        situation=shorten(situation, 1000),
        wrong=shorten(msg.content, 1000),
        right=right,
        evidence_ids=[msg.id] if msg.id else [],
        metadata={"source": f"judgment:{source}", "conversation_id": conversation_id},
    )


_DISTILL = (
    "A user corrected an AI assistant. Write ONE short rule (at most 30 words) that the assistant must follow next "
    'time in the same situation. Reply with JSON only: {"rule": "..."}'
)


def distill_rule(llm: LLMClient, lesson: Memory) -> str | None:
    """The LLM's one-line rule for a lesson, or None when it gives nothing usable."""
    prompt = (
        f"Situation (user request): {shorten(lesson.situation, 400)}\n"
        f"Wrong answer: {shorten(lesson.wrong, 300)}\n"
        f"Correct answer / user's correction: {shorten(lesson.right, 300) or '(not given; the user was unhappy)'}"
    )
    try:
        obj = llm.chat_json(
            [{"role": "system", "content": _DISTILL}, {"role": "user", "content": prompt}], max_tokens=64
        )
    except Exception as exc:  # a weak or absent model must not stop the build
        log.info("lesson distillation failed: %s", exc)
        return None
    rule = obj.get("rule") if isinstance(obj, dict) else None
    if not isinstance(rule, str):
        return None
    rule = " ".join(rule.split())
    if not 8 <= len(rule) <= 300 or rule.strip("{}[]\"' ") == "...":
        return None
    return rule


def _judged_dissatisfied(store: Store, cfg: MemoryConfig) -> list[tuple[str, str]]:
    """(message id, source) of responses whose first-present judgment is dissatisfied and confident."""
    j = t.judgments
    with store.read() as conn:
        rows = conn.execute(
            sa.select(j.c.message_id, j.c.source, j.c.label, j.c.confidence).where(j.c.source.in_(cfg.judgment_sources))
        ).all()
    best: dict[str, Any] = {}
    rank = {s: i for i, s in enumerate(cfg.judgment_sources)}
    for r in rows:
        cur = best.get(r.message_id)
        if cur is None or rank[r.source] < rank[cur.source]:
            best[r.message_id] = r
    return [
        (mid, r.source)
        for mid, r in best.items()
        if r.label == "dissatisfied" and r.confidence >= cfg.judged_min_confidence
    ]


def _user_of(store: Store, message_id: str) -> str | None:
    with store.read() as conn:
        return conn.execute(sa.select(t.messages.c.user_id).where(t.messages.c.id == message_id)).scalar()


def build_lessons(
    store: Store, config: MemoryConfig | None = None, llm: LLMClient | None = None, user_id: str | None = None
) -> dict[str, int]:
    """Build lessons from every correction and confident dissatisfied judgment; returns counts."""
    cfg = config or MemoryConfig()
    lessons: list[Memory] = []
    corrected: set[str] = set()
    for fb, msg, cid in store.corrections(user_id=user_id):
        if not msg.id or not fb.correction:
            continue
        situation, _ = context_of(store, msg.id)
        uid = fb.user_id or _user_of(store, msg.id)
        lesson = lesson_from_correction(
            msg, situation, fb.correction, user_id=uid, conversation_id=cid, scope=cfg.lesson_scope, source=fb.source
        )
        if lesson is not None:
            lessons.append(lesson)
            corrected.add(msg.id)
    n_corr = len(lessons)
    for mid, src in _judged_dissatisfied(store, cfg):
        if mid in corrected:
            continue
        msg, cid = store.get_message(mid)
        uid = _user_of(store, mid)
        if user_id and uid != user_id:
            continue
        situation, after = context_of(store, mid)
        lesson = lesson_from_judgment(
            msg, situation, after, user_id=uid, conversation_id=cid, scope=cfg.lesson_scope, source=src
        )
        if lesson is not None:
            lessons.append(lesson)
    found = len(lessons)
    with store.read() as conn:
        ids = [memory_id_for(x) for x in lessons]
        present = {
            r.id: r.text
            for r in conn.execute(sa.select(t.memories.c.id, t.memories.c.text).where(t.memories.c.id.in_(ids)))
        }
    # Lessons stored in an earlier release's wording (which quoted the wrong answer, and small models
    # repeated it) take the current wording; a text edited by hand no longer starts that way and is kept.
    reworded = 0
    for x, i in zip(lessons, ids, strict=True):
        old = present.get(i)
        if old is not None and old != x.text and old.startswith(_LEGACY_PREFIXES):
            edit_memory(store, i, text=x.text)
            reworded += 1
    lessons = [x for x, i in zip(lessons, ids, strict=True) if i not in present]
    distilled = 0
    if llm is not None and cfg.use_llm:
        for lesson in lessons:
            if lesson.right:
                continue
            rule = distill_rule(llm, lesson)
            if rule:
                lesson.text = rule
                lesson.metadata["distilled"] = True
                distilled += 1
    add_memories(store, lessons)
    return {
        "lessons_from_corrections": n_corr,
        "lessons_from_judgments": found - n_corr,
        "lessons_new": len(lessons),
        "lessons_distilled": distilled,
        "lessons_reworded": reworded,
    }
