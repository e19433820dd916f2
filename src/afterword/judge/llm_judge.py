"""The optional LLM judge: a rubric prompt over what the user did next.

In the spirit of SPUR (Lin et al., 2024), the model is asked to list explicit
*satisfaction* items and *dissatisfaction* items it sees in the user's
messages after the response, each quoting its evidence, and then a verdict,
as one JSON object. The score combines the verdict with the balance of the
two lists, so a model that lists evidence but names the wrong verdict is
pulled back toward what it listed. Any OpenAI-compatible endpoint works; the
tests run it against the local SmolLM2 server.
"""

from __future__ import annotations

from typing import Any

from afterword.judge.hindsight import label_for_score
from afterword.llm import LLMClient
from afterword.records import Conversation, Evidence, Judgment, JudgmentSource

__all__ = ["LLMJudge", "RUBRIC", "SCHEMA"]

RUBRIC = """You grade whether an AI assistant's response satisfied the user, judging ONLY from what the user \
did afterwards. Signs of satisfaction: thanks, acceptance, "it worked", moving on to a new topic. Signs of \
dissatisfaction: complaints, corrections, "that's wrong", repeating or rephrasing the same request, \
"still failing", giving up.

Reply with one JSON object: "satisfaction" (a list of the user's words that show satisfaction), \
"dissatisfaction" (a list of the user's words that show dissatisfaction), "verdict" (satisfied, neutral or \
dissatisfied) and "confidence" (0 to 1)."""

_VERDICT = {"satisfied": 1.0, "neutral": 0.0, "dissatisfied": -1.0}

#: JSON schema of the reply; grammar-enforced on llama.cpp servers.
SCHEMA = {
    "type": "object",
    "properties": {
        "satisfaction": {"type": "array", "items": {"type": "string", "maxLength": 80}, "maxItems": 3},
        "dissatisfaction": {"type": "array", "items": {"type": "string", "maxLength": 80}, "maxItems": 3},
        "verdict": {"type": "string", "enum": ["satisfied", "neutral", "dissatisfied"]},
        "confidence": {"type": "number"},
    },
    "required": ["satisfaction", "dissatisfaction", "verdict", "confidence"],
}


def _quote_ok(x: object) -> bool:
    """A real quote, not an empty string or a template placeholder echoed back."""
    s = str(x).strip()
    return bool(s) and not (s.startswith("<") and s.endswith(">"))


class LLMJudge:
    """Judge one assistant message with an LLM; ``None`` when the model gives no usable answer."""

    def __init__(self, client: LLMClient, *, after_turns: int = 4, max_chars: int = 1200) -> None:
        self.client = client
        self.after_turns = after_turns
        self.max_chars = max_chars

    @property
    def model_version(self) -> str:
        return f"llm-judge/{self.client.model}"

    def _prompt(self, conv: Conversation, index: int) -> tuple[str, list[str]]:
        msgs = conv.messages
        request = next((m.content for m in reversed(msgs[:index]) if m.role == "user"), "")
        after = [m for m in msgs[index + 1 :] if m.role == "user"][: self.after_turns]
        lines = [
            f"USER REQUEST: {request[: self.max_chars]}",
            f"AI RESPONSE: {msgs[index].content[: self.max_chars]}",
        ]
        if after:
            lines += [f"USER AFTERWARDS ({k + 1}): {m.content[: self.max_chars]}" for k, m in enumerate(after)]
        else:
            lines.append("USER AFTERWARDS: (the user said nothing more)")
        return "\n".join(lines), [m.id or "" for m in after]

    def judge_message(self, conv: Conversation, message_id: str) -> Judgment | None:
        index = next((i for i, m in enumerate(conv.messages) if m.id == message_id), None)
        if index is None:
            return None
        prompt, after_ids = self._prompt(conv, index)
        try:
            out = self.client.chat_json(
                [{"role": "system", "content": RUBRIC}, {"role": "user", "content": prompt}],
                schema=SCHEMA,
                max_tokens=320,
            )
        except Exception:
            return None
        return self._to_judgment(out, message_id, after_ids)

    def _to_judgment(self, out: Any, message_id: str, after_ids: list[str]) -> Judgment | None:
        if not isinstance(out, dict):
            return None
        sat = [str(x) for x in out.get("satisfaction") or [] if _quote_ok(x)]
        dis = [str(x) for x in out.get("dissatisfaction") or [] if _quote_ok(x)]
        verdict = str(out.get("verdict", "")).lower().strip()
        if verdict not in _VERDICT and not (sat or dis):
            return None
        balance = (len(sat) - len(dis)) / max(1, len(sat) + len(dis))
        score = (_VERDICT.get(verdict, balance) + balance) / 2 if (sat or dis) else _VERDICT[verdict]
        try:
            conf = float(out.get("confidence", 0.5))
        except (TypeError, ValueError):
            conf = 0.5
        carrier = after_ids[0] if after_ids else message_id
        evidence = [Evidence(signal="llm_satisfaction", message_id=carrier, weight=1.0, detail=s[:120]) for s in sat]
        evidence += [
            Evidence(signal="llm_dissatisfaction", message_id=carrier, weight=-1.0, detail=d[:120]) for d in dis
        ]
        evidence.append(Evidence(signal="llm_verdict", message_id=carrier, weight=score, detail=verdict or "none"))
        return Judgment(
            message_id=message_id,
            source=JudgmentSource.llm_judge,
            label=label_for_score(score),
            score=max(-1.0, min(1.0, score)),
            confidence=max(0.0, min(1.0, conf)) * 0.8,  # a small model's self-reported confidence is optimistic
            evidence=evidence,
            model_version=self.model_version,
        )
