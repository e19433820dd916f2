"""Reading expert documents (markdown, text, HTML, PDF) into plain text with their sections.

Everything downstream (citation extraction, the conclusion, the question a
memo answers) reads plain text, so each format is turned into lines where a
heading stays recognisable: markdown keeps its ``#`` headings, HTML headings
(``h1``-``h6``) become ``## `` lines, and link targets are written after the
link text so that a URL cited only in an ``href`` is still seen. PDFs are read
with pypdf; beautifulsoup4 and pypdf are the ``synth`` extra.

Sections are found by heading: a markdown heading, a short line in capitals,
a short line ending in a colon, or a known heading word ("Conclusion",
"Short answer", "Question presented", ...) on its own line or leading a
paragraph ("Conclusion. The tuition is ...").
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from afterword.errors import require

__all__ = ["Document", "read_document", "sections", "find_section", "SUFFIXES"]

SUFFIXES = {
    ".md": "md",
    ".markdown": "md",
    ".txt": "txt",
    ".text": "txt",
    ".html": "html",
    ".htm": "html",
    ".pdf": "pdf",
}


@dataclass
class Document:
    path: str
    format: str
    title: str
    text: str
    sha256: str


def read_document(path: str | Path) -> Document:
    """Read one file into a :class:`Document`; the format comes from the suffix."""
    p = Path(path)
    fmt = SUFFIXES.get(p.suffix.lower())
    if fmt is None:
        raise ValueError(f"unsupported artifact format: {p.name}")
    raw = p.read_bytes()
    if fmt == "pdf":
        text = _pdf_text(p)
        title = ""
    elif fmt == "html":
        text, title = _html_text(raw.decode("utf-8", "replace"))
    else:
        text = raw.decode("utf-8", "replace")
        if fmt == "md":
            text = _md_text(text)
        title = ""
    text = re.sub(r"[ \t\u00a0]+", " ", text)
    text = re.sub(r"\n\s*\n\s*\n+", "\n\n", text).strip()
    return Document(str(p), fmt, title or _guess_title(text, p), text, hashlib.sha256(raw).hexdigest())


def _md_text(text: str) -> str:
    text = re.sub(r"\*\*([^*]+)\*\*", r"\1", text)
    text = re.sub(r"(?<![\w*])\*([^*\n]+)\*(?!\w)", r"\1", text)
    text = re.sub(r"\[([^\]]+)\]\((https?://[^)\s]+)\)", r"\1 (\2)", text)
    return text


def _html_text(html: str) -> tuple[str, str]:
    require("bs4", "synth")
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html, "html.parser")
    title = soup.title.get_text(" ", strip=True) if soup.title else ""
    for tag in soup(["script", "style", "nav", "head", "noscript"]):
        tag.decompose()
    for a in soup.find_all("a", href=True):
        href = a["href"]
        if isinstance(href, str) and href.startswith(("http://", "https://")) and href not in a.get_text():
            a.append(f" ({href})")
    for h in soup.find_all(re.compile(r"^h[1-6]$")):
        h.insert(0, "\n## ")
        h.append("\n")
    for br in soup.find_all("br"):
        br.replace_with("\n")
    blocks = ["p", "div", "li", "tr", "section", "article", "header", "footer", "table", "ul", "ol"]
    for b in soup.find_all(blocks):
        b.append("\n")
    text = soup.get_text("")
    lines = [re.sub(r"\s+", " ", ln).strip() for ln in text.splitlines()]
    out = "\n".join(ln for ln in lines)
    return out, title


def _pdf_text(path: Path) -> str:
    require("pypdf", "synth")
    from pypdf import PdfReader

    reader = PdfReader(str(path))
    return "\n".join(page.extract_text() or "" for page in reader.pages)


def _guess_title(text: str, path: Path) -> str:
    for ln in text.splitlines():
        m = re.match(r"(?i)^\s*(?:re|subject)\s*:\s*(.+)", ln)
        if m:
            return m.group(1).strip()
    for ln in text.splitlines():
        s = ln.strip().lstrip("#").strip()
        if s and s.upper() not in {"MEMORANDUM", "MEMO"}:
            return s[:200]
    return path.stem


_HEADING_WORDS = (
    r"conclusions?|recommendations?(?: and conclusions?)?|short answers?|bottom line|summary|"
    r"questions?(?: presented)?|issues?(?: presented)?|facts|background|discussion|analysis|law and analysis|"
    r"recommendation and conclusion|answer"
)
_HEAD_LINE = re.compile(rf"(?i)^\s*(?:#+\s*)?({_HEADING_WORDS})\s*[:.]?\s*$")
_INLINE = re.compile(rf"(?i)^\s*({_HEADING_WORDS})\s*[:.]\s+(\S.*)$")


def _is_heading(line: str) -> bool:
    s = line.strip()
    if not s:
        return False
    if s.startswith("#") or _HEAD_LINE.match(s):
        return True
    letters = re.sub(r"[^A-Za-z]", "", s)
    return len(s) <= 60 and len(letters) >= 4 and letters.isupper()


def sections(text: str) -> list[tuple[str, str]]:
    """``(heading, body)`` pairs in order; text before the first heading has heading ``""``."""
    out: list[tuple[str, list[str]]] = [("", [])]
    for line in text.splitlines():
        m = _INLINE.match(line)
        if m:
            out.append((m.group(1), [m.group(2)]))
        elif _is_heading(line):
            out.append((line.strip().lstrip("#").strip().rstrip(":.").strip(), []))
        else:
            out[-1][1].append(line)
    return [(h, "\n".join(b).strip()) for h, b in out]


def find_section(text: str, *names: str, last: bool = True) -> str | None:
    """The body of the (last) section whose heading matches one of ``names`` (regexes, case-insensitive)."""
    hits = [
        body for head, body in sections(text) if body and any(re.fullmatch(f"(?i){n}", head.strip()) for n in names)
    ]
    if not hits:
        return None
    return hits[-1] if last else hits[0]
