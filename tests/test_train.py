"""Reward model, scoring and TRL + LoRA fine-tuning on CPU, with lineage and forgetting.

The store is filled here: 24 questions, each answered helpfully by one user and
unhelpfully (fluent, similar length, off-topic or dismissive) by another. The
fine-tuning runs use a tiny random Llama saved with SmolLM2's real tokenizer
(from the shipped GGUF), for one or two steps: they check the wiring (TRL's own
dataset preparation, LoRA, adapter, card, lineage), not the learning, which
bench/dpo_smoke.py measures on the real SmolLM2.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from typer.testing import CliRunner

from afterword.datasets import build_dataset, list_exports
from afterword.records import Conversation, Feedback, Message
from afterword.store import forget_user
from afterword.train import RewardConfig, RewardModel, rank_candidates, score_traffic, train_reward
from afterword.train.reward import length_baseline, pairwise_accuracy, random_baseline

T0 = datetime(2026, 4, 1, tzinfo=UTC)

GOOD = [
    ("How do I sort a list of dicts by a key in Python?", "Use sorted(items, key=lambda d: d['age']) to sort by age."),
    ("What is the capital of Japan?", "Tokyo is the capital of Japan."),
    ("How do I list files in a directory with Python?", "Use os.listdir(path) or pathlib.Path(path).iterdir()."),
    ("What does the HTTP 500 status code mean?", "500 is Internal Server Error: the server failed unexpectedly."),
    ("How many minutes are in a day?", "A day has 24 x 60 = 1440 minutes."),
    ("How do I create a virtual environment?", "Run python -m venv .venv and then source .venv/bin/activate."),
    ("What is the chemical symbol for gold?", "The chemical symbol for gold is Au."),
    ("How do I count lines in a file on Linux?", "Run wc -l filename to count its lines."),
    ("What is the square root of 144?", "The square root of 144 is 12."),
    ("How do I check my git branch?", "Run git branch --show-current to print the current branch."),
    ("Who wrote Pride and Prejudice?", "Jane Austen wrote Pride and Prejudice, published in 1813."),
    ("How do I convert a string to an int in JavaScript?", "Use parseInt(s, 10) or Number(s)."),
    ("What is the largest ocean on Earth?", "The Pacific Ocean is the largest ocean on Earth."),
    ("How do I drop a column in pandas?", "Use df.drop(columns=['name']) to drop the column."),
    ("What year did the first moon landing happen?", "Apollo 11 landed on the Moon in 1969."),
    ("How do I find a process using a port on Linux?", "Run lsof -i :8080 or ss -ltnp to see it."),
    ("How many legs does a spider have?", "Spiders have eight legs."),
    ("How do I merge two dicts in Python 3.9+?", "Use merged = a | b to merge them."),
    ("What is the freezing point of water in Fahrenheit?", "Water freezes at 32 degrees Fahrenheit."),
    ("How do I reverse a string in Python?", "Use s[::-1] to get the reversed string."),
    ("What is the speed of sound in air?", "About 343 metres per second at 20 degrees Celsius."),
    ("How do I exit vim?", "Press Esc, then type :q! to quit without saving or :wq to save."),
    ("What is the plural of mouse?", "The plural of mouse is mice."),
    ("How do I make a directory with parents in bash?", "Use mkdir -p path/to/dir to create it with parents."),
]

BAD = [
    "I would rather not get into that right now, sorry.",
    "That is not something I can really help you with today.",
    "Honestly you should just look that up yourself somewhere.",
    "Let us talk about something more interesting instead.",
    "I am not sure, it could be many different things really.",
    "Hmm, hard to say. Maybe ask someone else about it.",
]

USERS = [f"user{i}" for i in range(8)]


def _conv(user: str, i: int, q: str, a: str, thumbs: int) -> Conversation:
    when = T0 + timedelta(hours=i)
    return Conversation(
        user_id=user,
        external_id=f"{user}-{i}",
        started_utc=when,
        messages=[
            Message(role="user", content=q, created_utc=when),
            Message(role="assistant", content=a, created_utc=when + timedelta(seconds=3), model="m1"),
        ],
        feedback=[Feedback(kind="thumbs", thumbs=thumbs, message_index=1)],
    )


def fill_reward_store(store) -> None:
    convs = []
    n = 0
    for qi, (q, good) in enumerate(GOOD):
        convs.append(_conv(USERS[qi % 8], n, q, good, 1))
        n += 1
        convs.append(_conv(USERS[(qi + 3) % 8], n, q, BAD[qi % len(BAD)], -1))
        n += 1
    # One correction: the correction beats the original.
    c = _conv("user0", n, "What is 7 times 8?", "7 times 8 is 54.", -1)
    c.feedback = [Feedback(kind="correction", correction="7 times 8 is 56.", message_index=1)]
    convs.append(c)
    store.import_conversations(convs)


@pytest.fixture
def rstore(store):
    fill_reward_store(store)
    return store


# -- the CPU reward model ---------------------------------------------------------------------------


def test_metrics_helpers():
    assert pairwise_accuracy(np.array([2.0, 1.0, 0.0]), np.array([1.0, 2.0, 0.0])) == pytest.approx(0.5)
    assert length_baseline(["a b c", "a"], ["a", "a b"]) == 0.5
    assert pairwise_accuracy(np.array([]), np.array([])) is None
    assert 0.3 < random_baseline(1000) < 0.7


def test_reward_model_beats_its_baselines_held_out(rstore, tmp_path):
    res = train_reward(rstore, tmp_path / "rm", config=RewardConfig(test_fraction=0.3))
    test = res.metrics["test"]
    assert test["pairs"] >= 10
    assert test["accuracy"] >= 0.8, res.metrics
    assert test["accuracy"] > test["length_baseline"] and test["accuracy"] > test["random_baseline"]
    assert res.metrics["train"]["accuracy"] >= 0.9
    assert res.counts["desirable"] == 25 and res.counts["undesirable"] == 25  # 24 + correction, 24 + original
    card = (tmp_path / "rm" / "README.md").read_text()
    assert "length baseline" in card and res.export_id in card
    # Saved, loaded, scores and ranks.
    rm = RewardModel.load(tmp_path / "rm")
    ctx = [{"role": "user", "content": "What is the capital of Italy?"}]
    ranked = rm.rank(ctx, ["I would rather not talk about that today.", "Rome is the capital of Italy."])
    assert ranked[0]["response"] == "Rome is the capital of Italy." and ranked[0]["index"] == 1
    assert (
        rank_candidates(tmp_path / "rm", "What is the capital of Italy?", ["Rome.", "Ask someone else."])[0]["index"]
        == 0
    )


def test_mlp_head_trains(rstore, tmp_path):
    res = train_reward(rstore, tmp_path / "mlp", config=RewardConfig(head="mlp", epochs=80))
    assert res.metrics["train"]["accuracy"] >= 0.9 and res.metrics["test"]["accuracy"] >= 0.7
    assert RewardModel.load(tmp_path / "mlp").head == "mlp"


def test_score_traffic_puts_bad_responses_first(rstore, tmp_path):
    train_reward(rstore, tmp_path / "rm")
    rows = score_traffic(rstore, tmp_path / "rm")
    assert len(rows) == 49
    assert [r["score"] for r in rows] == sorted(r["score"] for r in rows)
    bottom = {r["response"] for r in rows[:20]}
    assert len(bottom & set(BAD)) >= 5  # unhelpful answers gather at the bottom


def test_forget_marks_reward_model_stale(rstore, tmp_path):
    res = train_reward(rstore, tmp_path / "rm")
    out = forget_user(rstore, "user2")
    assert res.export_id in out["stale_exports"]
    assert {x["export_id"]: x for x in list_exports(rstore, ["model"])}[res.export_id]["stale"]


def test_cli_train_reward_and_score(rstore, tmp_path):
    from afterword.cli import app
    from afterword.cli._common import state

    try:
        r = CliRunner().invoke(app, ["--db", rstore.url, "train", "reward", "--out", str(tmp_path / "rm"), "--json"])
        assert r.exit_code == 0, r.output
        doc = json.loads(r.output.strip().splitlines()[-1])
        assert doc["metrics"]["test"]["accuracy"] is not None and doc["export_id"]
        r = CliRunner().invoke(
            app,
            [
                "--db",
                rstore.url,
                "score",
                "--model",
                str(tmp_path / "rm"),
                "--context",
                "What is the capital of Spain?",
                "--candidate",
                "Let us talk about something else.",
                "--candidate",
                "Madrid is the capital.",
                "--json",
            ],
        )
        assert r.exit_code == 0, r.output
        assert json.loads(r.output.strip().splitlines()[-1])["ranking"][0]["index"] == 1
        r = CliRunner().invoke(
            app, ["--db", rstore.url, "score", "--model", str(tmp_path / "rm"), "--limit", "5", "--json"]
        )
        assert r.exit_code == 0, r.output
        assert json.loads(r.output.strip().splitlines()[-1])["scored"] == 5
    finally:
        state.store = state.db = None  # the next test opens its own store


# -- LoRA fine-tuning with TRL on a tiny model ----------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    """A tiny random Llama with SmolLM2's tokenizer (from the GGUF), saved as a local base folder."""
    pytest.importorskip("trl")
    pytest.importorskip("peft")
    from transformers import LlamaConfig, LlamaForCausalLM

    from afterword.train.base import load_tokenizer

    tok = load_tokenizer(None)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
    )
    folder = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize(
    ("kind", "data_kind", "fmt"), [("sft", "sft", "sharegpt"), ("kto", "kto", "trl"), ("reward", "reward", "trl")]
)
def test_finetune_lora_writes_adapter_card_and_lineage(rstore, tmp_path, tiny_base, kind, data_kind, fmt):
    from afterword.train import finetune

    ds = build_dataset(rstore, data_kind, fmt, tmp_path / "ds", redact=False, test_fraction=0.2)
    res = finetune(
        kind,
        tmp_path / "ds",
        out=tmp_path / "lora",
        base=tiny_base,
        max_steps=1,
        store=rstore,
        command=f"afterword train {kind}",
    )
    assert res.steps == 1 and res.steps_per_s > 0 and res.series("loss")
    assert (tmp_path / "lora" / "adapter_model.safetensors").exists()
    assert json.loads((tmp_path / "lora" / "adapter_config.json").read_text())["r"] == 8
    card = (tmp_path / "lora" / "README.md").read_text()
    assert ds.export_id in card and res.export_id in card and f"afterword train {kind}" in card
    # The model's lineage is the dataset's: forgetting one of its users marks both stale.
    user = next(u for e in ds.examples for u in e.user_ids if u)
    stale = forget_user(rstore, user)["stale_exports"]
    assert ds.export_id in stale and res.export_id in stale


def test_cli_train_dpo_tracks_loss_and_margins(rstore, tmp_path, tiny_base):
    from afterword.cli import app
    from afterword.cli._common import state

    build_dataset(rstore, "dpo", "openai", tmp_path / "dpo", redact=False, split="none")
    try:
        r = CliRunner().invoke(
            app,
            [
                "--db",
                rstore.url,
                "train",
                "dpo",
                "--dataset",
                str(tmp_path / "dpo"),
                "--base",
                tiny_base,
                "--out",
                str(tmp_path / "a"),
                "--max-steps",
                "2",
                "--lr",
                "1e-3",
                "--json",
            ],
        )
        assert r.exit_code == 0, r.output
        doc = json.loads(r.output.strip().splitlines()[-1])
        assert doc["steps"] == 2 and doc["kind"] == "dpo"
        assert {"loss", "rewards/margins"} <= set(doc["metrics"])
        assert "--max-steps 2" in (tmp_path / "a" / "README.md").read_text()
        r = CliRunner().invoke(
            app, ["--db", rstore.url, "train", "sft", "--dataset", str(tmp_path / "dpo"), "--base", tiny_base, "--json"]
        )
        assert r.exit_code == 1 and "needs a sft dataset" in r.output
    finally:
        state.store = state.db = None  # the next test opens its own store
