"""The ``afterword`` command line: a thin layer over the public API.

Each command group lives in its own module with a ``register(app)``
function; the groups listed in ``GROUPS`` are registered when their module
exists. Commands parse arguments, call the library, and print either rich
output or, with ``--json``, one JSON document (always the last line).
"""

from __future__ import annotations

import importlib
import importlib.util

import typer

from afterword.cli._common import state

__all__ = ["app", "main", "GROUPS"]

app = typer.Typer(
    name="afterword",
    help="Learn from experience: capture, judge in hindsight, remember, export, evaluate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

#: Command-group modules, in help order.
GROUPS = [
    "afterword.cli.data",
    "afterword.cli.judge",
    "afterword.cli.memory",
    "afterword.cli.serve",
    "afterword.cli.dataset",
    "afterword.cli.train",
    "afterword.cli.evals",
    "afterword.cli.synth",
    "afterword.cli.db",
    "afterword.cli.bench",
]


@app.callback()
def _root(
    db: str = typer.Option(None, "--db", envvar="AFTERWORD_DB", help="Store: a SQLite path or a database URL."),
) -> None:
    state.db = db


for _mod in GROUPS:
    if importlib.util.find_spec(_mod) is not None:
        importlib.import_module(_mod).register(app)


def main() -> None:
    app()
