"""Settings of the memory layer: building, retrieving, injecting and crediting memories."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["MemoryConfig"]


class MemoryConfig(BaseModel):
    """Every knob of the memory layer, documented once. Unknown keys are rejected."""

    model_config = ConfigDict(extra="forbid")

    # -- injection ------------------------------------------------------------------
    token_budget: int = Field(300, ge=0, description="Most tokens of memory text injected into one request.")
    max_items: int = Field(8, ge=0, description="Most memories injected into one request.")
    min_relevance: float = Field(
        0.65,
        ge=-1,
        le=1,
        description="A lesson is injected only when the query's cosine similarity to its situation reaches this "
        "(or a strong full-text match lifts it there). Guards unrelated conversations and near misses: a lesson "
        "carries the answer to one question, and similar but different questions (another country's capital) "
        "score 0.5-0.7 while paraphrases of the same one score 0.73 and up (repeat-mistake benchmark).",
    )
    lesson_margin: float = Field(
        0.1,
        ge=0,
        description="A lesson is injected only when its relevance is within this of the best lesson's. A lesson "
        "carries the answer to one question; the lessons of similar but different questions (15 squared beside the "
        "square root of 169) carry other answers, and small models copy the wrong one.",
    )
    min_relevance_profile: float = Field(
        0.3, ge=-1, le=1, description="The same gate for preferences and facts, which apply more broadly."
    )
    query_turns: int = Field(1, ge=1, description="How many of the latest user messages form the retrieval query.")
    recall_turns: int = Field(
        0,
        ge=0,
        description="Turns of the user's own earlier conversations recalled into a request (``memory.recall``), "
        "beside the memories, within the same token budget. 0 (the default) turns recall off: raw earlier turns "
        "are the user's own words, quoted back, and their gate lets about 1 % of unrelated requests through "
        "where the lessons' lets none (bench/recall_gate.py, docs/benchmarks.md).",
    )
    recall_rerank: bool = Field(
        False,
        description="Rescore the recalled candidates with the configured recall reranker (``memory.rerank``, "
        "``AFTERWORD_RECALL_RERANKER``; none ships). Off by default on this path: it adds about 120 ms a request "
        "(15 candidates, 2 AMD EPYC cores), and the gate below still reads the encoder's cosine, so it changes "
        "which passing turns come first.",
    )
    recall_min_cosine: float = Field(
        0.45,
        ge=-1,
        le=1,
        description="A recalled turn goes in only when the query's cosine similarity to it (by the recall encoder) "
        "reaches this. With k = 2, 0.45 lets a turn into 0.9 % of unrelated requests (0.5: 0.2 %); on LoCoMo it "
        "injects an answering turn into 31 % of answerable requests with the general MiniLM (bench/recall_gate.py).",
    )

    # -- retrieval ------------------------------------------------------------------
    index: Literal["auto", "sqlite-vec", "pgvector", "numpy"] = Field(
        "auto", description="Vector index: sqlite-vec on SQLite, pgvector on PostgreSQL, numpy when neither loads."
    )
    candidates: int = Field(50, ge=1, description="Candidates taken from each of the dense and full-text searches.")
    fusion: Literal["rrf", "weighted"] = Field(
        "weighted", description="How dense and full-text ranks combine: reciprocal-rank fusion or weighted scores."
    )
    dense_weight: float = Field(0.7, ge=0, description="Weight of the cosine similarity (weighted fusion).")
    lexical_weight: float = Field(0.3, ge=0, description="Weight of the saturated BM25 score (weighted fusion).")
    rrf_k: float = Field(60.0, gt=0, description="The k of reciprocal-rank fusion, 1/(k + rank).")
    recency_weight: float = Field(0.05, ge=0, description="Bonus for recent memories, exp(-age/half_life).")
    recency_half_life_days: float = Field(90.0, gt=0, description="Age in days at which the recency bonus halves.")
    usefulness_weight: float = Field(0.1, ge=0, description="Bonus (or malus) per unit of learned usefulness.")
    pinned_bonus: float = Field(0.1, ge=0, description="Bonus for pinned memories.")

    # -- building -------------------------------------------------------------------
    lesson_scope: Literal["user", "global"] = Field(
        "user", description="Scope of lessons from user corrections; reviewer corrections are always global."
    )
    judged_min_confidence: float = Field(
        0.7, ge=0, le=1, description="A response judged dissatisfied becomes a lesson from this confidence up."
    )
    judgment_sources: list[str] = Field(
        default_factory=lambda: ["human", "combined", "hindsight-model"],
        description="Judgment sources read for lessons and credit, first present wins.",
    )
    use_llm: bool = Field(
        True, description="Distil lessons and extract preferences with the LLM when an endpoint is configured."
    )

    # -- credit ---------------------------------------------------------------------
    fade_usefulness: float = Field(
        -0.3, ge=-1, le=0, description="An unpinned memory whose usefulness falls below this becomes inactive."
    )
    fade_min_evidence: float = Field(
        1.5, ge=0, description="...but only once its harmful credit reaches this much (one bad call is not enough)."
    )
