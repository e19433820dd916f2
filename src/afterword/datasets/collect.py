"""From the store to neutral training examples.

:func:`collect_turns` walks the stored conversations once and returns every
assistant turn that may be trained on, with its prompt (the turns before it),
its correction if a person gave one, and one verdict. The verdict is the
judgment of the most trusted source (``human``, then ``explicit``, then
``combined``, then ``hindsight-model``, then ``llm-judge``); a turn with no
judgment falls back to its explicit feedback (thumbs, rating, correction), so
datasets can be built from feedback alone before the judge has ever run.

What never gets in, whatever the filters: messages of forgotten users, and
any turn whose message or prompt belongs to a frozen regression suite
(``suite_items``), or whose last user message is a suite prompt.

:func:`make_examples` turns those turns into SFT, DPO, KTO or reward examples.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import sqlalchemy as sa

from afterword.datasets.formats import Example
from afterword.records import Conversation, Judgment, Message
from afterword.store import schema as t
from afterword.store.store import Store

__all__ = ["JUDGMENT_PRIORITY", "Verdict", "Turn", "collect_turns", "make_examples", "suite_exclusions"]

#: Most trusted first: a person's label overrides the judge's final verdict, which overrides its parts.
JUDGMENT_PRIORITY = ("human", "explicit", "combined", "hindsight-model", "llm-judge")


@dataclass
class Verdict:
    desirable: bool | None  # None: neutral, trained on by nothing
    score: float
    confidence: float
    source: str


@dataclass
class Turn:
    message: Message
    conversation_id: str
    user_id: str | None
    prompt: list[dict[str, str]]
    prompt_ids: list[str]
    verdict: Verdict | None = None
    correction: str | None = None
    time_utc: datetime | None = None
    synthetic: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.message.id or ""


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def suite_exclusions(store: Store) -> tuple[set[str], set[str]]:
    """Message ids and normalised prompt texts of every frozen suite item."""
    ids: set[str] = set()
    prompts: set[str] = set()
    with store.read() as conn:
        rows = conn.execute(sa.select(t.suite_items.c.message_id, t.suite_items.c.prompt_json)).all()
    for mid, pj in rows:
        if mid:
            ids.add(mid)
        msgs = pj.get("messages") if isinstance(pj, dict) else pj
        if isinstance(msgs, str):
            prompts.add(_norm(msgs))
        elif isinstance(msgs, list):
            users = [m.get("content", "") for m in msgs if isinstance(m, dict) and m.get("role") == "user"]
            if users and isinstance(users[-1], str):
                prompts.add(_norm(users[-1]))
    prompts.discard("")
    return ids, prompts


def _forgotten(store: Store) -> set[str]:
    with store.read() as conn:
        return set(conn.execute(sa.select(t.users.c.id).where(t.users.c.forgotten_utc.is_not(None))).scalars())


def _pick(judgments: list[Judgment]) -> Judgment | None:
    rank = {s: i for i, s in enumerate(JUDGMENT_PRIORITY)}
    js = sorted(judgments, key=lambda j: rank.get(str(j.source), len(rank)))
    return js[0] if js else None


def _from_judgment(j: Judgment) -> Verdict:
    label = str(j.label)
    desirable = True if label == "satisfied" else (False if label == "dissatisfied" else None)
    return Verdict(desirable, float(j.score), float(j.confidence), str(j.source))


def _from_feedback(fbs: list[Any]) -> Verdict | None:
    """The explicit verdict of a person's thumbs, rating or correction (the latest wins)."""
    v: Verdict | None = None
    for fb in fbs:  # in time order
        if fb.kind == "correction" and fb.correction:
            v = Verdict(False, -1.0, 1.0, "feedback")
        elif fb.thumbs:
            v = Verdict(fb.thumbs > 0, float(fb.thumbs), 1.0, "feedback")
        elif fb.rating is not None:
            score = (fb.rating - 3) / 2
            v = Verdict(None if fb.rating == 3 else fb.rating > 3, score, abs(score), "feedback")
    return v


def _is_synthetic(conv: Conversation) -> bool:
    return conv.source.startswith("synth") or bool(conv.metadata.get("synthetic"))


def _tags(conv: Conversation, msg: Message) -> set[str]:
    out: set[str] = set()
    for meta in (conv.metadata, msg.metadata):
        tags = meta.get("tags") if isinstance(meta, dict) else None
        if isinstance(tags, str):
            out.add(tags)
        elif isinstance(tags, list):
            out.update(str(x) for x in tags)
    return out


def collect_turns(
    store: Store,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    users: Sequence[str] | None = None,
    models: Sequence[str] | None = None,
    tags: Sequence[str] | None = None,
    include_synthetic: bool = True,
    progress: Callable[[int], None] | None = None,
) -> tuple[list[Turn], dict[str, int]]:
    """Every trainable assistant turn that passes the filters, plus counts of what was left out."""
    suite_ids, suite_prompts = suite_exclusions(store)
    forgotten = _forgotten(store)
    want_users, want_models, want_tags = set(users or ()), set(models or ()), set(tags or ())
    stats = dict.fromkeys(("assistant_turns", "suite_excluded", "filtered", "forgotten", "no_prompt"), 0)
    turns: list[Turn] = []
    for conv in store.iter_conversations(since=since, until=until):
        if progress:
            progress(1)
        if conv.user_id in forgotten:
            stats["forgotten"] += 1
            continue
        if (want_users and conv.user_id not in want_users) or (not include_synthetic and _is_synthetic(conv)):
            stats["filtered"] += 1
            continue
        fb_by_msg: dict[str, list[Any]] = {}
        for fb in conv.feedback:
            fb_by_msg.setdefault(fb.message_id or "", []).append(fb)
        prompt: list[dict[str, str]] = []
        prompt_ids: list[str] = []
        for m in conv.messages:
            if m.role == "assistant" and m.content.strip():
                stats["assistant_turns"] += 1
                ok = True
                if want_models and m.model not in want_models:
                    ok = False
                if want_tags and not (want_tags & _tags(conv, m)):
                    ok = False
                if not ok:
                    stats["filtered"] += 1
                elif not prompt or prompt[-1]["role"] not in ("user", "tool"):
                    stats["no_prompt"] += 1
                elif (
                    m.id in suite_ids
                    or any(p in suite_ids for p in prompt_ids)
                    or _norm(next((p["content"] for p in reversed(prompt) if p["role"] == "user"), "")) in suite_prompts
                ):
                    stats["suite_excluded"] += 1
                else:
                    fbs = fb_by_msg.get(m.id or "", [])
                    corr = [fb.correction for fb in fbs if fb.kind == "correction" and fb.correction]
                    turns.append(
                        Turn(
                            message=m,
                            conversation_id=conv.id or "",
                            user_id=conv.user_id,
                            prompt=list(prompt),
                            prompt_ids=list(prompt_ids),
                            verdict=_from_feedback(fbs),
                            correction=corr[-1] if corr else None,
                            time_utc=m.created_utc or conv.started_utc,
                            synthetic=_is_synthetic(conv) or bool(m.metadata.get("synthetic")),
                        )
                    )
            if m.content.strip() and m.role in ("system", "user", "assistant", "tool"):
                prompt.append({"role": str(m.role), "content": m.content})
                prompt_ids.append(m.id or "")
    # A judgment, where one exists, replaces the raw feedback verdict (the judge has already read it).
    by_msg: dict[str, list[Judgment]] = {}
    for j in store.judgments_for([tn.id for tn in turns]):
        by_msg.setdefault(j.message_id, []).append(j)
    for tn in turns:
        best = _pick(by_msg.get(tn.id, []))
        if best is not None:
            tn.verdict = _from_judgment(best)
    return turns, stats


def _example(kind: str, tn: Turn, **kw: Any) -> Example:
    return Example(
        kind=kind,
        prompt=tn.prompt,
        message_ids=[*tn.prompt_ids, tn.id],
        user_ids=[tn.user_id] * (len(tn.prompt_ids) + 1),
        conversation_ids=[tn.conversation_id],
        time_utc=tn.time_utc,
        model=tn.message.model,
        synthetic=tn.synthetic,
        **kw,
    )


def _confident(tn: Turn, min_confidence: float) -> bool:
    return tn.verdict is not None and tn.verdict.desirable is not None and tn.verdict.confidence >= min_confidence


def _prompt_text(tn: Turn) -> str:
    return "\n".join(f"{p['role']}: {p['content']}" for p in tn.prompt[-3:])


def _judged_pairs(turns: list[Turn], min_confidence: float, pair_threshold: float) -> list[tuple[Turn, Turn, float]]:
    """(good, bad, similarity): each response used once, most similar prompts first."""
    goods = [tn for tn in turns if _confident(tn, min_confidence) and tn.verdict.desirable and not tn.correction]  # type: ignore[union-attr]
    bads = [tn for tn in turns if _confident(tn, min_confidence) and not tn.verdict.desirable and not tn.correction]  # type: ignore[union-attr]
    if not goods or not bads:
        return []
    from afterword.embed import get_embedder

    emb = get_embedder()
    g = emb.encode([_prompt_text(tn) for tn in goods])
    b = emb.encode([_prompt_text(tn) for tn in bads])
    sim = g @ b.T
    cand = np.argwhere(sim >= pair_threshold)
    order = sorted(cand.tolist(), key=lambda ij: -float(sim[ij[0], ij[1]]))
    used_g: set[int] = set()
    used_b: set[int] = set()
    out = []
    for i, j in order:
        if i in used_g or j in used_b or _norm(goods[i].message.content) == _norm(bads[j].message.content):
            continue
        used_g.add(i)
        used_b.add(j)
        out.append((goods[i], bads[j], float(sim[i, j])))
    return out


def make_examples(
    turns: list[Turn], kind: str, *, min_confidence: float = 0.6, pair_threshold: float = 0.92
) -> list[Example]:
    """The examples of ``kind`` that ``turns`` support (see the module docstring for the rules)."""
    out: list[Example] = []
    if kind == "sft":
        for tn in turns:
            if tn.correction:
                out.append(_example(kind, tn, completion=tn.correction, source="correction"))
            elif _confident(tn, min_confidence) and tn.verdict.desirable:  # type: ignore[union-attr]
                out.append(_example(kind, tn, completion=tn.message.content, source="judged", **_vk(tn)))
    elif kind == "kto":
        for tn in turns:
            if tn.correction:
                out.append(_example(kind, tn, completion=tn.correction, label=True, source="correction"))
                out.append(_example(kind, tn, completion=tn.message.content, label=False, source="correction"))
            elif _confident(tn, min_confidence):
                good = bool(tn.verdict.desirable)  # type: ignore[union-attr]
                out.append(_example(kind, tn, completion=tn.message.content, label=good, source="judged", **_vk(tn)))
    elif kind in ("dpo", "reward"):
        for tn in turns:
            if tn.correction and _norm(tn.correction) != _norm(tn.message.content):
                out.append(
                    _example(kind, tn, chosen=tn.correction, rejected=tn.message.content, source="pair:correction")
                )
        for good, bad, _sim in _judged_pairs(turns, min_confidence, pair_threshold):
            ex = _example(kind, good, chosen=good.message.content, rejected=bad.message.content, source="pair:judged")
            ex.message_ids.append(bad.id)
            ex.user_ids.append(bad.user_id)
            if bad.conversation_id != good.conversation_id:
                ex.conversation_ids.append(bad.conversation_id)
            ex.confidence = min(good.verdict.confidence, bad.verdict.confidence)  # type: ignore[union-attr]
            ex.judgment_source = good.verdict.source  # type: ignore[union-attr]
            ex.synthetic = good.synthetic or bad.synthetic
            times = [x for x in (good.time_utc, bad.time_utc) if x]
            ex.time_utc = max(times) if times else None
            out.append(ex)
    else:
        raise ValueError(f"unknown dataset kind {kind!r}")
    return out


def _vk(tn: Turn) -> dict[str, Any]:
    assert tn.verdict is not None
    return {"judgment_source": tn.verdict.source, "confidence": tn.verdict.confidence}
