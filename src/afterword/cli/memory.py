"""``afterword memory``: build, inspect and control memories."""

from __future__ import annotations

import sys
from typing import Any

import typer

from afterword.cli._common import JsonOpt, Table, console, emit, esc, fail, guard, open_store, progress_bar
from afterword.memory import (
    MemoryConfig,
    MemoryInjector,
    build_memories,
    delete_memory,
    edit_memory,
    forget_user_memories,
    get_memory,
    list_memories,
    pin_memory,
    rebuild_index,
    recall,
    retrieve,
)

group = typer.Typer(
    help="Lessons, preferences and facts: build, list, show, edit, pin, delete, search, forget; recall earlier turns."
)


def _table(rows: list[dict[str, Any]], title: str) -> None:
    tab = Table(title=title)
    for c in ("id", "kind", "scope", "user", "useful", "uses", "text"):
        tab.add_column(c, overflow="fold")
    for r in rows:
        flags = ("📌" if r["pinned"] else "") + ("" if r["active"] else " (inactive)")
        tab.add_row(
            r["id"],
            r["kind"],
            r["scope"],
            r["user_id"] or "",
            f"{r['usefulness']:+.2f}",
            str(r["uses"]),
            flags + r["text"][:200],
        )
    console.print(tab)


@group.command("build")
def build_cmd(
    user: str = typer.Option(None, "--user", help="Only this user's corrections and messages."),
    endpoint: str = typer.Option(None, "--endpoint", envvar="AFTERWORD_LLM_URL", help="OpenAI-compatible /v1 URL."),
    model: str = typer.Option("local", "--model", envvar="AFTERWORD_LLM_MODEL"),
    no_llm: bool = typer.Option(False, "--no-llm", help="Rules and structure only, even with an endpoint."),
    as_json: bool = JsonOpt,
) -> None:
    """Build lessons from corrections and bad judgments, extract preferences/facts, apply credit."""
    llm = None
    if endpoint and not no_llm:
        from afterword.llm import LLMClient

        llm = LLMClient(base_url=endpoint, model=model)
    with guard(as_json), progress_bar("building memories", None, not as_json):
        res = build_memories(open_store(), MemoryConfig(use_llm=not no_llm), llm, user_id=user)
    emit(res, as_json, lambda d: console.print(", ".join(f"{k}={v}" for k, v in d.items())))


@group.command("list")
def list_cmd(
    user: str = typer.Option(None, "--user"),
    kind: str = typer.Option(None, "--kind", help="lesson, preference or fact"),
    all_: bool = typer.Option(False, "--all", help="Include superseded, faded and switched-off memories."),
    limit: int = typer.Option(100, "--limit"),
    as_json: bool = JsonOpt,
) -> None:
    """List memories, newest first."""
    with guard(as_json):
        mems = list_memories(open_store(), user_id=user, kind=kind, include_inactive=all_, limit=limit)
    rows = [m.model_dump(mode="json") for m in mems]
    emit(rows, as_json, lambda d: _table(d, f"{len(d)} memories"))


@group.command("show")
def show_cmd(memory_id: str = typer.Argument(...), as_json: bool = JsonOpt) -> None:
    """Show one memory with all its fields."""
    with guard(as_json):
        mem = get_memory(open_store(), memory_id)
    emit(mem.model_dump(mode="json"), as_json)


@group.command("edit")
def edit_cmd(
    memory_id: str = typer.Argument(...),
    text: str = typer.Option(None, "--text"),
    situation: str = typer.Option(None, "--situation"),
    wrong: str = typer.Option(None, "--wrong"),
    right: str = typer.Option(None, "--right"),
    scope: str = typer.Option(None, "--scope", help="user or global"),
    as_json: bool = JsonOpt,
) -> None:
    """Edit a memory (it is re-embedded)."""
    if scope not in (None, "user", "global"):
        fail("--scope must be user or global", as_json)
    changes = {"text": text, "situation": situation, "wrong": wrong, "right": right, "scope": scope}
    changes = {k: v for k, v in changes.items() if v is not None}
    if not changes:
        fail("nothing to change: give --text, --situation, --wrong, --right or --scope", as_json)
    with guard(as_json):
        mem = edit_memory(open_store(), memory_id, **changes)
    emit(mem.model_dump(mode="json"), as_json, lambda d: console.print(f"edited {d['id']}: {esc(d['text'])}"))


@group.command("pin")
def pin_cmd(
    memory_id: str = typer.Argument(...),
    unpin: bool = typer.Option(False, "--unpin"),
    as_json: bool = JsonOpt,
) -> None:
    """Pin a memory (retrieval bonus; never fades), or unpin it."""
    with guard(as_json):
        mem = pin_memory(open_store(), memory_id, not unpin)
    emit(
        {"id": mem.id, "pinned": mem.pinned, "active": mem.active},
        as_json,
        lambda d: console.print(f"{'pinned' if d['pinned'] else 'unpinned'} {d['id']}"),
    )


@group.command("delete")
def delete_cmd(memory_id: str = typer.Argument(...), as_json: bool = JsonOpt) -> None:
    """Delete one memory and its injection log."""
    with guard(as_json):
        delete_memory(open_store(), memory_id)
    emit({"deleted": memory_id}, as_json, lambda d: console.print(f"deleted {d['deleted']}"))


@group.command("search")
def search_cmd(
    query: str = typer.Argument(...),
    user: str = typer.Option(None, "--user", help="Search as this user (their memories plus global ones)."),
    k: int = typer.Option(5, "--k"),
    mode: str = typer.Option("hybrid", "--mode", help="hybrid, dense or bm25"),
    as_json: bool = JsonOpt,
) -> None:
    """Hybrid search over the memories a user may see."""
    if mode not in ("hybrid", "dense", "bm25"):
        fail("--mode must be hybrid, dense or bm25", as_json)
    with guard(as_json):
        hits = [h.as_dict() for h in retrieve(open_store(), query, user_id=user, k=k, mode=mode)]  # type: ignore[arg-type]

    def render(rows: list[dict[str, Any]]) -> None:
        tab = Table(title=f"{len(rows)} memories for {query!r}")
        for c in ("id", "kind", "score", "relevance", "tokens", "text"):
            tab.add_column(c, overflow="fold")
        for r in rows:
            tab.add_row(
                r["memory_id"], r["kind"], f"{r['score']:.3f}", f"{r['relevance']:.3f}", str(r["tokens"]), r["text"]
            )
        console.print(tab)

    emit(hits, as_json, render)


@group.command("recall")
def recall_cmd(
    query: str = typer.Argument(...),
    user: str = typer.Option(..., "--user", help="Whose earlier conversations to search (only theirs)."),
    k: int = typer.Option(5, "--k", min=1),
    mode: str = typer.Option("hybrid", "--mode", help="hybrid, dense or bm25"),
    encoder: str = typer.Option(
        None,
        "--encoder",
        help="Recall encoder: 'default' (the shipped fine-tuned one), 'general' (plain MiniLM) or an ONNX path. "
        "Default: $AFTERWORD_RECALL_ENCODER, else 'default'.",
    ),
    reranker: str = typer.Option(
        None,
        "--reranker",
        help="Cross-encoder that rescores the hybrid's best turns: 'default' (the shipped one), 'off' or an ONNX "
        "path. Default: $AFTERWORD_RECALL_RERANKER, else 'default'.",
    ),
    as_json: bool = JsonOpt,
) -> None:
    """The turns of a user's earlier conversations that best answer a question (raw text, this user only)."""
    if mode not in ("hybrid", "dense", "bm25"):
        fail("--mode must be hybrid, dense or bm25", as_json)
    with guard(as_json):
        found = recall(
            open_store(),
            query,
            user_id=user,
            k=k,
            mode=mode,  # type: ignore[arg-type]
            encoder=encoder,
            rerank=reranker,
        )
        hits = [h.as_dict() for h in found]

    def render(rows: list[dict[str, Any]]) -> None:
        tab = Table(title=f"{len(rows)} earlier turns of {user} for {query!r}")
        for c in ("when", "speaker", "score", "text", "message"):
            tab.add_column(c, overflow="fold")
        for r in rows:
            when = (r["created_utc"] or "")[:16].replace("T", " ")
            tab.add_row(when, r["speaker"], f"{r['score']:.2f}", r["text"], r["message_id"])
        console.print(tab)

    emit(hits, as_json, render)


@group.command("inject")
def inject_cmd(
    message: str = typer.Argument(..., help="A user message."),
    user: str = typer.Option(None, "--user"),
    budget: int = typer.Option(300, "--budget", help="Token budget."),
    recall_turns: int = typer.Option(0, "--recall-turns", min=0, help="Also up to N earlier turns of the user's."),
    as_json: bool = JsonOpt,
) -> None:
    """Preview what would be injected into a request with this user message."""
    with guard(as_json):
        inj = MemoryInjector(open_store(), MemoryConfig(token_budget=budget, recall_turns=recall_turns)).inject(
            [{"role": "user", "content": message}], user_id=user
        )
    data = {**inj.as_dict(), "messages": inj.messages}
    emit(
        data,
        as_json,
        lambda d: console.print(d["messages"][0]["content"] if d["items"] else "nothing to inject", markup=False),
    )


@group.command("forget")
def forget_cmd(
    user: str = typer.Option(..., "--user", help="The user to erase."),
    yes: bool = typer.Option(False, "--yes", help="Do not ask for confirmation."),
    as_json: bool = JsonOpt,
) -> None:
    """Forget a user everywhere (like ``afterword forget``), memories and index included."""
    if not yes and sys.stdin.isatty() and not typer.confirm(f"Erase all data of user {user!r}?"):
        raise typer.Exit(1)
    with guard(as_json):
        res = forget_user_memories(open_store(), user)
    emit(res, as_json, lambda d: console.print(f"forgot {user}: {len(d['memory_ids'])} memories"))


@group.command("reindex")
def reindex_cmd(as_json: bool = JsonOpt) -> None:
    """Rebuild the vector and full-text index from the memories table."""
    with guard(as_json):
        res = rebuild_index(open_store())
    emit(res, as_json, lambda d: console.print(f"indexed {d['indexed']} memories ({d['index']})"))


def register(app: typer.Typer) -> None:
    app.add_typer(group, name="memory")
