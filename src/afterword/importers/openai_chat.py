"""OpenAI chat format: JSONL, one ``{"messages": [...]}`` per line.

Optional fields per line: ``user`` (or ``user_id``), ``session_id`` (or
``session``, ``conversation_id``, ``id``), ``timestamp`` (ISO or Unix),
``model``, ``metadata``, and ``feedback``: a list of
``{"message_index": i, "thumbs": 1|-1, "rating": 1-5, "comment": "...",
"correction": "..."}`` (without ``message_index`` it applies to the last
assistant message). Per message: ``role``, ``content`` (string or text
parts), ``tool_calls``, ``timestamp``/``created_at``, ``model``,
``latency_ms``, and ``usage`` ``{prompt_tokens, completion_tokens}``.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

from afterword.errors import ImportRecordError
from afterword.importers.base import RecordError, field, parse_time, read_jsonl
from afterword.records import Conversation, Feedback, Message, feedback_kind

__all__ = ["parse", "parse_record"]

_ROLES = {"system", "user", "assistant", "tool", "developer", "function"}


_ROLE_MAP = {r: {"developer": "system", "function": "tool"}.get(r, r) for r in _ROLES}
#: Keys a plain message has; anything else takes the slower, fully checked path.
_PLAIN_KEYS = frozenset({"role", "content", "timestamp", "created_at", "created_utc"})
_MSG_DEFAULTS = {name: f.get_default(call_default_factory=True) for name, f in Message.model_fields.items()}
_new_message = Message.__new__
_setattr = object.__setattr__


def _trusted_message(values: dict[str, Any]) -> Message:
    """``Message.model_construct(**values)`` without its per-field loop (the hot path).

    Every value is type-checked by the caller. Message has no aliases, private
    attributes or post-init hook, which is what lets this skip model_construct.
    """
    m = _new_message(Message)
    d = _MSG_DEFAULTS.copy()
    d["metadata"] = {}
    d.update(values)
    _setattr(m, "__dict__", d)
    _setattr(m, "__pydantic_fields_set__", set(values))
    _setattr(m, "__pydantic_extra__", None)
    _setattr(m, "__pydantic_private__", None)
    return m


def _message(m: Any, i: int, default_time: Any, default_model: str | None = None) -> Message:
    if type(m) is not dict:
        raise RecordError(f"messages[{i}]", "expected an object")
    role = m.get("role")
    if type(role) is not str or role not in _ROLE_MAP:
        path = f"messages[{i}].role"
        if role is None:
            raise RecordError(path, "missing")
        if not isinstance(role, str):
            raise RecordError(path, f"expected str, got {type(role).__name__}")
        raise RecordError(path, f"unknown role {role!r}")
    content = m.get("content")
    if type(content) is not str:
        if content is None:
            # Only an assistant turn that called a tool (or refused) may come without text, as in OpenAI's API.
            if _ROLE_MAP[role] != "assistant" or not any(m.get(k) for k in ("tool_calls", "function_call", "refusal")):
                raise RecordError(f"messages[{i}].content", "missing" if "content" not in m else "null")
            content = m["refusal"] if isinstance(m.get("refusal"), str) else ""
        elif isinstance(content, list):
            content = "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
        else:
            raise RecordError(f"messages[{i}].content", f"expected string or list, got {type(content).__name__}")
    ts = m.get("timestamp")
    if ts is None:
        ts = m.get("created_at", m.get("created_utc"))
    created = parse_time(ts, f"messages[{i}].timestamp") if ts is not None else None
    if created is None and default_time is not None:
        created = default_time + timedelta(seconds=i)  # keep order when only the line has a time
    role = _ROLE_MAP[role]
    model = default_model if role == "assistant" else None
    if m.keys() <= _PLAIN_KEYS:  # the common case, built in one step
        msg = _new_message(Message)
        _setattr(
            msg,
            "__dict__",
            {**_MSG_DEFAULTS, "role": role, "content": content, "created_utc": created, "model": model, "metadata": {}},
        )
        _setattr(msg, "__pydantic_fields_set__", {"role", "content", "created_utc"})
        _setattr(msg, "__pydantic_extra__", None)
        _setattr(msg, "__pydantic_private__", None)
        return msg
    values: dict[str, Any] = {"role": role, "content": content, "created_utc": created, "model": model}
    path = f"messages[{i}]"
    usage = field(m, "usage", dict, f"{path}.usage") or {}
    values.update(
        tool_calls=field(m, "tool_calls", list, f"{path}.tool_calls"),
        model=field(m, "model", str, f"{path}.model") or values.get("model"),
        latency_ms=field(m, "latency_ms", (int, float), f"{path}.latency_ms"),
        prompt_tokens=field(usage, "prompt_tokens", int, f"{path}.usage.prompt_tokens"),
        completion_tokens=field(usage, "completion_tokens", int, f"{path}.usage.completion_tokens"),
        metadata=field(m, "metadata", dict, f"{path}.metadata") or {},
    )
    return _trusted_message(values)


def _feedback(fb: Any, j: int, msgs: list[Message]) -> Feedback:
    path = f"feedback[{j}]"
    if not isinstance(fb, dict):
        raise RecordError(path, "expected an object")
    idx = field(fb, "message_index", int, f"{path}.message_index")
    if idx is None:
        idx = max((k for k, m in enumerate(msgs) if m.role == "assistant"), default=None)
        if idx is None:
            raise RecordError(path, "no assistant message to attach feedback to")
    if not 0 <= idx < len(msgs):
        raise RecordError(f"{path}.message_index", f"{idx} is out of range (0..{len(msgs) - 1})")
    thumbs = field(fb, "thumbs", (int, str), f"{path}.thumbs")
    if isinstance(thumbs, str):
        thumbs = {"up": 1, "down": -1}.get(thumbs.lower())
        if thumbs is None:
            raise RecordError(f"{path}.thumbs", "expected 1, -1, 'up' or 'down'")
    if thumbs is not None and thumbs not in (1, -1):
        raise RecordError(f"{path}.thumbs", "expected 1 or -1")
    rating = field(fb, "rating", (int, float), f"{path}.rating")
    if rating is not None and not 1 <= rating <= 5:
        raise RecordError(f"{path}.rating", "expected a number from 1 to 5")
    correction = field(fb, "correction", str, f"{path}.correction")
    comment = field(fb, "comment", str, f"{path}.comment")
    kind = feedback_kind(thumbs=thumbs, rating=rating, comment=comment, correction=correction)
    if kind is None:
        raise RecordError(path, "needs one of thumbs, rating, comment, correction")
    ts = fb.get("timestamp")
    return Feedback(
        kind=kind,
        message_index=idx,
        thumbs=thumbs,
        rating=rating,
        comment=comment,
        correction=correction,
        created_utc=parse_time(ts, f"{path}.timestamp") if ts is not None else None,
        source=field(fb, "source", str, f"{path}.source") or "import",
    )


def parse_record(obj: Any, source: str = "import:openai") -> Conversation:
    if not isinstance(obj, dict):
        raise RecordError(None, "expected a JSON object")
    raw = obj.get("messages")
    if not isinstance(raw, list):
        raise RecordError("messages", "missing" if raw is None else "expected a list")
    if not raw:
        raise RecordError("messages", "empty")
    user = obj.get("user", obj.get("user_id"))
    if user is not None and not isinstance(user, str | int):
        raise RecordError("user", "expected a string")
    session = next((obj[k] for k in ("session_id", "session", "conversation_id", "id") if obj.get(k) is not None), None)
    if session is not None and not isinstance(session, str | int):
        raise RecordError("session_id", "expected a string")
    started = parse_time(obj.get("timestamp"), "timestamp")
    model = field(obj, "model", str, "model") or None
    msgs = [_message(m, i, started, model) for i, m in enumerate(raw)]
    fbs = obj.get("feedback") or []
    if isinstance(fbs, dict):
        fbs = [fbs]
    if not isinstance(fbs, list):
        raise RecordError("feedback", "expected a list or an object")
    return Conversation(
        messages=msgs,
        user_id=str(user) if user is not None else None,
        external_id=str(session) if session is not None else None,
        source=source,
        started_utc=started,
        metadata=field(obj, "metadata", dict, "metadata") or {},
        feedback=[_feedback(fb, j, msgs) for j, fb in enumerate(fbs)],
    )


def parse(path: str | Path) -> Iterator[Conversation]:
    p = str(path)
    for lineno, obj in read_jsonl(path):
        if isinstance(obj, ImportRecordError):
            yield obj  # type: ignore[misc]  # surfaced by the import loop
            continue
        try:
            yield parse_record(obj)
        except RecordError as exc:
            yield ImportRecordError(p, lineno, exc.field, exc.message)  # type: ignore[misc]
