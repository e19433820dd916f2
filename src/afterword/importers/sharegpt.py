"""ShareGPT: ``{"conversations": [{"from": "human"|"gpt"|"system", "value": "..."}]}``.

Accepts a JSONL file (one conversation a line) or a JSON array file. Optional
``id``, ``user`` and ``timestamp`` fields are kept.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from afterword.errors import ImportRecordError
from afterword.importers.base import RecordError, field, parse_time, read_jsonl
from afterword.records import Conversation, Message

__all__ = ["parse", "parse_record"]

_ROLE = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "system": "system",
    "tool": "tool",
    "function": "tool",
    "observation": "tool",
}


def parse_record(obj: Any) -> Conversation:
    if not isinstance(obj, dict):
        raise RecordError(None, "expected a JSON object")
    turns = obj.get("conversations", obj.get("conversation"))
    if not isinstance(turns, list) or not turns:
        raise RecordError("conversations", "missing or empty")
    msgs = []
    for i, t in enumerate(turns):
        path = f"conversations[{i}]"
        if not isinstance(t, dict):
            raise RecordError(path, "expected an object")
        who = field(t, "from", str, f"{path}.from", required=True)
        if who.lower() not in _ROLE:
            raise RecordError(f"{path}.from", f"unknown speaker {who!r}")
        value = field(t, "value", str, f"{path}.value", required=True)
        msgs.append(Message(role=_ROLE[who.lower()], content=value))
    if obj.get("system"):
        msgs.insert(0, Message(role="system", content=field(obj, "system", str, "system")))
    ident = obj.get("id")
    user = obj.get("user")
    return Conversation(
        messages=msgs,
        external_id=str(ident) if ident is not None else None,
        user_id=str(user) if user is not None else None,
        started_utc=parse_time(obj.get("timestamp"), "timestamp"),
        source="import:sharegpt",
    )


def parse(path: str | Path) -> Iterator[Conversation]:
    p = str(path)
    with open(path, "rb") as fh:
        head = fh.read(64).lstrip()
    if head.startswith(b"["):
        # A JSON array: must be read whole (json has no streaming parser in the stdlib).
        try:
            items = json.loads(Path(path).read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:  # deep JSON: an error, not a crash
            yield ImportRecordError(p, getattr(exc, "lineno", 1), None, f"invalid JSON: {exc}")  # type: ignore[misc]
            return
        for i, obj in enumerate(items):
            try:
                yield parse_record(obj)
            except RecordError as exc:
                yield ImportRecordError(p, i + 1, f"[{i}]." + (exc.field or ""), exc.message)  # type: ignore[misc]
        return
    for lineno, obj in read_jsonl(path):
        if isinstance(obj, ImportRecordError):
            yield obj  # type: ignore[misc]
            continue
        try:
            yield parse_record(obj)
        except RecordError as exc:
            yield ImportRecordError(p, lineno, exc.field, exc.message)  # type: ignore[misc]
