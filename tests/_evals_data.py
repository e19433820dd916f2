"""A small judged history for the eval, UI and tandem tests (and the showcase bench).

Six weeks, eight users. Three kinds of request keep failing (reversing a
list in Python, converting miles to kilometres, time zones), each asked in
slightly different words by several users; two kinds go well. Judgments are
written as the judge would write them (``combined`` and ``hindsight-model``,
with evidence on the user's reaction), and some failures carry a correction.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from afterword.records import Conversation, Evidence, Feedback, Judgment, Message
from afterword.store.store import Store

FAILING = {
    "reverse": (
        [
            "How do I reverse a list in Python?",
            "how do i reverse a list in python",
            "How can I reverse a Python list?",
            "What's the way to reverse a list in Python?",
        ],
        "Use list.backwards() to reverse it.",
        "Use my_list.reverse() to reverse in place, or my_list[::-1] for a reversed copy.",
    ),
    "miles": (
        [
            "Convert 5 miles to kilometres",
            "convert 5 miles to km",
            "How many kilometres is 5 miles?",
            "5 miles in kilometers?",
        ],
        "5 miles is 3.1 kilometres.",
        "5 miles is about 8.05 kilometres (1 mile = 1.609 km).",
    ),
    "tokyo": (
        [
            "If it is noon in London, what time is it in Tokyo?",
            "noon in London - what time in Tokyo?",
            "What time is it in Tokyo when it's 12:00 in London?",
        ],
        "It is also noon in Tokyo.",
        "It is 9 pm in Tokyo in winter (UTC+9 vs UTC+0), 8 pm during British summer time.",
    ),
}
GOOD = [
    ("Give me a synonym for happy", "Joyful."),
    ("What is the capital of France?", "Paris."),
    ("Suggest a name for a grey cat", "How about Smokey?"),
    ("Write a haiku about rain", "Soft rain on the roof / the garden drinks in silence / puddles hold the sky"),
]
NEGATIVE = ["no, that's wrong", "That is not right at all", "wrong answer, try again"]
POSITIVE = ["thanks!", "great, thank you", "perfect"]


def build_history(store: Store, seed: int = 0, start: datetime | None = None) -> dict[str, list[str]]:
    """Fill ``store``; returns the assistant message ids by kind (``bad``, ``good``, ``uncertain``, ``corrected``)."""
    rng = random.Random(seed)
    start = start or datetime(2026, 9, 7, 9, 0, tzinfo=UTC)
    convs: list[tuple[Conversation, str, str | None]] = []
    for week in range(6):
        for u in range(8):
            when = start + timedelta(days=7 * week + rng.randint(0, 4), hours=u)
            user = f"user{u}"
            if rng.random() < 0.55:
                kind = rng.choice(sorted(FAILING))
                prompts, bad, fix = FAILING[kind]
                # The failures fade in the last weeks for 'reverse' (the system learned).
                good_now = kind == "reverse" and week >= 4
                answer = fix if good_now else bad
                reaction = rng.choice(POSITIVE if good_now else NEGATIVE)
                prompt = rng.choice(prompts)
                correction = fix if (not good_now and rng.random() < 0.35) else None
                tag = "good" if good_now else "bad"
            else:
                prompt, answer = rng.choice(GOOD)
                reaction, correction, tag = rng.choice(POSITIVE), None, "good"
                if rng.random() < 0.2:
                    reaction, tag = "hmm ok", "uncertain"
            fb = [Feedback(kind="correction", message_index=1, correction=correction)] if correction else []
            conv = Conversation(
                user_id=user,
                external_id=f"s{week}-{u}",
                started_utc=when,
                messages=[
                    Message(role="user", content=prompt, created_utc=when),
                    Message(role="assistant", content=answer, created_utc=when + timedelta(seconds=5)),
                    Message(role="user", content=reaction, created_utc=when + timedelta(seconds=40)),
                ],
                feedback=fb,
            )
            convs.append((conv, tag, correction))
    store.import_conversations([c for c, _, _ in convs])
    ids: dict[str, list[str]] = {"bad": [], "good": [], "uncertain": [], "corrected": []}
    judgments = []
    for conv, tag, correction in convs:
        stored = store.get_conversation(conv.external_id or "")
        resp, reaction = stored.messages[1], stored.messages[2]
        ids[tag].append(resp.id or "")
        if correction:
            ids["corrected"].append(resp.id or "")
        if tag == "bad":
            label, score, conf, w = "dissatisfied", -0.7, round(rng.uniform(0.6, 0.95), 3), -0.8
        elif tag == "good":
            label, score, conf, w = "satisfied", 0.7, round(rng.uniform(0.6, 0.95), 3), 0.8
        else:
            label, score, conf, w = "neutral", 0.05, round(rng.uniform(0.2, 0.45), 3), 0.1
        ev = [Evidence(signal="reaction", message_id=reaction.id, weight=w, detail=reaction.content)]
        if correction:
            ev.append(Evidence(signal="explicit_correction", message_id=resp.id, weight=-1.0, detail=correction))
        for source in ("combined", "hindsight-model"):
            judgments.append(
                Judgment(
                    message_id=resp.id or "",
                    source=source,
                    label=label,
                    score=score,
                    confidence=conf,
                    evidence=ev,
                    model_version="test-fixture",
                    created_utc=resp.created_utc,
                )
            )
    store.put_judgments(judgments)
    return ids
