"""The review UI's edges: body validation, revoked keys, the Host check on loopback, one error shape.

Each test runs the real app under a real uvicorn server on 127.0.0.1 and talks
to it over HTTP with httpx, on a real SQLite store.
"""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest

from _evals_data import build_history
from afterword.serve.keys import create_key, key_id, revoke_key


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Server:
    def __init__(self, app) -> None:  # noqa: ANN001
        import uvicorn

        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> _Server:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.server.started, "uvicorn did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def _app(store, **kw):  # noqa: ANN001, ANN202
    from afterword.ui.app import create_app

    return create_app(store, **kw)


def _csrf(c: httpx.Client) -> str:
    c.get("/")  # sets the CSRF cookie
    token = c.cookies.get("aw_csrf")
    assert token
    return token


def _human(store, mid: str):  # noqa: ANN001, ANN202
    js = store.judgments_for([mid], source="human")
    return js[0] if js else None


def _corrections(store, mid: str) -> list:  # noqa: ANN001
    return [f for f in store.feedback_for_messages([mid]) if f.kind == "correction"]


def _is_error(r: httpx.Response, status: int | tuple[int, ...]) -> dict:
    statuses = status if isinstance(status, tuple) else (status,)
    assert r.status_code in statuses, (r.status_code, r.text)
    body = r.json()
    assert "detail" not in body, body
    assert set(body) == {"error"} and isinstance(body["error"]["message"], str), body
    return body["error"]


# -- 1: a field that is not a non-empty string is a 400 naming it, never stored as its repr --------------


@pytest.mark.parametrize("text", [None, {"a": 1}, ["x"], 42, True, "", "   "])
def test_correct_needs_a_non_empty_string(store, text):
    mid = build_history(store)["bad"][0]
    with _Server(_app(store)) as srv, httpx.Client(base_url=srv.url) as c:
        token = _csrf(c)
        r = c.post(f"/api/item/{mid}/correct", json={"text": text}, headers={"X-CSRF-Token": token})
        err = _is_error(r, 400)
        assert err["param"] == "text" and "text" in err["message"]
        r = c.post(f"/api/item/{mid}/correct", json={}, headers={"X-CSRF-Token": token})
        assert _is_error(r, 400)["param"] == "text"
        assert _corrections(store, mid) == []
        assert _human(store, mid) is None
        # A real correction still works.
        r = c.post(f"/api/item/{mid}/correct", json={"text": "Use reversed()."}, headers={"X-CSRF-Token": token})
        assert r.status_code == 200, r.text
        assert [f.correction for f in _corrections(store, mid)] == ["Use reversed()."]


@pytest.mark.parametrize("label", [None, {"a": 1}, ["satisfied"], 1, ""])
def test_label_needs_a_string(store, label):
    mid = build_history(store)["bad"][0]
    with _Server(_app(store)) as srv, httpx.Client(base_url=srv.url) as c:
        token = _csrf(c)
        r = c.post(f"/api/item/{mid}/label", json={"label": label}, headers={"X-CSRF-Token": token})
        err = _is_error(r, 400)
        assert err["param"] == "label" and "label" in err["message"]
        assert _human(store, mid) is None
        r = c.post(f"/api/item/{mid}/label", json={"label": "satisfied"}, headers={"X-CSRF-Token": token})
        assert r.status_code == 200 and _human(store, mid).label == "satisfied"


def test_login_fields_must_be_strings(store):
    key = create_key(store, "ui-test", "ui")
    with _Server(_app(store, auth_required=True)) as srv, httpx.Client(base_url=srv.url) as c:
        token = _csrf(c)
        h = {"X-CSRF-Token": token}
        assert _is_error(c.post("/api/login", json={"key": {"k": key}}, headers=h), 400)["param"] == "key"
        assert _is_error(c.post("/api/login", json={"key": key, "name": {"a": 1}}, headers=h), 400)["param"] == "name"
        assert _is_error(c.post("/api/login", json={"key": key, "name": ["x"]}, headers=h), 400)["param"] == "name"
        assert c.get("/api/queue").status_code == 401  # none of those signed in
        r = c.post("/api/login", json={"key": key, "name": "  "}, headers=h)
        assert r.status_code == 200 and r.json()["reviewer"] == "reviewer"


# -- 2: revoking a key ends the sessions it opened ---------------------------------------------------------


def test_revoked_key_ends_its_sessions(store):
    mid = build_history(store)["bad"][0]
    key = create_key(store, "ui-test", "ui")
    other = create_key(store, "ui-other", "all")
    with (
        _Server(_app(store, auth_required=True)) as srv,
        httpx.Client(base_url=srv.url) as c,
        httpx.Client(base_url=srv.url) as c2,
    ):
        token = _csrf(c)
        r = c.post("/api/login", json={"key": key, "name": "bob"}, headers={"X-CSRF-Token": token})
        assert r.status_code == 200
        token2 = _csrf(c2)
        assert c2.post("/api/login", json={"key": other}, headers={"X-CSRF-Token": token2}).status_code == 200
        assert c.get("/api/queue").status_code == 200

        revoke_key(store, key_id(key))
        with httpx.Client(base_url=srv.url) as bare:
            assert bare.get("/api/queue", headers={"Authorization": f"Bearer {key}"}).status_code == 401
        # The cookie stops working within a few seconds (the UI rechecks the key; it may cache briefly).
        deadline = time.monotonic() + 5.0
        while c.get("/api/queue").status_code == 200:
            assert time.monotonic() < deadline, "the revoked key's session still works after 5 s"
            time.sleep(0.2)
        err = _is_error(c.get("/api/queue"), 401)
        assert err["code"] == "unauthorized"
        r = c.post(f"/api/item/{mid}/label", json={"label": "satisfied"}, headers={"X-CSRF-Token": token})
        _is_error(r, 401)
        assert _human(store, mid) is None
        assert c.get("/api/session").json()["signed_in"] is False
        # Another key's session is untouched.
        assert c2.get("/api/queue").status_code == 200
        r = c2.post(f"/api/item/{mid}/label", json={"label": "satisfied"}, headers={"X-CSRF-Token": token2})
        assert r.status_code == 200 and _human(store, mid).label == "satisfied"


def test_revocation_takes_effect_at_once_without_cache(store):
    key = create_key(store, "ui-test", "ui")
    with _Server(_app(store, auth_required=True, key_recheck_s=0)) as srv, httpx.Client(base_url=srv.url) as c:
        token = _csrf(c)
        assert c.post("/api/login", json={"key": key}, headers={"X-CSRF-Token": token}).status_code == 200
        assert c.get("/api/queue").status_code == 200
        revoke_key(store, key_id(key))
        assert c.get("/api/queue").status_code == 401


# -- 3: on loopback, only loopback Host names (DNS rebinding) -----------------------------------------------


def test_loopback_refuses_foreign_host(store):
    mid = build_history(store)["bad"][0]
    with _Server(_app(store)) as srv, httpx.Client(base_url=srv.url) as c:
        token = _csrf(c)
        evil = f"attacker.example:{srv.port}"
        for path in ("/api/queue", f"/api/item/{mid}", "/api/session", "/"):
            err = _is_error(c.get(path, headers={"Host": evil}), (400, 421))
            assert err["code"] == "bad_host"
        # A rebound page: same origin as far as the browser knows, with the cookie and the token.
        r = c.post(
            f"/api/item/{mid}/label",
            json={"label": "satisfied"},
            headers={"Host": evil, "Origin": f"http://{evil}", "X-CSRF-Token": token},
        )
        _is_error(r, (400, 421))
        assert _human(store, mid) is None
        for bad in ("attacker.example", "localhost.attacker.example", "127.0.0.1.nip.io", "10.0.0.5", "localhost:x"):
            assert c.get("/api/queue", headers={"Host": bad}).status_code in (400, 421), bad
        # Loopback names and addresses, with or without a port, are served.
        for good in (f"localhost:{srv.port}", f"127.0.0.1:{srv.port}", f"[::1]:{srv.port}", "localhost", "[::1]"):
            assert c.get("/api/queue", headers={"Host": good}).status_code == 200, good
        r = c.post(
            f"/api/item/{mid}/label",
            json={"label": "satisfied"},
            headers={"Host": f"localhost:{srv.port}", "Origin": f"http://localhost:{srv.port}", "X-CSRF-Token": token},
        )
        assert r.status_code == 200 and _human(store, mid).label == "satisfied"
    # Off loopback the Host is not checked (sign-in is required instead).
    key = create_key(store, "ui-test", "ui")
    with _Server(_app(store, auth_required=True)) as srv, httpx.Client(base_url=srv.url) as c:
        host = {"Host": f"review.example:{srv.port}"}
        assert _is_error(c.get("/api/queue", headers=host), 401)["code"] == "unauthorized"
        assert c.get("/api/queue", headers={**host, "Authorization": f"Bearer {key}"}).status_code == 200


def test_host_is_loopback():
    from afterword.ui.auth import host_is_loopback

    for good in ("localhost", "LOCALHOST:80", "127.0.0.1", "127.0.0.1:8765", "::1", "[::1]", "[::1]:8765"):
        assert host_is_loopback(good), good
    for bad in (None, "", "attacker.example", "attacker.example:8765", "[::1]x", "[::1]:", "localhost:", "0.0.0.0"):
        assert not host_is_loopback(bad), bad


# -- 4: bad bodies answer in the documented error shape ----------------------------------------------------


def test_bad_bodies_use_the_error_shape(store):
    mid = build_history(store)["bad"][0]
    with _Server(_app(store)) as srv, httpx.Client(base_url=srv.url) as c:
        h = {"X-CSRF-Token": _csrf(c)}
        cases = [
            c.post(f"/api/item/{mid}/correct", json=["not", "an", "object"], headers=h),
            c.post(f"/api/item/{mid}/correct", content=b"{not json", headers={**h, "Content-Type": "application/json"}),
            c.post(f"/api/item/{mid}/correct", headers=h),  # no body at all
            c.post(f"/api/item/{mid}/label", json="satisfied", headers=h),
            c.post("/api/login", json=[1], headers=h),
            c.get("/api/queue", params={"limit": "many"}),
        ]
        for r in cases:
            err = _is_error(r, (400, 422))
            assert err["message"] and err["code"]
        assert _corrections(store, mid) == [] and _human(store, mid) is None
