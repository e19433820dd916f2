"""``afterword bench``: the benchmarks recorded in docs/benchmarks.md, runnable from the CLI.

With ``--json`` the last line of output is one JSON object with the metric
names the issue fixes (``uar, kappa, rho, bi_f1, acc, macro_f1, turns_per_s``
for hindsight; ``recall_at_1/5/10, p50_ms, p95_ms`` for LoCoMo), afterword's
own figures at the top level and the baselines nested under ``baselines``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

from afterword.cli._common import JsonOpt, Table, console, guard

bench_app = typer.Typer(help="Benchmarks with their baselines, side by side.", no_args_is_help=True)


def _table(title: str, rows: dict[str, dict[str, Any]], keys: list[str]) -> None:
    tab = Table(title=title)
    tab.add_column("system")
    for k in keys:
        tab.add_column(k, justify="right")
    for name, r in rows.items():
        tab.add_row(name, *[f"{r[k]:.3f}" if isinstance(r.get(k), float) else str(r.get(k, "")) for k in keys])
    console.print(tab)


@bench_app.command("hindsight")
def hindsight_cmd(
    files: list[Path] = typer.Argument(..., exists=True, dir_okay=False, help="Test files."),
    fmt: str = typer.Option(..., "--format", help="asap or uss"),
    train: list[Path] = typer.Option(
        None,
        "--train",
        exists=True,
        dir_okay=False,
        help="Training files for the TF-IDF baseline (default: the ASAP valid split).",
    ),
    endpoint: str = typer.Option(None, "--endpoint", help="Also run the LLM judge on this OpenAI-compatible URL."),
    llm_model: str = typer.Option(None, "--llm-model", help="Model name for --endpoint (default: the first listed)."),
    llm_limit: int = typer.Option(200, "--llm-limit", min=1, help="Examples the LLM judge grades (evenly spread)."),
    head: str = typer.Option(
        None,
        "--head",
        help="The judge's head: 'finetuned' (default; the 'lr' head then runs beside it), 'lr', or a .npz path.",
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Hindsight satisfaction: UAR, kappa, rho, bi-F1, accuracy, macro-F1, turns/s vs baselines."""
    from afterword.judge.bench import run_bench
    from afterword.judge.judge_config import JudgeConfig

    if fmt not in ("asap", "uss"):
        raise typer.BadParameter("--format must be asap or uss")
    with guard(as_json):
        res = run_bench(
            fmt,
            [str(f) for f in files],
            train_files=[str(f) for f in train] if train else None,
            endpoint=endpoint,
            llm_model=llm_model,
            llm_limit=llm_limit,
            config=JudgeConfig(model_path=head),
        )
    keys = ["uar", "kappa", "rho", "bi_f1", "acc", "macro_f1", "turns_per_s"]
    if as_json:
        sys.stdout.write(json.dumps(res, default=float) + "\n")
        return
    _table(
        f"hindsight bench ({fmt}: {', '.join(f.name for f in files)})",
        {"afterword": res, **res.get("baselines", {})},
        keys,
    )


@bench_app.command("locomo")
def locomo_cmd(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="locomo JSON (e.g. locomo_dev7.json)."),
    as_json: bool = JsonOpt,
) -> None:
    """LoCoMo evidence retrieval: recall@1/5/10 and latency vs BM25-only, dense-only, the hybrid without the
    reranker and the general MiniLM."""
    from afterword.memory.bench import run_locomo_bench

    with guard(as_json):
        res = run_locomo_bench(str(file))
    keys = ["recall_at_1", "recall_at_5", "recall_at_10", "p50_ms", "p95_ms"]
    if as_json:
        sys.stdout.write(json.dumps(res, default=float) + "\n")
        return
    _table(f"LoCoMo evidence retrieval ({file.name})", {"afterword": res, **res.get("baselines", {})}, keys)
    enc = res["encoder"]
    if enc["trained_on_these_samples"]:
        held = enc["heldout_recall_at_5"]
        console.print(
            f"[yellow]The recall encoder ({enc['name']}) was trained on {len(enc['trained_on_these_samples'])} of "
            "these samples: afterword's figures here are in-sample. Held out (encoder and weights never saw the "
            f"ranked conversation): recall@5 {held.get('tuned')}, general MiniLM {held.get('general')}.[/yellow]"
        )
    rr = res.get("reranker")
    if rr and rr["trained_on_these_samples"]:
        held = rr["heldout_recall_at_5"]
        console.print(
            f"[yellow]The reranker ({rr['name']}) was trained on {len(rr['trained_on_these_samples'])} of these "
            f"samples too. Held out, reranked: recall@5 {held.get('reranked')} (its hybrid {held.get('hybrid')})."
            "[/yellow]"
        )


def register(app: typer.Typer) -> None:
    app.add_typer(bench_app, name="bench")
