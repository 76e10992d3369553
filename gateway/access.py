"""Every request's identity for the people who debug it: a request id and one access-log line.

The id is the client's `X-Request-Id` when it sends a sane one (a proxy's, or an app's own tracing), else
a new one; it is returned as `X-Request-Id`, bound to every log line written while the request runs
(structlog's context variables), and written into every JSON error body as `request_id`, so a user's
bug report carries what finds the server's lines. The access line says who called (roles, user or key name) and,
for a refusal, why (the error's `code`). Plain ASGI: no per-request task, nothing buffered but error bodies.
"""

from __future__ import annotations

import random
import time
from typing import Any

import orjson
import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine import audit

log = structlog.get_logger("backsaas.gateway")
MAX_REQUEST_ID = 128


def request_id_of(scope: Scope) -> str:
    """The client's `X-Request-Id` if it is short printable ASCII, else a fresh one: 128 random bits, as
    hex (an id that finds log lines, no secret: `random`, which costs no system call, where `uuid4` does)."""
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            if 0 < len(value) <= MAX_REQUEST_ID and all(33 <= b < 127 for b in value):
                return value.decode("ascii")
            break
    return f"{random.getrandbits(128):032x}"


class AccessLog:
    """Gives each HTTP request its id and writes its access line when the response has gone."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        request_id = scope["backsaas.request_id"] = request_id_of(scope)
        structlog.contextvars.bind_contextvars(request_id=request_id)
        audit.REQUEST.set(scope)  # who and whence, for the audit entries the request's writes make
        if scope["type"] == "websocket":
            try:
                await self.app(scope, receive, send)
            finally:
                structlog.contextvars.unbind_contextvars("request_id")
            return
        started = time.perf_counter()
        status, error, held = 500, None, None
        header = (b"x-request-id", request_id.encode("ascii"))

        async def send_with_id(message: Message) -> None:
            nonlocal status, error, held
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
                if status >= 400 and is_json(message["headers"]):
                    held = message  # its body gets the request id: wait for it
                    return
            elif held is not None and message["type"] == "http.response.body":
                start, held = held, None
                if not message.get("more_body", False):  # a whole body (every error of ours is one)
                    body, error = with_request_id(message.get("body", b""), request_id)
                    start["headers"] = [(k, str(len(body)).encode() if k == b"content-length" else v)
                                        for k, v in start["headers"]]
                    message = {**message, "body": body}
                await send(start)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            caller = scope.get("backsaas.caller")
            log.info("request", method=scope["method"], path=scope["path"], status=status,
                     tenant=scope.get("backsaas.tenant"), roles=list(caller.roles) if caller else None,
                     user_id=caller.user_id if caller else None, key=caller.key_name if caller else None, error=error,
                     ms=round((time.perf_counter() - started) * 1000, 2))
            structlog.contextvars.unbind_contextvars("request_id")


def is_json(headers: Any) -> bool:
    return any(k.lower() == b"content-type" and b"json" in v for k, v in headers)


def with_request_id(body: bytes, request_id: str) -> tuple[bytes, str | None]:
    """An error body with `request_id` added (when it is a JSON object), and its `code`."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body, None
    if not isinstance(document, dict):
        return body, None
    document["request_id"] = request_id
    code = document.get("code") or document.get("error_code") or document.get("error")
    return orjson.dumps(document), str(code) if code is not None else None
