"""The ``remember`` stage of ``afterword run``: lessons, profile, credit."""

from __future__ import annotations

import os
from typing import Any

from afterword.llm import LLMClient
from afterword.memory.credit import apply_credit
from afterword.memory.lessons import build_lessons
from afterword.memory.memory_config import MemoryConfig
from afterword.memory.preferences import build_profile
from afterword.store.store import Store

__all__ = ["stage", "build_memories"]


def _llm(opts: dict[str, Any]) -> LLMClient | None:
    llm = opts.get("llm")
    if isinstance(llm, LLMClient):
        return llm
    if os.environ.get("AFTERWORD_LLM_URL"):
        return LLMClient()
    return None


def build_memories(
    store: Store, config: MemoryConfig | None = None, llm: LLMClient | None = None, user_id: str | None = None
) -> dict[str, Any]:
    """Build lessons and the user profile, then credit injected memories; returns counts."""
    cfg = config or MemoryConfig()
    out: dict[str, Any] = {}
    out.update(build_lessons(store, cfg, llm, user_id=user_id))
    out.update(build_profile(store, cfg, llm, user_id=user_id))
    credit = apply_credit(store, cfg)
    out.update({"credited_injections": credit["credited"], "faded": credit["faded"]})
    out["llm"] = bool(llm is not None and cfg.use_llm)
    return out


def stage(store: Store, opts: dict[str, Any]) -> dict[str, Any]:
    """``afterword run``: works with or without judgments and with or without an LLM endpoint."""
    cfg = opts.get("memory_config")
    if isinstance(cfg, dict):
        cfg = MemoryConfig(**cfg)
    return build_memories(store, cfg, _llm(opts))
