"""Feature vectors for the learned hindsight head.

One vector describes one response seen through what followed it:

    [ reaction embedding | cosine(reaction, request)
      | lexical cues of the reaction | of the request | mean over earlier user turns
      | position and length ]

The *reaction* is the block of user messages right after the response (the
message a USS/ASAP rating is given with), the *request* is the user message
just before the response. Everything here transfers across domains: no
dialogue-act ids, no domain vocabulary beyond the generic cue lexicon.
Separate general-purpose embeddings of the request and of the response were
tried and left out: with a frozen encoder they did not help on the ASAP
valid splits and cost the held-out domain (CCPE) several points. The
response does count in the default head, through its own encoder: the
reaction embedding columns then hold a fine-tuned MiniLM's encoding of the
pair (reaction, response) (``reaction_vectors`` in
:mod:`afterword.judge.hindsight`, :mod:`afterword.judge.finetune`).

Embeddings go through :class:`EmbeddingCache`, so each distinct text is
embedded once per judge run, whatever roles it plays (the reaction to one
response is the request of the next), and all new texts of a batch are
embedded in one call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from afterword.embed import EMBED_DIM

from .signals import CUES, cue_vector

__all__ = [
    "TurnContext",
    "EmbeddingCache",
    "context_at",
    "assistant_contexts",
    "build_features",
    "feature_names",
    "N_CUES",
]

N_CUES = len(CUES)


@dataclass
class TurnContext:
    """The text around one judged response.

    ``reaction_index`` is the position (in the conversation) of the last
    user message of the reaction block, ``response_index`` that of the
    response; either is None when absent.
    """

    request: str | None
    response: str | None
    reaction: str | None
    position: int
    history: list[str] = field(default_factory=list)
    response_index: int | None = None
    reaction_index: int | None = None


def _role(m) -> str:  # noqa: ANN001 - Message or a (role, text) pair
    return m.role if hasattr(m, "role") else m[0]


def _text(m) -> str:  # noqa: ANN001
    return m.content if hasattr(m, "content") else m[1]


def context_at(messages: Sequence, j: int) -> TurnContext:
    """The context of user message ``j`` read as the reaction to the response before it.

    This is the USS/ASAP view: a rating on user message ``j`` grades the
    last assistant message before it, seen through the user messages since
    that response (consecutive user lines are joined into one reaction).
    """
    resp = None
    for k in range(j - 1, -1, -1):
        if _role(messages[k]) == "assistant":
            resp = k
            break
    start = (resp + 1) if resp is not None else 0
    reaction = " ".join(_text(m) for m in messages[start : j + 1] if _role(m) == "user")
    req_idx = None
    if resp is not None:
        for k in range(resp - 1, -1, -1):
            if _role(messages[k]) == "user":
                req_idx = k
                break
    history = [_text(m) for m in messages[: req_idx or 0] if _role(m) == "user"]
    position = sum(1 for m in messages[:start] if _role(m) == "assistant") - 1
    return TurnContext(
        request=_text(messages[req_idx]) if req_idx is not None else None,
        response=_text(messages[resp]) if resp is not None else None,
        reaction=reaction,
        position=max(position, 0),
        history=history,
        response_index=resp,
        reaction_index=j,
    )


def assistant_contexts(messages: Sequence) -> list[TurnContext]:
    """One context per assistant message, in order; the reaction may be None (nothing followed)."""
    out = []
    n = len(messages)
    for i, m in enumerate(messages):
        if _role(m) != "assistant":
            continue
        j = i + 1
        while j < n and _role(messages[j]) not in ("user", "assistant"):
            j += 1  # tool and system messages sit between a response and its reaction
        if j < n and _role(messages[j]) == "user":
            while j + 1 < n and _role(messages[j + 1]) == "user":
                j += 1
            ctx = context_at(messages, j)
            ctx.response_index = i
            ctx.response = _text(m)
        else:
            ctx = context_at(list(messages[: i + 1]) + [("user", "")], i + 1)
            ctx.reaction = None
            ctx.reaction_index = None
        out.append(ctx)
    return out


class EmbeddingCache:
    """Embed each distinct text once; look vectors up by text."""

    def __init__(self, encode: Callable[[list[str]], np.ndarray]) -> None:
        self._encode = encode
        self._vectors: dict[str, np.ndarray] = {}

    def add(self, texts: Sequence[str]) -> None:
        new = list(dict.fromkeys(t for t in texts if t and t not in self._vectors))
        if new:
            for t, v in zip(new, self._encode(new), strict=True):
                self._vectors[t] = v

    def get(self, text: str | None) -> np.ndarray:
        if not text:
            return np.zeros(EMBED_DIM, dtype=np.float32)
        v = self._vectors.get(text)
        if v is None:
            self.add([text])
            v = self._vectors[text]
        return v

    def __len__(self) -> int:
        return len(self._vectors)


def feature_names() -> list[str]:
    """Column names of :func:`build_features`, for inspection and the asset's metadata."""
    names = [f"react_emb_{i}" for i in range(EMBED_DIM)]
    names += ["cos_react_request"]
    names += [f"react_cue_{c}" for c in CUES]
    names += [f"request_cue_{c}" for c in CUES]
    names += [f"history_cue_{c}" for c in CUES]
    names += ["log_position", "first_turn", "has_response", "has_request", "log_react_words"]
    return names


def build_features(
    contexts: Sequence[TurnContext], cache: EmbeddingCache, reaction_vectors: np.ndarray | None = None
) -> np.ndarray:
    """The (n, d) float32 feature matrix of ``contexts``; embeds all new texts in one batch.

    ``reaction_vectors`` (n, 384), when given, fill the reaction-embedding columns instead of the
    cache's vectors: a head with its own (fine-tuned) encoder passes them in.
    """
    texts = []
    for c in contexts:
        texts += [c.reaction or "", c.request or ""]
    cache.add(texts)
    n = len(contexts)
    X = np.zeros((n, len(feature_names())), dtype=np.float32)
    cue_memo: dict[str, np.ndarray] = {}

    def cues(text: str) -> np.ndarray:
        v = cue_memo.get(text)
        if v is None:
            v = cue_memo[text] = cue_vector(text)
        return v

    zeros = np.zeros(N_CUES, dtype=np.float32)
    d = EMBED_DIM
    for i, c in enumerate(contexts):
        r = cache.get(c.reaction)
        X[i, :d] = r if reaction_vectors is None else reaction_vectors[i]
        X[i, d] = float(r @ cache.get(c.request)) if c.request else 0.0
        X[i, d + 1 : d + 1 + N_CUES] = cues(c.reaction or "")
        X[i, d + 1 + N_CUES : d + 1 + 2 * N_CUES] = cues(c.request or "")
        X[i, d + 1 + 2 * N_CUES : d + 1 + 3 * N_CUES] = (
            np.mean([cues(h) for h in c.history], axis=0) if c.history else zeros
        )
        X[i, d + 1 + 3 * N_CUES :] = [
            np.log1p(c.position),
            float(c.position == 0),
            float(bool(c.response)),
            float(bool(c.request)),
            np.log1p(len((c.reaction or "").split())),
        ]
    return X
