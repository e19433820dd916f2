"""The store on SQLite and on a real PostgreSQL: ids, idempotence, feedback, judgments, search, forget, migrations."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from afterword.capture import assign_ids
from afterword.errors import NotFoundError, StoreError
from afterword.export import record_export
from afterword.records import Conversation, Evidence, Feedback, Judgment, Message, stable_id
from afterword.store import Store, forget_user, message_id_for, search
from afterword.store import schema as t
from afterword.store.migrate import SCHEMA_HEAD, current_revision, head_revision, upgrade

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def conv(user: str, session: str | None, *turns: str, day: int = 0, feedback: list[Feedback] | None = None):
    msgs = [
        Message(role="user" if i % 2 == 0 else "assistant", content=c, created_utc=T0 + timedelta(days=day, minutes=i))
        for i, c in enumerate(turns)
    ]
    return Conversation(messages=msgs, user_id=user, external_id=session, feedback=feedback or [])


def rows(store: Store, table: sa.Table, *where) -> list:
    with store.read() as c:
        return c.execute(sa.select(table).where(*where)).all()


COOKING = conv(
    "marco",
    "m-1",
    "I prefer metric units. How many grams is a cup of flour?",
    "About 250 g.",
    "That's wrong, a cup of flour is about 125 g.",
    "You're right, about 120-125 g of all-purpose flour.",
    feedback=[Feedback(kind="correction", message_index=1, correction="About 120-125 g.", thumbs=-1)],
)
CODING = conv(
    "priya",
    "p-1",
    "How do I append a row to a pandas DataFrame?",
    "Use pd.concat with a one-row frame; DataFrame.append was removed in pandas 2.0.",
    "thanks, that worked",
    day=3,
    feedback=[Feedback(kind="thumbs", thumbs=1, message_index=1)],
)


def test_reimport_is_idempotent(any_store: Store) -> None:
    first = any_store.import_conversations([COOKING, CODING])
    assert (first.conversations, first.messages, first.feedback) == (2, 7, 2)
    again = any_store.import_conversations([COOKING, CODING])
    assert (again.conversations, again.messages, again.feedback) == (0, 0, 0)
    assert (again.conversations_present, again.messages_present) == (2, 7)
    s = any_store.stats()
    assert (s["users"], s["conversations"], s["messages"], s["feedback"]) == (2, 2, 7, 2)


def test_same_conversation_twice_in_one_batch(any_store: Store) -> None:
    counts = any_store.import_conversations([COOKING, COOKING])
    assert counts.conversations == 1 and counts.conversations_present == 1
    assert (counts.messages, counts.messages_present) == (4, 4)
    assert any_store.stats()["messages"] == 4


def test_growing_history_in_one_batch_keeps_every_turn(any_store: Store) -> None:
    """A log with one line per call carries the growing history under one session id."""
    turns = ["q1", "a1", "q2", "a2", "q3", "a3"]
    calls = [conv("u", "s-1", *turns[:n]) for n in (2, 4, 6)]
    counts = any_store.import_conversations(calls)
    assert (counts.conversations, counts.messages, counts.messages_present) == (1, 6, 6)
    assert [m.content for m in any_store.get_conversation("s-1").messages] == turns


@pytest.mark.parametrize("session", ["s-42", None])
def test_resent_history_adds_only_the_new_turns(any_store: Store, session: str | None) -> None:
    short = conv("tom", session, "Row numbers per department?", "Use ROW_NUMBER() OVER (PARTITION BY dept).")
    longer = conv(
        "tom",
        session,
        "Row numbers per department?",
        "Use ROW_NUMBER() OVER (PARTITION BY dept).",
        "And with ties?",
        "Use RANK() instead.",
    )
    any_store.import_conversations([short])
    counts = any_store.import_conversations([longer])
    assert (counts.messages, counts.messages_present, counts.conversations) == (2, 2, 0)
    stored = any_store.get_conversation(any_store.conversation_ids(user_id="tom")[0])
    assert [m.content for m in stored.messages] == [m.content for m in longer.messages]
    first_ids = [m.id for m in assign_ids(short.model_copy(deep=True)).messages]
    assert [m.id for m in stored.messages][:2] == first_ids
    assert [m.id for m in stored.messages] == [m.id for m in assign_ids(longer.model_copy(deep=True)).messages]
    assert any_store.stats()["conversations"] == 1


def test_message_ids_are_content_hashes_of_parent_chain() -> None:
    m = Message(role="assistant", content="héllo", tool_calls=[{"b": 1, "a": [2]}])
    assert message_id_for("c1", "p1", m) == stable_id("msg", "c1", "p1", "assistant", "héllo", m.tool_calls)
    assert message_id_for("c1", None, m) == stable_id("msg", "c1", "", "assistant", "héllo", m.tool_calls)
    assert message_id_for("c1", "p1", m) != message_id_for("c1", "p2", m)


def test_conversation_round_trip_keeps_fields(any_store: Store) -> None:
    c = Conversation(
        user_id="amira",
        external_id="a-1",
        metadata={"app": "web"},
        messages=[
            Message(role="system", content="be brief"),
            Message(role="user", content="hi", metadata={"lang": "en"}),
            Message(
                role="assistant",
                content="",
                tool_calls=[{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
                model="gpt-x",
                latency_ms=12.5,
                prompt_tokens=10,
                completion_tokens=3,
                created_utc=T0,
            ),
        ],
    )
    got = any_store.add_conversation(c)
    assert got.external_id == "a-1" and got.metadata == {"app": "web"} and got.source == "import"
    a = got.messages[2]
    assert a.tool_calls[0]["function"]["name"] == "f"
    assert (a.model, a.latency_ms, a.prompt_tokens, a.completion_tokens) == ("gpt-x", 12.5, 10, 3)
    assert a.created_utc == T0 and a.created_utc.tzinfo is not None
    assert got.messages[1].metadata == {"lang": "en"}
    assert any_store.get_conversation("a-1").id == got.id  # by the source's session id too
    with pytest.raises(NotFoundError):
        any_store.get_conversation("nope")


def test_feedback(any_store: Store) -> None:
    stored = any_store.add_conversation(CODING)
    answer = stored.messages[1]
    assert [f.kind for f in stored.feedback] == ["thumbs"] and stored.feedback[0].message_id == answer.id
    fid = any_store.add_feedback(Feedback(kind="correction", message_id=answer.id, correction="use pd.concat"))
    fid2 = any_store.add_feedback(Feedback(kind="rating", message_id=answer.id, rating=4))
    assert fid != fid2
    fbs = any_store.feedback_for_messages([answer.id])
    assert {f.kind for f in fbs} == {"thumbs", "correction", "rating"}
    assert all(f.user_id == "priya" for f in fbs)  # filled from the message
    corr = any_store.corrections()
    assert len(corr) == 1 and corr[0][1].id == answer.id and corr[0][2] == stored.id
    assert any_store.corrections(user_id="someone-else") == []
    with pytest.raises(NotFoundError):
        any_store.add_feedback(Feedback(kind="thumbs", message_id="missing", thumbs=1))
    with pytest.raises(StoreError):
        any_store.add_feedback(Feedback(kind="thumbs", thumbs=1))


def test_judgments_put_replace_get(any_store: Store) -> None:
    stored = any_store.add_conversation(COOKING)
    a1, a2 = stored.messages[1].id, stored.messages[3].id
    ev = [Evidence(signal="correction", message_id=stored.messages[2].id, weight=-0.9, detail="that's wrong")]
    n = any_store.put_judgments(
        [
            Judgment(
                message_id=a1, source="hindsight-model", label="dissatisfied", score=-0.8, confidence=0.9, evidence=ev
            ),
            Judgment(message_id=a2, source="hindsight-model", label="neutral", score=0.0, confidence=0.4),
            Judgment(message_id=a1, source="explicit", label="dissatisfied", score=-1, confidence=1),
        ]
    )
    assert n == 3
    any_store.put_judgments(
        [Judgment(message_id=a2, source="hindsight-model", label="satisfied", score=0.6, confidence=0.7)]
    )
    got = {(j.message_id, j.source): j for j in any_store.judgments_for([a1, a2])}
    assert len(got) == 3  # replaced, not added
    assert got[(a2, "hindsight-model")].label == "satisfied" and got[(a2, "hindsight-model")].score == 0.6
    assert got[(a1, "hindsight-model")].evidence == ev
    assert [j.source for j in any_store.judgments_for([a1], source="explicit")] == ["explicit"]
    assert {r.user_id for r in rows(any_store, t.judgments)} == {"marco"}
    assert any_store.stats()["judgments_by_source"] == {
        "hindsight-model": {"dissatisfied": 1, "satisfied": 1},
        "explicit": {"dissatisfied": 1},
    }
    assert any_store.put_judgments([]) == 0


def test_stats(any_store: Store) -> None:
    any_store.import_conversations([COOKING, CODING])
    s = any_store.stats()
    assert s["messages_by_role"] == {"user": 4, "assistant": 3}
    assert s["feedback_by_kind"] == {"correction": 1, "thumbs": 1}
    assert s["first_message_utc"] == T0.isoformat()
    assert s["last_message_utc"] == (T0 + timedelta(days=3, minutes=2)).isoformat()
    assert "password" not in s["store"]


def test_search_with_filters(any_store: Store) -> None:
    any_store.import_conversations([COOKING, CODING])
    hits = search(any_store, "flour")
    assert hits and all("flour" in h["content"].lower() for h in hits)
    assert {h["user_id"] for h in hits} == {"marco"}
    assert search(any_store, "flour", user_id="priya") == []
    assert {h["role"] for h in search(any_store, "flour", role="assistant")} == {"assistant"}
    assert search(any_store, "pandas", since=T0 + timedelta(days=1))
    assert search(any_store, "pandas", until=T0 + timedelta(days=1)) == []
    # feedback filters
    corrected = search(any_store, "250", feedback="correction")
    assert [h["content"] for h in corrected] == ["About 250 g."]
    assert [h["content"] for h in search(any_store, "pandas removed", feedback="up")][0].startswith("Use pd.concat")
    assert search(any_store, "pandas removed", feedback="down") == []
    assert all(h["role"] == "user" for h in search(any_store, "pandas", feedback="none"))
    with pytest.raises(ValueError):
        search(any_store, "pandas", feedback="sideways")
    # user text is never parsed as query syntax
    assert search(any_store, 'flour" OR (NEAR') is not None
    assert search(any_store, "***") == []


def test_search_sees_messages_imported_after_a_search(any_store: Store) -> None:
    any_store.import_conversations([COOKING])
    assert search(any_store, "flour")
    any_store.import_conversations([conv("leo", "l-1", "derivative of x^2 sin x", "2x sin x + x^2 cos x")])
    assert [h["user_id"] for h in search(any_store, "derivative")] == ["leo"]


def _user_rows(store: Store, user: str) -> dict[str, int]:
    out = {}
    with store.read() as c:
        for table in t.USER_TABLES:
            out[table.name] = c.execute(
                sa.select(sa.func.count()).select_from(table).where(table.c.user_id == user)
            ).scalar()
        out["users"] = c.execute(sa.select(sa.func.count()).select_from(t.users).where(t.users.c.id == user)).scalar()
    return out


def test_forget_user_removes_every_row_and_marks_exports_stale(any_store: Store, tmp_path) -> None:
    any_store.import_conversations([COOKING, CODING])
    marco = any_store.get_conversation("m-1")
    mids = [m.id for m in marco.messages]
    search(any_store, "flour")  # fills the SQLite FTS table
    any_store.put_judgments(
        [Judgment(message_id=mids[1], source="combined", label="dissatisfied", score=-1, confidence=1)]
    )
    now = datetime.now(UTC)
    with any_store.write() as c:
        c.execute(
            t.memories.insert().values(
                id="mem1", kind="preference", scope="user", user_id="marco", text="Use metric units", pinned=False,
                uses=0, helpful=0, harmful=0, usefulness=0, active=True, created_utc=now, updated_utc=now,
            )
        )  # fmt: skip
        c.execute(
            t.memory_injections.insert().values(
                memory_id="mem1", message_id=mids[3], user_id="marco", tokens=5, credited=False, created_utc=now
            )
        )
    exp = record_export(
        any_store,
        kind="sft",
        fmt="jsonl",
        path=str(tmp_path / "x.jsonl"),
        command=None,
        card={},
        items=[(mids[1], "marco", "train"), (CODING.messages[0].id or "p", "priya", "train")],
    )
    other = record_export(
        any_store, kind="sft", fmt="jsonl", path="y", command=None, card={}, items=[("zz", "priya", "train")]
    )
    assert all(v > 0 for v in _user_rows(any_store, "marco").values())

    res = forget_user(any_store, "marco")

    assert _user_rows(any_store, "marco") == dict.fromkeys(_user_rows(any_store, "marco"), 0)
    assert res["memory_ids"] == ["mem1"] and res["stale_exports"] == [exp]
    assert rows(any_store, t.messages, t.messages.c.id.in_(mids)) == []
    assert rows(any_store, t.feedback, t.feedback.c.message_id.in_(mids)) == []
    assert rows(any_store, t.judgments, t.judgments.c.message_id.in_(mids)) == []
    stale = {r.id: r.stale_reason for r in rows(any_store, t.exports)}
    # Marked stale without naming the forgotten user (the reason must not keep their id).
    assert stale[exp] and "marco" not in stale[exp] and stale[other] is None
    if any_store.is_sqlite:
        assert res["removed"]["messages_fts"] == 4
        with any_store.read() as c:
            left = c.exec_driver_sql("SELECT message_id FROM messages_fts").scalars().all()
        assert left and not set(left) & set(mids)
    assert search(any_store, "flour") == []
    assert _user_rows(any_store, "priya")["messages"] == 3  # the other user is untouched
    assert search(any_store, "pandas")


def test_search_finds_new_messages_after_a_forget(any_store: Store) -> None:
    """Deleting the newest rows must not hide the next import from full-text search."""
    any_store.import_conversations([CODING, COOKING])
    search(any_store, "flour")
    forget_user(any_store, "marco")  # the newest rows
    any_store.import_conversations([conv("hannah", "h-1", "Does Interrail cover the Eurostar?", "Yes, with a seat.")])
    assert [h["user_id"] for h in search(any_store, "Eurostar")] == ["hannah"]


def test_schema_head_matches_alembic() -> None:
    assert head_revision() == SCHEMA_HEAD


def test_migrations_create_exactly_the_schema(any_store: Store) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    with any_store.engine.connect() as c:
        diff = compare_metadata(MigrationContext.configure(c), t.metadata)

    def relevant(d: object) -> bool:
        # The full-text structures are created by raw SQL in 0002 and are not in the Core metadata.
        text = repr(d)
        return "messages_fts" not in text and "ix_messages_content_fts" not in text

    assert [d for d in diff if relevant(d)] == []


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.pg)])
def test_upgrade_from_the_oldest_revision(backend: str, tmp_path, request) -> None:
    url = str(tmp_path / "old.db") if backend == "sqlite" else request.getfixturevalue("pg_url")
    old = Store(url, migrate=False)
    assert upgrade(old.engine, "0001") == "0001"
    with old.engine.connect() as c:
        assert sa.inspect(c).has_table("messages")
        if old.is_sqlite:
            assert not sa.inspect(c).has_table("messages_fts")
    old.close()
    s = Store(url)  # opening a store upgrades it
    assert current_revision(s.engine) == SCHEMA_HEAD
    s.import_conversations([COOKING])
    assert [h["user_id"] for h in search(s, "flour")][:1] == ["marco"]
    s.close()


def test_sqlite_runs_in_wal_mode(store: Store) -> None:
    with store.read() as c:
        assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_bulk_writes_keep_the_wal_bounded(tmp_path) -> None:
    """A write-ahead log past the limit is checkpointed and truncated after a bulk batch, with the rows kept."""
    store = Store(str(tmp_path / "wal.db"))
    wal = tmp_path / "wal.db-wal"
    msgs = [Message(role="user", content="question 0"), Message(role="assistant", content="answer 0")]
    store.import_conversations([Conversation(user_id="u", messages=msgs, external_id="s0")])
    assert wal.stat().st_size > 0  # below the default limit the log is left to SQLite's own checkpoints
    store.WAL_LIMIT_BYTES = 1
    convs = [
        Conversation(user_id="u", external_id=f"s{i}", messages=[Message(role="user", content=f"q {i}")])
        for i in range(1, 50)
    ]
    counts = store.import_conversations(convs)
    assert counts.conversations == 49 and wal.stat().st_size == 0
    assert store.stats()["conversations"] == 50
    store.close()


def test_store_errors_are_translated(tmp_path) -> None:
    with pytest.raises(StoreError):
        Store(str(tmp_path / "missing-dir" / "x.db"))
    with pytest.raises(StoreError):
        Store("postgresql://nobody@127.0.0.1:1/none?connect_timeout=2")
