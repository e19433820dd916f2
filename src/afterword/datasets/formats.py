"""Dataset row formats: the spec, as small checkable helpers.

Every builder produces neutral :class:`Example` values; one ``to_<format>``
function turns an example into exactly the columns its consumer expects, and
one ``is_<shape>`` predicate checks a row. The formats:

- ``trl`` (conversational, TRL's dataset types):
  SFT ``{"messages"}``; DPO and reward ``{"prompt", "chosen", "rejected"}``;
  KTO ``{"prompt", "completion", "label"}``. Message lists hold ``role``/``content``.
- ``openai`` (OpenAI fine-tuning JSONL): SFT ``{"messages"}``; DPO and reward
  ``{"input": {"messages"}, "preferred_output", "non_preferred_output"}``.
  OpenAI has no unpaired (KTO) format, so ``openai`` + ``kto`` is refused.
- ``sharegpt``: ``{"conversations": [{"from", "value"}]}`` with ``system``/``human``/``gpt``;
  preference rows add ``chosen``/``rejected`` turns and KTO rows a ``kto_tag`` bool
  (the convention LLaMA-Factory reads).

>>> ex = Example(kind="dpo", prompt=[{"role": "user", "content": "2+2?"}], chosen="4", rejected="5")
>>> to_trl(ex)
{'prompt': [{'role': 'user', 'content': '2+2?'}], 'chosen': [{'role': 'assistant', 'content': '4'}], \
'rejected': [{'role': 'assistant', 'content': '5'}]}
>>> is_preference(to_trl(ex)), is_language_modeling(to_trl(ex))
(True, False)
>>> from_openai(to_openai(ex)) == to_trl(ex), from_sharegpt(to_sharegpt(ex)) == to_trl(ex)
(True, True)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from afterword.errors import ExportError

__all__ = [
    "KINDS",
    "FORMATS",
    "Example",
    "is_message_list",
    "is_language_modeling",
    "is_preference",
    "is_unpaired_preference",
    "is_openai_preference",
    "is_sharegpt",
    "to_trl",
    "to_openai",
    "to_sharegpt",
    "from_openai",
    "from_sharegpt",
    "converter",
    "check_row",
]

KINDS = ("sft", "dpo", "kto", "reward")
FORMATS = ("trl", "openai", "sharegpt")

_TO_SHAREGPT = {"system": "system", "user": "human", "assistant": "gpt", "tool": "observation"}
_FROM_SHAREGPT = {v: k for k, v in _TO_SHAREGPT.items()}


@dataclass
class Example:
    """One training row before formatting, with its provenance.

    ``prompt`` is the conversation before the judged turn (ending on a user or tool
    message). SFT and KTO use ``completion``; DPO and reward use ``chosen``/``rejected``.
    ``message_ids``/``user_ids``/``conversation_ids`` are the lineage: every stored
    message whose text went in, and whose data it is.
    """

    kind: str
    prompt: list[dict[str, str]]
    completion: str | None = None
    chosen: str | None = None
    rejected: str | None = None
    label: bool | None = None
    source: str = ""  # correction | judged | pair:correction | pair:judged
    judgment_source: str | None = None
    confidence: float | None = None
    message_ids: list[str] = field(default_factory=list)
    user_ids: list[str | None] = field(default_factory=list)  # parallel to message_ids
    conversation_ids: list[str] = field(default_factory=list)
    time_utc: datetime | None = None
    model: str | None = None
    synthetic: bool = False
    split: str = "train"

    def texts(self) -> list[str]:
        """The text fields, in a fixed order (for dedupe keys and embeddings)."""
        out = [m["content"] for m in self.prompt]
        out += [t for t in (self.completion, self.chosen, self.rejected) if t is not None]
        return out


def is_message_list(value: Any) -> bool:
    """A non-empty list of ``{"role", "content"}`` dicts.

    >>> is_message_list([{"role": "user", "content": "hi"}]), is_message_list("hi"), is_message_list([])
    (True, False, False)
    """
    return (
        isinstance(value, list)
        and bool(value)
        and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value
        )
    )


def is_language_modeling(row: dict[str, Any]) -> bool:
    """TRL conversational language modeling (SFT): ``{"messages"}`` ending on an assistant turn.

    >>> is_language_modeling({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]})
    True
    """
    return set(row) == {"messages"} and is_message_list(row["messages"]) and row["messages"][-1]["role"] == "assistant"


def _prompt_ok(p: Any) -> bool:
    return is_message_list(p) and p[-1]["role"] in ("user", "tool")


def is_preference(row: dict[str, Any]) -> bool:
    """TRL conversational preference (DPO, reward): explicit prompt, one assistant turn each side.

    >>> is_preference({"prompt": [{"role": "user", "content": "a"}],
    ...                "chosen": [{"role": "assistant", "content": "b"}],
    ...                "rejected": [{"role": "assistant", "content": "c"}]})
    True
    """
    return (
        set(row) == {"prompt", "chosen", "rejected"}
        and _prompt_ok(row["prompt"])
        and all(is_message_list(row[k]) and row[k][0]["role"] == "assistant" for k in ("chosen", "rejected"))
    )


def is_unpaired_preference(row: dict[str, Any]) -> bool:
    """TRL conversational unpaired preference (KTO): prompt, completion and a bool ``label``.

    >>> is_unpaired_preference({"prompt": [{"role": "user", "content": "a"}],
    ...                         "completion": [{"role": "assistant", "content": "b"}], "label": False})
    True
    """
    return (
        set(row) == {"prompt", "completion", "label"}
        and _prompt_ok(row["prompt"])
        and is_message_list(row["completion"])
        and isinstance(row["label"], bool)
    )


def is_openai_preference(row: dict[str, Any]) -> bool:
    """OpenAI preference fine-tuning: ``input.messages``, ``preferred_output``, ``non_preferred_output``.

    >>> is_openai_preference({"input": {"messages": [{"role": "user", "content": "a"}]},
    ...     "preferred_output": [{"role": "assistant", "content": "b"}],
    ...     "non_preferred_output": [{"role": "assistant", "content": "c"}]})
    True
    """
    return (
        set(row) == {"input", "preferred_output", "non_preferred_output"}
        and isinstance(row["input"], dict)
        and _prompt_ok(row["input"].get("messages"))
        and is_message_list(row["preferred_output"])
        and is_message_list(row["non_preferred_output"])
    )


def _is_turns(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(
            isinstance(t, dict) and t.get("from") in _FROM_SHAREGPT and isinstance(t.get("value"), str) for t in value
        )
    )


def is_sharegpt(row: dict[str, Any]) -> bool:
    """ShareGPT: ``conversations`` of ``{"from", "value"}``, plus ``chosen``/``rejected`` or ``kto_tag``.

    >>> is_sharegpt({"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]})
    True
    """
    if "conversations" not in row or not _is_turns(row["conversations"]):
        return False
    keys = set(row)
    if keys == {"conversations"}:
        return row["conversations"][-1]["from"] == "gpt"
    if keys == {"conversations", "chosen", "rejected"}:
        return all(isinstance(row[k], dict) and row[k].get("from") == "gpt" for k in ("chosen", "rejected"))
    if keys == {"conversations", "kto_tag"}:
        return isinstance(row["kto_tag"], bool) and row["conversations"][-1]["from"] == "gpt"
    return False


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def _msgs(prompt: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{"role": m["role"], "content": m["content"]} for m in prompt]


def to_trl(ex: Example) -> dict[str, Any]:
    """TRL's conversational columns for ``ex.kind``."""
    if ex.kind == "sft":
        return {"messages": _msgs(ex.prompt) + _assistant(ex.completion or "")}
    if ex.kind in ("dpo", "reward"):
        return {
            "prompt": _msgs(ex.prompt),
            "chosen": _assistant(ex.chosen or ""),
            "rejected": _assistant(ex.rejected or ""),
        }
    if ex.kind == "kto":
        return {"prompt": _msgs(ex.prompt), "completion": _assistant(ex.completion or ""), "label": bool(ex.label)}
    raise ExportError(f"unknown dataset kind {ex.kind!r}")


def to_openai(ex: Example) -> dict[str, Any]:
    """OpenAI fine-tuning JSONL: supervised ``messages`` or preference ``input``/outputs."""
    if ex.kind == "sft":
        return to_trl(ex)
    if ex.kind in ("dpo", "reward"):
        return {
            "input": {"messages": _msgs(ex.prompt)},
            "preferred_output": _assistant(ex.chosen or ""),
            "non_preferred_output": _assistant(ex.rejected or ""),
        }
    raise ExportError(f"the openai format has no {ex.kind!r} rows (OpenAI fine-tuning has no unpaired type); use trl")


def _turns(msgs: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{"from": _TO_SHAREGPT.get(m["role"], m["role"]), "value": m["content"]} for m in msgs]


def to_sharegpt(ex: Example) -> dict[str, Any]:
    """ShareGPT ``conversations`` (LLaMA-Factory's preference and KTO conventions)."""
    if ex.kind == "sft":
        return {"conversations": _turns(_msgs(ex.prompt) + _assistant(ex.completion or ""))}
    if ex.kind in ("dpo", "reward"):
        return {
            "conversations": _turns(ex.prompt),
            "chosen": {"from": "gpt", "value": ex.chosen or ""},
            "rejected": {"from": "gpt", "value": ex.rejected or ""},
        }
    if ex.kind == "kto":
        return {"conversations": _turns(_msgs(ex.prompt) + _assistant(ex.completion or "")), "kto_tag": bool(ex.label)}
    raise ExportError(f"unknown dataset kind {ex.kind!r}")


def from_openai(row: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI fine-tuning row back in TRL's columns (for checking with TRL's formatting)."""
    if "messages" in row:
        return {"messages": row["messages"]}
    return {
        "prompt": row["input"]["messages"],
        "chosen": row["preferred_output"],
        "rejected": row["non_preferred_output"],
    }


def from_sharegpt(row: dict[str, Any]) -> dict[str, Any]:
    """A ShareGPT row back in TRL's columns.

    >>> from_sharegpt({"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}],
    ...                "kto_tag": True})
    {'prompt': [{'role': 'user', 'content': 'a'}], 'completion': [{'role': 'assistant', 'content': 'b'}], 'label': True}
    """
    msgs = [{"role": _FROM_SHAREGPT[t["from"]], "content": t["value"]} for t in row["conversations"]]
    if "chosen" in row:
        return {
            "prompt": msgs,
            "chosen": _assistant(row["chosen"]["value"]),
            "rejected": _assistant(row["rejected"]["value"]),
        }
    if "kto_tag" in row:
        return {"prompt": msgs[:-1], "completion": msgs[-1:], "label": bool(row["kto_tag"])}
    return {"messages": msgs}


_CONVERTERS: dict[str, Callable[[Example], dict[str, Any]]] = {
    "trl": to_trl,
    "openai": to_openai,
    "sharegpt": to_sharegpt,
}


def converter(fmt: str, kind: str) -> Callable[[Example], dict[str, Any]]:
    """The row function for ``fmt``; raises :class:`ExportError` for an unknown or impossible pair."""
    if fmt not in _CONVERTERS:
        raise ExportError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    if kind not in KINDS:
        raise ExportError(f"unknown dataset kind {kind!r}; known: {', '.join(KINDS)}")
    if fmt == "openai" and kind == "kto":
        raise ExportError("the openai format has no KTO rows (OpenAI fine-tuning has no unpaired type); use trl")
    return _CONVERTERS[fmt]


def check_row(fmt: str, kind: str, row: dict[str, Any]) -> bool:
    """Whether ``row`` is a valid row of ``kind`` in ``fmt``."""
    if fmt == "trl":
        return {"sft": is_language_modeling, "kto": is_unpaired_preference}.get(kind, is_preference)(row)
    if fmt == "openai":
        return is_language_modeling(row) if kind == "sft" else is_openai_preference(row)
    return is_sharegpt(row)
