"""USS and ASAP parsers: records, ratings, the rebuilt train split, and errors that name file/line/field."""

from __future__ import annotations

import pytest

from afterword.errors import ImportRecordError
from afterword.importers import asap, uss
from afterword.importers.base import raise_errors

USS = (
    "USER\tI need a cheap hotel.\tHotel-Inform\t3,3,3\n"
    "SYSTEM\tThe Acorn is cheap.\tHotel-Inform\t\n"
    "USER\tNo, I said in the north!\tHotel-Inform\t2,2,3\n"
    "SYSTEM\tSorry, the Alpha in the north is cheap.\t\t\n"
    "USER\tThanks, perfect.\tgeneral-thank\t4,4,3,5\n"
    "USER\tOVERALL\t\t3,3,4\n"
    "\n"
    "SYSTEM\tDo you like Thor?\tOTHER\t\n"
    "USER\tNo.\tOTHER\t3,2,2\n"
    "USER\tI mean, not really.\tOTHER\t3,3,3\n"
    "USER\tOVERALL\t\t3,3,3\n"
)

ASAP = (
    "['I need a cheap hotel.|||The Acorn is cheap.', 'No, I said in the north!|||']\t[0, 0]\t0\n"
    "['I need a cheap hotel.|||The Acorn is cheap.', 'No, I said in the north!|||Sorry, the Alpha in the "
    "north is cheap.', 'Thanks, perfect.|||']\t[0, 0, 5]\t2\n"
)


@pytest.fixture
def uss_file(tmp_path):
    p = tmp_path / "MWOZ.txt"
    p.write_text(USS, encoding="utf-8")
    return p


@pytest.fixture
def asap_file(tmp_path):
    p = tmp_path / "test_mwoz.txt"
    p.write_text(ASAP, encoding="utf-8")
    return p


def test_uss_parse_keeps_ratings_and_overall(uss_file):
    convs = list(uss.parse(uss_file))
    assert len(convs) == 2
    first = convs[0]
    assert [m.role for m in first.messages] == ["user", "assistant", "user", "assistant", "user"]
    assert first.messages[2].metadata["ratings"] == [2, 2, 3]
    assert first.messages[2].metadata["mean_rating"] == pytest.approx(2.33)
    assert first.messages[2].metadata["line"] == 3
    assert "ratings" not in first.messages[1].metadata
    assert first.metadata["overall"] == {"ratings": [3, 3, 4], "mean_rating": 3.33}
    assert first.external_id == "uss:MWOZ:0" and first.source == "uss"
    second = convs[1]
    assert second.messages[0].role == "assistant" and len(second.messages) == 3
    assert second.metadata["line"] == 8


def test_rating_label_uses_the_exact_mean():
    assert uss.rating_label([3, 3, 2]) == 0
    assert uss.rating_label([2, 4, 3]) == 1
    assert uss.rating_label([4, 3, 3]) == 2


@pytest.mark.parametrize(
    ("line", "field", "needle"),
    [
        ("USER\tHi\t\t3,x,3\n", "ratings", "integers"),
        ("USER\tHi\t\t3,9\n", "ratings", "1..5"),
        ("BOT\tHi\t\t3\n", "role", "USER or SYSTEM"),
        ("USER\tHi\t3\n", None, "4 tab-separated"),
        ("USER\tHi\t\t\n", "ratings", "needs ratings"),
    ],
)
def test_uss_errors_name_file_line_field(tmp_path, line, field, needle):
    p = tmp_path / "bad.txt"
    p.write_text("USER\tHello\t\t3,3\nSYSTEM\tHi\t\t\n" + line, encoding="utf-8")
    with pytest.raises(ImportRecordError) as info:
        list(raise_errors(uss.parse(p)))
    err = info.value
    assert (err.path, err.line, err.field) == (str(p), 3, field)
    assert needle in err.message
    assert str(p) in str(err) and ":3" in str(err)


def test_asap_parse(asap_file):
    convs = list(asap.parse(asap_file))
    assert [c.metadata["label"] for c in convs] == [0, 2]
    c = convs[1]
    assert [m.role for m in c.messages] == ["user", "assistant", "user", "assistant", "user"]
    assert c.messages[-1].content == "Thanks, perfect."
    assert c.metadata["acts"] == [0, 0, 5] and c.metadata["line"] == 2


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ("['a|||b', 'c|||']\t[0, 0]\t7\n", "label"),
        ("['a|||b', 'c|||']\t[0, 0]\tx\n", "label"),
        ("['a|||b', 'c|||'\t[0, 0]\t1\n", "turns"),
        ("['a|||b', 'c']\t[0, 0]\t1\n", "turns[1]"),
        ("['a|||b', 'c|||d']\t[0, 0]\t1\n", "turns[1]"),
        ("['a|||b', 'c|||']\t__import__('os')\t1\n", "acts"),
        ("['a|||b', 'c|||']\t1\n", None),
    ],
)
def test_asap_errors_name_file_line_field(tmp_path, line, field):
    p = tmp_path / "bad.txt"
    p.write_text(ASAP.splitlines(keepends=True)[0] + line, encoding="utf-8")
    with pytest.raises(ImportRecordError) as info:
        list(raise_errors(asap.parse(p)))
    assert (info.value.path, info.value.line, info.value.field) == (str(p), 2, field)


def test_train_split_drops_dialogues_seen_in_asap(uss_file, asap_file):
    held = list(asap.parse(asap_file))
    kept = list(uss.train_split(uss_file, held))
    assert [c.external_id for c in kept] == ["uss:MWOZ:1"]
    assert len(list(uss.train_split(uss_file, []))) == 2


def test_a_bad_line_is_yielded_and_the_rest_still_imports(tmp_path, store):
    from afterword.importers import run_import

    p = tmp_path / "mixed.txt"
    p.write_text(
        "USER\tHello\t\t3,3\nSYSTEM\tHi\t\t\nUSER\tthanks\t\t4,4\n\n"
        "USER\tBroken\t\tx,y\nSYSTEM\tnever stored\t\t\n\n"
        "USER\tAgain\t\t2,2\nSYSTEM\tOK\t\t\nUSER\tno!\t\t1,2\n",
        encoding="utf-8",
    )
    counts = run_import(store, p, "uss")
    assert counts.conversations == 2 and counts.skipped == 1
    assert counts.errors[0]["line"] == 5 and counts.errors[0]["field"] == "ratings"
    q = tmp_path / "mixed_asap.txt"
    q.write_text("['a|||b', 'ok|||']\t[0, 0]\t1\n['a|||b', 'c']\t[0, 0]\t1\n['x|||y', 'fine|||']\t[0]\t2\n")
    counts = run_import(store, q, "asap")
    assert counts.conversations == 2 and counts.skipped == 1 and counts.errors[0]["line"] == 2
