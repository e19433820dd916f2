"""The proxy's one JSON error shape, OpenAI style.

Every error the proxy itself produces (bad input, auth, an unreachable
upstream, an unknown path, a bug) is::

    {"error": {"message": "...", "type": "...", "code": "..."}}

which is what OpenAI returns, so the official SDKs raise their usual
exceptions with a readable message. Errors from the upstream are never
rewritten: they pass through with their own status and body.
``tests/test_proxy.py`` pins the shape.
"""

from __future__ import annotations

from starlette.responses import JSONResponse

__all__ = ["ProxyError", "error_body", "error_response"]


class ProxyError(Exception):
    """Raised inside the proxy to answer with the JSON error shape."""

    def __init__(self, status: int, message: str, type_: str, code: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.headers = headers

    @classmethod
    def bad_request(cls, message: str, code: str) -> ProxyError:
        return cls(400, message, "invalid_request_error", code)

    def response(self) -> JSONResponse:
        return error_response(self.status, self.message, self.type, self.code, self.headers)


def error_body(message: str, type_: str, code: str) -> dict[str, dict[str, str]]:
    return {"error": {"message": message, "type": type_, "code": code}}


def error_response(
    status: int, message: str, type_: str, code: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(message, type_, code), status_code=status, headers=headers)
