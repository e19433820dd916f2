"""Parser for the ASAP/USDA 3-class hindsight splits of USS.

One example a line: a Python-literal list of ``"user|||system"`` turns whose
last element is ``"<rated user utterance>|||"``, a tab, the list of
dialogue-act ids, a tab, and the label (0 dissatisfied, 1 neutral,
2 satisfied). Each example becomes a :class:`~afterword.records.Conversation`
whose last message is the rated user reaction, with
``metadata={"label": ..., "acts": [...]}``. The act ids are kept only for
completeness: real chat logs have none, so the judge never reads them.

The list is read with :func:`ast.literal_eval`, which evaluates literals
only, never code. A malformed line raises
:class:`~afterword.errors.ImportRecordError` with the file, line and field.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from afterword.errors import ImportRecordError
from afterword.importers.base import decoded_lines
from afterword.records import Conversation, Message

__all__ = ["parse", "LABELS"]

LABELS = {0: "dissatisfied", 1: "neutral", 2: "satisfied"}


def _literal_list(path: str, lineno: int, field: str, raw: str) -> list:
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError, MemoryError, RecursionError) as exc:
        raise ImportRecordError(path, lineno, field, f"not a Python list literal: {exc}") from None
    if not isinstance(value, list):
        raise ImportRecordError(path, lineno, field, f"expected a list, got {type(value).__name__}")
    return value


def _example(path: str, stem: str, lineno: int, line: str) -> Conversation:
    fields = line.split("\t")
    if len(fields) != 3:
        raise ImportRecordError(path, lineno, None, f"expected 3 tab-separated fields, got {len(fields)}")
    turns = _literal_list(path, lineno, "turns", fields[0])
    acts = _literal_list(path, lineno, "acts", fields[1])
    try:
        label = int(fields[2].strip())
    except ValueError:
        raise ImportRecordError(path, lineno, "label", f"not an integer: {fields[2]!r}") from None
    if label not in LABELS:
        raise ImportRecordError(path, lineno, "label", f"expected 0, 1 or 2, got {label}")
    if not turns:
        raise ImportRecordError(path, lineno, "turns", "empty turn list")
    messages: list[Message] = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, str) or "|||" not in turn:
            raise ImportRecordError(path, lineno, f"turns[{i}]", "expected 'user|||system'")
        user, system = turn.split("|||", 1)
        last = i == len(turns) - 1
        if last and system.strip():
            raise ImportRecordError(path, lineno, f"turns[{i}]", "the last turn must be '<reaction>|||'")
        messages.append(Message(role="user", content=user))
        if not last:
            messages.append(Message(role="assistant", content=system))
    return Conversation(
        messages=messages,
        external_id=f"asap:{stem}:{lineno}",
        source="asap",
        metadata={"dataset": "asap", "split": stem, "line": lineno, "label": label, "acts": acts},
    )


def parse(path: str | Path) -> Iterator[Conversation]:
    """Stream the examples of an ASAP split file, one Conversation each.

    A malformed line is yielded as an ImportRecordError in its place; reading goes on.
    """
    path = str(path)
    stem = Path(path).stem
    with open(path, "rb") as fh:  # decoded line by line: bad UTF-8 is a clear ImportRecordError
        for lineno, line in enumerate(decoded_lines(path, fh), start=1):
            line = line.rstrip("\n").rstrip("\r")
            if line.strip():
                try:
                    yield _example(path, stem, lineno, line)
                except ImportRecordError as exc:  # yielded, so the import goes on with the next line
                    yield exc  # type: ignore[misc]
