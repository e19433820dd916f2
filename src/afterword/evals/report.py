"""``afterword report``: one self-contained HTML file, readable offline.

The plots are PNGs embedded as base64 data URIs and the style sheet is inline,
so the file can be mailed or archived and still renders with no network. All
text from the store (requests, responses, cluster names) is HTML-escaped.
The sections and plots are those of :func:`afterword.evals.dashboard.dashboard`.
"""

from __future__ import annotations

import html
import os
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from afterword.evals.dashboard import dashboard
from afterword.records import utcnow
from afterword.redact import Redactor
from afterword.store.store import Store

__all__ = ["build_report", "render_report"]

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d1d1f;background:#fafafa}
main{max-width:1100px;margin:0 auto;padding:24px}
h1{font-size:24px;margin:0 0 4px} h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
.muted{color:#666} .cards{display:flex;gap:12px;flex-wrap:wrap;margin:16px 0}
.card{background:#fff;border:1px solid #e3e3e3;border-radius:8px;padding:10px 14px;min-width:120px}
.card b{display:block;font-size:20px}
table{border-collapse:collapse;width:100%;background:#fff;font-size:13px}
th,td{border:1px solid #e3e3e3;padding:5px 8px;text-align:left;vertical-align:top}
th{background:#f2f2f2} td.num{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;background:#fff;border:1px solid #e3e3e3;border-radius:6px}
.good{color:#2e7d32} .bad{color:#c62828} .empty{color:#888;font-style:italic}
"""


_VERDICT_CLASS = {"improved": "good", "regressed": "bad", "same": ""}


#: Set while a redacted report renders: every text cell passes through it before escaping.
_redactor: ContextVar[Redactor | None] = ContextVar("afterword_report_redactor", default=None)


def _e(x: Any) -> str:
    text = "" if x is None else str(x)
    red = _redactor.get()
    if red is not None and isinstance(x, str):
        text = red.redact(text)
    return html.escape(text)


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x:.0%}"


def _num(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _table(head: list[str], rows: list[list[str]], num_cols: tuple[int, ...] = ()) -> str:
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = "".join(
        "<tr>"
        + "".join(f'<td class="num">{c}</td>' if i in num_cols else f"<td>{c}</td>" for i, c in enumerate(r))
        + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _img(uri: str | None, alt: str, empty: str) -> str:
    if not uri:
        return f'<p class="empty">{_e(empty)}</p>'
    return f'<img alt="{_e(alt)}" src="{uri}">'


def render_report(data: dict[str, Any], title: str = "afterword report") -> str:
    """The report HTML for :func:`dashboard` output."""
    st, plots = data["stats"], data["plots"]
    sat = data["satisfaction"]
    last_sat = sat[-1]["satisfied_share"] if sat else None
    cmp = data["comparison"]
    cards = [
        ("conversations", st["conversations"]),
        ("messages", st["messages"]),
        ("judgments", st["judgments"]),
        ("satisfied (last week)", _pct(last_sat)),
        ("failure clusters", len(data["clusters"]["clusters"])),
        ("active memories", data["memory"]["memories"]),
    ]
    if cmp:
        cards.append(("repeat-mistake rate", _pct(cmp["summary"]["repeat_mistake_rate_b"])))
    parts = [
        f"<h1>{_e(title)}</h1>",
        f'<p class="muted">Generated {_e(utcnow().strftime("%Y-%m-%d %H:%M UTC"))} from {_e(st["store"])}</p>',
        '<div class="cards">' + "".join(f"<div class=card><b>{_e(v)}</b>{_e(k)}</div>" for k, v in cards) + "</div>",
        "<h2>Satisfaction over time</h2>",
        _img(plots["satisfaction"], "satisfaction over time", "No judged responses yet."),
        "<h2>Hard failures</h2>",
        '<p class="muted">Requests whose responses are judged bad consistently, ranked by confidence × frequency.</p>',
    ]
    hard = data["hard_failures"]
    parts.append(
        _table(
            ["request", "bad", "judged", "users", "confidence", "rank", "example bad response"],
            [
                [
                    _e(f["prompt"]),
                    _e(f["n_bad"]),
                    _e(f["n_judged"]),
                    _e(f["users"]),
                    _num(f["mean_confidence"], 2),
                    _num(f["rank_score"], 2),
                    _e(f["responses"][0][:200] if f["responses"] else ""),
                ]
                for f in hard
            ],
            (1, 2, 3, 4, 5),
        )
        if hard
        else '<p class="empty">No hard failures.</p>'
    )
    cl = data["clusters"]
    parts += ["<h2>Failure clusters</h2>", _img(plots["clusters"], "failure clusters", "No failure clusters yet.")]
    if cl["clusters"]:
        parts.append(
            _table(
                ["cluster", "bad responses", "request groups", "top terms", "representative requests"],
                [
                    [
                        _e(c["name"]),
                        _e(c["size"]),
                        _e(c["groups"]),
                        _e(", ".join(c["terms"])),
                        "<br>".join(_e(x) for x in c["examples"]),
                    ]
                    for c in cl["clusters"]
                ],
                (1, 2),
            )
        )
        parts.append(f'<p class="muted">{cl["unclustered_size"]} bad responses left unclustered (outliers).</p>')
    mem = data["memory"]
    parts += ["<h2>Memory usefulness</h2>", _img(plots["memory"], "memory usefulness", "No memories yet.")]
    if mem["top"]:
        parts.append(
            _table(
                ["memory", "kind", "uses", "helpful", "harmful", "usefulness"],
                [
                    [_e(m["text"]), _e(m["kind"]), _e(m["uses"]), _num(m["helpful"], 2), _num(m["harmful"], 2)]
                    + [_num(m["usefulness"], 2)]
                    for m in mem["top"]
                ],
                (2, 3, 4, 5),
            )
        )
    parts.append("<h2>Eval comparison</h2>")
    if cmp:
        s = cmp["summary"]
        parts += [
            f"<p>Suite <b>{_e(s['suite'])}</b>: <b>{_e(s['a'])}</b> (old) vs <b>{_e(s['b'])}</b> (new), "
            f"{s['items']} items: <span class=good>{s['improved']} improved</span>, "
            f"<span class=bad>{s['regressed']} regressed</span>, {s['same']} same. "
            f"Mean score {_num(s['mean_a'])} → {_num(s['mean_b'])}. Repeat-mistake rate "
            f"{_pct(s['repeat_mistake_rate_a'])} → {_pct(s['repeat_mistake_rate_b'])}.</p>",
            _img(plots["comparison"], "eval comparison", ""),
            _table(
                ["request", "cluster", s["a"], s["b"], "Δ", "verdict", f"output ({s['b']})"],
                [
                    [
                        _e(r["request"]),
                        _e(r["cluster"]),
                        _num(r["score_a"], 2),
                        _num(r["score_b"], 2),
                        _num(r["delta"], 2),
                        f'<span class="{_VERDICT_CLASS[r["verdict"]]}">{_e(r["verdict"])}</span>',
                        _e(r["output_b"][:240]),
                    ]
                    for r in cmp["items"]
                ],
                (2, 3, 4),
            ),
        ]
    else:
        parts.append('<p class="empty">Fewer than two eval runs on one suite.</p>')
    if plots["tandem"]:
        parts += ["<h2>Tandem: human and AI accuracy</h2>", _img(plots["tandem"], "tandem accuracy", "")]
    body = "\n".join(parts)
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head>'
        f"<body><main>\n{body}\n</main></body></html>\n"
    )


def build_report(
    store: Store,
    out: str | Path = "afterword-report.html",
    *,
    run_a: str | None = None,
    run_b: str | None = None,
    title: str = "afterword report",
    redact: bool = True,
) -> dict[str, Any]:
    """Write the report to ``out`` (atomically); returns a summary of what it holds.

    The report quotes user text, so it is redacted like every other export unless ``redact=False``.
    """
    data = dashboard(store, run_a=run_a, run_b=run_b)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    token = _redactor.set(Redactor() if redact else None)
    try:
        page = render_report(data, title)
    finally:
        _redactor.reset(token)
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out)
    cmp = data["comparison"]
    return {
        "path": str(out),
        "bytes": out.stat().st_size,
        "weeks": len(data["satisfaction"]),
        "hard_failures": len(data["hard_failures"]),
        "clusters": len(data["clusters"]["clusters"]),
        "memories": data["memory"]["memories"],
        "comparison": cmp["summary"] if cmp else None,
        "plots": sorted(k for k, v in data["plots"].items() if v),
    }
