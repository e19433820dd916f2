"""Hard-failure mining: the responses that are judged bad consistently.

One bad judgment can be noise; the same request answered badly for several
users, or again and again for one user, is a failure worth an eval item.
Requests are grouped when their embeddings (MiniLM, cosine) are
near-identical, so "how do I reverse a list in python?" and "How do I reverse
a list in Python" are one group. A group is a *hard failure* when it has at
least ``min_count`` bad responses and bad is at least ``min_bad_rate`` of the
judged responses in it. Groups rank by confidence × frequency: the mean
confidence of the bad verdicts times how many there are.

The verdict read per response is the most authoritative judgment present:
``human`` first, then ``combined`` (the judge's final word), then the single
judges. :func:`judged_responses` is the shared reader used by the clusters,
the suites and the report.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import sqlalchemy as sa

from afterword.records import stable_id
from afterword.store import schema as t
from afterword.store.store import Store, aware

__all__ = ["JudgedResponse", "Failure", "judged_responses", "mine_failures", "SOURCE_PRIORITY"]

#: Which judgment wins when a message has several (first present wins).
SOURCE_PRIORITY = ("human", "combined", "hindsight-model", "llm-judge", "explicit")


@dataclass
class JudgedResponse:
    """An assistant response, the request it answered, and its winning verdict."""

    message_id: str
    conversation_id: str
    user_id: str | None
    prompt: str
    prompt_id: str | None
    response: str
    label: str
    score: float
    confidence: float
    source: str
    created_utc: datetime | None
    evidence: list[dict[str, Any]] = field(default_factory=list)

    @property
    def bad(self) -> bool:
        return self.label == "dissatisfied"


@dataclass
class Failure:
    """A group of near-identical requests whose responses are judged bad."""

    id: str
    prompt: str  # the group's representative request
    message_ids: list[str]  # the bad responses
    prompt_ids: list[str]
    responses: list[str]  # a few bad responses, most confident first
    n_bad: int
    n_judged: int
    users: int
    mean_confidence: float
    rank_score: float  # confidence x frequency
    first_utc: datetime | None
    last_utc: datetime | None
    corrections: list[str] = field(default_factory=list)
    times_utc: list[datetime] = field(default_factory=list)

    @property
    def bad_rate(self) -> float:
        return self.n_bad / max(1, self.n_judged)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("times_utc")
        d["bad_rate"] = round(self.bad_rate, 3)
        for k in ("first_utc", "last_utc"):
            d[k] = d[k].isoformat() if d[k] else None
        return d


def judged_responses(
    store: Store, *, since: datetime | None = None, until: datetime | None = None
) -> list[JudgedResponse]:
    """Every judged assistant message with its request and its most authoritative verdict."""
    j, m = t.judgments, t.messages
    q = (
        sa.select(
            j.c.message_id,
            j.c.source,
            j.c.label,
            j.c.score,
            j.c.confidence,
            j.c.evidence_json,
            m.c.conversation_id,
            m.c.seq,
            m.c.user_id,
            m.c.content,
            m.c.created_utc,
            j.c.created_utc.label("judged_utc"),
        )
        .join(m, m.c.id == j.c.message_id)
        .where(m.c.role == "assistant")
    )
    if since:
        q = q.where(sa.func.coalesce(m.c.created_utc, j.c.created_utc) >= since)
    if until:
        q = q.where(sa.func.coalesce(m.c.created_utc, j.c.created_utc) < until)
    rank = {s: i for i, s in enumerate(SOURCE_PRIORITY)}
    best: dict[str, Any] = {}
    with store.read() as conn:
        for r in conn.execute(q):
            cur = best.get(r.message_id)
            if cur is None or rank.get(r.source, 99) < rank.get(cur.source, 99):
                best[r.message_id] = r
        conv_ids = sorted({r.conversation_id for r in best.values()})
        users: dict[str, list[tuple[int, str, str]]] = defaultdict(list)
        for i in range(0, len(conv_ids), 500):
            for u in conn.execute(
                sa.select(m.c.conversation_id, m.c.seq, m.c.id, m.c.content)
                .where(m.c.conversation_id.in_(conv_ids[i : i + 500]), m.c.role == "user")
                .order_by(m.c.conversation_id, m.c.seq)
            ):
                users[u.conversation_id].append((u.seq, u.id, u.content))
    out = []
    for r in best.values():
        prior = [u for u in users.get(r.conversation_id, []) if u[0] < r.seq]
        pid, prompt = (prior[-1][1], prior[-1][2]) if prior else (None, "")
        out.append(
            JudgedResponse(
                message_id=r.message_id,
                conversation_id=r.conversation_id,
                user_id=r.user_id,
                prompt=prompt,
                prompt_id=pid,
                response=r.content,
                label=r.label,
                score=float(r.score),
                confidence=float(r.confidence),
                source=r.source,
                created_utc=aware(r.created_utc) or aware(r.judged_utc),
                evidence=list(r.evidence_json or []),
            )
        )
    out.sort(key=lambda x: (x.created_utc.isoformat() if x.created_utc else "", x.message_id))
    return out


def group_prompts(vectors: np.ndarray, leaders_from: Sequence[int], threshold: float) -> list[int]:
    """Leader clustering: each index in ``leaders_from`` joins the first leader within
    ``threshold`` (cosine) or becomes one. Returns a leader index per row of ``vectors``
    (-1 for rows outside ``leaders_from`` that are near no leader)."""
    leaders: list[int] = []
    assign = [-1] * len(vectors)
    for i in leaders_from:
        if leaders:
            sims = vectors[leaders] @ vectors[i]
            k = int(np.argmax(sims))
            if sims[k] >= threshold:
                assign[i] = leaders[k]
                continue
        leaders.append(i)
        assign[i] = i
    if leaders:
        lead = vectors[leaders]
        rest = [i for i in range(len(vectors)) if assign[i] == -1]
        for s in range(0, len(rest), 2048):
            chunk = rest[s : s + 2048]
            sims = vectors[chunk] @ lead.T
            for row, i in zip(sims, chunk, strict=True):
                k = int(np.argmax(row))
                if row[k] >= threshold:
                    assign[i] = leaders[k]
    return assign


def mine_failures(
    store: Store,
    *,
    min_count: int = 2,
    min_bad_rate: float = 0.5,
    similarity: float = 0.9,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int | None = None,
    responses: list[JudgedResponse] | None = None,
) -> list[Failure]:
    """Hard failures, best-ranked first (see the module docstring).

    ``min_count=1`` returns every failing request group, which is what the
    clusterer wants. ``responses`` lets a caller reuse one :func:`judged_responses` read.
    """
    from afterword.embed import get_embedder

    items = responses if responses is not None else judged_responses(store, since=since, until=until)
    bad_idx = [i for i, r in enumerate(items) if r.bad]
    if not bad_idx:
        return []
    # Embed each distinct request once; identical text always groups.
    texts = sorted({r.prompt or r.response for r in items})
    pos = {s: k for k, s in enumerate(texts)}
    vecs = get_embedder().encode(texts)[[pos[r.prompt or r.response] for r in items]]
    # Most confident bad responses lead their groups.
    order = sorted(bad_idx, key=lambda i: -items[i].confidence)
    assign = group_prompts(vecs, order, similarity)
    groups: dict[int, list[int]] = defaultdict(list)
    for i, g in enumerate(assign):
        if g >= 0:
            groups[g].append(i)
    corrections = _corrections_for(store, [items[i].message_id for i in bad_idx])
    out: list[Failure] = []
    for lead, members in groups.items():
        bad = sorted((i for i in members if items[i].bad), key=lambda i: -items[i].confidence)
        if len(bad) < min_count or len(bad) / len(members) < min_bad_rate:
            continue
        conf = float(np.mean([items[i].confidence for i in bad]))
        times = sorted(x for x in (items[i].created_utc for i in bad) if x is not None)
        mids = [items[i].message_id for i in bad]
        fixes = [c for mid in mids for c in corrections.get(mid, [])]
        out.append(
            Failure(
                id=stable_id("failure", sorted(mids), n=12),
                prompt=items[lead].prompt,
                message_ids=mids,
                prompt_ids=[p for p in (items[i].prompt_id for i in bad) if p],
                responses=[items[i].response for i in bad[:3]],
                n_bad=len(bad),
                n_judged=len(members),
                users=len({items[i].user_id for i in bad}),
                mean_confidence=round(conf, 4),
                rank_score=round(conf * len(bad), 4),
                first_utc=times[0] if times else None,
                last_utc=times[-1] if times else None,
                corrections=list(dict.fromkeys(fixes)),
                times_utc=times,
            )
        )
    out.sort(key=lambda f: (-f.rank_score, f.id))
    return out[:limit] if limit else out


def _corrections_for(store: Store, message_ids: list[str]) -> dict[str, list[str]]:
    f = t.feedback
    out: dict[str, list[str]] = defaultdict(list)
    with store.read() as conn:
        for i in range(0, len(message_ids), 900):
            rows = conn.execute(
                sa.select(f.c.message_id, f.c.correction)
                .where(f.c.message_id.in_(message_ids[i : i + 900]), f.c.kind == "correction")
                .order_by(f.c.created_utc)
            )
            for mid, text in rows:
                if text:
                    out[mid].append(text)
    return out
