"""Typed value records: what flows through afterword.

These are plain pydantic models with no storage identity of their own beyond
what the caller supplies. The store assigns stable ids (content hashes),
and timestamps where the source has none. Keeping the values apart from the
tables means importers, the judge and the exporters can be tested without a
database, and the same records travel over the HTTP API unchanged.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "Role",
    "Label",
    "JudgmentSource",
    "FeedbackKind",
    "MemoryKind",
    "Message",
    "Conversation",
    "Feedback",
    "Evidence",
    "Judgment",
    "Memory",
    "stable_id",
    "feedback_kind",
    "utcnow",
]


def utcnow() -> datetime:
    return datetime.now(UTC)


def stable_id(*parts: object, n: int = 24) -> str:
    """A deterministic id from the given parts (sha256, hex, truncated).

    The same content always gives the same id, which is what makes
    re-imports and re-sent chat histories idempotent.
    """
    chunks = []
    for p in parts:
        if p is None:
            chunks.append("\x00")
        elif isinstance(p, str):
            chunks.append(p)
        elif isinstance(p, bytes):
            chunks.append(p.decode("latin-1"))
        else:
            chunks.append(json.dumps(p, sort_keys=True, default=str))
    data = "\x1f".join(chunks).encode("utf-8", "surrogatepass")
    return hashlib.sha256(data).hexdigest()[:n]


class Role(StrEnum):
    system = "system"
    user = "user"
    assistant = "assistant"
    tool = "tool"


class Label(StrEnum):
    dissatisfied = "dissatisfied"
    neutral = "neutral"
    satisfied = "satisfied"


class JudgmentSource(StrEnum):
    explicit = "explicit"
    hindsight_model = "hindsight-model"
    llm_judge = "llm-judge"
    human = "human"
    combined = "combined"


class FeedbackKind(StrEnum):
    thumbs = "thumbs"
    rating = "rating"
    comment = "comment"
    correction = "correction"


class MemoryKind(StrEnum):
    lesson = "lesson"
    preference = "preference"
    fact = "fact"


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", use_enum_values=True)


class Message(_Record):
    """One turn. ``id`` is filled by the store when not given."""

    role: Role
    content: str = ""
    id: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    created_utc: datetime | None = None
    model: str | None = None
    latency_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("content", mode="before")
    @classmethod
    def _flatten_content(cls, v: Any) -> str:
        # OpenAI content may be a list of parts; keep the text parts.
        if v is None:
            return ""
        if isinstance(v, list):
            return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in v)
        if not isinstance(v, str):
            raise ValueError("content must be a string or a list of text parts")
        return v


def feedback_kind(
    *, thumbs: int | None, rating: float | None, comment: str | None, correction: str | None
) -> FeedbackKind | None:
    """The kind of a feedback event from the fields it carries (a correction outranks the rest)."""
    if correction:
        return FeedbackKind.correction
    if thumbs is not None:
        return FeedbackKind.thumbs
    if rating is not None:
        return FeedbackKind.rating
    if comment:
        return FeedbackKind.comment
    return None


class Feedback(_Record):
    """Explicit feedback on one assistant message.

    ``message_index`` lets an importer point at a message by its position in
    the conversation before the store has assigned ids.
    """

    kind: FeedbackKind
    message_id: str | None = None
    message_index: int | None = None
    thumbs: int | None = Field(default=None, ge=-1, le=1)
    rating: float | None = Field(default=None, ge=1, le=5)
    comment: str | None = None
    correction: str | None = None
    user_id: str | None = None
    created_utc: datetime | None = None
    source: str = "user"


class Conversation(_Record):
    """A session: ordered messages of one user, plus explicit feedback."""

    messages: list[Message]
    id: str | None = None
    user_id: str | None = None
    external_id: str | None = None
    source: str = "import"
    started_utc: datetime | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    feedback: list[Feedback] = Field(default_factory=list)


class Evidence(_Record):
    """One signal the judge used: which message carried it and how strongly."""

    signal: str
    message_id: str | None = None
    weight: float = 0.0
    detail: str | None = None


class Judgment(_Record):
    message_id: str
    source: JudgmentSource
    label: Label
    score: float = Field(ge=-1, le=1)
    confidence: float = Field(ge=0, le=1)
    evidence: list[Evidence] = Field(default_factory=list)
    model_version: str | None = None
    created_utc: datetime | None = None


class Memory(_Record):
    """A lesson, preference or fact that can be injected at generation time."""

    kind: MemoryKind
    text: str
    id: str | None = None
    scope: str = "user"  # "user" or "global"
    user_id: str | None = None
    situation: str | None = None
    wrong: str | None = None
    right: str | None = None
    key: str | None = None  # preferences/facts: the slot a newer value supersedes
    evidence_ids: list[str] = Field(default_factory=list)
    pinned: bool = False
    uses: int = 0
    helpful: float = 0.0
    harmful: float = 0.0
    usefulness: float = 0.0
    superseded_by: str | None = None
    active: bool = True  # False once superseded, faded or switched off; history is kept
    created_utc: datetime | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
