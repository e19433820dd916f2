"""Scorers for eval outputs: reference match, distance from a known mistake, a rubric LLM judge.

The reference-match score is the mean of two views of agreement: SQuAD-style
token F1 over normalised text (lower case, no punctuation or articles), which
rewards the exact facts, and MiniLM cosine similarity, which forgives
paraphrase. Both lie in [0, 1]. Both are also fooled by a wrong number in
the right sentence ("5 miles is 3.1 km" against "5 miles is 8.05 km"), so the
mean is multiplied by the share of the reference's *answer numbers* (those
not already in the request) that the output states.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Any

import numpy as np

from afterword.llm import LLMClient

__all__ = [
    "normalise",
    "token_f1",
    "numbers_recall",
    "numbers_in",
    "reference_match",
    "similarities",
    "rubric_score",
    "RUBRIC_PROMPT",
]

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


_NUM = re.compile(r"(?<![\w.])-?\d+(?:[.,]\d+)?")


def numbers_in(text: str) -> set[str]:
    """The numbers in ``text``, decimals normalised ("8.050" and "8,05" -> "8.05")."""
    return {n.replace(",", ".").rstrip("0").rstrip(".") if "." in n or "," in n else n for n in _NUM.findall(text)}


# "120-130", "2 to 3"; not a date or code such as 2023-05-08 (a third part) or 555-0134 (a leading zero).
_RANGE = re.compile(
    r"(?<![\w.\-/])([1-9]\d*(?:[.,]\d+)?|0[.,]\d+)\s*(?:-|–|—|to)\s*([1-9]\d*(?:[.,]\d+)?|0[.,]\d+)"
    r"(?![\w.,]*\d|\s*[-–/]\s*\d)"
)


def _value(n: str) -> float:
    return float(n.replace(",", "."))


def numbers_recall(prediction: str, reference: str, request: str = "") -> float | None:
    """Share of the reference's numbers (minus those in the request) found in the prediction; None if none.

    A range in the reference ("120-130 g", "2 to 3 days") is one number, stated when the prediction
    gives the range or any number inside it.

    >>> numbers_recall("It is 3.1 km", "5 miles is 8.05 km", "5 miles in km?")
    0.0
    >>> numbers_recall("about 8.05 km", "5 miles is 8.05 km", "5 miles in km?")
    1.0
    >>> numbers_recall("About 125 g per US cup.", "About 125 g (120-130 g).")
    1.0
    >>> numbers_recall("About 140 g.", "About 125 g (120-130 g).")
    0.0
    >>> numbers_recall("It shipped on 2023-05-09", "It shipped on 2023-05-08")
    0.6666666666666666
    """
    asked = numbers_in(request)
    ranges = [(a, b) for a, b in _RANGE.findall(reference)]
    in_ranges = {x for a, b in ranges for x in numbers_in(f"{a} {b}")}
    singles = numbers_in(reference) - asked - in_ranges
    ranges = [(a, b) for a, b in ranges if not numbers_in(f"{a} {b}") <= asked]
    if not singles and not ranges:
        return None
    said = numbers_in(prediction)
    values = [_value(n) for n in said]
    hits = len(singles & said)
    for a, b in ranges:
        lo, hi = sorted((_value(a), _value(b)))
        hits += any(lo <= v <= hi for v in values)
    return hits / (len(singles) + len(ranges))


def reference_match(prediction: str, reference: str, similarity: float, request: str = "") -> dict[str, float]:
    """The reference-match score and its parts, given the precomputed embedding ``similarity``."""
    f1 = token_f1(prediction, reference)
    out = {"reference_f1": round(f1, 4), "reference_sim": round(similarity, 4)}
    score = (f1 + similarity) / 2
    nums = numbers_recall(prediction, reference, request)
    if nums is not None:
        out["reference_numbers"] = round(nums, 4)
        score *= nums
    out["reference"] = round(score, 4)
    return out


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
