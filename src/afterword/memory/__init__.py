"""The memory layer: lessons, preferences and facts, retrieved and injected at generation time.

- ``lessons``: from corrections and confidently bad judgments (structural, or distilled by an LLM).
- ``preferences``: per-user preferences and facts; a newer value supersedes the older one.
- ``index`` / ``retrieval``: hybrid dense + BM25 search with per-user isolation.
- ``episodic``: ``recall``, search a user's earlier turns themselves (what LoCoMo measures; ``turns``).
- ``inject``: :class:`MemoryInjector`, what ``afterword.wrap(client, memory=True)`` and the proxy call.
- ``credit``: judgments of responses raise or lower the usefulness of the memories that shaped them.
- ``control``: list, show, edit, pin, delete, forget.
"""

from afterword.memory.control import (
    add_memories,
    delete_memory,
    edit_memory,
    forget_memories,
    get_memory,
    list_memories,
    pin_memory,
    set_active,
)
from afterword.memory.credit import apply_credit
from afterword.memory.episodic import RecalledTurn, recall
from afterword.memory.index import rebuild_index
from afterword.memory.inject import InjectedItem, Injection, MemoryInjector
from afterword.memory.lessons import build_lessons
from afterword.memory.memory_config import MemoryConfig
from afterword.memory.preferences import build_profile
from afterword.memory.retrieval import ScoredMemory, retrieve
from afterword.memory.stage import build_memories

__all__ = [
    "MemoryConfig",
    "MemoryInjector",
    "Injection",
    "InjectedItem",
    "ScoredMemory",
    "retrieve",
    "recall",
    "RecalledTurn",
    "add_memories",
    "get_memory",
    "list_memories",
    "edit_memory",
    "pin_memory",
    "set_active",
    "delete_memory",
    "forget_memories",
    "forget_user_memories",
    "build_lessons",
    "build_profile",
    "build_memories",
    "apply_credit",
    "rebuild_index",
    "run_locomo_bench",
]


def forget_user_memories(store, user_id: str) -> dict:  # type: ignore[no-untyped-def]
    """Forget a user everywhere (``store.search.forget_user``) and drop their memories from the index."""
    from afterword.store.search import forget_user

    res = forget_user(store, user_id)
    forget_memories(store, res["memory_ids"])
    return res


def run_locomo_bench(path, **kwargs):  # type: ignore[no-untyped-def]
    """LoCoMo evidence retrieval (see ``afterword.memory.bench.run_locomo_bench``)."""
    from afterword.memory.bench import run_locomo_bench as _run

    return _run(path, **kwargs)
