"""Judging the store: incremental, resumable, batched.

``judge_store`` finds the conversations whose judgments are missing or out of
date, judges them in batches with :class:`HindsightJudge` (and, when an LLM
endpoint is configured, the rubric :class:`LLMJudge`), and writes each
batch's judgments in one transaction. What needs judging is derived from the
store itself, not from a cursor, so a run killed part-way resumes exactly
where it stopped, and a re-run on an up-to-date store does nothing.

A conversation needs (re)judging when:
- one of its assistant messages has no ``hindsight-model`` judgment;
- the explicit feedback now stored for one of its messages dictates another
  verdict than the one its judgment carries (feedback added after the
  judgment, whatever time the user gave it: explicit feedback always wins);
- the same user started a new conversation within ``later_window_days``
  after it (the user may have come back to report the outcome).

``rejudge=True`` takes every conversation in scope instead, e.g. to apply a
calibrator stored by ``afterword judge calibrate`` to existing judgments.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from afterword.judge.calibrate import load_calibrator
from afterword.judge.hindsight import HindsightJudge, _from_feedback, label_for_score
from afterword.judge.judge_config import JudgeConfig
from afterword.records import Conversation, Feedback, Judgment, JudgmentSource
from afterword.store import schema as t
from afterword.store.store import Store, aware

__all__ = ["pending_conversations", "judge_store", "explain", "combine", "stage"]

_SRC = JudgmentSource.hindsight_model.value


def _evidence_key(signal: str, weight: float, detail: str | None) -> tuple[str, float, str]:
    return signal, round(float(weight), 9), detail or ""


def _stale_explicit(conn: sa.Connection) -> set[str]:
    """Conversations where a judged message's feedback now dictates another verdict than its judgment's.

    Derived from the feedback itself, not from its timestamp: the time on a
    feedback row is when the user gave it (an import may bring it in long
    after the message was judged), and the store keeps no insertion time. The
    verdict is recomputed as the judge does (the latest feedback that states
    one wins; any of those tied at the latest time is accepted, since the
    judge's order among them is the database's) and compared with the
    explicit evidence the judgment used.
    """
    m, j, f = t.messages, t.judgments, t.feedback
    rows = conn.execute(
        sa.select(
            f.c.message_id,
            f.c.kind,
            f.c.thumbs,
            f.c.rating,
            f.c.comment,
            f.c.correction,
            f.c.created_utc,
            m.c.conversation_id,
        ).select_from(
            f.join(m, m.c.id == f.c.message_id).join(j, sa.and_(j.c.message_id == f.c.message_id, j.c.source == _SRC))
        )
    ).all()
    if not rows:
        return set()
    conv_of: dict[str, str] = {}
    latest: dict[str, tuple[datetime, set[tuple[str, float, str]]]] = {}
    for r in rows:
        conv_of[r.message_id] = r.conversation_id
        fb = Feedback(
            kind=r.kind,
            message_id=r.message_id,
            thumbs=r.thumbs,
            rating=r.rating,
            comment=r.comment,
            correction=r.correction,
        )
        got = _from_feedback(fb, r.message_id)
        if got is None:
            continue
        ev = got[2]
        key = _evidence_key(ev.signal, ev.weight, ev.detail)
        when = aware(r.created_utc)
        cur = latest.get(r.message_id)
        if cur is None or when > cur[0]:  # type: ignore[operator]
            latest[r.message_id] = (when, {key})  # type: ignore[assignment]
        elif when == cur[0]:
            cur[1].add(key)
    stale: set[str] = set()
    mids = list(conv_of)
    for i in range(0, len(mids), 900):
        for mid, evidence in conn.execute(
            sa.select(j.c.message_id, j.c.evidence_json).where(
                j.c.message_id.in_(mids[i : i + 900]), j.c.source == _SRC
            )
        ):
            used = [
                _evidence_key(e.get("signal", ""), e.get("weight") or 0.0, e.get("detail"))
                for e in evidence or []
                if str(e.get("signal", "")).startswith("explicit")
            ]
            wanted = latest.get(mid)
            if wanted is None:
                if used:  # the feedback it used no longer states a verdict
                    stale.add(conv_of[mid])
            elif not used or used[0] not in wanted[1]:
                stale.add(conv_of[mid])
    return stale


def pending_conversations(
    store: Store, *, since: datetime | None = None, window_days: float = 7.0, rejudge: bool = False
) -> list[str]:
    """Ids of conversations to (re)judge, oldest first; with ``rejudge``, every conversation in scope."""
    m, j, c = t.messages, t.judgments, t.conversations
    if rejudge:
        with store.read() as conn:
            q = sa.select(c.c.id, c.c.started_utc).where(
                c.c.id.in_(sa.select(m.c.conversation_id).where(m.c.role == "assistant").distinct())
            )
            if since is not None:
                q = q.where(sa.or_(c.c.started_utc >= since, c.c.started_utc.is_(None)))
            everything = [(aware(r.started_utc).timestamp() if r.started_utc else 0.0, r.id) for r in conn.execute(q)]
        everything.sort()
        return [cid for _, cid in everything]
    unjudged = (
        sa.select(m.c.conversation_id)
        .select_from(m.outerjoin(j, sa.and_(j.c.message_id == m.c.id, j.c.source == _SRC)))
        .where(m.c.role == "assistant", j.c.id.is_(None))
    )
    with store.read() as conn:
        ids = set(conn.execute(unjudged.distinct()).scalars()) | _stale_explicit(conn)
        if not ids:
            return []
        rows = []
        id_list = list(ids)
        for i in range(0, len(id_list), 900):
            rows += conn.execute(
                sa.select(c.c.id, c.c.user_id, c.c.started_utc).where(c.c.id.in_(id_list[i : i + 900]))
            ).all()
        # Earlier conversations of the same users, which a new one may report back on.
        window = timedelta(days=window_days)
        firsts: dict[str, datetime] = {}
        for r in rows:
            if r.user_id and r.started_utc is not None:
                s = aware(r.started_utc)
                if r.user_id not in firsts or s < firsts[r.user_id]:
                    firsts[r.user_id] = s  # type: ignore[assignment]
        # One query per chunk of users (not per user): this runs over every pending user at scale.
        users = list(firsts)
        for i in range(0, len(users), 500):
            for r in conn.execute(
                sa.select(c.c.id, c.c.user_id, c.c.started_utc).where(
                    c.c.user_id.in_(users[i : i + 500]), c.c.started_utc.is_not(None)
                )
            ):
                first = firsts[r.user_id]
                if first - window <= aware(r.started_utc) < first:  # type: ignore[operator]
                    ids.add(r.id)
        order: list[tuple[float, str]] = []
        id_list = list(ids)
        for i in range(0, len(id_list), 900):
            q = sa.select(c.c.id, c.c.started_utc).where(c.c.id.in_(id_list[i : i + 900]))
            if since is not None:
                q = q.where(sa.or_(c.c.started_utc >= since, c.c.started_utc.is_(None)))
            order += [(aware(r.started_utc).timestamp() if r.started_utc else 0.0, r.id) for r in conn.execute(q)]
    order.sort()
    return [cid for _, cid in order]


def _later_for(store: Store, convs: list[Conversation], window_days: float) -> dict[str, list[Conversation]]:
    """For each conversation, the same user's conversations that started within the window after it."""
    c = t.conversations
    users = {cv.user_id for cv in convs if cv.user_id and cv.started_utc}
    if not users:
        return {}
    window = timedelta(days=window_days)
    with store.read() as conn:
        rows = conn.execute(sa.select(c.c.id, c.c.user_id, c.c.started_utc).where(c.c.user_id.in_(list(users)))).all()
    by_user: dict[str, list[tuple[datetime, str]]] = {}
    for r in rows:
        if r.started_utc is not None:
            by_user.setdefault(r.user_id, []).append((aware(r.started_utc), r.id))  # type: ignore[arg-type]
    wanted: dict[str, list[str]] = {}
    for cv in convs:
        if not cv.user_id or cv.started_utc is None:
            continue
        start = cv.started_utc
        wanted[cv.id or ""] = [
            cid for s, cid in sorted(by_user.get(cv.user_id, [])) if start < s <= start + window and cid != cv.id
        ]
    needed = sorted({cid for ids in wanted.values() for cid in ids})
    loaded = {cv.id: cv for cv in store.conversations_by_id(needed)}
    return {k: [loaded[i] for i in ids if i in loaded] for k, ids in wanted.items()}


def combine(built_in: Judgment, llm: Judgment | None) -> Judgment | None:
    """The combined verdict of the built-in model and the LLM judge (None without an LLM judgment).

    Explicit feedback still wins: when the built-in judgment carries explicit
    evidence it is the verdict. Otherwise the scores are averaged, weighted by
    each judge's confidence, and the evidence of both is kept.
    """
    if llm is None:
        return None
    if any(e.signal.startswith("explicit") for e in built_in.evidence):
        return built_in.model_copy(update={"source": JudgmentSource.combined})
    w1, w2 = built_in.confidence, llm.confidence
    total = (w1 + w2) or 1.0
    score = (built_in.score * w1 + llm.score * w2) / total
    agree = label_for_score(built_in.score) == label_for_score(llm.score)
    return Judgment(
        message_id=built_in.message_id,
        source=JudgmentSource.combined,
        label=label_for_score(score),
        score=max(-1.0, min(1.0, score)),
        confidence=min(1.0, max(w1, w2) * (1.0 if agree else 0.7)),
        evidence=[*built_in.evidence, *llm.evidence],
        model_version=f"{built_in.model_version}+{llm.model_version}",
    )


def judge_store(
    store: Store,
    *,
    since: datetime | None = None,
    config: JudgeConfig | None = None,
    llm_judge: Any = None,
    batch_size: int = 200,
    progress: Callable[[int], None] | None = None,
    limit: int | None = None,
    rejudge: bool = False,
) -> dict[str, Any]:
    """Judge every pending conversation (every one in scope with ``rejudge``); returns counts and throughput."""
    cfg = config or JudgeConfig()
    judge = HindsightJudge(cfg)
    calibrator = load_calibrator(store)
    pending = pending_conversations(store, since=since, window_days=cfg.later_window_days, rejudge=rejudge)
    if limit is not None:
        pending = pending[:limit]
    t0 = time.perf_counter()
    n_judged = 0
    labels: dict[str, int] = {}
    for i in range(0, len(pending), batch_size):
        convs = store.conversations_by_id(pending[i : i + batch_size])
        later = _later_for(store, convs, cfg.later_window_days)
        results = judge.judge_many([(cv, later.get(cv.id or "", [])) for cv in convs])
        out: list[Judgment] = []
        for cv, js in zip(convs, results, strict=True):
            for jd in js:
                if calibrator is not None:
                    jd = calibrator.apply(jd)
                out.append(jd)
                if llm_judge is not None:
                    lj = llm_judge.judge_message(cv, jd.message_id)
                    if lj is not None:
                        out.append(lj)
                        comb = combine(jd, lj)
                        if comb is not None:
                            out.append(comb)
                labels[str(jd.label)] = labels.get(str(jd.label), 0) + 1
            n_judged += len(js)
        store.put_judgments(out)  # one transaction per batch: resumable
        if progress:
            progress(len(convs))
    dt = time.perf_counter() - t0
    return {
        "conversations": len(pending),
        "judged": n_judged,
        "labels": labels,
        "turns_per_s": round(n_judged / dt, 1) if dt > 0 and n_judged else None,
        "model_version": judge.model_version,
        "calibrated": calibrator is not None,
        "llm_judge": getattr(llm_judge, "model_version", None),
    }


def explain(store: Store, message_id: str) -> dict[str, Any]:
    """Every judgment of a message with its evidence, each evidence message's text beside it."""
    msg, cid = store.get_message(message_id)
    judgments = store.judgments_for([message_id])
    conv = store.get_conversation(cid)
    texts = {m.id: (m.role, m.content) for m in conv.messages}
    missing = {e.message_id for jd in judgments for e in jd.evidence if e.message_id and e.message_id not in texts}
    for mid in missing:
        try:
            m2, _ = store.get_message(mid)
            texts[mid] = (m2.role, m2.content)
        except Exception:  # forgotten since: the evidence id stays, the text is gone
            texts[mid] = ("?", "")
    return {
        "message_id": message_id,
        "conversation_id": cid,
        "role": msg.role,
        "content": msg.content,
        "judgments": [
            {
                **jd.model_dump(mode="json", exclude={"evidence"}),
                "evidence": [
                    {
                        **e.model_dump(mode="json"),
                        "role": texts.get(e.message_id, ("", ""))[0],
                        "text": texts.get(e.message_id, ("", ""))[1],
                    }
                    for e in jd.evidence
                ],
            }
            for jd in judgments
        ],
    }


def stage(store: Store, opts: dict[str, Any]) -> dict[str, Any]:
    """The judge stage of ``afterword run``."""
    res = judge_store(store)
    return {k: v for k, v in res.items() if k != "llm_judge"}
