"""Showcase: the whole eval path on a log file, against the real local SmolLM2.

    import -> judge -> failures -> clusters -> suite (from corrections) ->
    eval run of two versions (plain vs. the same model with afterword's memory:
    lessons built from the corrections, retrieved per request and injected)
    -> comparison -> HTML report
    -> screenshots of the report and the review UI (headless Chromium)

Writes bench/results/eval_showcase.json, eval_report.html, eval_report.png and
review_ui_showcase.png. The baseline (version A, no lessons) runs in the same
run as version B. When the built-in judge cannot run (its model asset is not
built), judgments fall back to the explicit feedback in the log (source
``explicit``), and the JSON says so.

    python bench/eval_showcase.py [--data FILE] [--limit 8] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import json
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from afterword.evals import build_report, cluster_failures, compare_runs, create_suite, mine_failures, run_eval
from afterword.importers import run_import
from afterword.llm import serve_local_model
from afterword.pipeline import sample_path
from afterword.records import Evidence, Judgment
from afterword.store import Store

RESULTS = Path(__file__).parent / "results"
CAREFUL = "Answer briefly and correctly. If you are not sure, say so instead of guessing."
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def judge(store: Store) -> dict[str, Any]:
    try:
        from afterword.judge.runner import judge_store

        return {"judge": "afterword.judge", **judge_store(store)}
    except (ImportError, FileNotFoundError, OSError) as exc:
        reason = f"{type(exc).__name__}: {exc}"
    out = []
    for conv in store.iter_conversations():
        for fb in conv.feedback:
            if fb.kind == "correction" or fb.thumbs == -1 or (fb.rating is not None and fb.rating <= 2):
                label, score = "dissatisfied", -0.9
            elif fb.thumbs == 1 or (fb.rating is not None and fb.rating >= 4):
                label, score = "satisfied", 0.9
            else:
                continue
            ev = Evidence(signal=f"explicit_{fb.kind}", message_id=fb.message_id, weight=score, detail=fb.correction)
            out.append(
                Judgment(
                    message_id=fb.message_id or "",
                    source="explicit",
                    label=label,
                    score=score,
                    confidence=0.9,
                    evidence=[ev],
                    created_utc=fb.created_utc,
                )
            )
    n = store.put_judgments(out)
    return {"judge": f"explicit feedback (built-in judge unavailable: {reason[:160]})", "judged": n}


def memory_transform(store: Store) -> Any:
    """Version B: afterword's memory stage (lessons from the corrections, retrieved per request
    and injected into the system prompt, as the proxy does). None when memory is not built."""
    try:
        from afterword.memory.inject import MemoryInjector
        from afterword.memory.lessons import build_lessons
    except ImportError:
        return None
    build_lessons(store)
    injector = MemoryInjector(store, {"max_items": 2})

    def inject_memories(messages: list[dict[str, str]], item: Any) -> list[dict[str, str]]:
        _msg, cid = store.get_message(item.message_id)
        return injector.inject(messages, user_id=store.get_conversation(cid).user_id).messages

    return inject_memories


def screenshots(store: Store, report: Path) -> dict[str, str]:
    from playwright.sync_api import sync_playwright

    from afterword.ui.app import create_app

    shots: dict[str, str] = {}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(create_app(store, reviewer="showcase"), port=port, log_level="warning"))
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    while not server.started:
        time.sleep(0.05)
    try:
        with sync_playwright() as pw:
            b = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            page = b.new_page(viewport={"width": 1280, "height": 900})
            page.goto(report.resolve().as_uri())
            page.wait_for_load_state("load")
            shots["report"] = str(RESULTS / "eval_report.png")
            page.screenshot(path=shots["report"], full_page=True)
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector("#detail .msg.target", timeout=120_000)
            shots["review_ui"] = str(RESULTS / "review_ui_showcase.png")
            page.screenshot(path=shots["review_ui"])
            b.close()
    finally:
        server.should_exit = True
        th.join(10)
    return shots


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(sample_path()), help="log file to import (default: the shipped sample)")
    ap.add_argument("--db", default=str(Path(tempfile.gettempdir()) / "eval_showcase.db"), help="store (recreated)")
    ap.add_argument("--limit", type=int, default=8, help="suite items")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--no-screenshots", action="store_true")
    args = ap.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    Path(args.db).unlink(missing_ok=True)
    store = Store(args.db)
    t0 = time.perf_counter()
    out: dict[str, Any] = {"data": args.data}
    out["import"] = run_import(store, args.data).as_dict()
    out["judge"] = judge(store)
    fails = mine_failures(store, min_count=1)
    out["failing_requests"] = len(fails)
    out["hard_failures"] = [f.as_dict() for f in mine_failures(store)]
    clusters = cluster_failures(failures=fails)
    out["clusters"] = [c.as_dict() for c in clusters.clusters]
    suite = create_suite(store, "corrections", "corrections", limit=args.limit)
    out["suite"] = {"name": suite.name, "items": len(suite.items)}
    srv = serve_local_model()
    try:
        runs = {}
        inject = memory_transform(store)
        versions = [("plain", None, None), ("with-memory", None, inject)] if inject else []
        versions = versions or [("plain", None, None), ("careful-prompt", CAREFUL, None)]
        for label, prompt, transform in versions:
            t1 = time.perf_counter()
            run = run_eval(
                store,
                suite,
                srv.base_url,
                srv.model,
                prompt,
                label=label,
                max_tokens=args.max_tokens,
                transform=transform,
            )
            runs[label] = {**run.as_dict(), "seconds": round(time.perf_counter() - t1, 1)}
            print(label, json.dumps(run.summary))
    finally:
        srv.stop()
    out["runs"] = runs
    cmp = compare_runs(store, versions[0][0], versions[1][0])
    out["comparison"] = {"summary": cmp.summary, "clusters": cmp.clusters}
    report = RESULTS / "eval_report.html"
    out["report"] = build_report(store, report, title="afterword report: sample data")
    if not args.no_screenshots:
        out["screenshots"] = screenshots(store, report)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    (RESULTS / "eval_showcase.json").write_text(json.dumps(out, indent=2, default=str) + "\n")
    s = cmp.summary
    print(
        f"suite {suite.name}: {s['items']} items; mean score {s['mean_a']} -> {s['mean_b']}; "
        f"repeat-mistake rate {s['repeat_mistake_rate_a']} -> {s['repeat_mistake_rate_b']}; "
        f"{s['improved']} improved, {s['regressed']} regressed; report {report}"
    )


if __name__ == "__main__":
    main()
