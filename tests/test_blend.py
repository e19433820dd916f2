"""The hybrid's blend: its terms, its scoring, and the listwise fit (real scipy, synthetic question lists)."""

from __future__ import annotations

import numpy as np
import pytest

from afterword.memory.blend import Blend, blend_terms, fit_blend

SIGNALS = ("a", "b", "c")


def test_terms_are_the_signals_then_every_pair_squares_included() -> None:
    assert blend_terms(SIGNALS) == ["a", "b", "c"]
    terms = blend_terms(SIGNALS, interactions=True)
    assert terms[:3] == ["a", "b", "c"] and len(terms) == 3 + 6
    assert {"a*a", "a*b", "b*c", "c*c"} <= set(terms) and "b*a" not in terms


def test_a_blend_scores_signals_and_products() -> None:
    x = np.array([[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]])
    blend = Blend({"a": 2.0, "c": -1.0, "a*b": 0.5, "c*c": 1.0}, SIGNALS)
    expected = 2 * x[:, 0] - x[:, 2] + 0.5 * x[:, 0] * x[:, 1] + x[:, 2] ** 2
    assert np.allclose(blend.score(x), expected)
    assert np.allclose(Blend({}, SIGNALS).score(x), 0.0)  # absent terms weigh nothing


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ({"d": 1.0}, r"w\.json: weight 'd' is not a signal \(a, b, c\)"),
        ({"a*d": 1.0}, r"weight 'a\*d' is not a signal"),
        ({"a*b*c": 1.0}, r"weight 'a\*b\*c' is not a signal"),
        ({"a": "high"}, r"w\.json: weight 'a' must be a number, not 'high'"),
        ({"a": float("nan")}, r"weight 'a' must be finite"),
    ],
)
def test_a_bad_weight_is_named_with_its_source(weights: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Blend(weights, SIGNALS, source="w.json")


def _lists(rng: np.random.Generator, n: int, turns: int = 40) -> list[tuple[np.ndarray, np.ndarray]]:
    """Questions whose evidence turn has signals a and b *both* fairly high (0.45), against decoys with one of
    them at 1 and the other at 0, and other turns below 0.4 on both; c is noise. Any linear score of a and b
    ranks a decoy above the evidence (0.45 (wa + wb) < max(wa, wb)); the product a*b ranks it first."""
    out = []
    for _ in range(n):
        x = rng.uniform(0, 0.4, size=(turns, 3))
        x[:, 2] = rng.uniform(0, 1, size=turns)
        x[:4, :2] = (1.0, 0.0)
        x[4:8, :2] = (0.0, 1.0)
        x[8, :2] = (0.45, 0.45)
        y = np.zeros(turns)
        y[8] = 1.0
        perm = rng.permutation(turns)
        out.append((x[perm], y[perm]))
    return out


def _top1(blend: Blend, lists: list[tuple[np.ndarray, np.ndarray]]) -> float:
    return float(np.mean([y[int(np.argmax(blend.score(x)))] for x, y in lists]))


def test_the_listwise_fit_learns_an_interaction_a_linear_blend_cannot() -> None:
    rng = np.random.default_rng(0)
    train, test = _lists(rng, 200), _lists(rng, 100)
    linear = Blend(fit_blend(train, SIGNALS), SIGNALS)
    full = Blend(fit_blend(train, SIGNALS, interactions=True), SIGNALS)
    assert set(linear.weights) == set(SIGNALS) and set(full.weights) == set(blend_terms(SIGNALS, interactions=True))
    assert _top1(full, test) >= 0.95
    assert _top1(linear, test) <= 0.6  # a and b alone each rank a decoy at least as high
    assert full.weights["a*b"] > 0


def test_the_fit_skips_questions_without_evidence_and_needs_one_with() -> None:
    rng = np.random.default_rng(1)
    lists = _lists(rng, 50)
    empty = [(np.ones((5, 3)), np.zeros(5))]
    assert fit_blend(lists + empty, SIGNALS) == fit_blend(lists, SIGNALS)
    with pytest.raises(ValueError, match="at least one question with an evidence turn"):
        fit_blend(empty, SIGNALS)


def test_signs_bound_a_terms_weight_where_the_data_would_flip_it() -> None:
    rng = np.random.default_rng(2)
    lists = []
    for _ in range(100):  # evidence: high a, and *low* c
        x = rng.uniform(0, 1, size=(20, 3))
        x[0, 0], x[0, 2] = 1.5, 0.0
        y = np.zeros(20)
        y[0] = 1.0
        lists.append((x, y))
    free = fit_blend(lists, SIGNALS, interactions=False)
    assert free["a"] > 0 and free["c"] < 0
    bounded = fit_blend(lists, SIGNALS, interactions=False, signs={"a": 1, "c": 1})
    assert bounded["a"] > 0 and bounded["c"] == 0.0
    with pytest.raises(ValueError, match="signs name terms the fit does not use: d"):
        fit_blend(lists, SIGNALS, signs={"d": 1})
