"""The ``afterword`` command line: a thin layer over the public API.

Each command group lives in its own module with a ``register(app)``
function; the groups listed in ``GROUPS`` are registered when their module
exists. Commands parse arguments, call the library, and print either rich
output or, with ``--json``, one JSON document (always the last line).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys

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


def main(argv: list[str] | None = None) -> None:
    """Run the CLI. With ``--json`` anywhere, even a usage error (a bad option or value) prints one JSON line."""
    args = sys.argv[1:] if argv is None else list(argv)
    if "--json" not in args:
        app(args=args, prog_name="afterword")
        return
    try:
        code = app(args=args, prog_name="afterword", standalone_mode=False)
    except typer.Abort:
        sys.stdout.write(json.dumps({"error": "aborted"}) + "\n")
        sys.exit(1)
    except Exception as exc:
        # click's exceptions (typer vendors its own copy of click, so match by shape, not by class)
        if not (hasattr(exc, "format_message") and isinstance(getattr(exc, "exit_code", None), int)):
            raise
        sys.stdout.write(json.dumps({"error": exc.format_message(), "usage": exc.exit_code == 2}) + "\n")
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)
