"""``afterword ui``: the review queue as a small FastAPI app and one static page.

The page (``static/index.html`` + ``app.js`` + ``app.css``, no build step)
talks to a JSON API over the library in :mod:`afterword.ui.review` and
:mod:`afterword.evals.dashboard`. The app adds only what the web needs:
sign-in and CSRF (:mod:`afterword.ui.auth`), a strict Content-Security-Policy
(scripts only from this origin, no inline script, so injected markup cannot
run even if it reached the page), and one JSON error shape::

    {"error": {"message": "...", "type": "...", "code": "..."}}

(a request body or field that is not what an endpoint takes also says which
``param``; status 400). On loopback, where there is no sign-in, a request
whose ``Host`` is not a loopback name is refused (400), so a DNS-rebinding
page cannot use the UI.

Routes are plain ``def`` functions, so FastAPI runs the blocking store calls
in its thread pool.
"""

from __future__ import annotations

import secrets
import threading
import time
from importlib import resources
from typing import Any

from fastapi import Body, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from afterword.errors import AfterwordError, ConfigError, NotFoundError
from afterword.store.store import Store
from afterword.ui import review
from afterword.ui.auth import (
    CSRF_COOKIE,
    CSRF_HEADER,
    SESSION_COOKIE,
    KeyCheck,
    Sessions,
    check_key,
    csrf_ok,
    host_is_loopback,
    is_loopback,
    key_digest,
)

__all__ = ["create_app", "serve_ui", "error_json"]

_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_OPEN = {"/api/session", "/api/login"}


def error_json(
    status: int, message: str, code: str, type_: str = "invalid_request_error", param: str | None = None
) -> JSONResponse:
    err: dict[str, Any] = {"message": message, "type": type_, "code": code}
    if param is not None:
        err["param"] = param
    return JSONResponse({"error": err}, status_code=status)


class BadField(Exception):
    """A request body field that is missing or of the wrong kind (answered 400, naming the field)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def _text(body: dict[str, Any], field: str, *, required: bool = True) -> str | None:
    """``body[field]`` when it is a string (non-empty after stripping when ``required``; else it may be absent)."""
    value = body.get(field)
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value.strip()):
        raise BadField(field, f"'{field}' must be a non-empty string" if required else f"'{field}' must be a string")
    return value


def create_app(
    store: Store,
    *,
    auth_required: bool = False,
    reviewer: str = "local",
    dashboard_ttl_s: float = 30.0,
    key_recheck_s: float = 2.0,
) -> FastAPI:
    """The UI app on ``store``. With ``auth_required`` every API call needs a session or a bearer key.

    Without it (loopback) only requests whose ``Host`` is a loopback name are served.
    A session works only while the key that opened it is active: it is checked against
    the store at least every ``key_recheck_s`` seconds.
    """
    app = FastAPI(title="afterword review", docs_url=None, redoc_url=None, openapi_url=None)
    sessions = Sessions()
    key_check = KeyCheck(store, ttl_s=key_recheck_s)
    static = resources.files("afterword") / "ui" / "static"
    app.mount("/static", StaticFiles(directory=str(static)), name="static")
    cache: dict[str, Any] = {}
    cache_lock = threading.Lock()

    def who(request: Request) -> tuple[str | None, bool]:
        """(reviewer, via bearer key). Blocking (asks the store)."""
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer ") and check_key(store, auth[7:].strip()):
            return "api-key", True
        if not auth_required:
            return reviewer, False
        token = request.cookies.get(SESSION_COOKIE)
        hit = sessions.lookup(token)
        if hit is None:
            return None, False
        name, digest = hit
        if digest is None or not key_check.active(digest):  # the key was revoked: the session ends with it
            sessions.end(token)
            return None, False
        return name, False

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Response:
        path = request.url.path
        if not auth_required and not host_is_loopback(request.headers.get("host")):
            return error_json(
                400, "this UI answers only to a loopback host name (localhost, 127.0.0.1, [::1])", "bad_host"
            )
        if path.startswith("/api/"):
            try:
                name, bearer = await run_in_threadpool(who, request)
            except AfterwordError:
                return error_json(503, "the store is unavailable", "store_unavailable", "server_error")
            if auth_required and name is None and path not in _OPEN:
                return error_json(401, "sign in with an API key of scope 'ui'", "unauthorized", "authentication_error")
            if request.method not in ("GET", "HEAD", "OPTIONS") and not bearer:
                ok = csrf_ok(
                    request.cookies.get(CSRF_COOKIE),
                    request.headers.get(CSRF_HEADER),
                    request.headers.get("origin"),
                    request.headers.get("host"),
                )
                if not ok:
                    return error_json(403, "missing or wrong CSRF token", "csrf", "permission_error")
            request.state.reviewer = name
        response: Response = await call_next(request)
        response.headers["Content-Security-Policy"] = _CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["X-Frame-Options"] = "DENY"
        if CSRF_COOKIE not in request.cookies:
            response.set_cookie(CSRF_COOKIE, secrets.token_urlsafe(32), samesite="strict", httponly=False, path="/")
        return response

    @app.exception_handler(AfterwordError)
    def _afterword_error(request: Request, exc: AfterwordError) -> JSONResponse:
        if isinstance(exc, NotFoundError):
            return error_json(404, str(exc), "not_found")
        if isinstance(exc, ConfigError):
            return error_json(400, str(exc), "bad_request")
        return error_json(500, str(exc), "store_error", "server_error")

    @app.exception_handler(StarletteHTTPException)
    def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_json(exc.status_code, str(exc.detail), "http_error")

    @app.exception_handler(RequestValidationError)
    def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        param = None
        for e in exc.errors():
            loc = [str(x) for x in e.get("loc", ()) if x != "body"] or ["body"]
            param = param or ".".join(loc)
            problems.append(f"{'.'.join(loc)}: {e.get('msg', 'invalid')}")
        message = "; ".join(problems[:5]) or "invalid request"
        return error_json(400, message, "invalid_request", param=param)

    @app.exception_handler(BadField)
    def _bad_field(request: Request, exc: BadField) -> JSONResponse:
        return error_json(400, exc.message, "invalid_field", param=exc.field)

    @app.get("/")
    def index() -> FileResponse:
        return FileResponse(str(static / "index.html"), media_type="text/html")

    @app.get("/api/session")
    def session(request: Request) -> dict[str, Any]:
        name = request.state.reviewer
        return {"auth_required": auth_required, "signed_in": name is not None, "reviewer": name}

    @app.post("/api/login")
    def login(request: Request, body: dict[str, Any] = Body(...)) -> Response:
        key = _text(body, "key", required=False) or ""
        name = (_text(body, "name", required=False) or "").strip()[:64] or "reviewer"
        if not check_key(store, key):
            time.sleep(0.2)  # slow down guessing
            return error_json(401, "unknown or revoked key", "bad_key", "authentication_error")
        resp = JSONResponse({"signed_in": True, "reviewer": name})
        token = sessions.start(name, key_digest(key))
        resp.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="strict", path="/", max_age=12 * 3600)
        return resp

    @app.post("/api/logout")
    def logout(request: Request) -> Response:
        sessions.end(request.cookies.get(SESSION_COOKIE))
        resp = JSONResponse({"signed_in": False})
        resp.delete_cookie(SESSION_COOKIE, path="/")
        return resp

    @app.get("/api/queue")
    def queue(
        label: str | None = None,
        user: str | None = None,
        reason: str | None = None,
        q: str | None = None,
        limit: int = 200,
    ) -> dict[str, Any]:
        items = review.review_queue(store, label=label or None, user_id=user or None, reason=reason or None, query=q)
        return {"items": items[: max(1, min(limit, 1000))], "total": len(items)}

    @app.get("/api/item/{message_id}")
    def item(message_id: str) -> dict[str, Any]:
        return review.review_detail(store, message_id)

    @app.post("/api/item/{message_id}/accept")
    def accept(request: Request, message_id: str) -> dict[str, Any]:
        return review.accept(store, message_id, request.state.reviewer)

    @app.post("/api/item/{message_id}/label")
    def label(request: Request, message_id: str, body: dict[str, Any] = Body(...)) -> dict[str, Any]:
        return review.set_label(store, message_id, _text(body, "label") or "", request.state.reviewer)

    @app.post("/api/item/{message_id}/correct")
    def correct(request: Request, message_id: str, body: dict[str, Any] = Body(...)) -> dict[str, Any]:
        return review.correct(store, message_id, _text(body, "text") or "", request.state.reviewer)

    @app.get("/api/dashboard")
    def dashboard() -> dict[str, Any]:
        from afterword.evals.dashboard import dashboard as build

        with cache_lock:
            hit = cache.get("dashboard")
            if hit and time.monotonic() - hit[0] < dashboard_ttl_s:
                return hit[1]  # type: ignore[no-any-return]
            data = build(store)
            cache["dashboard"] = (time.monotonic(), data)
            return data

    @app.api_route("/api/{rest:path}", methods=["GET", "POST", "PUT", "DELETE"])
    def unknown(rest: str) -> JSONResponse:
        return error_json(404, f"no such endpoint: /api/{rest}", "not_found")

    return app


def serve_ui(store: Store, host: str = "127.0.0.1", port: int = 8765, *, reviewer: str = "local") -> None:
    """Run the UI with uvicorn (blocking). Off loopback, sign-in is required."""
    import uvicorn

    app = create_app(store, auth_required=not is_loopback(host), reviewer=reviewer)
    uvicorn.run(app, host=host, port=port, log_level="warning")
