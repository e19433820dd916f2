"""The numbers and plots shared by the HTML report and the review UI's dashboard.

:func:`dashboard` reads the store once per section and returns plain data
plus each plot as a ``data:image/png;base64`` URI (matplotlib, Agg backend,
so it needs no display and no network). The report embeds the URIs in one
HTML file; the UI serves the same dictionary as JSON, so both always show
the same plots.
"""

from __future__ import annotations

import base64
import io
from collections import Counter, defaultdict
from typing import Any

import sqlalchemy as sa

from afterword.errors import NotFoundError
from afterword.evals.clusters import ClusterResult, cluster_failures, week_of
from afterword.evals.compare import Comparison, compare_runs
from afterword.evals.failures import judged_responses, mine_failures
from afterword.evals.runs import list_runs
from afterword.store import schema as t
from afterword.store.store import Store, aware

__all__ = ["dashboard", "satisfaction_weekly", "memory_usefulness", "latest_comparison", "tandem_weekly"]

_COLOURS = {"satisfied": "#2e7d32", "neutral": "#9e9e9e", "dissatisfied": "#c62828"}


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _pyplot() -> Any:
    from afterword.errors import require

    mpl = require("matplotlib", "ui")
    mpl.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _figure(w: float = 7.0, h: float = 3.2) -> tuple[Any, Any]:
    fig, ax = _pyplot().subplots(figsize=(w, h))
    ax.spines[["top", "right"]].set_visible(False)
    return fig, ax


def satisfaction_weekly(store: Store) -> list[dict[str, Any]]:
    """Per week: how many responses were judged satisfied, neutral, dissatisfied."""
    weeks: dict[str, Counter[str]] = defaultdict(Counter)
    for r in judged_responses(store):
        if r.created_utc:
            weeks[week_of(r.created_utc)][r.label] += 1
    out = []
    for w in sorted(weeks):
        c = weeks[w]
        n = sum(c.values())
        out.append({"week": w, "n": n, **{k: c.get(k, 0) for k in _COLOURS}, "satisfied_share": c["satisfied"] / n})
    return out


def memory_usefulness(store: Store, top: int = 10) -> dict[str, Any]:
    """Active memories ranked by usefulness, and injections per week."""
    m, inj = t.memories, t.memory_injections
    with store.read() as conn:
        rows = conn.execute(
            sa.select(m.c.id, m.c.kind, m.c.text, m.c.situation, m.c.uses, m.c.helpful, m.c.harmful, m.c.usefulness)
            .where(m.c.active.is_(True))
            .order_by(m.c.usefulness.desc(), m.c.uses.desc())
        ).all()
        times = [aware(x) for x in conn.execute(sa.select(inj.c.created_utc)).scalars()]
    weekly = Counter(week_of(x) for x in times if x)
    return {
        "memories": len(rows),
        "by_kind": dict(Counter(r.kind for r in rows)),
        "top": [
            {
                "id": r.id,
                "kind": r.kind,
                "text": r.text,
                "situation": r.situation,
                "uses": r.uses,
                "helpful": r.helpful,
                "harmful": r.harmful,
                "usefulness": r.usefulness,
            }
            for r in rows[:top]
        ],
        "injections": len(times),
        "injections_weekly": dict(sorted(weekly.items())),
    }


def latest_comparison(store: Store, a: str | None = None, b: str | None = None) -> Comparison | None:
    """Compare runs ``a`` and ``b`` (ids or labels), or the two newest runs of the newest suite."""
    if a and b:
        return compare_runs(store, a, b)
    runs = list_runs(store)
    if not runs:
        return None
    suite = runs[-1].suite
    same = [r for r in runs if r.suite == suite]
    if len(same) < 2:
        return None
    return compare_runs(store, same[-2].id, same[-1].id)


def tandem_weekly(store: Store) -> dict[str, list[dict[str, Any]]]:
    """Accuracy per week of each human and each model in tandem tasks."""
    tt = t.tandem_tasks
    with store.read() as conn:
        rows = conn.execute(
            sa.select(tt.c.human_id, tt.c.model, tt.c.human_correct, tt.c.ai_correct, tt.c.compared_utc).where(
                tt.c.compared_utc.is_not(None)
            )
        ).all()
    acc: dict[tuple[str, str, str], list[bool]] = defaultdict(list)
    for r in rows:
        w = week_of(aware(r.compared_utc))  # type: ignore[arg-type]
        if r.human_correct is not None and r.human_id:
            acc[("human", r.human_id, w)].append(bool(r.human_correct))
        if r.ai_correct is not None and r.model:
            acc[("model", r.model, w)].append(bool(r.ai_correct))
    out: dict[str, list[dict[str, Any]]] = {"human": [], "model": []}
    for (kind, who, w), flags in sorted(acc.items()):
        out[kind].append({"who": who, "week": w, "n": len(flags), "accuracy": round(sum(flags) / len(flags), 4)})
    return out


def _plot_satisfaction(rows: list[dict[str, Any]]) -> str | None:
    if not rows:
        return None
    fig, ax = _figure()
    weeks = [r["week"][5:] for r in rows]
    bottom = [0.0] * len(rows)
    for label, colour in _COLOURS.items():
        vals = [r[label] / r["n"] for r in rows]
        ax.bar(weeks, vals, bottom=bottom, color=colour, label=label, width=0.7)
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    ax.set_ylabel("share of judged responses")
    ax.set_xlabel("week starting")
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left", bbox_to_anchor=(1, 1), frameon=False)
    ax.set_title("Satisfaction over time")
    return _png(fig)


def _plot_clusters(cr: ClusterResult) -> str | None:
    if not cr.clusters:
        return None
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.4), gridspec_kw={"width_ratios": [1, 1.4]})
    cl = cr.clusters[:8]
    names = [c.name[:28] for c in cl][::-1]
    ax1.barh(names, [c.size for c in cl][::-1], color="#c62828")
    ax1.set_xlabel("bad responses")
    ax1.set_title("Failure clusters")
    weeks = sorted({w for c in cl for w in c.weekly})
    for c in cl:
        ax2.plot([w[5:] for w in weeks], [c.weekly.get(w, 0) for w in weeks], marker="o", label=c.name[:28])
    ax2.set_title("Cluster size per week")
    ax2.set_xlabel("week starting")
    ax2.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1, 1))
    for a in (ax1, ax2):
        a.spines[["top", "right"]].set_visible(False)
    return _png(fig)


def _plot_memory(mem: dict[str, Any]) -> str | None:
    if not mem["top"]:
        return None
    fig, ax = _figure(7, 0.5 + 0.35 * len(mem["top"]))
    rows = mem["top"][::-1]  # barh draws the first row at the bottom: the best goes on top
    # Lessons share a stock opening; the situation (the request that triggers them) tells them apart.
    names = [f"{len(rows) - k}. {(x['situation'] or x['text'])[:38]}" for k, x in enumerate(rows)]
    ax.barh(names, [x["usefulness"] for x in rows], color="#1565c0")
    ax.axvline(0, color="#999", lw=0.8)
    ax.set_xlabel("usefulness (credited helpful − harmful)")
    credited = "" if any(x["uses"] for x in rows) else "; none injected and credited yet"
    ax.set_title(f"Memory usefulness ({mem['memories']} active, {mem['injections']} injections{credited})")
    return _png(fig)


def _plot_comparison(cmp: Comparison) -> str | None:
    if not cmp.items:
        return None
    import numpy as np

    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.4), gridspec_kw={"width_ratios": [1.6, 1]})
    names = [c["cluster"][:24] for c in cmp.clusters]
    x = np.arange(len(names))
    ax1.bar(x - 0.2, [c["mean_a"] for c in cmp.clusters], 0.4, label=cmp.a.label, color="#9e9e9e")
    ax1.bar(x + 0.2, [c["mean_b"] for c in cmp.clusters], 0.4, label=cmp.b.label, color="#1565c0")
    ax1.set_xticks(x, names, rotation=15, ha="right", fontsize=8)
    ax1.set_ylim(0, 1)
    ax1.set_ylabel("mean item score")
    ax1.set_title(f"Eval per cluster: {cmp.a.label} vs {cmp.b.label}")
    ax1.legend(frameon=False)
    s = cmp.summary
    vals = [s["repeat_mistake_rate_a"] or 0, s["repeat_mistake_rate_b"] or 0]
    ax2.bar([cmp.a.label, cmp.b.label], vals, color=["#9e9e9e", "#1565c0"])
    ax2.set_ylim(0, 1)
    ax2.set_title("Repeat-mistake rate (lower is better)")
    for i, v in enumerate(vals):
        ax2.text(i, v + 0.02, f"{v:.0%}", ha="center")
    for a in (ax1, ax2):
        a.spines[["top", "right"]].set_visible(False)
    return _png(fig)


def _plot_tandem(tw: dict[str, list[dict[str, Any]]]) -> str | None:
    if not tw["human"] and not tw["model"]:
        return None
    fig, ax = _figure()
    for kind, style in (("human", "-o"), ("model", "--s")):
        by: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in tw[kind]:
            by[r["who"]].append(r)
        for who, rows in by.items():
            ax.plot([r["week"][5:] for r in rows], [r["accuracy"] for r in rows], style, label=f"{kind}: {who}")
    ax.set_ylim(-0.05, 1.05)
    ax.set_ylabel("accuracy")
    ax.set_title("Tandem accuracy per week")
    ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1, 1))
    return _png(fig)


def dashboard(store: Store, *, run_a: str | None = None, run_b: str | None = None) -> dict[str, Any]:
    """Every section of the report as data, with its plot (a data URI, or None when empty)."""
    responses = judged_responses(store)
    sat = satisfaction_weekly(store)
    fails = mine_failures(store, min_count=1, responses=responses)
    cr = cluster_failures(failures=fails)
    hard = [f for f in fails if f.n_bad >= 2 and f.bad_rate >= 0.5]
    mem = memory_usefulness(store)
    try:
        cmp = latest_comparison(store, run_a, run_b)
    except NotFoundError:
        cmp = None
    tw = tandem_weekly(store)
    return {
        "stats": store.stats(),
        "satisfaction": sat,
        "hard_failures": [f.as_dict() for f in hard[:20]],
        "clusters": cr.as_dict(),
        "memory": mem,
        "comparison": cmp.as_dict() if cmp else None,
        "tandem": tw,
        "plots": {
            "satisfaction": _plot_satisfaction(sat),
            "clusters": _plot_clusters(cr),
            "memory": _plot_memory(mem),
            "comparison": _plot_comparison(cmp) if cmp else None,
            "tandem": _plot_tandem(tw),
        },
    }
