"""Bad input, fuzzed with hypothesis: every importer and the proxy's request parsing.

Importers (openai, sharegpt, uss, asap, locomo) get random bytes, random JSON
shaped like their format, invalid UTF-8, oversized lines and deeply nested
JSON. Each must only yield Conversations or ImportRecordError (raising
ImportRecordError is allowed, nothing else), finish within a hard time
limit, and ``run_import`` must never leave a partial conversation: every
conversation the parser produced is stored with all of its messages, and a
strict import that fails writes nothing from its batch.

The proxy runs as a real uvicorn server on loopback in front of the stub
upstream; random bodies and headers must never produce a 5xx, and every
error must have the one JSON error shape.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from afterword.errors import ImportRecordError
from afterword.importers import get_parser, run_import
from afterword.records import Conversation
from afterword.store import Store, conversation_id_for, message_id_for
from afterword.store import schema as t

FORMATS = ["openai", "sharegpt", "uss", "asap", "locomo"]
FUZZ = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)


class Hang(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float):
    """A hard limit (SIGALRM), so a hanging parser fails the test instead of stalling the suite."""

    def boom(*_):  # noqa: ANN002
        raise Hang(f"no result within {seconds} s")

    old = signal.signal(signal.SIGALRM, boom)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# -- strategies -------------------------------------------------------------------------------------------

json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=30))
json_any = st.recursive(
    json_leaf,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=20,
)
roles = st.sampled_from(["user", "assistant", "system", "tool", "developer", "human", "gpt", "bogus", "", None, 3])
text = st.text(max_size=60)


def shaped(fmt: str) -> st.SearchStrategy[str]:
    """A record roughly in ``fmt``, with wrong types and missing fields mixed in."""
    if fmt == "openai":
        msg = st.fixed_dictionaries(
            {"role": roles, "content": st.one_of(text, json_any)},
            optional={"timestamp": st.one_of(text, st.integers(), st.floats()), "usage": json_any,
                      "tool_calls": json_any, "model": json_any},
        )  # fmt: skip
        rec = st.fixed_dictionaries(
            {"messages": st.one_of(st.lists(msg, max_size=5), json_any)},
            optional={"user": json_any, "session_id": json_any, "timestamp": json_any, "feedback": json_any},
        )
        return rec.map(json.dumps)
    if fmt == "sharegpt":
        turn = st.fixed_dictionaries({"from": roles, "value": st.one_of(text, json_any)})
        rec = st.fixed_dictionaries(
            {"conversations": st.one_of(st.lists(turn, max_size=5), json_any)},
            optional={"id": json_any, "system": json_any, "user": json_any, "timestamp": json_any},
        )
        return rec.map(json.dumps)
    if fmt == "uss":
        row = st.tuples(st.sampled_from(["USER", "SYSTEM", "X", ""]), text, text, text)
        return st.lists(row, min_size=1, max_size=6).map(lambda rows: "\n".join("\t".join(r) for r in rows) + "\n")
    if fmt == "asap":
        turns = st.lists(st.tuples(text, text).map(lambda p: f"{p[0]}|||{p[1]}"), max_size=4)
        return st.tuples(turns, st.lists(st.integers(-3, 30), max_size=4), st.integers(-2, 5), text).map(
            lambda x: f"{x[0]!r}\t{x[1]!r}\t{x[2]}" + (f"\t{x[3]}" if x[3] else "")
        )
    # locomo: a JSON list of samples with session_N lists of turns.
    turn = st.fixed_dictionaries(
        {"speaker": json_any, "text": st.one_of(text, json_any)}, optional={"dia_id": json_any, "img_url": json_any}
    )
    sample = st.fixed_dictionaries(
        {"conversation": st.one_of(
            st.fixed_dictionaries({"speaker_a": text, "speaker_b": text, "session_1": st.lists(turn, max_size=4)},
                                  optional={"session_1_date_time": json_any, "session_2": json_any}),
            json_any)},
        optional={"sample_id": json_any, "qa": json_any},
    )  # fmt: skip
    return st.lists(sample, max_size=3).map(json.dumps)


def nasty_bytes() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=2000),
        st.sampled_from(
            [
                b"\xff\xfe\xfa invalid utf-8 \xc3\x28\n",
                b"[" * 50_000 + b"\n",
                b'{"messages": ' + b"[" * 50_000 + b"\n",
                b"{" + b'"a":{' * 20_000 + b"\n",
                b"[" + b"[" * 3000 + b"'x|||y'" + b"]" * 3000 + b"]\t[1]\t2\n",
                b'{"messages": [{"role": "user", "content": "' + b"A" * 3_000_000 + b'"}]}\n',
                b"\x00" * 1000,
                b"USER\t" + b"x" * 500_000 + b"\t\t3,3\n",
            ]
        ),
    )


def content_for(fmt: str) -> st.SearchStrategy[bytes]:
    lines = st.lists(st.one_of(shaped(fmt), text), min_size=1, max_size=5).map(lambda ls: "\n".join(ls) + "\n")
    return st.one_of(lines.map(lambda s: s.encode("utf-8", "surrogatepass")), nasty_bytes())


# -- importers ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_store():
    with tempfile.TemporaryDirectory() as d:
        s = Store(str(Path(d) / "fuzz.db"))
        yield s, Path(d)
        s.close()


def parse_all(fmt: str, path: Path) -> list[Conversation]:
    out: list[Conversation] = []
    try:
        for item in get_parser(fmt)(path):
            assert isinstance(item, Conversation | ImportRecordError), type(item)
            if isinstance(item, Conversation):
                out.append(item)
    except ImportRecordError:
        pass  # allowed: a parser may give up on a whole file with a clear error
    return out


def stored_ids(store: Store, ids: list[str]) -> set[str]:
    with store.read() as conn:
        found: set[str] = set()
        for i in range(0, len(ids), 500):
            found |= set(
                conn.execute(sa.select(t.messages.c.id).where(t.messages.c.id.in_(ids[i : i + 500]))).scalars()
            )
    return found


def expected_ids(conv: Conversation) -> list[str]:
    cid = conversation_id_for(conv)
    ids, parent = [], None
    for m in conv.messages:
        parent = m.id or message_id_for(cid, parent, m)
        ids.append(parent)
    return ids


@pytest.mark.parametrize("fmt", FORMATS)
def test_importer_fuzz(fmt, fuzz_store):
    store, tmp = fuzz_store

    @FUZZ
    @given(data=content_for(fmt))
    def run(data: bytes) -> None:
        path = tmp / f"input-{fmt}.{'json' if fmt == 'locomo' else 'jsonl'}"
        path.write_bytes(data)
        with time_limit(20):
            convs = parse_all(fmt, path)
        # Strict: a bad record anywhere aborts, and nothing from its batch is written.
        with store.read() as conn:
            before = conn.execute(sa.select(sa.func.count()).select_from(t.messages)).scalar()
        try:
            with time_limit(20):
                run_import(store, path, fmt, strict=True)
            strict_failed = False
        except ImportRecordError:
            strict_failed = True
        if strict_failed:
            with store.read() as conn:
                assert conn.execute(sa.select(sa.func.count()).select_from(t.messages)).scalar() == before
        # Lenient: bad records skipped (uss and asap stop at a malformed line with a clear
        # ImportRecordError, by design); every conversation parsed before that is stored whole.
        try:
            with time_limit(20):
                run_import(store, path, fmt)
        except ImportRecordError:
            pass
        for conv in convs:
            ids = expected_ids(conv)
            assert stored_ids(store, ids) == set(ids), "a conversation was stored partially"

    run()


def test_deep_and_huge_inputs_give_clear_errors(tmp_path):
    """The nastiest inputs, one by one, for every format: a clear ImportRecordError, no crash."""
    cases = {
        "deep": b"[" * 200_000 + b"\n",
        "deep_obj": b'{"messages": [' + b'{"a":' * 100_000 + b"\n",
        "utf8": b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}\n',
    }
    for fmt in FORMATS:
        for name, data in cases.items():
            path = tmp_path / f"{fmt}-{name}.jsonl"
            path.write_bytes(data)
            with time_limit(30):
                items = []
                try:
                    items = list(get_parser(fmt)(path))
                except ImportRecordError as exc:
                    items = [exc]
            assert items and all(isinstance(i, ImportRecordError) for i in items), (fmt, name, items[:1])
            err = items[0].to_dict()
            assert err["file"] == str(path) and err["error"], err


# -- the proxy's request parsing, through a real uvicorn server --------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    def __init__(self, app, port: int) -> None:  # noqa: ANN001
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        end = time.monotonic() + 30
        while not self.server.started and time.monotonic() < end:
            time.sleep(0.05)
        assert self.server.started
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(15)


@pytest.fixture(scope="module")
def proxy_url():
    pytest.importorskip("afterword.serve.proxy")
    from afterword.serve.proxy import create_app
    from afterword.serve.stub import create_stub_app

    up, px = free_port(), free_port()
    with tempfile.TemporaryDirectory() as d:
        app = create_app(
            str(Path(d) / "proxy.db"),
            f"http://127.0.0.1:{up}/v1",
            require_key=False,
            memory=False,
            spool_path=Path(d) / "spool.jsonl",
            max_body_bytes=64 * 1024,
            body_timeout_s=5,
        )
        with ServerThread(create_stub_app(), up), ServerThread(app, px):
            yield f"http://127.0.0.1:{px}"


safe_model = st.text(max_size=20).filter(lambda m: not m.startswith(("status-", "delay-")))
chat_body = st.fixed_dictionaries(
    {"messages": st.one_of(
        st.lists(st.fixed_dictionaries({"role": roles, "content": st.one_of(text, json_any)}), max_size=4),
        json_any)},
    optional={"model": safe_model, "user": json_any, "stream": json_any, "temperature": json_any},
)  # fmt: skip
# Printable ASCII without edge whitespace: anything else is refused by the HTTP client itself.
header_value = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=300)


def body_bytes() -> st.SearchStrategy[bytes]:
    return st.one_of(
        chat_body.map(lambda b: json.dumps(b).encode()),
        json_any.map(lambda b: json.dumps(b).encode()),
        st.binary(max_size=500),
        st.sampled_from(
            [
                b"",
                b"\xff\xfe\xfd",
                b'{"messages": "\xc3\x28"}',
                b"[" * 100_000,
                b'{"messages":' + b"[" * 200 + b"]" * 200 + b"}",
                b'{"messages": [{"role": "user", "content": "' + b"x" * 200_000 + b'"}]}',
                b'{"model": NaN, "messages": []}',
                b'{"messages": [{"role": "user", "content": "hi"}], "model": "m"}',
            ]
        ),
    )


@pytest.mark.slow
def test_proxy_request_fuzz(proxy_url):
    import httpx

    client = httpx.Client(base_url=proxy_url, timeout=20)

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(body=body_bytes(), user=st.none() | header_value, ctype=st.sampled_from(["application/json", "text/plain"]))
    def run(body: bytes, user: str | None, ctype: str) -> None:
        headers = {"content-type": ctype}
        if user is not None:
            headers["x-afterword-user"] = user
        r = client.post("/v1/chat/completions", content=body, headers=headers)
        assert r.status_code < 500, (r.status_code, r.text[:300])
        if r.status_code >= 400:
            err = r.json()["error"]
            assert set(err) >= {"message", "type", "code"} and isinstance(err["message"], str)

    try:
        run()
        # Declared length over the limit, and a body that never finishes, are refused cleanly too.
        r = client.post("/v1/chat/completions", content=b"x" * (70 * 1024))
        assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
    finally:
        client.close()
