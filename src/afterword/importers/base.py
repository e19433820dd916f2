"""Shared machinery for importers: line-numbered JSON reading, field checks, times.

An importer is a function ``parse(path) -> Iterator[Conversation]`` that
streams records and raises :class:`ImportRecordError` (file, line, field) for
a bad one. It never touches the store: ``afterword.importers.run_import``
batches what it yields into transactions.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from afterword.errors import ImportRecordError

__all__ = ["raise_errors", "read_jsonl", "decoded_lines", "parse_time", "field", "RecordError"]


class RecordError(Exception):
    """Raised inside a record parser; the caller adds file and line."""

    def __init__(self, field: str | None, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(message)


def read_jsonl(path: str | Path) -> Iterator[tuple[int, Any]]:
    """Yield (line number, parsed JSON) for each non-blank line.

    Lines that are not valid UTF-8 or not valid JSON raise ImportRecordError,
    which the import loop may skip; reading then continues with the next line.
    """
    p = str(path)
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield lineno, ImportRecordError(p, lineno, None, f"invalid UTF-8 at byte {exc.start}")
                continue
            try:
                yield lineno, json.loads(text)
            except (json.JSONDecodeError, RecursionError) as exc:
                msg = exc.msg if isinstance(exc, json.JSONDecodeError) else "JSON nested too deeply"
                yield lineno, ImportRecordError(p, lineno, None, f"invalid JSON: {msg}")


def decoded_lines(path: str | Path, fh: Any) -> Iterator[str]:
    """Lines of a binary file as text; a line that is not UTF-8 raises ImportRecordError naming it."""
    for lineno, raw in enumerate(fh, 1):
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ImportRecordError(str(path), lineno, None, f"invalid UTF-8 at byte {exc.start}") from None


def parse_time(value: Any, field_name: str) -> datetime | None:
    """ISO-8601 strings or Unix seconds/milliseconds, to UTC-aware datetimes."""
    if value is None or value == "":
        return None
    if type(value) is str:  # the common case first: ISO-8601 (3.11 reads a trailing Z itself)
        try:
            dt = datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            if dt.tzinfo is None:
                return dt.replace(tzinfo=UTC)
            return dt if dt.tzinfo is UTC else dt.astimezone(UTC)
    try:
        if isinstance(value, bool):
            raise TypeError
        if isinstance(value, int | float):
            secs = value / 1000 if value > 1e11 else value
            return datetime.fromtimestamp(secs, UTC)
        if isinstance(value, str):
            dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
            return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        pass
    raise RecordError(field_name, f"not a timestamp: {str(value)[:40]!r}")


def field(obj: dict[str, Any], name: str, kind: type | tuple[type, ...], path: str, required: bool = False) -> Any:
    """``obj[name]`` checked against ``kind``; errors name the dotted ``path``."""
    if name not in obj or obj[name] is None:
        if required:
            raise RecordError(path, "missing")
        return None
    v = obj[name]
    if not isinstance(v, kind) or (kind is int and isinstance(v, bool)):
        want = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise RecordError(path, f"expected {want}, got {type(v).__name__}")
    return v


def raise_errors(items: Iterator[Any]) -> Iterator[Any]:
    """Pass a parser's records through, raising its first ImportRecordError (for clean benchmark data)."""
    for item in items:
        if isinstance(item, ImportRecordError):
            raise item
        yield item
