"""Commands over the history: import, embed, stats, show, feedback, search, export, forget, run."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import typer

from afterword.capture.wrap import feedback as record_feedback
from afterword.cli._common import (
    ADDRESS_HELP,
    WORKERS_HELP,
    JsonOpt,
    Table,
    console,
    emit,
    err_console,
    esc,
    fail,
    guard,
    open_store,
    parse_date,
    progress_bar,
    ray_only,
)
from afterword.errors import ImportRecordError
from afterword.export import export_jsonl
from afterword.importers import FORMATS, detect_format, run_import
from afterword.pipeline import run_pipeline, sample_path
from afterword.store.search import search


def _count_lines(path: Path) -> int | None:
    if path.stat().st_size > 2_000_000_000:
        return None
    with open(path, "rb") as fh:
        return sum(buf.count(b"\n") for buf in iter(lambda: fh.read(1 << 20), b""))


def _local_files(items: list[str], as_json: bool) -> list[Path]:
    """Plain files as given; directories and globs expand to their JSONL shards (sorted)."""
    from afterword.scale.pipelines import expand_shards

    out: list[Path] = []
    for item in items:
        if os.path.isfile(item):
            out.append(Path(item))
            continue
        with guard(as_json):
            found = [Path(p) for p in expand_shards(item)]
        parquet = [p for p in found if p.suffix == ".parquet"]
        if parquet:
            fail(f"{parquet[0]}: Parquet shards are read by --engine ray only", as_json)
        out += found
    return out


_SHARDS_HELP = "Log files, directories of shards, or quoted globs ('logs/part-*.jsonl')."
_ENGINE_HELP = "local (this process), or ray: one shard per Ray worker, in parallel."


def import_cmd(
    files: list[str] = typer.Argument(..., help=_SHARDS_HELP + " With --engine ray also Parquet shards."),
    fmt: str = typer.Option("auto", "--format", "-f", help=f"auto, {', '.join(FORMATS)}"),
    strict: bool = typer.Option(False, "--strict", help="Abort on the first bad record (local engine)."),
    engine: str = typer.Option("local", "--engine", help=_ENGINE_HELP),
    address: str = typer.Option(None, "--address", help=ADDRESS_HELP),
    workers: int = typer.Option(None, "--workers", min=1, help=WORKERS_HELP),
    as_json: bool = JsonOpt,
) -> None:
    """Import logs (OpenAI chat JSONL, ShareGPT, USS, ASAP, LoCoMo). Re-importing adds nothing."""
    ray_only(engine, as_json, **{"--address": address, "--workers": workers})
    if engine == "ray":
        if strict:
            fail("--strict is for the local engine; --engine ray skips bad records and reports them", as_json)
        _import_ray(files, fmt, address, workers, as_json)
        return
    store = open_store()
    results = []
    for f in _local_files(files, as_json):
        fmt_f = detect_format(f) if fmt == "auto" else fmt
        # One conversation a line in the JSONL formats, so lines are the bar's total.
        total = _count_lines(f) if fmt_f in ("openai", "sharegpt") else None
        with guard(as_json), progress_bar(f"importing {f.name}", total, not as_json) as adv:
            try:
                counts = run_import(store, f, fmt_f, strict=strict, progress=adv)
            except ImportRecordError as exc:
                fail(str(exc), as_json, record=exc.to_dict())
        results.append({"file": str(f), "format": fmt_f, **counts.as_dict()})
    if as_json:
        emit(results if len(results) > 1 else results[0], True)
        return
    for r in results:
        console.print(
            f"[bold]{esc(r['file'])}[/] ({r['format']}): imported {r['imported_conversations']} conversations / "
            f"{r['imported_messages']} messages / {r['imported_feedback']} feedback; "
            f"already present {r['present_conversations']} conversations; skipped {r['skipped']} bad records"
        )
        _print_errors(r["errors"])
        if not (r["imported_conversations"] or r["present_conversations"] or r["skipped"]):
            err_console.print(f"[bold yellow]warning:[/] {esc(r['file'])} holds no records")


def _print_errors(errors: list[dict[str, Any]]) -> None:
    for e in errors[:50]:
        console.print(
            f"  [red]{esc(str(e['file']))}:{e['line']}[/] field {esc(str(e['field'] or '-'))}: {esc(str(e['error']))}"
        )
    if len(errors) > 50:
        console.print(f"  … and {len(errors) - 50} more")


def _import_ray(files: list[str], fmt: str, address: str | None, workers: int | None, as_json: bool) -> None:
    from afterword.scale import expand_shards, import_sharded

    store = open_store()  # resolves the URL and migrates once, before any worker connects
    with guard(as_json):
        shards = expand_shards(files)
        with progress_bar(f"importing {len(shards)} shards on Ray", len(shards), not as_json) as adv:
            res = import_sharded(
                store.url, shards, fmt=fmt, num_workers=workers, address=address, progress=lambda *_: adv(1)
            )
    res = {"engine": "ray", "format": fmt, **res}
    if as_json:
        emit(res, True)
        return
    console.print(
        f"{res['shards']} shards on {res['workers']} Ray worker(s): imported {res['imported_conversations']} "
        f"conversations / {res['imported_messages']} messages / {res['imported_feedback']} feedback; "
        f"already present {res['present_conversations']} conversations; skipped {res['skipped']} bad records "
        f"({res['conversations_per_s']} conversations/s)"
    )
    _print_errors(res["errors"])


def embed_cmd(
    files: list[str] = typer.Argument(..., help=_SHARDS_HELP + " JSONL in any import format, or Parquet."),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory for the Parquet files."),
    fmt: str = typer.Option("auto", "--format", "-f", help=f"auto, {', '.join(FORMATS)}"),
    roles: str = typer.Option("user,assistant", "--roles", help="Comma-separated roles to embed."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace Parquet files already in --out."),
    engine: str = typer.Option("local", "--engine", help=_ENGINE_HELP),
    address: str = typer.Option(None, "--address", help=ADDRESS_HELP),
    workers: int = typer.Option(None, "--workers", min=1, help=WORKERS_HELP),
    as_json: bool = JsonOpt,
) -> None:
    """Embed every message of log shards (MiniLM, 384-d) into Parquet keyed by the store's message ids."""
    from afterword.scale import embed_local, embed_sharded, expand_shards

    ray_only(engine, as_json, **{"--address": address, "--workers": workers})
    role_list = tuple(r.strip() for r in roles.split(",") if r.strip())
    if not role_list:
        fail("--roles names no role", as_json)
    with guard(as_json):
        shards = expand_shards(files)
        if engine == "ray":
            with progress_bar(f"embedding {len(shards)} shards on Ray", None, not as_json):
                res = embed_sharded(
                    shards, out, fmt=fmt, roles=role_list, num_workers=workers, address=address, overwrite=overwrite
                )
        else:
            with progress_bar(f"embedding {len(shards)} shards", len(shards), not as_json) as adv:
                res = embed_local(
                    shards, out, fmt=fmt, roles=role_list, overwrite=overwrite, progress=lambda *_: adv(1)
                )
    res = {"engine": engine, **res}
    emit(
        res,
        as_json,
        lambda d: console.print(
            f"embedded {d['messages']} messages from {d['shards']} shards into {d['files']} Parquet files in "
            f"{d['output_dir']} ({d['messages_per_s']} messages/s, {d['workers']} worker(s))"
        ),
    )


def stats_cmd(as_json: bool = JsonOpt) -> None:
    """Counts of users, conversations, messages, feedback, judgments and memories."""
    with guard(as_json):
        s = open_store().stats()

    def render(d: dict[str, Any]) -> None:
        tab = Table(title=f"afterword store: {d['store']}")
        tab.add_column("what")
        tab.add_column("count", justify="right")
        for k in ("users", "conversations", "messages", "feedback", "judgments", "memories", "exports"):
            tab.add_row(k, str(d[k]))
        for role, n in sorted(d["messages_by_role"].items()):
            tab.add_row(f"  messages: {role}", str(n))
        for kind, n in sorted(d["feedback_by_kind"].items()):
            tab.add_row(f"  feedback: {kind}", str(n))
        for src, labels in sorted(d["judgments_by_source"].items()):
            tab.add_row(f"  judgments: {src}", ", ".join(f"{k} {v}" for k, v in sorted(labels.items())))
        console.print(tab)

    emit(s, as_json, render)


def show_cmd(
    conversation: str = typer.Argument(..., help="Conversation id or the source's session id."), as_json: bool = JsonOpt
) -> None:
    """Show a conversation with its feedback and judgments."""
    store = open_store()
    with guard(as_json):
        conv = store.get_conversation(conversation)
        judg = store.judgments_for([m.id for m in conv.messages if m.id])
    data = conv.model_dump(mode="json")
    data["judgments"] = [j.model_dump(mode="json") for j in judg]
    if as_json:
        emit(data, True)
        return
    console.print(
        f"[bold]conversation {conv.id}[/] user={conv.user_id} session={conv.external_id} "
        f"source={conv.source} started={conv.started_utc}"
    )
    fb = {}
    for f in conv.feedback:
        fb.setdefault(f.message_id, []).append(f)
    jd = {}
    for j in judg:
        jd.setdefault(j.message_id, []).append(j)
    for m in conv.messages:
        color = {"user": "cyan", "assistant": "green", "system": "magenta"}.get(m.role, "white")
        console.print(f"[{color}]{m.role:>9}[/] [dim]{m.id}[/] {esc(m.content)}")
        for f in fb.get(m.id, []):
            bits = [f"{k}={getattr(f, k)!r}" for k in ("thumbs", "rating", "comment", "correction") if getattr(f, k)]
            console.print(f"           [yellow]feedback[/] {f.kind}: {esc(' '.join(bits))}")
        for j in jd.get(m.id, []):
            ev = "; ".join(e.signal for e in j.evidence)
            console.print(
                f"           [blue]judgment[/] {j.source}: {j.label} score={j.score:+.2f} "
                f"conf={j.confidence:.2f} [{ev}]"
            )


def feedback_cmd(
    message_id: str = typer.Argument(...),
    thumbs: str = typer.Option(None, "--thumbs", help="up or down"),
    rating: float = typer.Option(None, "--rating", min=1, max=5),
    comment: str = typer.Option(None, "--comment"),
    correction: str = typer.Option(None, "--correction", help="The right answer."),
    as_json: bool = JsonOpt,
) -> None:
    """Record explicit feedback on an assistant message."""
    t = None
    if thumbs is not None:
        t = {"up": 1, "down": -1, "1": 1, "-1": -1}.get(thumbs.lower())
        if t is None:
            fail("--thumbs must be up or down", as_json)
    if t is None and rating is None and not comment and not correction:
        fail("give at least one of --thumbs, --rating, --comment, --correction", as_json)
    with guard(as_json):
        fid = record_feedback(
            message_id, thumbs=t, rating=rating, comment=comment, correction=correction, store=open_store()
        )
    emit(
        {"feedback_id": fid, "message_id": message_id},
        as_json,
        lambda d: console.print(f"recorded feedback {d['feedback_id']} on {d['message_id']}"),
    )


def search_cmd(
    query: str = typer.Argument(...),
    user: str = typer.Option(None, "--user"),
    role: str = typer.Option(None, "--role"),
    since: str = typer.Option(None, "--since", help="ISO date"),
    until: str = typer.Option(None, "--until", help="ISO date"),
    feedback: str = typer.Option(None, "--feedback", help="any|none|up|down|correction|rating|comment"),
    limit: int = typer.Option(20, "--limit"),
    as_json: bool = JsonOpt,
) -> None:
    """Full-text search over the history."""
    with guard(as_json):
        try:
            hits = search(
                open_store(),
                query,
                user_id=user,
                role=role,
                since=parse_date(since, "--since"),
                until=parse_date(until, "--until"),
                feedback=feedback,
                limit=limit,
            )
        except ValueError as exc:
            fail(str(exc), as_json)

    def render(rows: list[dict[str, Any]]) -> None:
        tab = Table(title=f"{len(rows)} hits for {query!r}")
        for c in ("message", "conversation", "user", "role", "text"):
            tab.add_column(c, overflow="fold")
        for r in rows:
            tab.add_row(r["message_id"], r["conversation_id"], r["user_id"] or "", r["role"], r["content"][:160])
        console.print(tab)

    emit(hits, as_json, render)


def export_cmd(
    out: Path = typer.Option(..., "--out", "-o", help="Output file."),
    fmt: str = typer.Option("jsonl", "--format", help="jsonl (OpenAI chat format)"),
    redact: bool = typer.Option(True, "--redact/--no-redact", help="Scrub PII (on by default)."),
    user: str = typer.Option(None, "--user"),
    since: str = typer.Option(None, "--since"),
    until: str = typer.Option(None, "--until"),
    as_json: bool = JsonOpt,
) -> None:
    """Export the history as OpenAI-format JSONL (redacted unless --no-redact)."""
    if fmt != "jsonl":
        fail("only --format jsonl is supported here; training sets: afterword dataset build", as_json)
    store = open_store()
    with guard(as_json), progress_bar("exporting", len(store.conversation_ids(user_id=user)), not as_json) as adv:
        res = export_jsonl(
            store,
            out,
            redact=redact,
            user_id=user,
            since=parse_date(since),
            until=parse_date(until),
            command=" ".join(["afterword", *sys.argv[1:]]),
            progress=adv,
        )
    emit(
        res,
        as_json,
        lambda d: console.print(
            f"wrote {d['conversations']} conversations to {d['path']} (redacted: {d['redacted']}; "
            f"{d['redaction'] and d['redaction']['by_type']})"
        ),
    )


def forget_cmd(
    user: str = typer.Option(..., "--user", help="The user to erase."),
    yes: bool = typer.Option(False, "--yes", help="Do not ask for confirmation."),
    as_json: bool = JsonOpt,
) -> None:
    """Remove every trace of a user and mark datasets and models built from them as stale."""
    if not yes and sys.stdin.isatty() and not typer.confirm(f"Erase all data of user {user!r}?"):
        raise typer.Exit(1)
    from afterword.memory import forget_user_memories  # rows everywhere, then the memory index

    with guard(as_json):
        res = forget_user_memories(open_store(), user)
    # Forgetting is idempotent (a retried erasure request must not fail), but a mistyped id should not look
    # like success: say when nothing was found.
    res["found"] = any(res["removed"].values()) or bool(res.get("memory_ids"))

    def render(d: dict[str, Any]) -> None:
        if not d["found"]:
            err_console.print(f"[bold yellow]warning:[/] no data of user {esc(user)!r} in this store (check the id)")
        console.print(
            f"forgot user {esc(user)}: removed {sum(d['removed'].values())} rows; "
            f"stale exports: {d['stale_exports'] or 'none'}"
        )

    emit(res, as_json, render)


def run_cmd(
    file: Path = typer.Argument(None, exists=True, dir_okay=False, help="Log file (default: the shipped sample)."),
    fmt: str = typer.Option("auto", "--format", "-f"),
    out_dir: Path = typer.Option(Path("afterword-out"), "--out-dir", help="Where datasets and reports go."),
    as_json: bool = JsonOpt,
) -> None:
    """The main job: ingest, then every flywheel stage that exists, then a summary."""
    store = open_store()

    def on_stage(name: str, res: dict[str, Any]) -> None:
        if not as_json:
            brief = {k: v for k, v in res.items() if k != "errors" and not isinstance(v, list | dict)}
            # Nested results that count rows (the datasets stage: one per kind) show their count.
            brief.update({f"{k}_rows": v["rows"] for k, v in res.items() if isinstance(v, dict) and "rows" in v})
            console.print(f"[bold green]✓ {name}[/] " + esc(", ".join(f"{k}={v}" for k, v in brief.items())))
            _print_errors(res.get("errors") or [])  # bad records: file, line and field, as `import` shows them

    if not as_json:
        console.print(f"[bold]afterword run[/] on {esc(str(file or sample_path()))} → {esc(str(store))}")
    with guard(as_json):
        summary = run_pipeline(store, file, fmt=fmt, out_dir=out_dir, on_stage=on_stage)
    if as_json:
        emit(summary, True)
    else:
        stats_cmd(False)


def register(app: typer.Typer) -> None:
    app.command("run")(run_cmd)
    app.command("import")(import_cmd)
    app.command("embed")(embed_cmd)
    app.command("stats")(stats_cmd)
    app.command("show")(show_cmd)
    app.command("feedback")(feedback_cmd)
    app.command("search")(search_cmd)
    app.command("export")(export_cmd)
    app.command("forget")(forget_cmd)
