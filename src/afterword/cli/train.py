"""``afterword train reward|sft|dpo|kto`` and ``afterword score``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from afterword.cli._common import (
    JsonOpt,
    Table,
    choice,
    console,
    emit,
    fail,
    guard,
    open_store,
    parse_date,
    progress_bar,
)
from afterword.cli.dataset import command_line

__all__ = ["register"]

train_app = typer.Typer(help="Train a preference (reward) model or fine-tune a model with LoRA.")


@train_app.command("reward")
def reward(
    ctx: typer.Context,
    out: str = typer.Option("models/reward", "--out", help="Output folder."),
    head: str = typer.Option(
        "logreg", "--head", help="logreg | mlp (CPU heads on MiniLM features)", callback=choice("logreg", "mlp")
    ),
    min_confidence: float = typer.Option(0.6, "--min-confidence", min=0.0, max=1.0),
    split: str = typer.Option("user", "--split", help="user | time | none", callback=choice("user", "time", "none")),
    test_fraction: float = typer.Option(0.2, "--test-fraction", min=0.05, max=0.9),
    seed: int = typer.Option(0, "--seed"),
    since: str = typer.Option(None, "--since"),
    until: str = typer.Option(None, "--until"),
    users: list[str] = typer.Option(None, "--user"),
    transformer: bool = typer.Option(False, "--transformer", help="TRL RewardTrainer + LoRA instead (GPU)."),
    dataset: str = typer.Option(None, "--dataset", help="--transformer: a reward/dpo dataset folder (TRL format)."),
    base: str = typer.Option(None, "--base", help="--transformer: base model (default SmolLM2-135M GGUF)."),
    max_steps: int = typer.Option(-1, "--max-steps", help="--transformer: steps (-1: one epoch)."),
    as_json: bool = JsonOpt,
) -> None:
    """Learn to score (context, response) pairs; reports held-out pairwise accuracy against baselines."""
    from afterword.train import RewardConfig, train_reward, train_transformer_reward

    with guard(as_json):
        store = open_store()
        cmd = command_line(ctx)
        if transformer:
            if not dataset:
                fail("--transformer needs --dataset (build one with `afterword dataset build --kind reward`)", as_json)
            doc = train_transformer_reward(dataset, out, base=base, max_steps=max_steps, store=store, command=cmd)
            emit(doc, as_json)
            return
        cfg = RewardConfig(
            head=head, min_confidence=min_confidence, split=split, test_fraction=test_fraction, seed=seed
        )
        with progress_bar("reading the store", None, enabled=not as_json) as advance:
            res = train_reward(
                store,
                out,
                config=cfg,
                since=parse_date(since, "--since"),
                until=parse_date(until, "--until"),
                users=users or None,
                command=cmd,
                progress=advance,
            )

    def render(d: dict[str, Any]) -> None:

        tab = Table("held-out pairs", "n", "model", "length baseline", "random baseline")
        for name, m in d["metrics"].items():
            tab.add_row(
                *[name]
                + [
                    ("n/a" if m[k] is None else f"{m[k]:.3f}" if isinstance(m[k], float) else str(m[k]))
                    for k in ("pairs", "accuracy", "length_baseline", "random_baseline")
                ]
            )
        console.print(tab)
        console.print(f"saved to {d['out_dir']} (export id {d['export_id']}) in {d['seconds']} s")

    emit(res.as_dict(), as_json, render)


def _finetune_command(kind: str) -> Any:
    def command(
        ctx: typer.Context,
        dataset: str = typer.Option(..., "--dataset", help=f"A {kind} dataset folder (afterword dataset build)."),
        base: str = typer.Option(None, "--base", help="Base model: folder, .gguf or HF id (default SmolLM2-135M)."),
        out: str = typer.Option(f"models/{kind}-lora", "--out"),
        max_steps: int = typer.Option(-1, "--max-steps", help="Steps (-1: --epochs over the data)."),
        epochs: float = typer.Option(1.0, "--epochs", min=0.01),
        learning_rate: float = typer.Option(1e-4, "--lr", min=1e-9),
        batch_size: int = typer.Option(2, "--batch-size", min=1),
        grad_accum: int = typer.Option(1, "--grad-accum"),
        lora_r: int = typer.Option(8, "--lora-r", min=1),
        beta: float = typer.Option(0.1, "--beta", help="DPO/KTO beta."),
        max_length: int = typer.Option(512, "--max-length", min=8),
        device: str = typer.Option(None, "--device", help="cpu | cuda (default: cuda when present)."),
        seed: int = typer.Option(0, "--seed"),
        as_json: bool = JsonOpt,
    ) -> None:
        from afterword.train import finetune

        with guard(as_json):
            res = finetune(
                kind,
                dataset,
                out=out,
                base=base,
                max_steps=max_steps,
                epochs=epochs,
                learning_rate=learning_rate,
                batch_size=batch_size,
                grad_accum=grad_accum,
                lora_r=lora_r,
                beta=beta,
                max_length=max_length,
                device=device,
                seed=seed,
                store=open_store(),
                command=command_line(ctx),
            )

        def render(d: dict[str, Any]) -> None:
            console.print(
                f"[bold]{kind}[/] LoRA on {d['base']} ({d['device']}): {d['steps']} steps, "
                f"{d['steps_per_s']} steps/s -> {d['out_dir']}"
            )
            for k, v in d["metrics"].items():
                console.print(f"  {k}: {v['first']:.4f} -> {v['last']:.4f}")

        emit(res.as_dict(), as_json, render)

    command.__doc__ = f"LoRA fine-tune with TRL's {kind.upper()} trainer; writes an adapter and a model card."
    return command


for _kind in ("sft", "dpo", "kto"):
    train_app.command(_kind)(_finetune_command(_kind))


def score(
    ctx: typer.Context,
    model: str = typer.Option("models/reward", "--model", help="A reward model folder (afterword train reward)."),
    context: str = typer.Option(None, "--context", help="Rank candidates for this prompt instead of scoring traffic."),
    candidates: list[str] = typer.Option(None, "--candidate", help="A candidate response (repeatable)."),
    candidates_file: Path = typer.Option(None, "--candidates-file", help="JSON list of candidate strings."),
    since: str = typer.Option(None, "--since"),
    until: str = typer.Option(None, "--until"),
    user: str = typer.Option(None, "--user"),
    limit: int = typer.Option(None, "--limit", help="Only the newest N conversations."),
    top: int = typer.Option(20, "--top", help="Rows to print (lowest scores first)."),
    as_json: bool = JsonOpt,
) -> None:
    """Score new traffic with a reward model (lowest first), or rank --candidate responses to a --context."""
    from afterword.train import rank_candidates, score_traffic

    with guard(as_json):
        cands = list(candidates or [])
        if candidates_file:
            cands += list(json.loads(candidates_file.read_text()))
        if context is not None:
            if not cands:
                fail("--context needs at least one --candidate or --candidates-file", as_json)
            emit({"context": context, "ranking": rank_candidates(model, context, cands)}, as_json)
            return
        store = open_store()
        with progress_bar("scoring", None, enabled=not as_json) as advance:
            rows = score_traffic(
                store,
                model,
                since=parse_date(since, "--since"),
                until=parse_date(until, "--until"),
                user_id=user,
                limit=limit,
                progress=advance,
            )

    def render(d: dict[str, Any]) -> None:

        tab = Table("score", "message", "user", "response")
        for r in d["rows"][:top]:
            tab.add_row(f"{r['score']:.3f}", r["message_id"], r["user_id"] or "", r["response"][:80])
        console.print(tab)
        console.print(f"{d['scored']} responses scored")

    emit({"scored": len(rows), "rows": rows if as_json else rows[:top]}, as_json, render)


def register(app: typer.Typer) -> None:
    app.add_typer(train_app, name="train")
    app.command("score")(score)
