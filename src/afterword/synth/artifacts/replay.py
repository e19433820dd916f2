"""Replay: give a model the reconstructed question and score its answer against the artifact.

The model (any OpenAI-compatible endpoint, or a pipeline behind one) gets the
question ``reverse`` reconstructed. Its answer is scored on two things:

- **citations**: the sources it cites are extracted with the same patterns as
  the artifact's and matched by normalised key (:func:`match_citations`), giving
  precision (how many of its citations the expert also relied on) and recall
  (how many of the expert's sources it found);
- **conclusion agreement**: with labelled options (from a labels file, or a
  memo whose conclusion opens with Yes/No), the model is asked to end with
  ``Answer: <option>`` and the option it picks is compared with the label;
  without them, an LLM judge compares the two conclusions (``agree``:
  true/false; an unusable reply leaves it undecided rather than guessed).

The report has one entry per artifact and an overall summary (micro- and
macro-averaged citation scores, agreement rate over decided artifacts).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from afterword.errors import UpstreamError
from afterword.synth.artifacts.citations import extract_citations, match_citations
from afterword.synth.artifacts.ingest import Artifact, list_artifacts

__all__ = ["ReplayReport", "replay", "pick_option", "judge_agreement"]

_SYSTEM = (
    "You are a tax research assistant. Answer the client's question. Cite the specific authorities you rely on "
    "(Internal Revenue Code sections, Treasury regulations, court cases, revenue rulings), and finish with a line "
    "'Conclusion: ...'."
)


def _norm(s: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9%$ ]", " ", s.lower()).split())


def _stems(s: str) -> list[str]:
    """Lower-cased tokens with common English suffixes cut, so "capitalize" meets "capitalized"."""
    out = []
    for w in _norm(s).split():
        for suf in ("ing", "ied", "ies", "ed", "es", "e", "s", "d", "y"):
            if w.endswith(suf) and len(w) - len(suf) >= 4:
                w = w[: -len(suf)]
                break
        out.append(w)
    return out


def pick_option(output: str, options: list[str]) -> str | None:
    """The option the output chose: from its ``Answer:`` line if any, else the last option it mentions.

    Longer options are tried first so that "not deductible" is not read as "deductible".

    >>> pick_option("... so it is not deductible.\\nAnswer: not deductible", ["deductible", "not deductible"])
    'not deductible'
    >>> pick_option("The company must capitalize the work.", ["deductible", "capitalized"])
    'capitalized'
    """
    m = list(re.finditer(r"(?im)^\s*\**\s*(?:final\s+)?answer\s*\**\s*[:\-]\s*(.+)$", output))
    zones = [m[-1].group(1)] if m else []
    zones.append(output)
    for zone in zones:
        z = _stems(zone)
        hits = []
        for opt in options:
            o = _stems(opt)
            hits += [(i, i + len(o), opt) for i in range(len(z) - len(o) + 1) if o and z[i : i + len(o)] == o]
        # A hit inside a longer option's hit is that longer option ("deductible" within "not deductible").
        hits = [h for h in hits if not any(o[0] <= h[0] and h[1] <= o[1] and o[1] - o[0] > h[1] - h[0] for o in hits)]
        if hits:
            return max(hits)[2]
    return None


_JUDGE = (
    "Do the two conclusions below reach the same bottom-line answer (ignore wording and level of detail)? "
    'Reply with JSON only: {"agree": true} or {"agree": false}.'
)


def judge_agreement(judge: Any, expected: str, output: str) -> bool | None:
    """An LLM judge's verdict on whether ``output`` reaches ``expected``'s conclusion; None when it does not say."""
    concl = re.split(r"(?i)\bconclusion\s*:", output)[-1].strip()[:1200] or output[-1200:]
    try:
        obj = judge.chat_json(
            [
                {"role": "system", "content": _JUDGE},
                {"role": "user", "content": f"EXPERT CONCLUSION:\n{expected[:1200]}\n\nMODEL CONCLUSION:\n{concl}"},
            ],
            max_tokens=30,
            temperature=0.0,
        )
    except (ValueError, TypeError, UpstreamError):
        return None
    v = obj.get("agree") if isinstance(obj, dict) else None
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.strip().lower() in {"true", "yes", "false", "no"}:
        return v.strip().lower() in {"true", "yes"}
    return None


@dataclass
class ReplayReport:
    model: str
    items: list[dict[str, Any]] = field(default_factory=list)

    def overall(self) -> dict[str, Any]:
        done = [i for i in self.items if "error" not in i]
        tp = sum(i["citations"]["matched"] for i in done)
        npred = sum(i["citations"]["predicted"] for i in done)
        ntruth = sum(i["citations"]["truth"] for i in done)
        decided = [i for i in done if i["conclusion"]["agree"] is not None]
        n = len(done) or 1
        return {
            "model": self.model,
            "artifacts": len(self.items),
            "errors": len(self.items) - len(done),
            "citation_precision_micro": round(tp / npred, 4) if npred else 0.0,
            "citation_recall_micro": round(tp / ntruth, 4) if ntruth else 0.0,
            "citation_precision_macro": round(sum(i["citations"]["precision"] for i in done) / n, 4),
            "citation_recall_macro": round(sum(i["citations"]["recall"] for i in done) / n, 4),
            "conclusion_decided": len(decided),
            "conclusion_agreement": round(sum(bool(i["conclusion"]["agree"]) for i in decided) / len(decided), 4)
            if decided
            else None,
            "by_method": {
                m: sum(1 for i in done if i["conclusion"]["method"] == m) for m in ("options", "judge", "none")
            },
        }

    def as_dict(self) -> dict[str, Any]:
        return {"overall": self.overall(), "artifacts": self.items}


def _ask(llm: Any, art: Artifact, max_tokens: int) -> str:
    rec = art.reconstruction or {}
    question = rec.get("question") or art.question or art.title
    system = _SYSTEM
    if art.options:
        system += " Then, on the last line, write 'Answer: ' followed by exactly one of: " + "; ".join(art.options)
    return str(
        llm.chat(
            [{"role": "system", "content": system}, {"role": "user", "content": question}],
            max_tokens=max_tokens,
            temperature=0.0,
        )
    )


def replay(
    store: Any,
    llm: Any,
    *,
    judge: Any | None = None,
    ids: list[str] | None = None,
    max_tokens: int = 400,
    progress: Callable[[int], None] | None = None,
) -> ReplayReport:
    """Ask ``llm`` every reversed artifact's question and score the answers (see the module docstring).

    ``judge`` (default: ``llm``) decides conclusion agreement for artifacts without labelled options."""
    judge = judge if judge is not None else llm
    report = ReplayReport(model=getattr(llm, "model", "unknown"))
    for art in list_artifacts(store, ids):
        if art.reconstruction is None:
            continue
        entry: dict[str, Any] = {"artifact_id": art.id, "path": art.path, "question": art.reconstruction["question"]}
        t0 = time.perf_counter()
        try:
            out = _ask(llm, art, max_tokens)
        except UpstreamError as exc:
            entry["error"] = str(exc)[:300]
            report.items.append(entry)
            if progress:
                progress(1)
            continue
        entry["latency_ms"] = round((time.perf_counter() - t0) * 1000, 1)
        predicted = extract_citations(out)
        entry["citations"] = match_citations(predicted, art.citations)
        entry["citations"]["cited"] = [c.key for c in predicted]
        if art.options and art.answer:
            chosen = pick_option(out, art.options)
            agree = None if chosen is None else _norm(chosen) == _norm(art.answer)
            entry["conclusion"] = {"method": "options", "chosen": chosen, "expected": art.answer, "agree": agree}
        elif art.conclusion:
            entry["conclusion"] = {"method": "judge", "agree": judge_agreement(judge, art.conclusion, out)}
        else:
            entry["conclusion"] = {"method": "none", "agree": None}
        entry["output"] = out[:2000]
        report.items.append(entry)
        if progress:
            progress(1)
    return report
