"""LoCoMo (ACL 2024): long multi-session conversations between two people.

Each ``session_N`` becomes one Conversation of the sample's user, so the
store sees a user returning over weeks. ``speaker_a`` turns are stored with
role ``user`` and ``speaker_b`` turns with role ``assistant`` (LoCoMo has two
humans; the roles only fix who is who). Every message keeps its ``dia_id``
and speaker in ``metadata``, and a shared photo's caption is appended to the
text, which is what the benchmark's evidence refers to.

``load_qa`` returns the questions for retrieval benchmarks.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from afterword.errors import ImportRecordError
from afterword.records import Conversation, Message

__all__ = ["parse", "load_qa", "load_observations", "parse_locomo_time"]


def parse_locomo_time(s: str | None) -> datetime | None:
    if not s or not isinstance(s, str):  # a malformed date is no date, not a crash
        return None
    for fmt in ("%I:%M %p on %d %B, %Y", "%I:%M %p on %d %b, %Y"):
        try:
            return datetime.strptime(s.strip(), fmt).replace(tzinfo=UTC)
        except ValueError:
            continue
    return None


def _load(path: str | Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:  # deep JSON: an error, not a crash
        raise ImportRecordError(str(path), getattr(exc, "lineno", 1), None, f"invalid JSON: {exc}") from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise ImportRecordError(str(path), 1, None, "expected a list of LoCoMo samples")
    return data


def turn_text(turn: dict[str, Any]) -> str:
    text = str(turn.get("text", ""))
    if turn.get("blip_caption"):
        text += f" [shares a photo: {turn['blip_caption']}]"
    return text


def parse(path: str | Path) -> Iterator[Conversation]:
    p = str(path)
    for i, sample in enumerate(_load(path)):
        conv = sample.get("conversation") if isinstance(sample, dict) else None
        if not isinstance(conv, dict):
            yield ImportRecordError(p, i + 1, f"[{i}].conversation", "missing")  # type: ignore[misc]
            continue
        user = _sample_id(sample, i)
        a = conv.get("speaker_a")
        keys = sorted((k for k in conv if re.fullmatch(r"session_\d+", k)), key=lambda k: int(k.split("_")[1]))
        for k in keys:
            turns = conv[k]
            if not isinstance(turns, list) or not turns:
                continue
            start = parse_locomo_time(conv.get(f"{k}_date_time"))
            msgs = []
            for j, turn in enumerate(turns):
                if not isinstance(turn, dict) or "text" not in turn:
                    yield ImportRecordError(p, i + 1, f"[{i}].conversation.{k}[{j}].text", "missing")  # type: ignore[misc]
                    break
                msgs.append(
                    Message(
                        role="user" if turn.get("speaker") == a else "assistant",
                        content=turn_text(turn),
                        created_utc=start + timedelta(seconds=30 * j) if start else None,
                        metadata={"dia_id": turn.get("dia_id"), "speaker": turn.get("speaker")},
                    )
                )
            else:
                yield Conversation(
                    messages=msgs,
                    user_id=user,
                    external_id=f"{user}:{k}",
                    source="import:locomo",
                    started_utc=start,
                    metadata={"session": k, "speakers": [a, conv.get("speaker_b")]},
                )


def _sample_id(sample: dict[str, Any], i: int) -> str:
    """The user a sample becomes (its ``sample_id``, else its position): the same for turns, questions and
    observations."""
    return str(sample.get("sample_id", f"locomo-{i}"))


def load_qa(path: str | Path) -> list[dict[str, Any]]:
    """All questions: ``{sample_id, question, answer, evidence, category}``."""
    out = []
    for i, sample in enumerate(_load(path)):
        sid = _sample_id(sample, i)
        for q in sample.get("qa", []):
            out.append({"sample_id": sid, **q})
    return out


def load_observations(path: str | Path) -> list[dict[str, Any]]:
    """The annotators' per-session observations, each a statement with the turn(s) it rests on:
    ``{sample_id, session, speaker, text, evidence}`` (``evidence`` as given: a dia_id or a list of them)."""
    out = []
    for i, sample in enumerate(_load(path)):
        sid = _sample_id(sample, i)
        for session, by_speaker in (sample.get("observation") or {}).items():
            if not isinstance(by_speaker, dict):
                continue
            for speaker, items in by_speaker.items():
                for item in items or []:
                    if isinstance(item, list | tuple) and len(item) == 2 and isinstance(item[0], str):
                        ev = item[1] if isinstance(item[1], list) else [item[1]]
                        out.append(
                            {"sample_id": sid, "session": session, "speaker": speaker, "text": item[0], "evidence": ev}
                        )
    return out
