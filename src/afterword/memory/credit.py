"""Credit assignment: memories earn or lose trust from how the responses they shaped were judged.

Every injection is logged against the response it went into
(``memory_injections``). Once that response has a verdict, each memory that
shaped it is credited with ``score × confidence``: positive verdicts add to
``helpful``, negative ones to ``harmful``. The verdict is the first present
of the judgment sources (``human`` first, then ``combined``, ``explicit``,
``hindsight-model``, ``llm-judge``), or, before any judge has run, the
explicit feedback itself (thumbs, rating, a correction counts as -1).

``usefulness = (helpful - harmful) / (helpful + harmful + 1)``: in (-1, 1),
shrunk towards 0 while the evidence is thin. Retrieval adds a small bonus
for it. A memory that keeps hurting fades: once its usefulness falls under
``MemoryConfig.fade_usefulness`` with at least ``fade_min_evidence`` of harm,
it is switched off (kept, not deleted; pinned memories never fade). Each
injection is credited once; the flag in the log makes the job resumable.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import sqlalchemy as sa

from afterword.memory.index import get_index
from afterword.memory.memory_config import MemoryConfig
from afterword.records import Feedback, utcnow
from afterword.store import schema as t
from afterword.store.store import Store

__all__ = ["apply_credit", "verdicts", "usefulness"]

_ORDER = ["human", "combined", "explicit", "hindsight-model", "llm-judge"]


def usefulness(helpful: float, harmful: float) -> float:
    return (helpful - harmful) / (helpful + harmful + 1.0)


def _feedback_verdict(fbs: list[Feedback]) -> float | None:
    vals = []
    for f in fbs:
        if f.kind == "correction":
            vals.append(-1.0)
        elif f.thumbs:
            vals.append(float(f.thumbs))
        elif f.rating is not None:
            vals.append((f.rating - 3.0) / 2.0)
    return sum(vals) / len(vals) if vals else None


def verdicts(store: Store, message_ids: list[str], config: MemoryConfig | None = None) -> dict[str, float]:
    """Signed credit in [-1, 1] per judged message (score × confidence of the first present source)."""
    cfg = config or MemoryConfig()
    order = list(dict.fromkeys([*cfg.judgment_sources, *_ORDER]))
    rank = {s: i for i, s in enumerate(order)}
    best: dict[str, tuple[int, float]] = {}
    for j in store.judgments_for(message_ids):
        r = rank.get(str(j.source))
        if r is not None and (j.message_id not in best or r < best[j.message_id][0]):
            best[j.message_id] = (r, j.score * j.confidence)
    out = {mid: v for mid, (_, v) in best.items()}
    missing = [m for m in message_ids if m not in out]
    if missing:
        by_msg: dict[str, list[Feedback]] = defaultdict(list)
        for f in store.feedback_for_messages(missing):
            if f.message_id:
                by_msg[f.message_id].append(f)
        for mid, fbs in by_msg.items():
            v = _feedback_verdict(fbs)
            if v is not None:
                out[mid] = v
    return out


def apply_credit(store: Store, config: MemoryConfig | None = None) -> dict[str, Any]:
    """Credit every injection whose response now has a verdict; fade harmful memories. Returns counts."""
    cfg = config or MemoryConfig()
    inj = t.memory_injections
    with store.read() as conn:
        pending = conn.execute(
            sa.select(inj.c.id, inj.c.memory_id, inj.c.message_id).where(
                inj.c.credited.is_(False), inj.c.message_id.is_not(None)
            )
        ).all()
    if not pending:
        return {"credited": 0, "memories_updated": 0, "faded": 0}
    verdict = verdicts(store, sorted({p.message_id for p in pending}), cfg)
    delta: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    done: list[int] = []
    for p in pending:
        v = verdict.get(p.message_id)
        if v is None:
            continue
        done.append(p.id)
        delta[p.memory_id][0 if v > 0 else 1] += abs(v)
    m = t.memories
    faded: list[str] = []
    now = utcnow()
    with store.write() as conn:
        rows = conn.execute(sa.select(m).where(m.c.id.in_(list(delta)))).all() if delta else []
        for r in rows:
            helpful = float(r.helpful or 0) + delta[r.id][0]
            harmful = float(r.harmful or 0) + delta[r.id][1]
            u = usefulness(helpful, harmful)
            values: dict[str, Any] = {"helpful": helpful, "harmful": harmful, "usefulness": u, "updated_utc": now}
            if r.active and not r.pinned and u < cfg.fade_usefulness and harmful >= cfg.fade_min_evidence:
                values["active"] = False
                values["metadata_json"] = {**(r.metadata_json or {}), "faded_utc": now.isoformat()}
                faded.append(r.id)
            conn.execute(m.update().where(m.c.id == r.id).values(**values))
        if faded:
            get_index(store, cfg.index).remove(conn, faded)
        for s in range(0, len(done), 900):
            conn.execute(inj.update().where(inj.c.id.in_(done[s : s + 900])).values(credited=True))
    return {"credited": len(done), "memories_updated": len(rows), "faded": len(faded)}
