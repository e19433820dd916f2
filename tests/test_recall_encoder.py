"""The recall encoder: the shipped fine-tuned question→turn MiniLM, how it is chosen, and its weights.

Real parts: the shipped ONNX file and its JSON, onnxruntime, a real SQLite store; the trainer runs on MiniLM's
real weights (skipped without the ``train`` extra).
"""

from __future__ import annotations

import hashlib
import json
import random
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from afterword.embed import Embedder, get_embedder
from afterword.memory import episodic, recall
from afterword.memory.turns import (
    FEATURES,
    RECALL_ENCODER_ENV,
    SIGNS,
    WEIGHTS,
    Turn,
    TurnIndex,
    encoder_document,
    encoder_weights,
    recall_encoder_path,
    turn_documents,
)
from afterword.records import Conversation, Message
from afterword.store import Store

SHIPPED = Path(__file__).parents[1] / "src" / "afterword" / "memory" / "assets" / "recall_encoder.onnx"


@pytest.fixture
def no_choice(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.delenv(RECALL_ENCODER_ENV, raising=False)
    return monkeypatch


def test_the_shipped_encoder_is_the_default_and_general_or_a_path_can_replace_it(
    no_choice: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = recall_encoder_path()
    assert path is not None and path.name == "recall_encoder.onnx" and path.samefile(SHIPPED)
    assert recall_encoder_path("general") is None
    no_choice.setenv(RECALL_ENCODER_ENV, "general")
    assert recall_encoder_path() is None
    assert recall_encoder_path("default") == path  # an explicit choice wins over the variable
    no_choice.setenv(RECALL_ENCODER_ENV, str(tmp_path / "missing.onnx"))
    with pytest.raises(FileNotFoundError, match=f"{RECALL_ENCODER_ENV}=.*missing.onnx"):
        recall_encoder_path()


def test_shipped_metadata_matches_the_file_and_gives_a_weight_for_every_signal() -> None:
    info = json.loads(SHIPPED.with_suffix(".json").read_text())
    assert info["encoder_sha256"] == hashlib.sha256(SHIPPED.read_bytes()).hexdigest()
    assert info["features"] == list(FEATURES)
    weights = encoder_weights(SHIPPED)
    assert set(weights) == set(FEATURES) and weights != WEIGHTS
    assert all(weights[f] * sign >= 0 for f, sign in SIGNS.items())  # fitted with the signs bounded
    assert weights["cos_turn"] + weights["cos_context"] > 0  # its cosines count for, not against
    # the held-out figure is recorded beside the baseline of the same run
    held = info["heldout"]
    assert held["tuned"]["n"] == held["general"]["n"] > 0
    assert "CC BY-NC" in info["licence"]


def test_weights_come_from_the_json_beside_an_encoder(tmp_path: Path) -> None:
    onnx = tmp_path / "mine.onnx"
    onnx.write_bytes(b"")
    assert encoder_weights(onnx) == WEIGHTS  # no JSON: the general weights
    assert encoder_weights(None) == WEIGHTS
    other = tmp_path / "other.onnx"
    other.with_suffix(".json").write_text(json.dumps({"weights": dict.fromkeys(FEATURES, 0.5)}))
    assert encoder_weights(other) == dict.fromkeys(FEATURES, 0.5)
    bad = tmp_path / "bad.onnx"
    partial = tmp_path / "partial.onnx"  # absent terms weigh nothing
    partial.with_suffix(".json").write_text(json.dumps({"weights": {"cos_turn": 1.0, "cos_turn*date": 2.0}}))
    assert encoder_weights(partial) == {"cos_turn": 1.0, "cos_turn*date": 2.0}
    bad = tmp_path / "bad.onnx"
    bad.with_suffix(".json").write_text(json.dumps({"weights": {"cos_turn": 1.0, "cosine": 2.0}}))
    with pytest.raises(ValueError, match=r"bad\.json: field 'weights': weight 'cosine' is not a signal"):
        encoder_weights(bad)
    empty = tmp_path / "empty.onnx"
    empty.with_suffix(".json").write_text(json.dumps({"weights": []}))
    with pytest.raises(ValueError, match=r"empty\.json: field 'weights' must be an object"):
        encoder_weights(empty)


def test_a_window_document_is_the_turn_then_the_previous_turn_of_its_session(tmp_path: Path) -> None:
    turns = [
        Turn("a", "s1", "Ann", "Did you go to the parade?"),
        Turn("b", "s1", "Bob", "Yes, it was amazing."),
        Turn("c", "s2", "Bob", "Hi again!"),
    ]
    assert turn_documents(turns) == [t.text for t in turns]
    assert turn_documents(turns, "window") == [
        "Did you go to the parade?",
        "Yes, it was amazing. [SEP] Did you go to the parade?",
        "Hi again!",  # a new session: no previous turn
    ]
    with pytest.raises(ValueError, match="document kind"):
        turn_documents(turns, "paragraph")
    assert encoder_document(None) == "turn"
    mine = tmp_path / "mine.onnx"
    mine.with_suffix(".json").write_text(json.dumps({"document": "window"}))
    assert encoder_document(mine) == "window"
    bad = tmp_path / "bad.onnx"
    bad.with_suffix(".json").write_text(json.dumps({"document": "page"}))
    with pytest.raises(ValueError, match=r"bad\.json: field 'document'"):
        encoder_document(bad)


def test_recall_embeds_what_a_window_encoder_reads_and_re_embeds_a_turn_whose_text_changed(
    no_choice: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    window = tmp_path / "window.onnx"
    window.write_bytes(SHIPPED.read_bytes())
    window.with_suffix(".json").write_text(json.dumps({"document": "window", "weights": encoder_weights(SHIPPED)}))
    store = Store(f"sqlite:///{tmp_path / 'w.db'}")
    first, second = "Did you go to the parade on Saturday?", "Yes! It was loud and full of colour."
    store.import_conversations(
        [
            Conversation(
                user_id="ann",
                external_id="c1",
                messages=[Message(role="assistant", content=first), Message(role="user", content=second)],
            )
        ]
    )
    try:
        hits = recall(store, "How was the parade?", user_id="ann", k=2, encoder=str(window))
        idx, rows = episodic.user_turn_index(store, "ann", str(window))
        assert idx.document == "window" and {h.text for h in hits} == {first, second}
        emb = get_embedder(window)
        assert np.allclose(idx.vecs[1], emb.encode_one(f"{second} [SEP] {first}"), atol=1e-6)
        assert not np.allclose(idx.vecs[1], emb.encode_one(second), atol=1e-3)
        # a later session pushes the first turn out of the latest MAX_TURNS: the second turn now has no previous
        # turn, so what the encoder reads for it changed, and its cached vector must not be reused
        no_choice.setattr(episodic, "MAX_TURNS", 2)
        third = "I finally fixed the bike."
        store.import_conversations(
            [
                Conversation(
                    user_id="ann",
                    external_id="c2",
                    started_utc=datetime(2030, 1, 1, tzinfo=UTC),
                    messages=[Message(role="user", content=third)],
                )
            ]
        )
        idx, rows = episodic.user_turn_index(store, "ann", str(window))
        assert [r.content for r in rows] == [second, third]
        assert np.allclose(idx.vecs[0], emb.encode_one(second), atol=1e-6)
        assert np.allclose(idx.vecs[1], emb.encode_one(third), atol=1e-6)
    finally:
        episodic.drop(store)
        store.close()


def test_shipped_encoder_is_static_int8_and_batch_independent() -> None:
    onnx = pytest.importorskip("onnx")
    graph = onnx.load(str(SHIPPED)).graph
    fused = [n for n in graph.node if n.op_type == "MatMulIntegerToFloat"]
    assert len(fused) == 36 and all(len(n.input) == 7 and n.input[6] for n in fused)
    emb = Embedder(model_path=SHIPPED)
    texts = [f"I went to a support group number {i} yesterday, it was powerful." for i in range(12)]
    one, many = emb.encode(texts, batch_size=1), emb.encode(texts, batch_size=12)
    assert np.allclose(one, many, atol=1e-5) and np.allclose(np.linalg.norm(one, axis=1), 1.0, atol=1e-5)


def test_the_index_embeds_turns_and_questions_with_its_encoder(no_choice: pytest.MonkeyPatch) -> None:
    turns = [
        Turn("D1:1", "s1", "Ann", "I adopted a puppy named Toby last weekend."),
        Turn("D1:2", "s1", "Bob", "Congrats! What breed is he?"),
        Turn("D1:3", "s1", "Ann", "A beagle, he loves long walks."),
        Turn("D2:1", "s2", "Bob", "I baked sourdough bread this morning."),
        Turn("D2:2", "s2", "Ann", "Nice, was it your first loaf?"),
        Turn("D2:3", "s2", "Bob", "Yes, the crust came out a bit too dark."),
    ]
    tuned, general = TurnIndex(turns), TurnIndex(turns, encoder="general")
    assert tuned.encoder is not None and general.encoder is None
    docs = turn_documents(turns, encoder_document(SHIPPED))
    assert np.allclose(tuned.vecs, get_embedder(SHIPPED).encode(docs), atol=1e-6)
    assert np.allclose(general.vecs[0], get_embedder().encode_one(turns[0].text), atol=1e-6)
    assert not np.allclose(tuned.vecs, general.vecs, atol=1e-2)
    assert tuned.blend.weights == encoder_weights(SHIPPED)
    assert general.blend.weights == WEIGHTS
    for idx in (tuned, general):  # the puppy session first; its order within is the learned blend's
        assert {t.id for t, _ in idx.search("What pet did Ann adopt?", k=3)} == {"D1:1", "D1:2", "D1:3"}


def test_recall_rebuilds_a_users_index_when_the_encoder_changes(no_choice: pytest.MonkeyPatch, tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'r.db'}")
    store.import_conversations(
        [
            Conversation(
                user_id="ann",
                external_id="c1",
                messages=[
                    Message(role="user", content="I adopted a puppy named Toby last weekend."),
                    Message(role="assistant", content="Congratulations! Puppies are a joy."),
                ],
            )
        ]
    )
    try:
        first = recall(store, "What pet did I adopt?", user_id="ann", k=1)
        tuned, _ = episodic.user_turn_index(store, "ann")
        no_choice.setenv(RECALL_ENCODER_ENV, "general")
        second = recall(store, "What pet did I adopt?", user_id="ann", k=1)
        general, _ = episodic.user_turn_index(store, "ann")
        assert tuned.encoder is not None and general.encoder is None
        assert first[0].text == second[0].text == "I adopted a puppy named Toby last weekend."
        assert first[0].cosine != pytest.approx(second[0].cosine, abs=1e-3)  # each from its own vectors
        assert np.allclose(general.vecs[0], get_embedder().encode_one(first[0].text), atol=1e-6)
    finally:
        episodic.drop(store)
        store.close()


def test_trainer_pulls_a_question_towards_its_evidence(hobby_questions) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from afterword.memory.recall_finetune import RecallEncoderTrainer, RecallFinetuneConfig, recall_triples

    idx, q = hobby_questions
    triples = recall_triples({"u": idx}, {"u": q}, ["u"], rng=random.Random(0))
    assert len(triples) == 2 and triples[0][0] == "Who got into her craft hobby?"  # the name taken out
    assert all(t[2] != t[1] and t[3] == "u" for t in triples)  # the hard negative is never the evidence
    trainer = RecallEncoderTrainer(RecallFinetuneConfig(epochs=8, lr=1e-4, batch_size=2, batching="user"))
    before = trainer.encode([triples[0][0], triples[0][1], triples[0][2]])
    losses = trainer.fit(triples * 4)
    after = trainer.encode([triples[0][0], triples[0][1], triples[0][2]])
    assert losses[-1] < losses[0]
    margin = lambda v: float(v[0] @ v[1] - v[0] @ v[2])  # noqa: E731
    assert margin(after) > margin(before)


def test_a_questions_other_evidence_and_duplicates_are_not_its_negatives() -> None:
    from afterword.memory.recall_finetune import RecallEncoderTrainer

    batch = [
        ("q1", "turn A", "turn X", "u"),
        ("q1", "turn B", "turn A", "u"),  # q1 again, with its second evidence turn; its negative is q1's first
        ("q2", "turn C", "turn B", "u"),
    ]
    mask = RecallEncoderTrainer._false_negatives(batch)
    # columns: positives A, B, C, then negatives X, A, B
    assert mask[0].tolist() == [False, True, False, False, True, True]  # q1's evidence, wherever it shows
    assert mask[1].tolist() == [True, False, False, False, True, True]
    assert mask[2].tolist() == [False, False, False, False, False, False]  # q2: every other turn is a negative
    assert not mask[np.arange(3), np.arange(3)].any()  # a row's own positive is never masked


def test_more_hard_negatives_are_distinct_columns_and_masked_like_the_first() -> None:
    from afterword.memory.recall_finetune import RecallEncoderTrainer, recall_triples

    turns = [Turn(str(i), "s", "Ann" if i % 2 else "Bob", f"turn {i} about the garden and the roses") for i in range(8)]
    idx = TurnIndex(turns, np.eye(8, 384, dtype=np.float32), weights={"bm25_turn": 1.0})
    mask = np.zeros(8, dtype=bool)
    mask[[1, 2]] = True
    q = {"u": [("What did Ann grow in the garden?", mask)]}
    two = recall_triples({"u": idx}, q, ["u"], rng=random.Random(0), hard_negatives=3)
    assert len(two) == 2 and all(len(t) == 6 for t in two)  # question, positive, negative, user, 2 more negatives
    for t in two:
        negatives = [t[2], *t[4:]]
        assert len(set(negatives)) == 3 and not {"turn 1", "turn 2"} & {n.split(" about")[0] for n in negatives}
    one = recall_triples({"u": idx}, q, ["u"], rng=random.Random(0))
    assert all(len(t) == 4 for t in one)  # the default: one hard negative, as the shipped encoder was trained
    with pytest.raises(ValueError, match="hard_negatives must be at least 1"):
        recall_triples({"u": idx}, q, ["u"], hard_negatives=0)
    batch = [("q1", "turn A", "turn X", "u", "turn B"), ("q1", "turn B", "turn Y", "u", "turn Z")]
    columns = RecallEncoderTrainer._documents(batch)
    assert columns == ["turn A", "turn B", "turn X", "turn Y", "turn B", "turn Z"]
    fn = RecallEncoderTrainer._false_negatives(batch)
    assert fn[0].tolist() == [False, True, False, False, True, False]  # q1's other evidence, as a later negative too
    assert fn[1].tolist() == [True, False, False, False, True, False]  # its own positive again, as a negative
