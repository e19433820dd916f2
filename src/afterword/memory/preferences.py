"""Preferences and facts about a user, read from what the user said.

Without an LLM the extraction is rules plus embeddings: patterns find
statements ("I prefer metric units", "I'm on Python 3.9", "my editor is
vim"), and the *key* a statement fills is decided by the pattern (``name``,
``version:python``, ``my:editor``) or, for free-form preferences, by the
nearest of a few slot prototypes in embedding space (``pref:units``,
``pref:length`` …), so "use metric units" and "I'd rather have imperial"
fill the same slot. With an LLM configured, it is asked for the same
``{kind, key, text}`` items; what it returns is validated, and the rules
are used whenever it returns nothing usable.

Statements are processed oldest first, and each new value for a key
supersedes the previous one (see ``memory.control.add_memories``). A
watermark in ``job_state`` means a rerun reads only messages added since.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import sqlalchemy as sa

from afterword.embed import get_embedder
from afterword.llm import LLMClient
from afterword.memory.control import add_memories
from afterword.memory.memory_config import MemoryConfig
from afterword.records import Memory
from afterword.store import schema as t
from afterword.store.store import Store, aware

__all__ = ["Statement", "extract_statements", "extract_with_llm", "build_profile", "SLOTS"]

log = logging.getLogger("afterword.memory")

#: Preference slots and the words that describe them (embedded once, compared by cosine).
SLOTS: dict[str, str] = {
    "units": "measurement units: metric or imperial, kilometres or miles, celsius or fahrenheit",
    "language": "the language to reply in: English, French, Spanish, German",
    "length": "answer length: short and concise or long and detailed",
    "format": "answer formatting: bullet points, markdown, tables, plain text",
    "code": "programming language and code style for examples",
    "tone": "tone of voice: formal, casual, friendly, professional",
}
_SLOT_MIN = 0.35
_END = r"(?=[.!?;\n]|,? (?:and|but|so) |$)"
_MY_SKIP = frozenset(
    [
        "question",
        "problem",
        "issue",
        "code",
        "error",
        "point",
        "guess",
        "bad",
        "fault",
        "answer",
        "concern",
        "goal",
        "request",
        "task",
        "bug",
        "output",
        "job",
    ]
)


@dataclass
class Statement:
    kind: str  # preference | fact
    key: str
    text: str
    message_id: str | None = None


def _clean(s: str) -> str:
    return " ".join(s.strip(" \"'").split())


def _rules(text: str) -> list[tuple[str, str | None, str]]:
    """(kind, fixed key or None for slot lookup, memory text) from one user message."""
    out: list[tuple[str, str | None, str]] = []
    for m in re.finditer(r"\b[Mm]y name is ([A-Z][\w'-]+(?: [A-Z][\w'-]+)?)", text):
        out.append(("fact", "name", f"The user's name is {m.group(1)}."))
    for m in re.finditer(r"\bI(?: am|'m)? (?:live|living|based) in ([A-Z][\w .'-]{1,40}?)" + _END, text):
        out.append(("fact", "location", f"The user lives in {_clean(m.group(1))}."))
    for m in re.finditer(r"\bI work (as an?|at|for) ([\w .'&-]{2,50}?)" + _END, text, re.IGNORECASE):
        what = "occupation" if m.group(1).lower().startswith("as") else "employer"
        out.append(("fact", what, f"The user works {m.group(1).lower()} {_clean(m.group(2))}."))
    for m in re.finditer(
        r"\bI(?:'m| am)? (?:on|using|running|use|have) ([A-Z][\w+#.-]*|[a-z][\w+#-]*) "
        r"(?:version )?v?(\d+(?:\.\d+)+|\d+)\b",
        text,
    ):
        tool = m.group(1)
        out.append(("fact", f"version:{tool.lower()}", f"The user is on {tool} {m.group(2)}."))
    for m in re.finditer(r"\b[Mm]y ([a-z][a-z ]{1,30}?) is ([^.!?;\n]{1,60}?)" + _END, text):
        slot = m.group(1).strip()
        if slot == "name" or slot.split()[-1] in _MY_SKIP:
            continue
        out.append(("fact", f"my:{slot}", f"The user's {slot} is {_clean(m.group(2))}."))
    for m in re.finditer(
        r"\bI(?: would|'d)? (?:prefer|rather have|rather get|like it when you use) (.{3,80}?)" + _END, text, re.I
    ):
        out.append(("preference", None, f"The user prefers {_clean(m.group(1))}."))
    for m in re.finditer(r"\b(?:please )?(?:always|from now on,?) (.{3,80}?)" + _END, text, re.IGNORECASE):
        if re.match(r"(?i)please|from now on", m.group(0)):
            out.append(("preference", None, f"The user wants you to always {_clean(m.group(1))}."))
    for m in re.finditer(r"\bplease (?:don't|do not|never) (.{3,80}?)" + _END, text, re.IGNORECASE):
        out.append(("preference", None, f"The user does not want you to {_clean(m.group(1))}."))
    return out


class _Slots:
    def __init__(self) -> None:
        self.names = list(SLOTS)
        self.vecs = get_embedder().encode(list(SLOTS.values()))

    def key_for(self, text: str, vec: np.ndarray) -> str:
        sims = self.vecs @ vec
        best = int(np.argmax(sims))
        if sims[best] >= _SLOT_MIN:
            return f"pref:{self.names[best]}"
        words = re.findall(r"[a-z]+", text.lower().split("prefers", 1)[-1])[:3]
        return "pref:" + "_".join(words)


def extract_statements(texts: Iterable[tuple[str | None, str]]) -> list[Statement]:
    """Statements from (message id, user text) pairs, by rules and slot embeddings."""
    raw: list[tuple[str | None, str, str | None, str]] = []
    for mid, text in texts:
        for kind, key, mtext in _rules(text):
            raw.append((mid, kind, key, mtext))
    if not raw:
        return []
    slots = _Slots()
    free = [i for i, r in enumerate(raw) if r[2] is None]
    vecs = get_embedder().encode([raw[i][3] for i in free]) if free else np.zeros((0, 1))
    keys = {i: slots.key_for(raw[i][3], v) for i, v in zip(free, vecs, strict=True)}
    return [Statement(kind, key or keys[i], text, mid) for i, (mid, kind, key, text) in enumerate(raw)]


_LLM_PROMPT = (
    "Extract lasting preferences and facts the user states about themselves in the message. Reply with JSON only: "
    '{"items": [{"kind": "preference" or "fact", "key": "short_snake_case_slot", "text": "The user ..."}]}. '
    'If there are none, reply {"items": []}.'
)


def extract_with_llm(llm: LLMClient, mid: str | None, text: str) -> list[Statement] | None:
    """The LLM's statements for one message; None when its reply is unusable (fall back to rules)."""
    try:
        obj = llm.chat_json(
            [{"role": "system", "content": _LLM_PROMPT}, {"role": "user", "content": text[:1500]}], max_tokens=200
        )
    except Exception as exc:
        log.info("preference extraction by LLM failed: %s", exc)
        return None
    items = obj.get("items") if isinstance(obj, dict) else obj if isinstance(obj, list) else None
    if not isinstance(items, list):
        return None
    out = []
    for it in items:
        if not isinstance(it, dict):
            continue
        kind, key, mtext = it.get("kind"), it.get("key"), it.get("text")
        if kind not in ("preference", "fact") or not isinstance(key, str) or not isinstance(mtext, str):
            continue
        key = re.sub(r"[^a-z0-9_:]+", "_", key.lower()).strip("_")[:40]
        if key and 5 <= len(mtext) <= 200:
            out.append(Statement(kind, f"llm:{key}", " ".join(mtext.split()), mid))
    return out or None


_WATERMARK = "memory.profile.watermark"
_HINT = re.compile(r"(?i)\b(I|I'm|I'd|my|please|always|from now on)\b")


def build_profile(
    store: Store, config: MemoryConfig | None = None, llm: LLMClient | None = None, user_id: str | None = None
) -> dict[str, int]:
    """Extract preferences and facts from user messages not read before; returns counts."""
    cfg = config or MemoryConfig()
    msg = t.messages
    mark = store.get_state(_WATERMARK) if user_id is None else None
    q = (
        sa.select(msg.c.id, msg.c.user_id, msg.c.content, msg.c.created_utc)
        .where(msg.c.role == "user", msg.c.user_id.is_not(None))
        .order_by(msg.c.created_utc, msg.c.conversation_id, msg.c.seq)
    )
    if user_id:
        q = q.where(msg.c.user_id == user_id)
    if mark:
        from datetime import datetime

        q = q.where(msg.c.created_utc > datetime.fromisoformat(mark))
    with store.read() as conn:
        scanned = conn.execute(q).all()
    rows = [r for r in scanned if _HINT.search(r.content or "")]
    memories: list[Memory] = []
    for r in rows:
        stmts = extract_with_llm(llm, r.id, r.content) if llm is not None and cfg.use_llm else None
        if stmts is None:
            stmts = extract_statements([(r.id, r.content)])
        for s in stmts:
            memories.append(
                Memory(
                    kind=s.kind,
                    scope="user",
                    user_id=r.user_id,
                    key=s.key,
                    text=s.text,
                    evidence_ids=[r.id],
                    created_utc=aware(r.created_utc),
                    metadata={"source": "llm" if s.key.startswith("llm:") else "rules"},
                )
            )
    add_memories(store, memories)
    stamps = [aware(r.created_utc) for r in scanned if r.created_utc is not None]
    if user_id is None and stamps:
        store.set_state(_WATERMARK, max(stamps).isoformat())
    return {
        "preferences": sum(m.kind == "preference" for m in memories),
        "facts": sum(m.kind == "fact" for m in memories),
    }
