"""Rated examples from the USS and ASAP files, in the shape the judge consumes.

An *example* is one rated user reaction: the conversation it sits in, the
index of that user message, and its 3-class label. Training
(``scripts/train_judge.py``) and the benchmark (:mod:`afterword.judge.bench`)
both read data through here, so they cut turns the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from afterword.importers import asap, uss
from afterword.importers.base import raise_errors
from afterword.records import Conversation

__all__ = ["Example", "asap_examples", "uss_examples", "detect_format", "load_examples"]


@dataclass
class Example:
    """One rated reaction: ``conv.messages[index]`` is the user message the label is given with."""

    conv: Conversation
    index: int
    label: int

    @property
    def reaction(self) -> str:
        return self.conv.messages[self.index].content

    @property
    def response(self) -> str:
        for m in reversed(self.conv.messages[: self.index]):
            if m.role == "assistant":
                return m.content
        return ""

    @property
    def has_response(self) -> bool:
        return any(m.role == "assistant" for m in self.conv.messages[: self.index])


def asap_examples(path: str | Path) -> Iterator[Example]:
    """Each ASAP line: the last message is the rated reaction."""
    for conv in raise_errors(asap.parse(path)):
        yield Example(conv, len(conv.messages) - 1, int(conv.metadata["label"]))


def uss_examples(convs: Iterable[Conversation], *, need_response: bool = False) -> Iterator[Example]:
    """Every rated user message of USS dialogues (``need_response``: only those after a response)."""
    for conv in convs:
        seen_response = False
        for j, m in enumerate(conv.messages):
            if m.role == "assistant":
                seen_response = True
            elif m.role == "user" and "ratings" in m.metadata and (seen_response or not need_response):
                yield Example(conv, j, uss.rating_label(m.metadata["ratings"]))


def detect_format(path: str | Path) -> str:
    """``"asap"`` or ``"uss"``, from the first non-empty line of the file."""
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                return "asap" if "|||" in line else "uss"
    return "uss"


def load_examples(paths: Iterable[str | Path], fmt: str | None = None, *, need_response: bool = False) -> list[Example]:
    out: list[Example] = []
    for p in paths:
        f = fmt or detect_format(p)
        if f == "asap":
            out += asap_examples(p)
        elif f == "uss":
            out += uss_examples(raise_errors(uss.parse(p)), need_response=need_response)
        else:
            raise ValueError(f"unknown format {f!r}; expected 'asap' or 'uss'")
    return out
