"""Cited sources in legal and tax writing: robust patterns, and keys that make citations comparable.

Each citation found gets a ``kind`` and a normalised ``key``; two citations
are the same source when their keys (or aliases) meet. Normalisation is what
lets "26 U.S.C. § 162(a)", "IRC §162(a)", "I.R.C. § 162(a)" and "section
162(a) of the Code" all count as one source, and "Revenue Ruling 99-7" match
"Rev. Rul. 99-7".

==========  ===========================================  ======================
kind        written as                                   key
==========  ===========================================  ======================
irc         26 U.S.C. § 162(a), IRC §1031, section       ``irc:162(a)``
            61(a) of the Code, §§ 167 and 168
usc         42 U.S.C. § 1983                             ``usc:42:1983``
reg         Treas. Reg. § 1.263(a)-3(h), Reg. §1.274-5T  ``reg:1.263(a)-3(h)``
state       Cal. Rev. & Tax. Code § 17041                ``state:calrevtaxcode:17041``
case        Commissioner v. Glenshaw Glass Co., 348      ``case:348us426`` (alias: the parties)
            U.S. 426 (1955); Cohan v. Commissioner, 39
            F.2d 540; T.C. Memo. 2014-123
revrul      Rev. Rul. 99-7, Revenue Ruling 99-7          ``revrul:99-7``
revproc     Rev. Proc. 2015-20                           ``revproc:2015-20``
notice      Notice 2020-32                               ``notice:2020-32``
ruling      PLR 201234005, TAM, CCA, Private Letter      ``plr:201234005``
            Ruling ...
td          T.D. 9636                                    ``td:9636``
pub         IRS Publication 535, Pub. 463                ``pub:535``
url         https://www.irs.gov/pub/irs-drop/n-20-32.pdf ``url:irs.gov/pub/irs-drop/n-20-32.pdf``
docid       TM-2023-0147, Doc. No. 48812                 ``doc:tm-2023-0147``
act         section 530 of the Revenue Act of 1978       ``act:revenueactof1978:530``
ann         Announcement 2012-45                         ``ann:2012-45``
publaw      Public Law 86-272, Pub. L. 115-97            ``pl:86-272``
==========  ===========================================  ======================

Patterns run in the order above (most specific first); a later match that
overlaps an earlier one is dropped, so "26 U.S.C. § 162" is not also read as
a bare "§ 162", and a case's reporter cite is not also read as a case name.
Pin cites ("348 U.S. at 431") and "Id." are deliberately not citations: they
repeat a source already cited.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Citation", "extract_citations", "citation_keys", "match_citations", "CITATION_KINDS"]

CITATION_KINDS = (
    "irc",
    "usc",
    "reg",
    "state",
    "case",
    "revrul",
    "revproc",
    "notice",
    "ruling",
    "td",
    "pub",
    "url",
    "docid",
    "act",
    "ann",
    "publaw",
)


@dataclass
class Citation:
    raw: str
    kind: str
    key: str
    aliases: list[str] = field(default_factory=list)
    method: str = "pattern"  # pattern | llm
    start: int = -1

    @property
    def keys(self) -> set[str]:
        return {self.key, *self.aliases}

    def as_dict(self) -> dict[str, Any]:
        return {"raw": self.raw, "kind": self.kind, "key": self.key, "aliases": self.aliases, "method": self.method}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Citation:
        return cls(
            raw=d["raw"],
            kind=d["kind"],
            key=d["key"],
            aliases=list(d.get("aliases") or []),
            method=d.get("method", "pattern"),
        )


_SEC = r"\d{1,4}(?!\d)[A-Z]{0,2}(?:\([A-Za-z0-9]{1,4}\))*"  # 162, 1031(a)(1), 45L, 179D
_REGNUM = r"\d{1,3}[a-z]?\.\d{1,5}[A-Za-z]{0,2}(?:\([A-Za-z0-9]{1,4}\))*-\d{1,3}[A-Z]{0,2}(?:\([A-Za-z0-9]{1,4}\))*"
_LIST_SEP = r"\s*(?:,\s*(?:and|or)?|and|or|through|to|&)\s*"
_SECSYM = r"(?:§§?|[Ss]ec(?:tion)?s?\.?)"

_USC = re.compile(rf"\b(\d{{1,2}})\s*U\.?\s?S\.?\s?C\.?(?:A\.)?\s*(?:{_SECSYM})?\s*({_SEC}(?:{_LIST_SEP}{_SEC})*)")
_IRC = re.compile(
    rf"(?:\bI\.?\s?R\.?\s?C\.?|\bInternal Revenue Code(?: of 1986)?|\bthe Code|\bCode)\s*(?:{_SECSYM})?\s*"
    rf"({_SEC}(?:{_LIST_SEP}{_SEC})*)"
)
_SEC_OF_CODE = re.compile(rf"\b{_SECSYM}\s*({_SEC}(?:{_LIST_SEP}{_SEC})*)\s+of the (?:Internal Revenue )?Code\b")
_REG = re.compile(
    rf"(?:\b(?:Temp\.|Temporary|Prop\.|Proposed)\s+)?(?:\bTreas(?:ury)?\.?\s+Regs?(?:ulations?)?\.?|\bRegs?\.|\bRegulations?)"
    rf"\s*(?:{_SECSYM})?\s*({_REGNUM}(?:{_LIST_SEP}{_REGNUM})*)"
)
_BARE_REG = re.compile(rf"§§?\s*({_REGNUM}(?:{_LIST_SEP}{_REGNUM})*)")
_BARE_SEC = re.compile(
    rf"(?:(?P<sym>§§?)\s*|\b[Ss]ections?\s+(?=\d{{2,4}}[A-Z]{{0,2}}\b|\d+[A-Z]{{0,2}}\())({_SEC}(?:{_LIST_SEP}{_SEC})*)"
)
_STATE_NAMES = (
    r"Ala|Alaska|Ariz|Ark|Cal|Calif|California|Colo|Colorado|Conn|Del|D\.C|Fla|Florida|Ga|Georgia|Haw|Idaho|Ill|"
    r"Illinois|Ind|Iowa|Kan|Ky|La|Me|Md|Mass|Massachusetts|Mich|Minn|Miss|Mo|Mont|Neb|Nev|N\.H|N\.J|N\.M|N\.Y|"
    r"New York|N\.C|N\.D|Ohio|Okla|Or|Oregon|Pa|R\.I|S\.C|S\.D|Tenn|Tex|Texas|Utah|Vt|Va|Virginia|Wash|W\.Va|Wis|Wyo"
)
_STATE = re.compile(
    rf"\b((?:{_STATE_NAMES})\.?\s+(?:[A-Z][a-z]{{1,12}}\.?\s+|&\s+){{0,5}}(?:Code|Law|Laws|Stat\.|Statutes)(?:\s+Ann\.)?)\s*§§?\s*"
    r"(\d[\d.\-]*\d(?:\([a-z0-9]+\))*|\d)"
)
_REPORTER = (
    r"U\.\s?S\.|S\.\s?Ct\.|L\.\s?Ed\.(?:\s?2d)?|F\.\s?(?:2d|3d|4th)|F\.\s?Supp\.(?:\s?(?:2d|3d))?|F\.|"
    r"T\.\s?C\.|B\.\s?T\.\s?A\.|Fed\.\s?Cl\.|Cl\.\s?Ct\.|Ct\.\s?Cl\.|A\.F\.T\.R\.(?:\s?2d)?|AFTR(?:\s?2d)?|"
    r"U\.S\.T\.C\.|USTC"
)
_ABBR = r"(?:Co|Inc|Corp|Ltd|Bros|Mfg|Jr|Sr|St|Ass'n|Nat'l|Int'l|Comm'r|Dep't|Bd|Cnty|Cos|Sys|Grp|U\.S|N\.A)\."
_TOKEN = rf"(?:{_ABBR}|[A-Z][\w'&\-]*)"  # a word of a party's name; a full stop ends the name unless an abbreviation
_PARTY = rf"{_TOKEN}(?:,\s+{_ABBR}|\s+(?:{_TOKEN}|of|the|and|&|de)){{0,7}}"
_CASE_FULL = re.compile(
    rf"(?P<name>(?:In re|Estate of)?\s*{_PARTY}\s+vs?\.?\s+{_PARTY}),?\s+"
    rf"(?P<vol>\d{{1,4}})\s+(?P<rep>{_REPORTER})\s*(?P<page>\d{{1,5}})"
    rf"(?:\s*\((?P<court>[^()]{{0,40}}?\d{{4}})\))?"
)
_CITE_ONLY = re.compile(rf"\b(?P<vol>\d{{1,4}})\s+(?P<rep>{_REPORTER})\s*(?P<page>\d{{1,5}})\b(?!\s*[-–]?\s*\d)")
_TC_MEMO = re.compile(r"\bT\.\s?C\.\s?(?:Memo(?:randum)?\.?|Summ(?:ary)?\.?\s?Op(?:inion)?\.?)\s*(\d{4})-(\d{1,4})")
_CASE_NAME = re.compile(
    rf"(?<![\w.])(?P<name>{_PARTY}\s+vs?\.?\s+"
    rf"(?:Commissioner|Comm'r|United States|{_TOKEN}(?:\s+(?:{_TOKEN}|of|the|&)){{0,5}}))"
)
_ACT = re.compile(
    r"\b[Ss]ec(?:tion|\.)\s+(\d{1,4}[a-z]?(?:\([a-z0-9]{1,4}\))*)\s+of\s+the\s+((?:[A-Z][\w\-]*,?\s+|of\s+|and\s+)*?Act(?:,?\s+(?:of\s+)?\d{4})?)"
)
_REVRUL = re.compile(r"\b(?:Rev\.\s?Rul\.|Revenue Ruling)\s*(\d{2,4})-(\d{1,4})")
_REVPROC = re.compile(r"\b(?:Rev\.\s?Proc\.|Revenue Procedure)\s*(\d{2,4})-(\d{1,4})")
_ANN = re.compile(r"\b(?:IRS\s+)?(?:Announcement|Ann\.)\s+(\d{2,4})-(\d{1,4})")
_PUBLAW = re.compile(r"\b(?:Public Law|Pub\.\s?L\.(?:\s?No\.)?|P\.\s?L\.)\s*(\d{2,3})-(\d{1,4})")
_NOTICE = re.compile(r"\b(?:IRS\s+)?Notice\s+(\d{2,4})-(\d{1,4})")
_RULING = re.compile(
    r"\b(PLR|TAM|CCA|FSA|Priv\.\s?Ltr\.\s?Rul\.|Private Letter Ruling|Technical Advice Memorandum|"
    r"Chief Counsel Advice)\s*(?:No\.\s*)?(\d{9}|\d{4}-\d{2}-\d{3}|\d{4}-\d{2,3})\b"
)
_TD = re.compile(r"\b(?:T\.\s?D\.|Treasury Decision)\s*(\d{4})")
_PUB = re.compile(r"\b(?:IRS\s+)?(?:Publication|Pub\.)\s*(\d{1,4}(?:-?[A-Z])?)\b")
_URL = re.compile(r"\bhttps?://[^\s<>\"'\])]+|\bwww\.[a-z0-9\-]+\.[a-z]{2,}[^\s<>\"'\])]*", re.IGNORECASE)
_DOCID = re.compile(
    r"\b(?:(?P<pre>[A-Z]{2,6})-(?P<y>\d{4})-(?P<n>\d{2,6})"
    r"|Doc(?:ument)?\.?\s*(?:No\.|#|ID:?)\s*(?P<d>[A-Z0-9][A-Z0-9\-]{3,}))\b"
)

_RULING_NORM = {
    "plr": "plr",
    "privltrrul": "plr",
    "privateletterruling": "plr",
    "tam": "tam",
    "technicaladvicememorandum": "tam",
    "cca": "cca",
    "chiefcounseladvice": "cca",
    "fsa": "fsa",
}
_PARTY_NORM = [
    (re.compile(r"\bcomm'?r\b|\bcommissioner of internal revenue\b"), "commissioner"),
    (re.compile(r"\bu\.?\s?s\.?(?=\s|$)|\bunited states of america\b"), "united states"),
    (re.compile(r"\b(?:inc|co|corp|corporation|company|ltd|llc|lp|the|et al)\b\.?"), ""),
]


def _squash(s: str) -> str:
    return re.sub(r"[^a-z0-9]", "", s.lower())


def _split_list(s: str, unit: str) -> list[str]:
    return [m.group(0) for m in re.finditer(unit, s)]


def _sec_key(sec: str) -> str:
    return re.sub(r"\s+", "", sec)


def _party_key(name: str) -> str:
    n = name.lower().replace("’", "'")
    n = re.sub(r"^(?:see also|see|cf\.|accord|in re|estate of)\s+", "", n)
    for pat, rep in _PARTY_NORM:
        n = pat.sub(rep, n)
    parts = [re.sub(r"[^a-z0-9 ]", " ", p) for p in re.split(r"\s+vs?\.?\s+", n, maxsplit=1)]
    parts = [" ".join(p.split()) for p in parts]
    return "case:" + " v ".join(parts)


def _norm_url(u: str) -> str:
    u = u.rstrip(".,;:)")
    u = re.sub(r"^https?://", "", u, flags=re.IGNORECASE)
    host, _, path = u.partition("/")
    host = host.lower().removeprefix("www.")
    path = path.split("#", 1)[0].rstrip("/")
    return "url:" + host + ("/" + path if path else "")


class _Spans:
    def __init__(self) -> None:
        self.spans: list[tuple[int, int]] = []

    def free(self, a: int, b: int) -> bool:
        return all(b <= s or a >= e for s, e in self.spans)

    def take(self, a: int, b: int) -> None:
        self.spans.append((a, b))


_LEAD = re.compile(
    r"^(?:(?:See also|See, e\.g\.,|See generally|See|Cf\.|Accord|But see|Compare|In|Under|And|The|As|Applying|"
    r"Following|Citing|Unlike|Like|Per|Both|Thus|Here|Also|Later|Moreover|However|Because|Since|After|Before|"
    r"While|Although|Only|Relying on|Consistent with|Contrast)[,]?\s+)+"
)


def extract_citations(text: str) -> list[Citation]:
    """Every cited source in ``text``, deduplicated by key, in order of first appearance."""
    spans = _Spans()
    found: list[Citation] = []

    def add(a: int, b: int, kind: str, key: str, aliases: Iterable[str] = (), raw: str | None = None) -> None:
        found.append(Citation(raw or text[a:b].strip(), kind, key, [x for x in aliases if x != key], start=a))

    def scan(pat: re.Pattern[str], handle: Any) -> None:
        # Not finditer: a match that overlaps a taken span is retried one character on, so a case name
        # that greedily began inside the previous citation ("...of the Code. In Commissioner v. ...") is found.
        pos = 0
        while (m := pat.search(text, pos)) is not None:
            if spans.free(m.start(), m.end()) and handle(m) is not False:
                spans.take(m.start(), m.end())
                pos = max(m.end(), m.start() + 1)
            else:
                pos = m.start() + 1

    def on_url(m: re.Match[str]) -> None:
        add(m.start(), m.end(), "url", _norm_url(m.group(0)), raw=m.group(0).rstrip(".,;:)"))

    def on_act(m: re.Match[str]) -> None:
        act = re.sub(r"^the\s+", "", m.group(2).strip().rstrip(","))
        add(m.start(), m.end(), "act", f"act:{_squash(act)}:{m.group(1)}", raw=f"§ {m.group(1)} of the {act}")

    def on_usc(m: re.Match[str]) -> None:
        title = int(m.group(1))
        for sec in _split_list(m.group(2), _SEC):
            key = f"irc:{_sec_key(sec)}" if title == 26 else f"usc:{title}:{_sec_key(sec)}"
            add(m.start(), m.end(), "irc" if title == 26 else "usc", key, raw=f"{title} U.S.C. § {sec}")

    def on_reg(m: re.Match[str]) -> None:
        for num in _split_list(m.group(1), _REGNUM):
            add(m.start(), m.end(), "reg", f"reg:{_sec_key(num)}", raw=f"Treas. Reg. § {num}")

    def on_irc(m: re.Match[str]) -> bool | None:
        secs = _split_list(m.group(m.re.groups), _SEC)
        if not secs:
            return False
        if "sym" in m.re.groupindex and not m.group("sym"):
            # "Section 530 relief" after "section 530 of the Revenue Act of 1978": the Act's section, not the Code's.
            acts = {c.key.rsplit(":", 1)[1] for c in found if c.kind == "act"}
            secs = [s for s in secs if s not in acts]
            if not secs:
                return False
        for sec in secs:
            add(m.start(), m.end(), "irc", f"irc:{_sec_key(sec)}", raw=f"IRC § {sec}")
        return None

    def on_state(m: re.Match[str]) -> bool | None:
        code = m.group(1)
        if re.search(r"Internal Revenue|U\.?S\.?C", code):
            return False
        code = _LEAD.sub("", code)
        if len(code.split()) < 2:
            return False
        add(m.start(), m.end(), "state", f"state:{_squash(code)}:{m.group(2)}", raw=f"{code.strip()} § {m.group(2)}")
        return None

    def on_case(m: re.Match[str]) -> None:
        name = _LEAD.sub("", m.group("name").strip())
        key = f"case:{m.group('vol')}{_squash(m.group('rep'))}{m.group('page')}"
        raw = text[m.start("name") + (len(m.group("name")) - len(m.group("name").lstrip())) : m.end()]
        add(m.start(), m.end(), "case", key, [_party_key(name)], raw=_LEAD.sub("", raw.strip()))

    def on_tcmemo(m: re.Match[str]) -> None:
        # A T.C. Memo. cite often follows the case name: take the name along as an alias.
        before = text[max(0, m.start() - 120) : m.start()]
        nm = list(_CASE_NAME.finditer(before))
        aliases = []
        a = m.start()
        if nm and before[nm[-1].end() :].strip(" ,\n\t") == "":
            aliases.append(_party_key(_LEAD.sub("", nm[-1].group("name"))))
            a = m.start() - len(before) + nm[-1].start()
        key = f"case:tcmemo{m.group(1)}-{int(m.group(2))}"
        add(a, m.end(), "case", key, aliases, raw=_LEAD.sub("", text[a : m.end()].strip()))
        spans.take(a, m.end())

    def on_cite_only(m: re.Match[str]) -> None:
        add(m.start(), m.end(), "case", f"case:{m.group('vol')}{_squash(m.group('rep'))}{m.group('page')}")

    def on_case_name(m: re.Match[str]) -> bool | None:
        name = _LEAD.sub("", m.group("name").strip())
        if len(name) < 6 or not re.match(r"[A-Z]", name):
            return False
        add(m.start(), m.end(), "case", _party_key(name), raw=name)
        return None

    def simple(kind: str, fmt: str) -> Any:
        def h(m: re.Match[str]) -> None:
            add(m.start(), m.end(), kind, fmt.format(*m.groups()))

        return h

    def on_ruling(m: re.Match[str]) -> None:
        num = m.group(2)
        num = num.replace("-", "") if len(num) in (9, 11) else num  # 2012-34-005 is PLR 201234005
        add(m.start(), m.end(), "ruling", f"{_RULING_NORM.get(_squash(m.group(1)), 'plr')}:{num}")

    def on_docid(m: re.Match[str]) -> bool | None:
        if m.group("pre"):
            if m.group("pre") in {"PLR", "TAM", "CCA", "TD", "IRC", "USC"}:
                return False
            add(m.start(), m.end(), "docid", f"doc:{m.group(0).lower()}")
        else:
            add(m.start(), m.end(), "docid", f"doc:{m.group('d').lower()}")
        return None

    scan(_URL, on_url)
    scan(_ACT, on_act)
    scan(_USC, on_usc)
    scan(_REG, on_reg)
    scan(_BARE_REG, on_reg)
    scan(_STATE, on_state)
    scan(_SEC_OF_CODE, on_irc)
    scan(_IRC, on_irc)
    scan(_BARE_SEC, on_irc)
    scan(_TC_MEMO, on_tcmemo)
    scan(_CASE_FULL, on_case)
    scan(_CITE_ONLY, on_cite_only)
    scan(_REVRUL, simple("revrul", "revrul:{}-{}"))
    scan(_REVPROC, simple("revproc", "revproc:{}-{}"))
    scan(_NOTICE, simple("notice", "notice:{}-{}"))
    scan(_ANN, simple("ann", "ann:{}-{}"))
    scan(_PUBLAW, simple("publaw", "pl:{}-{}"))
    scan(_RULING, on_ruling)
    scan(_TD, simple("td", "td:{}"))
    scan(_PUB, lambda m: add(m.start(), m.end(), "pub", f"pub:{_squash(m.group(1))}"))
    scan(_DOCID, on_docid)
    scan(_CASE_NAME, on_case_name)
    found.sort(key=lambda c: c.start)
    return _merge(found)


def _merge(cits: Sequence[Citation]) -> list[Citation]:
    """One citation per source: a later mention whose keys meet an earlier one's is folded into it.

    This is also how a bare case name ("Glenshaw Glass") later in a memo folds into the full cite."""
    out: list[Citation] = []
    for c in cits:
        same = next((o for o in out if o.keys & c.keys), None)
        if same is None:
            out.append(c)
        else:
            for k in c.keys - same.keys:
                if k != same.key:
                    same.aliases.append(k)
    return out


def citation_keys(cits: Iterable[Citation | dict[str, Any]]) -> list[set[str]]:
    return [(c if isinstance(c, Citation) else Citation.from_dict(c)).keys for c in cits]


def match_citations(
    predicted: Sequence[Citation | dict[str, Any]], truth: Sequence[Citation | dict[str, Any]]
) -> dict[str, Any]:
    """Citation precision and recall: a prediction is right when its keys meet an unmatched truth's keys."""
    pk, tk = citation_keys(predicted), citation_keys(truth)
    used: set[int] = set()
    tp = 0
    for p in pk:
        j = next((j for j, t in enumerate(tk) if j not in used and p & t), None)
        if j is not None:
            used.add(j)
            tp += 1
    precision = tp / len(pk) if pk else (1.0 if not tk else 0.0)
    recall = tp / len(tk) if tk else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "predicted": len(pk),
        "truth": len(tk),
        "matched": tp,
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "f1": round(f1, 4),
        "missed": [sorted(t)[0] for j, t in enumerate(tk) if j not in used],
    }
