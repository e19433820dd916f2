"""Ingest expert artifacts: read each document, extract its cited sources and its conclusion, store it.

``ingest(store, dir)`` walks a folder for markdown, text, HTML and PDF files,
and writes one ``artifacts`` row per document (id = hash of the raw file, so
re-ingesting adds nothing). Citations come from the patterns in
:mod:`.citations`; with an LLM configured, the model is also asked to list the
sources, and a source it names is kept only if its text really occurs in the
document (a guard against invented citations) and is not already found.

The conclusion is the body of the last "Conclusion" section (or "Bottom
line", "Recommendation and conclusion"), else the "Short answer", else the
last paragraph. Labelled outcomes can be attached from a labels file
(``{"memos": {"<file name>": {"options": [...], "answer": "..."}}}``); a
conclusion that opens with "Yes" or "No" labels itself.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from afterword.records import stable_id, utcnow
from afterword.store import schema as t
from afterword.synth.artifacts.citations import Citation, extract_citations
from afterword.synth.artifacts.documents import SUFFIXES, Document, find_section, read_document

__all__ = [
    "Artifact",
    "IngestResult",
    "analyse",
    "extract_conclusion",
    "extract_question",
    "llm_citations",
    "ingest",
    "list_artifacts",
    "get_artifact",
]


@dataclass
class Artifact:
    id: str
    path: str
    format: str
    title: str
    text: str
    sha256: str
    citations: list[Citation]
    conclusion: str | None
    question: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    reconstruction: dict[str, Any] | None = None
    conversation_id: str | None = None

    @property
    def options(self) -> list[str] | None:
        return self.metadata.get("options")

    @property
    def answer(self) -> str | None:
        return self.metadata.get("answer")

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "path": self.path,
            "format": self.format,
            "title": self.title,
            "citations": len(self.citations),
            "by_kind": dict(Counter(c.kind for c in self.citations)),
            "conclusion": (self.conclusion or "")[:300],
            "options": self.options,
            "answer": self.answer,
            "reversed": self.reconstruction is not None,
        }


_CONCLUSION = (r"conclusions?", r"recommendations? and conclusions?", r"bottom line", r"summary of conclusions?")
_SHORT = (r"short answers?", r"answer")
_QUESTION = (r"questions?(?: presented)?", r"issues?(?: presented)?")


def extract_conclusion(text: str) -> str | None:
    """The memo's conclusion (see the module docstring)."""
    body = find_section(text, *_CONCLUSION) or find_section(text, *_SHORT)
    if body is None:
        paras = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
        body = paras[-1] if paras else None
    if body is None:
        return None
    body = re.split(r"\n\s*\n", body.strip())[0]  # the first paragraph of the section
    return " ".join(body.split())[:2000] or None


def extract_question(text: str) -> str | None:
    """The question the memo says it answers, when it states one."""
    body = find_section(text, *_QUESTION, last=False)
    if body:
        return " ".join(re.split(r"\n\s*\n", body.strip())[0].split())[:1500]
    m = re.search(r"(?im)^\s*question\s*:\s*(.+)$", text)
    return m.group(1).strip() if m else None


_HEADER_LINE = re.compile(r"(?im)^\s*(?:to|from|re|subject|client|file|matter|cc|prepared (?:for|by))\s*:.*$")


def _outcome(conclusion: str | None) -> dict[str, Any]:
    m = re.match(r"\s*(yes|no)\b", conclusion or "", re.IGNORECASE)
    return {"options": ["yes", "no"], "answer": m.group(1).lower(), "options_from": "conclusion"} if m else {}


def analyse(doc: Document, *, llm: Any = None) -> Artifact:
    """Citations, conclusion and question of one document (no store involved)."""
    cits = extract_citations(doc.text)
    # A bare case name in a header line ("TO: File - Reyes v. Allied Freight") names the matter, not an authority.
    header_spans = [(m.start(), m.end()) for m in _HEADER_LINE.finditer(doc.text)]
    cits = [
        c
        for c in cits
        if not (c.kind == "case" and not re.search(r"\d", c.key) and any(a <= c.start < b for a, b in header_spans))
    ]
    if llm is not None:
        cits.extend(llm_citations(doc.text, llm, known=cits))
    conclusion = extract_conclusion(doc.text)
    return Artifact(
        id=stable_id("artifact", doc.sha256),
        path=doc.path,
        format=doc.format,
        title=doc.title,
        text=doc.text,
        sha256=doc.sha256,
        citations=cits,
        conclusion=conclusion,
        question=extract_question(doc.text),
        metadata=_outcome(conclusion),
    )


_LLM_CITES = (
    "List every legal source cited in the memo below: statutes, Code sections, regulations, court cases, revenue "
    "rulings and procedures, notices, URLs and document ids. Copy each exactly as written. Reply with JSON only: "
    '{"citations": ["...", "..."]}'
)


def llm_citations(text: str, llm: Any, *, known: list[Citation] | None = None, max_chars: int = 6000) -> list[Citation]:
    """Sources the LLM names that the patterns missed; each must occur verbatim in ``text``."""
    try:
        obj = llm.chat_json(
            [{"role": "system", "content": _LLM_CITES}, {"role": "user", "content": text[:max_chars]}],
            max_tokens=400,
            temperature=0.0,
        )
    except (ValueError, TypeError):
        return []
    items = obj.get("citations") if isinstance(obj, dict) else obj if isinstance(obj, list) else None
    if not isinstance(items, list):
        return []
    have = set().union(*(c.keys for c in known or []))
    raws = [c.raw.lower() for c in known or []]
    flat = " ".join(text.split()).lower()
    out: list[Citation] = []
    for raw in items:
        if not isinstance(raw, str) or len(raw.strip()) < 6 or not re.search(r"[A-Z0-9]", raw):
            continue
        s = " ".join(raw.split()).strip(" .,;")
        at = flat.find(s.lower())
        if at < 0:
            continue  # not in the document: the model made it up or rewrote it
        parsed = extract_citations(s)
        if not parsed:  # a source no pattern knows (a named Act, "the Glenshaw Glass case"): keep it as written
            if any(s.lower() in r or r in s.lower() for r in raws):
                continue
            parsed = [Citation(raw=s, kind="other", key="src:" + re.sub(r"[^a-z0-9]", "", s.lower()))]
        for c in parsed:
            if not (c.keys & have):
                c.method, c.start = "llm", at
                out.append(c)
                have |= c.keys
    return out


@dataclass
class IngestResult:
    added: int = 0
    present: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)
    artifacts: list[Artifact] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        kinds: Counter[str] = Counter()
        fmts: Counter[str] = Counter()
        for a in self.artifacts:
            kinds.update(c.kind for c in a.citations)
            fmts[a.format] += 1
        return {
            "added": self.added,
            "present": self.present,
            "skipped": self.skipped,
            "artifacts": len(self.artifacts),
            "by_format": dict(fmts),
            "citations": sum(kinds.values()),
            "citations_by_kind": dict(kinds),
            "with_conclusion": sum(1 for a in self.artifacts if a.conclusion),
        }


def _load_labels(path: str | Path | None) -> dict[str, dict[str, Any]]:
    if not path:
        return {}
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return data.get("memos", data) if isinstance(data, dict) else {}


def ingest(
    store: Any,
    directory: str | Path,
    *,
    llm: Any = None,
    labels: str | Path | None = None,
    progress: Callable[[int], None] | None = None,
) -> IngestResult:
    """Read every supported file under ``directory`` and store it as an artifact (idempotent)."""
    root = Path(directory)
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
    labelled = _load_labels(labels)
    res = IngestResult()
    rows = []
    for p in files:
        try:
            art = analyse(read_document(p), llm=llm)
        except Exception as exc:  # noqa: BLE001 - one unreadable file must not stop the folder
            res.skipped.append({"path": str(p), "error": f"{type(exc).__name__}: {exc}"})
            if progress:
                progress(1)
            continue
        lab = labelled.get(p.name) or {}
        if lab.get("options") and lab.get("answer"):
            art.metadata.update({"options": lab["options"], "answer": lab["answer"], "options_from": "labels"})
        res.artifacts.append(art)
        rows.append(_row(art))
        if progress:
            progress(1)
    with store.write() as conn:
        ids = [r["id"] for r in rows]
        existing: set[str] = set()
        if ids:
            existing = set(conn.execute(sa.select(t.artifacts.c.id).where(t.artifacts.c.id.in_(ids))).scalars())
        new = [r for r in rows if r["id"] not in existing]
        if new:
            conn.execute(t.artifacts.insert(), new)
        for r in rows:  # labels may arrive after a first ingest: merge them into the stored row
            meta = r["metadata_json"]
            if r["id"] in existing and meta.get("options_from") == "labels":
                where = t.artifacts.c.id == r["id"]
                old = conn.execute(sa.select(t.artifacts.c.metadata_json).where(where)).scalar()
                conn.execute(t.artifacts.update().where(where).values(metadata_json={**(old or {}), **meta}))
    res.added = len(new)
    res.present = len(rows) - len(new)
    return res


def _row(a: Artifact) -> dict[str, Any]:
    return {
        "id": a.id,
        "path": a.path,
        "format": a.format,
        "sha256": a.sha256,
        "title": a.title,
        "text": a.text,
        "citations_json": [c.as_dict() for c in a.citations],
        "conclusion": a.conclusion,
        "ingested_utc": utcnow(),
        "metadata_json": {**a.metadata, "question": a.question},
    }


def _from_row(r: Any) -> Artifact:
    meta = dict(r.metadata_json or {})
    return Artifact(
        id=r.id,
        path=r.path,
        format=r.format,
        title=r.title or "",
        text=r.text,
        sha256=r.sha256,
        citations=[Citation.from_dict(c) for c in r.citations_json or []],
        conclusion=r.conclusion,
        question=meta.pop("question", None),
        metadata=meta,
        reconstruction=r.reconstruction_json,
        conversation_id=r.conversation_id,
    )


def list_artifacts(store: Any, ids: list[str] | None = None) -> list[Artifact]:
    q = sa.select(t.artifacts).order_by(t.artifacts.c.path)
    if ids:
        q = q.where(t.artifacts.c.id.in_(ids))
    with store.read() as conn:
        return [_from_row(r) for r in conn.execute(q)]


def get_artifact(store: Any, artifact_id: str) -> Artifact:
    from afterword.errors import NotFoundError

    found = list_artifacts(store, [artifact_id])
    if not found:
        raise NotFoundError("artifact", artifact_id)
    return found[0]
