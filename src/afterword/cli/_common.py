"""Helpers shared by the CLI modules: the store, output, errors, progress."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NoReturn

import typer
from rich import table as rich_table
from rich.console import Console
from rich.markup import escape as esc
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from afterword.errors import AfterwordError
from afterword.store.engine import resolve_url
from afterword.store.store import Store

__all__ = [
    "state",
    "open_store",
    "emit",
    "fail",
    "progress_bar",
    "parse_date",
    "console",
    "esc",
    "Table",
    "JsonOpt",
    "guard",
    "ray_only",
    "choice",
    "ADDRESS_HELP",
    "WORKERS_HELP",
]

console = Console(stderr=False)
err_console = Console(stderr=True)


class Table(rich_table.Table):
    """A rich table whose string cells and title are literal: stored text such as ``arr[/i]`` is data, not markup."""

    def __init__(self, *headers: Any, title: str | None = None, **kwargs: Any) -> None:
        super().__init__(*headers, title=esc(title) if isinstance(title, str) else title, **kwargs)

    def add_row(self, *renderables: Any, **kwargs: Any) -> None:
        super().add_row(*(Text(r) if isinstance(r, str) else r for r in renderables), **kwargs)


def choice(*allowed: str) -> Callable[[str | None], str | None]:
    """An option callback that accepts only ``allowed`` values (a usage error, like any bad option, otherwise)."""

    def check(value: str | None) -> str | None:
        if value is not None and value not in allowed:
            raise typer.BadParameter(f"{value!r} is not one of {', '.join(allowed)}")
        return value

    return check


JsonOpt = typer.Option(False, "--json", help="Print one JSON document (the last line of output).")


@dataclass
class _State:
    db: str | None = None
    store: Store | None = None


state = _State()


def open_store() -> Store:
    # Keyed on the URL: one process may run several commands against different stores (tests, scripts).
    if state.store is None or state.store.url != resolve_url(state.db):
        state.store = Store(state.db)
    return state.store


def emit(data: Any, as_json: bool, render: Callable[[Any], None] | None = None) -> None:
    if as_json:
        sys.stdout.write(json.dumps(data, default=str, ensure_ascii=False) + "\n")
    elif render is not None:
        render(data)
    else:
        console.print_json(json.dumps(data, default=str))


def fail(message: str, as_json: bool = False, code: int = 1, **extra: Any) -> NoReturn:
    if as_json:
        sys.stdout.write(json.dumps({"error": message, **extra}, default=str) + "\n")
    else:
        err_console.print(f"[bold red]error:[/] {esc(message)}")
    raise typer.Exit(code)


@contextmanager
def guard(as_json: bool = False) -> Iterator[None]:
    """Turn afterword errors into a clean message and exit code 1."""
    try:
        yield
    except AfterwordError as exc:
        fail(str(exc), as_json, **({"record": exc.to_dict()} if hasattr(exc, "to_dict") else {}))
    except OSError as exc:  # a path the user gave: missing folder, no permission, disk full
        path = str(exc.filename).removesuffix(".partial") if exc.filename else None
        fail(f"{exc.strerror or exc}: {path}" if path else str(exc), as_json, path=path)


@contextmanager
def progress_bar(description: str, total: float | None, enabled: bool = True) -> Iterator[Callable[[float], None]]:
    """A rich progress bar on stderr; yields ``advance(n)``. Hidden for --json or non-TTY."""
    if not enabled or not sys.stderr.isatty():
        yield lambda n: None
        return
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    ) as prog:
        task = prog.add_task(description, total=total)
        yield lambda n: prog.advance(task, n)


def parse_date(value: str | None, name: str = "date") -> datetime | None:
    if not value:
        return None
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(f"{name} must be ISO-8601, e.g. 2026-01-31 or 2026-01-31T12:00:00Z") from None
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt


ADDRESS_HELP = "Ray cluster: auto (join this node's cluster) or ray://HEAD:10001 (Ray Client). Default: local Ray."
WORKERS_HELP = "Ray workers (actors, 1 CPU each). Default: the CPUs Ray reports."


def ray_only(engine: str, as_json: bool, **options: object) -> None:
    """Fail on an unknown ``--engine``, or on Ray-only ``options`` (name -> value) given with the local one."""
    given = [name for name, value in options.items() if value is not None]
    if engine not in ("local", "ray"):
        fail(f"--engine must be local or ray, not {engine!r}", as_json)
    if engine == "local" and given:
        fail(f"{', '.join(given)} need --engine ray", as_json)
