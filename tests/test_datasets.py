"""Dataset builders: every kind x format round-trips through `datasets` and TRL's own formatting.

The store is filled here (never from ../shared/data): six users, corrections,
thumbs, ratings, judgments from several sources, a frozen suite item, PII,
duplicates and a synthetic conversation.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from afterword.datasets import KINDS, build_dataset, check_row, from_openai, from_sharegpt, list_exports
from afterword.datasets.formats import Example, to_trl
from afterword.datasets.splits import assign_splits, check_no_leak
from afterword.errors import ExportError
from afterword.records import Conversation, Feedback, Judgment, Message
from afterword.store import forget_user
from afterword.store import schema as t

T0 = datetime(2026, 3, 1, tzinfo=UTC)

QUESTIONS = [
    (
        "How do I reverse a list in Python?",
        "Use `lst[::-1]` or `lst.reverse()` for in place.",
        "Lists cannot be reversed.",
    ),
    ("What is the capital of Australia?", "Canberra is the capital of Australia.", "Sydney is the capital."),
    ("How many bytes are in a kilobyte?", "1000 bytes (SI); 1024 bytes is a kibibyte.", "A kilobyte is 8 bits."),
    ("Convert 100 Fahrenheit to Celsius.", "100 °F is about 37.8 °C: (100 − 32) × 5/9.", "100 °F is 100 °C."),
    ("What does HTTP status 404 mean?", "404 Not Found: the server has no resource at that URL.", "404 means success."),
    (
        "How do I undo the last git commit but keep changes?",
        "Run `git reset --soft HEAD~1`.",
        "Delete the .git folder.",
    ),
    ("Which planet is closest to the sun?", "Mercury is the closest planet to the Sun.", "Venus, obviously."),
    ("What is the time complexity of binary search?", "O(log n) comparisons on a sorted array.", "It is O(n^2)."),
    ("How do I read a JSON file in Python?", "`with open(p) as f: data = json.load(f)`.", "Python cannot read JSON."),
    ("What is the boiling point of water at sea level?", "100 °C (212 °F) at 1 atm.", "It boils at 50 °C."),
    ("How do I make a SQLite index?", "`CREATE INDEX ix_name ON table(column);`", "SQLite has no indexes."),
    ("What is 15% of 80?", "15% of 80 is 12.", "15% of 80 is 20."),
]


def _conv(user: str, i: int, q: str, a: str, *, fb: list[Feedback] | None = None, **kw) -> Conversation:
    when = T0 + timedelta(days=i)
    return Conversation(
        user_id=user,
        external_id=f"{user}-{i}",
        started_utc=when,
        messages=[
            Message(role="system", content="You are a helpful assistant."),
            Message(role="user", content=q, created_utc=when),
            Message(role="assistant", content=a, created_utc=when + timedelta(seconds=5), model=kw.pop("model", "m1")),
        ],
        feedback=fb or [],
        **kw,
    )


def fill_store(store) -> dict:
    """Users u0..u5; each question answered well (thumbs up) by one user and badly (thumbs down or
    corrected) by another, so DPO gets correction pairs and same-prompt judged pairs."""
    convs = []
    n = 0
    for qi, (q, good, bad) in enumerate(QUESTIONS):
        gu, bu = f"u{qi % 6}", f"u{(qi + 1) % 6}"
        convs.append(_conv(gu, n, q, good, fb=[Feedback(kind="thumbs", thumbs=1, message_index=2)]))
        n += 1
        if qi % 3 == 0:
            fb = [Feedback(kind="correction", correction=good + " (corrected)", message_index=2)]
        elif qi % 3 == 1:
            fb = [Feedback(kind="thumbs", thumbs=-1, message_index=2)]
        else:
            fb = [Feedback(kind="rating", rating=1, message_index=2)]
        convs.append(_conv(bu, n, q, bad, fb=fb))
        n += 1
    # PII that redaction must catch.
    convs.append(
        _conv(
            "u0",
            n,
            "Email me at jane.doe@example.com, my key is sk-proj-abcdefghijklmnop1234.",
            "Sure, I will write to jane.doe@example.com.",
            fb=[Feedback(kind="thumbs", thumbs=1, message_index=2)],
        )
    )
    n += 1
    # An exact duplicate of the first good conversation by another user (different session).
    q, good, _ = QUESTIONS[0]
    convs.append(_conv("u3", n, q, good, fb=[Feedback(kind="thumbs", thumbs=1, message_index=2)]))
    n += 1
    # A synthetic conversation, a different model, and a tagged one.
    convs.append(
        _conv(
            "u4",
            n,
            "What is the speed of light?",
            "About 299,792 km/s in vacuum.",
            fb=[Feedback(kind="thumbs", thumbs=1, message_index=2)],
            source="synth:expand",
            metadata={"synthetic": True},
        )
    )
    n += 1
    convs.append(
        _conv(
            "u5",
            n,
            "Name a prime number above 10.",
            "11 is prime.",
            fb=[Feedback(kind="thumbs", thumbs=1, message_index=2)],
            model="m2",
            metadata={"tags": ["math"]},
        )
    )
    n += 1
    # The frozen suite item: a corrected turn that must never be exported.
    convs.append(
        _conv(
            "u1",
            n,
            "SUITE-ONLY: what is the frozen answer?",
            "A wrong frozen answer.",
            fb=[Feedback(kind="correction", correction="The frozen right answer.", message_index=2)],
        )
    )
    store.import_conversations(convs)
    suite_conv = store.get_conversation(f"{'u1'}-{n}")
    suite_mid = suite_conv.messages[2].id
    with store.write() as conn:
        conn.execute(t.suites.insert().values(name="regress", description="frozen", created_utc=datetime.now(UTC)))
        conn.execute(
            t.suite_items.insert().values(
                id="s1",
                suite="regress",
                message_id=suite_mid,
                prompt_json=[{"role": "user", "content": "SUITE-ONLY: what is the frozen answer?"}],
                reference="The frozen right answer.",
            )
        )
    return {"suite_message_id": suite_mid, "conversations": len(convs)}


@pytest.fixture
def filled(store):
    info = fill_store(store)
    return store, info


@pytest.fixture(scope="module")
def tokenizer():
    """SmolLM2's tokenizer (with its chat template), built from the shipped GGUF by transformers."""
    pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    from afterword.train.base import load_tokenizer

    return load_tokenizer(None)


def _all_text(path: Path) -> str:
    return "".join(p.read_text(encoding="utf-8") for p in sorted(path.glob("*.jsonl")))


# -- the round trip: every kind x format ------------------------------------------------------------

COMBOS = [(k, f) for k in KINDS for f in ("trl", "openai", "sharegpt") if not (k == "kto" and f == "openai")]


# JSONL for every pair; Parquet for one pair of each row shape (the writer is shared).
CASES = [(k, f, "jsonl") for k, f in COMBOS] + [
    ("sft", "openai", "parquet"),
    ("dpo", "trl", "parquet"),
    ("kto", "sharegpt", "parquet"),
]


@pytest.mark.parametrize(("kind", "fmt", "file_format"), CASES)
def test_round_trip_datasets_and_trl(filled, tmp_path, tokenizer, kind, fmt, file_format):
    from datasets import load_dataset
    from trl.data_utils import apply_chat_template, is_conversational

    store, _ = filled
    res = build_dataset(
        store, kind, fmt, tmp_path / "ds", file_format=file_format, split="user", test_fraction=0.3, redact=False
    )
    assert res.rows > 0 and set(res.files) == {"train", "test"}
    ds = load_dataset("json" if file_format == "jsonl" else "parquet", data_files=res.files)
    assert ds["train"].num_rows + ds["test"].num_rows == res.rows
    for row in ds["train"]:
        assert check_row(fmt, kind, row), row
        trl_row = {"trl": dict, "openai": from_openai, "sharegpt": from_sharegpt}[fmt](row)
        assert is_conversational(trl_row)
        text = apply_chat_template(trl_row, tokenizer)
        if kind == "sft":
            assert text["text"].rstrip().endswith("<|im_end|>")
        elif kind == "kto":
            assert set(text) == {"prompt", "completion", "label"} and text["prompt"].endswith("assistant\n")
        else:
            assert set(text) == {"prompt", "chosen", "rejected"} and text["chosen"] != text["rejected"]
    # The column sets are exactly the spec's.
    expected = {
        ("trl", "sft"): {"messages"},
        ("trl", "dpo"): {"prompt", "chosen", "rejected"},
        ("trl", "reward"): {"prompt", "chosen", "rejected"},
        ("trl", "kto"): {"prompt", "completion", "label"},
        ("openai", "sft"): {"messages"},
        ("openai", "dpo"): {"input", "preferred_output", "non_preferred_output"},
        ("openai", "reward"): {"input", "preferred_output", "non_preferred_output"},
        ("sharegpt", "sft"): {"conversations"},
        ("sharegpt", "dpo"): {"conversations", "chosen", "rejected"},
        ("sharegpt", "reward"): {"conversations", "chosen", "rejected"},
        ("sharegpt", "kto"): {"conversations", "kto_tag"},
    }[(fmt, kind)]
    assert set(ds["train"].column_names) == expected


def test_openai_has_no_kto(filled, tmp_path):
    store, _ = filled
    with pytest.raises(ExportError, match="no KTO"):
        build_dataset(store, "kto", "openai", tmp_path / "x")


# -- what goes in ----------------------------------------------------------------------------------


def test_sft_rows_corrections_and_judged(filled, tmp_path):
    store, _ = filled
    res = build_dataset(store, "sft", "trl", tmp_path / "sft", split="none", redact=False, near_dup_threshold=None)
    rows = [json.loads(x) for x in Path(res.files["train"]).read_text().splitlines()]
    answers = [r["messages"][-1]["content"] for r in rows]
    # Corrections replace the wrong turn; thumbs-up answers are in; thumbs-down/rated-1 ones are not.
    assert any(a.endswith("(corrected)") for a in answers)
    assert "Sydney is the capital." not in answers and "Lists cannot be reversed." not in answers
    assert "Canberra is the capital of Australia." in answers
    assert rows[0]["messages"][0] == {"role": "system", "content": "You are a helpful assistant."}
    assert res.card["removed"]["exact_duplicates"] == 1  # u3's copy of the first answer
    assert res.card["counts"]["sources"]["correction"] == 4


def test_dpo_pairs_correction_and_judged(filled, tmp_path):
    store, _ = filled
    res = build_dataset(store, "dpo", "trl", tmp_path / "dpo", split="none", redact=False)
    sources = res.card["counts"]["sources"]
    assert sources["pair:correction"] == 4  # the suite's correction is not among them
    assert sources["pair:judged"] == 8  # same question, thumbs-up vs thumbs-down/rating 1
    for ex in res.examples:
        assert ex.chosen != ex.rejected
        if ex.source == "pair:judged":
            assert len(set(ex.user_ids)) == 2  # both users are in the lineage


def test_kto_labels_and_balance(filled, tmp_path):
    store, _ = filled
    res = build_dataset(store, "kto", "trl", tmp_path / "kto", split="none", redact=False)
    bal = res.card["counts"]["label_balance"]
    assert bal["desirable"] > 0 and bal["undesirable"] > 0
    rows = [json.loads(x) for x in Path(res.files["train"]).read_text().splitlines()]
    assert all(isinstance(r["label"], bool) for r in rows)


def test_judgments_override_feedback_by_priority(filled, tmp_path):
    store, _ = filled
    conv = store.get_conversation("u2-3")  # thumbs-down answer "Sydney is the capital."
    mid = conv.messages[2].id
    store.put_judgments(
        [
            Judgment(message_id=mid, source="hindsight-model", label="dissatisfied", score=-0.9, confidence=0.9),
            Judgment(message_id=mid, source="human", label="satisfied", score=0.8, confidence=0.95),
        ]
    )
    res = build_dataset(store, "sft", "trl", tmp_path / "sft", split="none", redact=False, near_dup_threshold=None)
    judged = [e for e in res.examples if e.completion == "Sydney is the capital."]
    assert judged and judged[0].judgment_source == "human"
    # A low-confidence judgment is filtered by min_confidence.
    store.put_judgments([Judgment(message_id=mid, source="human", label="satisfied", score=0.2, confidence=0.3)])
    res = build_dataset(store, "sft", "trl", tmp_path / "sft2", split="none", redact=False, near_dup_threshold=None)
    assert not any(e.completion == "Sydney is the capital." for e in res.examples)


def test_suite_items_never_exported(filled, tmp_path):
    store, info = filled
    for kind in KINDS:
        res = build_dataset(store, kind, "trl", tmp_path / kind, split="none", redact=False)
        text = _all_text(tmp_path / kind)
        assert "SUITE-ONLY" not in text and "frozen" not in text
        assert info["suite_message_id"] not in {m for e in res.examples for m in e.message_ids}
        assert res.card["removed"]["suite_excluded_turns"] == 1


def test_filters_users_models_tags_dates_synthetic(filled, tmp_path):
    store, _ = filled
    kw = {"split": "none", "redact": False, "near_dup_threshold": None}
    res = build_dataset(store, "sft", "trl", tmp_path / "a", users=["u0"], **kw)
    assert {u for e in res.examples for u in e.user_ids} == {"u0"}
    res = build_dataset(store, "sft", "trl", tmp_path / "b", models=["m2"], **kw)
    assert [e.completion for e in res.examples] == ["11 is prime."]
    res = build_dataset(store, "sft", "trl", tmp_path / "c", tags=["math"], **kw)
    assert [e.completion for e in res.examples] == ["11 is prime."]
    res = build_dataset(store, "sft", "trl", tmp_path / "d", since=T0 + timedelta(days=20), **kw)
    assert all(e.time_utc >= T0 + timedelta(days=20) for e in res.examples)
    res = build_dataset(store, "sft", "trl", tmp_path / "e", include_synthetic=False, **kw)
    assert not any(e.synthetic for e in res.examples)
    res = build_dataset(store, "sft", "trl", tmp_path / "f", max_synthetic_share=0.0, **kw)
    assert not any(e.synthetic for e in res.examples) and res.card["removed"]["synthetic_over_cap"] == 1


def test_feedback_only_store_without_judgments(filled, tmp_path):
    store, _ = filled
    with store.read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(t.judgments)).scalar() == 0
    res = build_dataset(store, "kto", "trl", tmp_path / "k", split="none", redact=False)
    assert {e.judgment_source for e in res.examples if e.source == "judged"} == {"feedback"}


# -- privacy, splits, dedupe, card, lineage, forgetting --------------------------------------------


def test_redaction_on_by_default_with_report(filled, tmp_path):
    store, _ = filled
    res = build_dataset(store, "sft", "trl", tmp_path / "r", split="none")
    text = _all_text(tmp_path / "r")
    assert "jane.doe@example.com" not in text and "sk-proj-abcdefghijklmnop1234" not in text
    assert "<EMAIL>" in text and "<API_KEY>" in text
    red = res.card["redaction"]
    assert res.card["redacted"] and red["by_type"]["EMAIL"] >= 2 and red["by_type"]["API_KEY"] == 1
    assert "## Redaction" in (tmp_path / "r" / "dataset_card.md").read_text()
    raw = build_dataset(store, "sft", "trl", tmp_path / "raw", split="none", redact=False)
    assert "jane.doe@example.com" in _all_text(tmp_path / "raw") and raw.card["redaction"] is None


@pytest.mark.parametrize("by", ["user", "time"])
def test_split_never_leaks_users_or_conversations(filled, tmp_path, by):
    store, _ = filled
    for kind in ("sft", "dpo", "kto"):
        res = build_dataset(store, kind, "trl", tmp_path / f"{kind}-{by}", split=by, test_fraction=0.3, redact=False)
        check_no_leak(res.examples)
        tr = {u for e in res.examples if e.split == "train" for u in e.user_ids}
        te = {u for e in res.examples if e.split == "test" for u in e.user_ids}
        assert te and tr and not (tr & te)
        items = {(m, s) for e in res.examples for m in e.message_ids for s in [e.split]}
        assert len({m for m, _ in items}) == len(items)  # each message on one side only


def test_time_split_puts_the_newest_in_test():
    exs = [
        Example(
            "sft",
            [{"role": "user", "content": str(i)}],
            "a",
            message_ids=[f"m{i}"],
            user_ids=[f"u{i}"],
            conversation_ids=[f"c{i}"],
            time_utc=T0 + timedelta(days=i),
        )
        for i in range(10)
    ]
    assign_splits(exs, "time", 0.2)
    assert [e.split for e in exs] == ["train"] * 8 + ["test"] * 2


def test_near_duplicates_embedding_and_minhash(store, tmp_path):
    base = "Use lst[::-1] to get a reversed copy of the list, or lst.reverse() to reverse it in place."
    convs = [
        _conv(f"u{i}", i, q, a, fb=[Feedback(kind="thumbs", thumbs=1, message_index=2)])
        for i, (q, a) in enumerate(
            [
                ("How do I reverse a list in Python?", base),
                ("How do I reverse a list in python ?", base.replace("in place.", "in-place.")),
                ("What is the capital of France?", "Paris."),
            ]
        )
    ]
    store.import_conversations(convs)
    for method, thr in (("embedding", 0.95), ("minhash", 0.5)):
        res = build_dataset(
            store,
            "sft",
            "trl",
            tmp_path / method,
            split="none",
            redact=False,
            near_dup_threshold=thr,
            near_dup_method=method,
        )
        assert res.rows == 2 and res.card["removed"]["near_duplicates"] == 1, method
    res = build_dataset(store, "sft", "trl", tmp_path / "off", split="none", redact=False, dedupe=False)
    assert res.rows == 3


def test_card_and_lineage(filled, tmp_path):
    store, _ = filled
    res = build_dataset(store, "dpo", "trl", tmp_path / "d", command="afterword dataset build --kind dpo")
    card = json.loads((tmp_path / "d" / "dataset_card.json").read_text())
    assert card["export_id"] == res.export_id and card["command"] == "afterword dataset build --kind dpo"
    assert card["counts"]["rows"] == res.rows and card["redacted"] is True
    md = (tmp_path / "d" / "dataset_card.md").read_text()
    assert "afterword dataset build --kind dpo" in md and "Label balance" in md
    with store.read() as conn:
        rows = conn.execute(sa.select(t.export_items).where(t.export_items.c.export_id == res.export_id)).all()
    lineage = {r.message_id for r in rows}
    assert lineage == {m for e in res.examples for m in e.message_ids}
    assert {r.split for r in rows} <= {"train", "test"} and all(r.user_id for r in rows)


def test_forget_marks_dataset_stale_and_rebuild_excludes_user(filled, tmp_path):
    store, _ = filled
    res = build_dataset(store, "sft", "trl", tmp_path / "s", split="none", redact=False)
    assert "u2" in {u for e in res.examples for u in e.user_ids}
    other = build_dataset(store, "sft", "trl", tmp_path / "o", users=["u0"], split="none", redact=False)
    out = forget_user(store, "u2")
    assert res.export_id in out["stale_exports"] and other.export_id not in out["stale_exports"]
    listed = {x["export_id"]: x for x in list_exports(store)}
    assert listed[res.export_id]["stale"] and not listed[other.export_id]["stale"]
    again = build_dataset(store, "sft", "trl", tmp_path / "s2", split="none", redact=False)
    assert "u2" not in {u for e in again.examples for u in e.user_ids}


def test_forgotten_flag_is_respected(filled, tmp_path):
    store, _ = filled
    with store.write() as conn:
        conn.execute(t.users.update().where(t.users.c.id == "u0").values(forgotten_utc=datetime.now(UTC)))
    res = build_dataset(store, "sft", "trl", tmp_path / "s", split="none", redact=False)
    assert "u0" not in {u for e in res.examples for u in e.user_ids}


def test_empty_store_raises(store, tmp_path):
    with pytest.raises(ExportError, match="no sft rows"):
        build_dataset(store, "sft", "trl", tmp_path / "e")


def test_rows_follow_the_spec():
    ex = Example("kto", [{"role": "user", "content": "q"}], completion="a", label=False)
    assert check_row("trl", "kto", to_trl(ex))
    assert not check_row("trl", "kto", {**to_trl(ex), "label": "no"})
    assert not check_row("trl", "sft", {"messages": [{"role": "user", "content": "q"}]})


def test_stage_builds_trl_sft_dpo_kto(filled, tmp_path):
    from afterword.datasets.stage import stage

    store, _ = filled
    out = stage(store, {"out_dir": tmp_path})
    for kind in ("sft", "dpo", "kto"):
        assert out[kind]["rows"] > 0
        assert (tmp_path / "datasets" / kind / "train.jsonl").exists()
        assert json.loads((tmp_path / "datasets" / kind / "dataset_card.json").read_text())["redacted"]


def test_cli_dataset_build_and_list(filled, tmp_path):
    from typer.testing import CliRunner

    from afterword.cli import app
    from afterword.cli._common import state

    store, _ = filled
    try:
        r = CliRunner().invoke(
            app,
            [
                "--db",
                store.url,
                "dataset",
                "build",
                "--kind",
                "dpo",
                "--format",
                "openai",
                "--out",
                str(tmp_path / "c"),
                "--no-redact",
                "--split",
                "none",
                "--json",
            ],
        )
        assert r.exit_code == 0, r.output
        doc = json.loads(r.output.strip().splitlines()[-1])
        assert doc["rows"] > 0 and doc["kind"] == "dpo"
        assert "--kind dpo" in json.loads((tmp_path / "c" / "dataset_card.json").read_text())["command"]
        forget_user(store, "u1")
        r = CliRunner().invoke(app, ["--db", store.url, "dataset", "list", "--json"])
        assert r.exit_code == 0, r.output
        listed = json.loads(r.output.strip().splitlines()[-1])
        assert listed[0]["stale"] and "forgotten" in listed[0]["stale_reason"]
        r = CliRunner().invoke(
            app,
            [
                "--db",
                store.url,
                "dataset",
                "build",
                "--kind",
                "kto",
                "--format",
                "openai",
                "--out",
                str(tmp_path / "x"),
                "--json",
            ],
        )
        assert r.exit_code == 1 and "no KTO" in json.loads(r.output.strip().splitlines()[-1])["error"]
    finally:
        state.store = state.db = None  # the next test opens its own store
