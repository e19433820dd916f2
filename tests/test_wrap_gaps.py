"""Gaps in ``afterword.wrap``: drop-in streams, streamed tool calls, a non-blocking memory record,
a store that comes back, and the other call paths of the SDK.

Real parts only: the real ``openai`` SDK over real HTTP to a local scripted server, and real
SQLite files. The server below (unlike ``tests/_openai_stub.py``) also streams, streams tool
calls, and interleaves ``n=2`` choices, as OpenAI does.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import openai
import pytest
from pydantic import BaseModel

import afterword
from afterword.capture import CaptureLogger, Spool
from afterword.store import Store

wrap_mod = importlib.import_module("afterword.capture.wrap")  # the package re-exports a function by that name
TOOL_CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}


def _chunk(choices: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "stub-model", "choices": choices}


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        last = body["messages"][-1]["content"]
        if body.get("stream"):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            for ch in self._chunks(body, last):
                self.wfile.write(f"data: {json.dumps(ch)}\n\n".encode())
            self.wfile.write(b"data: [DONE]\n\n")
            return
        if body.get("response_format"):
            content = json.dumps({"city": "Paris", "celsius": 21})
        else:
            content = f"echo: {last}"
        data = json.dumps(
            {
                "id": "c1",
                "object": "chat.completion",
                "created": 0,
                "model": "stub-model",
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
                ],
                "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    @staticmethod
    def _chunks(body: dict[str, Any], last: str) -> list[dict[str, Any]]:
        if last.startswith("TOOL"):  # a tool call split across chunks, as OpenAI streams it
            fn0 = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_", "arguments": ""}}
            parts = [
                {"role": "assistant", "content": None, "tool_calls": [fn0]},
                {"tool_calls": [{"index": 0, "function": {"name": "weather", "arguments": '{"city": '}}]},
                {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]},
            ]
            out = [_chunk([{"index": 0, "delta": d, "finish_reason": None}]) for d in parts]
            return [*out, _chunk([{"index": 0, "delta": {}, "finish_reason": "tool_calls"}])]
        if body.get("n", 1) == 2:  # choices interleaved chunk by chunk
            out = []
            for piece0, piece1 in [("zero ", "one "), ("first", "second")]:
                out.append(_chunk([{"index": 0, "delta": {"content": piece0}, "finish_reason": None}]))
                out.append(_chunk([{"index": 1, "delta": {"content": piece1}, "finish_reason": None}]))
            return out
        reply = f"echo: {last}"
        return [_chunk([{"index": 0, "delta": {"content": p}, "finish_reason": None}]) for p in (reply[:6], reply[6:])]


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


def _assistants(store: Store) -> list[Any]:
    out = []
    for cid in store.conversation_ids():
        out += [m for m in store.get_conversation(cid).messages if m.role == "assistant"]
    return out


def _ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


# -- 1. the wrapped stream is a drop-in iterator --------------------------------------


def test_next_on_a_wrapped_stream_works_and_logs_once(client: openai.OpenAI, store: Store) -> None:
    wc = afterword.wrap(client, store=store, user_id="u")
    s = wc.chat.completions.create(model="stub-model", messages=_ask("hello next"), stream=True)
    first = next(s)
    assert first.choices[0].delta.content == "echo: "
    rest = [ch.choices[0].delta.content for ch in s]  # next() then a loop, as with the SDK's own stream
    assert rest == ["hello next"]
    with pytest.raises(StopIteration):
        next(s)
    assert s.afterword_message_id
    wc.flush()
    (a,) = _assistants(store)
    assert (a.id, a.content) == (s.afterword_message_id, "echo: hello next")

    s2 = wc.chat.completions.create(model="stub-model", messages=_ask("only next"), stream=True)
    texts = []
    with pytest.raises(StopIteration):
        while True:
            texts.append(next(s2).choices[0].delta.content)
    assert "".join(texts) == "echo: only next" and s2.afterword_message_id
    wc.flush()
    assert sorted(m.content for m in _assistants(store)) == ["echo: hello next", "echo: only next"]


def test_anext_on_a_wrapped_async_stream(aclient: openai.AsyncOpenAI, store: Store) -> None:
    wc = afterword.wrap(aclient, store=store, user_id="u")

    async def go() -> tuple[list[str], str | None]:
        s = await wc.chat.completions.create(model="stub-model", messages=_ask("hello anext"), stream=True)
        got = [(await anext(s)).choices[0].delta.content]
        got += [ch.choices[0].delta.content async for ch in s]
        with pytest.raises(StopAsyncIteration):
            await anext(s)
        return got, s.afterword_message_id

    parts, mid = asyncio.run(go())
    assert parts == ["echo: ", "hello anext"] and mid
    wc.flush()
    (a,) = _assistants(store)
    assert (a.id, a.content) == (mid, "echo: hello anext")


# -- 2. streamed tool calls, and n=2 ----------------------------------------------------


def test_streamed_tool_calls_are_stored(client: openai.OpenAI, aclient: openai.AsyncOpenAI, store: Store) -> None:
    wc = afterword.wrap(client, store=store, user_id="u", session_id="sync")
    s = wc.chat.completions.create(model="stub-model", messages=_ask("TOOL weather"), stream=True)
    assert len(list(s)) == 4
    awc = afterword.wrap(aclient, store=store, user_id="u", session_id="async")

    async def go() -> str | None:
        s = await awc.chat.completions.create(model="stub-model", messages=_ask("TOOL weather"), stream=True)
        async for _ in s:
            pass
        return s.afterword_message_id

    amid = asyncio.run(go())
    wc.flush()
    awc.flush()
    got = {m.id: m for m in _assistants(store)}
    assert set(got) == {s.afterword_message_id, amid}
    for m in got.values():
        assert m.tool_calls == [TOOL_CALL] and m.content == "" and m.model == "stub-model"


def test_streamed_n2_stores_choice_zero_only(client: openai.OpenAI, store: Store) -> None:
    wc = afterword.wrap(client, store=store, user_id="u")
    s = wc.chat.completions.create(model="stub-model", messages=_ask("two please"), stream=True, n=2)
    assert len(list(s)) == 4
    wc.flush()
    (a,) = _assistants(store)
    assert (a.id, a.content) == (s.afterword_message_id, "zero first")


# -- 3. the memory-injection record never blocks the call -----------------------------

_LOCKER = """
import sqlite3, sys
c = sqlite3.connect(sys.argv[1], isolation_level=None)
c.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
c.execute("ROLLBACK")
"""


def test_memory_record_does_not_block_the_call_on_a_locked_store(
    client: openai.OpenAI, store: Store, tmp_path: Path
) -> None:
    pytest.importorskip("afterword.memory")
    from afterword.memory import build_memories, list_memories
    from afterword.records import Conversation, Feedback, Message

    conv = store.add_conversation(
        Conversation(
            user_id="u1",
            external_id="s0",
            source="test",
            messages=[
                Message(role="user", content="What is the capital of Australia?"),
                Message(role="assistant", content="Sydney."),
            ],
        )
    )
    store.add_feedback(Feedback(kind="correction", message_id=conv.messages[1].id, correction="Canberra"))
    build_memories(store)
    (lesson,) = list_memories(store, kind="lesson")
    wc = afterword.wrap(client, store=store, user_id="u1", memory=True)
    q = _ask("Which city is the capital of Australia?")
    wc.chat.completions.create(model="stub-model", messages=_ask("warm up"))  # loads the embedder
    wc.flush()

    # Another process holds the write lock (in-process locks are invisible to SQLite: POSIX locks are per process).
    locker = subprocess.Popen(
        [sys.executable, "-c", _LOCKER, str(tmp_path / "afterword.db")], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert locker.stdout is not None and locker.stdout.readline().strip() == b"locked"
        t0 = time.monotonic()
        resp = wc.chat.completions.create(model="stub-model", messages=q)
        took = time.monotonic() - t0
        time.sleep(0.5)  # the background writer is now waiting on the lock, not the app
    finally:
        locker.communicate(b"release\n", timeout=30)
    assert took < 5, f"the app's call waited {took:.1f}s on the store"
    mid = resp.afterword_message_id
    assert isinstance(mid, str) and len(mid) == 24
    wc.flush()
    with store.engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT memory_id, message_id, user_id FROM memory_injections").fetchall()
    assert [tuple(r) for r in rows] == [(lesson.id, mid, "u1")]
    (a,) = [m for m in _assistants(store) if m.id == mid]
    assert a.content == "echo: Which city is the capital of Australia?"


# -- 4. a store that was down when wrap() was made is retried -------------------------


def test_store_down_at_wrap_is_retried_and_the_spool_replayed(
    client: openai.OpenAI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "later" / "afterword.db"  # its folder does not exist yet: the store cannot open
    monkeypatch.setenv("AFTERWORD_DB", str(db))
    monkeypatch.setattr(wrap_mod, "_default_store", None)
    monkeypatch.setattr(CaptureLogger, "store_retry_s", 0.2)
    spool = Spool(tmp_path / "spool" / "calls.jsonl")
    wc = afterword.wrap(client, user_id="nina", session_id="t", spool=spool)
    assert wc.afterword_logger.store is None
    r1 = wc.chat.completions.create(model="stub-model", messages=_ask("while down"))
    wc.flush()
    assert wc.afterword_logger.spooled == 1 and spool.pending() == 1

    db.parent.mkdir()  # the store is reachable now; no further call is made
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (spool.path.exists() or wc.afterword_logger.store is None):
        time.sleep(0.1)
    assert wc.afterword_logger.store is not None and not spool.path.exists()
    r2 = wc.chat.completions.create(model="stub-model", messages=_ask("after"))
    wc.flush()
    assert wc.afterword_logger.written == 1
    check = Store(str(db))
    try:
        assert {m.id for m in _assistants(check)} == {r1.afterword_message_id, r2.afterword_message_id}
    finally:
        check.close()


# -- 5. other call paths ------------------------------------------------------------


def test_with_options_and_copy_stay_captured(client: openai.OpenAI, store: Store) -> None:
    wc = afterword.wrap(client, store=store, user_id="u")
    w2 = wc.with_options(timeout=10)
    assert isinstance(w2, wrap_mod.Wrapped) and w2.timeout == 10
    r1 = w2.chat.completions.create(model="stub-model", messages=_ask("with options"))
    r2 = wc.copy(max_retries=1).chat.completions.create(model="stub-model", messages=_ask("copy"))
    wc.flush()
    assert {m.id for m in _assistants(store)} == {r1.afterword_message_id, r2.afterword_message_id}


class Weather(BaseModel):
    city: str
    celsius: int


def test_parse_is_logged(client: openai.OpenAI, aclient: openai.AsyncOpenAI, store: Store) -> None:
    wc = afterword.wrap(client, store=store, user_id="u", session_id="a")
    r = wc.chat.completions.parse(model="stub-model", messages=_ask("weather?"), response_format=Weather)
    assert r.choices[0].message.parsed == Weather(city="Paris", celsius=21)
    awc = afterword.wrap(aclient, store=store, user_id="u", session_id="b")

    async def go() -> Any:
        return await awc.chat.completions.parse(model="stub-model", messages=_ask("weather?"), response_format=Weather)

    ar = asyncio.run(go())
    wc.flush()
    awc.flush()
    got = {m.id: m for m in _assistants(store)}
    assert set(got) == {r.afterword_message_id, ar.afterword_message_id}
    assert all(json.loads(m.content) == {"city": "Paris", "celsius": 21} for m in got.values())
    assert got[r.afterword_message_id].prompt_tokens == 7


def test_with_raw_response_is_logged(client: openai.OpenAI, store: Store) -> None:
    wc = afterword.wrap(client, store=store, user_id="u")
    raw = wc.chat.completions.with_raw_response.create(model="stub-model", messages=_ask("raw"))
    assert raw.status_code == 200
    parsed = raw.parse()
    assert parsed.choices[0].message.content == "echo: raw"
    wc.flush()
    (a,) = _assistants(store)
    assert a.id == parsed.afterword_message_id == raw.afterword_message_id
    assert a.content == "echo: raw"
