"""The exception tree. Every error afterword raises on purpose is one of these.

    AfterwordError
    ├── ConfigError            bad settings, unknown config keys
    ├── MissingExtraError      an optional dependency is not installed (carries the pip hint)
    ├── StoreError             the database failed or is unreachable (wraps SQLAlchemy errors)
    │   └── NotFoundError      a record asked for by id does not exist
    ├── ImportRecordError      one bad input record: names the file, line and field
    ├── ExportError            a dataset could not be built or written
    └── UpstreamError          an OpenAI-compatible endpoint failed (carries status and body)

Errors carry the record they concern, so a caller can report it without
parsing the message. Dependency errors are translated where they enter
(SQLAlchemy in ``store``, httpx/openai in the LLM clients).
"""

from __future__ import annotations

__all__ = [
    "AfterwordError",
    "ConfigError",
    "MissingExtraError",
    "StoreError",
    "NotFoundError",
    "ImportRecordError",
    "ExportError",
    "UpstreamError",
    "require",
]


class AfterwordError(Exception):
    """Base class of every afterword error."""


class ConfigError(AfterwordError):
    pass


class MissingExtraError(AfterwordError, ImportError):
    def __init__(self, module: str, extra: str) -> None:
        self.module = module
        self.extra = extra
        super().__init__(f"{module!r} is not installed; install it with: pip install 'afterword[{extra}]'")


class StoreError(AfterwordError):
    pass


class NotFoundError(StoreError, KeyError):
    def __init__(self, kind: str, ident: str) -> None:
        self.kind = kind
        self.ident = ident
        super().__init__(f"{kind} {ident!r} not found")

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class ImportRecordError(AfterwordError, ValueError):
    """A bad record in an input file. ``line`` is 1-based; ``field`` is a dotted path."""

    def __init__(self, path: str, line: int, field: str | None, message: str) -> None:
        self.path = path
        self.line = line
        self.field = field
        self.message = message
        where = f"{path}:{line}" + (f": field '{field}'" if field else "")
        super().__init__(f"{where}: {message}")

    def to_dict(self) -> dict[str, object]:
        return {"file": self.path, "line": self.line, "field": self.field, "error": self.message}


class ExportError(AfterwordError):
    pass


class UpstreamError(AfterwordError):
    def __init__(self, status: int, body: str) -> None:
        self.status = status
        self.body = body
        super().__init__(f"upstream returned {status}: {body[:200]}")


def require(module: str, extra: str):  # noqa: ANN201 - returns a module
    """Import an optional dependency late, or raise with the exact install hint."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(module, extra) from exc
