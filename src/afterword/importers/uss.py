"""Parser for the USS turn-level satisfaction files (Sun et al., SIGIR 2021).

Format, one utterance a line, tab-separated ``ROLE  text  action  ratings``,
a blank line between dialogues, and a closing ``USER  OVERALL    ratings``
line that rates the whole dialogue. Each USER line carries 3 to 7 crowd
ratings (1..5) of how satisfied the user is at that point, so a rating
grades the SYSTEM turn just before it, seen through the user's reaction.

The parser streams: one :class:`~afterword.records.Conversation` per
dialogue, with each user message's ratings in ``metadata`` and the OVERALL
ratings in ``conversation.metadata["overall"]``. A malformed line raises
:class:`~afterword.errors.ImportRecordError` naming the file, line and field;
the caller decides whether to skip the dialogue or abort.

:func:`rating_label` maps ratings to the 3 hindsight classes used by the
ASAP splits (mean below 3: 0, equal to 3: 1, above 3: 2), and
:func:`train_split` rebuilds the USS train split, which is the full file
minus every dialogue that appears in the ASAP valid or test splits.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from afterword.errors import ImportRecordError
from afterword.importers.base import decoded_lines, raise_errors
from afterword.records import Conversation, Message

__all__ = ["parse", "rating_label", "dialogue_key", "train_split"]

_ROLES = {"USER": "user", "SYSTEM": "assistant"}


def rating_label(ratings: list[int]) -> int:
    """The 3-class label of a list of 1..5 ratings: 0 dissatisfied, 1 neutral, 2 satisfied.

    >>> rating_label([3, 3, 2]), rating_label([3, 3]), rating_label([4, 3, 3])
    (0, 1, 2)
    """
    # Compare sums, not a float mean, so a mean of exactly 3 is never misread.
    total, n = sum(ratings), 3 * len(ratings)
    return 0 if total < n else (1 if total == n else 2)


def _ratings(path: str, lineno: int, raw: str) -> list[int]:
    try:
        values = [int(x) for x in raw.split(",")]
    except ValueError:
        raise ImportRecordError(path, lineno, "ratings", f"not a comma-separated list of integers: {raw!r}") from None
    if not values or any(not 1 <= v <= 5 for v in values):
        raise ImportRecordError(path, lineno, "ratings", f"ratings must be 1..5: {raw!r}")
    return values


def _conversation(path: str, stem: str, index: int, first_line: int, rows: list[tuple]) -> Conversation:
    messages: list[Message] = []
    overall = None
    for lineno, role, text, action, ratings in rows:
        if text == "OVERALL" and role == "USER":
            overall = {"ratings": ratings, "mean_rating": round(sum(ratings) / len(ratings), 2)}
            continue
        meta: dict = {"line": lineno}
        if action:
            meta["action"] = action
        if ratings is not None:
            meta["ratings"] = ratings
            meta["mean_rating"] = round(sum(ratings) / len(ratings), 2)
        messages.append(Message(role=_ROLES[role], content=text, metadata=meta))
    meta = {"dataset": "uss", "domain": stem, "dialogue_index": index, "line": first_line}
    if overall is not None:
        meta["overall"] = overall
    return Conversation(messages=messages, external_id=f"uss:{stem}:{index}", source="uss", metadata=meta)


def parse(path: str | Path) -> Iterator[Conversation]:
    """Stream the dialogues of a USS file, one Conversation each.

    A malformed line is yielded as an ImportRecordError and the rest of its dialogue is skipped.
    """
    path = str(path)
    stem = Path(path).stem
    rows: list[tuple] = []
    first_line = 0
    index = 0
    bad = False  # the current dialogue had a bad line: skip the rest of it
    with open(path, "rb") as fh:  # decoded line by line: bad UTF-8 is a clear ImportRecordError
        try:
            for lineno, line in enumerate(decoded_lines(path, fh), start=1):
                line = line.rstrip("\n").rstrip("\r")
                if not line.strip():
                    if rows and not bad:
                        yield _conversation(path, stem, index, first_line, rows)
                    if rows or bad:
                        index += 1
                    rows, bad = [], False
                    continue
                if bad:
                    continue
                try:
                    row = _row(path, lineno, line)
                except ImportRecordError as exc:  # yielded: the import goes on with the next dialogue
                    bad = True
                    yield exc  # type: ignore[misc]
                    continue
                if not rows:
                    first_line = lineno
                rows.append(row)
        except ImportRecordError as exc:  # undecodable bytes: nothing after them can be trusted
            yield exc  # type: ignore[misc]
            return
    if rows and not bad:
        yield _conversation(path, stem, index, first_line, rows)


def _row(path: str, lineno: int, line: str) -> tuple:
    fields = line.split("\t")
    if len(fields) != 4:
        raise ImportRecordError(path, lineno, None, f"expected 4 tab-separated fields, got {len(fields)}")
    role, text, action, raw = fields
    if role not in _ROLES:
        raise ImportRecordError(path, lineno, "role", f"expected USER or SYSTEM, got {role!r}")
    ratings = None
    if role == "USER":
        if not raw.strip():
            raise ImportRecordError(path, lineno, "ratings", "a USER line needs ratings")
        ratings = _ratings(path, lineno, raw.strip())
    elif raw.strip():
        raise ImportRecordError(path, lineno, "ratings", "a SYSTEM line carries no ratings")
    return (lineno, role, text, action, ratings)


def _norm(text: str) -> str:
    return " ".join(text.split()).lower()


def dialogue_key(turns: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """A matching key for a dialogue prefix: its (role, normalised text) pairs."""
    return tuple((role, _norm(text)) for role, text in turns)


def _prefix_keys(conv: Conversation) -> Iterator[tuple]:
    # Every prefix that ends on a user message: what an ASAP example holds.
    turns: list[tuple[str, str]] = []
    for m in conv.messages:
        turns.append((m.role, m.content))
        if m.role == "user":
            yield dialogue_key(turns)


def train_split(uss_path: str | Path, exclude: Iterable[Conversation]) -> Iterator[Conversation]:
    """The USS dialogues that share no rated prefix with any ``exclude`` conversation.

    ``exclude`` are the ASAP valid and test examples (see
    :mod:`afterword.importers.asap`); each is a prefix of one USS dialogue,
    so a USS dialogue is held out when any of its user-ending prefixes, or
    its opening exchange, matches one of them on role and
    whitespace/case-normalised text.
    """
    held: set[tuple] = set()
    openings: set[tuple] = set()
    for c in exclude:
        held.add(dialogue_key((m.role, m.content) for m in c.messages))
        openings.add(dialogue_key((m.role, m.content) for m in c.messages[:2]))
    for conv in raise_errors(parse(uss_path)):
        # A few ASAP turns differ from USS in spelling, so an equal opening
        # exchange also holds a dialogue out: this errs towards excluding.
        if dialogue_key((m.role, m.content) for m in conv.messages[:2]) in openings:
            continue
        if not any(k in held for k in _prefix_keys(conv)):
            yield conv
