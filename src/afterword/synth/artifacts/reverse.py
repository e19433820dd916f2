"""Reverse-engineer artifacts into training records: the question, the research steps, the sources, the answer.

For each stored artifact, an LLM reconstructs the question the client most
likely asked and the research steps the expert took. The *sources* and the
*conclusion* are never taken from the LLM: they are the ones extracted from the
document, so a small or careless model cannot invent authorities. When the
model's reply is unusable, the question falls back to the one the memo states
("Question presented") or to its title, and the steps to a template built from
the cited sources by kind (statute, regulations, cases, rulings), and the
record says which (``question_source``, ``steps_source``).

Each artifact becomes one conversation (``source="artifact"``, the
reconstructed question as the user turn and the memo as the answer), and the
artifact row points at it (``conversation_id``): that is the lineage from a
document to every dataset row made from it. :func:`export_reverse` writes the
SFT rows (TRL's conversational ``messages``) and the process rows
(question, steps with their sources, conclusion) and records the export.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from afterword.errors import UpstreamError
from afterword.llm import extract_json
from afterword.records import Conversation, Message, Role, utcnow
from afterword.store import schema as t
from afterword.store.store import conversation_id_for
from afterword.synth.artifacts.citations import Citation
from afterword.synth.artifacts.ingest import Artifact, list_artifacts

__all__ = ["ReverseResult", "reconstruct", "reverse", "export_reverse", "sft_record", "process_record"]

_PROMPT = (
    "Below is an expert's memo written for a client. On the first line, write the question the client most likely "
    "asked, in the client's own words. Then list the research steps the expert took, as a numbered list."
)

_KIND_STEP = [
    ({"irc", "usc", "state", "act", "publaw"}, "Identify the governing statute: {}."),
    ({"reg"}, "Read the regulations: {}."),
    ({"case"}, "Review the case law: {}."),
    ({"revrul", "revproc", "notice", "ann", "ruling", "td", "pub"}, "Check IRS guidance: {}."),
    ({"url", "docid"}, "Consult other references: {}."),
]


def _template_steps(art: Artifact) -> list[dict[str, Any]]:
    steps = [{"text": "Establish the facts and the client's question.", "sources": []}]
    for kinds, fmt in _KIND_STEP:
        cits = [c for c in art.citations if c.kind in kinds]
        if cits:
            steps.append({"text": fmt.format("; ".join(c.raw for c in cits)), "sources": [c.key for c in cits]})
    steps.append({"text": "Apply the authorities to the facts and state the conclusion.", "sources": []})
    return steps


def _ground(step: str, cits: list[Citation]) -> list[str]:
    low = step.lower()
    return [c.key for c in cits if c.raw.lower() in low or c.key.split(":", 1)[-1] in low]


_STEP = re.compile(r"^\s*(?:\d{1,2}[.)]|[-*•]|step\s*\d+\s*[:.])\s+(.+)$", re.IGNORECASE)


def _parse_reconstruction(reply: str) -> tuple[str | None, list[str]]:
    """(question, steps) from a reply: JSON if the model sent JSON, else a first line and a numbered list."""
    try:
        obj = extract_json(reply)
    except ValueError:
        obj = None
    if isinstance(obj, dict) and isinstance(obj.get("question"), str):
        steps = [" ".join(str(x).split()) for x in obj.get("steps") or [] if str(x).strip()]
        q = " ".join(obj["question"].split())
        return (q if len(q) >= 15 else None), steps
    lines = [ln.strip() for ln in reply.splitlines() if ln.strip()]
    steps = [" ".join(m.group(1).split()) for ln in lines if (m := _STEP.match(ln))]
    q = None
    for ln in lines:
        if _STEP.match(ln):
            break
        cand = re.sub(r"(?i)^\**\s*(?:client'?s?\s+)?question\s*\**\s*[:.-]\s*", "", ln).strip(' "*')
        if len(cand) >= 15 and not re.match(r"(?i)^(?:research )?steps?\b", cand):
            q = cand
            break
    return q, steps


def reconstruct(art: Artifact, llm: Any | None, *, max_chars: int = 2500, max_tokens: int = 300) -> dict[str, Any]:
    """The reconstruction of one artifact: question, steps (with sources), sources, conclusion."""
    question, steps, q_src, s_src = None, None, None, None
    if llm is not None:
        excerpt = art.text[:max_chars]
        if art.conclusion and art.conclusion not in excerpt:
            excerpt += "\n\nConclusion: " + art.conclusion
        try:
            reply = llm.chat(
                [{"role": "system", "content": _PROMPT}, {"role": "user", "content": excerpt}],
                max_tokens=max_tokens,
                temperature=0.0,
            )
        except UpstreamError:
            reply = ""
        q, raw_steps = _parse_reconstruction(reply)
        if q:
            question, q_src = q, "llm"
        if len(raw_steps) >= 2:
            steps = [{"text": st, "sources": _ground(st, art.citations)} for st in raw_steps[:12]]
            s_src = "llm"
    if question is None and art.question:
        question, q_src = art.question, "document"
    if question is None:
        question, q_src = f"What is the correct tax treatment in this matter: {art.title}?", "title"
    if steps is None:
        steps, s_src = _template_steps(art), "template"
    return {
        "question": question,
        "question_source": q_src,
        "steps": steps,
        "steps_source": s_src,
        "sources": [c.as_dict() for c in art.citations],
        "conclusion": art.conclusion,
        "model": getattr(llm, "model", None),
    }


def sft_record(art: Artifact, rec: dict[str, Any]) -> dict[str, Any]:
    """TRL conversational SFT row, with the artifact it came from."""
    return {
        "messages": [
            {"role": "user", "content": rec["question"]},
            {"role": "assistant", "content": art.text},
        ],
        "artifact_id": art.id,
        "conversation_id": art.conversation_id,
    }


def process_record(art: Artifact, rec: dict[str, Any]) -> dict[str, Any]:
    """Process-supervision row: the question, the ordered steps with their sources, the conclusion."""
    return {
        "prompt": rec["question"],
        "steps": [{"step": i + 1, **s} for i, s in enumerate(rec["steps"])],
        "sources": [s["key"] for s in rec["sources"]],
        "conclusion": rec["conclusion"],
        "artifact_id": art.id,
        "conversation_id": art.conversation_id,
    }


@dataclass
class ReverseResult:
    artifacts: int = 0
    question_sources: dict[str, int] = field(default_factory=dict)
    steps_sources: dict[str, int] = field(default_factory=dict)
    conversations: list[str] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self, with_records: bool = False) -> dict[str, Any]:
        d = {
            "artifacts": self.artifacts,
            "question_sources": self.question_sources,
            "steps_sources": self.steps_sources,
            "conversations": len(self.conversations),
        }
        if with_records:
            d["records"] = self.records
        return d


def reverse(
    store: Any,
    llm: Any | None,
    *,
    ids: list[str] | None = None,
    redo: bool = False,
    max_tokens: int = 300,
    max_chars: int = 2500,
    progress: Callable[[int], None] | None = None,
) -> ReverseResult:
    """Reconstruct every (not yet reversed, unless ``redo``) artifact and store its training conversation."""
    res = ReverseResult()
    for art in list_artifacts(store, ids):
        if art.reconstruction is not None and not redo:
            if progress:
                progress(1)
            continue
        rec = reconstruct(art, llm, max_tokens=max_tokens, max_chars=max_chars)
        conv = Conversation(
            source="artifact",
            external_id=f"artifact:{art.id}",
            metadata={"artifact_id": art.id, "artifact_path": art.path, "reconstruction": rec},
            messages=[
                Message(role=Role.user, content=rec["question"], metadata={"artifact_id": art.id}),
                Message(role=Role.assistant, content=art.text, metadata={"artifact_id": art.id, "author": "expert"}),
            ],
        )
        cid = conversation_id_for(conv)
        with store.write() as conn:  # an earlier reconstruction of the same artifact is replaced
            old = conn.execute(sa.select(t.artifacts.c.conversation_id).where(t.artifacts.c.id == art.id)).scalar()
            if old:
                conn.execute(t.messages.delete().where(t.messages.c.conversation_id == old))
                conn.execute(t.conversations.delete().where(t.conversations.c.id == old))
        store.import_conversations([conv], default_source="artifact")
        with store.write() as conn:
            conn.execute(
                t.artifacts.update()
                .where(t.artifacts.c.id == art.id)
                .values(reconstruction_json=rec, conversation_id=cid, reversed_utc=utcnow())
            )
        art.conversation_id = cid
        res.artifacts += 1
        res.question_sources[rec["question_source"]] = res.question_sources.get(rec["question_source"], 0) + 1
        res.steps_sources[rec["steps_source"]] = res.steps_sources.get(rec["steps_source"], 0) + 1
        res.conversations.append(cid)
        res.records.append({"sft": sft_record(art, rec), "process": process_record(art, rec)})
        if progress:
            progress(1)
    return res


def export_reverse(store: Any, out_dir: str | Path, *, command: str | None = None) -> dict[str, Any]:
    """Write ``sft.jsonl`` and ``process.jsonl`` for every reversed artifact, and record both exports' lineage."""
    from afterword.export import record_export

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    arts = [a for a in list_artifacts(store) if a.reconstruction is not None]
    mids: dict[str, list[str]] = {}
    if arts:
        with store.read() as conn:
            for cid, mid in conn.execute(
                sa.select(t.messages.c.conversation_id, t.messages.c.id).where(
                    t.messages.c.conversation_id.in_([a.conversation_id for a in arts])
                )
            ):
                mids.setdefault(cid, []).append(mid)
    result: dict[str, Any] = {"artifacts": len(arts)}
    for name, make in (("sft", sft_record), ("process", process_record)):
        path = out / f"{name}.jsonl"
        tmp = path.with_name(path.name + ".partial")
        with open(tmp, "w", encoding="utf-8") as fh:
            for a in arts:
                fh.write(json.dumps(make(a, a.reconstruction or {}), ensure_ascii=False) + "\n")
        os.replace(tmp, path)
        items = [(m, None, None) for a in arts for m in mids.get(a.conversation_id or "", [])]
        eid = record_export(
            store,
            kind=name,
            fmt="messages" if name == "sft" else "process",
            path=str(path),
            command=command,
            card={"rows": len(arts), "source": "artifacts", "artifact_ids": [a.id for a in arts]},
            items=items,
        )
        result[name] = {"path": str(path), "rows": len(arts), "export_id": eid}
    return result
