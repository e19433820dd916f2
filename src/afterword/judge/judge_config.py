"""Settings of the built-in hindsight judge (:class:`afterword.judge.HindsightJudge`)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["JudgeConfig"]


class JudgeConfig(BaseModel):
    """Every knob of the hindsight judge, documented once. Unknown keys are rejected."""

    model_config = ConfigDict(extra="forbid")

    lookahead_turns: int = Field(
        20, ge=0, description="How many messages after a response's reaction are scanned for later signals."
    )
    later_window_days: float = Field(
        7.0, ge=0, description="Later conversations of the same user count when they start within this window."
    )
    min_confidence: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Below this confidence an inferred judgment is reported as neutral (the judge abstains).",
    )
    rephrase_threshold: float = Field(
        0.8,
        ge=-1,
        le=1,
        description="Cosine similarity at which a new request counts as a rephrase/retry of the previous one.",
    )
    topic_threshold: float = Field(
        0.6,
        ge=-1,
        le=1,
        description="Cosine similarity at which a later message counts as a return to the same topic.",
    )
    later_weight: float = Field(
        0.5, ge=0, le=1, description="How far signals from later turns and conversations move the score."
    )
    model_path: str | None = Field(
        None,
        description="A head .npz to use instead of the default one, or a shipped head by name: "
        "'finetuned' (the default) or 'lr' (3-5x faster, 3-6 UAR points less accurate).",
    )
    # 32: on 2 cores, ONNX MiniLM ran 5-15 % faster than with 64 on the ASAP and CCPE benches.
    batch_size: int = Field(32, ge=1, description="Texts per embedding batch.")
