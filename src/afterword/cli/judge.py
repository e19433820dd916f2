"""``afterword judge``: judge what is pending, explain a judgment, calibrate on your own feedback."""

from __future__ import annotations

from typing import Any

import typer
from rich.text import Text

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

judge_app = typer.Typer(help="Judge responses in hindsight from what the user did next.", no_args_is_help=False)


@judge_app.callback(invoke_without_command=True)
def judge_cmd(
    ctx: typer.Context,
    since: str = typer.Option(None, "--since", help="Only conversations started on/after this ISO date."),
    endpoint: str = typer.Option(
        None,
        "--endpoint",
        envvar="AFTERWORD_LLM_URL",
        help="OpenAI-compatible URL: adds the rubric LLM judge and a combined verdict.",
    ),
    model: str = typer.Option("local", "--model", envvar="AFTERWORD_LLM_MODEL"),
    batch_size: int = typer.Option(200, "--batch-size", min=1),
    head: str = typer.Option(
        None,
        "--head",
        envvar="AFTERWORD_JUDGE_HEAD",
        help="The judge's head: 'finetuned' (default), 'lr' (3-5x faster, 3-6 UAR points less), or a .npz path.",
    ),
    rejudge: bool = typer.Option(
        False,
        "--rejudge",
        help="Re-judge every conversation in scope (with --since, those started on/after it), not only pending ones: "
        "run it after `afterword judge calibrate` stores a calibrator, or after changing --head, to apply it to "
        "existing judgments.",
    ),
    engine: str = typer.Option("local", "--engine", help="local, or ray for batch work over a cluster."),
    address: str = typer.Option(None, "--address", help=ADDRESS_HELP),
    workers: int = typer.Option(None, "--workers", min=1, help=WORKERS_HELP),
    as_json: bool = JsonOpt,
) -> None:
    """Judge every response not yet judged (incremental and resumable).

    Pending work is derived from the store: responses without a judgment, responses whose explicit
    feedback now says otherwise than their judgment (however old that feedback is), and earlier
    conversations of a user who came back. A new calibrator or judge head is not pending work by
    itself: apply it with --rejudge.
    """
    if ctx.invoked_subcommand is not None:
        return
    from afterword.judge.runner import judge_store, pending_conversations

    ray_only(engine, as_json, **{"--address": address, "--workers": workers})
    store = open_store()
    llm_judge = None
    if endpoint:
        from afterword.judge.llm_judge import LLMJudge
        from afterword.llm import LLMClient

        llm_judge = LLMJudge(LLMClient(base_url=endpoint, model=model))
    with guard(as_json):
        from afterword.judge.judge_config import JudgeConfig
        from afterword.judge.model import head_path

        since_dt = parse_date(since, "--since")
        config = JudgeConfig(model_path=str(head_path(head))) if head else None
        if engine == "ray":
            from afterword.judge.distributed import judge_store_ray

            skipped = None
            if llm_judge is not None:
                # By name: typer ships its own copy of click, so its ParameterSource is not click's.
                if getattr(ctx.get_parameter_source("endpoint"), "name", None) != "ENVIRONMENT":
                    fail("--endpoint (the LLM judge) runs with the local engine only", as_json)
                # Set for every command by the environment, not asked for here: judge without it, and say so.
                llm_judge, skipped = None, "AFTERWORD_LLM_URL ignored: the LLM judge runs with the local engine only"
                err_console.print(f"[yellow]note:[/] {skipped}")
            with progress_bar("judging on Ray", None, not as_json) as adv:
                res = judge_store_ray(
                    store,
                    since=since_dt,
                    address=address,
                    num_workers=workers,
                    batch_size=batch_size,
                    config=config,
                    progress=adv,
                    rejudge=rejudge,
                )
            if skipped:
                res["llm_judge_skipped"] = skipped
        else:
            n = len(pending_conversations(store, since=since_dt, rejudge=rejudge))
            with progress_bar("judging", n, not as_json) as adv:
                res = judge_store(
                    store,
                    since=since_dt,
                    config=config,
                    llm_judge=llm_judge,
                    batch_size=batch_size,
                    progress=adv,
                    rejudge=rejudge,
                )
    emit(
        res,
        as_json,
        lambda d: console.print(
            f"judged {d['judged']} responses in {d['conversations']} conversations "
            f"({d['turns_per_s'] or '-'} turns/s): {d['labels']}"
        ),
    )


@judge_app.command("explain")
def explain_cmd(message_id: str = typer.Argument(...), as_json: bool = JsonOpt) -> None:
    """Show each judgment of a message and the evidence it used."""
    from afterword.judge.runner import explain

    with guard(as_json):
        data = explain(open_store(), message_id)

    def render(d: dict[str, Any]) -> None:
        console.print(f"[bold]{d['role']}[/] {d['message_id']}: {esc(d['content'][:300])}")
        if not d["judgments"]:
            console.print("[yellow]not judged yet: run `afterword judge`[/]")
        for j in d["judgments"]:
            console.print(
                f"\n[bold blue]{j['source']}[/]: {j['label']} score={j['score']:+.2f} "
                f"confidence={j['confidence']:.2f} ({j['model_version']})"
            )
            tab = Table(show_header=True)
            for c in ("signal", "weight", "message", "text / detail"):
                tab.add_column(c, overflow="fold")
            for e in j["evidence"]:
                tab.add_row(
                    e["signal"],
                    f"{e['weight']:+.2f}",
                    f"{e['role']} {e['message_id']}",
                    Text(e["text"][:120]) + Text("\n" + (e["detail"] or ""), style="dim"),
                )
            console.print(tab)

    emit(data, as_json, render)


@judge_app.command("calibrate")
def calibrate_cmd(
    folds: int = typer.Option(5, "--folds", min=2),
    min_items: int = typer.Option(20, "--min-items", min=4),
    min_gain: float = typer.Option(0.01, "--min-gain", help="Replace only if cross-validated UAR improves this much."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Report only; never replace the calibrator."),
    as_json: bool = JsonOpt,
) -> None:
    """Fit a calibrator from the explicit feedback in the store; report CV metrics before replacing anything.

    A stored calibrator applies to judgments written from then on; existing judgments keep their
    labels until re-judged: run `afterword judge --rejudge` (optionally with --since) to apply it.
    """
    from afterword.judge.calibrate import calibrate

    with guard(as_json):
        rep = calibrate(open_store(), folds=folds, min_items=min_items, min_gain=min_gain, dry_run=dry_run)
    if rep.get("replaced"):
        rep["next"] = "afterword judge --rejudge"

    def render(d: dict[str, Any]) -> None:
        console.print(f"explicit labels: {d['n']} {d['label_counts']}")
        if "before" in d:
            for k in ("uar", "macro_f1", "acc"):
                console.print(
                    f"  {k:>8}: before {d['before'][k]:.3f}  after {d['after'][k]:.3f}  ({d['folds']}-fold CV)"
                )
        console.print(("[green]calibrator stored[/]: " if d["replaced"] else "[yellow]not replaced[/]: ") + d["reason"])
        if d["replaced"]:
            console.print("existing judgments are unchanged: run `afterword judge --rejudge` to apply it to them")

    emit(rep, as_json, render)


def register(app: typer.Typer) -> None:
    app.add_typer(judge_app, name="judge")
