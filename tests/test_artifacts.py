"""Artifact reverse-engineering: citation extraction against hand-labelled memos, conclusions, the store,
and reverse/replay against the real local model (plus a controlled stub where the verdict must be known)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from afterword.store import schema as t
from afterword.synth.artifacts import (
    Citation,
    analyse,
    export_reverse,
    extract_citations,
    ingest,
    list_artifacts,
    llm_citations,
    match_citations,
    pick_option,
    read_document,
    replay,
    reverse,
)

sys.path.insert(0, str(Path(__file__).parent))
from _openai_stub import StubLLM, last_user, system_of  # noqa: E402

MEMOS = Path(__file__).parent / "fixtures" / "memos"
LABELS = json.loads((MEMOS / "labels.json").read_text())["memos"]


def _truth(keys: list[str]) -> list[Citation]:
    return [Citation(raw=k, kind=k.split(":", 1)[0], key=k) for k in keys]


# -- extraction against the hand-labelled corpus -------------------------------------------


def test_corpus_has_every_format():
    files = sorted(p for p in MEMOS.iterdir() if p.suffix in {".md", ".txt", ".html", ".pdf"})
    assert len(files) >= 20 and set(LABELS) == {p.name for p in files}
    by_fmt: dict[str, int] = {}
    for p in files:
        doc = read_document(p)
        assert len(doc.text) > 500, p.name
        by_fmt[doc.format] = by_fmt.get(doc.format, 0) + 1
    assert by_fmt["pdf"] >= 2 and by_fmt["html"] >= 2 and by_fmt["md"] >= 2 and by_fmt["txt"] >= 2


@pytest.mark.parametrize("corpus", ["memos", "memos_heldout"])
def test_citation_extraction_precision_and_recall_on_labelled_memos(corpus):
    """``memos_heldout`` was written and labelled after the patterns were tuned on ``memos``, and not tuned on."""
    folder = MEMOS.parent / corpus
    labels = json.loads((folder / "labels.json").read_text())["memos"]
    tp = n_pred = n_truth = 0
    per_memo = {}
    for name, lab in labels.items():
        art = analyse(read_document(folder / name))
        m = match_citations(art.citations, _truth(lab["citations"]))
        tp += m["matched"]
        n_pred += m["predicted"]
        n_truth += m["truth"]
        per_memo[name] = (m["precision"], m["recall"], m["missed"])
    precision, recall = tp / n_pred, tp / n_truth
    assert n_truth >= (150 if corpus == "memos" else 20)
    assert precision >= 0.95, per_memo
    assert recall >= 0.95, per_memo


def test_conclusions_match_the_labels():
    for name, lab in LABELS.items():
        art = analyse(read_document(MEMOS / name))
        assert lab["conclusion_quote"].lower() in (art.conclusion or "").lower(), (name, art.conclusion)
        assert len(art.conclusion or "") < 800  # the conclusion, not the whole memo


@pytest.mark.parametrize(
    ("text", "keys"),
    [
        ("See 26 U.S.C. § 162(a), IRC §162(a), I.R.C. § 162(a) and section 162(a) of the Code.", ["irc:162(a)"]),
        ("Internal Revenue Code section 1031 and 26 USC 1031", ["irc:1031"]),
        ("Treasury Regulation § 1.263(a)-3(h) and Treas. Reg. §1.263(a)-3(h)", ["reg:1.263(a)-3(h)"]),
        ("§§ 167 and 168(k)", ["irc:167", "irc:168(k)"]),
        ("Revenue Ruling 99-7 and Rev. Rul. 99-7, 1999-1 C.B. 361", ["revrul:99-7"]),
        ("Rev. Proc. 2015-20; Notice 2020-32; T.D. 9636", ["revproc:2015-20", "notice:2020-32", "td:9636"]),
        ("Private Letter Ruling 201234005 (PLR 201234005)", ["plr:201234005"]),
        ("42 U.S.C. § 1983", ["usc:42:1983"]),
        (
            "Commissioner v. Glenshaw Glass Co., 348 U.S. 426 (1955). Later, Glenshaw Glass (348 U.S. at 431).",
            ["case:348us426"],
        ),
        ("Sutherland v. Comm'r, T.C. Memo. 2019-12", ["case:tcmemo2019-12"]),
        ("https://www.IRS.gov/pub/irs-drop/rr-99-7.pdf.", ["url:irs.gov/pub/irs-drop/rr-99-7.pdf"]),
        ("See memo TM-2023-0147 and Doc. No. A4471-B", ["doc:tm-2023-0147", "doc:a4471-b"]),
        ("Tex. Tax Code Ann. § 171.0001", ["state:textaxcodeann:171.0001"]),
        ("Id. at 12. The taxpayer filed Form W-2 in 2023.", []),
    ],
)
def test_citation_normalisation(text, keys):
    assert [c.key for c in extract_citations(text)] == keys


def test_citation_matching_aliases_and_scores():
    truth = extract_citations("Commissioner v. Glenshaw Glass Co., 348 U.S. 426 (1955); IRC § 61(a); Rev. Rul. 99-7")
    pred = extract_citations("As in Commissioner v. Glenshaw Glass, the gain is income. Also IRC § 1001.")
    m = match_citations(pred, truth)  # the bare case name matches the full cite by its parties
    assert (m["matched"], m["predicted"], m["truth"]) == (1, 2, 3)
    assert m["precision"] == 0.5 and m["recall"] == round(1 / 3, 4)
    assert match_citations([], [])["recall"] == 1.0


def test_pick_option():
    assert pick_option("So the cost is not deductible.", ["deductible", "not deductible"]) == "not deductible"
    assert pick_option("Answer: capitalize it", ["deductible", "capitalized"]) == "capitalized"
    assert pick_option("I am not sure.", ["yes", "no"]) is None


# -- the store -------------------------------------------------------------------------------


def test_ingest_is_idempotent_and_attaches_labels(store):
    res = ingest(store, MEMOS, labels=MEMOS / "labels.json")
    d = res.as_dict()
    assert d["added"] == len(LABELS) and d["present"] == 0 and not d["skipped"]
    assert d["by_format"]["pdf"] == 2 and d["with_conclusion"] == len(LABELS)
    again = ingest(store, MEMOS)
    assert again.added == 0 and again.present == len(LABELS)
    arts = {Path(a.path).name: a for a in list_artifacts(store)}
    roof = arts["01_repairs_roof.md"]
    assert roof.options == ["deductible", "capitalized"] and roof.answer == "deductible"
    assert "irc:162(a)" in {c.key for c in roof.citations}
    assert roof.question and roof.question.startswith("Harbor Point replaced")
    assert arts["03_home_office.md"].metadata["options_from"] == "labels"


def _fixed_reverse_stub(body: dict) -> str:
    if "research steps" in system_of(body):
        return (
            "Can I write off the cost of fixing my warehouse roof this year?\n"
            "1. Read section 162(a) and Treas. Reg. § 1.162-4 on repairs.\n"
            "2. Compare with 26 U.S.C. § 263(a) and the improvement rules.\n"
            "3. Apply the facts and conclude."
        )
    return "{}"


def test_reverse_links_records_to_artifacts_and_exports_lineage(store, tmp_path):
    ingest(store, MEMOS, labels=MEMOS / "labels.json")
    roof = next(a for a in list_artifacts(store) if a.path.endswith("01_repairs_roof.md"))
    with StubLLM(_fixed_reverse_stub) as stub:
        res = reverse(store, stub.client(), ids=[roof.id])
    assert res.artifacts == 1 and res.question_sources == {"llm": 1} and res.steps_sources == {"llm": 1}
    rec = res.records[0]
    assert rec["sft"]["messages"][0]["content"].startswith("Can I write off")
    steps = rec["process"]["steps"]
    assert steps[0]["sources"] == ["irc:162(a)", "reg:1.162-4"]  # grounded in the memo's own citations
    assert rec["process"]["sources"] == [c.key for c in roof.citations]  # sources come from the memo, not the LLM
    stored = list_artifacts(store, [roof.id])[0]
    conv = store.get_conversation(stored.conversation_id)
    assert conv.source == "artifact" and conv.metadata["artifact_id"] == roof.id
    assert conv.messages[1].content == roof.text
    # Re-running with --redo replaces, it does not duplicate.
    with StubLLM(_fixed_reverse_stub) as stub:
        reverse(store, stub.client(), ids=[roof.id], redo=True)
    with store.read() as conn:
        n = conn.execute(
            sa.select(sa.func.count()).select_from(t.conversations).where(t.conversations.c.source == "artifact")
        ).scalar()
    assert n == 1
    out = export_reverse(store, tmp_path / "rev")
    sft = [json.loads(x) for x in (tmp_path / "rev" / "sft.jsonl").read_text().splitlines()]
    proc = [json.loads(x) for x in (tmp_path / "rev" / "process.jsonl").read_text().splitlines()]
    assert len(sft) == len(proc) == 1 and sft[0]["artifact_id"] == roof.id == proc[0]["artifact_id"]
    with store.read() as conn:
        items = conn.execute(
            sa.select(t.export_items.c.message_id).where(t.export_items.c.export_id == out["sft"]["export_id"])
        ).all()
    assert {r[0] for r in items} == {m.id for m in conv.messages}


def test_reverse_without_llm_falls_back_to_the_document(store):
    ingest(store, MEMOS)
    res = reverse(store, None)
    assert res.artifacts == len(LABELS) and res.steps_sources == {"template": len(LABELS)}
    # 14 memos state their question (Question presented / Issue / Question:); the other 8 fall back to the title.
    assert res.question_sources == {"document": 14, "title": 8}


def test_replay_scores_a_perfect_and_a_wrong_model(store):
    ingest(store, MEMOS, labels=MEMOS / "labels.json")
    reverse(store, None)
    arts = {Path(a.path).name: a for a in list_artifacts(store)}
    roof, gift = arts["01_repairs_roof.md"], arts["11_charitable_substantiation.txt"]

    def expert(body: dict) -> str:  # answers with the memo itself, then the labelled option
        if "same bottom-line answer" in system_of(body):
            return '{"agree": true}'
        art = roof if "roof" in last_user(body) else gift
        return f"{art.text}\nAnswer: {art.answer}"

    with StubLLM(expert) as stub:
        rep = replay(store, stub.client(), ids=[roof.id, gift.id]).as_dict()
    ov = rep["overall"]
    assert ov["citation_precision_micro"] == 1.0 and ov["citation_recall_micro"] == 1.0
    assert ov["conclusion_agreement"] == 1.0 and ov["by_method"]["options"] == 2

    def wrong(body: dict) -> str:
        return "Under IRC § 9999 it is fine. Answer: capitalized" if "roof" in last_user(body) else "Answer: deductible"

    with StubLLM(wrong) as stub:
        rep = replay(store, stub.client(), ids=[roof.id, gift.id]).as_dict()
    assert rep["overall"]["citation_precision_micro"] == 0.0 and rep["overall"]["conclusion_agreement"] == 0.0


def test_replay_judges_conclusions_without_options(store):
    ingest(store, MEMOS)  # no labels: only memos whose conclusion opens with Yes/No carry options
    reverse(store, None)
    arts = {Path(a.path).name: a for a in list_artifacts(store)}
    bad_debt = arts["14_bad_debt.txt"]
    assert bad_debt.options is None

    def answer_and_judge(body: dict) -> str:
        if "same bottom-line answer" in system_of(body):
            model_part = last_user(body).split("MODEL CONCLUSION:")[-1]
            return '{"agree": true}' if "short-term capital loss" in model_part else '{"agree": false}'
        return "The loss is a short-term capital loss under IRC § 166(d)(1)(B).\nConclusion: short-term capital loss."

    with StubLLM(answer_and_judge) as stub:
        rep = replay(store, stub.client(), ids=[bad_debt.id]).as_dict()
    item = rep["artifacts"][0]
    assert item["conclusion"] == {"method": "judge", "agree": True}
    assert item["citations"]["matched"] == 1 and item["citations"]["precision"] == 1.0


def test_llm_citations_keep_only_what_the_document_says():
    text = (
        "Section 276 was enacted in the Consolidated Appropriations Act, 2021. As in Welch v Helvering, "
        "the expense is capital."
    )

    def lister(body: dict) -> str:
        return (
            '{"citations": ["Consolidated Appropriations Act, 2021", "Welch v Helvering", '
            '"Commissioner v. Made Up Co., 999 U.S. 1 (2030)", "IRC § 1"]}'
        )

    known = extract_citations(text)
    assert [c.key for c in known] == ["irc:276", "case:welch v helvering"]
    with StubLLM(lister) as stub:
        found = llm_citations(text, stub.client(), known=known)
    # The Act no pattern knows is kept as written; the known case is not repeated; the invented ones are dropped.
    assert [(c.key, c.kind, c.method) for c in found] == [("src:consolidatedappropriationsact2021", "other", "llm")]


# -- the real local model ---------------------------------------------------------------------


@pytest.mark.llm
def test_reverse_and_replay_with_real_local_model(llm, store, tmp_path):
    """SmolLM2-135M is tiny: assert the machinery on its real outputs, not that it is a good tax adviser."""
    ingest(store, MEMOS, labels=MEMOS / "labels.json")
    arts = {Path(a.path).name: a for a in list_artifacts(store)}
    ids = [arts["17_crypto_staking.html"].id]  # one artifact: the CPU is shared and the model is slow there
    client = llm.client(timeout_s=300)
    res = reverse(store, client, ids=ids, max_tokens=120, max_chars=1200)
    assert res.artifacts == 1
    for rec in res.records:
        proc = rec["process"]
        assert rec["sft"]["messages"][0]["content"].strip()
        assert len(proc["steps"]) >= 2 and all(s["text"] for s in proc["steps"])
        art = next(a for a in arts.values() if a.id == proc["artifact_id"])
        assert proc["sources"] == [c.key for c in art.citations]
        assert proc["conclusion"] == art.conclusion
    rep = replay(store, client, ids=ids, max_tokens=80)
    d = rep.as_dict()
    assert d["overall"]["artifacts"] == 1 and d["overall"]["model"] == "smollm2-135m-instruct"
    for item in d["artifacts"]:
        if "error" in item:
            continue
        c = item["citations"]
        assert 0.0 <= c["precision"] <= 1.0 and 0.0 <= c["recall"] <= 1.0
        assert c["predicted"] == len(c["cited"]) and c["truth"] == len(arts[Path(item["path"]).name].citations)
        assert item["conclusion"]["method"] == "options" and item["output"]
        assert item["conclusion"]["agree"] in (True, False, None)


def test_cli_artifacts_ingest_reverse_replay_json(tmp_path):
    from afterword.cli import app

    db = str(tmp_path / "cli.db")
    runner = CliRunner()
    r = runner.invoke(
        app, ["--db", db, "artifacts", "ingest", str(MEMOS), "--labels", str(MEMOS / "labels.json"), "--json"]
    )
    assert r.exit_code == 0, r.output
    d = json.loads(r.output.strip().splitlines()[-1])
    assert d["artifacts"] == len(LABELS) and d["citations"] >= 150
    r = runner.invoke(app, ["--db", db, "artifacts", "reverse", "--out", str(tmp_path / "rev"), "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output.strip().splitlines()[-1])
    assert d["artifacts"] == len(LABELS) and d["export"]["sft"]["rows"] == len(LABELS)
    r = runner.invoke(app, ["--db", db, "artifacts", "list", "--json"])
    first = json.loads(r.output.strip().splitlines()[-1])[0]

    with StubLLM(lambda body: "Conclusion: yes. Answer: yes") as stub:
        r = runner.invoke(
            app,
            [
                "--db",
                db,
                "artifacts",
                "replay",
                "--endpoint",
                stub.base_url,
                "--id",
                first["id"],
                "--out",
                str(tmp_path / "replay.json"),
                "--json",
            ],
        )
    assert r.exit_code == 0, r.output
    d = json.loads(r.output.strip().splitlines()[-1])
    assert d["overall"]["artifacts"] == 1 and json.loads((tmp_path / "replay.json").read_text())["overall"]
