"""Synthetic expansion: verifiers (real sandboxed subprocesses), filters (real MiniLM), the synthetic cap,
provenance in the store, and expansion against the real local model and a controlled stub generator."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from fractions import Fraction

import pytest
from typer.testing import CliRunner

from afterword.records import Conversation, Feedback, FeedbackKind, Message, Role
from afterword.synth import (
    FilterConfig,
    Seed,
    Strategy,
    SynthItem,
    cap_synthetic,
    check_math,
    eval_arithmetic,
    expand,
    is_synthetic,
    load_seeds,
    parse_number,
    parse_variant,
    read_seed_file,
    run_python_tests,
    save_synthetic,
)
from afterword.synth.expand import _ANSWER_SYS, _QUESTION_SYS, _TESTS_SYS
from afterword.synth.filters import exact_dedup, near_dedup, similarity_bounds, verify

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _openai_stub import StubLLM, last_user, system_of  # noqa: E402

# -- executable verifiers -------------------------------------------------------------


def test_python_verifier_passes_and_fails():
    ok = run_python_tests("def add(a, b):\n    return a + b", "assert add(2, 3) == 5")
    assert ok.ok and ok.reason == "passed"
    bad = run_python_tests("def add(a, b):\n    return a - b", "assert add(2, 3) == 5")
    assert not bad.ok and bad.reason == "failed"
    assert run_python_tests("def f(:\n  pass", "assert f()").reason == "syntax-error"
    assert run_python_tests("def f():\n  return 1", "print(f())").reason == "no-tests"
    assert run_python_tests("def f():\n  raise KeyError('x')", "assert f()").reason == "error"


def test_python_verifier_enforces_time_and_memory_limits():
    slow = run_python_tests("def spin():\n    while True:\n        pass", "assert spin()", timeout_s=1.5)
    assert not slow.ok and slow.reason in {"timeout", "cpu-limit"}
    assert slow.duration_ms < 6000
    hog = run_python_tests("def hog():\n    return bytearray(2_000_000_000)", "assert hog()", memory_mb=200)
    assert not hog.ok and hog.reason == "memory-limit"


def test_python_verifier_is_isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("AFTERWORD_SECRET_FOR_TEST", "s3cret")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "json.py").write_text("raise SystemExit('shadowed stdlib')\n")
    code = (
        "import os, sys, json\n"
        "def probe():\n"
        "    return (os.environ.get('AFTERWORD_SECRET_FOR_TEST'), sys.flags.isolated, os.listdir('.'))"
    )
    res = run_python_tests(
        code, "env, iso, files = probe()\nassert env is None\nassert iso == 1\nassert files == ['main.py']"
    )
    assert res.ok, res


def test_math_parsing_and_checking():
    assert parse_number("The answer is 1,234.5") == Fraction(12345, 10)
    assert parse_number("-3/4") == Fraction(-3, 4)
    assert parse_number("12.5%") == Fraction(1, 8)
    assert parse_number("\\boxed{42}") == 42
    assert parse_number("no digits here") is None
    assert eval_arithmetic("(12 + 3) * 7") == 105
    assert eval_arithmetic("2 ** 10 / 4") == 256
    assert eval_arithmetic("__import__('os').system('true')") is None
    assert eval_arithmetic("9 ** 9 ** 9") is None  # refused, not computed
    assert check_math("It is 105.", expression="(12 + 3) * 7").ok
    wrong = check_math("It is 104.", expression="(12 + 3) * 7")
    assert not wrong.ok and wrong.reason == "wrong"
    assert check_math("0.75", expected="3/4").ok
    assert check_math("whatever", expected="3").reason == "no-number"
    assert check_math("3").reason == "unverifiable"


def test_verify_filter_drops_failing_items_and_counts_reasons():
    items = [
        SynthItem("Square a number.", "def sq(x):\n    return x * x", "s", kind="code", tests="assert sq(3) == 9"),
        SynthItem("Square it again.", "def sq(x):\n    return x + x", "s", kind="code", tests="assert sq(3) == 9"),
        SynthItem("Trivially tested.", "def sq(x):\n    return x", "s", kind="code", tests="assert True"),
        SynthItem("What is 6 * 7?", "42", "m", kind="math"),
        SynthItem("What is 6 * 8?", "47", "m", kind="math"),
        SynthItem("How many legs has a cat?", "4", "m", kind="math"),  # no expression to check
        SynthItem("Tell me a fact.", "Water boils at 100 C at sea level.", "t", kind="text"),
    ]
    kept, rep = verify(items, FilterConfig(code_timeout_s=3))
    assert [i.prompt for i in kept] == [
        "Square a number.",
        "What is 6 * 7?",
        "How many legs has a cat?",
        "Tell me a fact.",
    ]
    assert rep.dropped == 3
    assert rep.reasons == {"code:failed": 1, "code:tests-do-not-call-it": 1, "math:wrong": 1}
    strict, rep2 = verify(items[3:6], FilterConfig(require_verifier=True))
    assert len(strict) == 1 and rep2.reasons["unverifiable"] == 1


# -- dedup and similarity filters (real MiniLM) -------------------------------------------------


def test_dedup_and_similarity_bounds():
    seeds = [Seed("s1", "How do I reverse a list in Python?", "Use reversed() or [::-1].")]
    items = [
        SynthItem("How do I reverse a list in Python?", "a", "s1"),  # exact copy of the seed
        SynthItem("how do i REVERSE a list in python", "b", "s1"),  # same after normalisation
        SynthItem("How can I sort a list of numbers in Python in descending order?", "c", "s1"),
        SynthItem("How can I sort a list of numbers in Python in descending order??", "d", "s1"),
        SynthItem("How can I reverse a list in Python?", "e", "s1"),  # the seed reworded: cosine ~0.99
        SynthItem("In Python, how would I reverse the order of a list?", "g", "s1"),  # a paraphrase: ~0.87
        SynthItem("What is the capital of Mongolia?", "f", "s1"),
    ]
    kept, rep = exact_dedup(items, seeds)
    assert rep.reasons == {"duplicate": 3}
    kept, rep = near_dedup(kept, seeds, 0.95)
    assert rep.reasons == {"near-duplicate": 1}
    kept, rep = similarity_bounds(kept, seeds, 0.30, 0.85)
    assert rep.reasons == {"off-topic": 1, "copy-of-seed": 1}
    assert [i.answer for i in kept] == ["c"]
    assert kept[0].provenance["filters_passed"] == ["exact_dedup", "near_dedup", "similarity_bounds"]
    assert 0.3 <= kept[0].provenance["filter_detail"]["similarity_bounds"]["seed_similarity"] < 0.85


def test_parse_variant_formats():
    p = parse_variant("QUESTION: What is 9 * 9?\nANSWER: 81\nEXPRESSION: 9 * 9", "math")
    assert p == {"question": "What is 9 * 9?", "answer": "81", "expression": "9 * 9"}
    j = parse_variant('Sure! {"question": "Q?", "answer": "A", "tests": "assert 1"}', "code")
    assert j == {"question": "Q?", "answer": "A", "tests": "assert 1"}
    assert parse_variant("I cannot help with that.", "text") is None


# -- the synthetic cap ------------------------------------------------------------------


def test_cap_synthetic_bounds_the_share():
    rows = [{"source": "user", "i": i} for i in range(8)] + [{"source": "synthetic", "i": i} for i in range(20)]
    capped = cap_synthetic(rows, 0.2)
    n_syn = sum(is_synthetic(r) for r in capped)
    assert n_syn == 2 and len(capped) == 10  # 2 / 10 = 0.2
    assert cap_synthetic(rows, 0.2) == capped  # seeded: the same rows every time
    assert [r for r in capped if not is_synthetic(r)] == rows[:8]  # real rows all kept, in order
    assert sum(is_synthetic(r) for r in cap_synthetic(rows, 0.0)) == 0
    assert cap_synthetic(rows, 1.0) == rows
    convs = [Conversation(messages=[Message(role=Role.user, content="x")], source="synthetic")] * 3
    assert cap_synthetic(convs, 0.5) == []  # no real rows: no synthetic ones allowed
    with pytest.raises(ValueError):
        cap_synthetic(rows, 1.5)


# -- seeds --------------------------------------------------------------------------------


def test_seeds_from_corrections_suite_and_file(store, tmp_path):
    import sqlalchemy as sa

    from afterword.store import schema as t

    conv = store.add_conversation(
        Conversation(
            user_id="u1",
            messages=[
                Message(role=Role.user, content="What is 15% of 80?"),
                Message(role=Role.assistant, content="10"),
            ],
            feedback=[Feedback(kind=FeedbackKind.correction, message_index=1, correction="12")],
        )
    )
    seeds = load_seeds(store, "corrections")
    assert len(seeds) == 1
    assert (seeds[0].prompt, seeds[0].answer, seeds[0].kind) == ("What is 15% of 80?", "12", "math")
    assert seeds[0].id == conv.messages[1].id  # the corrected message: the store's id, not a new one
    with store.write() as conn:
        conn.execute(
            t.suite_items.insert().values(
                id="si1",
                suite="basics",
                prompt_json=[{"role": "user", "content": "Name a prime above 10."}],
                reference="11",
                metadata_json={"kind": "math"},
            )
        )
    s2 = load_seeds(store, "suite", suite="basics")
    assert [(s.id, s.prompt, s.source) for s in s2] == [("si1", "Name a prime above 10.", "suite")]
    f = tmp_path / "seeds.jsonl"
    f.write_text(json.dumps({"prompt": "Write double(x).", "answer": "def double(x):\n    return 2 * x"}) + "\n")
    (s3,) = read_seed_file(f)
    assert s3.kind == "code" and len(s3.id) == 24
    assert store.engine.dialect.name == "sqlite" and sa  # the real SQLite store


# -- expansion with a controlled generator: a code seed whose failing variants are dropped -----

CODE_SEED = Seed(
    id="seed-is-even",
    prompt="Write a Python function is_even(n) that returns True when n is even.",
    answer="def is_even(n):\n    return n % 2 == 0",
    kind="code",
    tests="assert is_even(2)\nassert not is_even(3)",
)

# question -> (code, generated tests): two correct, one wrong, one that never ends, one trivially "tested".
VARIANTS = {
    "Write count_evens(xs) that returns how many numbers in the list xs are even.": (
        "def count_evens(xs):\n    return sum(1 for x in xs if x % 2 == 0)",
        "assert count_evens([1, 2, 4]) == 2\nassert count_evens([]) == 0",
    ),
    "Write is_odd(n) that returns True when the integer n is odd.": (
        "def is_odd(n):\n    return n % 2 == 0",  # wrong
        "assert is_odd(3)\nassert not is_odd(4)",
    ),
    "Write a function halve_until_odd(n) that keeps halving an even number until it is odd.": (
        "def halve_until_odd(n):\n    while n % 2 == 0:\n        n = n // 2 if n else n\n    return n",  # 0 loops
        "assert halve_until_odd(12) == 3\nassert halve_until_odd(0) == 0",
    ),
    "Write sum_evens(xs) returning the sum of the even numbers in xs.": (
        "def sum_evens(xs):\n    return sum(x for x in xs if x % 2 == 0)",
        "assert True",
    ),
    "For a parity check, write is_even(n) that is also right for negative integers such as -4.": (
        "def is_even(n):\n    return n % 2 == 0",
        "assert is_even(-4)\nassert not is_even(-3)",
    ),
}
QUESTIONS = [*VARIANTS, "Write count_evens(xs) that returns how many numbers in the list xs are even."]  # + a repeat


def _code_responder() -> Callable[[dict], str]:
    questions = iter(QUESTIONS * 4)

    def respond(body: dict) -> str:
        sys_msg, user = system_of(body), last_user(body)
        if sys_msg == _QUESTION_SYS:
            return next(questions)
        if sys_msg == _ANSWER_SYS["code"]:
            return f"```python\n{VARIANTS[user][0]}\n```"
        if sys_msg == _TESTS_SYS:
            return "```python\n" + next(tst for code, tst in VARIANTS.values() if code.strip() in user) + "\n```"
        return '{"score": 4, "reason": "fine"}'  # the rubric judge

    return respond


def test_code_seed_variants_must_pass_tests(store):
    with StubLLM(_code_responder()) as stub:
        res = expand([CODE_SEED], n=6, llm=stub.client(), filters=FilterConfig(code_timeout_s=2), save=False)
    assert res.generation.reasons == {"near-duplicate-live": 1}  # the repeated question, before any answer call
    by_name = {r.name: r for r in res.filters}
    assert by_name["verify"].reasons == {"code:failed": 1, "code:timeout": 1, "code:tests-do-not-call-it": 1} or (
        by_name["verify"].reasons == {"code:failed": 1, "code:cpu-limit": 1, "code:tests-do-not-call-it": 1}
    )
    kept = {it.prompt: it for it in res.items}
    assert set(kept) == {QUESTIONS[0], QUESTIONS[4]}
    same_fn = kept[QUESTIONS[4]]
    assert same_fn.provenance["tests_from"] == "generated+seed"  # kept is_even: the seed's tests apply too
    assert "assert not is_even(3)" in (same_fn.tests or "")
    prov = kept[QUESTIONS[0]].provenance
    assert prov["seed_id"] == "seed-is-even" and prov["generator_model"] == "stub-model"
    assert len(prov["prompt_hash"]) == 16 and prov["strategy"]["persona"]
    assert prov["filters_passed"] == ["exact_dedup", "near_dedup", "similarity_bounds", "verify", "rubric_judge"]
    # Saved as synthetic conversations with their provenance; saving twice adds nothing.
    counts = save_synthetic(store, res.items)
    assert counts.conversations == 2
    assert save_synthetic(store, res.items).conversations == 0
    convs = list(store.iter_conversations())
    assert {c.source for c in convs} == {"synthetic"}
    assert all(c.metadata["provenance"]["seed_id"] == "seed-is-even" for c in convs)
    assert all(c.messages[1].model == "stub-model" for c in convs)


def test_strategy_rotates_axes():
    st = Strategy()
    cells = [st.cell(i) for i in range(24)]
    assert len({(c["persona"], c["style"], c["difficulty"]) for c in cells}) == 24  # the whole grid, no repeat
    assert {c["temperature"] for c in cells} == {0.7, 0.9, 1.1}
    base = Strategy.fixed()
    assert len({tuple(base.cell(i).values()) for i in range(10)}) == 1 and base.live_dedup is None


def test_cli_synth_expand_json(tmp_path):
    from afterword.cli import app

    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text(
        json.dumps({"prompt": CODE_SEED.prompt, "answer": CODE_SEED.answer, "kind": "code", "tests": CODE_SEED.tests})
        + "\n"
    )
    out = tmp_path / "kept.jsonl"
    with StubLLM(_code_responder()) as stub:
        r = CliRunner().invoke(
            app,
            [
                "--db",
                str(tmp_path / "cli.db"),
                "synth",
                "expand",
                "--seeds",
                str(seeds),
                "--n",
                "2",
                "--endpoint",
                stub.base_url,
                "--model",
                "stub-model",
                "--out",
                str(out),
                "--json",
            ],
        )
    assert r.exit_code == 0, r.output
    data = json.loads(r.output.strip().splitlines()[-1])
    assert data["attempts"] == 2 and data["kept"] == 1 and data["saved"]["imported_conversations"] == 1
    assert [f["filter"] for f in data["filters"]] == [
        "exact_dedup",
        "near_dedup",
        "similarity_bounds",
        "verify",
        "rubric_judge",
    ]
    assert json.loads(out.read_text().splitlines()[0])["provenance"]["seed_id"]


# -- the real local model ---------------------------------------------------------------


@pytest.mark.llm
def test_expand_with_real_local_model(llm, store):
    """SmolLM2-135M is tiny and often wrong: assert the accounting and provenance, not its quality."""
    import sqlalchemy as sa

    from afterword.store import schema as t

    seeds = [
        Seed("m1", "What is 12 * 7?", "84", kind="math"),
        Seed("t1", "How do I reverse a list in Python?", "Use my_list.reverse() or my_list[::-1].", kind="text"),
    ]
    strategy = Strategy(max_tokens=64, question_tokens=48)
    res = expand(seeds, n=2, llm=llm.client(timeout_s=300), strategy=strategy, save=False)
    d = res.as_dict(with_items=True)
    assert d["attempts"] == 2 and d["model"] == "smollm2-135m-instruct"
    assert res.generation.dropped + res.candidates == 2
    seen = res.candidates
    for r in res.filters:  # each filter sees exactly what the one before kept
        assert r.seen == seen
        seen = r.kept
    assert seen == len(res.items)
    assert d["generate_s"] > 0 and d["candidates_per_s"] >= 0
    for it in res.items:
        assert it.provenance["generator_model"] == "smollm2-135m-instruct"
        assert "verify" in it.provenance["filters_passed"]
    save_synthetic(store, res.items)
    with store.read() as conn:
        n_syn = conn.execute(
            sa.select(sa.func.count()).select_from(t.conversations).where(t.conversations.c.source == "synthetic")
        ).scalar()
    assert n_syn == len(res.items)
