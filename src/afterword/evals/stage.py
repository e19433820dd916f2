"""The ``report`` stage of ``afterword run``: failures → clusters → the HTML report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from afterword.evals.clusters import cluster_failures
from afterword.evals.failures import judged_responses, mine_failures
from afterword.evals.report import build_report
from afterword.store.store import Store

__all__ = ["stage"]


def stage(store: Store, opts: dict[str, Any]) -> dict[str, Any]:
    """Mine failures, cluster them and write ``report.html`` into ``opts["out_dir"]``."""
    out_dir = Path(opts.get("out_dir") or "afterword-out")
    responses = judged_responses(store)
    fails = mine_failures(store, min_count=1, responses=responses)
    hard = [f for f in fails if f.n_bad >= 2 and f.bad_rate >= 0.5]
    clusters = cluster_failures(failures=fails)
    report = build_report(store, out_dir / "report.html")
    return {
        "judged_responses": len(responses),
        "failing_requests": len(fails),
        "hard_failures": len(hard),
        "clusters": [{"name": c.name, "size": c.size} for c in clusters.clusters],
        "report": report["path"],
    }
