"""Repeat-mistake benchmark: after a user corrects the model, does the mistake come back?

With a real local model behind the real ``openai`` SDK:

1. session 1: the user asks each question through ``afterword.wrap``; when
   the answer is wrong, the user corrects it (``afterword.feedback``);
2. ``afterword run``'s memory stage builds lessons from the corrections;
3. session 2, later: the user asks a *paraphrase* of each corrected question,
   once through a plain client (no afterword) and once through
   ``wrap(memory=True)``. A mistake *recurs* when the answer is still wrong.
4. near misses: paraphrases of the questions the model got right in
   session 1 (so they have no lesson, but often a lesson of a similar
   question) are asked without and with afterword: whatever is injected is a
   false injection, and an answer that memory turns wrong is harm done;
5. false injection: unrelated requests by the same user go through the
   injector; any memory injected into them is a false injection.

Grading (:func:`is_correct`) is number-aware and ignores denied mentions
("Istanbul, not Ankara" does not answer Ankara).

The items are short factual questions with one unambiguous answer, each with
a paraphrase that shares few words with the original (so retrieval has to
work by meaning) and the accepted spellings of the answer.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["ITEMS", "UNRELATED", "run_repeat_mistake_bench", "is_correct"]

#: (question, paraphrase, accepted answers (lower-case substrings))
ITEMS: list[tuple[str, str, tuple[str, ...]]] = [
    ("What is the capital of Australia?", "Which city is Australia's seat of government?", ("canberra",)),
    ("What is the capital of Canada?", "Which Canadian city is the national capital?", ("ottawa",)),
    ("What is the capital of Turkey?", "Which city serves as Turkey's capital?", ("ankara",)),
    ("What is the capital of Brazil?", "Name the capital city of Brazil.", ("brasilia", "brasília")),
    ("What is the capital of Switzerland?", "Which Swiss city is the federal city, the capital?", ("bern",)),
    ("What is the capital of New Zealand?", "New Zealand's capital city is which one?", ("wellington",)),
    ("What is the capital of Nigeria?", "Which city is the capital of Nigeria today?", ("abuja",)),
    ("What is the capital of Morocco?", "Morocco's capital is which city?", ("rabat",)),
    ("What is the capital of Kazakhstan?", "Which city is Kazakhstan's capital?", ("astana",)),
    ("What is the capital of Vietnam?", "The capital city of Vietnam is?", ("hanoi", "ha noi")),
    ("What is the chemical symbol for gold?", "Which two letters stand for gold on the periodic table?", ("au",)),
    ("What is the chemical symbol for sodium?", "On the periodic table, sodium is written as?", ("na",)),
    ("How many bones are in the adult human body?", "How many bones does a grown-up human skeleton have?", ("206",)),
    ("How many legs does a spider have?", "Spiders walk on how many legs?", ("8", "eight")),
    ("How many minutes are in a day?", "A full day has how many minutes?", ("1440", "1,440")),
    ("What is 17 times 23?", "Multiply 23 by 17. What do you get?", ("391",)),
    ("What is 15 squared?", "What do you get when you square 15?", ("225",)),
    ("What is the square root of 169?", "Which number multiplied by itself gives 169?", ("13", "thirteen")),
    ("In what year did the Titanic sink?", "The Titanic went down in which year?", ("1912",)),
    ("In what year did the Berlin Wall fall?", "When was the Berlin Wall torn down (year)?", ("1989",)),
    ("Who wrote Pride and Prejudice?", "Pride and Prejudice is a novel by which author?", ("austen",)),
    ("Who painted The Starry Night?", "The Starry Night was painted by whom?", ("van gogh", "gogh")),
    ("Who wrote the Odyssey?", "Which ancient poet is credited with the Odyssey?", ("homer",)),
    ("What is the longest river in South America?", "South America's longest river is called?", ("amazon",)),
    (
        "What is the smallest planet in our solar system?",
        "Which planet of ours is the smallest?",
        ("mercury",),
    ),
    (
        "What is the hottest planet in the solar system?",
        "Which planet has the hottest surface?",
        ("venus",),
    ),
    ("What is the currency of Japan?", "What money do people use in Japan?", ("yen",)),
    ("What is the currency of Switzerland?", "Which currency is used in Switzerland?", ("franc",)),
    ("What is the boiling point of water in Fahrenheit?", "At how many degrees Fahrenheit does water boil?", ("212",)),
    (
        "How many players are on a soccer team on the field?",
        "A soccer side fields how many players?",
        ("11", "eleven"),
    ),
    ("What is the largest ocean on Earth?", "Which ocean covers the most area on Earth?", ("pacific",)),
    ("Which element has atomic number 1?", "Atomic number one belongs to which element?", ("hydrogen",)),
    ("What is the main language spoken in Brazil?", "People in Brazil mostly speak which language?", ("portuguese",)),
    ("How many sides does a heptagon have?", "A heptagon has how many sides?", ("7", "seven")),
    ("Who was the first person to walk on the Moon?", "Which astronaut stepped onto the Moon first?", ("armstrong",)),
    ("What is the freezing point of water in Kelvin?", "Water freezes at how many kelvins?", ("273", "273.15")),
    ("What is the capital of Pakistan?", "Which city is Pakistan's seat of government?", ("islamabad",)),
    ("What is the capital of Myanmar?", "Myanmar's government sits in which city?", ("naypyidaw", "nay pyi taw")),
    ("What is the capital of Egypt?", "Which city is Egypt's capital?", ("cairo",)),
    ("How many hours are in a week?", "A week lasts how many hours?", ("168",)),
    ("How many seconds are in an hour?", "An hour has how many seconds?", ("3600",)),
    ("How many days are in a leap year?", "A leap year has how many days?", ("366",)),
    ("What is 12 times 12?", "Multiply twelve by twelve. What is the result?", ("144",)),
    ("How many hearts does an octopus have?", "An octopus has how many hearts?", ("3", "three")),
    ("How many strings does a standard guitar have?", "A normal guitar is strung with how many strings?", ("6", "six")),
    ("What is the chemical symbol for iron?", "On the periodic table, iron is written as?", ("fe",)),
    ("What is the chemical symbol for silver?", "Which letters stand for silver on the periodic table?", ("ag",)),
    (
        "Who developed the theory of relativity?",
        "The theory of relativity is the work of which scientist?",
        ("einstein",),
    ),
    ("Who wrote Hamlet?", "Hamlet is a play by which writer?", ("shakespeare",)),
    ("What is the largest planet in our solar system?", "Which planet of ours is the biggest?", ("jupiter",)),
    ("In what year did World War II end?", "The Second World War ended in which year?", ("1945",)),
    ("In what year did humans first land on the Moon?", "The first crewed Moon landing was in which year?", ("1969",)),
]

#: Requests by the same user about other things: nothing should be injected into them.
UNRELATED: list[str] = [
    "How do I boil an egg so the yolk stays soft?",
    "Write a haiku about autumn leaves.",
    "Suggest a name for my new kitten.",
    "How do I reverse a list in Python?",
    "What are good exercises for lower back pain?",
    "Give me a recipe for pancakes.",
    "How can I improve my sleep?",
    "Explain what a REST API is.",
    "Translate 'good morning' into Spanish.",
    "What should I pack for a weekend hiking trip?",
    "How do I center a div in CSS?",
    "Tell me a joke about programmers.",
    "What is a healthy breakfast?",
    "How do I write a cover letter?",
    "Recommend a science fiction book.",
    "How do I fix a flat bicycle tyre?",
    "What is the difference between a list and a tuple?",
    "How often should I water a cactus?",
    "Write a short birthday message for my sister.",
    "How do I make cold brew coffee?",
    "What are some tips for public speaking?",
    "Explain recursion to a child.",
    "How do I remove a coffee stain from a shirt?",
    "What is a good warm-up before running?",
    "Summarise the plot of Romeo and Juliet.",
    "How can I save money on groceries?",
    "What is the best way to learn touch typing?",
    "Give me three ideas for a rainy day with kids.",
    "How do I convert a string to an integer in JavaScript?",
    "What is compound interest?",
]

_SYSTEM = "You are a helpful assistant. Answer the question in one short sentence."


#: A mention right after one of these is denied, not given ("Istanbul, not Ankara").
_DENIED = re.compile(r"\b(?:not|isn't|is not|never|instead of|rather than)\s+(?:the\s+|a\s+)?[\"'“]?$")


def is_correct(answer: str, accepted: tuple[str, ...]) -> bool:
    """Whether ``answer`` gives one of the ``accepted`` answers (lower-case).

    Numbers match as whole numbers (``391`` is not in ``3910`` or ``39.1``; ``1,440`` reads as ``1440``),
    short answers as whole words, and a mention that is denied ("Istanbul, not Ankara") does not count.
    """
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", answer.lower())
    for a in accepted:
        if re.fullmatch(r"[\d.]+", a):
            pat = r"(?<![\d.])" + re.escape(a) + r"(?!\d|\.\d)"
        elif len(a) <= 3:
            pat = r"\b" + re.escape(a) + r"\b"
        else:
            pat = re.escape(a)
        if any(not _DENIED.search(text[: m.start()]) for m in re.finditer(pat, text)):
            return True
    return False


def run_repeat_mistake_bench(
    base_url: str,
    model: str,
    *,
    items: list[tuple[str, str, tuple[str, ...]]] | None = None,
    unrelated: list[str] | None = None,
    max_tokens: int = 32,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    import openai

    from afterword import feedback, wrap
    from afterword.memory import MemoryInjector, build_memories, list_memories
    from afterword.store.store import Store

    items = items if items is not None else ITEMS
    unrelated = unrelated if unrelated is not None else UNRELATED
    user = "bench-user"
    plain = openai.OpenAI(base_url=base_url, api_key="none")

    def ask(client: Any, q: str) -> tuple[str, Any]:
        r = client.chat.completions.create(
            model=model,
            messages=[{"role": "system", "content": _SYSTEM}, {"role": "user", "content": q}],
            temperature=0,
            max_tokens=max_tokens,
        )
        return r.choices[0].message.content or "", r

    with tempfile.TemporaryDirectory() as d:
        store = Store(str(Path(d) / "bench.db"))
        t0 = time.perf_counter()
        load0 = [round(x, 2) for x in os.getloadavg()]
        # Session 1: ask, and correct every wrong answer.
        s1 = wrap(plain, store=store, user_id=user, session_id="session-1", memory=True)
        wrong: list[int] = []
        first: list[dict[str, Any]] = []
        for i, (q, _, acc) in enumerate(items):
            ans, resp = ask(s1, q)
            ok = is_correct(ans, acc)
            first.append({"question": q, "answer": ans, "correct": ok})
            if not ok:
                s1.flush()
                feedback(resp.afterword_message_id, correction=acc[0].title(), store=store)
                wrong.append(i)
        log(f"session 1: {len(wrong)}/{len(items)} answers wrong and corrected")
        built = build_memories(store)
        log(f"memory stage: {built}")
        lesson_of = {m.situation: m.id for m in list_memories(store, kind="lesson", user_id=user)}
        # Session 2: paraphrases of the corrected questions, without and with afterword.
        s2 = wrap(plain, store=store, user_id=user, session_id="session-2", memory=True)
        injector: MemoryInjector = s2._ctx.memory
        rows = []
        for i in wrong:
            q, para, acc = items[i]
            base_ans, _ = ask(plain, para)
            inj = injector.inject([{"role": "user", "content": para}], user_id=user)
            mem_ans, _ = ask(s2, para)
            ids = [it.memory_id for it in inj.items]
            rows.append(
                {
                    "question": q,
                    "paraphrase": para,
                    "without_afterword": base_ans,
                    "with_afterword": mem_ans,
                    "recurs_without": not is_correct(base_ans, acc),
                    "recurs_with": not is_correct(mem_ans, acc),
                    "lesson_injected": lesson_of.get(q) in ids,
                    "other_lessons_injected": len([x for x in ids if x != lesson_of.get(q)]),
                    "injected_tokens": inj.tokens,
                }
            )
        # Near misses: paraphrases of the questions answered right in session 1 (no lesson of their own, but
        # often a lesson of a similar question: "iron" beside "sodium"). Anything injected is a false
        # injection; an answer right without afterword and wrong with it is harm done. With nothing
        # injected the request is the same with and without afterword, so only the others are asked.
        near = []
        for i in sorted(set(range(len(items))) - set(wrong)):
            q, para, acc = items[i]
            inj = injector.inject([{"role": "user", "content": para}], user_id=user)
            row: dict[str, Any] = {"question": q, "paraphrase": para, "injected": [it.text for it in inj.items]}
            if inj.items:
                base_ans, mem_ans = ask(plain, para)[0], ask(s2, para)[0]
                row |= {
                    "without_afterword": base_ans,
                    "with_afterword": mem_ans,
                    "right_without": is_correct(base_ans, acc),
                    "right_with": is_correct(mem_ans, acc),
                }
            near.append(row)
        s2.flush()
        false_inj = []
        for u in unrelated:
            inj = injector.inject([{"role": "user", "content": u}], user_id=user)
            false_inj.append({"request": u, "injected": [it.text for it in inj.items]})
        # Isolation: another user asking the same paraphrases gets nothing.
        other = sum(
            bool(injector.inject([{"role": "user", "content": items[i][1]}], "someone-else").items) for i in wrong
        )
        store.close()
    n = len(rows)
    rec_without = sum(r["recurs_without"] for r in rows)
    rec_with = sum(r["recurs_with"] for r in rows)
    return {
        "model": model,
        "items": len(items),
        "corrected": n,
        "recur_rate_without": round(rec_without / n, 4) if n else None,
        "recur_rate_with": round(rec_with / n, 4) if n else None,
        "recurred_without": rec_without,
        "recurred_with": rec_with,
        "lesson_injected_rate": round(sum(r["lesson_injected"] for r in rows) / n, 4) if n else None,
        "false_injection_rate": round(sum(bool(f["injected"]) for f in false_inj) / len(false_inj), 4),
        "other_user_injection_rate": round(other / n, 4) if n else None,
        "other_lessons_injected": sum(r["other_lessons_injected"] for r in rows),
        "near_miss": len(near),
        "near_miss_injected": sum(bool(x["injected"]) for x in near),
        "near_miss_broken": sum(bool(x["injected"]) and x["right_without"] and not x["right_with"] for x in near),
        "near_miss_fixed": sum(bool(x["injected"]) and not x["right_without"] and x["right_with"] for x in near),
        "memory_stage": built,
        "seconds": round(time.perf_counter() - t0, 1),
        "load_avg_start": load0,
        "load_avg_end": [round(x, 2) for x in os.getloadavg()],
        "session1": first,
        "session2": rows,
        "near_misses": near,
        "unrelated": false_inj,
    }
