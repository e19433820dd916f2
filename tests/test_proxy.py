"""The OpenAI-compatible proxy, with real parts.

The client is the official ``openai`` SDK (raw ``httpx`` where a test needs
bytes the SDK would hide), the proxy is a real uvicorn server on 127.0.0.1,
and the upstream is either the stub upstream (``afterword.serve.stub``, for
status codes, timings and what reached the upstream) or, in the ``llm``
tests, llama-cpp-python's server with SmolLM2.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import sqlalchemy as sa
import uvicorn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from afterword.errors import StoreError
from afterword.records import Memory, MemoryKind
from afterword.serve import create_app, create_key, list_keys, revoke_key, verify_key
from afterword.serve.keys import KeyCache, hash_key
from afterword.serve.stub import create_stub_app
from afterword.store import Store
from afterword.store import schema as t

ERROR_KEYS = {"message", "type", "code"}


# -- real servers on loopback ---------------------------------------------------------


class Running:
    def __init__(self, app: Any, server: uvicorn.Server, thread: threading.Thread, port: int) -> None:
        self.app = app
        self.server = server
        self.thread = thread
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    @property
    def state(self) -> Any:
        return self.app.state.afterword

    def flush(self) -> None:
        self.state.logger.flush()


@contextmanager
def serve(app: Any) -> Iterator[Running]:
    """Run ``app`` under a real uvicorn server on a random loopback port, in a thread."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("server did not start")
        time.sleep(0.01)
    try:
        yield Running(app, server, thread, port)
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


@pytest.fixture
def stub() -> Iterator[Running]:
    with serve(create_stub_app()) as s:
        yield s


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "proxy.db")


@pytest.fixture
def proxy(stub: Running, db: str, tmp_path: Path) -> Iterator[Running]:
    app = create_app(db, stub.url + "/v1", require_key=False, memory=False, spool_path=tmp_path / "spool.jsonl")
    with serve(app) as p:
        yield p


def sdk(p: Running, key: str = "sk-client-key", **kw: Any) -> openai.OpenAI:
    kw.setdefault("timeout", 30)
    return openai.OpenAI(base_url=p.url + "/v1", api_key=key, max_retries=0, **kw)


def assistant_rows(db: str) -> list[Any]:
    s = Store(db)
    try:
        with s.read() as conn:
            return list(
                conn.execute(
                    sa.select(t.messages, t.conversations.c.external_id, t.conversations.c.source)
                    .join(t.conversations, t.conversations.c.id == t.messages.c.conversation_id)
                    .where(t.messages.c.role == "assistant")
                )
            )
    finally:
        s.close()


def is_error_shape(body: Any, code: str | None = None) -> bool:
    ok = isinstance(body, dict) and set(body) == {"error"} and set(body["error"]) == ERROR_KEYS
    ok = ok and all(isinstance(body["error"][k], str) for k in ERROR_KEYS)
    return ok and (code is None or body["error"]["code"] == code)


# -- forwarding and logging ---------------------------------------------------------------


def test_chat_roundtrip_logs_with_user_session_and_ids(proxy: Running, stub: Running, db: str) -> None:
    client = sdk(proxy)
    raw = client.chat.completions.with_raw_response.create(
        model="stub",
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}],
        extra_headers={"X-Afterword-User": "alice", "X-Afterword-Session": "s-1"},
    )
    resp = raw.parse()
    assert resp.choices[0].message.content == "echo: hello there"
    mid = raw.headers["x-afterword-message-id"]
    assert resp.model_extra["afterword_message_id"] == mid
    assert raw.headers["x-ratelimit-remaining-requests"] == "99"  # upstream headers pass through
    # the upstream got the proxy's own (absent) key, never the client's
    assert "sk-client-key" not in json.dumps(stub.app.state.requests[-1]["headers"])

    # the `user` field works too when no header is given
    resp2 = client.chat.completions.create(model="stub", messages=[{"role": "user", "content": "hi"}], user="bob")
    proxy.flush()
    rows = {r.id: r for r in assistant_rows(db)}
    assert rows[mid].user_id == "alice" and rows[mid].external_id == "s-1" and rows[mid].source == "proxy"
    assert rows[mid].content == "echo: hello there" and rows[mid].completion_tokens == 3
    assert rows[resp2.model_extra["afterword_message_id"]].user_id == "bob"


def test_streaming_is_relayed_and_logged(proxy: Running, db: str) -> None:
    client = sdk(proxy)
    stream = client.chat.completions.create(
        model="stub",
        messages=[{"role": "user", "content": "stream me five words"}],
        stream=True,
        extra_headers={"X-Afterword-User": "carol", "X-Afterword-Session": "s-2"},
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "echo: stream me five words"

    # raw SSE: every upstream event is there, plus the id as a comment before [DONE]
    with httpx.stream(
        "POST",
        proxy.url + "/v1/chat/completions",
        json={"model": "stub", "stream": True, "messages": [{"role": "user", "content": "raw one"}]},
        headers={"X-Afterword-User": "carol"},
    ) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in r.iter_lines() if ln]
    comment = [ln for ln in lines if ln.startswith(": afterword_message_id=")]
    assert len(comment) == 1 and lines[-1] == "data: [DONE]" and lines[-2] == comment[0]
    raw_mid = comment[0].split("=", 1)[1]
    proxy.flush()
    rows = {r.content: r for r in assistant_rows(db)}
    assert rows["echo: stream me five words"].user_id == "carol"
    assert rows["echo: stream me five words"].external_id == "s-2"
    assert rows["echo: raw one"].id == raw_mid and rows["echo: raw one"].completion_tokens == 3


def test_a_client_that_leaves_mid_stream_gets_a_partial_log(proxy: Running, db: str) -> None:
    body = {"model": "drip-100", "stream": True, "messages": [{"role": "user", "content": "one two three four five"}]}
    with httpx.stream("POST", proxy.url + "/v1/chat/completions", json=body, headers={"X-Afterword-User": "eve"}) as r:
        next(r.iter_lines())  # the first event, then hang up
    deadline = time.monotonic() + 10
    rows: list[Any] = []
    while not rows and time.monotonic() < deadline:
        proxy.flush()
        rows = [r for r in assistant_rows(db) if r.user_id == "eve"]
        time.sleep(0.1)
    assert len(rows) == 1 and rows[0].metadata_json == {"incomplete": True}
    assert "echo: one two three four five".startswith(rows[0].content)


def test_resent_history_dedupes(proxy: Running, db: str) -> None:
    client = sdk(proxy)
    msgs = [{"role": "user", "content": "first"}]
    r1 = client.chat.completions.create(model="stub", messages=msgs, user="dan")
    msgs += [{"role": "assistant", "content": r1.choices[0].message.content}, {"role": "user", "content": "second"}]
    client.chat.completions.create(model="stub", messages=msgs, user="dan")
    client.chat.completions.create(model="stub", messages=msgs, user="dan")  # a retry: nothing new
    proxy.flush()
    s = Store(db)
    assert s.stats()["messages"] == 4 and s.stats()["conversations"] == 1
    s.close()


def test_models_pass_through(proxy: Running) -> None:
    assert [m.id for m in sdk(proxy).models.list()] == ["stub"]


# -- upstream errors and the error shape ------------------------------------------------------


@pytest.mark.parametrize("status", [400, 401, 429, 500])
@pytest.mark.parametrize("stream", [False, True])
def test_upstream_errors_pass_through_unchanged(proxy: Running, stub: Running, status: int, stream: bool) -> None:
    body = {"model": f"status-{status}", "messages": [{"role": "user", "content": "x"}], "stream": stream}
    direct = httpx.post(stub.url + "/v1/chat/completions", json=body)
    via = httpx.post(proxy.url + "/v1/chat/completions", json=body)
    assert via.status_code == direct.status_code == status
    assert via.content == direct.content
    assert via.headers["retry-after"] == "1" and via.headers["x-stub-error"] == str(status)

    with pytest.raises(openai.APIStatusError) as exc:
        sdk(proxy).chat.completions.create(model=f"status-{status}", messages=[{"role": "user", "content": "x"}])
    assert exc.value.status_code == status
    assert exc.value.body == direct.json()["error"]


def test_unreachable_upstream_is_502_in_the_error_shape(db: str, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]  # closed again at once: nothing listens there
    app = create_app(db, f"http://127.0.0.1:{dead}/v1", require_key=False, memory=False, spool_path=tmp_path / "sp")
    with serve(app) as p:
        r = httpx.post(
            p.url + "/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "x"}]}
        )
        assert r.status_code == 502 and r.headers["content-type"] == "application/json"
        assert is_error_shape(r.json(), "upstream_unreachable") and r.json()["error"]["type"] == "upstream_error"
        with pytest.raises(openai.APIStatusError) as exc:
            sdk(p).chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], stream=True)
        assert exc.value.status_code == 502
        assert is_error_shape(httpx.get(p.url + "/v1/models").json(), "upstream_unreachable")
        assert is_error_shape(httpx.get(p.url + "/nope").json(), "not_found")
        assert is_error_shape(httpx.get(p.url + "/v1/chat/completions").json(), "method_not_allowed")


# -- bad input -----------------------------------------------------------------------------


def _post(p: Running, content: bytes, **headers: str) -> httpx.Response:
    return httpx.post(p.url + "/v1/chat/completions", content=content, headers=headers, timeout=10)


@pytest.fixture
def small_proxy(stub: Running, db: str, tmp_path: Path) -> Iterator[Running]:
    app = create_app(
        db, stub.url, require_key=False, memory=False, spool_path=tmp_path / "sp", max_body_bytes=64 * 1024
    )
    with serve(app) as p:
        yield p


def test_bad_input_gets_clear_400s(small_proxy: Running) -> None:
    p = small_proxy
    cases = {
        b"\xff\xfe not utf-8": "invalid_utf8",
        b'{"messages": [': "invalid_json",
        b"[" * 200_00 + b"]" * 200_00: "json_too_deep",
        b'{"messages": [{"role": "user", "content": ' + b"[" * 100 + b"]" * 100 + b"}]}": "json_too_deep",
        b'{"messages": [{"role": "user", "content": NaN}]}': "invalid_json",
        b'["a list"]': "invalid_request",
        b'{"model": "stub"}': "invalid_messages",
        b'{"messages": ["not an object"]}': "invalid_messages",
        b'{"messages": [{"role": "user", "content": "\\ud800"}]}': "invalid_unicode",
    }
    for content, code in cases.items():
        r = _post(p, content)
        assert r.status_code == 400, (content[:40], r.text)
        assert is_error_shape(r.json(), code), (content[:40], r.text)
    r = _post(p, b'{"messages": [{"role": "user", "content": "x"}]}', **{"X-Afterword-User": "u" * 300})
    assert r.status_code == 400 and is_error_shape(r.json(), "user_too_long")


def test_oversized_bodies_get_413(small_proxy: Running) -> None:
    big = json.dumps({"messages": [{"role": "user", "content": "x" * 100_000}]}).encode()
    r = _post(small_proxy, big)
    assert r.status_code == 413 and is_error_shape(r.json(), "body_too_large")

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit holds while reading
        for _ in range(100):
            yield b" " * 4096

    r = httpx.post(small_proxy.url + "/v1/chat/completions", content=chunks(), timeout=10)
    assert r.status_code == 413 and is_error_shape(r.json(), "body_too_large")


def test_a_body_that_never_arrives_gets_408_not_a_hang(stub: Running, db: str, tmp_path: Path) -> None:
    app = create_app(db, stub.url, require_key=False, memory=False, spool_path=tmp_path / "sp", body_timeout_s=0.5)
    with serve(app) as p, socket.create_connection(("127.0.0.1", p.port), timeout=10) as sock:
        head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        sock.sendall(head + b"Content-Length: 1000\r\n\r\n" + b'{"messages": [')
        t0 = time.monotonic()
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
        assert time.monotonic() - t0 < 5
    status, _, rest = reply.partition(b"\r\n")
    assert b" 408 " in status and is_error_shape(json.loads(rest.split(b"\r\n\r\n", 1)[1]), "body_timeout")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=st.one_of(
        st.binary(max_size=300),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=20),
            lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
            max_leaves=30,
        ).map(lambda v: json.dumps({"messages": v}).encode()),
    )
)
def test_fuzzed_bodies_never_500(small_proxy: Running, body: bytes) -> None:
    t0 = time.monotonic()
    r = _post(small_proxy, body)
    assert time.monotonic() - t0 < 5
    assert r.status_code < 500, r.text
    if r.status_code >= 400:
        assert is_error_shape(r.json())


# -- auth --------------------------------------------------------------------------------------


def test_keys_are_hashed_verified_and_revoked(store: Store) -> None:
    key = create_key(store, "app", "proxy")
    ui_key = create_key(store, "ui", "ui")
    all_key = create_key(store, "admin", "all")
    assert key.startswith("aw-") and len(key) > 40
    assert verify_key(store, key, "proxy") and not verify_key(store, key, "ui")
    assert verify_key(store, ui_key, "ui") and not verify_key(store, ui_key, "proxy")
    assert verify_key(store, all_key, "proxy") and verify_key(store, all_key, "ui")
    assert not verify_key(store, key + "x", "proxy") and not verify_key(store, "", "proxy")
    path = Path(store.url.removeprefix("sqlite:///"))
    raw = b"".join(f.read_bytes() for f in path.parent.glob(path.name + "*"))  # the file and its WAL
    assert key.encode() not in raw and hash_key(key).encode() in raw  # only the hash is at rest
    listed = {k.name: k for k in list_keys(store)}
    assert set(listed) == {"app", "ui", "admin"} and listed["app"].active
    assert revoke_key(store, listed["app"].id).revoked_utc is not None
    assert not verify_key(store, key, "proxy")
    assert [k.name for k in list_keys(store, include_revoked=False)] == ["ui", "admin"]


def test_proxy_requires_a_valid_key(stub: Running, db: str, tmp_path: Path) -> None:
    s = Store(db)
    key = create_key(s, "app")
    ui_key = create_key(s, "ui", "ui")
    app = create_app(db, stub.url, memory=False, spool_path=tmp_path / "sp", key_cache_ttl_s=0)  # keys required
    with serve(app) as p:
        msgs = [{"role": "user", "content": "hi"}]
        for bad in ("sk-not-ours", "aw-forged", ui_key):
            with pytest.raises(openai.AuthenticationError) as exc:
                sdk(p, bad).chat.completions.create(model="stub", messages=msgs)
            assert exc.value.body["code"] == "invalid_api_key"
        r = httpx.post(p.url + "/v1/chat/completions", json={"model": "stub", "messages": msgs})
        assert r.status_code == 401 and is_error_shape(r.json(), "missing_api_key")
        assert r.headers["www-authenticate"] == "Bearer"
        assert sdk(p, key).chat.completions.create(model="stub", messages=msgs).choices[0].message.content == "echo: hi"
        assert sdk(p, key).models.list().data[0].id == "stub"
        assert "aw-" not in json.dumps(stub.app.state.requests[-1]["headers"])  # the key stays with the proxy
        revoke_key(s, list_keys(s)[0].id)
        with pytest.raises(openai.AuthenticationError):
            sdk(p, key).chat.completions.create(model="stub", messages=msgs)
    s.close()


def test_key_cache_serves_known_keys_while_the_store_is_down(store: Store) -> None:
    key = create_key(store, "app")
    cache = KeyCache(store, ttl_s=0)
    assert cache.check(key) and not cache.check("aw-unknown")
    cache.store = Store(str(Path(store.url.removeprefix("sqlite:///")).parent / "missing" / "x.db"), migrate=False)
    assert cache.check(key)  # stale but known-good: accepted
    with pytest.raises(StoreError):
        cache.check("aw-never-seen")


def test_upstream_key_is_server_side(stub: Running, db: str, tmp_path: Path) -> None:
    app = create_app(
        db, stub.url, require_key=False, memory=False, spool_path=tmp_path / "sp", upstream_key="up-secret"
    )
    with serve(app) as p:
        sdk(p, "sk-client").chat.completions.create(model="stub", messages=[{"role": "user", "content": "x"}])
    assert stub.app.state.requests[-1]["headers"]["authorization"] == "Bearer up-secret"


# -- the store is down: spool, then replay ----------------------------------------------------------


def test_store_down_requests_succeed_and_logs_arrive_once(stub: Running, tmp_path: Path) -> None:
    db_dir = tmp_path / "not-yet"
    db = str(db_dir / "afterword.db")  # the directory does not exist: the store cannot open
    spool = tmp_path / "spool.jsonl"
    app = create_app(
        db, stub.url, require_key=False, memory=False, spool_path=spool, store_retry_s=0.2, replay_interval_s=0.2
    )
    ids: dict[str, str] = {}
    with serve(app) as p:
        client = sdk(p)
        assert httpx.get(p.url + "/healthz").json()["store"] == "down"
        for i in range(20):
            msgs = [{"role": "user", "content": f"question {i}"}]
            if i % 2:
                with httpx.stream(
                    "POST", p.url + "/v1/chat/completions", json={"model": "s", "messages": msgs, "stream": True}
                ) as r:
                    assert r.status_code == 200
                    mid = next(ln for ln in r.iter_lines() if ln.startswith(": afterword_message_id=")).split("=")[1]
            else:
                mid = client.chat.completions.create(model="s", messages=msgs).model_extra["afterword_message_id"]
            ids[f"echo: question {i}"] = mid
        p.flush()
        assert p.state.logger.spooled == 20 and spool.exists()
        db_dir.mkdir()  # the store comes back
        deadline = time.monotonic() + 15
        while (p.state.store is None or p.state.spool.has_pending()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert p.state.store is not None and not p.state.spool.has_pending()
        # a request after recovery goes straight to the store
        client.chat.completions.create(model="s", messages=[{"role": "user", "content": "after"}])
        p.flush()
    rows = assistant_rows(db)
    got = {r.content: r.id for r in rows}
    assert len(rows) == 21 and {k: got[k] for k in ids} == ids  # every log once, under the id the client got


# -- memory injection ------------------------------------------------------------------------------------


class _Injection:
    def __init__(self, messages: list[dict[str, Any]], items: list[str]) -> None:
        self.messages = messages
        self.items = items
        self.tokens = 5 * len(items)


class RecordingInjector:
    """Injects a fixed note for one user only and records credit calls (plumbing test)."""

    def __init__(self) -> None:
        self.credited: list[tuple[str, str | None, list[str]]] = []

    def inject(self, messages: list[dict[str, Any]], user_id: str | None = None) -> _Injection:
        if user_id == "boom":
            raise RuntimeError("memory backend down")
        if user_id != "alice":
            return _Injection(messages, [])
        note = {"role": "system", "content": "<memory>alice prefers metric units</memory>"}
        return _Injection([note, *messages], ["mem-1"])

    def record_injection(self, injection: _Injection, message_id: str, user_id: str | None = None) -> None:
        self.credited.append((message_id, user_id, injection.items))


def test_injection_is_forwarded_logged_as_sent_and_credited(stub: Running, db: str, tmp_path: Path) -> None:
    inj = RecordingInjector()
    app = create_app(db, stub.url, require_key=False, memory=inj, spool_path=tmp_path / "sp")
    with serve(app) as p:
        client = sdk(p)
        msgs = [{"role": "user", "content": "how far is it?"}]
        r_alice = client.chat.completions.create(model="echo-system", messages=msgs, user="alice")
        r_bob = client.chat.completions.create(model="echo-system", messages=msgs, user="bob")
        r_boom = client.chat.completions.create(model="echo-system", messages=msgs, user="boom")
        p.flush()
        p.state._credit_pool.submit(lambda: None).result()
    assert r_alice.choices[0].message.content == "<memory>alice prefers metric units</memory>"
    assert r_bob.choices[0].message.content == "" and r_boom.choices[0].message.content == ""  # degraded, not failed
    mid = r_alice.model_extra["afterword_message_id"]
    assert inj.credited == [(mid, "alice", ["mem-1"])]
    s = Store(db)
    conv = s.get_conversation(s.get_message(mid)[1])
    s.close()
    assert [m.role for m in conv.messages] == ["user", "assistant"]  # the log keeps what the app sent


def _memory_api() -> Any:
    try:
        import afterword.memory as mem

        mem.MemoryInjector  # noqa: B018
    except Exception as exc:
        pytest.skip(f"afterword.memory is not available yet ({exc}); the proxy degrades to no injection")
    return mem


def _add_memory(store: Store, mem_mod: Any, memory: Memory) -> None:
    mem_mod.add_memories(store, [memory])


def test_real_memory_is_injected_for_its_user_only(stub: Running, db: str, tmp_path: Path) -> None:
    mem = _memory_api()
    s = Store(db)
    secret = "Alice is on Python 3.9 and wants answers for that version."
    _add_memory(s, mem, Memory(kind=MemoryKind.fact, text=secret, user_id="alice", situation="python version"))
    s.close()
    app = create_app(db, stub.url, require_key=False, memory=True, spool_path=tmp_path / "sp")
    with serve(app) as p:
        client = sdk(p)
        msgs = [{"role": "user", "content": "Which Python version should my code target?"}]
        seen_alice = client.chat.completions.create(model="echo-system", messages=msgs, user="alice")
        seen_bob = client.chat.completions.create(model="echo-system", messages=msgs, user="bob")
        p.flush()
    assert "Python 3.9" in (seen_alice.choices[0].message.content or "")
    assert "Python 3.9" not in (seen_bob.choices[0].message.content or "")


# -- end to end with the real local model ----------------------------------------------------------------


@pytest.mark.llm
def test_end_to_end_with_the_local_model(llm: Any, tmp_path: Path) -> None:
    db = str(tmp_path / "e2e.db")
    s = Store(db)
    key = create_key(s, "e2e")
    have_memory = True
    try:
        import afterword.memory as mem

        lesson = Memory(
            kind=MemoryKind.lesson,
            text="Give giraffe heights in metres: an adult giraffe is about 5.5 m tall.",
            situation="How tall is a giraffe?",
            user_id="alice",
        )
        _add_memory(s, mem, lesson)
    except Exception:
        have_memory = False
    s.close()
    app = create_app(db, llm.base_url, memory=have_memory, spool_path=tmp_path / "sp")
    with serve(app) as p:
        client = sdk(p, key, timeout=120)
        q = [{"role": "user", "content": "How tall is a giraffe? One sentence."}]
        hdrs = {"X-Afterword-User": "alice", "X-Afterword-Session": "e2e-1"}
        raw = client.chat.completions.with_raw_response.create(
            model=llm.model, messages=q, max_tokens=8, temperature=0, extra_headers=hdrs
        )
        resp = raw.parse()
        assert resp.choices[0].message.content
        mid = raw.headers["x-afterword-message-id"]
        stream = client.chat.completions.create(
            model=llm.model,
            messages=[{"role": "user", "content": "Name a colour."}],
            max_tokens=6,
            temperature=0,
            stream=True,
            extra_headers={"X-Afterword-User": "bob", "X-Afterword-Session": "e2e-2"},
        )
        streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert streamed
        p.flush()
        p.state._credit_pool.submit(lambda: None).result()
    rows = {r.id: r for r in assistant_rows(db)}
    assert rows[mid].user_id == "alice" and rows[mid].external_id == "e2e-1"
    assert rows[mid].content == resp.choices[0].message.content and rows[mid].model
    bob = [r for r in rows.values() if r.user_id == "bob"]
    assert len(bob) == 1 and bob[0].content == streamed and bob[0].external_id == "e2e-2"
    if not have_memory:
        pytest.skip("afterword.memory is not available yet: injection not checked (logging and auth were)")
    s = Store(db)
    with s.read() as conn:
        inj = list(conn.execute(sa.select(t.memory_injections)))
    s.close()
    assert inj and {r.user_id for r in inj} == {"alice"} and {r.message_id for r in inj} == {mid}


# -- a worker killed in mid-load ---------------------------------------------------------------------------


def _start_cli_proxy(upstream: str, db: str, spool: Path, workers: int) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "AFTERWORD_DB": db, "AFTERWORD_SPOOL": str(spool)}
    exe = str(Path(sys.executable).parent / "afterword")
    cmd = [exe, "serve", "--upstream", upstream, "--port", str(port), "--workers", str(workers), "--no-memory"]
    proc = subprocess.Popen([*cmd, "--json"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(proc.stderr.read().decode()[-2000:] if proc.stderr else "proxy did not start")
        time.sleep(0.2)


def test_two_workers_and_a_sigkilled_one_lose_no_successful_log(stub: Running, tmp_path: Path) -> None:
    import psutil

    db, spool = str(tmp_path / "kill.db"), tmp_path / "spool.jsonl"
    proc, base = _start_cli_proxy(stub.url, db, spool, workers=2)
    ok: list[str] = []
    failed: list[str] = []
    stop = threading.Event()
    lock = threading.Lock()

    def client(k: int) -> None:
        with httpx.Client(base_url=base, timeout=10) as c:
            i = 0
            while not stop.is_set():
                i += 1
                body = {"model": "s", "messages": [{"role": "user", "content": f"c{k} n{i}"}]}
                try:
                    r = c.post("/v1/chat/completions", json=body)
                    with lock:
                        (ok if r.status_code == 200 else failed).append(r.headers.get("x-afterword-message-id", ""))
                except httpx.HTTPError as exc:  # the killed worker's connections: a clean failure
                    with lock:
                        failed.append(type(exc).__name__)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(6)]
    try:
        for th in threads:
            th.start()
        while len(ok) < 100:
            time.sleep(0.01)
        workers = [c for c in psutil.Process(proc.pid).children() if "spawn_main" in " ".join(c.cmdline())]
        assert len(workers) == 2
        victim = workers[0]
        victim.kill()  # SIGKILL: its capture queue dies with it
        n_at_kill = len(ok)
        deadline = time.monotonic() + 20
        while len(ok) < n_at_kill + 100 and time.monotonic() < deadline:
            time.sleep(0.01)
        stop.set()
        for th in threads:
            th.join(15)
        journal_dir = spool.with_name(spool.name + ".journal")
        deadline = time.monotonic() + 20  # a surviving worker replays the dead one's journal
        while any(not _locked(f) for f in journal_dir.glob("journal-*.jsonl")) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        stop.set()
        proc.terminate()
        out, err = proc.communicate(timeout=60)
    assert json.loads(out.decode().strip().splitlines()[-1])["workers"] == 2
    stored = assistant_rows(db)
    ids = [r.id for r in stored]
    assert len(ids) == len(set(ids))  # nothing duplicated
    assert set(ok) <= set(ids), (len(set(ok) - set(ids)), err.decode()[-1500:])
    assert all(f for f in failed)  # failures were clean HTTP failures, not hangs


def _locked(path: Path) -> bool:
    """True while a live worker holds the segment."""
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


# -- the CLI and the public names ----------------------------------------------------------------------------


def test_keys_cli_json(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from afterword.cli import app

    db = str(tmp_path / "cli.db")
    run = CliRunner().invoke
    created = json.loads(run(app, ["--db", db, "keys", "create", "my-app", "--json"]).stdout.splitlines()[-1])
    assert created["key"].startswith("aw-") and created["scope"] == "proxy" and created["active"]
    listed = json.loads(run(app, ["--db", db, "keys", "list", "--json"]).stdout.splitlines()[-1])
    assert [k["id"] for k in listed] == [created["id"]] and "key" not in listed[0]
    revoked = json.loads(run(app, ["--db", db, "keys", "revoke", created["id"], "--json"]).stdout.splitlines()[-1])
    assert revoked["active"] is False
    assert json.loads(run(app, ["--db", db, "keys", "list", "--json"]).stdout.splitlines()[-1]) == []
    bad = run(app, ["--db", db, "keys", "revoke", "nope", "--json"])
    assert bad.exit_code == 1 and "not found" in json.loads(bad.stdout.splitlines()[-1])["error"]


def test_loopback_detection_and_public_names() -> None:
    import afterword.serve as serve_pkg
    from afterword.serve import is_loopback

    assert all(is_loopback(h) for h in ("127.0.0.1", "127.8.9.1", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.5", "example.com"))
    assert all(hasattr(serve_pkg, name) for name in serve_pkg.__all__)
