"""The hybrid's learned score over the recall signals: its terms, its scoring and its listwise fit.

A blend maps *terms* to weights. A term is one signal of
:data:`afterword.memory.turns.FEATURES` (``"cos_turn"``) or the product of two
(``"cos_turn*date"``: the date match counts more when the turn is also on the
topic); a turn's score is the weighted sum of its terms. Products let a linear
score express what the signals mean together, at the cost of one multiply per
term and turn.

:func:`fit_blend` fits the weights as a *conditional logit* (listwise): for
every question, a softmax over its user's turns, maximising the probability of
its evidence turns (each evidence turn an equal share of the target), with an
L2 penalty on standardised terms, and optionally bounds on the signs of chosen
terms. Every question weighs the same, as it does in recall@k; a pointwise
classifier of "is an evidence turn" weighs every turn instead, so questions
over long histories and their easy negatives dominate it. On LoCoMo held out,
with the same 13 signals and vectors, the listwise fit took recall@5 from 0.768
to 0.794 (with products 0.810, but then short app histories put the assistant's
reply above the user's turn that answers); three more signals on questions and
their answers took the linear blend to 0.8095 (products: 0.814), so the shipped
blends are linear (docs/benchmarks.md).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["Blend", "blend_terms", "fit_blend"]


def blend_terms(features: Sequence[str], *, interactions: bool = False) -> list[str]:
    """The terms a fit uses: each signal, then (``interactions``) the product of each pair, squares included."""
    pairs = [f"{a}*{b}" for a, b in itertools.combinations_with_replacement(features, 2)]
    return [*features, *(pairs if interactions else [])]


def _columns(term: str, index: Mapping[str, int]) -> tuple[int, ...] | None:
    """The signal columns ``term`` multiplies (one for a signal, two for a product ``"a*b"``), or ``None`` when it
    names neither."""
    parts = term.split("*")
    if len(parts) > 2 or any(p not in index for p in parts):
        return None
    return tuple(index[p] for p in parts)


class Blend:
    """A weighted sum of signals and products of two signals, over a (turns × ``features``) matrix.

    ``weights`` maps terms to numbers; an absent term weighs 0. A term that names no signal raises
    ``ValueError`` naming it, and ``source`` (where the weights came from) when given.
    """

    def __init__(self, weights: Mapping[str, float], features: Sequence[str], *, source: str | None = None) -> None:
        where = f"{source}: " if source else ""
        index = {f: i for i, f in enumerate(features)}
        self.features = tuple(features)
        self.weights: dict[str, float] = {}
        self.linear = np.zeros(len(features))
        left: list[int] = []
        right: list[int] = []
        products: list[float] = []
        for term, value in weights.items():
            cols = _columns(str(term), index)
            if cols is None:
                raise ValueError(
                    f"{where}weight {term!r} is not a signal ({', '.join(features)}) or a product 'a*b' of two"
                )
            try:
                w = float(value)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{where}weight {term!r} must be a number, not {value!r}") from exc
            if not np.isfinite(w):
                raise ValueError(f"{where}weight {term!r} must be finite, not {value!r}")
            self.weights[str(term)] = w
            if len(cols) == 1:
                self.linear[cols[0]] += w
            else:
                left.append(cols[0])
                right.append(cols[1])
                products.append(w)
        self._left = np.array(left, dtype=np.int64)
        self._right = np.array(right, dtype=np.int64)
        self._products = np.array(products)

    def score(self, signals: np.ndarray) -> np.ndarray:
        """Each row's score: ``signals @ linear`` plus the weighted products."""
        out = signals @ self.linear
        if len(self._products):
            out = out + (signals[:, self._left] * signals[:, self._right]) @ self._products
        return out

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Blend) and (self.features, self.weights) == (other.features, other.weights)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Blend({len(self.weights)} terms)"


def _expand(signals: np.ndarray, features: Sequence[str], terms: Sequence[str]) -> np.ndarray:
    """The (turns × ``terms``) matrix of each term's value: a signal's column, or the product of two."""
    index = {f: i for i, f in enumerate(features)}
    out = []
    for term in terms:
        cols = _columns(term, index)
        if cols is None:
            raise ValueError(f"term {term!r} is not a signal ({', '.join(features)}) or a product 'a*b' of two")
        out.append(signals[:, cols[0]] * signals[:, cols[1]] if len(cols) == 2 else signals[:, cols[0]])
    return np.stack(out, axis=1)


def fit_blend(
    lists: Sequence[tuple[np.ndarray, np.ndarray]],
    features: Sequence[str],
    *,
    interactions: bool = False,
    l2: float = 1e-3,
    signs: Mapping[str, int] | None = None,
    max_iter: int = 1000,
    digits: int = 4,
) -> dict[str, float]:
    """Listwise weights from ``lists``: one (turns × ``features`` signals, evidence mask) pair a question.

    Minimises the mean over questions of the cross-entropy between the softmax of the turns' scores and the
    question's evidence (shared equally among its evidence turns), plus ``l2`` times the squared weights of
    standardised terms; L-BFGS. ``signs`` bounds terms: +1 keeps a term's weight ≥ 0, -1 keeps it ≤ 0 (a prior on
    what a signal means, where the data alone would let it flip). Questions without evidence are skipped. Returns
    the weights of the raw terms
    (the standardisation folded in; a constant shift does not change a ranking and is dropped), rounded to
    ``digits`` significant digits.
    """
    from scipy.optimize import minimize

    kept = [(x, np.asarray(y, dtype=np.float64)) for x, y in lists if np.asarray(y).sum() > 0 and len(x)]
    if not kept:
        raise ValueError("fit_blend needs at least one question with an evidence turn")
    terms = blend_terms(features, interactions=interactions)
    x = np.vstack([_expand(s, features, terms) for s, _ in kept]).astype(np.float32)
    lengths = np.array([len(s) for s, _ in kept])
    starts = np.r_[0, np.cumsum(lengths)[:-1]]
    seg = np.repeat(np.arange(len(kept)), lengths)
    target = np.concatenate([y / y.sum() for _, y in kept])
    mu = x.mean(axis=0, dtype=np.float64)
    sd = x.std(axis=0, dtype=np.float64)
    sd[sd < 1e-9] = 1.0  # a constant term carries nothing
    z = ((x - mu) / sd).astype(np.float32)
    del x
    n = len(kept)

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        s = (z @ w.astype(np.float32)).astype(np.float64)
        top = np.maximum.reduceat(s, starts)[seg]
        e = np.exp(s - top)
        total = np.add.reduceat(e, starts)[seg]
        logp = s - top - np.log(total)
        grad = -(z.T @ (target - e / total).astype(np.float32)).astype(np.float64) / n
        return float(-(target * logp).sum() / n + l2 * w @ w), grad + 2 * l2 * w

    unknown = set(signs or {}) - set(terms)
    if unknown:
        raise ValueError(f"signs name terms the fit does not use: {', '.join(sorted(unknown))}")
    bounds = [{1: (0.0, None), -1: (None, 0.0)}.get((signs or {}).get(t, 0), (None, None)) for t in terms]
    w = minimize(
        loss, np.zeros(len(terms)), jac=True, method="L-BFGS-B", bounds=bounds, options={"maxiter": max_iter}
    ).x
    raw = w / sd
    return {t: float(f"{v:.{digits}g}") for t, v in zip(terms, raw, strict=True)}
