"""``afterword synth expand`` and ``afterword artifacts ingest|reverse|replay|list``: thin wrappers over
:mod:`afterword.synth` and :mod:`afterword.synth.artifacts`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from afterword.cli._common import JsonOpt, Table, console, emit, fail, guard, open_store, progress_bar

synth_app = typer.Typer(help="Synthetic expansion of trusted seeds, verified before it is kept.", no_args_is_help=True)
artifacts_app = typer.Typer(
    help="Mine expert documents (memos) for questions, sources and conclusions.", no_args_is_help=True
)

EndpointOpt = typer.Option(None, "--endpoint", envvar="AFTERWORD_LLM_URL", help="OpenAI-compatible base URL.")
ModelOpt = typer.Option("local", "--model", envvar="AFTERWORD_LLM_MODEL", help="Model name at the endpoint.")


def _client(endpoint: str | None, model: str, as_json: bool, required: bool = True) -> Any:
    if not endpoint:
        if required:
            fail("needs an LLM: pass --endpoint or set AFTERWORD_LLM_URL", as_json)
        return None
    from afterword.llm import LLMClient

    return LLMClient(base_url=endpoint, model=model)


@synth_app.command("expand")
def expand_cmd(
    seeds: str = typer.Option("corrections", "--seeds", help="corrections, suite, or a JSONL seed file."),
    n: int = typer.Option(20, "--n", min=1, help="Generation attempts (candidates asked for)."),
    endpoint: str = EndpointOpt,
    model: str = ModelOpt,
    suite: str = typer.Option(None, "--suite", help="With --seeds suite: only this suite."),
    judge: bool = typer.Option(True, "--judge/--no-judge", help="Run the LLM rubric judge filter."),
    min_score: int = typer.Option(3, "--min-score", min=1, max=5),
    near_dup: float = typer.Option(0.95, "--near-dup", help="Cosine at which two prompts are duplicates."),
    low: float = typer.Option(0.30, "--low", help="Below this similarity to its seed: off-topic."),
    high: float = typer.Option(0.90, "--high", help="At/above this similarity to its seed: a copy."),
    baseline: bool = typer.Option(False, "--baseline", help="One persona/style/temperature, no live dedup."),
    save: bool = typer.Option(True, "--save/--no-save", help="Store kept items as source=synthetic."),
    out: Path = typer.Option(None, "--out", help="Also write kept items (with provenance) as JSONL."),
    as_json: bool = JsonOpt,
) -> None:
    """Generate verified variants of trusted seeds and keep those that pass every filter."""
    from afterword.synth import FilterConfig, Strategy, expand

    llm = _client(endpoint, model, as_json)
    with guard(as_json):
        try:
            cfg = FilterConfig(near_dup=near_dup, low=low, high=high, judge=judge, min_score=min_score)
        except ValueError as exc:
            fail(str(exc), as_json)
        store = open_store()
        strategy = Strategy.fixed() if baseline else Strategy()
        with progress_bar("generating", n, not as_json) as adv:
            res = expand(store, seeds, n, llm, strategy=strategy, filters=cfg, suite=suite, save=save, progress=adv)
    if out:
        with open(out, "w", encoding="utf-8") as fh:
            for it in res.items:
                fh.write(json.dumps(it.as_dict(), ensure_ascii=False) + "\n")
    data = res.as_dict()

    def render(d: dict[str, Any]) -> None:
        tab = Table(title=f"synth expand: {d['kept']} kept of {d['attempts']} attempts ({d['model']})")
        for col in ("stage", "seen", "dropped", "kept", "why dropped"):
            tab.add_column(col)
        for r in [d["generation"], *d["filters"]]:
            reasons = ", ".join(f"{k} {v}" for k, v in r["reasons"].items())
            tab.add_row(r["filter"], str(r["seen"]), str(r["dropped"]), str(r["kept"]), reasons)
        console.print(tab)
        console.print(f"{d['kept_per_s']} kept/s, {d['candidates_per_s']} candidates/s; saved: {d['saved']}")

    emit(data, as_json, render)


@artifacts_app.command("ingest")
def ingest_cmd(
    directory: Path = typer.Argument(..., exists=True, file_okay=False, help="Folder of .md/.txt/.html/.pdf files."),
    labels: Path = typer.Option(None, "--labels", exists=True, dir_okay=False, help="Labelled options (JSON)."),
    endpoint: str = typer.Option(None, "--endpoint", help="Also ask this LLM for citations the patterns miss."),
    model: str = ModelOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Read expert documents; extract cited sources and conclusions; store them as artifacts."""
    from afterword.synth.artifacts import ingest
    from afterword.synth.artifacts.documents import SUFFIXES

    llm = _client(endpoint, model, as_json, required=False)
    total = sum(1 for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
    with guard(as_json), progress_bar("ingesting", total, not as_json) as adv:
        res = ingest(open_store(), directory, llm=llm, labels=labels, progress=adv)
    emit(
        res.as_dict(),
        as_json,
        lambda d: console.print(
            f"{d['artifacts']} artifacts ({d['added']} new, {d['present']} already present) {d['by_format']}; "
            f"{d['citations']} citations {d['citations_by_kind']}; {d['with_conclusion']} with a conclusion; "
            f"{len(d['skipped'])} skipped"
        ),
    )


@artifacts_app.command("list")
def list_cmd(as_json: bool = JsonOpt) -> None:
    """The stored artifacts, with citation counts and whether they were reversed."""
    from afterword.synth.artifacts import list_artifacts

    with guard(as_json):
        arts = [a.summary() for a in list_artifacts(open_store())]

    def render(rows: list[dict[str, Any]]) -> None:
        tab = Table(title=f"{len(rows)} artifacts")
        for col in ("id", "format", "title", "citations", "reversed"):
            tab.add_column(col)
        for r in rows:
            tab.add_row(r["id"][:12], r["format"], r["title"][:60], str(r["citations"]), "yes" if r["reversed"] else "")
        console.print(tab)

    emit(arts, as_json, render)


@artifacts_app.command("reverse")
def reverse_cmd(
    endpoint: str = typer.Option(None, "--endpoint", envvar="AFTERWORD_LLM_URL", help="LLM that reconstructs."),
    model: str = ModelOpt,
    ids: list[str] = typer.Option(None, "--id", help="Only these artifact ids (repeatable)."),
    redo: bool = typer.Option(False, "--redo", help="Reconstruct artifacts already reversed."),
    out: Path = typer.Option(None, "--out", help="Write sft.jsonl and process.jsonl here (lineage recorded)."),
    as_json: bool = JsonOpt,
) -> None:
    """Reconstruct each artifact's question and research steps into training records linked to it."""
    from afterword.synth.artifacts import export_reverse, list_artifacts, reverse

    llm = _client(endpoint, model, as_json, required=False)
    with guard(as_json):
        store = open_store()
        n = len(list_artifacts(store, ids or None))
        with progress_bar("reversing", n, not as_json) as adv:
            res = reverse(store, llm, ids=ids or None, redo=redo, progress=adv)
        data = res.as_dict()
        if out:
            data["export"] = export_reverse(store, out, command="afterword artifacts reverse")
    emit(
        data,
        as_json,
        lambda d: console.print(
            f"reversed {d['artifacts']} artifacts; questions from {d['question_sources']}, steps from "
            f"{d['steps_sources']}" + (f"; wrote {d['export']['sft']['path']}" if d.get("export") else "")
        ),
    )


@artifacts_app.command("replay")
def replay_cmd(
    endpoint: str = typer.Option(..., "--endpoint", envvar="AFTERWORD_LLM_URL", help="The model/pipeline to score."),
    model: str = ModelOpt,
    judge_endpoint: str = typer.Option(None, "--judge-endpoint", help="Judge LLM (default: the scored endpoint)."),
    judge_model: str = typer.Option(None, "--judge-model"),
    ids: list[str] = typer.Option(None, "--id", help="Only these artifact ids (repeatable)."),
    max_tokens: int = typer.Option(400, "--max-tokens", min=16),
    out: Path = typer.Option(None, "--out", help="Write the full report (per artifact and overall) as JSON."),
    as_json: bool = JsonOpt,
) -> None:
    """Ask a model the reconstructed questions; score its citations and conclusions against the artifacts."""
    from afterword.synth.artifacts import list_artifacts, replay

    llm = _client(endpoint, model, as_json)
    judge = _client(judge_endpoint, judge_model or model, as_json, required=False)
    with guard(as_json):
        store = open_store()
        n = sum(1 for a in list_artifacts(store, ids or None) if a.reconstruction is not None)
        if n == 0:
            fail("no reversed artifacts: run `afterword artifacts reverse` first", as_json)
        with progress_bar("replaying", n, not as_json) as adv:
            rep = replay(store, llm, judge=judge, ids=ids or None, max_tokens=max_tokens, progress=adv)
    data = rep.as_dict()
    if out:
        out.write_text(json.dumps(data, indent=1, ensure_ascii=False), encoding="utf-8")

    def render(d: dict[str, Any]) -> None:
        tab = Table(title=f"replay: {d['overall']['model']}")
        for col in ("artifact", "cit. precision", "cit. recall", "conclusion", "agree"):
            tab.add_column(col)
        for i in d["artifacts"]:
            if "error" in i:
                tab.add_row(Path(i["path"]).name, "-", "-", "error", i["error"][:40])
                continue
            c = i["citations"]
            tab.add_row(
                Path(i["path"]).name,
                str(c["precision"]),
                str(c["recall"]),
                i["conclusion"]["method"],
                str(i["conclusion"]["agree"]),
            )
        console.print(tab)
        console.print(d["overall"], markup=False)

    emit(data, as_json, render)


def register(app: typer.Typer) -> None:
    app.add_typer(synth_app, name="synth")
    app.add_typer(artifacts_app, name="artifacts")
