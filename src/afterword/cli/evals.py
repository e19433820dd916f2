"""Commands for error analysis and evaluation: failures, clusters, suite, eval, report, ui, tandem."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from afterword.cli._common import (
    JsonOpt,
    Table,
    console,
    emit,
    err_console,
    esc,
    fail,
    guard,
    open_store,
    progress_bar,
)

suite_app = typer.Typer(help="Frozen regression suites.", no_args_is_help=True)
eval_app = typer.Typer(help="Run a model version on a suite; compare two runs.", no_args_is_help=True)
tandem_app = typer.Typer(help="Human and AI answer the same task; compare them.", no_args_is_help=True)

EndpointOpt = typer.Option(None, "--endpoint", envvar="AFTERWORD_LLM_URL", help="OpenAI-compatible /v1 root.")
ModelOpt = typer.Option(None, "--model", envvar="AFTERWORD_LLM_MODEL", help="Model name at the endpoint.")


def _judge(endpoint: str | None, model: str | None) -> Any:
    if not endpoint:
        return None
    from afterword.llm import LLMClient

    return LLMClient(base_url=endpoint, model=model or "local")


def failures_cmd(
    min_count: int = typer.Option(2, help="Bad responses a request group needs."),
    min_bad_rate: float = typer.Option(0.5, help="Share of the group's judged responses that are bad."),
    similarity: float = typer.Option(0.9, help="Cosine similarity at which requests count as the same."),
    limit: int = typer.Option(20, help="How many to list."),
    as_json: bool = JsonOpt,
) -> None:
    """Hard failures: requests answered badly again and again, ranked by confidence × frequency."""
    from afterword.evals.failures import mine_failures

    with guard(as_json):
        fails = mine_failures(
            open_store(), min_count=min_count, min_bad_rate=min_bad_rate, similarity=similarity, limit=limit
        )
    data = {"failures": [f.as_dict() for f in fails]}

    def render(d: dict[str, Any]) -> None:
        tab = Table(title=f"{len(d['failures'])} hard failures")
        for col in ("rank", "request", "bad/judged", "users", "conf", "example bad response"):
            tab.add_column(col)
        for f in d["failures"]:
            tab.add_row(
                f"{f['rank_score']:.2f}",
                f["prompt"][:60],
                f"{f['n_bad']}/{f['n_judged']}",
                str(f["users"]),
                f"{f['mean_confidence']:.2f}",
                (f["responses"][0] if f["responses"] else "")[:60],
            )
        console.print(tab)

    emit(data, as_json, render)


def clusters_cmd(
    min_cluster_size: int = typer.Option(2, help="HDBSCAN's smallest cluster."),
    merge_similarity: float = typer.Option(0.75, help="Merge clusters whose centroids are this similar."),
    as_json: bool = JsonOpt,
) -> None:
    """Cluster the failures (MiniLM + HDBSCAN), named by top terms, with sizes per week."""
    from afterword.evals.clusters import cluster_failures

    with guard(as_json):
        res = cluster_failures(open_store(), min_cluster_size=min_cluster_size, merge_similarity=merge_similarity)
    data = res.as_dict()

    def render(d: dict[str, Any]) -> None:
        tab = Table(title=f"{len(d['clusters'])} failure clusters")
        for col in ("#", "id", "name", "size", "weekly", "examples"):
            tab.add_column(col)
        for i, c in enumerate(d["clusters"], 1):
            weekly = " ".join(f"{w[5:]}:{n}" for w, n in c["weekly"].items())
            tab.add_row(str(i), c["id"], c["name"], str(c["size"]), weekly, " | ".join(c["examples"])[:80])
        console.print(tab)
        console.print(f"unclustered: {d['unclustered_size']} bad responses in {d['unclustered_groups']} groups")

    emit(data, as_json, render)


@suite_app.command("create")
def suite_create(
    name: str = typer.Argument(..., help="A new suite name (suites are frozen; names are never reused)."),
    source: str = typer.Option("failures", "--from", help="failures | corrections | cluster"),
    cluster: str = typer.Option(None, help="With --from cluster: its id, name or rank (1 = largest)."),
    limit: int = typer.Option(50, help="Most items to freeze."),
    min_count: int = typer.Option(2, help="With --from failures: bad responses a request needs."),
    description: str = typer.Option(None, help="What the suite is for."),
    as_json: bool = JsonOpt,
) -> None:
    """Freeze failures, corrections or a failure cluster into a regression suite."""
    from afterword.evals.suites import create_suite

    with guard(as_json):
        s = create_suite(
            open_store(),
            name,
            source,
            cluster=cluster,
            limit=limit,
            min_count=min_count,
            description=description,
        )
    data = s.as_dict(with_items=False)
    emit(data, as_json, lambda d: console.print(f"suite [bold]{d['name']}[/]: {d['items']} items from {source}"))


@suite_app.command("list")
def suite_list(as_json: bool = JsonOpt) -> None:
    """Every suite with its size."""
    from afterword.evals.suites import list_suites

    with guard(as_json):
        rows = list_suites(open_store())

    def render(d: list[dict[str, Any]]) -> None:
        tab = Table(title="suites")
        for col in ("name", "source", "items", "created", "description"):
            tab.add_column(col)
        for r in d:
            tab.add_row(r["name"], r["source"] or "", str(r["items"]), r["created_utc"] or "", r["description"] or "")
        console.print(tab)

    emit(rows, as_json, render)


@suite_app.command("show")
def suite_show(name: str, as_json: bool = JsonOpt) -> None:
    """The items of a suite."""
    from afterword.evals.suites import get_suite

    with guard(as_json):
        s = get_suite(open_store(), name)

    def render(d: dict[str, Any]) -> None:
        tab = Table(title=f"suite {d['name']} ({len(d['items'])} items)")
        for col in ("id", "request", "reference / rubric", "mistake"):
            tab.add_column(col)
        for i in d["items"]:
            tab.add_row(
                i["id"][:10],
                i["request"][:60],
                (i["reference"] or f"rubric: {i['rubric']}")[:60],
                (i["metadata"].get("mistake") or "")[:50],
            )
        console.print(tab)

    emit(s.as_dict(), as_json, render)


@eval_app.command("run")
def eval_run(
    suite: str = typer.Option(..., "--suite", help="The suite to run."),
    endpoint: str = EndpointOpt,
    model: str = ModelOpt,
    label: str = typer.Option(None, help="Name of this version (default: the model)."),
    system_prompt: str = typer.Option(None, "--system-prompt", help="System prompt of this version."),
    system_prompt_file: Path = typer.Option(None, exists=True, dir_okay=False, help="Read the system prompt here."),
    judge_endpoint: str = typer.Option(None, help="Rubric LLM judge endpoint (off when not given)."),
    judge_model: str = typer.Option(None, help="Rubric LLM judge model."),
    no_reward: bool = typer.Option(False, "--no-reward", help="Do not score with the preference model."),
    reward_model: str = typer.Option(None, help="Preference model folder (default: the newest trained one)."),
    max_tokens: int = typer.Option(256, help="Answer length cap."),
    as_json: bool = JsonOpt,
) -> None:
    """Run a model (any OpenAI-compatible endpoint) on a suite; score and store the run."""
    from afterword.evals.runs import run_eval
    from afterword.evals.suites import get_suite

    if system_prompt_file:
        system_prompt = system_prompt_file.read_text(encoding="utf-8")
    with guard(as_json):
        if not endpoint or not model:
            from afterword.errors import ConfigError

            raise ConfigError("pass --endpoint and --model (or set AFTERWORD_LLM_URL / AFTERWORD_LLM_MODEL)")
        store = open_store()
        s = get_suite(store, suite)
        with progress_bar(f"eval {label or model} on {suite}", len(s.items), not as_json) as adv:
            run = run_eval(
                store,
                s,
                endpoint,
                model,
                system_prompt,
                label=label,
                judge=_judge(judge_endpoint, judge_model),
                reward=False if no_reward else (reward_model or True),
                max_tokens=max_tokens,
                progress=adv,
            )
    data = run.as_dict()

    def render(d: dict[str, Any]) -> None:
        s_ = d["summary"]
        console.print(
            f"run [bold]{d['id']}[/] ({d['label']}) on {d['suite']}: {s_['items']} items, "
            f"mean score {s_['mean_score']}, pass rate {s_['pass_rate']}, "
            f"repeat-mistake rate {s_['repeat_mistake_rate']}, errors {s_['errors']}"
        )

    s_ = data["summary"]
    if s_["items"] and s_["errors"] >= s_["items"]:
        # Stored (it is a record of what happened), but it measured nothing: say so and exit non-zero.
        first = next((r.error for r in run.results if r.error), None)
        fail(f"every item of run {data['id']} failed (first: {first}); its scores mean nothing", as_json, run=data)
    if s_["errors"] and not as_json:
        err_console.print(f"[bold yellow]warning:[/] {s_['errors']} of {s_['items']} items failed; they score 0")
    emit(data, as_json, render)


@eval_app.command("list")
def eval_list(suite: str = typer.Option(None, help="Only this suite."), as_json: bool = JsonOpt) -> None:
    """Stored runs, oldest first."""
    from afterword.evals.runs import list_runs

    with guard(as_json):
        runs = [r.as_dict() for r in list_runs(open_store(), suite)]

    def render(d: list[dict[str, Any]]) -> None:
        tab = Table(title="eval runs")
        for col in ("id", "suite", "label", "model", "mean", "pass", "repeat", "created"):
            tab.add_column(col)
        for r in d:
            s = r["summary"]
            tab.add_row(
                r["id"],
                r["suite"],
                r["label"],
                r["model"],
                str(s.get("mean_score")),
                str(s.get("pass_rate")),
                str(s.get("repeat_mistake_rate")),
                r["created_utc"][:19],
            )
        console.print(tab)

    emit(runs, as_json, render)


@eval_app.command("compare")
def eval_compare(
    a: str = typer.Argument(..., help="The old run: id or label."),
    b: str = typer.Argument(..., help="The new run: id or label."),
    margin: float = typer.Option(0.05, help="Score change that counts as improved/regressed."),
    as_json: bool = JsonOpt,
) -> None:
    """Compare two runs per item and per cluster, with the repeat-mistake rate."""
    from afterword.evals.compare import compare_runs

    with guard(as_json):
        cmp = compare_runs(open_store(), a, b, margin=margin)
    data = cmp.as_dict()

    def render(d: dict[str, Any]) -> None:
        s = d["summary"]
        console.print(
            f"[bold]{s['a']}[/] → [bold]{s['b']}[/] on {s['suite']}: mean {s['mean_a']} → {s['mean_b']}; "
            f"{s['improved']} improved, {s['regressed']} regressed, {s['same']} same; repeat-mistake rate "
            f"{s['repeat_mistake_rate_a']} → {s['repeat_mistake_rate_b']}"
        )
        tab = Table(title="per cluster")
        for col in ("cluster", "items", s["a"], s["b"], "Δ", "improved", "regressed"):
            tab.add_column(col)
        for c in d["clusters"]:
            tab.add_row(
                c["cluster"],
                str(c["items"]),
                f"{c['mean_a']:.3f}",
                f"{c['mean_b']:.3f}",
                f"{c['delta']:+.3f}",
                str(c["improved"]),
                str(c["regressed"]),
            )
        console.print(tab)

    emit(data, as_json, render)


def report_cmd(
    out: Path = typer.Option(Path("afterword-report.html"), "--out", "-o", help="The HTML file to write."),
    run_a: str = typer.Option(None, "--a", help="Old eval run (default: the two newest runs of a suite)."),
    run_b: str = typer.Option(None, "--b", help="New eval run."),
    title: str = typer.Option("afterword report", help="Report title."),
    redact: bool = typer.Option(True, "--redact/--no-redact", help="Scrub PII from quoted text (on by default)."),
    as_json: bool = JsonOpt,
) -> None:
    """Write one self-contained HTML report with plots (works offline)."""
    from afterword.evals.report import build_report

    if bool(run_a) != bool(run_b):
        fail("pass both --a and --b, or neither (then the two newest runs of a suite are compared)", as_json)
    with guard(as_json):
        if run_a and run_b:
            from afterword.evals.runs import get_run

            get_run(open_store(), run_a), get_run(open_store(), run_b)  # a mistyped run is an error, not no comparison
        with progress_bar("building report", None, not as_json):
            res = build_report(open_store(), out, run_a=run_a, run_b=run_b, title=title, redact=redact)
    emit(res, as_json, lambda d: console.print(f"report written to [bold]{d['path']}[/] ({d['bytes']:,} bytes)"))


def ui_cmd(
    host: str = typer.Option("127.0.0.1", help="Listen address; off loopback, sign-in with a 'ui' key is required."),
    port: int = typer.Option(8765, help="Port."),
    reviewer: str = typer.Option("local", help="Reviewer name recorded on loopback (no sign-in)."),
    as_json: bool = typer.Option(
        False, "--json", help="Print where it serves as one JSON line (before serving, as `serve --json` does)."
    ),
) -> None:
    """Serve the review queue and dashboard."""
    from afterword.ui.app import serve_ui
    from afterword.ui.auth import is_loopback

    store = open_store()
    info = {"url": f"http://{host}:{port}", "store": str(store), "sign_in": not is_loopback(host), "reviewer": reviewer}
    hint = " (sign-in required: create a key with `afterword keys create NAME --scope ui`)" if info["sign_in"] else ""
    emit(info, as_json, lambda d: console.print(f"afterword review UI on {d['url']}{hint}"))
    sys.stdout.flush()
    serve_ui(store, host, port, reviewer=reviewer)


@tandem_app.command("add")
def tandem_add(
    prompt: str = typer.Option(..., help="The task."),
    reference: str = typer.Option(None, help="A reference answer (compare by reference)."),
    rubric: str = typer.Option(None, help="A rubric (compare by an LLM judge)."),
    human: str = typer.Option(None, help="The human who will answer."),
    as_json: bool = JsonOpt,
) -> None:
    """Register a task for a human and the AI to answer independently."""
    from afterword.evals.tandem import add_task

    with guard(as_json):
        task = add_task(open_store(), prompt, reference=reference, rubric=rubric, human_id=human)
    emit(task.as_dict(), as_json, lambda d: console.print(f"tandem task [bold]{d['id']}[/]"))


@tandem_app.command("answer")
def tandem_answer(
    task_id: str,
    human: str = typer.Option(None, help="Record this human's answer (with --text)."),
    ai: bool = typer.Option(False, "--ai", help="Record the AI's answer: --text, or ask --endpoint/--model."),
    text: str = typer.Option(None, help="The answer text."),
    endpoint: str = EndpointOpt,
    model: str = ModelOpt,
    system_prompt: str = typer.Option(None, help="System prompt when asking the model."),
    as_json: bool = JsonOpt,
) -> None:
    """Record one side's answer."""
    from afterword.errors import ConfigError
    from afterword.evals.tandem import answer_ai, answer_human

    with guard(as_json):
        store = open_store()
        if ai:
            task = answer_ai(store, task_id, text=text, endpoint=endpoint, model=model, system_prompt=system_prompt)
        elif text is not None:
            task = answer_human(store, task_id, text, human_id=human)
        else:
            raise ConfigError("pass --human NAME --text ANSWER, or --ai")
    emit(task.as_dict(), as_json, lambda d: console.print(f"recorded; task {d['id']}"))


@tandem_app.command("compare")
def tandem_compare(
    task_id: str,
    method: str = typer.Option(None, help="reference | rubric | pick (default: what the task allows)."),
    pick: str = typer.Option(None, help="A reviewer's pick: human | ai | both | neither."),
    reviewer: str = typer.Option(None, help="Who picked."),
    judge_endpoint: str = typer.Option(None, envvar="AFTERWORD_LLM_URL", help="Rubric judge endpoint."),
    judge_model: str = typer.Option(None, envvar="AFTERWORD_LLM_MODEL", help="Rubric judge model."),
    threshold: float = typer.Option(0.5, help="Score that counts as correct."),
    as_json: bool = JsonOpt,
) -> None:
    """Decide who was right; route disagreements, corrections and coaching."""
    from afterword.evals.tandem import compare_task

    with guard(as_json):
        task = compare_task(
            open_store(),
            task_id,
            method=method,
            pick=pick,
            judge=_judge(judge_endpoint, judge_model) if method == "rubric" or method is None else None,
            threshold=threshold,
            reviewer=reviewer,
        )
    emit(task.as_dict(), as_json, lambda d: console.print(f"task {d['id']}: [bold]{d['outcome']}[/] ({d['method']})"))


@tandem_app.command("stats")
def tandem_stats_cmd(as_json: bool = JsonOpt) -> None:
    """Per-human and per-model accuracy, overall and per week."""
    from afterword.evals.tandem import tandem_stats

    with guard(as_json):
        data = tandem_stats(open_store())

    def render(d: dict[str, Any]) -> None:
        console.print(f"{d['tasks']} compared tasks; outcomes {d['outcomes']}; agreement {d['agreement_rate']}")
        tab = Table(title="accuracy")
        for col in ("who", "kind", "n", "accuracy"):
            tab.add_column(col)
        for kind in ("human", "model"):
            for who, r in d[kind].items():
                tab.add_row(who, kind, str(r["n"]), f"{r['accuracy']:.0%}")
        console.print(tab)

    emit(data, as_json, render)


@tandem_app.command("coaching")
def tandem_coaching(human: str = typer.Option(None, help="Only this human."), as_json: bool = JsonOpt) -> None:
    """Tasks a human got wrong, with the better answer."""
    from afterword.evals.tandem import coaching_items

    with guard(as_json):
        items = coaching_items(open_store(), human)

    def render(d: list[dict[str, Any]]) -> None:
        for c in d:
            console.print(
                f"[bold]{esc(c['human_id'])}[/] · {esc(c['prompt'])}\n  you: {esc(c['your_answer'])}\n  better: "
                f"{esc(c['better_answer'])}\n  ({esc(c['note'])})"
            )

    emit(items, as_json, render)


def register(app: typer.Typer) -> None:
    app.command("failures")(failures_cmd)
    app.command("clusters")(clusters_cmd)
    app.command("report")(report_cmd)
    app.command("ui")(ui_cmd)
    app.add_typer(suite_app, name="suite")
    app.add_typer(eval_app, name="eval")
    app.add_typer(tandem_app, name="tandem")
