"""Episodic retrieval over raw turns (TurnIndex) and the LoCoMo bench's held-out check, on written fixtures."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from afterword.memory.bench import CATEGORIES, run_locomo_bench, run_locomo_heldout
from afterword.memory.turns import FEATURES, WEIGHTS, Turn, TurnIndex, asks, question_dates


def _d(y: int, m: int, d: int) -> datetime:
    return datetime(y, m, d, 14, 0, tzinfo=UTC)


def test_question_dates():
    assert question_dates("What did John do the week before August 3, 2023?") == [
        ("day", _d(2023, 8, 3).replace(hour=0))
    ]
    assert question_dates("Which games were played on 31 October, 2022?") == [("day", _d(2022, 10, 31).replace(hour=0))]
    assert question_dates("What did Nate make in Nov 2022?") == [("month", _d(2022, 11, 1).replace(hour=0))]
    assert question_dates("What is Caroline's identity?") == []
    assert question_dates("on 45 May, 2023") == [("month", _d(2023, 5, 1).replace(hour=0))]  # no such day


def test_speaker_names_are_left_out_of_the_dense_query_and_vectors():
    turns = [Turn("D1:1", "s1", "Caroline", "I went to a support group."), Turn("D1:2", "s1", "Melanie", "Nice!")]
    idx = TurnIndex(turns)
    assert idx.dense_query("When did Caroline's group meet with melanie?") == "When did group meet with ?"
    assert idx.dense_query("Caroline") == "Caroline"  # nothing left: the question as it was
    # The vectors are of the text alone (no "Speaker: " prefix), by the index's own encoder.
    assert np.allclose(idx.vecs[1], idx.embedder.encode_one("Nice!"), atol=1e-5)


def test_hybrid_uses_the_date_the_question_names():
    # The same words said in two sessions; the question names the second session's day.
    turns = [
        Turn("D1:1", "s1", "John", "We went hiking in the mountains, it was great.", _d(2023, 5, 8)),
        Turn("D1:2", "s1", "Maria", "Sounds lovely, John.", _d(2023, 5, 8)),
        Turn("D2:1", "s2", "John", "We went hiking in the mountains, it was great.", _d(2023, 8, 3)),
        Turn("D2:2", "s2", "Maria", "Sounds lovely, John.", _d(2023, 8, 3)),
    ]
    idx = TurnIndex(turns)
    f = idx.features("What did John do on 3 August, 2023?")
    assert f.shape == (4, len(FEATURES))
    assert list(f[:, FEATURES.index("date")]) == [0.0, 0.0, 1.0, 1.0]
    assert idx.search("What did John do on 3 August, 2023?", k=1)[0][0].id == "D2:1"
    assert idx.search("What did John do in May 2023?", k=1)[0][0].id == "D1:1"


def test_weights_cover_every_signal_and_can_be_replaced():
    assert set(FEATURES) <= set(WEIGHTS)
    turns = [
        Turn("D1:1", "s1", "Tim", "I'm learning German now, tough but fun.", _d(2023, 1, 2)),
        Turn("D1:2", "s1", "John", "Ok.", _d(2023, 1, 2)),
    ]
    assert TurnIndex(turns).search("Which language is Tim learning?", k=1)[0][0].id == "D1:1"
    only_length = TurnIndex(turns, weights={"length": -1.0})  # shortest first: the weights decide
    assert only_length.search("Which language is Tim learning?", k=1)[0][0].id == "D1:2"


def _sample(i: int) -> dict:
    names = ("Ann", "Bob") if i == 0 else ("Cid", "Dee")
    a, b = names
    topics = [
        ("adopted a puppy named Toby", "What pet did {a} adopt?"),
        ("started learning the violin", "Which instrument is {a} learning?"),
        ("ran a marathon in Boston", "Where did {a} run a marathon?"),
        ("baked a lemon cake for my mom", "What did {a} bake for their mom?"),
    ]
    conv: dict = {"speaker_a": a, "speaker_b": b}
    qa = []
    for s, (news, q) in enumerate(topics, start=1):
        conv[f"session_{s}_date_time"] = f"1:00 pm on {s} May, 2023"
        conv[f"session_{s}"] = [
            {"speaker": a, "dia_id": f"D{s}:1", "text": f"Hi {b}! Guess what, I {news} last week."},
            {"speaker": b, "dia_id": f"D{s}:2", "text": f"Wow {a}, that's great to hear!"},
            {"speaker": a, "dia_id": f"D{s}:3", "text": "Thanks, talk soon."},
        ]
        qa.append({"question": q.format(a=a), "answer": news, "evidence": [f"D{s}:1"], "category": 4})
    qa.append({"question": f"What did {a} talk about?", "answer": "x", "evidence": [], "category": 1})
    return {"sample_id": f"s-{i}", "conversation": conv, "qa": qa}


def test_locomo_bench_and_heldout_check_on_a_written_file(tmp_path: Path):
    path = tmp_path / "locomo_small.json"
    path.write_text(json.dumps([_sample(0), _sample(1)]))
    res = run_locomo_bench(path)
    assert res["samples"] == 2 and res["questions"] == 8 and res["turns"] == 24  # the no-evidence question skipped
    assert res["recall_at_5"] == 1.0 and res["recall_at_1"] >= 0.75
    # the hybrid on the general MiniLM runs beside the (default, fine-tuned) recall encoder's
    assert set(res["baselines"]) == {"bm25", "dense", "hybrid_general"}
    assert res["baselines"]["hybrid_general"]["recall_at_5"] == 1.0
    assert res["encoder"]["name"] == "recall_encoder.onnx" and res["encoder"]["trained_on_these_samples"] == []
    held = run_locomo_heldout(path)
    assert set(held["leave_one_out_per_sample_recall_at_5"]) == {"s-0", "s-1"}
    assert len(held["halves"]) == 2 and held["halves"][0]["tuned_on"] == ["s-0"]
    assert 0.0 <= held["leave_one_out"]["recall_at_5"] <= 1.0
    assert set(held["fitted_on_all"]) == set(FEATURES)  # listwise, the signals alone
    assert set(held["leave_one_out"]["by_category_recall_at_5"]) <= set(CATEGORIES.values())


def test_bench_locomo_cli_json_and_the_in_sample_warning(tmp_path: Path, monkeypatch) -> None:
    import shutil

    from typer.testing import CliRunner

    from afterword.cli import app
    from afterword.memory.turns import RECALL_ENCODER_ENV, encoder_weights, recall_encoder_path

    path = tmp_path / "locomo_small.json"
    path.write_text(json.dumps([_sample(0), _sample(1)]))
    monkeypatch.delenv(RECALL_ENCODER_ENV, raising=False)
    res = CliRunner().invoke(app, ["bench", "locomo", str(path), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output.strip().splitlines()[-1])
    assert {"recall_at_1", "recall_at_5", "recall_at_10", "p50_ms", "p95_ms", "baselines"} <= set(out)
    assert {"bm25", "dense", "hybrid_general"} <= set(out["baselines"])
    # an encoder that was trained on these very samples: the figures are in-sample, and the bench says so
    shipped = recall_encoder_path()
    mine = tmp_path / "mine.onnx"
    shutil.copyfile(shipped, mine)
    mine.with_suffix(".json").write_text(
        json.dumps(
            {
                "weights": encoder_weights(shipped),
                "trained_on": {"samples": ["s-0", "s-1"]},
                "heldout": {"tuned": {"recall_at_5": 0.5}, "general": {"recall_at_5": 0.25}},
            }
        )
    )
    monkeypatch.setenv(RECALL_ENCODER_ENV, str(mine))
    res = CliRunner().invoke(app, ["bench", "locomo", str(path)])
    assert res.exit_code == 0, res.output
    assert "in-sample" in res.output and "0.5" in res.output


def test_a_first_person_question_names_the_user_and_a_second_person_one_the_assistant():
    turns = [
        Turn("m1", "c1", "user", "My sister is visiting in June."),
        Turn("m2", "c1", "assistant", "Lovely, I suggest the botanical garden."),
    ]
    idx = TurnIndex(turns, np.zeros((2, 384), dtype=np.float32), weights={"speaker": 1.0})
    column = FEATURES.index("speaker")
    q = np.zeros(384, dtype=np.float32)
    assert idx.features("When is my sister visiting?", q)[:, column].tolist() == [1.0, 0.0]
    assert idx.features("What did you suggest?", q)[:, column].tolist() == [0.0, 1.0]
    assert idx.features("When is the visit?", q)[:, column].tolist() == [0.0, 0.0]
    names = TurnIndex([Turn("D1:1", "s1", "Ann", "My sister visits in June.")], np.zeros((1, 384), dtype=np.float32))
    assert names.features("When does my sister visit?", np.zeros(384, dtype=np.float32))[0, column] == 0.0


def test_a_question_is_flagged_and_the_turn_after_it_carries_its_match_as_an_answer():
    assert asks("Wow! Did you enjoy it?") and asks('She asked "why?"') and asks("Really?**")
    assert not asks("Did you? I loved it.") and not asks("Fine.") and not asks("")
    turns = [
        Turn("D1:1", "s1", "Ann", "How was the race last Sunday?"),
        Turn("D1:2", "s1", "Ben", "Great, I finished in two hours."),
        Turn("D1:3", "s1", "Ann", "My dog had surgery on his knee."),
        Turn("D1:4", "s1", "Ben", "I'm sorry to hear that."),
        Turn("D2:1", "s2", "Ben", "Did you watch the race?"),  # a new session: no turn before it
    ]
    idx = TurnIndex(turns)
    f = idx.features("How long did Ben's race take?")
    col = {name: f[:, FEATURES.index(name)] for name in ("question", "answer_cos", "answer_bm25", "prev_cos")}
    assert col["question"].tolist() == [1.0, 0.0, 0.0, 0.0, 1.0]
    # the reply to a question carries that question's match; the reply to a statement, and a session's first turn,
    # carry none
    assert col["answer_cos"][1] == col["prev_cos"][1] > 0.2
    assert col["answer_bm25"][1] > 0
    assert col["answer_cos"][[0, 2, 3, 4]].tolist() == [0.0, 0.0, 0.0, 0.0]
    assert col["answer_bm25"][[0, 2, 3, 4]].tolist() == [0.0, 0.0, 0.0, 0.0]
