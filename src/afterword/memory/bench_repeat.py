"""Repeat-mistake benchmark: after a user corrects the model, does the mistake come back?

With a real local model behind the real ``openai`` SDK:

1. session 1: the user asks each question through ``afterword.wrap``; when
   the answer is wrong, the user corrects it (``afterword.feedback``);
2. ``afterword run``'s memory stage builds lessons from the corrections;
3. session 2, later: the user asks a *paraphrase* of each corrected question,
   once through a plain client (no afterword) and once through
   ``wrap(memory=True)``. A mistake *recurs* when the answer is still wrong.
4. false injection: unrelated requests by the same user go through the
   injector; any memory injected into them is a false injection.

The items are short factual questions with one unambiguous answer, each with
a paraphrase that shares few words with the original (so retrieval has to
work by meaning) and the accepted spellings of the answer.
"""

from __future__ import annotations

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
    ("What is the freezing point of water in Kelvin?", "Water freezes at how many kelvins?", ("273",)),
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


def is_correct(answer: str, accepted: tuple[str, ...]) -> bool:
    text = answer.lower()
    for a in accepted:
        pat = r"\b" + re.escape(a) + r"\b" if len(a) <= 3 else re.escape(a)
        if re.search(pat, text):
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
    from afterword.memory import MemoryInjector, build_memories
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
        # Session 2: paraphrases of the corrected questions, without and with afterword.
        s2 = wrap(plain, store=store, user_id=user, session_id="session-2", memory=True)
        injector: MemoryInjector = s2._ctx.memory
        rows = []
        for i in wrong:
            q, para, acc = items[i]
            base_ans, _ = ask(plain, para)
            inj = injector.inject([{"role": "user", "content": para}], user_id=user)
            mem_ans, _ = ask(s2, para)
            rows.append(
                {
                    "question": q,
                    "paraphrase": para,
                    "without_afterword": base_ans,
                    "with_afterword": mem_ans,
                    "recurs_without": not is_correct(base_ans, acc),
                    "recurs_with": not is_correct(mem_ans, acc),
                    "lesson_injected": any(q in (it.text or "") for it in inj.items),
                    "injected_tokens": inj.tokens,
                }
            )
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
        "memory_stage": built,
        "seconds": round(time.perf_counter() - t0, 1),
        "session1": first,
        "session2": rows,
        "unrelated": false_inj,
    }
