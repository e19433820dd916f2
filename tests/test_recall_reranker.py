"""The recall reranker: how it is chosen, what its file must hold, and that recall orders by it.

Real parts: onnxruntime running MiniLM-L6 exports (the recall encoder as a stand-in body with a head written for
the test, and the trainer's own int8 export), a real SQLite store; the trainer runs on MiniLM's real weights
(skipped without the ``train`` extra). No reranker ships, so none of these depend on one.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from afterword.embed import Embedder
from afterword.memory import episodic, recall
from afterword.memory.rerank import (
    RERANKER_ENV,
    Reranker,
    blend_scores,
    get_reranker,
    rerank_document,
    reranker_path,
)
from afterword.memory.turns import Turn
from afterword.records import Conversation, Message
from afterword.store import Store

ASSETS = Path(__file__).parents[1] / "src" / "afterword" / "memory" / "assets"
SHIPPED = ASSETS / "recall_reranker.onnx"  # not shipped: see the module doc of afterword.memory.rerank
BODY = ASSETS / "recall_encoder.onnx"  # a MiniLM-L6 export to stand in for a reranker's body

HISTORY = [
    "I adopted a puppy named Toby last weekend.",
    "Congratulations! Puppies are a joy.",
    "My sister is getting married in June, in Lisbon.",
    "How lovely, Lisbon is beautiful in early summer.",
    "Work has been hectic, we ship the new billing system on Friday.",
    "Good luck with the launch!",
]


@pytest.fixture
def no_choice(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.delenv(RERANKER_ENV, raising=False)
    return monkeypatch


@pytest.fixture
def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    s = Store(f"sqlite:///{tmp_path / 'r.db'}")
    msgs = [Message(role="user" if i % 2 == 0 else "assistant", content=t) for i, t in enumerate(HISTORY)]
    s.import_conversations([Conversation(user_id="ann", external_id="c1", messages=msgs)])
    yield s
    episodic.drop(s)
    s.close()


def _stand_in(tmp_path: Path, name: str, head: np.ndarray, blend: float, depth: int = 30) -> Path:
    path = tmp_path / f"{name}.onnx"
    path.write_bytes(BODY.read_bytes())
    info = {"head": [float(x) for x in head], "bias": 0.0, "blend": blend, "depth": depth}
    path.with_suffix(".json").write_text(json.dumps(info))
    return path


def test_the_choice_of_reranker(no_choice: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert reranker_path(False) is None and reranker_path("off") is None
    # none ships (docs/benchmarks.md: under a point of held-out recall@5 on LoCoMo for a second 23 MB model)
    assert not SHIPPED.exists() and reranker_path() is None and reranker_path(True) is None
    mine = _stand_in(tmp_path, "mine", np.ones(384), blend=1.0)
    no_choice.setenv(RERANKER_ENV, str(mine))
    assert reranker_path() == mine
    assert reranker_path("off") is None and reranker_path(False) is None  # an explicit choice wins
    no_choice.setenv(RERANKER_ENV, "off")
    assert reranker_path() is None
    no_choice.setenv(RERANKER_ENV, str(tmp_path / "missing.onnx"))
    with pytest.raises(FileNotFoundError, match=f"{RERANKER_ENV}=.*missing.onnx"):
        reranker_path()


def test_a_reranker_file_needs_its_json_with_a_full_head(tmp_path: Path) -> None:
    bare = tmp_path / "bare.onnx"
    bare.write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"bare\.json"):
        Reranker(bare)
    short = tmp_path / "short.onnx"
    short.with_suffix(".json").write_text(json.dumps({"head": [0.1, 0.2]}))
    with pytest.raises(ValueError, match=r"short\.json: field 'head' must be a list of 384"):
        Reranker(short)
    broken = tmp_path / "broken.onnx"
    broken.with_suffix(".json").write_text("{not json")
    with pytest.raises(ValueError, match=r"broken\.json: not valid JSON"):
        Reranker(broken)


def test_blend_is_standardised_hybrid_plus_standardised_cross_encoder() -> None:
    hybrid, cross = np.array([3.0, 2.0, 1.0]), np.array([0.0, 0.0, 9.0])
    z = lambda x: (x - x.mean()) / x.std()  # noqa: E731
    assert np.allclose(blend_scores(hybrid, cross, 2.0), 2 * z(hybrid) + z(cross), atol=1e-6)
    assert np.argmax(blend_scores(hybrid, cross, 0.5)) == 2  # a confident cross-encoder overrides the hybrid
    assert np.argmax(blend_scores(hybrid, cross, 10.0)) == 0  # a heavy blend keeps the hybrid's order


def test_recall_orders_the_hybrids_best_turns_by_the_cross_encoder(
    no_choice: pytest.MonkeyPatch, store: Store, tmp_path: Path
) -> None:
    query = "What pet did I adopt?"
    plain = recall(store, query, user_id="ann", k=6, rerank=False)
    assert plain[0].text == HISTORY[0]
    # a head that is the pooled pair vector of (query, the billing turn): the cross-encoder's best turn is that one
    speaker = next(h.speaker for h in plain if h.text == HISTORY[4])
    target = rerank_document(Turn("x", "c1", speaker, HISTORY[4]))
    head = Embedder(model_path=BODY).encode_pairs([(query, target)])[0]
    only_cross = _stand_in(tmp_path, "cross", head, blend=0.0)
    ranked = recall(store, query, user_id="ann", k=6, rerank=str(only_cross))
    assert ranked[0].text == HISTORY[4] and {h.text for h in ranked} == {h.text for h in plain}
    assert [h.score for h in ranked] == sorted((h.score for h in ranked), reverse=True)
    assert ranked[0].cosine == pytest.approx(next(h.cosine for h in plain if h.text == HISTORY[4]), abs=1e-6)
    # a blend that trusts the hybrid keeps its order; the variable picks the reranker when the call does not
    heavy = _stand_in(tmp_path, "heavy", head, blend=1e6)
    assert [h.text for h in recall(store, query, user_id="ann", k=6, rerank=str(heavy))] == [h.text for h in plain]
    no_choice.setenv(RERANKER_ENV, str(only_cross))
    assert recall(store, query, user_id="ann", k=1)[0].text == HISTORY[4]
    assert recall(store, query, user_id="ann", k=1, mode="dense")[0].text == HISTORY[0]  # hybrid mode only
    # depth bounds what is rescored: with depth 1 only the hybrid's best can be first
    shallow = _stand_in(tmp_path, "shallow", head, blend=0.0, depth=1)
    assert get_reranker(shallow).depth == 1
    assert recall(store, query, user_id="ann", k=1, rerank=str(shallow))[0].text == HISTORY[0]


def test_the_injector_reranks_only_when_its_config_asks(
    no_choice: pytest.MonkeyPatch, store: Store, tmp_path: Path
) -> None:
    from afterword.memory import MemoryConfig, MemoryInjector

    query = "What pet did I adopt?"
    speaker = recall(store, HISTORY[4], user_id="ann", k=1, rerank=False)[0].speaker
    head = Embedder(model_path=BODY).encode_pairs([(query, rerank_document(Turn("x", "c1", speaker, HISTORY[4])))])[0]
    no_choice.setenv(RERANKER_ENV, str(_stand_in(tmp_path, "cross", head, blend=0.0)))
    msgs = [{"role": "user", "content": query}]
    cfg = {"recall_turns": 1, "recall_min_cosine": -1.0}  # every turn passes the gate: the order decides
    plain = MemoryInjector(store, MemoryConfig(**cfg)).inject(msgs, user_id="ann").items
    reranked = MemoryInjector(store, MemoryConfig(**cfg, recall_rerank=True)).inject(msgs, user_id="ann").items
    assert plain[0].text.endswith(HISTORY[0]) and reranked[0].text.endswith(HISTORY[4])


def test_trainer_learns_to_put_the_evidence_above_its_near_misses(tmp_path: Path, hobby_questions) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from afterword.memory.rerank_finetune import RerankerConfig, RerankerTrainer, rerank_groups

    idx, q = hobby_questions
    groups = rerank_groups({"u": idx}, {"u": q}, ["u"], negatives=2, pool=4, rng=random.Random(0))
    assert len(groups) == 2 and all(len(g[2]) == 2 and g[1] not in g[2] for g in groups)
    assert {g[1] for g in groups} == {"Ann: " + idx.turns[0].text, "Bob: " + idx.turns[3].text}
    trainer = RerankerTrainer(RerankerConfig(epochs=6, lr=1e-4, groups_per_batch=2, negatives=2))
    group = next(g for g in groups if g[0].startswith("Who"))
    before = trainer.score(group[0], [group[1], *group[2]])
    losses = trainer.fit(groups * 3)
    after = trainer.score(group[0], [group[1], *group[2]])
    assert losses[-1] < losses[0]
    assert after[0] - after[1:].max() > before[0] - before[1:].max() and after[0] > after[1:].max()
    # the int8 export and its head, run by Reranker in onnxruntime, keep the float model's order
    head, bias = trainer.head_weights()
    path = trainer.export(tmp_path / "rr.onnx", [(g[0], g[1]) for g in groups])
    path.with_suffix(".json").write_text(json.dumps({"head": head, "bias": bias, "blend": 1.0}))
    onnx_scores = Reranker(path).scores(group[0], [group[1], *group[2]])
    assert np.argmax(onnx_scores) == 0 and np.corrcoef(onnx_scores, after)[0, 1] > 0.9
