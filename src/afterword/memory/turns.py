"""Episodic retrieval over raw conversation turns (what LoCoMo measures).

Lessons and preferences are distilled memories; sometimes the evidence is
just something said in a past session ("when did Caroline go to the support
group?"). :class:`TurnIndex` indexes one user's turns for that, in process;
:func:`afterword.memory.recall` builds it from the store and keeps it fresh.

Each turn is embedded once, as its text alone: the speaker's name is left out
of the vector because every question names someone, and a name in both the
question and a short turn ("Maria: Yeah, John!") made that turn look relevant.
For the same reason the speakers' names are taken out of the question before
it is embedded (:meth:`TurnIndex.query_vector`). Names still count, through
BM25 (which indexes ``"Speaker: text"``) and the ``speaker`` signal.

The hybrid score is a weighted sum of per-turn signals (:data:`FEATURES`):

- ``cos_turn`` / ``cos_context``: cosine of the question with the turn's
  vector and with its *context vector* (the normalised sum of its own and its
  ±1 same-session neighbours' vectors; no extra encoding);
- ``bm25_turn`` / ``bm25_window``: BM25 (light stemming) over the turn and
  over its ±1 window, each scaled by the query's best score;
- ``neighbour``: the best base score (the earlier fixed blend of the four
  above) among the ±1 neighbours, since an answer often sits one turn after
  the question that names the topic; ``prev_*`` / ``next_*``: the previous and
  next turn's own cosine and BM25, each on its own;
- ``session``: the mean of the three best base scores in the turn's session
  (a session about the topic);
- ``speaker``: the turn's speaker is named in the question; for turns stored
  from an app (speaker ``user`` or ``assistant``), a question in the first
  person ("my dog") names the user and one in the second ("you said") the
  assistant;
- ``date``: the question names a date ("on 9 November, 2022", "in May 2023")
  and the turn was said that day (1), within a week of it (½), in that
  month (1) or in the ten days after it (½); needs :attr:`Turn.time`;
- ``length``: log(1 + words): short acknowledgements rarely answer anything;
- ``question``: the turn is a question (:func:`asks`): it asks rather than
  tells, so it is rarely the evidence even when it matches;
- ``answer_cos`` / ``answer_bm25``: the previous turn's cosine and BM25 when
  that turn is a question, else 0: the reply to a question on the topic holds
  the answer ("How was the race?" → "Great, I finished in two hours"), which
  ``neighbour`` alone cannot tell from the reply to a statement ("My dog had
  surgery" → "I'm sorry to hear that").

The weights (a :class:`~afterword.memory.blend.Blend`, which can also weigh
products of pairs of signals; the shipped ones weigh the signals alone) are
fitted listwise on LoCoMo with :func:`afterword.memory.bench.fit_turn_weights`
(each question's softmax over its user's turns, towards its evidence turns;
signs bounded by :data:`SIGNS`), one set per encoder (:func:`encoder_weights`);
held-out checks are in ``docs/benchmarks.md``.

**The encoder.** Turns and questions are embedded by the *recall encoder*
(:func:`recall_encoder_path`): by default all-MiniLM-L6-v2 fine-tuned as a
question→turn encoder on LoCoMo (``afterword/memory/assets``, static int8,
faster than the general model's dynamic int8; trained by ``scripts/train_recall_encoder.py``, weights
in its JSON beside it). ``AFTERWORD_RECALL_ENCODER=general`` selects the
general MiniLM (and :data:`WEIGHTS`) instead; a path selects another ONNX
export of a MiniLM-L6, with its weights from a ``.json`` of the same name when
there is one. The fine-tuned weights are derived from LoCoMo (CC BY-NC 4.0):
see the assets folder's README.

``mode="dense"`` and ``mode="bm25"`` are the single-signal baselines
(turn cosine only, turn BM25 only).
"""

from __future__ import annotations

import calendar
import functools
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from afterword.embed import Embedder, get_embedder
from afterword.memory.blend import Blend
from afterword.memory.index import BM25

__all__ = [
    "Turn",
    "TurnIndex",
    "FEATURES",
    "WEIGHTS",
    "SIGNS",
    "GENERAL_WEIGHTS_FILE",
    "question_dates",
    "recall_encoder_path",
    "encoder_weights",
    "encoder_info",
    "encoder_document",
    "turn_documents",
    "previous_in_session",
    "asks",
    "DOCUMENT_KINDS",
    "RECALL_ENCODER_ENV",
]

#: Environment variable that picks the recall encoder: unset or ``default`` (the shipped fine-tuned one),
#: ``general`` (the general MiniLM), or a path to an ONNX export of a MiniLM-L6.
RECALL_ENCODER_ENV = "AFTERWORD_RECALL_ENCODER"
RECALL_ENCODER_FILE = "recall_encoder.onnx"

FEATURES = (
    "cos_turn",
    "cos_context",
    "bm25_turn",
    "bm25_window",
    "neighbour",
    "prev_cos",
    "next_cos",
    "prev_bm25",
    "next_bm25",
    "session",
    "speaker",
    "date",
    "length",
    "question",
    "answer_cos",
    "answer_bm25",
)

#: The sign a fitted blend must give each signal's own weight (:func:`afterword.memory.blend.fit_blend`): a turn
#: that matches the question better itself (its cosine or BM25, its context, its session, a named speaker or date,
#: its best neighbour, a question before it that it answers) never scores lower for it, a neighbour's own match
#: never counts for the turn beyond ``neighbour``, and a question never scores higher for being one.
#: Unconstrained, the listwise fit on LoCoMo gave the turn's own BM25 a negative weight and ranked an assistant's
#: reply ("I'm sorry to hear that") above the user's turn that answers the question.
SIGNS: dict[str, int] = {
    **dict.fromkeys(
        (
            "cos_turn",
            "cos_context",
            "bm25_turn",
            "bm25_window",
            "neighbour",
            "session",
            "speaker",
            "date",
            "answer_cos",
            "answer_bm25",
        ),
        1,
    ),
    **dict.fromkeys(("prev_cos", "next_cos", "prev_bm25", "next_bm25", "question"), -1),
}

#: File (in ``afterword/memory/assets``) of the general MiniLM's blend weights and their provenance.
GENERAL_WEIGHTS_FILE = "general_weights.json"


def _general_weights() -> dict[str, float]:
    path = Path(str(resources.files("afterword.memory") / "assets" / GENERAL_WEIGHTS_FILE))
    try:
        weights = json.loads(path.read_text(encoding="utf-8"))["weights"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RuntimeError(f"{path}: the general MiniLM's blend weights are missing or unreadable ({exc})") from exc
    return Blend(weights, FEATURES, source=f"{path}: field 'weights'").weights


#: Blend weights (:class:`~afterword.memory.blend.Blend`, over the signals of :data:`FEATURES`) for the
#: *general* MiniLM's vectors, fitted listwise on the 7 LoCoMo conversations of ``locomo_dev7.json`` by
#: ``scripts/train_recall_encoder.py`` and kept in ``assets/general_weights.json``. The fine-tuned recall
#: encoder's weights are in its JSON (:func:`encoder_weights`).
WEIGHTS: dict[str, float] = _general_weights()

_MONTHS = {m.lower(): i for i, m in enumerate(calendar.month_name) if m}
_MONTHS.update({m.lower(): i for i, m in enumerate(calendar.month_abbr) if m})
_MONTH = "(" + "|".join(sorted(_MONTHS, key=len, reverse=True)) + r")\.?"
_DMY = re.compile(rf"\b(\d{{1,2}})(?:st|nd|rd|th)?\s+{_MONTH},?\s+(\d{{4}})\b", re.I)
_MDY = re.compile(rf"\b{_MONTH}\s+(\d{{1,2}})(?:st|nd|rd|th)?,?\s+(\d{{4}})\b", re.I)
_MY = re.compile(rf"\b{_MONTH},?\s+(\d{{4}})\b", re.I)
_DAY = 86400.0
#: A question in the first person is about what the user said; in the second, about what the assistant said.
#: Turns stored from an app (speaker ``user`` / ``assistant``, their role) count as named by these.
_ROLE_PRONOUNS = {
    "user": re.compile(r"\b(?:i|me|my|mine|myself|i'm|i've|i'd|i'll|we|our|us)\b", re.I),
    "assistant": re.compile(r"\b(?:you|your|yours|yourself)\b", re.I),
}


@dataclass
class Turn:
    id: str
    session: str
    speaker: str
    text: str
    time: datetime | None = None


def _date(year: str, month: str, day: str = "1") -> datetime | None:
    try:
        return datetime(int(year), _MONTHS[month.lower().rstrip(".")], int(day), tzinfo=UTC)
    except (ValueError, KeyError):
        return None


def question_dates(question: str) -> list[tuple[str, datetime]]:
    """Dates a question names: ``("day", d)`` for "9 November, 2022" / "November 9, 2022", else ``("month", d)``."""
    days = [_date(m[3], m[2], m[1]) for m in _DMY.finditer(question)]
    days += [_date(m[3], m[1], m[2]) for m in _MDY.finditer(question)]
    out = [("day", d) for d in days if d]
    if not out:
        out = [("month", d) for d in (_date(m[2], m[1]) for m in _MY.finditer(question)) if d]
    return out


#: How a turn is written for its encoder: ``turn`` (its text alone) or ``window`` (its text, then ``[SEP]`` and the
#: previous turn of the same session, which is often the question it answers). An encoder's JSON names its kind.
DOCUMENT_KINDS = ("turn", "window")


_CLOSERS = " \t\n\"')]}»”’*_"


def asks(text: str) -> bool:
    """Whether a turn is a question: its text ends with a question mark (closing quotes, brackets and markdown
    emphasis aside). "Wow! Did you enjoy it?" asks; "Did you? I loved it." tells."""
    return text.rstrip(_CLOSERS).endswith(("?", "？"))


def previous_in_session(turns: Sequence[Turn]) -> list[int]:
    """For each turn (in conversation order), the index of the turn before it in the same session, or -1."""
    return [i - 1 if i > 0 and turns[i - 1].session == t.session else -1 for i, t in enumerate(turns)]


def turn_documents(turns: Sequence[Turn], kind: str = "turn") -> list[str]:
    """The texts the encoder embeds for ``turns`` (in conversation order), as :data:`DOCUMENT_KINDS` describes."""
    if kind not in DOCUMENT_KINDS:
        raise ValueError(f"document kind must be one of {', '.join(DOCUMENT_KINDS)}, not {kind!r}")
    if kind == "turn":
        return [t.text for t in turns]
    prev = previous_in_session(turns)
    return [f"{t.text} [SEP] {turns[j].text}" if j >= 0 else t.text for t, j in zip(turns, prev, strict=True)]


def recall_encoder_path(choice: str | None = None) -> Path | None:
    """The ONNX file that embeds turns and questions for recall; ``None`` means the general MiniLM.

    ``choice`` (default: the :data:`RECALL_ENCODER_ENV` variable) is ``default`` or empty for the shipped
    fine-tuned encoder (the general one if it is missing), ``general``, or a path.
    """
    choice = (os.environ.get(RECALL_ENCODER_ENV, "") if choice is None else choice).strip()
    if choice.lower() == "general":
        return None
    return memory_asset(choice, RECALL_ENCODER_ENV, RECALL_ENCODER_FILE, "general")


def memory_asset(choice: str, env: str, filename: str, alternative: str) -> Path | None:
    """A model file chosen by ``choice`` (the caller has handled its own keywords): a path, which must exist (the
    error names the ``env`` setting and the ``alternative`` keyword), or empty/``default`` for ``filename`` in this
    package's ``assets`` folder (``None`` when the package has no such file)."""
    if choice and choice.lower() != "default":
        path = Path(choice)
        if not path.is_file():
            raise FileNotFoundError(f"{env}={choice}: no such file (give an ONNX file, or '{alternative}')")
        return path
    shipped = Path(str(resources.files("afterword.memory") / "assets" / filename))
    return shipped if shipped.is_file() else None


@functools.lru_cache(maxsize=8)
def encoder_info(path: Path | None) -> dict[str, Any]:
    """The ``.json`` beside the encoder at ``path`` (its weights and provenance); ``{}`` when there is none."""
    meta = path.with_suffix(".json") if path is not None else None
    if meta is None or not meta.is_file():
        return {}
    try:
        info = json.loads(meta.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ValueError(f"{meta}: not valid JSON ({exc})") from exc
    if not isinstance(info, dict):
        raise ValueError(f"{meta}: expected a JSON object")
    return info


def encoder_document(path: Path | None) -> str:
    """How the encoder at ``path`` reads a turn (:data:`DOCUMENT_KINDS`): ``document`` of its ``.json``, else
    ``turn`` (the general MiniLM, and encoders trained before window documents existed)."""
    kind = encoder_info(path).get("document", "turn")
    if kind not in DOCUMENT_KINDS:
        meta = path.with_suffix(".json") if path else path
        raise ValueError(f"{meta}: field 'document' must be one of {', '.join(DOCUMENT_KINDS)}, not {kind!r}")
    return str(kind)


def encoder_weights(path: Path | None) -> dict[str, float]:
    """The blend weights fitted for the encoder at ``path``: ``weights`` of the ``.json`` beside it when it has
    one, else (and for the general MiniLM, ``None``) :data:`WEIGHTS`. Each key is a signal of :data:`FEATURES`
    or a product ``"a*b"`` of two (:class:`~afterword.memory.blend.Blend`); an unknown one raises ``ValueError``
    naming the file and the key."""
    info = encoder_info(path)
    if not info:
        return dict(WEIGHTS)
    where = f"{path.with_suffix('.json') if path else path}: field 'weights'"
    weights = info.get("weights")
    if not isinstance(weights, dict) or not weights:
        raise ValueError(
            f"{where} must be an object mapping signals ({', '.join(FEATURES)}), or products 'a*b' of two, to numbers"
        )
    return Blend(weights, FEATURES, source=where).weights


class TurnIndex:
    """One user's turns, searchable by hybrid, dense-only or BM25-only scoring.

    ``vectors`` are the turns' embeddings by ``encoder``, which also embeds the questions: by default the
    configured recall encoder, else as :func:`recall_encoder_path` reads its ``choice`` (``"general"``,
    ``"default"`` or an ONNX path). The blend ``weights`` default to that encoder's (:func:`encoder_weights`).
    """

    def __init__(
        self,
        turns: Sequence[Turn],
        vectors: np.ndarray | None = None,
        *,
        weights: Mapping[str, float] | None = None,
        encoder: Path | str | None = None,
    ) -> None:
        self.turns = list(turns)
        #: The encoder's ONNX file; ``None`` is the general MiniLM.
        self.encoder = recall_encoder_path(None if encoder is None else str(encoder))
        #: The hybrid's score over :meth:`features` (the encoder's weights unless ``weights`` are given).
        self.blend = Blend(weights if weights is not None else encoder_weights(self.encoder), FEATURES)
        #: How the encoder reads a turn (:func:`turn_documents`).
        self.document = encoder_document(self.encoder)
        if vectors is None:
            vectors = self.embedder.encode(turn_documents(self.turns, self.document))
        self.vecs = vectors
        n = len(self.turns)
        self.prev = np.array(previous_in_session(self.turns), dtype=np.int64)
        self.next = np.array(
            [i + 1 if i + 1 < n and self.turns[i + 1].session == t.session else -1 for i, t in enumerate(self.turns)],
            dtype=np.int64,
        )
        ctx = self.vecs.copy()
        for nb in (self.prev, self.next):
            has = nb >= 0
            ctx[has] += self.vecs[nb[has]]
        self.ctx = ctx / np.clip(np.linalg.norm(ctx, axis=1, keepdims=True), 1e-12, None)
        self.bm_turn = BM25()
        self.bm_win = BM25()
        texts = [f"{t.speaker}: {t.text}" for t in self.turns]
        for i, text in enumerate(texts):
            window = [texts[j] for j in (self.prev[i], i, self.next[i]) if j >= 0]
            self.bm_turn.add(str(i), "", text)
            self.bm_win.add(str(i), "", " ".join(window))
        self.speakers = sorted({t.speaker for t in self.turns if t.speaker}, key=len, reverse=True)
        self._speaker_of = np.array([self.speakers.index(t.speaker) if t.speaker else -1 for t in self.turns])
        self._names = (
            re.compile(r"\b(?:" + "|".join(re.escape(s) for s in self.speakers) + r")(?:'s|’s)?\b", re.I)
            if self.speakers
            else None
        )
        self._days = np.array([t.time.timestamp() / _DAY if t.time else np.nan for t in self.turns])
        self._length = np.log1p(np.array([len(t.text.split()) for t in self.turns], dtype=np.float64))
        self._asks = np.array([asks(t.text) for t in self.turns], dtype=np.float64)
        self._answers = self._nb(self.prev, self._asks)  # the previous turn in the session is a question
        sessions: dict[str, list[int]] = {}
        for i, t in enumerate(self.turns):
            sessions.setdefault(t.session, []).append(i)
        self._sessions = [np.array(v) for v in sessions.values()]

    def __len__(self) -> int:
        return len(self.turns)

    def dense_query(self, query: str) -> str:
        """The question as embedded: the speakers' names taken out (they are in every turn's BM25 text)."""
        if self._names is None:
            return query
        out = re.sub(r"\s+", " ", self._names.sub("", query)).strip()
        return out or query

    @property
    def embedder(self) -> Embedder:
        return get_embedder(self.encoder)

    def query_vector(self, query: str) -> np.ndarray:
        return self.embedder.encode_one(self.dense_query(query))

    def _bm(self, bm: BM25, query: str) -> np.ndarray:
        out = np.zeros(len(self.turns), dtype=np.float64)
        for i, s in bm.search(query, [""], len(self.turns)):
            out[int(i)] = s
        return out

    def _nb(self, nb: np.ndarray, v: np.ndarray) -> np.ndarray:
        return np.where(nb >= 0, v[np.maximum(nb, 0)], 0.0)

    def _date(self, query: str) -> np.ndarray:
        f = np.zeros(len(self.turns))
        dates = question_dates(query)
        if not dates or np.isnan(self._days).all():
            return f
        days = np.nan_to_num(self._days, nan=-1e9)
        for kind, d in dates:
            x = d.timestamp() / _DAY
            if kind == "day":
                delta = np.abs(days - x)
                f = np.maximum(f, np.where(delta <= 1.01, 1.0, np.where(delta <= 7, 0.5, 0.0)))
            else:
                end = x + calendar.monthrange(d.year, d.month)[1]
                inside = (days >= x) & (days < end)
                f = np.maximum(f, np.where(inside, 1.0, np.where((days >= end) & (days < end + 10), 0.5, 0.0)))
        return f

    def features(self, query: str, qvec: np.ndarray | None = None) -> np.ndarray:
        """The (turns × :data:`FEATURES`) signal matrix for ``query`` (see the module docstring)."""
        q = qvec if qvec is not None else self.query_vector(query)
        ct = (self.vecs @ q).astype(np.float64)
        cc = (self.ctx @ q).astype(np.float64)
        bt = self._bm(self.bm_turn, query)
        bw = self._bm(self.bm_win, query)
        bt = bt / bt.max() if bt.max() > 0 else bt
        bw = bw / bw.max() if bw.max() > 0 else bw
        base = (ct + cc) / 2 + 0.3 * (bt + 0.5 * bw)
        nb = np.maximum(self._nb(self.prev, base), self._nb(self.next, base))
        sess = np.zeros(len(self.turns))
        for ix in self._sessions:
            sess[ix] = np.sort(base[ix])[-3:].mean()
        named = {
            i for i, s in enumerate(self.speakers) if self._names and re.search(rf"\b{re.escape(s)}\b", query, re.I)
        }
        for role, pronouns in _ROLE_PRONOUNS.items():  # "my dog" names the user, "you said" the assistant
            if role in self.speakers and pronouns.search(query):
                named.add(self.speakers.index(role))
        spk = np.isin(self._speaker_of, list(named)).astype(np.float64) if named else np.zeros(len(self.turns))
        prev_ct, prev_bt = self._nb(self.prev, ct), self._nb(self.prev, bt)
        cols = {
            "cos_turn": ct,
            "cos_context": cc,
            "bm25_turn": bt,
            "bm25_window": bw,
            "neighbour": nb,
            "prev_cos": prev_ct,
            "next_cos": self._nb(self.next, ct),
            "prev_bm25": prev_bt,
            "next_bm25": self._nb(self.next, bt),
            "session": sess,
            "speaker": spk,
            "date": self._date(query),
            "length": self._length,
            "question": self._asks,
            "answer_cos": prev_ct * self._answers,
            "answer_bm25": prev_bt * self._answers,
        }
        return np.stack([cols[f] for f in FEATURES], axis=1)

    def scores(self, query: str, qvec: np.ndarray | None = None, mode: str = "hybrid") -> np.ndarray:
        if mode == "bm25":
            return self._bm(self.bm_turn, query)
        q = qvec if qvec is not None else self.query_vector(query)
        if mode == "dense":
            return self.vecs @ q
        if not len(self.turns):
            return np.zeros(0)
        return self.blend.score(self.features(query, q))

    def search(
        self, query: str, k: int = 10, mode: str = "hybrid", qvec: np.ndarray | None = None
    ) -> list[tuple[Turn, float]]:
        s = self.scores(query, qvec, mode)
        top = np.argsort(-s, kind="stable")[:k]
        return [(self.turns[i], float(s[i])) for i in top]
