"""Error analysis and evals: failures -> clusters -> suites -> eval runs -> comparison -> report."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

import pytest
from typer.testing import CliRunner

from _evals_data import FAILING, build_history
from afterword.errors import ConfigError, NotFoundError
from afterword.evals import (
    EvalResult,
    EvalRun,
    build_report,
    cluster_failures,
    compare_runs,
    create_suite,
    get_suite,
    list_runs,
    list_suites,
    mine_failures,
    run_eval,
    suite_message_ids,
)
from afterword.evals.scoring import numbers_in, numbers_recall, reference_match, token_f1
from afterword.evals.stage import stage
from afterword.records import Conversation, Evidence, Judgment, Message
from afterword.ui.review import set_label


def _bad_pair(store, prompt: str, answer: str, users=("u1", "u2"), start=None):  # noqa: ANN001, ANN202
    """The same request answered badly for several users, judged dissatisfied, with no correction."""
    start = start or datetime(2026, 10, 1, tzinfo=UTC)
    ids = []
    for k, u in enumerate(users):
        when = start + timedelta(hours=k)
        conv = store.add_conversation(
            Conversation(
                user_id=u,
                external_id=f"{prompt}-{u}",
                started_utc=when,
                messages=[
                    Message(role="user", content=prompt, created_utc=when),
                    Message(role="assistant", content=answer, created_utc=when),
                    Message(role="user", content="no, wrong", created_utc=when),
                ],
            )
        )
        mid = conv.messages[1].id
        ids.append(mid)
        ev = [Evidence(signal="reaction", message_id=conv.messages[2].id, weight=-0.8, detail="no, wrong")]
        store.put_judgments(
            [Judgment(message_id=mid, source="combined", label="dissatisfied", score=-0.8, confidence=0.9, evidence=ev)]
        )
    return ids


def test_hard_failures_are_consistent_and_ranked(store):
    ids = build_history(store)
    fails = mine_failures(store)
    assert fails, "the fixture has repeated failures"
    # Ranked by confidence x frequency.
    ranks = [f.rank_score for f in fails]
    assert ranks == sorted(ranks, reverse=True)
    for f in fails:
        assert f.rank_score == pytest.approx(f.mean_confidence * f.n_bad, abs=1e-3)
        assert f.n_bad >= 2 and f.bad_rate >= 0.5
    # Near-identical phrasings of one request form one group (case and punctuation differ).
    tokyo = next(f for f in fails if "Tokyo" in f.prompt)
    assert tokyo.n_bad == tokyo.n_judged and tokyo.users >= 3
    # Only bad responses are in a failure; good ones count only as judged.
    bad = set(ids["bad"])
    assert all(m in bad for f in fails for m in f.message_ids)
    # The 'reverse' request became good in later weeks: its bad rate is diluted.
    rev = next(f for f in fails if "reverse" in f.prompt.lower())
    assert rev.n_judged > rev.n_bad
    assert any(f.corrections for f in fails)
    # A one-off bad response is not a hard failure; with min_count=1 it is a failing request.
    one = _bad_pair(store, "Spell 'necessary'", "necesary", users=("solo",))
    assert not any(one[0] in f.message_ids for f in mine_failures(store))
    assert any(one[0] in f.message_ids for f in mine_failures(store, min_count=1))
    # A human judgment wins over the judge's.
    for m in tokyo.message_ids:
        set_label(store, m, "satisfied", "rita")
    assert not any("Tokyo" in f.prompt for f in mine_failures(store))


def test_clusters_named_and_tracked_weekly(store):
    build_history(store)
    res = cluster_failures(store)
    names = [c.name for c in res.clusters]
    assert len(res.clusters) == len(FAILING), names
    assert any("tokyo" in n for n in names) and any("miles" in n for n in names) and any("reverse" in n for n in names)
    for c in res.clusters:
        assert sum(c.weekly.values()) == c.size == sum(f.n_bad for f in c.failures)
        assert all(re.fullmatch(r"\d{4}-\d{2}-\d{2}", w) for w in c.weekly)
        assert c.examples and c.terms
    # Both phrasings of the miles request end up in one cluster.
    miles = next(c for c in res.clusters if "miles" in c.name)
    assert len(miles.failures) >= 2
    assert res.find("1") is res.clusters[0] and res.find(miles.id) is miles
    with pytest.raises(NotFoundError):
        res.find("nope")


def test_suites_are_frozen_and_never_trained_on(store):
    build_history(store)
    s = create_suite(store, "hard", "failures", description="repeated failures")
    assert s.items and all(i.reference or i.rubric for i in s.items)
    assert all(i.mistake and i.prompt[-1]["role"] == "user" for i in s.items)
    with pytest.raises(ConfigError):
        create_suite(store, "hard", "failures")  # frozen: a name is never reused
    with pytest.raises(ConfigError):
        create_suite(store, "x", "vibes")
    corr = create_suite(store, "corrected", "corrections")
    assert corr.items and all(i.reference and i.metadata["kind"] == "correction" for i in corr.items)
    cl = create_suite(store, "tz", "cluster", cluster="tokyo / noon / london")
    assert cl.items and all(i.metadata["cluster"] == "tokyo / noon / london" for i in cl.items)
    assert {r["name"]: r["items"] for r in list_suites(store)} == {
        "hard": len(s.items),
        "corrected": len(corr.items),
        "tz": len(cl.items),
    }
    assert get_suite(store, "hard").items[0].as_dict() == s.items[0].as_dict()
    # Every bad response and request behind every item is excluded from training.
    excluded = suite_message_ids(store)
    for suite in (s, corr, cl):
        for i in suite.items:
            assert i.message_id in excluded
            assert set(i.metadata.get("message_ids", [])) <= excluded
            assert set(i.metadata.get("prompt_ids", [])) <= excluded
    try:
        from afterword.datasets.collect import suite_exclusions
    except ImportError:
        return
    ids, prompts = suite_exclusions(store)  # the dataset builder reads the same items
    assert {i.message_id for i in s.items} <= ids and any("tokyo" in p for p in prompts)


def test_scorers():
    assert token_f1("Paris is the capital", "the capital is Paris") == 1.0
    assert token_f1("", "x") == 0.0
    assert numbers_recall("It is 3.1 km", "5 miles is 8.05 km", "5 miles?") == 0.0
    assert numbers_recall("8.05 km", "5 miles is 8.05 km", "5 miles?") == 1.0
    assert numbers_recall("anything", "no numbers here") is None
    assert numbers_in("8.050 km, or 8,05; and 3") == {"8.05", "3"}
    wrong = reference_match("5 miles is 3.1 kilometres.", "5 miles is about 8.05 kilometres.", 0.9, "5 miles?")
    right = reference_match("About 8.05 kilometres.", "5 miles is about 8.05 kilometres.", 0.9, "5 miles?")
    assert wrong["reference"] == 0.0 < right["reference"]


def _fake_run(label: str, suite, scores: dict[str, float], repeats: dict[str, bool]) -> EvalRun:  # noqa: ANN001
    results = [EvalResult(i.id, f"out {label}", scores[i.id], {}, repeats.get(i.id)) for i in suite.items]
    return EvalRun(label, suite.name, label, "m", None, None, datetime.now(UTC), {}, {}, results)


def test_compare_per_item_cluster_and_repeat_mistakes(store):
    build_history(store)
    suite = create_suite(store, "corr", "corrections")
    ids = [i.id for i in suite.items]
    a = _fake_run("old", suite, dict.fromkeys(ids, 0.2), dict.fromkeys(ids, True))
    better = {i: (0.9 if k % 2 == 0 else 0.2) for k, i in enumerate(ids)}
    b = _fake_run("new", suite, better, {i: better[i] < 0.5 for i in ids})
    cmp = compare_runs(store, a, b)
    s = cmp.summary
    assert s["items"] == len(ids) and s["improved"] == (len(ids) + 1) // 2 and s["regressed"] == 0
    assert s["repeat_mistake_rate_a"] == 1.0
    assert s["repeat_mistake_rate_b"] == pytest.approx(1 - s["improved"] / len(ids), abs=1e-3)
    assert s["mistakes_fixed"] == s["improved"]
    assert sum(c["items"] for c in cmp.clusters) == len(ids)
    assert {c["cluster"] for c in cmp.clusters} <= {c.name for c in cluster_failures(store).clusters} | {"unclustered"}


def test_report_is_self_contained_and_escaped(store, tmp_path):
    build_history(store)
    _bad_pair(store, "<script>alert(1)</script> why?", "<b>bold</b> answer")
    res = build_report(store, tmp_path / "r.html")
    html = (tmp_path / "r.html").read_text()
    assert res["plots"] == ["clusters", "satisfaction"] and res["clusters"] >= 3
    assert html.count('src="data:image/png;base64,') == 2
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert not re.search(r'(src|href)="https?://', html)  # nothing fetched: works offline


def test_report_redacts_quoted_text_unless_asked(store, tmp_path):
    build_history(store)
    _bad_pair(store, "my card is declined, mail me at jo.ortega@example.com", "try again later")
    build_report(store, tmp_path / "r.html")
    html = (tmp_path / "r.html").read_text()
    assert "jo.ortega@example.com" not in html and "&lt;EMAIL&gt;" in html
    build_report(store, tmp_path / "raw.html", redact=False)
    assert "jo.ortega@example.com" in (tmp_path / "raw.html").read_text()


def test_stage_writes_the_report(store, tmp_path):
    build_history(store)
    out = stage(store, {"out_dir": tmp_path / "out"})
    assert out["hard_failures"] >= 3 and len(out["clusters"]) == 3
    assert (tmp_path / "out" / "report.html").stat().st_size > 10_000


def test_cli_json(store, tmp_path, monkeypatch):
    from afterword.cli import app
    from afterword.cli._common import state

    build_history(store)
    monkeypatch.setattr(state, "store", None)
    monkeypatch.setattr(state, "db", None)
    runner = CliRunner()
    db = ["--db", store.url]

    def run(*args: str) -> object:
        r = runner.invoke(app, [*db, *args, "--json"])
        assert r.exit_code == 0, r.output
        return json.loads(r.output.strip().splitlines()[-1])

    assert run("failures")["failures"]
    assert len(run("clusters")["clusters"]) == 3
    assert run("suite", "create", "s1", "--from", "cluster", "--cluster", "1")["items"] > 0
    assert run("suite", "list")[0]["name"] == "s1"
    assert run("suite", "show", "s1")["items"]
    assert run("report", "--out", str(tmp_path / "r.html"))["clusters"] == 3
    tid = run("tandem", "add", "--prompt", "2+2?", "--reference", "4", "--human", "hana")["id"]
    run("tandem", "answer", tid, "--human", "hana", "--text", "4")
    run("tandem", "answer", tid, "--ai", "--text", "5", "--model", "bot")
    assert run("tandem", "compare", tid)["outcome"] == "ai_wrong"
    assert run("tandem", "stats")["model"]["bot"]["accuracy"] == 0.0
    r = runner.invoke(app, [*db, "suite", "show", "nope", "--json"])
    assert r.exit_code == 1 and "not found" in json.loads(r.output.strip().splitlines()[-1])["error"]


@pytest.mark.llm
def test_whole_path_two_versions_against_local_model(store, llm, tmp_path):
    """failures -> clusters -> suite -> two prompt versions on the real SmolLM2 -> compare -> report."""
    build_history(store)
    # A failure with no correction: a rubric item (asked by four users, so it ranks in the top three).
    _bad_pair(store, "What is 7 times 6?", "7 times 6 is 36.", users=("u1", "u2", "u3", "u4"))
    clusters = cluster_failures(store)
    assert len(clusters.clusters) >= 3
    suite = create_suite(store, "regress", "failures", limit=3)
    assert any(i.rubric and not i.reference for i in suite.items)
    plain = run_eval(store, suite, llm.base_url, llm.model, label="plain", max_tokens=24, reward=False)
    v2 = run_eval(
        store,
        "regress",
        llm.base_url,
        llm.model,
        "Answer in one short sentence with the exact number. 1 mile = 1.609 km. Tokyo is 9 hours ahead of London.",
        label="facts-prompt",
        max_tokens=24,
        judge=llm.client(),
    )
    for run in (plain, v2):
        assert run.summary["items"] == len(suite.items) and run.summary["errors"] == 0
        assert all(r.output for r in run.results) and all(0 <= r.score <= 1 for r in run.results)
        assert run.summary["repeat_mistake_items"] == len(suite.items)
    rubric_items = {i.id for i in suite.items if i.rubric}
    assert all("rubric" in r.scores for r in v2.results if r.item_id in rubric_items)
    assert v2.params["judge"] == llm.model and "reward" in v2.params
    assert [r.label for r in list_runs(store, "regress")] == ["plain", "facts-prompt"]
    cmp = compare_runs(store, "plain", "facts-prompt")
    assert cmp.summary["items"] == len(suite.items)
    assert cmp.summary["improved"] + cmp.summary["regressed"] + cmp.summary["same"] == len(suite.items)
    res = build_report(store, tmp_path / "report.html")
    assert "comparison" in res["plots"] and res["comparison"]["b"] == "facts-prompt"
    html = (tmp_path / "report.html").read_text()
    assert "Repeat-mistake rate" in html and "facts-prompt" in html


def test_a_range_in_the_reference_is_one_number_met_by_any_value_inside() -> None:
    from afterword.evals.scoring import numbers_recall

    ref = "About 125 g (120-130 g)."
    assert numbers_recall("About 125 g per US cup.", ref) == 1.0  # was 1/3: 120 and 130 were required too
    assert numbers_recall("Roughly 128 g.", ref) == 0.5
    assert numbers_recall("About 140 g.", ref) == 0.0
    assert numbers_recall("2 to 3 days", "It takes 2-3 days") == 1.0
    assert numbers_recall("on 2023-05-09", "on 2023-05-08") == 2 / 3  # a date is three numbers, not a range
