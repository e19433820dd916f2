"""Eval runs: one model version answers every item of a frozen suite, and is scored.

A *version* is a model behind any OpenAI-compatible endpoint plus an
optional system prompt, named by ``label`` (two prompt variants of the same
model are two versions). Every output is scored by:

- **reference match** (:mod:`afterword.evals.scoring`), where the item has a
  reference answer: the mean of token F1 and embedding similarity, scaled by
  the share of the reference's answer numbers the output states;
- **the preference model**, where ``afterword.train.reward`` exists and a
  reward model was trained (the newest in the lineage, or one named; imported
  lazily, skipped otherwise); its raw score is reported, not mixed into the
  headline;
- **a rubric LLM judge**, when ``judge`` is given: a 1-5 grade against the
  item's rubric (and its reference, if any).

The headline ``score`` of an item is the reference match when there is a
reference, else the rubric grade, else how far the output is from the known
bad response (1 − similarity). For items frozen from a known mistake,
``repeat_mistake`` says whether the output still makes it: it restates a
number found only in the mistake (not in the reference or the request), or it
is clearly closer to the mistake than to the reference (by more than
``REPEAT_MARGIN`` cosine), or (with no reference) the rubric judge
fails it, or it nearly restates the mistake (similarity ≥ 0.85).

Runs and per-item results are stored (``eval_runs``, ``eval_results``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import sqlalchemy as sa

from afterword.errors import AfterwordError, NotFoundError
from afterword.evals.scoring import numbers_in, reference_match, rubric_score, similarities
from afterword.evals.suites import Suite, SuiteItem, get_suite
from afterword.llm import LLMClient
from afterword.records import stable_id, utcnow
from afterword.store import schema as t
from afterword.store.store import Store, aware

__all__ = ["EvalRun", "EvalResult", "run_eval", "get_run", "list_runs", "PASS_THRESHOLD", "load_reward_scorer"]

PASS_THRESHOLD = 0.5
#: How much closer (cosine) to the mistake than to the reference an output must be to repeat it.
REPEAT_MARGIN = 0.05
_SAME_AS_MISTAKE = 0.85

#: (contexts as OpenAI message lists, responses) -> one score per pair, higher is better.
RewardScorer = Callable[[list[list[dict[str, str]]], list[str]], list[float]]


@dataclass
class EvalResult:
    item_id: str
    output: str
    score: float
    scores: dict[str, Any]
    repeat_mistake: bool | None
    latency_ms: float | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "item_id": self.item_id,
            "output": self.output,
            "score": round(self.score, 4),
            "scores": self.scores,
            "repeat_mistake": self.repeat_mistake,
            "latency_ms": self.latency_ms,
            "error": self.error,
        }


@dataclass
class EvalRun:
    id: str
    suite: str
    label: str
    model: str
    endpoint: str | None
    system_prompt: str | None
    created_utc: datetime
    params: dict[str, Any]
    summary: dict[str, Any]
    results: list[EvalResult] = field(default_factory=list)

    def as_dict(self, with_results: bool = False) -> dict[str, Any]:
        d = {
            "id": self.id,
            "suite": self.suite,
            "label": self.label,
            "model": self.model,
            "endpoint": self.endpoint,
            "system_prompt": self.system_prompt,
            "created_utc": self.created_utc.isoformat(),
            "params": self.params,
            "summary": self.summary,
        }
        if with_results:
            d["results"] = [r.as_dict() for r in self.results]
        return d


def load_reward_scorer(store: Store, path: str | None = None) -> tuple[RewardScorer | None, str]:
    """The preference model as ``score(contexts, responses) -> [float]``: the one at ``path``,
    else the newest reward model recorded in the store's lineage (``exports``, kind ``model``)."""
    try:
        from afterword.train.reward import RewardModel
    except ImportError:
        return None, "afterword.train.reward is not part of this build"
    if path is None:
        e = t.exports
        with store.read() as conn:
            path = conn.execute(
                sa.select(e.c.path)
                .where(e.c.kind == "model", e.c.format.like("reward-%"), e.c.stale_reason.is_(None))
                .order_by(e.c.created_utc.desc())
                .limit(1)
            ).scalar()
        if not path:
            return None, "no trained preference model"
    try:
        model = RewardModel.load(path)
    except (AfterwordError, OSError, ValueError, KeyError) as exc:
        return None, f"preference model at {path} unusable: {exc}"[:200]
    return (lambda ctx, resp: [float(x) for x in model.score(ctx, resp)]), f"reward model {path}"


def _summarise(results: list[EvalResult]) -> dict[str, Any]:
    def mean(key: str) -> float | None:
        vals = [r.scores[key] for r in results if r.scores.get(key) is not None]
        return round(float(np.mean(vals)), 4) if vals else None

    rep = [r.repeat_mistake for r in results if r.repeat_mistake is not None]
    lat = [r.latency_ms for r in results if r.latency_ms is not None]
    return {
        "items": len(results),
        "errors": sum(1 for r in results if r.error),
        "mean_score": round(float(np.mean([r.score for r in results])), 4) if results else None,
        "pass_rate": round(float(np.mean([r.score >= PASS_THRESHOLD for r in results])), 4) if results else None,
        "reference_f1": mean("reference_f1"),
        "reference_sim": mean("reference_sim"),
        "rubric": mean("rubric"),
        "reward": mean("reward"),
        "repeat_mistake_rate": round(sum(rep) / len(rep), 4) if rep else None,
        "repeat_mistake_items": len(rep),
        "median_latency_ms": round(float(np.median(lat)), 1) if lat else None,
    }


def run_eval(
    store: Store,
    suite: str | Suite,
    endpoint: str,
    model: str,
    system_prompt: str | None = None,
    *,
    label: str | None = None,
    judge: LLMClient | None = None,
    reward: RewardScorer | str | None | bool = True,
    max_tokens: int = 256,
    temperature: float = 0.0,
    api_key: str | None = None,
    transform: Callable[[list[dict[str, str]], SuiteItem], list[dict[str, str]]] | None = None,
    progress: Callable[[int], None] | None = None,
) -> EvalRun:
    """Run ``model`` at ``endpoint`` on every item of ``suite``, score, store and return the run.

    ``reward=True`` loads the newest preference model if one exists; pass a model folder or a
    scorer to use another, or ``False`` to skip it. ``transform(messages, item)`` rewrites each
    request before it is sent, for versions that are more than a system prompt (memory
    injection, a retrieval step).
    """
    s = suite if isinstance(suite, Suite) else get_suite(store, suite)
    client = LLMClient(
        base_url=endpoint, model=model, temperature=temperature, **({"api_key": api_key} if api_key else {})
    )
    reward_fn: RewardScorer | None
    reward_note = "skipped"
    if reward is True or isinstance(reward, str):
        reward_fn, reward_note = load_reward_scorer(store, None if reward is True else reward)
    else:
        reward_fn = reward or None
        reward_note = "given" if reward_fn else "skipped"
    outputs: list[tuple[str, float | None, str | None]] = []
    try:
        for item in s.items:
            msgs = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
                m for m in item.prompt if not (system_prompt and m["role"] == "system")
            ]
            if transform is not None:
                msgs = transform(msgs, item)
            t0 = time.perf_counter()
            try:
                out, err = client.chat(msgs, max_tokens=max_tokens), None
            except AfterwordError as exc:
                out, err = "", str(exc)[:500]
            outputs.append((out, round((time.perf_counter() - t0) * 1000, 1), err))
            if progress:
                progress(1)
    finally:
        client.close()
    # Score in batches: one embedding pass for every comparison.
    pairs: list[tuple[str, str]] = []
    for item, (out, _, _) in zip(s.items, outputs, strict=True):
        pairs.append((out, item.reference or out))
        pairs.append((out, item.mistake or out))
    sims = similarities(pairs)
    rewards: list[float | None] = [None] * len(s.items)
    if reward_fn is not None:
        try:
            rewards = [float(x) for x in reward_fn([i.prompt for i in s.items], [o[0] for o in outputs])]
        except Exception as exc:  # noqa: BLE001 - a foreign model must not sink the run
            reward_note = f"failed: {type(exc).__name__}: {exc}"[:200]
    results: list[EvalResult] = []
    for k, (item, (out, lat, err)) in enumerate(zip(s.items, outputs, strict=True)):
        scores: dict[str, Any] = {}
        ref_sim, mis_sim = sims[2 * k], sims[2 * k + 1]
        if item.mistake:
            scores["mistake_sim"] = round(mis_sim, 4)
        if item.reference:
            scores.update(reference_match(out, item.reference, ref_sim, item.request))
        if judge is not None and item.rubric:
            try:
                grade, why = rubric_score(judge, item.request, out, item.rubric, item.reference)
            except AfterwordError as exc:
                grade, why = None, str(exc)[:200]
            scores.update(rubric=None if grade is None else round(grade, 4), rubric_reason=why)
        if rewards[k] is not None:
            scores["reward"] = round(float(rewards[k]), 4)  # type: ignore[arg-type]
        if "reference" in scores:
            score = scores["reference"]
        elif scores.get("rubric") is not None:
            score = scores["rubric"]
        elif item.mistake:
            score = round(1.0 - mis_sim, 4)
        else:
            score = 0.0
        repeat: bool | None = None
        if item.mistake and not err:
            if item.reference:
                wrong = numbers_in(item.mistake) - numbers_in(item.reference) - numbers_in(item.request)
                repeat = bool(wrong & numbers_in(out)) or mis_sim - ref_sim > REPEAT_MARGIN
            elif scores.get("rubric") is not None:
                repeat = scores["rubric"] < PASS_THRESHOLD
            else:
                repeat = mis_sim >= _SAME_AS_MISTAKE
        results.append(EvalResult(item.id, out, 0.0 if err else float(score), scores, repeat, lat, err))
    now = utcnow()
    label = label or model
    run_id = stable_id("eval_run", s.name, label, model, system_prompt, now.isoformat(), n=16)
    params = {
        "max_tokens": max_tokens,
        "temperature": temperature,
        "judge": judge.model if judge else None,
        "reward": reward_note,
        "pass_threshold": PASS_THRESHOLD,
        "transform": getattr(transform, "__name__", "custom") if transform else None,
    }
    run = EvalRun(run_id, s.name, label, model, endpoint, system_prompt, now, params, _summarise(results), results)
    with store.write() as conn:
        conn.execute(
            t.eval_runs.insert().values(
                id=run.id,
                suite=run.suite,
                label=run.label,
                model=run.model,
                endpoint=run.endpoint,
                system_prompt=run.system_prompt,
                params_json=run.params,
                summary_json=run.summary,
                created_utc=run.created_utc,
            )
        )
        if results:
            conn.execute(
                t.eval_results.insert(),
                [
                    {
                        "id": stable_id(run.id, r.item_id),
                        "run_id": run.id,
                        "item_id": r.item_id,
                        "output": r.output,
                        "score": r.score,
                        "scores_json": r.scores,
                        "repeat_mistake": r.repeat_mistake,
                        "latency_ms": r.latency_ms,
                        "error": r.error,
                    }
                    for r in results
                ],
            )
    return run


def get_run(store: Store, key: str, suite: str | None = None) -> EvalRun:
    """A run by id, or the newest run with that label (optionally within ``suite``)."""
    r_ = t.eval_runs
    with store.read() as conn:
        row = conn.execute(sa.select(r_).where(r_.c.id == key)).first()
        if row is None:
            q = sa.select(r_).where(r_.c.label == key).order_by(r_.c.created_utc.desc())
            if suite:
                q = q.where(r_.c.suite == suite)
            row = conn.execute(q.limit(1)).first()
        if row is None:
            raise NotFoundError("eval run", key)
        res = conn.execute(sa.select(t.eval_results).where(t.eval_results.c.run_id == row.id)).all()
    return EvalRun(
        id=row.id,
        suite=row.suite,
        label=row.label,
        model=row.model,
        endpoint=row.endpoint,
        system_prompt=row.system_prompt,
        created_utc=aware(row.created_utc),  # type: ignore[arg-type]
        params=row.params_json or {},
        summary=row.summary_json or {},
        results=[
            EvalResult(r.item_id, r.output, r.score, r.scores_json or {}, r.repeat_mistake, r.latency_ms, r.error)
            for r in res
        ],
    )


def list_runs(store: Store, suite: str | None = None) -> list[EvalRun]:
    """Runs (without per-item results), oldest first."""
    q = sa.select(t.eval_runs).order_by(t.eval_runs.c.created_utc)
    if suite:
        q = q.where(t.eval_runs.c.suite == suite)
    with store.read() as conn:
        rows = conn.execute(q).all()
    return [
        EvalRun(
            r.id,
            r.suite,
            r.label,
            r.model,
            r.endpoint,
            r.system_prompt,
            aware(r.created_utc),  # type: ignore[arg-type]
            r.params_json or {},
            r.summary_json or {},
        )
        for r in rows
    ]
