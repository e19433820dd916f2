"""The values synthetic expansion works on: trusted seeds and generated items.

A :class:`Seed` is a trusted example (a human correction, a frozen suite item,
or a line of a seed file). A :class:`SynthItem` is one generated variant: its
new input and answer, the seed it came from, and its provenance, which grows
as the item passes each filter. Both are plain values; the store gives a kept
item its ids when :func:`afterword.synth.save_synthetic` writes it.

Seed file format (JSONL, one seed a line)::

    {"prompt": "What is 12 * 7?", "answer": "84", "kind": "math"}
    {"prompt": "Write is_even(n).", "answer": "def is_even(n): ...", "kind": "code",
     "tests": "assert is_even(2)\\nassert not is_even(3)"}

``kind`` is ``code``, ``math`` or ``text``; when absent it is inferred.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from afterword.records import stable_id

__all__ = ["Seed", "SynthItem", "infer_kind", "read_seed_file"]

_CODE = re.compile(r"```(?:python)?|^\s*(?:def|class|import|from)\s", re.MULTILINE)
_MATHY = re.compile(r"^\s*[-$]?[\d,]*\.?\d+(?:\s*/\s*\d+)?\s*%?\s*\.?$")


def infer_kind(prompt: str, answer: str) -> str:
    """``code`` when the answer holds Python, ``math`` when it is a bare number, else ``text``."""
    if _CODE.search(answer):
        return "code"
    if _MATHY.match(answer.strip()):
        return "math"
    return "text"


@dataclass
class Seed:
    id: str
    prompt: str
    answer: str
    kind: str = "text"
    tests: str | None = None
    source: str = "file"  # corrections | suite | file
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class SynthItem:
    prompt: str
    answer: str
    seed_id: str
    kind: str = "text"
    tests: str | None = None
    expression: str | None = None  # math: an arithmetic expression the answer must equal
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return stable_id("synth", self.prompt, self.answer)

    def passed(self, filter_name: str, **detail: Any) -> None:
        self.provenance.setdefault("filters_passed", []).append(filter_name)
        if detail:
            self.provenance.setdefault("filter_detail", {})[filter_name] = detail

    def as_dict(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "answer": self.answer,
            "kind": self.kind,
            "tests": self.tests,
            "seed_id": self.seed_id,
            "provenance": self.provenance,
        }


def read_seed_file(path: str | Path) -> list[Seed]:
    """Seeds from a JSONL file (see the module docstring); ids are content hashes unless given."""
    seeds = []
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                prompt, answer = str(d["prompt"]), str(d["answer"])
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                from afterword.errors import ImportRecordError

                raise ImportRecordError(str(path), line_no, None, f"not a seed: {exc}") from exc
            kind = d.get("kind") or infer_kind(prompt, answer)
            seeds.append(
                Seed(
                    id=str(d.get("id") or stable_id("seed", prompt, answer)),
                    prompt=prompt,
                    answer=answer,
                    kind=kind,
                    tests=d.get("tests"),
                    source="file",
                    metadata={k: v for k, v in d.items() if k not in {"id", "prompt", "answer", "kind", "tests"}},
                )
            )
    return seeds
