"""Frozen regression suites: failures turned into eval items that never change.

A suite is created once from one source and then only read:

- ``failures``: the hard failures (:func:`mine_failures`), best-ranked first;
- ``corrections``: every response a human corrected, with the correction as
  the reference answer; these are the "previously corrected mistakes" whose
  repeat rate :mod:`afterword.evals.compare` reports;
- ``cluster``: the failures of one failure cluster.

Each item stores the conversation up to the request (``prompt_json``, OpenAI
messages), a reference answer where a human gave one, otherwise a rubric, and
in ``metadata_json`` the bad response it was frozen from (``mistake``).
Suite items must never leak into training data: the dataset builder checks
``suite_items.message_id``, and :func:`suite_message_ids` gives the wider
set (every bad response and request message behind every item).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from afterword.errors import ConfigError, NotFoundError
from afterword.evals.failures import Failure, mine_failures
from afterword.records import stable_id, utcnow
from afterword.store import schema as t
from afterword.store.store import Store, aware

__all__ = [
    "Suite",
    "SuiteItem",
    "SOURCES",
    "create_suite",
    "get_suite",
    "list_suites",
    "suite_message_ids",
    "DEFAULT_RUBRIC",
]

SOURCES = ("failures", "corrections", "cluster")
_CONTEXT_TURNS = 6

DEFAULT_RUBRIC = (
    "A good answer addresses the request directly, correctly and completely. "
    "An earlier answer to this request was judged unsatisfactory; a good answer does not repeat its mistake."
)


@dataclass
class SuiteItem:
    id: str
    suite: str
    message_id: str | None
    prompt: list[dict[str, str]]
    reference: str | None
    rubric: str | None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def request(self) -> str:
        """The last user turn: what the item asks."""
        return next((m["content"] for m in reversed(self.prompt) if m["role"] == "user"), "")

    @property
    def mistake(self) -> str | None:
        return self.metadata.get("mistake")

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "message_id": self.message_id,
            "request": self.request,
            "prompt": self.prompt,
            "reference": self.reference,
            "rubric": self.rubric,
            "metadata": self.metadata,
        }


@dataclass
class Suite:
    name: str
    description: str | None
    created_utc: datetime
    metadata: dict[str, Any]
    items: list[SuiteItem]

    def as_dict(self, with_items: bool = True) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "created_utc": self.created_utc.isoformat(),
            "metadata": self.metadata,
            "items": len(self.items),
        }
        if with_items:
            d["items"] = [i.as_dict() for i in self.items]
        return d


def _context(store: Store, message_id: str) -> list[dict[str, str]]:
    """The turns before ``message_id`` (the conversation up to its request)."""
    msg, cid = store.get_message(message_id)
    conv = store.get_conversation(cid)
    ids = [m.id for m in conv.messages]
    upto = conv.messages[: ids.index(msg.id)]
    system = [m for m in upto[:1] if m.role == "system"]
    turns = [m for m in upto if m.role in ("user", "assistant")][-_CONTEXT_TURNS:]
    while turns and turns[0].role != "user":
        turns = turns[1:]
    return [{"role": m.role, "content": m.content} for m in system + turns]


def _failure_item(store: Store, suite: str, f: Failure, extra: dict[str, Any]) -> dict[str, Any]:
    mid = f.message_ids[0]
    ref = f.corrections[0] if f.corrections else None
    return {
        "id": stable_id("suite_item", suite, mid),
        "suite": suite,
        "message_id": mid,
        "prompt_json": _context(store, mid),
        "reference": ref,
        "rubric": None if ref else DEFAULT_RUBRIC,
        "metadata_json": {
            "kind": "failure",
            "failure_id": f.id,
            "mistake": f.responses[0],
            "message_ids": f.message_ids,
            "prompt_ids": f.prompt_ids,
            "n_bad": f.n_bad,
            "users": f.users,
            "confidence": f.mean_confidence,
            **extra,
        },
    }


def create_suite(
    store: Store,
    name: str,
    source: str = "failures",
    *,
    cluster: str | None = None,
    description: str | None = None,
    limit: int = 50,
    min_count: int = 2,
    user_id: str | None = None,
) -> Suite:
    """Freeze a new suite from ``source`` (see the module docstring); names are never reused."""
    if source not in SOURCES:
        raise ConfigError(f"unknown suite source {source!r}; choose from {', '.join(SOURCES)}")
    with store.read() as conn:
        if conn.execute(sa.select(t.suites.c.name).where(t.suites.c.name == name)).first():
            raise ConfigError(f"suite {name!r} exists; suites are frozen, pick a new name")
    rows: list[dict[str, Any]] = []
    meta: dict[str, Any] = {"source": source}
    if source == "failures":
        fails = mine_failures(store, min_count=min_count, limit=limit)
        rows = [_failure_item(store, name, f, {}) for f in fails]
    elif source == "cluster":
        from afterword.evals.clusters import cluster_failures

        if not cluster:
            raise ConfigError("source 'cluster' needs a cluster (id, name or rank)")
        c = cluster_failures(store).find(cluster)
        meta.update(cluster_id=c.id, cluster_name=c.name)
        extra = {"cluster_id": c.id, "cluster": c.name}
        rows = [_failure_item(store, name, f, extra) for f in c.failures[:limit]]
    else:
        seen: set[str] = set()
        for fb, msg, _cid in store.corrections(user_id=user_id):
            if not fb.correction or msg.id in seen:
                continue
            seen.add(msg.id or "")
            prompt = _context(store, msg.id or "")
            rows.append(
                {
                    "id": stable_id("suite_item", name, msg.id),
                    "suite": name,
                    "message_id": msg.id,
                    "prompt_json": prompt,
                    "reference": fb.correction,
                    "rubric": None,
                    "metadata_json": {"kind": "correction", "mistake": msg.content, "message_ids": [msg.id]},
                }
            )
        rows = rows[-limit:] if limit else rows  # the most recent corrections
    if not rows:
        raise NotFoundError(f"{source} to freeze into suite", name)
    with store.write() as conn:
        conn.execute(
            t.suites.insert().values(
                name=name, description=description, created_utc=utcnow(), metadata_json={**meta, "items": len(rows)}
            )
        )
        conn.execute(t.suite_items.insert(), rows)
    return get_suite(store, name)


def get_suite(store: Store, name: str) -> Suite:
    with store.read() as conn:
        s = conn.execute(sa.select(t.suites).where(t.suites.c.name == name)).first()
        if s is None:
            raise NotFoundError("suite", name)
        items = conn.execute(
            sa.select(t.suite_items).where(t.suite_items.c.suite == name).order_by(t.suite_items.c.id)
        ).all()
    return Suite(
        name=s.name,
        description=s.description,
        created_utc=aware(s.created_utc),  # type: ignore[arg-type]
        metadata=s.metadata_json or {},
        items=[
            SuiteItem(
                id=r.id,
                suite=r.suite,
                message_id=r.message_id,
                prompt=list(r.prompt_json),
                reference=r.reference,
                rubric=r.rubric,
                metadata=r.metadata_json or {},
            )
            for r in items
        ],
    )


def list_suites(store: Store) -> list[dict[str, Any]]:
    s, i = t.suites, t.suite_items
    q = (
        sa.select(s.c.name, s.c.description, s.c.created_utc, s.c.metadata_json, sa.func.count(i.c.id))
        .outerjoin(i, i.c.suite == s.c.name)
        .group_by(s.c.name, s.c.description, s.c.created_utc, s.c.metadata_json)
        .order_by(s.c.created_utc)
    )
    with store.read() as conn:
        return [
            {
                "name": r[0],
                "description": r[1],
                "created_utc": aware(r[2]).isoformat() if r[2] else None,
                "source": (r[3] or {}).get("source"),
                "items": int(r[4]),
            }
            for r in conn.execute(q)
        ]


def suite_message_ids(store: Store) -> set[str]:
    """Every message any suite item was frozen from: the bad responses and their requests.

    Dataset builders must drop these, so an eval never tests what training saw.
    """
    out: set[str] = set()
    with store.read() as conn:
        for mid, meta in conn.execute(sa.select(t.suite_items.c.message_id, t.suite_items.c.metadata_json)):
            if mid:
                out.add(mid)
            meta = meta or {}
            out.update(x for x in meta.get("message_ids", []) if x)
            out.update(x for x in meta.get("prompt_ids", []) if x)
    return out
