"""Capture through the real ``openai`` SDK against a real local HTTP server.

The stub below speaks the OpenAI chat-completions protocol (JSON and SSE
streaming) on 127.0.0.1, so the SDK, httpx and the wrapper all run for real;
one test uses the real local LLM instead.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import openai
import pytest

import afterword
from afterword.capture import Spool
from afterword.store import Store


class _Handler(BaseHTTPRequestHandler):
    received: list[dict] = []

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.received.append(body)
        last = body["messages"][-1]["content"]
        reply = f"echo: {last}"
        if body.get("stream"):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            for i, piece in enumerate([reply[:6], reply[6:]]):
                delta = {"content": piece, **({"role": "assistant"} if i == 0 else {})}
                chunk = {
                    "id": "chatcmpl-stub",
                    "object": "chat.completion.chunk",
                    "created": 0,
                    "model": "stub-model",
                    "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
                }
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.write(b"data: [DONE]\n\n")
            return
        data = json.dumps(
            {
                "id": "chatcmpl-stub",
                "object": "chat.completion",
                "created": 0,
                "model": "stub-model",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15},
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture(scope="module")
def stub_url() -> Iterator[str]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def client(stub_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=stub_url, api_key="test", max_retries=0)


@pytest.fixture
def aclient(stub_url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=stub_url, api_key="test", max_retries=0)


Q1 = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Grams in a cup of flour?"}]


def only_conversation(store: Store):
    ids = store.conversation_ids()
    assert len(ids) == 1
    return store.get_conversation(ids[0])


def test_sync_call_is_logged_with_ids(client: openai.OpenAI, store: Store) -> None:
    wc = afterword.wrap(client, store=store, user_id="marco", session_id="s-1")
    resp = wc.chat.completions.create(model="stub-model", messages=Q1)
    assert resp.choices[0].message.content == "echo: Grams in a cup of flour?"
    mid = resp.afterword_message_id
    assert isinstance(mid, str) and len(mid) == 24
    wc.flush()
    c = only_conversation(store)
    assert (c.user_id, c.external_id, c.source) == ("marco", "s-1", "sdk")
    assert [m.role for m in c.messages] == ["system", "user", "assistant"]
    a = c.messages[-1]
    assert a.id == mid and a.content == resp.choices[0].message.content
    assert (a.model, a.prompt_tokens, a.completion_tokens) == ("stub-model", 11, 4)
    assert a.latency_ms is not None and a.latency_ms > 0
    assert wc.models is client.models  # everything else passes through


def test_resent_history_dedupes_and_feedback_works(client: openai.OpenAI, store: Store) -> None:
    wc = afterword.wrap(client, store=store, user_id="marco", session_id="s-2")
    r1 = wc.chat.completions.create(model="stub-model", messages=Q1)
    history = [*Q1, {"role": "assistant", "content": r1.choices[0].message.content}]
    r2 = wc.chat.completions.create(
        model="stub-model", messages=[*history, {"role": "user", "content": "That's wrong, it's about 125 g."}]
    )
    # feedback right away: the call may still be on its way to the store
    fid = afterword.feedback(r1.afterword_message_id, thumbs=-1, correction="About 120-125 g.", store=store)
    afterword.feedback(r2.afterword_message_id, rating=5, store=store)
    c = only_conversation(store)
    assert len(c.messages) == 5  # system, user, assistant, user, assistant: nothing twice
    assert c.messages[2].id == r1.afterword_message_id and c.messages[4].id == r2.afterword_message_id
    fb = {f.kind: f for f in store.feedback_for_messages([r1.afterword_message_id, r2.afterword_message_id])}
    assert fb["correction"].correction == "About 120-125 g." and fb["correction"].thumbs == -1
    assert fb["rating"].rating == 5 and fb["rating"].user_id == "marco"
    assert isinstance(fid, str)
    with pytest.raises(ValueError):
        afterword.feedback(r1.afterword_message_id, store=store)


def test_per_call_ids_override_and_are_not_forwarded(client: openai.OpenAI, store: Store) -> None:
    wc = afterword.wrap(client, store=store, user_id="default-user")
    _Handler.received.clear()
    wc.chat.completions.create(
        model="stub-model", messages=Q1, afterword={"user_id": "leo", "session_id": "homework-3"}
    )
    wc.flush()
    assert "afterword" not in _Handler.received[-1]
    c = only_conversation(store)
    assert (c.user_id, c.external_id) == ("leo", "homework-3")


def test_sync_stream(client: openai.OpenAI, store: Store) -> None:
    wc = afterword.wrap(client, store=store, user_id="u", session_id="st")
    stream = wc.chat.completions.create(model="stub-model", messages=Q1, stream=True)
    text = "".join(ch.choices[0].delta.content or "" for ch in stream)
    assert text == "echo: Grams in a cup of flour?"
    assert stream.afterword_message_id
    wc.flush()
    a = only_conversation(store).messages[-1]
    assert (a.id, a.content, a.model) == (stream.afterword_message_id, text, "stub-model")


def test_async_client_plain_and_streaming(aclient: openai.AsyncOpenAI, store: Store) -> None:
    wc = afterword.wrap(aclient, store=store, user_id="amira", session_id="as-1")

    async def go() -> tuple[str, str, str]:
        resp = await wc.chat.completions.create(model="stub-model", messages=Q1)
        history = [*Q1, {"role": "assistant", "content": resp.choices[0].message.content}]
        stream = await wc.chat.completions.create(
            model="stub-model", messages=[*history, {"role": "user", "content": "and sugar?"}], stream=True
        )
        parts = [ch.choices[0].delta.content or "" async for ch in stream]
        return resp.afterword_message_id, stream.afterword_message_id, "".join(parts)

    mid1, mid2, text = asyncio.run(go())
    assert text == "echo: and sugar?"
    wc.flush()
    c = only_conversation(store)
    assert [m.id for m in c.messages if m.role == "assistant"] == [mid1, mid2]
    assert c.messages[-1].content == text and c.user_id == "amira"


def _broken_store(kind: str, tmp_path: Path) -> Store:
    if kind == "sqlite-missing-dir":
        return Store(str(tmp_path / "no-such-dir" / "x.db"), migrate=False)
    return Store("postgresql://nobody@127.0.0.1:1/afterword?connect_timeout=2", migrate=False)


@pytest.mark.parametrize("kind", ["sqlite-missing-dir", "postgresql-closed-port"])
def test_broken_store_never_breaks_the_call_and_the_spool_replays(
    client: openai.OpenAI, store: Store, tmp_path: Path, kind: str
) -> None:
    spool_path = tmp_path / "spool" / "calls.jsonl"
    bad = afterword.wrap(
        client, store=_broken_store(kind, tmp_path), user_id="nina", session_id="t-1", spool=Spool(spool_path)
    )
    r1 = bad.chat.completions.create(model="stub-model", messages=Q1)
    assert r1.choices[0].message.content.startswith("echo:")  # the app's call went through
    stream = bad.chat.completions.create(model="stub-model", messages=Q1, stream=True)
    assert "".join(ch.choices[0].delta.content or "" for ch in stream).startswith("echo:")
    bad.flush()
    assert bad.afterword_logger.spooled == 2 and Spool(spool_path).pending() == 2

    # The store is back: the next successful write replays the spool, and nothing is duplicated.
    good = afterword.wrap(client, store=store, user_id="nina", session_id="t-1", spool=Spool(spool_path))
    history = [*Q1, {"role": "assistant", "content": r1.choices[0].message.content}]
    r2 = good.chat.completions.create(model="stub-model", messages=[*history, {"role": "user", "content": "ok"}])
    good.flush()
    assert not spool_path.exists() and Spool(spool_path).pending() == 0
    c = only_conversation(store)
    assert [m.role for m in c.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert c.messages[2].id == r1.afterword_message_id and c.messages[4].id == r2.afterword_message_id
    assert store.stats()["messages"] == 5
    assert Spool(spool_path).replay(store) == 0


def test_spool_replay_twice_duplicates_nothing(store: Store, tmp_path: Path) -> None:
    from afterword.records import Conversation, Message

    sp = Spool(tmp_path / "s.jsonl")
    conv = Conversation(
        user_id="x",
        external_id="e",
        messages=[Message(role="user", content="q"), Message(role="assistant", content="a")],
    )
    sp.append(conv)
    sp.append(conv)
    with open(sp.path, "a", encoding="utf-8") as fh:
        fh.write('{"messages": [{"role": "us')  # a torn last line from a crash mid-append
    assert sp.replay(store) == 2
    sp.append(conv)
    assert sp.replay(store) == 1
    s = store.stats()
    assert (s["conversations"], s["messages"]) == (1, 2)


@pytest.mark.llm
def test_wrap_the_real_local_model(llm, store: Store) -> None:
    wc = afterword.wrap(
        openai.OpenAI(
            base_url=llm.base_url.rstrip("/") + ("" if llm.base_url.rstrip("/").endswith("/v1") else "/v1"), api_key="x"
        ),
        store=store,
        user_id="leo",
        session_id="real",
    )
    resp = wc.chat.completions.create(
        model=llm.model, messages=[{"role": "user", "content": "Say hello."}], max_tokens=16, temperature=0
    )
    afterword.feedback(resp.afterword_message_id, thumbs=1, store=store)
    c = only_conversation(store)
    assert c.messages[-1].id == resp.afterword_message_id
    assert c.messages[-1].content == (resp.choices[0].message.content or "")
    assert c.messages[-1].completion_tokens and c.messages[-1].completion_tokens <= 16
    assert store.feedback_for_messages([resp.afterword_message_id])[0].thumbs == 1


def test_spool_replays_a_leftover_from_a_crashed_replay_first(store, tmp_path):
    from afterword.capture.spool import Spool
    from afterword.records import Conversation, Message

    spool = Spool(tmp_path / "s.jsonl")

    def conv(i: int) -> Conversation:
        return Conversation(user_id="u", external_id=f"s{i}", messages=[Message(role="user", content=f"hi {i}")])

    spool.append(conv(1))
    spool.path.rename(spool.path.with_suffix(".replaying"))  # as if a replay died half-way
    assert spool.replay(store) == 1  # the leftover alone, nothing newer spooled yet
    spool.append(conv(2))
    spool.path.rename(spool.path.with_suffix(".replaying"))
    spool.append(conv(3))
    assert spool.replay(store) == 2
    assert store.stats()["conversations"] == 3
    assert not spool.path.exists() and not spool.path.with_suffix(".replaying").exists()
