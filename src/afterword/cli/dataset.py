"""``afterword dataset build|list``: training datasets with cards and lineage."""

from __future__ import annotations

from typing import Any

import typer
from rich.text import Text

from afterword.cli._common import JsonOpt, Table, choice, console, emit, guard, open_store, parse_date, progress_bar

__all__ = ["register", "command_line"]


def command_line(ctx: typer.Context) -> str:
    """The exact command that reproduces this invocation, rebuilt from the parsed options."""
    import shlex

    from afterword.cli._common import state

    parts = ["afterword", *(["--db", state.db] if state.db else []), *ctx.command_path.split()[1:]]
    for p in ctx.command.params:
        value = ctx.params.get(p.name or "")
        if value is None or value == p.default or p.name == "as_json" or value == ():
            continue
        opts = getattr(p, "opts", [])
        if getattr(p, "is_flag", False) and isinstance(value, bool):
            flag = opts[0] if value else (getattr(p, "secondary_opts", None) or [None])[0]
            if flag:
                parts.append(flag)
        elif not opts:  # an argument
            parts.extend(str(v) for v in (value if isinstance(value, list | tuple) else [value]))
        else:
            for v in value if isinstance(value, list | tuple) else [value]:
                parts += [opts[0], str(v)]
    return shlex.join(parts)


dataset_app = typer.Typer(help="Build training datasets (SFT, DPO, KTO, reward) from judged experience.")


@dataset_app.command("build")
def build(
    ctx: typer.Context,
    kind: str = typer.Option(..., "--kind", help="sft | dpo | kto | reward"),
    fmt: str = typer.Option("trl", "--format", help="trl | openai | sharegpt"),
    out: str = typer.Option(None, "--out", help="Output folder (default: datasets/<kind>-<format>)."),
    file_format: str = typer.Option("jsonl", "--file-format", help="jsonl | parquet"),
    redact: bool = typer.Option(True, "--redact/--no-redact", help="Redact PII (on by default)."),
    min_confidence: float = typer.Option(
        0.6, "--min-confidence", min=0.0, max=1.0, help="Minimum judgment confidence."
    ),
    since: str = typer.Option(None, "--since", help="Conversations started at or after (ISO-8601)."),
    until: str = typer.Option(None, "--until", help="Conversations started before (ISO-8601)."),
    users: list[str] = typer.Option(None, "--user", help="Only these users (repeatable)."),
    models: list[str] = typer.Option(None, "--model", help="Only responses of these models (repeatable)."),
    tags: list[str] = typer.Option(None, "--tag", help="Only conversations/messages with these tags (repeatable)."),
    split: str = typer.Option("user", "--split", help="user | time | none", callback=choice("user", "time", "none")),
    test_fraction: float = typer.Option(0.1, "--test-fraction", min=0.0, max=0.9),
    dedupe: bool = typer.Option(True, "--dedupe/--no-dedupe"),
    near_dup_threshold: float = typer.Option(
        0.95, "--near-dup-threshold", min=0.0, max=1.0, help="0 turns near-duplicate removal off."
    ),
    near_dup_method: str = typer.Option(
        "embedding", "--near-dup-method", help="embedding | minhash", callback=choice("embedding", "minhash")
    ),
    include_synthetic: bool = typer.Option(True, "--synthetic/--no-synthetic"),
    max_synthetic_share: float = typer.Option(None, "--max-synthetic-share", help="Cap on synthetic rows (0..1)."),
    as_json: bool = JsonOpt,
) -> None:
    """Build a dataset folder: train/test files, dataset_card.md/.json, and a lineage manifest in the store."""
    from afterword.datasets import build_dataset

    with guard(as_json):
        store = open_store()
        with progress_bar(f"building {kind}", None, enabled=not as_json) as advance:
            res = build_dataset(
                store,
                kind,
                fmt,
                out or f"datasets/{kind}-{fmt}",
                file_format=file_format,
                redact=redact,
                min_confidence=min_confidence,
                since=parse_date(since, "--since"),
                until=parse_date(until, "--until"),
                users=users or None,
                models=models or None,
                tags=tags or None,
                split=split,
                test_fraction=test_fraction,
                dedupe=dedupe,
                near_dup_threshold=near_dup_threshold or None,
                near_dup_method=near_dup_method,
                include_synthetic=include_synthetic,
                max_synthetic_share=max_synthetic_share,
                command=command_line(ctx),
                progress=advance,
            )

    def render(d: dict[str, Any]) -> None:
        console.print(f"[bold]{d['kind']}[/] ({d['format']}): {d['rows']} rows {d['splits']} -> {d['out_dir']}")
        console.print(f"card: {d['card']}   export id: {d['export_id']}")

    emit(res.as_dict(), as_json, render)


@dataset_app.command("list")
def list_(
    kind: list[str] = typer.Option(None, "--kind", help="Only these kinds (sft, dpo, kto, reward, model, jsonl)."),
    as_json: bool = JsonOpt,
) -> None:
    """Datasets and models recorded in the store; stale ones contain a forgotten user: rebuild them."""
    from afterword.datasets import list_exports

    with guard(as_json):
        rows = list_exports(open_store(), kind or None)

    def render(rs: list[dict[str, Any]]) -> None:

        tab = Table("export id", "kind", "format", "rows", "stale", "created", "path")
        for r in rs:
            stale = Text("STALE ", style="red") + Text(str(r["stale_reason"])) if r["stale"] else ""
            tab.add_row(
                r["export_id"],
                r["kind"],
                r["format"] or "",
                str(r["rows"] or ""),
                stale,
                (r["created_utc"] or "")[:19],
                r["path"] or "",
            )
        console.print(tab)

    emit(rows, as_json, render)


def register(app: typer.Typer) -> None:
    app.add_typer(dataset_app, name="dataset")
