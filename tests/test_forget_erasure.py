"""Forget erases bytes, not just rows: the forgotten user's text is gone from the SQLite files themselves."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pytest

from afterword.memory import add_memories, forget_user_memories
from afterword.memory.index import get_index, owner_tag
from afterword.records import Conversation, Memory, Message
from afterword.store import Store, forget_user, search

# Unique enough that any hit in the file is a leftover of these users' data.
GONE_MARK, GONE_TOKEN, GONE_USER = b"900123", b"qqzforgottentok", b"hannah-7f3e"
KEPT_MARK, KEPT_TOKEN = b"555777", b"jjwkepttok"


def _fill(store: Store, n: int = 60) -> None:
    hannah, carlos = GONE_USER.decode(), "carlos-2b9d"
    convs = [
        Conversation(
            user_id=user,
            external_id=f"{user}-{i}",
            source="test",
            messages=[
                Message(role="user", content=f"question {i} from {user} about knitting and tomatoes"),
                Message(role="assistant", content=f"answer {i} about wool and compost"),
            ],
        )
        for user in (hannah, carlos)
        for i in range(n)
    ]
    convs.append(
        Conversation(
            user_id=hannah,
            external_id="secret",
            source="test",
            messages=[
                Message(role="user", content="my locker code is 900123 qqzforgottentok please remember"),
                Message(role="assistant", content="noted"),
            ],
        )
    )
    convs.append(
        Conversation(
            user_id=carlos,
            external_id="secret",
            source="test",
            messages=[Message(role="user", content="my bike code is 555777 jjwkepttok")],
        )
    )
    store.import_conversations(convs)
    mems = [Memory(kind="fact", user_id=u, text=f"{u} likes item {i}") for u in (hannah, carlos) for i in range(20)]
    mems += [
        Memory(kind="fact", user_id=hannah, text="locker 900123 qqzforgottentok"),
        Memory(kind="fact", user_id=carlos, text="bike 555777 jjwkepttok"),
    ]
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(len(mems), 384)).astype(np.float32)
    add_memories(store, mems, vectors=vecs / np.linalg.norm(vecs, axis=1, keepdims=True))
    assert search(store, "qqzforgottentok")  # also fills messages_fts


def _file_bytes(db: Path) -> bytes:
    """The database and whatever -wal/-shm files exist, as ``strings`` would read them."""
    return b"".join(p.read_bytes() for p in sorted(db.parent.glob(db.name + "*")))


def test_forget_erases_the_users_bytes_from_the_sqlite_files(tmp_path):
    db = tmp_path / "walk.db"
    store = Store(str(db))
    _fill(store)
    store.close()
    before = _file_bytes(db)
    assert GONE_MARK in before and GONE_TOKEN in before and GONE_USER in before

    store = Store(str(db))
    res = forget_user_memories(store, GONE_USER.decode())  # what `afterword forget --user` calls
    assert res["removed"]["messages"] == 2 * 60 + 2 and len(res["memory_ids"]) == 21
    assert res["erased"] is True
    assert res["erasure"]["steps"] == ["optimize:messages_fts", "optimize:memory_search", "vacuum", "checkpoint"]
    assert search(store, "qqzforgottentok") == []
    assert [h["content"] for h in search(store, "jjwkepttok")] == ["my bike code is 555777 jjwkepttok"]
    store.close()

    data = _file_bytes(db)
    assert GONE_MARK not in data  # the message text (messages, messages_fts_content, memories, memory_search)
    assert GONE_TOKEN not in data and GONE_TOKEN[3:] not in data  # FTS5 terms are prefix-compressed
    assert GONE_USER not in data  # user id columns, their indexes, the vec0/IVF owner
    assert KEPT_MARK in data and KEPT_TOKEN in data  # the other user is untouched

    # The store still works after VACUUM: new messages are indexed, the other user's memories are found.
    store = Store(str(db))
    store.import_conversations(
        [Conversation(user_id="carlos-2b9d", source="test", messages=[Message(role="user", content="zzqnewtok")])]
    )
    assert len(search(store, "zzqnewtok")) == 1
    assert get_index(store).lexical("bike jjwkepttok", ["carlos-2b9d"], 5)
    store.close()


def test_forget_user_alone_removes_the_memory_index_entries_orphans_included(store):
    _fill(store, n=3)
    user = GONE_USER.decode()
    # An index entry whose memory row is already gone (a crash between the row and the index write).
    with store.write() as conn:
        orphan = conn.exec_driver_sql("SELECT id FROM memories WHERE user_id = ? LIMIT 1", (user,)).scalar()
        conn.exec_driver_sql("DELETE FROM memories WHERE id = ?", (orphan,))
    res = forget_user(store, user)
    assert orphan not in res["memory_ids"] and res["erased"] is True
    tag = owner_tag(user)
    with store.read() as conn:
        left = conn.exec_driver_sql(
            "SELECT count(*) FROM memory_search WHERE memory_search MATCH ?", (f'owner_tag : "{tag}"',)
        ).scalar()
        assert left == 0
        assert conn.exec_driver_sql("SELECT count(*) FROM memory_search").scalar() == 21  # carlos's
        if get_index(store).kind == "sqlite-vec":
            assert conn.exec_driver_sql("SELECT count(*) FROM memory_vec WHERE owner = ?", (user,)).scalar() == 0


def test_erasure_failure_keeps_the_deletion_and_says_so(store, monkeypatch, caplog):
    _fill(store, n=3)

    search_mod = sys.modules["afterword.store.search"]  # (the package re-exports a function of that name)
    delete_user, connect = search_mod._delete_user, store.engine.raw_connection

    def boom():  # the next connection after the deletion, i.e. the erasure's own
        store.engine.raw_connection = connect
        raise OSError("disk on fire")

    def delete_then_break(*args, **kwargs):
        out = delete_user(*args, **kwargs)
        store.engine.raw_connection = boom
        return out

    monkeypatch.setattr(search_mod, "_delete_user", delete_then_break)
    with caplog.at_level(logging.WARNING, logger="afterword.store"):
        res = forget_user(store, GONE_USER.decode())
    assert res["erased"] is False and "disk on fire" in res["erasure"]["error"]
    assert "erasing their bytes failed" in caplog.text
    assert res["removed"]["messages"] == 3 * 2 + 2
    assert search(store, "qqzforgottentok") == [] and search(store, "jjwkepttok")


def test_erase_false_deletes_rows_only(store):
    _fill(store, n=3)
    res = forget_user(store, GONE_USER.decode(), erase=False)
    assert res["erased"] is False and res["erasure"] == {"erased": False, "skipped": True}
    assert res["removed"]["users"] == 1 and search(store, "qqzforgottentok") == []


@pytest.mark.pg
def test_forget_on_postgres_vacuums_but_does_not_claim_erasure(pg_url):
    store = Store(pg_url)
    try:
        _fill(store, n=3)
        res = forget_user_memories(store, GONE_USER.decode())
        assert res["removed"]["messages"] == 3 * 2 + 2
        assert res["erasure"]["vacuumed"] is True and res["erased"] is False
        assert search(store, "forgottentok locker") == [] and search(store, "bike code")
    finally:
        store.close()
