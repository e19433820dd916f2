"""``afterword db``: migrate the schema, copy a store between engines, verify integrity."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from afterword.cli._common import JsonOpt, Table, console, emit, fail, guard, progress_bar, state

db_app = typer.Typer(help="Database administration: migrate, copy between engines, verify.", no_args_is_help=True)


def _render_verify(d: dict[str, Any]) -> None:
    tab = Table(title=f"{d['store']}  (schema {d['schema_revision']}, head {d['schema_head']})")
    tab.add_column("table")
    tab.add_column("rows", justify="right")
    for name, n in d["counts"].items():
        tab.add_row(name, str(n))
    console.print(tab)
    for k, v in d["checks"].items():
        console.print(f"{'[red]✗' if v else '[green]✓'}[/] {k.replace('_', ' ')}: {v}")
    console.print("[bold green]ok[/]" if d["ok"] else f"[bold red]problems:[/] {d['problems']}")


@db_app.command("migrate")
def migrate_cmd(
    revision: str = typer.Option("head", "--revision", help="Target Alembic revision (default: the newest)."),
    as_json: bool = JsonOpt,
) -> None:
    """Upgrade the store's schema (SQLite or PostgreSQL) to --revision."""
    from afterword.store.migrate import SCHEMA_HEAD, current_revision, upgrade
    from afterword.store.store import Store

    with guard(as_json):
        probe = Store(state.db, migrate=False)
        before = current_revision(probe.engine)
        try:
            after = upgrade(probe.engine, revision)
        except Exception as exc:  # Alembic and driver errors: report them cleanly
            fail(f"migration failed: {exc}", as_json)
        finally:
            probe.close()
    emit(
        {"store": probe._safe_url(), "from": before, "to": after, "head": SCHEMA_HEAD, "changed": before != after},
        as_json,
        lambda d: console.print(f"{d['store']}: {d['from'] or '(empty)'} -> {d['to']}"),
    )


@db_app.command("copy")
def copy_cmd(
    src: str = typer.Argument(..., help="Source store: SQLite path or database URL."),
    dst: str = typer.Argument(..., help="Target store: SQLite path or database URL (migrated if needed)."),
    batch_size: int = typer.Option(5000, "--batch-size", min=1, help="Rows per read page and write transaction."),
    as_json: bool = JsonOpt,
) -> None:
    """Copy every table from SRC to DST (streaming, idempotent: re-run to resume), then verify."""
    from sqlalchemy.engine import make_url

    from afterword.store.copy import copy_store, table_counts
    from afterword.store.engine import resolve_url
    from afterword.store.store import Store

    with guard(as_json):
        src_url = make_url(resolve_url(src))
        if src_url.get_backend_name() == "sqlite" and not Path(src_url.database or "").is_file():
            fail(f"no store at {src_url.database or src}: the source of a copy must exist", as_json)
        s, d = Store(src), Store(dst)
        if s.url == d.url:
            fail("source and target are the same store", as_json)
        total = sum(table_counts(s).values())
        with progress_bar("copying", total, not as_json) as adv:
            res = copy_store(s, d, batch_size=batch_size, progress=lambda _name, n: adv(n))
        s.close()
        d.close()

    def render(r: dict[str, Any]) -> None:
        tab = Table(title=f"{r['src']} -> {r['dst']}")
        for col in ("table", "read", "written", "src rows", "dst rows"):
            tab.add_column(col, justify="left" if col == "table" else "right")
        for name, c in r["tables"].items():
            tab.add_row(name, str(c["read"]), str(c["written"]), str(r["src_counts"][name]), str(r["dst_counts"][name]))
        console.print(tab)
        console.print("[bold green]counts match[/]" if r["match"] else f"[bold red]mismatch:[/] {r['mismatched']}")
        console.print("[green]target verified[/]" if r["verify"]["ok"] else f"[red]{r['verify']['problems']}[/]")

    emit(res, as_json, render)
    if not (res["match"] and res["verify"]["ok"]):
        raise typer.Exit(1)


@db_app.command("verify")
def verify_cmd(
    url: str = typer.Argument(None, help="Store to check (default: --db / $AFTERWORD_DB)."),
    as_json: bool = JsonOpt,
) -> None:
    """Check integrity: orphans, partial conversations, duplicate judgments, full-text index, counts."""
    from afterword.store.copy import verify_store
    from afterword.store.store import Store

    with guard(as_json):
        store = Store(url or state.db)
        res = verify_store(store)
        store.close()
    emit(res, as_json, _render_verify)
    if not res["ok"]:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.add_typer(db_app, name="db")
