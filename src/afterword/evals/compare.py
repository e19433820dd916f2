"""Compare two eval runs of one suite: per item, per failure cluster, and by repeat mistakes.

An item *improved* when the new run's score beats the old one by more than
``margin``, *regressed* when it falls by more, else it is *same*. Items are
grouped by the failure cluster they came from (the cluster recorded when the
suite was frozen from a cluster, else the cluster that holds the item's
source message now, else ``unclustered``).

The **repeat-mistake rate** of a run is the share of items frozen from a
previously corrected (or judged-bad) response whose output still makes that
mistake (see :mod:`afterword.evals.runs`). A lower rate in the new run means
the system learned from its corrections.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from afterword.errors import ConfigError
from afterword.evals.runs import EvalRun, get_run
from afterword.evals.suites import get_suite
from afterword.store.store import Store

__all__ = ["Comparison", "compare_runs", "repeat_mistake_rate"]


def repeat_mistake_rate(run: EvalRun) -> float | None:
    flags = [r.repeat_mistake for r in run.results if r.repeat_mistake is not None]
    return round(sum(flags) / len(flags), 4) if flags else None


@dataclass
class Comparison:
    a: EvalRun
    b: EvalRun
    items: list[dict[str, Any]]
    clusters: list[dict[str, Any]]
    summary: dict[str, Any]

    def as_dict(self, with_items: bool = True) -> dict[str, Any]:
        d: dict[str, Any] = {
            "a": self.a.as_dict(),
            "b": self.b.as_dict(),
            "summary": self.summary,
            "clusters": self.clusters,
        }
        if with_items:
            d["items"] = self.items
        return d


def _cluster_of(store: Store, items: list[Any]) -> dict[str, str]:
    out = {i.id: i.metadata["cluster"] for i in items if i.metadata.get("cluster")}
    if len(out) < len(items):
        from afterword.evals.clusters import cluster_failures

        by_msg: dict[str, str] = {}
        for c in cluster_failures(store).clusters:
            for mid in c.message_ids:
                by_msg[mid] = c.name
        for i in items:
            if i.id not in out:
                mids = [i.message_id, *i.metadata.get("message_ids", [])]
                out[i.id] = next((by_msg[m] for m in mids if m in by_msg), "unclustered")
    return out


def compare_runs(store: Store, a: str | EvalRun, b: str | EvalRun, *, margin: float = 0.05) -> Comparison:
    """Compare run ``a`` (the old version) with run ``b`` (the new one); ids or labels."""
    ra = a if isinstance(a, EvalRun) else get_run(store, a)
    rb = b if isinstance(b, EvalRun) else get_run(store, b, suite=ra.suite)
    if ra.suite != rb.suite:
        raise ConfigError(f"runs are on different suites ({ra.suite!r} vs {rb.suite!r})")
    suite = get_suite(store, ra.suite)
    by_a = {r.item_id: r for r in ra.results}
    by_b = {r.item_id: r for r in rb.results}
    clusters = _cluster_of(store, suite.items)
    items = []
    for it in suite.items:
        x, y = by_a.get(it.id), by_b.get(it.id)
        if x is None or y is None:
            continue
        delta = y.score - x.score
        items.append(
            {
                "item_id": it.id,
                "request": it.request,
                "cluster": clusters.get(it.id, "unclustered"),
                "score_a": round(x.score, 4),
                "score_b": round(y.score, 4),
                "delta": round(delta, 4),
                "verdict": "improved" if delta > margin else "regressed" if delta < -margin else "same",
                "repeat_a": x.repeat_mistake,
                "repeat_b": y.repeat_mistake,
                "output_a": x.output,
                "output_b": y.output,
            }
        )
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in items:
        groups[row["cluster"]].append(row)
    per_cluster = [
        {
            "cluster": name,
            "items": len(rows),
            "mean_a": round(float(np.mean([r["score_a"] for r in rows])), 4),
            "mean_b": round(float(np.mean([r["score_b"] for r in rows])), 4),
            "delta": round(float(np.mean([r["delta"] for r in rows])), 4),
            "improved": sum(r["verdict"] == "improved" for r in rows),
            "regressed": sum(r["verdict"] == "regressed" for r in rows),
        }
        for name, rows in sorted(groups.items(), key=lambda kv: -len(kv[1]))
    ]
    fixed = sum(1 for r in items if r["repeat_a"] and r["repeat_b"] is False)
    broke = sum(1 for r in items if r["repeat_a"] is False and r["repeat_b"])
    summary = {
        "suite": ra.suite,
        "a": ra.label,
        "b": rb.label,
        "items": len(items),
        "mean_a": round(float(np.mean([r["score_a"] for r in items])), 4) if items else None,
        "mean_b": round(float(np.mean([r["score_b"] for r in items])), 4) if items else None,
        "improved": sum(r["verdict"] == "improved" for r in items),
        "regressed": sum(r["verdict"] == "regressed" for r in items),
        "same": sum(r["verdict"] == "same" for r in items),
        "repeat_mistake_rate_a": repeat_mistake_rate(ra),
        "repeat_mistake_rate_b": repeat_mistake_rate(rb),
        "mistakes_fixed": fixed,
        "mistakes_reintroduced": broke,
    }
    return Comparison(ra, rb, items, per_cluster, summary)
