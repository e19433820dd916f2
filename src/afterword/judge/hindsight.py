"""The built-in hindsight judge: grade each response from what the user did next.

For every assistant message the judge reads, in order of authority:

1. **Explicit feedback** on that message (thumbs, rating, correction,
   comment). It always wins: the label follows it and the evidence names it.
2. **The reaction**, the user messages right after the response, scored by
   the learned head (:mod:`afterword.judge.model`). The shipped head reads the
   reaction together with the response through its own fine-tuned MiniLM
   (:mod:`afterword.judge.finetune`); a head trained with
   ``--encoder general`` reads the general embedding plus lexical cues. The
   cues that fired, and a rephrased request, are reported as evidence on the
   reaction message. The shipped head does not read the request, so for it
   a rephrase (cosine to the previous request >= ``rephrase_threshold``)
   moves the score like a later signal; the ``lr`` head reads that cosine
   as a feature. Either way the evidence shown is what moved the score.
3. **Later turns** within ``lookahead_turns`` (the user came back to the
   same request) and **later conversations** of the same user within
   ``later_window_days`` (returned to the topic, and said whether it
   worked). These move the score by ``later_weight``.
4. With no reaction at all, the conversation ended on the response:
   abandonment, a weak negative unless the user had already said goodbye.

Everything runs on CPU: int8 ONNX MiniLM encoders and a numpy head. Each
distinct text is embedded once per call by the general MiniLM for the
similarity signals, each (reaction, response) pair once by the head's
encoder, and :meth:`HindsightJudge.judge_many` embeds a whole batch of
conversations in one go.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from functools import cached_property

import numpy as np

from afterword.embed import MODEL_ID, get_embedder
from afterword.records import Conversation, Evidence, Feedback, Judgment, JudgmentSource, Label, Message

from .features import EmbeddingCache, TurnContext, assistant_contexts, build_features, feature_names
from .judge_config import JudgeConfig
from .model import CLASSES, HeadModel, head_path, load_default
from .signals import CUE_POLARITY, abandonment_signal, cue_counts, lexical_signals, rephrase_signal

__all__ = ["HindsightJudge", "label_for_score", "reaction_vectors"]

_LABELS = [Label(c) for c in CLASSES]


def label_for_score(score: float) -> Label:
    """The label of a score in [-1, 1]: thirds of the range."""
    if score <= -1 / 3:
        return Label.dissatisfied
    if score >= 1 / 3:
        return Label.satisfied
    return Label.neutral


def _clip(x: float, lo: float = -1.0, hi: float = 1.0) -> float:
    return float(min(hi, max(lo, x)))


def reaction_vectors(head: HeadModel, contexts: Sequence[TurnContext], batch_size: int = 32) -> np.ndarray | None:
    """``head``'s own encoding of each reaction (with its response, for a pair encoder), or None
    when the head reads the similarity embeddings."""
    path = head.encoder_path()
    if path is None:
        return None
    enc = get_embedder(path)
    if head.encoder_input == "pair":
        return enc.encode_pairs([(c.reaction or "", c.response or "") for c in contexts], batch_size=batch_size)
    return enc.encode([c.reaction or "" for c in contexts], batch_size=batch_size)


class HindsightJudge:
    """Judge assistant messages from the user's later behaviour (see the module docstring)."""

    def __init__(self, config: JudgeConfig | None = None, *, encode=None) -> None:  # noqa: ANN001
        self.config = config or JudgeConfig()
        self.model: HeadModel = (
            HeadModel.load(head_path(self.config.model_path)) if self.config.model_path else load_default()
        )
        # ``encode`` lets tests and benchmarks pass a precomputed lookup.
        self._encode = encode
        # A head that reads (reaction, response) through its own encoder ignores the rephrase
        # column; a rephrase then moves the score directly, like the later signals.
        self._rephrase_shifts = not self.model.reads_column(feature_names().index("cos_react_request"))

    @cached_property
    def model_version(self) -> str:
        # Once per judge: every judgment carries it, and encoder_path() looks on disk.
        enc = self.model.encoder_path()
        return f"hindsight/{self.model.version}+{enc.stem if enc else MODEL_ID}"

    def warm_up(self) -> None:
        """Load every encoder the judge runs (their ONNX sessions take a second or so each)."""
        if self._encode is None:
            get_embedder(self.model.similarity_encoder_path()).warm_up()
        else:  # a lookup the caller passed in
            self._encode(["warm up"])
        path = self.model.encoder_path()
        if path is not None:
            get_embedder(path).warm_up()

    def _encoder(self):  # noqa: ANN202
        """Text -> unit vectors for the similarity signals (and the features of a head without its own encoder)."""
        if self._encode is None:
            emb = get_embedder(self.model.similarity_encoder_path())
            bs = self.config.batch_size
            self._encode = lambda texts: emb.encode(texts, batch_size=bs)
        return self._encode

    # -- public API --------------------------------------------------------

    def judge_conversation(self, conv: Conversation, later: Sequence[Conversation] = ()) -> list[Judgment]:
        """One Judgment per assistant message of ``conv`` (which must have message ids)."""
        return self.judge_many([(conv, list(later))])[0]

    def judge_many(self, items: Sequence[tuple[Conversation, Sequence[Conversation]]]) -> list[list[Judgment]]:
        """Judge many conversations; all texts are embedded in one batch."""
        cache = EmbeddingCache(self._encoder())
        per_item: list[list[TurnContext]] = []
        texts: list[str] = []
        for conv, later in items:
            ctxs = assistant_contexts(conv.messages)
            per_item.append(ctxs)
            # Exactly the texts the judge compares, so that nothing is embedded for nothing: each
            # reaction (a block of user messages, joined) and request, the user messages the
            # later-signal scan reads, and the response where it stands in for a missing request.
            later_users = [
                m.content for lc in self._later_in_window(conv, later) for m in lc.messages if m.role == "user"
            ]
            for ctx in ctxs:
                scanned = [m.content for m in self._lookahead_users(conv, ctx)]
                texts += [ctx.reaction or "", ctx.request or "", *scanned]
                if not ctx.request and (scanned or later_users):
                    texts.append(ctx.response or "")
            texts += later_users
        cache.add(texts)
        flat = [c for ctxs in per_item for c in ctxs if c.reaction]
        probs = (
            self.model.predict_proba(build_features(flat, cache, self._reaction_vectors(flat)))
            if flat
            else np.zeros((0, 3))
        )
        out: list[list[Judgment]] = []
        k = 0
        for (conv, later), ctxs in zip(items, per_item, strict=True):
            judgments = []
            for ctx in ctxs:
                p = None
                if ctx.reaction:
                    p = probs[k]
                    k += 1
                judgments.append(self._judge_one(conv, later, ctx, p, cache))
            out.append(judgments)
        return out

    # -- internals ---------------------------------------------------------

    def _reaction_vectors(self, contexts: Sequence[TurnContext]) -> np.ndarray | None:
        return reaction_vectors(self.model, contexts, self.config.batch_size)

    def _later_in_window(self, conv: Conversation, later: Sequence[Conversation]) -> list[Conversation]:
        end = max((m.created_utc for m in conv.messages if m.created_utc), default=conv.started_utc)
        if end is None:
            return list(later)  # no timestamps: the caller chose the window
        limit = end + timedelta(days=self.config.later_window_days)
        out = []
        for lc in later:
            start = lc.started_utc or min((m.created_utc for m in lc.messages if m.created_utc), default=None)
            if start is None or end <= start <= limit:
                out.append(lc)
        return out

    def _lookahead_users(self, conv: Conversation, ctx: TurnContext) -> list[Message]:
        """The user messages, within ``lookahead_turns`` after the reaction, that may return to the request.

        The reaction to the very next response is skipped: a rephrase there is the head's to score.
        """
        if not ctx.request and not ctx.response:
            return []
        msgs = conv.messages
        start = (ctx.reaction_index if ctx.reaction_index is not None else ctx.response_index) + 1
        next_asst = next((k for k in range(ctx.response_index + 1, len(msgs)) if msgs[k].role == "assistant"), None)
        skip_to = next_asst + 2 if next_asst is not None else len(msgs)
        end = min(len(msgs), start + self.config.lookahead_turns)
        return [msgs[k] for k in range(max(start, skip_to), end) if msgs[k].role == "user"]

    def _judge_one(
        self,
        conv: Conversation,
        later: Sequence[Conversation],
        ctx: TurnContext,
        p: np.ndarray | None,
        cache: EmbeddingCache,
    ) -> Judgment:
        msgs = conv.messages
        response = msgs[ctx.response_index]
        if response.id is None:
            raise ValueError("judge_conversation needs message ids; store the conversation first")
        evidence: list[Evidence] = []
        cfg = self.config

        explicit = self._explicit(conv, ctx.response_index, response.id)
        rephrase = 0.0
        if p is not None:
            reaction_id = msgs[ctx.reaction_index].id
            score = float(p[2] - p[0])
            label = _LABELS[int(np.argmax(p))]
            confidence = float(p.max())
            evidence.append(
                Evidence(
                    signal="reaction",
                    message_id=reaction_id,
                    weight=round(score, 4),
                    detail=f"head p(dis,neu,sat)=({p[0]:.2f},{p[1]:.2f},{p[2]:.2f})",
                )
            )
            for s in lexical_signals(ctx.reaction):
                evidence.append(Evidence(signal=s.name, message_id=reaction_id, weight=s.strength, detail=s.detail))
            if ctx.request:
                sim = float(cache.get(ctx.reaction) @ cache.get(ctx.request))
                s = rephrase_signal(sim, cfg.rephrase_threshold)
                if s:
                    evidence.append(Evidence(signal=s.name, message_id=reaction_id, weight=s.strength, detail=s.detail))
                    if self._rephrase_shifts:
                        rephrase = s.strength
        else:
            prev = None
            for m in reversed(msgs[: ctx.response_index]):
                if m.role == "user":
                    prev = m
                    break
            s = abandonment_signal(prev.content if prev else None)
            score, label, confidence = s.strength, Label.neutral, 0.3 if s.strength else 0.2
            evidence.append(Evidence(signal=s.name, message_id=response.id, weight=s.strength, detail=s.detail))

        shift = _clip(self._later_signals(conv, later, ctx, cache, evidence) + rephrase)
        if shift:
            score = _clip(score + cfg.later_weight * shift)
            label = label_for_score(score)
            confidence = _clip(confidence + 0.1 * abs(shift), 0.0, 1.0)

        if explicit is not None:
            # Explicit feedback decides alone, so it is the only evidence shown: what was used.
            score, label, ev = explicit
            confidence = 1.0
            evidence = [ev]
        elif confidence < cfg.min_confidence:
            label = Label.neutral

        return Judgment(
            message_id=response.id,
            source=JudgmentSource.hindsight_model,
            label=label,
            score=_clip(score),
            confidence=_clip(confidence, 0.0, 1.0),
            evidence=evidence,
            model_version=self.model_version,
        )

    def _later_signals(
        self,
        conv: Conversation,
        later: Sequence[Conversation],
        ctx: TurnContext,
        cache: EmbeddingCache,
        evidence: list[Evidence],
    ) -> float:
        """Signals after the reaction; returns the summed shift in [-1, 1] and appends evidence."""
        if not ctx.request and not ctx.response:
            return 0.0
        cfg = self.config
        scanned = self._lookahead_users(conv, ctx)
        later_convs = self._later_in_window(conv, later)
        if not scanned and not later_convs:
            return 0.0
        anchor = cache.get(ctx.request) if ctx.request else cache.get(ctx.response)
        shift = 0.0
        # Same conversation: the user comes back to the same request after other turns.
        for m in scanned:
            sim = float(cache.get(m.content) @ anchor)
            if sim >= cfg.rephrase_threshold:
                evidence.append(
                    Evidence(
                        signal="returned_to_request",
                        message_id=m.id,
                        weight=-0.5,
                        detail=f"asked again later in the conversation (cosine {sim:.2f})",
                    )
                )
                shift -= 0.5
                break
        # Later conversations: returned to the topic, and maybe reported the outcome.
        for lc in later_convs:
            users = [m for m in lc.messages if m.role == "user"]
            for i, m in enumerate(users):
                sim = float(cache.get(m.content) @ anchor)
                if sim < cfg.topic_threshold:
                    continue
                window = users[i : i + 2]
                outcome = 0.0
                carrier = m
                for u in window:
                    cues = cue_counts(u.content)
                    pol = sum(CUE_POLARITY[c] for c in cues if c.startswith("outcome_") or c == "complaint")
                    if pol:
                        outcome, carrier = max(-1.0, min(1.0, pol)), u
                        break
                if outcome:
                    name = "reported_success_later" if outcome > 0 else "reported_failure_later"
                    detail = f"returned later (cosine {sim:.2f}) and said: {carrier.content[:80]!r}"
                    weight = outcome
                else:
                    name, weight = "returned_later", -0.3
                    detail = f"asked about the same topic again later (cosine {sim:.2f})"
                evidence.append(Evidence(signal=name, message_id=carrier.id, weight=weight, detail=detail))
                shift += weight
                break
        return max(-1.0, min(1.0, shift))

    def _explicit(self, conv: Conversation, index: int, message_id: str) -> tuple[float, Label, Evidence] | None:
        """The label explicit feedback dictates for this message, if any (the latest wins)."""
        result = None
        for fb in conv.feedback:
            if fb.message_id != message_id and not (fb.message_id is None and fb.message_index == index):
                continue
            got = _from_feedback(fb, message_id)
            if got is not None:
                result = got
        return result


def _from_feedback(fb: Feedback, message_id: str) -> tuple[float, Label, Evidence] | None:
    kind = str(fb.kind)
    if kind == "thumbs" and fb.thumbs is not None and fb.thumbs != 0:
        score = float(fb.thumbs)
        detail = "thumbs up" if fb.thumbs > 0 else "thumbs down"
    elif kind == "rating" and fb.rating is not None:
        score = (fb.rating - 3) / 2
        detail = f"rating {fb.rating:g}/5"
    elif kind == "correction":
        score = -1.0
        detail = f"correction: {(fb.correction or fb.comment or '')[:80]!r}"
    elif kind == "comment" and fb.comment:
        sigs = lexical_signals(fb.comment)
        if not sigs:
            return None
        score = _clip(sum(s.strength for s in sigs))
        if score == 0:
            return None
        detail = f"comment: {fb.comment[:80]!r}"
    else:
        return None
    ev = Evidence(signal=f"explicit_{kind}", message_id=message_id, weight=score, detail=detail)
    return score, label_for_score(score), ev
