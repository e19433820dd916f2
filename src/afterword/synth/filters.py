"""Filters that decide which generated variants are kept, each counting what it dropped.

A filter takes the surviving items and returns the ones it keeps; the
:class:`FilterReport` it writes says how many it saw, how many it dropped and
why. The order in :func:`run_filters` is cheapest first, so the LLM judge only
sees items that already passed everything mechanical:

1. ``exact_dedup``: the same normalised prompt as a seed or an earlier item;
2. ``near_dedup``: cosine similarity (MiniLM) at or above ``near_dup`` (0.95: the same
   question reworded) against any seed or an earlier kept item;
3. ``similarity_bounds``: similarity to its own seed must lie in ``[low, high)``
   (default ``[0.30, 0.90)``): above ``high`` it is a paraphrase of its seed, below
   ``low`` it has left the topic;
4. ``verify``: executable verifiers (code must pass its tests, math must check);
5. ``rubric_judge``: an LLM grades the answer 1-5 against a rubric; keeps >= ``min_score``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from afterword.synth.items import Seed, SynthItem
from afterword.synth.verifiers import arithmetic_in, check_math, run_python_tests

__all__ = [
    "FilterConfig",
    "FilterReport",
    "normalise_text",
    "exact_dedup",
    "near_dedup",
    "similarity_bounds",
    "verify",
    "rubric_judge",
    "run_filters",
]


@dataclass
class FilterConfig:
    """Thresholds of the filters; every field is documented once, here."""

    near_dup: float = 0.95  # cosine at/above which two prompts are the same question (vs seeds and each other)
    low: float = 0.30  # similarity to its own seed below this: off-topic
    high: float = 0.90  # similarity to its own seed at/above this: a paraphrase of the seed, not a new question
    verify_code: bool = True  # run code answers against their tests
    verify_math: bool = True  # check math answers numerically
    require_verifier: bool = False  # drop code/math items that no verifier could check
    code_timeout_s: float = 5.0
    code_memory_mb: int = 256
    judge: bool = True  # run the LLM rubric judge (needs an LLM)
    min_score: int = 3  # rubric score (1-5) needed to keep an item
    judge_unparsed: str = "drop"  # drop | keep: what to do when the judge's reply has no score

    def __post_init__(self) -> None:
        if not 0 <= self.low < self.high <= 1.0001:
            raise ValueError("need 0 <= low < high <= 1")
        if self.judge_unparsed not in {"drop", "keep"}:
            raise ValueError("judge_unparsed must be 'drop' or 'keep'")


@dataclass
class FilterReport:
    name: str
    seen: int = 0
    dropped: int = 0
    reasons: Counter[str] = field(default_factory=Counter)

    @property
    def kept(self) -> int:
        return self.seen - self.dropped

    def drop(self, reason: str) -> None:
        self.dropped += 1
        self.reasons[reason] += 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "filter": self.name,
            "seen": self.seen,
            "dropped": self.dropped,
            "kept": self.kept,
            "reasons": dict(self.reasons),
        }


def normalise_text(s: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", "", s.lower())).strip()


def exact_dedup(items: Sequence[SynthItem], seeds: Sequence[Seed]) -> tuple[list[SynthItem], FilterReport]:
    rep = FilterReport("exact_dedup", seen=len(items))
    seen = {normalise_text(s.prompt) for s in seeds}
    kept = []
    for it in items:
        k = normalise_text(it.prompt)
        if not k:
            rep.drop("empty")
        elif k in seen:
            rep.drop("duplicate")
        else:
            seen.add(k)
            it.passed("exact_dedup")
            kept.append(it)
    return kept, rep


def _embed(texts: Sequence[str]) -> np.ndarray:
    from afterword.embed import get_embedder

    return get_embedder().encode(list(texts))


def near_dedup(
    items: Sequence[SynthItem], seeds: Sequence[Seed], threshold: float, *, embed: Callable[..., np.ndarray] = _embed
) -> tuple[list[SynthItem], FilterReport]:
    """Greedy: an item is kept unless it is within ``threshold`` of a seed or of an item kept before it."""
    rep = FilterReport("near_dedup", seen=len(items))
    if not items:
        return [], rep
    vecs = embed([it.prompt for it in items])
    bank = list(embed([s.prompt for s in seeds])) if seeds else []
    kept = []
    for it, v in zip(items, vecs, strict=True):
        sim = float(np.max(np.stack(bank) @ v)) if bank else 0.0
        if sim >= threshold:
            rep.drop("near-duplicate")
            continue
        bank.append(v)
        it.passed("near_dedup", max_similarity=round(sim, 4))
        kept.append(it)
    return kept, rep


def similarity_bounds(
    items: Sequence[SynthItem],
    seeds: Sequence[Seed],
    low: float,
    high: float,
    *,
    embed: Callable[..., np.ndarray] = _embed,
) -> tuple[list[SynthItem], FilterReport]:
    rep = FilterReport("similarity_bounds", seen=len(items))
    if not items:
        return [], rep
    by_id = {s.id: s for s in seeds}
    vecs = embed([it.prompt for it in items])
    seed_vecs = embed([by_id[it.seed_id].prompt if it.seed_id in by_id else "" for it in items])
    kept = []
    for it, v, sv in zip(items, vecs, seed_vecs, strict=True):
        sim = float(v @ sv)
        if sim >= high:
            rep.drop("copy-of-seed")
        elif sim < low:
            rep.drop("off-topic")
        else:
            it.passed("similarity_bounds", seed_similarity=round(sim, 4))
            kept.append(it)
    return kept, rep


def verify(items: Sequence[SynthItem], cfg: FilterConfig) -> tuple[list[SynthItem], FilterReport]:
    """Executable verifiers: code must pass its tests, math must check numerically."""
    rep = FilterReport("verify", seen=len(items))
    kept = []
    for it in items:
        if it.kind == "code" and cfg.verify_code:
            names = set(re.findall(r"^\s*def\s+([A-Za-z_]\w*)\s*\(", _strip_fences(it.answer), re.MULTILINE))
            if not any(re.search(rf"\b{re.escape(nm)}\s*\(", it.tests or "") for nm in names):
                rep.drop("code:tests-do-not-call-it")  # "assert True" verifies nothing
                continue
            res = run_python_tests(
                _strip_fences(it.answer), it.tests or "", timeout_s=cfg.code_timeout_s, memory_mb=cfg.code_memory_mb
            )
        elif it.kind == "math" and cfg.verify_math:
            expr = it.expression or arithmetic_in(it.prompt)
            res = check_math(it.answer, expression=expr) if expr else None
            if res is None:
                if cfg.require_verifier:
                    rep.drop("unverifiable")
                    continue
                it.passed("verify", verifier="none")
                kept.append(it)
                continue
        else:
            it.passed("verify", verifier="none")
            kept.append(it)
            continue
        if res.ok:
            it.passed("verify", verifier=it.kind, duration_ms=round(res.duration_ms, 1))
            kept.append(it)
        else:
            rep.drop(f"{it.kind}:{res.reason}")
    return kept, rep


def _strip_fences(code: str) -> str:
    m = re.search(r"```(?:python|py)?\s*\n([\s\S]*?)```", code)
    return m.group(1) if m else code


_RUBRIC = (
    "You grade training examples. Score the ANSWER to the QUESTION from 1 (wrong or unhelpful) to 5 "
    '(correct, complete, clear). Reply with JSON only: {"score": <1-5>, "reason": "<short>"}.'
)


def rubric_judge(
    items: Sequence[SynthItem], llm: Any, min_score: int = 3, unparsed: str = "drop"
) -> tuple[list[SynthItem], FilterReport]:
    rep = FilterReport("rubric_judge", seen=len(items))
    kept = []
    for it in items:
        msgs = [
            {"role": "system", "content": _RUBRIC},
            {"role": "user", "content": f"QUESTION:\n{it.prompt[:1500]}\n\nANSWER:\n{it.answer[:1500]}"},
        ]
        score: int | None = None
        try:
            obj = llm.chat_json(msgs, max_tokens=60, temperature=0.0)
            raw = obj.get("score") if isinstance(obj, dict) else None
            score = int(float(raw)) if raw is not None else None
        except (ValueError, TypeError):
            score = None
        if score is None or not 1 <= score <= 5:
            if unparsed == "keep":
                it.passed("rubric_judge", score=None)
                kept.append(it)
            else:
                rep.drop("unparsed")
            continue
        if score < min_score:
            rep.drop(f"score-{score}")
            continue
        it.passed("rubric_judge", score=score)
        kept.append(it)
    return kept, rep


def run_filters(
    items: Sequence[SynthItem],
    seeds: Sequence[Seed],
    cfg: FilterConfig,
    llm: Any | None = None,
    *,
    embed: Callable[..., np.ndarray] = _embed,
) -> tuple[list[SynthItem], list[FilterReport]]:
    """All filters in order; returns the kept items and one report per filter."""
    reports = []
    cur, rep = exact_dedup(items, seeds)
    reports.append(rep)
    cur, rep = near_dedup(cur, seeds, cfg.near_dup, embed=embed)
    reports.append(rep)
    cur, rep = similarity_bounds(cur, seeds, cfg.low, cfg.high, embed=embed)
    reports.append(rep)
    cur, rep = verify(cur, cfg)
    reports.append(rep)
    if cfg.judge and llm is not None:
        cur, rep = rubric_judge(cur, llm, cfg.min_score, cfg.judge_unparsed)
        reports.append(rep)
    return cur, reports
