"""Hindsight signals: what the user did next, read as evidence about a response.

Each detector is small and explainable. Lexical cues are regular expressions
over one user message (gratitude, acceptance, complaint, correction,
reported outcome, explicit thumbs or rating, ...). Structural signals look
at the conversation around the response: a rephrased request (embedding
similarity between consecutive user requests), abandonment (the
conversation ends right after the response with no acknowledgement), and a
return to the same topic in a later conversation.

The cue counts also feed the learned head (:mod:`afterword.judge.features`),
so the same definitions serve as features and as human-readable evidence.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

__all__ = [
    "CUES",
    "CUE_POLARITY",
    "Signal",
    "cue_counts",
    "cue_vector",
    "lexical_signals",
    "explicit_rating",
    "rephrase_signal",
    "abandonment_signal",
]


def _rx(*patterns: str) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE)


# Order matters: it is the column order of the cue block in the feature vector.
CUES: dict[str, re.Pattern[str]] = {
    "gratitude": _rx(r"\bthank", r"\bthanks?\b", r"\bthx\b", r"\bty\b", r"\bappreciate", r"\bcheers\b"),
    "praise": _rx(
        r"\b(great|perfect|awesome|excellent|wonderful|fantastic|amazing|brilliant|helpful|nice)\b",
        r"\blove (it|that)\b",
        r"\bwell done\b",
    ),
    "acceptance": _rx(
        r"^\s*(yes|yeah|yep|yup|sure|ok(ay)?|alright|fine|great|perfect|sounds good)\b",
        r"\b(sounds|looks) (good|great|fine|perfect)\b",
        r"\bthat('s| is| will| would)? (work|do|be fine|be great|be perfect)",
        r"\bplease (book|reserve|go ahead)\b",
        r"\bgo ahead\b",
        r"\blet'?s do (it|that)\b",
    ),
    "complaint": _rx(
        r"\b(useless|terrible|awful|horrible|annoying|ridiculous|stupid|frustrat\w*|disappoint\w*)\b",
        r"\b(doesn'?t|does not|didn'?t|did not) (help|make sense|answer)\b",
        r"\bnot (helpful|useful|what i (want|need|asked))",
        r"\bwaste of time\b",
        r"\bugh+\b",
        r"\bwhy (can'?t|won'?t|didn'?t|did) you\b",
        r"\bunfortunate\b",
        r"\bthat'?s (bad|too bad|a shame)\b",
        r"\bhmm+\b",
    ),
    "correction": _rx(
        r"^\s*no\b",
        r"\b(that'?s|that is|you'?re|you are) (not|wrong|incorrect)",
        r"\b(wrong|incorrect|mistake|mistaken)\b",
        r"\bi (said|asked|meant|told you|wanted|need(ed)?)\b.*\bnot\b",
        r"\bi (said|asked for|meant|told you)\b",
        r"\bactually\b",
        r"\binstead\b",
        r"\bnot (that|this|what)\b",
        r"\bi didn'?t (ask|say|want)\b",
    ),
    "negation": _rx(r"\bno\b", r"\bnot\b", r"n'?t\b", r"\bnever\b", r"\bnothing\b", r"\bnone\b"),
    "confusion": _rx(
        r"\b(confus\w*|unclear)\b",
        r"\bi don'?t (understand|get it)\b",
        r"\bwhat do you mean\b",
        r"^\s*what\?*\s*$",
        r"\b(again|repeat)\b",
        r"\bsorry\??\s*$",
    ),
    "outcome_success": _rx(
        r"\b(it|that|this) (worked|works|fixed|solved)\b",
        r"\bworks (now|perfectly|great)\b",
        r"\b(fixed|solved) (it|the)\b",
        r"\bproblem (is )?solved\b",
        r"\bthat did (it|the trick)\b",
    ),
    "outcome_failure": _rx(
        r"\bstill (not|doesn'?t|isn'?t|fail|failing|broken|getting|get|the same|wrong|error|no)\b",
        r"\b(doesn'?t|does not|didn'?t|did not|won'?t|isn'?t) work",
        r"\bsame (error|problem|issue)\b",
        r"\b(error|exception|traceback|crash(es|ed)?)\b",
        r"\bnot working\b",
    ),
    "closing": _rx(
        r"\b(good ?bye|bye)\b",
        r"\bthat('s| is| will be) (all|it|everything)\b",
        r"\b(nothing|no) (else|more)\b",
        r"\ball set\b",
        r"\bhave a (good|great|nice)\b",
    ),
    "request": _rx(
        r"\b(can|could|would|will) you\b",
        r"\bi('d| would) like\b",
        r"\bi (need|want|am looking|'m looking)\b",
        r"\b(find|book|reserve|search|look for|get me|show me|tell me)\b",
    ),
    "question": re.compile(r"\?"),
    "thumbs_up": re.compile(r"(\U0001F44D|\+1\b|:\+1:|\bthumbs? up\b)", re.IGNORECASE),
    "thumbs_down": re.compile(r"(\U0001F44E|-1\b|:-1:|\bthumbs? down\b)", re.IGNORECASE),
    "exclaim": re.compile(r"!"),
}

# The direction each cue pushes a judgment when it is reported as evidence.
CUE_POLARITY: dict[str, float] = {
    "gratitude": 1.0,
    "praise": 1.0,
    "acceptance": 0.6,
    "complaint": -1.0,
    "correction": -0.8,
    "negation": -0.2,
    "confusion": -0.6,
    "outcome_success": 1.0,
    "outcome_failure": -1.0,
    "closing": 0.3,
    "request": 0.0,
    "question": 0.0,
    "thumbs_up": 1.0,
    "thumbs_down": -1.0,
    "exclaim": 0.0,
}

_RATING = re.compile(r"\b([1-5])\s*(?:/\s*5|out of 5|stars?)\b|\b(10|[0-9])\s*/\s*10\b", re.IGNORECASE)


@dataclass(frozen=True)
class Signal:
    """One detected signal: its name, signed strength in [-1, 1], and why."""

    name: str
    strength: float
    detail: str


def cue_counts(text: str) -> dict[str, int]:
    """How many times each cue matches ``text`` (only the non-zero ones).

    >>> cue_counts("Thanks, that worked!")
    {'gratitude': 1, 'acceptance': 1, 'outcome_success': 1, 'exclaim': 1}
    """
    return dict(_cue_items(text))


@lru_cache(maxsize=65536)
def _cue_items(text: str) -> tuple[tuple[str, int], ...]:
    # Memoised: a reaction's cues feed both its features and its evidence, and the same user
    # text is also the next response's request.
    out = []
    for name, rx in CUES.items():
        n = len(rx.findall(text))
        if n:
            out.append((name, n))
    return tuple(out)


def cue_vector(text: str) -> np.ndarray:
    """The cue block of a feature vector: log1p counts in :data:`CUES` order."""
    counts = cue_counts(text)
    return np.log1p(np.asarray([counts.get(n, 0) for n in CUES], dtype=np.float32))


def explicit_rating(text: str) -> float | None:
    """A rating written in the text ("4/5", "2 stars", "8/10") mapped to [-1, 1], or None."""
    m = _RATING.search(text)
    if not m:
        return None
    if m.group(1):
        return (int(m.group(1)) - 3) / 2
    return (int(m.group(2)) - 5) / 5


def lexical_signals(text: str) -> list[Signal]:
    """The polar cues in one user message, as signals (neutral cues are left out)."""
    out = []
    for name, n in cue_counts(text).items():
        pol = CUE_POLARITY[name]
        if pol:
            m = CUES[name].search(text)
            out.append(Signal(name, max(-1.0, min(1.0, pol * min(n, 2) / 2 + pol / 2)), m.group(0) if m else name))
    r = explicit_rating(text)
    if r is not None:
        out.append(Signal("explicit_rating", r, _RATING.search(text).group(0)))
    return out


def rephrase_signal(similarity: float, threshold: float) -> Signal | None:
    """A retry: the next request says nearly the same thing as the previous one."""
    if similarity < threshold:
        return None
    strength = -min(1.0, (similarity - threshold) / max(1e-6, 1 - threshold) * 0.5 + 0.5)
    return Signal("rephrase", strength, f"cosine {similarity:.2f} to the previous request")


def abandonment_signal(previous_reaction: str | None) -> Signal:
    """The conversation ends right after the response, with no acknowledgement.

    Leaving right after a thank-you or a goodbye is a normal ending, not an
    abandonment, so only a silent exit after a working exchange counts.
    """
    if previous_reaction and cue_counts(previous_reaction).keys() & {"gratitude", "closing"}:
        return Signal("ended_after_closing", 0.0, "the user had already closed the exchange")
    return Signal("abandonment", -0.3, "the conversation ends after this response with no reply")
