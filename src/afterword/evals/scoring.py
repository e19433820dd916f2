"""Scorers for eval outputs: reference match, distance from a known mistake, a rubric LLM judge.

The reference-match score is the mean of two views of agreement: SQuAD-style
token F1 over normalised text (lower case, no punctuation or articles), which
rewards the exact facts, and MiniLM cosine similarity, which forgives
paraphrase. Both lie in [0, 1].
"""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Any

import numpy as np

from afterword.llm import LLMClient

__all__ = ["normalise", "token_f1", "similarities", "rubric_score", "RUBRIC_PROMPT"]

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalise(text: str) -> list[str]:
    """Tokens of ``text`` lower-cased without punctuation and articles.

    >>> normalise("The answer is: 42!")
    ['answer', 'is', '42']
    """
    return _ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split()


def token_f1(prediction: str, reference: str) -> float:
    """Token-overlap F1 of the normalised texts.

    >>> token_f1("Paris is the capital", "the capital is Paris")
    1.0
    """
    p, r = normalise(prediction), normalise(reference)
    if not p or not r:
        return float(p == r)
    common = sum((Counter(p) & Counter(r)).values())
    if common == 0:
        return 0.0
    prec, rec = common / len(p), common / len(r)
    return 2 * prec * rec / (prec + rec)


def similarities(pairs: list[tuple[str, str]]) -> list[float]:
    """Cosine similarity (clipped to [0, 1]) of each pair, embedding each distinct text once."""
    if not pairs:
        return []
    from afterword.embed import get_embedder

    texts = sorted({x for p in pairs for x in p})
    pos = {s: i for i, s in enumerate(texts)}
    vecs = get_embedder().encode(texts)
    return [float(np.clip(vecs[pos[a]] @ vecs[pos[b]], 0.0, 1.0)) for a, b in pairs]


RUBRIC_PROMPT = """You grade an assistant's answer.
Request: {request}
{reference}Rubric: {rubric}
Answer: {answer}

Does the answer satisfy the rubric? Reply with JSON only: {{"score": <integer 1 to 5>, "reason": "<short>"}}"""


def rubric_score(
    judge: LLMClient, request: str, answer: str, rubric: str, reference: str | None = None
) -> tuple[float | None, str]:
    """A 1-5 grade from an LLM judge, mapped to [0, 1]; ``(None, reason)`` if it gave none."""
    ref = f"Reference answer: {reference}\n" if reference else ""
    prompt = RUBRIC_PROMPT.format(request=request[:1500], reference=ref, rubric=rubric, answer=answer[:2000])
    try:
        obj: Any = judge.chat_json([{"role": "user", "content": prompt}], max_tokens=96)
        raw = obj.get("score") if isinstance(obj, dict) else None
        grade = float(raw)  # type: ignore[arg-type]
    except (ValueError, TypeError, AttributeError) as exc:
        return None, f"no grade: {exc}"[:200]
    grade = min(5.0, max(1.0, grade))
    return (grade - 1) / 4, str(obj.get("reason", ""))[:200]
