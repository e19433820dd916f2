"""The hindsight judge: cues, explicit-feedback override, evidence ids, the shipped head, the bench."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from pydantic import ValidationError

from afterword.judge import HeadModel, HindsightJudge, JudgeConfig, default_model_path
from afterword.judge.bench import METRIC_KEYS, run_bench
from afterword.judge.features import assistant_contexts, context_at, feature_names
from afterword.judge.signals import abandonment_signal, cue_counts, explicit_rating, rephrase_signal
from afterword.records import Conversation, Feedback, Message

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def conv(*turns: tuple[str, str], prefix: str = "m", feedback=(), start: datetime = T0) -> Conversation:
    msgs = [
        Message(role=r, content=t, id=f"{prefix}{i}", created_utc=start + timedelta(minutes=i))
        for i, (r, t) in enumerate(turns)
    ]
    return Conversation(messages=msgs, feedback=list(feedback), started_utc=start)


@pytest.fixture(scope="module")
def judge():
    return HindsightJudge()


# -- signals ---------------------------------------------------------------


def test_cues():
    assert {"gratitude", "outcome_success"} <= cue_counts("thanks, that worked!").keys()
    assert {"correction", "negation"} <= cue_counts("No, that's wrong, I asked for the blue one").keys()
    assert "outcome_failure" in cue_counts("It still doesn't work, same error")
    assert "complaint" in cue_counts("This is useless.")
    assert cue_counts("What time is it in Paris").keys() == set()
    assert explicit_rating("I'd give it 2/5") == -0.5
    assert explicit_rating("solid 9/10") == pytest.approx(0.8)


def test_rephrase_and_abandonment():
    assert rephrase_signal(0.5, 0.8) is None
    s = rephrase_signal(0.95, 0.8)
    assert s is not None and s.strength < 0
    assert abandonment_signal("how do I sort a list?").name == "abandonment"
    assert abandonment_signal("thanks, bye").name == "ended_after_closing"


def test_contexts_join_user_blocks_and_find_the_request():
    msgs = [("user", "a"), ("assistant", "b"), ("user", "c"), ("user", "d"), ("assistant", "e")]
    ctx = context_at(msgs, 3)
    assert (ctx.request, ctx.response, ctx.reaction, ctx.position) == ("a", "b", "c d", 0)
    ctxs = assistant_contexts(msgs)
    assert [c.response_index for c in ctxs] == [1, 4]
    assert ctxs[0].reaction_index == 3 and ctxs[1].reaction is None


# -- the shipped head --------------------------------------------------------


def test_shipped_head_loads_safely():
    head = HeadModel.load(default_model_path())
    assert head.n_features == len(feature_names())
    assert head.metadata["version"] and "data_sha256" in head.metadata
    p = head.predict_proba(np.zeros((2, head.n_features), dtype=np.float32))
    assert p.shape == (2, 3) and np.allclose(p.sum(1), 1)


def test_head_save_load_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    head = HeadModel(
        mean=np.zeros(4, np.float32),
        scale=np.ones(4, np.float32),
        layers=[
            (rng.normal(size=(4, 5)).astype(np.float32), np.zeros(5, np.float32)),
            (rng.normal(size=(5, 3)).astype(np.float32), np.zeros(3, np.float32)),
        ],
        class_bias=np.array([0.1, 0, -0.1], np.float32),
        metadata={"version": "t"},
    )
    head.save(tmp_path / "h.npz")
    back = HeadModel.load(tmp_path / "h.npz")
    X = rng.normal(size=(3, 4)).astype(np.float32)
    assert np.allclose(back.predict_proba(X), head.predict_proba(X)) and back.version == "t"


@pytest.mark.parametrize(
    ("reaction", "label"),
    [
        ("thanks, that worked!", "satisfied"),
        ("Perfect, thank you so much, that is exactly what I needed.", "satisfied"),
        ("no, that's wrong, I asked for a vegetarian restaurant", "dissatisfied"),
        ("That is not what I asked for. This is useless.", "dissatisfied"),
    ],
)
def test_obvious_reactions(judge, reaction, label):
    c = conv(
        ("user", "Find me a vegetarian restaurant in the centre."),
        ("assistant", "Golden Wok is a Chinese restaurant in the north."),
        ("user", reaction),
    )
    [j] = judge.judge_conversation(c)
    assert j.label == label, j
    assert j.message_id == "m1" and j.source == "hindsight-model"
    assert -1 <= j.score <= 1 and 0 <= j.confidence <= 1
    assert (j.score > 0) == (label == "satisfied")


# -- evidence and overrides --------------------------------------------------


def test_evidence_names_the_reaction_message(judge):
    c = conv(
        ("user", "How do I reverse a list in Python?"),
        ("assistant", "Use list.reverse()."),
        ("user", "No, that's wrong, I need a new list, not in place."),
        ("assistant", "Use reversed(xs) or xs[::-1]."),
        ("user", "Thanks, that worked!"),
    )
    j1, j2 = judge.judge_conversation(c)
    assert {e.message_id for e in j1.evidence} == {"m2"}
    assert {e.message_id for e in j2.evidence} == {"m4"}
    assert "correction" in {e.signal for e in j1.evidence}
    assert {"gratitude", "outcome_success"} <= {e.signal for e in j2.evidence}
    assert j1.label == "dissatisfied" and j2.label == "satisfied"


def test_abandonment_when_nothing_follows(judge):
    c = conv(("user", "Write a regex for emails"), ("assistant", "[a-z]+@[a-z]+"))
    [j] = judge.judge_conversation(c)
    assert j.label == "neutral" and j.score < 0
    assert [e.signal for e in j.evidence] == ["abandonment"]


def test_later_conversation_reporting_the_outcome(judge):
    c = conv(
        ("user", "How do I fix the pip SSL certificate error on macOS?"),
        ("assistant", "Run Install Certificates.command from the Python folder."),
    )
    later = conv(
        ("user", "About the pip SSL certificate error on macOS: it still doesn't work, same error."),
        ("assistant", "Try upgrading certifi."),
        prefix="L",
        start=T0 + timedelta(days=1),
    )
    too_late = conv(
        ("user", "About the pip SSL certificate error on macOS: it worked!"), prefix="X", start=T0 + timedelta(days=30)
    )
    [j] = judge.judge_conversation(c, [later, too_late])
    ev = {e.signal: e for e in j.evidence}
    assert "reported_failure_later" in ev and ev["reported_failure_later"].message_id == "L0"
    assert all(e.message_id != "X0" for e in j.evidence)
    assert j.score < 0


@pytest.mark.parametrize(
    ("fb", "label", "signal"),
    [
        (Feedback(kind="thumbs", message_id="m1", thumbs=-1), "dissatisfied", "explicit_thumbs"),
        (Feedback(kind="rating", message_index=1, rating=5), "satisfied", "explicit_rating"),
        (
            Feedback(kind="correction", message_id="m1", correction="use xs[::-1]"),
            "dissatisfied",
            "explicit_correction",
        ),
    ],
)
def test_explicit_feedback_overrides(judge, fb, label, signal):
    thanks = conv(
        ("user", "Reverse a list"), ("assistant", "xs.reverse()"), ("user", "thanks, that worked!"), feedback=[fb]
    )
    [j] = judge.judge_conversation(thanks)
    assert j.label == label and j.confidence == 1.0
    assert j.evidence[0].signal == signal and j.evidence[0].message_id == "m1"
    # The reaction's cues did not decide the label, so they are not shown as its evidence.
    assert [e.signal for e in j.evidence] == [signal]


def test_judge_many_matches_single_calls(judge):
    a = conv(("user", "hi"), ("assistant", "hello"), ("user", "great, thanks"))
    b = conv(("user", "book a taxi"), ("assistant", "where to?"), ("user", "no, I said a train"), prefix="b")
    many = judge.judge_many([(a, []), (b, [])])
    assert [j.label for j in many[0]] == [j.label for j in judge.judge_conversation(a)]
    assert [j.score for j in many[1]] == pytest.approx([j.score for j in judge.judge_conversation(b)], abs=1e-5)


def test_messages_need_ids(judge):
    c = Conversation(messages=[Message(role="user", content="a"), Message(role="assistant", content="b")])
    with pytest.raises(ValueError, match="ids"):
        judge.judge_conversation(c)


def test_config_rejects_unknown_keys():
    with pytest.raises(ValidationError):
        JudgeConfig(lookahed_turns=3)
    assert JudgeConfig().lookahead_turns == 20 and JudgeConfig().later_window_days == 7


def test_min_confidence_abstains():
    j = HindsightJudge(JudgeConfig(min_confidence=1.0))
    [out] = j.judge_conversation(conv(("user", "x"), ("assistant", "y"), ("user", "thanks, that worked!")))
    assert out.label == "neutral"


# -- the benchmark -------------------------------------------------------------

_LINES = [
    ("Find a cheap hotel.|||The Acorn is cheap.", "Thanks, that is perfect!", 2),
    ("Find a cheap hotel.|||The Acorn is expensive.", "No, that's wrong, I said cheap.", 0),
    ("Book a table.|||For how many people?", "Four people please.", 1),
]


def _asap_line(ctx: str, reaction: str, label: int) -> str:
    return f"{[ctx, reaction + '|||']!r}\t[0, 0]\t{label}\n"


def _asap_split(tmp_path):
    """A tiny ASAP MWOZ test split, with the valid split beside it that trains the baselines."""
    d = tmp_path / "mwoz"
    d.mkdir()
    (d / "test_mwoz.txt").write_text("".join(_asap_line(*x) for x in _LINES), encoding="utf-8")
    (d / "valid_mwoz.txt").write_text("".join(_asap_line(*x) for x in _LINES * 3), encoding="utf-8")
    return d / "test_mwoz.txt"


def test_run_bench_keys(tmp_path):
    test = _asap_split(tmp_path)
    out = run_bench("asap", [test])
    assert set(out) == set(METRIC_KEYS) | {"baselines"}
    assert set(out["baselines"]) == {"majority", "lexicon", "tfidf_lr", "afterword_head_lr"}
    for m in out["baselines"].values():
        assert set(m) == set(METRIC_KEYS)
    assert out["acc"] == 1.0 and out["turns_per_s"] > 0
    # a head given explicitly runs alone: no second afterword row
    out = run_bench("asap", [test], config=JudgeConfig(model_path="lr"))
    assert set(out["baselines"]) == {"majority", "lexicon", "tfidf_lr"}


def test_bench_cli_takes_a_head(tmp_path):
    from typer.testing import CliRunner

    from afterword.cli import app

    args = ["bench", "hindsight", str(_asap_split(tmp_path)), "--format", "asap", "--json"]

    def bench(head: str, code: int = 0) -> dict:
        res = CliRunner().invoke(app, [*args, "--head", head], catch_exceptions=False)
        assert res.exit_code == code, res.stdout
        return json.loads(res.stdout.strip().splitlines()[-1])  # --json: the last line

    out = bench("lr")
    assert set(out["baselines"]) == {"majority", "lexicon", "tfidf_lr"} and out["acc"] == 1.0
    # the default head, named, still brings the lr head beside it
    assert "afterword_head_lr" in bench("finetuned")["baselines"]
    assert "not a shipped head (finetuned, lr)" in bench("no-such-head.npz", code=1)["error"]


def test_shipped_heads_by_name_and_a_clear_error_otherwise():
    assert HindsightJudge(JudgeConfig(model_path="lr")).model.version == "uss-mwoz-sgd-lr-v1"
    assert HindsightJudge().model.encoder_input == "pair"
    with pytest.raises(FileNotFoundError, match="no-such-head.npz.*finetuned, lr"):
        HindsightJudge(JudgeConfig(model_path="no-such-head.npz"))


@pytest.mark.parametrize("head", ["finetuned", "lr"])
def test_a_rephrase_shown_as_evidence_is_one_the_score_used(head):
    conv = Conversation(
        id="r1",
        messages=[
            Message(id="u1", role="user", content="I need a cheap hotel in the north with free parking."),
            Message(id="a1", role="assistant", content="The Acorn guest house is in the north."),
            Message(id="u2", role="user", content="I need a cheap hotel in the north, with free parking please."),
        ],
    )
    judge = HindsightJudge(JudgeConfig(model_path=head))
    (j,) = judge.judge_conversation(conv)
    by_signal = {e.signal: e for e in j.evidence}
    assert by_signal["rephrase"].message_id == "u2" and by_signal["rephrase"].weight < 0
    head_score = by_signal["reaction"].weight
    if head == "finetuned":
        # the head never saw the request: the rephrase moves the score itself
        assert j.score == pytest.approx(max(-1.0, head_score + 0.5 * by_signal["rephrase"].weight), abs=1e-3)
    else:
        # the lr head reads the cosine as a feature: it is inside the head's score already
        assert j.score == pytest.approx(head_score, abs=1e-3)
