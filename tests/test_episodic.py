"""Recall of a user's earlier turns (``afterword.memory.recall``): on real SQLite and PostgreSQL stores, through the
injector, the CLI and the proxy (a real uvicorn server and the official SDK)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import openai
import pytest
from typer.testing import CliRunner

from afterword.cli import app
from afterword.memory import MemoryConfig, MemoryInjector, add_memories, episodic, recall
from afterword.memory.turns import recall_encoder_path
from afterword.records import Conversation, Memory, MemoryKind, Message
from afterword.store import Store, forget_user
from afterword.store import schema as t

_DAY1 = datetime(2024, 3, 4, 10, 0, tzinfo=UTC)
_DAY2 = datetime(2024, 3, 18, 9, 30, tzinfo=UTC)


def _conv(user: str, external: str, when: datetime, *pairs: tuple[str, str]) -> Conversation:
    msgs = []
    for q, a in pairs:
        msgs += [
            Message(role="user", content=q, created_utc=when),
            Message(role="assistant", content=a, created_utc=when),
        ]
    return Conversation(user_id=user, external_id=external, started_utc=when, messages=msgs)


def _key(store: Store, user: str) -> tuple[str, str, str]:
    return episodic._key(store, user, recall_encoder_path())


@pytest.fixture
def history(any_store: Store) -> Store:
    store = any_store
    store.import_conversations(
        [
            _conv(
                "ana",
                "a1",
                _DAY1,
                ("My dog Biscuit had surgery on his knee today.", "I'm sorry to hear that, I hope he heals fast."),
                ("Can you suggest a soft food for him?", "Wet food or boiled rice with chicken works well."),
            ),
            _conv(
                "ana",
                "a2",
                _DAY2,
                ("I started learning the cello last week.", "Great choice, the cello has a warm sound."),
            ),
            _conv(
                "ben",
                "b1",
                _DAY1,
                ("My cat Pixel had surgery on her knee today.", "Poor Pixel, I hope she recovers soon."),
            ),
        ]
    )
    return store


def test_recall_finds_the_turn_that_answers_and_only_in_the_users_own_history(history: Store) -> None:
    hits = recall(history, "When did my dog have surgery?", user_id="ana", k=3)
    assert len(hits) == 3
    top = hits[0]
    assert top.text.startswith("My dog Biscuit had surgery")
    assert top.role == "user" and top.speaker == "user" and top.created_utc == _DAY1
    assert hits[0].score >= hits[1].score >= hits[2].score
    assert all("Pixel" not in h.text for h in recall(history, "knee surgery of my pet", user_id="ana", k=10))
    assert recall(history, "Which instrument am I learning?", user_id="ana", k=1)[0].text.startswith("I started")
    for mode in ("bm25", "dense"):
        assert "Biscuit" in recall(history, "Biscuit surgery", user_id="ana", k=1, mode=mode)[0].text  # type: ignore[arg-type]
    assert recall(history, "anything", user_id="nobody") == []
    assert recall(history, "   ", user_id="ana") == []
    with pytest.raises(ValueError, match="user id"):
        recall(history, "q", user_id="")
    with pytest.raises(ValueError, match="mode"):
        recall(history, "q", user_id="ana", mode="fuzzy")  # type: ignore[arg-type]
    a2 = recall(history, "cello", user_id="ana", k=1)[0].conversation_id
    assert all(h.conversation_id != a2 for h in recall(history, "cello", user_id="ana", k=6, exclude_conversation=a2))


def test_recall_finds_the_assistants_answer_to_the_users_question(history: Store) -> None:
    # the reply to a question on the topic holds the answer (the ``answer_*`` signals); the question itself is
    # not the evidence, though it matches the words better
    history.import_conversations(
        [
            _conv(
                "cara",
                "c1",
                _DAY1,
                (
                    "What should I feed my dog Rex after his knee surgery?",
                    "Soft, bland meals: boiled rice and chicken.",
                ),
                ("Thanks! Any tips for the stairs?", "Carry him for the first two weeks."),
            )
        ]
    )
    hit = recall(history, "What food did you recommend for Rex?", user_id="cara", k=1)[0]
    assert hit.text.startswith("Soft, bland meals") and hit.role == "assistant"


def test_recall_sees_new_messages_and_reembeds_only_them(history: Store) -> None:
    recall(history, "dog", user_id="ana")
    before = episodic._cache[_key(history, "ana")].vectors
    history.import_conversations(
        [_conv("ana", "a3", datetime(2024, 4, 2, tzinfo=UTC), ("We moved to Lisbon in April.", "Exciting!"))]
    )
    hit = recall(history, "Where did we move to?", user_id="ana", k=1)[0]
    assert hit.text == "We moved to Lisbon in April."
    after = episodic._cache[_key(history, "ana")].vectors
    assert len(after) == len(before) + 2
    assert all(after[key] is vec for key, vec in before.items())  # earlier turns were not embedded again


def test_forgetting_a_user_leaves_nothing_to_recall(history: Store) -> None:
    assert recall(history, "dog surgery", user_id="ana")
    assert _key(history, "ana") in episodic._cache
    forget_user(history, "ana")
    assert all(k[:2] != (history.url, "ana") for k in episodic._cache)  # the text held in memory is gone too
    assert recall(history, "dog surgery", user_id="ana") == []
    assert recall(history, "cat surgery", user_id="ben")[0].text.startswith("My cat Pixel")


def test_injector_adds_dated_turns_only_when_asked_and_never_credits_them(history: Store) -> None:
    msgs = [{"role": "user", "content": "How is my dog's knee healing after the surgery?"}]
    assert MemoryInjector(history).inject(msgs, user_id="ana").items == []  # recall is off by default
    inj = MemoryInjector(history, MemoryConfig(recall_turns=1)).inject(msgs, user_id="ana")
    assert [i.kind for i in inj.items] == ["turn"]
    assert inj.items[0].text == "On 2024-03-04, the user said: My dog Biscuit had surgery on his knee today."
    assert "Biscuit" in inj.messages[0]["content"] and inj.tokens >= inj.items[0].tokens
    assert (
        MemoryInjector(history, MemoryConfig(recall_turns=1))
        .inject(msgs, user_id="ben")
        .items[0]
        .text.endswith("My cat Pixel had surgery on her knee today.")
    )
    # A turn already in the request is not quoted back; an unrelated request gets nothing.
    same = [{"role": "user", "content": "My dog Biscuit had surgery on his knee today."}]
    got = MemoryInjector(history, MemoryConfig(recall_turns=1)).inject(same, user_id="ana").items
    assert all("Biscuit had surgery" not in i.text for i in got)
    far = [{"role": "user", "content": "Convert 3 miles to kilometres."}]
    assert MemoryInjector(history, MemoryConfig(recall_turns=2)).inject(far, user_id="ana").items == []
    # Budget: a turn that does not fit is left out.
    tight = MemoryInjector(history, MemoryConfig(recall_turns=1, token_budget=40)).inject(msgs, user_id="ana")
    assert tight.items == [] and tight.messages == msgs
    # Logged injections name memories only: the turn is reported, not credited.
    add_memories(
        history,
        [Memory(kind=MemoryKind.fact, text="Ana's dog Biscuit is a beagle; his knee needs care.", user_id="ana")],
    )
    both = MemoryInjector(history, MemoryConfig(recall_turns=1)).inject(msgs, user_id="ana")
    assert sorted(i.kind for i in both.items) == ["fact", "turn"]
    MemoryInjector(history).record_injection(both, "m-1", "ana")
    with history.read() as conn:
        logged = [r.memory_id for r in conn.execute(t.memory_injections.select())]
    assert logged == [next(i.memory_id for i in both.items if i.kind == "fact")]


def test_recall_cli_json(history: Store) -> None:
    res = CliRunner().invoke(
        app, ["--db", history.url, "memory", "recall", "Which instrument?", "--user", "ana", "--k", "2", "--json"]
    )
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output.strip().splitlines()[-1])
    assert len(rows) == 2 and {r["text"][:25] for r in rows} == {
        "I started learning the ce",
        "Great choice, the cello h",
    }
    assert all(r["created_utc"].startswith("2024-03-18") for r in rows) and set(rows[0]) >= {
        "message_id",
        "score",
        "speaker",
    }
    bad = CliRunner().invoke(app, ["--db", history.url, "memory", "recall", "x", "--user", "ana", "--mode", "x"])
    assert bad.exit_code != 0 and "--mode" in bad.output
    # the general MiniLM on request: the same turns found, each with its own cosine
    args = ["--db", history.url, "memory", "recall", "Which instrument?", "--user", "ana", "--k", "2", "--json"]
    general = CliRunner().invoke(app, [*args, "--encoder", "general"])
    assert general.exit_code == 0, general.output
    grows = json.loads(general.output.strip().splitlines()[-1])
    assert {r["message_id"] for r in grows} == {r["message_id"] for r in rows}
    assert [r["cosine"] for r in grows] != [r["cosine"] for r in rows]
    missing = CliRunner().invoke(app, [*args, "--encoder", "/nowhere/enc.onnx"])
    assert missing.exit_code != 0 and "/nowhere/enc.onnx" in missing.output
    # a reranker is named the same way (none ships); a missing one is a clear error, "off" is the hybrid's order
    missing = CliRunner().invoke(app, [*args, "--reranker", "/nowhere/rr.onnx"])
    assert missing.exit_code != 0 and "/nowhere/rr.onnx" in missing.output
    off = CliRunner().invoke(app, [*args, "--reranker", "off"])
    assert [r["message_id"] for r in json.loads(off.output.strip().splitlines()[-1])] == [r["message_id"] for r in rows]


def test_proxy_recalls_earlier_turns_for_that_user_only(history: Store, tmp_path: Path) -> None:
    from afterword.serve import create_app
    from afterword.serve.stub import create_stub_app
    from test_proxy import serve  # a real uvicorn server on a free loopback port

    with serve(create_stub_app()) as stub:
        proxy = create_app(
            history.url,
            stub.url,
            require_key=False,
            memory=True,
            spool_path=tmp_path / "sp",
            memory_config={"recall_turns": 2},
            memory_timeout_s=30,
        )
        with serve(proxy) as p:
            client = openai.OpenAI(base_url=p.url + "/v1", api_key="k", max_retries=0, timeout=60)
            msgs = [{"role": "user", "content": "What was the name of my dog who had knee surgery?"}]
            ana = client.chat.completions.create(model="echo-system", messages=msgs, user="ana")  # type: ignore[arg-type]
            ben = client.chat.completions.create(model="echo-system", messages=msgs, user="ben")  # type: ignore[arg-type]
    assert "Biscuit" in (ana.choices[0].message.content or "")
    assert "Biscuit" not in (ben.choices[0].message.content or "")
    assert "Pixel" in (ben.choices[0].message.content or "")
