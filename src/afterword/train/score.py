"""Scoring with a trained reward model: new traffic in the store, and candidate responses.

:func:`score_traffic` scores each assistant message in the store in the
context of the turns before it (newest conversations first when limited), so
new traffic can be triaged before anyone has reacted to it.
:func:`rank_candidates` orders several candidate responses to one context,
best first: best-of-n selection at generation time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from afterword.store.store import Store
from afterword.train.reward import RewardModel

__all__ = ["score_traffic", "rank_candidates"]


def _model(model: RewardModel | str | Path) -> RewardModel:
    return model if isinstance(model, RewardModel) else RewardModel.load(model)


def score_traffic(
    store: Store,
    model: RewardModel | str | Path,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    user_id: str | None = None,
    limit: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[dict[str, Any]]:
    """A score per assistant message (higher is better), lowest first: the likeliest failures lead."""
    rm = _model(model)
    ids = store.conversation_ids(user_id=user_id, since=since, until=until)
    if limit:
        ids = ids[-limit:]
    rows: list[dict[str, Any]] = []
    contexts: list[list[dict[str, str]]] = []
    responses: list[str] = []
    for i in range(0, len(ids), 500):
        for conv in store.conversations_by_id(ids[i : i + 500]):
            ctx: list[dict[str, str]] = []
            for m in conv.messages:
                if m.role == "assistant" and m.content.strip() and ctx:
                    rows.append(
                        {"message_id": m.id, "conversation_id": conv.id, "user_id": conv.user_id, "model": m.model}
                    )
                    contexts.append(list(ctx))
                    responses.append(m.content)
                if m.content.strip():
                    ctx.append({"role": str(m.role), "content": m.content})
            if progress:
                progress(1)
    scores = rm.score(contexts, responses)
    for row, s, resp in zip(rows, scores, responses, strict=True):
        row["score"] = float(s)
        row["response"] = resp[:200]
    rows.sort(key=lambda r: r["score"])
    return rows


def rank_candidates(
    model: RewardModel | str | Path, context: Sequence[dict[str, str]] | str, candidates: Sequence[str]
) -> list[dict[str, Any]]:
    """``candidates`` best first, with their scores and original indexes."""
    return _model(model).rank(context, list(candidates))
