"""Synthetic expansion: many verified lookalikes from a few trusted seeds.

``expand`` asks an LLM for new inputs *with their answers* modelled on trusted
seeds (human corrections, frozen suite items, or a seed file), then keeps
only what survives :func:`afterword.synth.filters.run_filters`.

Diversity comes from the :class:`Strategy`: each attempt rotates through
persona, style and difficulty axes (mixed-radix, so neighbouring attempts
differ on the fastest axis and the whole grid is covered before a repeat) and
through a temperature schedule; and a candidate that is a near-duplicate of a
seed or of a candidate already accepted is rejected *as it is generated*, so
the budget goes to new questions rather than to copies the dedup filter would
drop later anyway.

Every kept item carries its provenance (seed id and source, generator model,
the hash of the exact generation prompt, the strategy cell and temperature,
the filters it passed with their scores), and :func:`save_synthetic` writes it
as a conversation with ``source="synthetic"`` so that exports and dataset
builds can include or exclude it (see :func:`afterword.synth.cap_synthetic`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

from afterword.errors import ConfigError, UpstreamError
from afterword.llm import extract_json
from afterword.records import Conversation, Message, Role, stable_id, utcnow
from afterword.synth.filters import FilterConfig, FilterReport, _embed, normalise_text, run_filters
from afterword.synth.items import Seed, SynthItem, infer_kind, read_seed_file

__all__ = ["Strategy", "ExpansionResult", "expand", "load_seeds", "save_synthetic", "parse_variant"]


@dataclass
class Strategy:
    """How attempts are spread over the space of variants."""

    personas: list[str] = field(
        default_factory=lambda: [
            "a curious student",
            "a busy professional",
            "a non-native English speaker",
            "an expert checking an edge case",
        ]
    )
    styles: list[str] = field(default_factory=lambda: ["short and direct", "with a little real-world context"])
    difficulties: list[str] = field(default_factory=lambda: ["easier", "about as hard", "harder"])
    temperatures: list[float] = field(default_factory=lambda: [0.7, 0.9, 1.1])
    live_dedup: float | None = 0.95  # reject a candidate this close to a seed/accepted one as it arrives
    max_tokens: int = 320  # per answer
    question_tokens: int = 160  # per new question

    @classmethod
    def fixed(cls, temperature: float = 0.7) -> Strategy:
        """The baseline: one persona, one style, one difficulty, one temperature, no live dedup."""
        return cls(
            personas=["a user"],
            styles=["plain"],
            difficulties=["about as hard"],
            temperatures=[temperature],
            live_dedup=None,
        )

    def cell(self, i: int) -> dict[str, Any]:
        p, s, d = len(self.personas), len(self.styles), len(self.difficulties)
        return {
            "persona": self.personas[i % p],
            "style": self.styles[(i // p) % s],
            "difficulty": self.difficulties[(i // (p * s)) % d],
            "temperature": self.temperatures[i % len(self.temperatures)],
        }


@dataclass
class ExpansionResult:
    items: list[SynthItem]
    seeds: int
    attempts: int
    candidates: int
    generation: FilterReport
    filters: list[FilterReport]
    generate_s: float
    filter_s: float
    model: str
    saved: dict[str, Any] | None = None

    @property
    def elapsed_s(self) -> float:
        return self.generate_s + self.filter_s

    def as_dict(self, with_items: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {
            "model": self.model,
            "seeds": self.seeds,
            "attempts": self.attempts,
            "candidates": self.candidates,
            "kept": len(self.items),
            "yield": round(len(self.items) / self.attempts, 4) if self.attempts else 0.0,
            "generation": self.generation.as_dict(),
            "filters": [r.as_dict() for r in self.filters],
            "generate_s": round(self.generate_s, 2),
            "filter_s": round(self.filter_s, 2),
            "candidates_per_s": round(self.candidates / self.elapsed_s, 4) if self.elapsed_s else 0.0,
            "kept_per_s": round(len(self.items) / self.elapsed_s, 4) if self.elapsed_s else 0.0,
            "saved": self.saved,
        }
        if with_items:
            d["items"] = [it.as_dict() for it in self.items]
        return d


# -- seeds --------------------------------------------------------------------------


def load_seeds(store: Any, seeds: str = "corrections", *, suite: str | None = None) -> list[Seed]:
    """Trusted seeds: ``corrections`` (the corrected answer to the user's turn before it),
    ``suite`` (frozen suite items with a reference answer) or a JSONL seed file path."""
    if seeds == "corrections":
        out = []
        for fb, msg, cid in store.corrections():
            conv = store.get_conversation(cid)
            idx = next((i for i, m in enumerate(conv.messages) if m.id == msg.id), None)
            prompt = next(
                (m.content for m in reversed(conv.messages[: idx or 0]) if m.role == Role.user and m.content), None
            )
            if not prompt or not fb.correction:
                continue
            out.append(
                Seed(
                    id=msg.id or "",
                    prompt=prompt,
                    answer=fb.correction,
                    kind=infer_kind(prompt, fb.correction),
                    source="corrections",
                    metadata={"conversation_id": cid},
                )
            )
        return out
    if seeds == "suite":
        from afterword.store import schema as t

        q = sa.select(t.suite_items).where(t.suite_items.c.reference.is_not(None))
        if suite:
            q = q.where(t.suite_items.c.suite == suite)
        with store.read() as conn:
            rows = conn.execute(q.order_by(t.suite_items.c.id)).all()
        out = []
        for r in rows:
            prompt = _prompt_text(r.prompt_json)
            meta = r.metadata_json or {}
            if prompt and r.reference:
                out.append(
                    Seed(
                        id=r.id,
                        prompt=prompt,
                        answer=r.reference,
                        kind=meta.get("kind") or infer_kind(prompt, r.reference),
                        tests=meta.get("tests"),
                        source="suite",
                        metadata={"suite": r.suite},
                    )
                )
        return out
    if Path(seeds).is_file():
        return read_seed_file(seeds)
    raise ConfigError(f"seeds must be 'corrections', 'suite' or an existing JSONL file, not {seeds!r}")


def _prompt_text(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):
        users = [m.get("content", "") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        return str(users[-1]) if users else ""
    if isinstance(prompt, dict):
        return str(prompt.get("prompt") or prompt.get("content") or "")
    return ""


# -- generation ---------------------------------------------------------------------

_QUESTION_SYS = "You write new practice questions. Reply with the new question only, nothing else."
_ANSWER_SYS = {
    "code": "You are a Python programmer. Reply with one complete Python code block only.",
    "math": "You solve arithmetic problems. Reply with the final number only.",
    "text": "You are a helpful assistant. Answer the question correctly and briefly.",
}
_TESTS_SYS = "You write Python tests. Reply with assert statements only, in one code block."


def _question_messages(seed: Seed, cell: dict[str, Any]) -> list[dict[str, str]]:
    ask = (
        f"Example question:\n{seed.prompt.strip()}\n\nWrite one new, different question on the same topic, "
        f"{cell['difficulty']} than the example, as {cell['persona']} would ask it, {cell['style']}."
    )
    return [{"role": "system", "content": _QUESTION_SYS}, {"role": "user", "content": ask}]


def _answer_messages(seed: Seed, question: str) -> list[dict[str, str]]:
    # One worked example (the trusted seed) before the new question: small models copy the form.
    shown = (
        f"```python\n{seed.answer.strip()}\n```" if seed.kind == "code" and "```" not in seed.answer else seed.answer
    )
    return [
        {"role": "system", "content": _ANSWER_SYS.get(seed.kind, _ANSWER_SYS["text"])},
        {"role": "user", "content": seed.prompt.strip()},
        {"role": "assistant", "content": shown.strip()},
        {"role": "user", "content": question},
    ]


def _tests_messages(seed: Seed, code: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": _TESTS_SYS},
        {
            "role": "user",
            "content": f"Write assert statements that test this code:\n```python\n{seed.answer.strip()}\n```",
        },
        {"role": "assistant", "content": f"```python\n{(seed.tests or '').strip()}\n```"},
        {"role": "user", "content": f"Write assert statements that test this code:\n```python\n{code.strip()}\n```"},
    ]


def _clean_question(reply: str) -> str:
    q = reply.strip()
    q = re.sub(r"(?is)^(?:here is|here's|sure)[^\n:]*:\s*", "", q)
    q = re.sub(r"(?i)^\**\s*(?:new\s+)?question\s*\**\s*[:.-]\s*", "", q)
    q = re.split(r"\n\s*\n|^\s*\**\s*answer\s*\**\s*:", q, flags=re.IGNORECASE | re.MULTILINE)[0]
    return " ".join(q.strip().strip('"').strip("'").split())


def _code_block(reply: str) -> str:
    m = re.search(r"```(?:python|py)?\s*\n([\s\S]*?)```", reply)
    return (m.group(1) if m else reply).strip()


_SECTION = re.compile(r"(?im)^\s*\**\s*(QUESTION|ANSWER|TESTS|EXPRESSION)\s*\**\s*:\s*")


def parse_variant(reply: str, kind: str) -> dict[str, str] | None:
    """Pull question/answer (and tests or expression) out of a reply: the section format or JSON.

    >>> parse_variant("QUESTION: What is 2+3?\\nANSWER: 5\\nEXPRESSION: 2+3", "math")["expression"]
    '2+3'
    """
    parts: dict[str, str] = {}
    marks = list(_SECTION.finditer(reply))
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(reply)
        key = m.group(1).lower()
        if key not in parts:
            parts[key] = reply[m.end() : end].strip()
    if "question" not in parts or "answer" not in parts:
        try:
            obj = extract_json(reply)
        except ValueError:
            return None
        if not isinstance(obj, dict):
            return None
        q = obj.get("question") or obj.get("prompt") or obj.get("input")
        a = obj.get("answer") or obj.get("output") or obj.get("response")
        if not isinstance(q, str) or not isinstance(a, str | int | float):
            return None
        parts = {"question": q, "answer": str(a)}
        for k in ("tests", "expression"):
            if isinstance(obj.get(k), str):
                parts[k] = obj[k]
    if not parts["question"].strip() or not parts["answer"].strip():
        return None
    if "tests" in parts:
        m = re.search(r"```(?:python|py)?\s*\n([\s\S]*?)```", parts["tests"])
        parts["tests"] = m.group(1) if m else parts["tests"]
    if "expression" in parts:
        parts["expression"] = parts["expression"].strip().strip("`").splitlines()[0] if parts["expression"] else ""
    return parts


def _function_names(code: str) -> set[str]:
    return set(re.findall(r"^\s*def\s+([A-Za-z_]\w*)\s*\(", code, re.MULTILINE))


def _variant_item(seed: Seed, parts: dict[str, str], provenance: dict[str, Any]) -> SynthItem:
    tests = parts.get("tests") or ""
    if seed.kind == "code":
        generated = "assert" in tests
        # A variant that kept the seed's function must also still pass the seed's own (trusted) tests.
        with_seed = bool(seed.tests and _function_names(seed.answer) & _function_names(parts["answer"]))
        if with_seed:
            tests = f"{tests.rstrip()}\n{(seed.tests or '').strip()}\n" if generated else (seed.tests or "")
        used = [name for name, on in (("generated", generated), ("seed", with_seed)) if on]
        provenance["tests_from"] = "+".join(used) or "none"
    return SynthItem(
        prompt=parts["question"].strip(),
        answer=parts["answer"].strip(),
        seed_id=seed.id,
        kind=seed.kind,
        tests=tests if seed.kind == "code" else None,
        expression=parts.get("expression") or None if seed.kind == "math" else None,
        provenance=provenance,
    )


def _generate(
    llm: Any,
    seed: Seed,
    cell: dict[str, Any],
    i: int,
    strategy: Strategy,
    bank: list[np.ndarray],
    seen_text: set[str],
    embed: Callable[[Sequence[str]], np.ndarray],
) -> tuple[SynthItem | None, str]:
    """One attempt: a new question, rejected at once if it is a near-duplicate, then its answer (and tests).

    Several short calls, not one: small models follow "write a question" and "answer this" far more reliably
    than a multi-part format. A reply that does use the QUESTION/ANSWER format is taken as it is."""
    temp = cell["temperature"]
    q_msgs = _question_messages(seed, cell)
    reply = llm.chat(q_msgs, temperature=temp, max_tokens=strategy.question_tokens, seed=i)
    prompts: list[Any] = [q_msgs]
    parts = parse_variant(reply, seed.kind) if _SECTION.search(reply) else None
    question = parts["question"] if parts else _clean_question(reply)
    if len(question) < 10:
        return None, "unparsed-question"
    if strategy.live_dedup:
        key = normalise_text(question)
        v = embed([question])[0]
        if key in seen_text or (bank and float(np.max(np.stack(bank) @ v)) >= strategy.live_dedup):
            return None, "near-duplicate-live"
        seen_text.add(key)
        bank.append(v)
    if parts is None:
        a_msgs = _answer_messages(seed, question)
        prompts.append(a_msgs)
        answer = llm.chat(a_msgs, temperature=0.2, max_tokens=strategy.max_tokens, seed=i)
        parts = {"question": question, "answer": answer.strip()}
        if not parts["answer"]:
            return None, "empty-answer"
    if seed.kind == "code":
        parts["answer"] = _code_block(parts["answer"])
        if not parts.get("tests") and seed.tests:
            t_msgs = _tests_messages(seed, parts["answer"])
            prompts.append(t_msgs)
            parts["tests"] = _code_block(llm.chat(t_msgs, temperature=0.2, max_tokens=200, seed=i))
    prov = {
        "seed_id": seed.id,
        "seed_source": seed.source,
        "generator_model": getattr(llm, "model", "unknown"),
        "prompt_hash": stable_id("prompt", prompts, n=16),
        "strategy": cell,
        "attempt": i,
        "created_utc": utcnow().isoformat(),
    }
    return _variant_item(seed, parts, prov), "ok"


def expand(
    store_or_seeds: Any,
    seeds: str = "corrections",
    n: int = 20,
    llm: Any = None,
    *,
    strategy: Strategy | None = None,
    filters: FilterConfig | None = None,
    judge_llm: Any = None,
    suite: str | None = None,
    save: bool = True,
    progress: Callable[[int], None] | None = None,
    embed: Callable[[Sequence[str]], np.ndarray] = _embed,
) -> ExpansionResult:
    """Generate ``n`` candidate variants of the seeds, filter them, and (with a store) save the kept ones.

    ``store_or_seeds`` is a :class:`~afterword.store.Store` (seeds are loaded from it by ``seeds``, and
    kept items are saved unless ``save=False``) or a list of :class:`Seed`. ``n`` is the number of
    generation attempts; attempts go round the seeds in turn. ``judge_llm`` defaults to ``llm``.
    """
    if llm is None:
        raise ConfigError("expand needs an LLM client (--endpoint)")
    strategy = strategy or Strategy()
    cfg = filters or FilterConfig()
    store = None
    if isinstance(store_or_seeds, list | tuple):
        seed_list = list(store_or_seeds)
    else:
        store = store_or_seeds
        seed_list = load_seeds(store, seeds, suite=suite)
    if not seed_list:
        raise ConfigError(f"no seeds found ({seeds})")
    gen = FilterReport("generation", seen=n)
    candidates: list[SynthItem] = []
    bank: list[np.ndarray] = list(embed([s.prompt for s in seed_list])) if strategy.live_dedup else []
    seen_text = {normalise_text(s.prompt) for s in seed_list}
    t0 = time.perf_counter()
    for i in range(n):
        seed = seed_list[i % len(seed_list)]
        cell = strategy.cell(i // len(seed_list))
        try:
            item, reason = _generate(llm, seed, cell, i, strategy, bank, seen_text, embed)
        except UpstreamError:
            item, reason = None, "upstream-error"
        if progress:
            progress(1)
        if item is None:
            gen.drop(reason)
        else:
            candidates.append(item)
    gen_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    judge = judge_llm if judge_llm is not None else llm
    kept, reports = run_filters(candidates, seed_list, cfg, judge if cfg.judge else None, embed=embed)
    filter_s = time.perf_counter() - t1
    result = ExpansionResult(
        items=kept,
        seeds=len(seed_list),
        attempts=n,
        candidates=len(candidates),
        generation=gen,
        filters=reports,
        generate_s=gen_s,
        filter_s=filter_s,
        model=getattr(llm, "model", "unknown"),
    )
    if store is not None and save and kept:
        result.saved = save_synthetic(store, kept).as_dict()
    return result


def save_synthetic(store: Any, items: Sequence[SynthItem]) -> Any:
    """Write kept items as ``source="synthetic"`` conversations carrying their provenance; idempotent."""
    convs = []
    for it in items:
        meta = {"synthetic": True, "kind": it.kind, "provenance": it.provenance}
        if it.tests:
            meta["tests"] = it.tests
        convs.append(
            Conversation(
                source="synthetic",
                metadata=meta,
                messages=[
                    Message(role=Role.user, content=it.prompt, metadata={"synthetic": True}),
                    Message(
                        role=Role.assistant,
                        content=it.answer,
                        model=it.provenance.get("generator_model"),
                        metadata={"synthetic": True, "seed_id": it.seed_id},
                    ),
                ],
            )
        )
    return store.import_conversations(convs, default_source="synthetic")
