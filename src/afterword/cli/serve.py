"""``afterword serve`` (the OpenAI-compatible proxy) and ``afterword keys`` (its API keys)."""

from __future__ import annotations

from typing import Any

import typer

from afterword.cli._common import JsonOpt, Table, console, emit, fail, guard, open_store, state
from afterword.memory.memory_config import MemoryConfig
from afterword.serve import ProxyConfig, create_key, is_loopback, list_keys, revoke_key, run
from afterword.serve.keys import SCOPES, get_key, key_id

__all__ = ["register"]

keys_app = typer.Typer(help="API keys for the proxy and the UI (stored hashed; shown once).", no_args_is_help=True)


def serve_cmd(
    upstream: str = typer.Option(
        ..., "--upstream", help="The model server's OpenAI base URL, e.g. http://host:8080/v1"
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind."),
    port: int = typer.Option(8000, "--port", help="Port to bind."),
    workers: int = typer.Option(1, "--workers", min=1, help="Worker processes."),
    auth: bool | None = typer.Option(
        None,
        "--auth/--no-auth",
        help="Require afterword API keys. Default: required unless bound to a loopback host.",
    ),
    memory: bool = typer.Option(True, "--memory/--no-memory", help="Inject users' memories into requests."),
    recall_turns: int = typer.Option(
        0, "--recall-turns", min=0, help="Also inject up to N matching turns of the user's earlier conversations."
    ),
    upstream_key: str | None = typer.Option(
        None, "--upstream-key", envvar="AFTERWORD_UPSTREAM_KEY", help="Key sent to the upstream (never the client's)."
    ),
    spool: str | None = typer.Option(None, "--spool", help="Spool file for logs while the store is down."),
    max_body_mb: float = typer.Option(8.0, "--max-body-mb", help="Larger request bodies get 413."),
    access_log: bool = typer.Option(False, "--access-log/--no-access-log", help="uvicorn's line per request."),
    as_json: bool = JsonOpt,
) -> None:
    """Run the OpenAI-compatible proxy: logs every call, injects memories, passes upstream errors through."""
    require_key = auth if auth is not None else not is_loopback(host)
    if not require_key and not is_loopback(host):
        console.print(f"[bold yellow]warning:[/] no API keys required on {host}: anyone who can reach it can use it")
    try:
        config = ProxyConfig(
            upstream=upstream,
            store_url=state.db,
            upstream_key=upstream_key,
            require_key=require_key,
            memory=memory,
            memory_config=MemoryConfig(recall_turns=recall_turns),
            spool_path=spool,
            max_body_bytes=int(max_body_mb * 1024 * 1024),
        )
    except ValueError as exc:
        fail(str(exc).splitlines()[-1] if str(exc) else "invalid settings", as_json)
    info = {
        "url": f"http://{host}:{port}/v1",
        "upstream": config.upstream,
        "workers": workers,
        "auth": config.require_key,
        "memory": config.memory,
        "recall_turns": config.memory_config.recall_turns,
    }
    emit(info, as_json, lambda d: console.print(f"afterword proxy on [bold]{d['url']}[/] → {d['upstream']} {d}"))
    run(
        config,
        host=host,
        port=port,
        workers=workers,
        log_level="warning" if as_json else "info",
        access_log=access_log,
    )


def keys_create_cmd(
    name: str = typer.Argument(..., help="Who or what the key is for."),
    scope: str = typer.Option("proxy", "--scope", help=f"One of {', '.join(SCOPES)}."),
    as_json: bool = JsonOpt,
) -> None:
    """Create a key. It is printed once; only its hash is stored."""
    with guard(as_json):
        try:
            key = create_key(open_store(), name, scope)
        except ValueError as exc:
            fail(str(exc), as_json)
        data = {"key": key, **get_key(open_store(), key_id(key)).as_dict()}
    emit(data, as_json, lambda d: console.print(f"{d['key']}\n[dim]id {d['id']}, scope {d['scope']}; shown once[/]"))


def keys_list_cmd(
    all_keys: bool = typer.Option(False, "--all", help="Include revoked keys."),
    as_json: bool = JsonOpt,
) -> None:
    """List keys (never their secrets)."""
    with guard(as_json):
        keys = [k.as_dict() for k in list_keys(open_store(), include_revoked=all_keys)]

    def render(rows: list[dict[str, Any]]) -> None:
        tab = Table(title="afterword API keys")
        for col in ("id", "name", "scope", "created_utc", "revoked_utc"):
            tab.add_column(col)
        for r in rows:
            tab.add_row(*(str(r[c] or "") for c in ("id", "name", "scope", "created_utc", "revoked_utc")))
        console.print(tab)

    emit(keys, as_json, render)


def keys_revoke_cmd(
    key_id: str = typer.Argument(..., help="The key's id (see 'afterword keys list')."), as_json: bool = JsonOpt
) -> None:
    """Revoke a key. Running proxies stop accepting it within their cache time (30 s)."""
    with guard(as_json):
        key = revoke_key(open_store(), key_id)
    emit(key.as_dict(), as_json, lambda d: console.print(f"revoked {d['id']} ({d['name']})"))


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_cmd)
    keys_app.command("create")(keys_create_cmd)
    keys_app.command("list")(keys_list_cmd)
    keys_app.command("revoke")(keys_revoke_cmd)
    app.add_typer(keys_app, name="keys")
