"""Every request's identity for the people who debug it, and the one layer that sees each request begin and end.

The id is the client's `X-Request-Id` when it sends a sane one (a proxy's, or an app's own tracing), else
a new one; it is returned as `X-Request-Id`, bound to every log line written while the request runs
(structlog's context variables), and written into every JSON error body as `request_id`, so a user's
bug report carries what finds the server's lines. The access line says who called (roles, user or key name) and,
for a refusal, why (the error's `code`).

`RequestObserver` is the gateway's only layer around the tenant routing: it reads the request's headers
once, takes the time once and wraps `send` once (`ObservedSend`), and when the answer has ended it writes
the access line, the Prometheus observations (gateway/metrics.py) and the meter's counts (gateway/meter.py).
At the answer's start it adds, in one new header list, what the layers inside asked for (the rate limits'
`RateLimit-*`, gateway/ratelimit.py `with_headers`), the quota warning, the CORS headers of the request's
tenant (gateway/cors.py; preflights are answered here, before routing) and the request id. Each concern's
code stays in its module; this one only calls it. Plain ASGI: no per-request task, nothing buffered but
error bodies.
"""

from __future__ import annotations

import logging
import random
import time
from contextvars import Token
from typing import Any

import orjson
import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine import audit, metering
from gateway.cors import CorsPolicy, CrossOrigin, OriginsOf, is_preflight
from gateway.meter import WARNING_HEADER_NAME, Metering
from gateway.metrics import RequestMetrics

log = structlog.get_logger("backsaas.gateway")
MAX_REQUEST_ID = 128
# In the scope: the seconds a refusal was held before its answer (gateway/ratelimit.py `hold`), which the
# latency metrics and the meter leave out: they measure how fast the gateway serves, and a pause taken on
# purpose would put a rate-limited tenant's refusals at the platform's p95.
HELD_SECONDS = "backsaas.held_seconds"


def request_id_of(scope: Scope) -> str:
    """The client's `X-Request-Id` if it is short printable ASCII, else a fresh one."""
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            return checked_request_id(value)
    return new_request_id()


def checked_request_id(value: bytes) -> str:
    if 0 < len(value) <= MAX_REQUEST_ID and all(33 <= b < 127 for b in value):
        return value.decode("ascii")
    return new_request_id()


def new_request_id() -> str:
    """128 random bits, as hex (an id that finds log lines, no secret: `random`, which costs no system call,
    where `uuid4` does)."""
    return f"{random.getrandbits(128):032x}"


def access_line(logger: Any, scope: Scope, status: int, error: str | None, seconds: float) -> None:
    """The request's access line on `logger` (its fields are not even gathered when its level is off)."""
    if not logger.is_enabled_for(logging.INFO):
        return
    caller = scope.get("backsaas.caller")
    logger.info("request", method=scope["method"], path=scope["path"], status=status,
                tenant=scope.get("backsaas.tenant"), roles=list(caller.roles) if caller else None,
                user_id=caller.user_id if caller else None, key=caller.key_name if caller else None, error=error,
                ms=round(seconds * 1000, 2))


class ObservedSend:
    """The request's `send`, wrapped once: notes the status and the bytes sent, adds the headers at the start
    and holds a JSON error's start until its body, which gets the request id."""

    __slots__ = ("error", "extra", "held", "origin", "policy", "request_id", "send", "sent", "status", "usage")

    def __init__(self, send: Send, request_id: str, origin: str | None) -> None:
        self.send, self.request_id, self.origin = send, request_id, origin
        self.usage: metering.RequestUsage | None = None  # the meter's, when it is on
        self.policy: CorsPolicy | None = None  # the CORS policy of a request with an `Origin`
        self.status, self.sent = 500, 0
        self.error: str | None = None
        self.held: Message | None = None
        self.extra: list[tuple[bytes, bytes]] | None = None

    def add_headers(self, headers: list[tuple[bytes, bytes]]) -> None:
        """Headers the answer's start will carry (gateway/ratelimit.py `with_headers`)."""
        if self.extra is None:
            self.extra = headers  # never changed here: a second call makes a new list (no copy for the usual one)
        else:
            self.extra = [*self.extra, *headers]

    async def __call__(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.status = status = message["status"]
            headers = [*message.get("headers", ()), *(self.extra or ())]
            usage = self.usage
            if usage is not None and (quota := usage.quota) is not None and quota.warning:
                headers.append((WARNING_HEADER_NAME, quota.warning.encode()))  # X-Quota-Warning: past a soft limit
            if self.policy is not None and self.origin is not None:
                headers = self.policy.answer_headers(self.origin, headers)
            headers.append((b"x-request-id", self.request_id.encode("ascii")))
            message["headers"] = headers
            if status >= 400 and is_json(headers):
                self.held = message  # its body gets the request id: wait for it
                return
        elif kind == "http.response.body":
            if self.held is not None:
                start, self.held = self.held, None
                if not message.get("more_body", False):  # a whole body (every error of ours is one)
                    body, self.error = with_request_id(message.get("body", b""), self.request_id)
                    start["headers"] = [(k, str(len(body)).encode() if k == b"content-length" else v)
                                        for k, v in start["headers"]]
                    message = {**message, "body": body}
                await self.send(start)
            self.sent += len(message.get("body", b""))
        await self.send(message)


class RequestObserver:
    """The gateway's one layer around the tenant routing (see the module's docstring); `metering` is None
    when the meter is off."""

    def __init__(self, app: ASGIApp, origins_of: OriginsOf, metering: Metering | None) -> None:
        self.app = app
        self.cors = CrossOrigin(origins_of)
        self.metrics = RequestMetrics()
        self.metering = metering
        self.log: Any = None  # `log` bound at the first request (below)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http":
            if kind == "websocket":
                await self.websocket(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        request_id: str | None = None
        origin: str | None = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                request_id = checked_request_id(value)
            elif name == b"origin":
                origin = value.decode("latin-1")
        if request_id is None:
            request_id = new_request_id()
        scope["backsaas.request_id"] = request_id
        bound = structlog.contextvars.bind_contextvars(request_id=request_id)
        audit.REQUEST.set(scope)  # who and whence, for the audit entries the request's writes make
        started = time.perf_counter()
        observed = ObservedSend(send, request_id, origin)
        token: Token[metering.RequestUsage | None] | None = None
        preflight = False
        try:
            if origin is not None:
                policy = await self.cors.policy_of(scope)
                if is_preflight(scope):  # answered whole by the policy
                    preflight = True
                    await policy.preflight(scope)(scope, receive, observed)
                    return
                observed.policy = policy
            if self.metering is not None:
                observed.usage, token = self.metering.begin(scope)
            await self.app(scope, receive, observed)
        finally:
            seconds = time.perf_counter() - started
            status = observed.status
            if self.log is None:  # the lazy proxy looks its configuration up at every call; the gateway's is set
                self.log = log.bind()  # before it serves, and cached on first use (gateway/logs.py)
            access_line(self.log, scope, status, observed.error, seconds)
            if not preflight:  # a preflight is the browser's, not a request of the API
                served = seconds - scope.get(HELD_SECONDS, 0.0)
                self.metrics.observe(scope, status, served)
                if token is not None and observed.usage is not None and self.metering is not None:
                    self.metering.end(scope, observed.usage, token, status, observed.sent, served)
            structlog.contextvars.reset_contextvars(**bound)

    async def websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A WebSocket gets its request id (for its log lines and audit entries) and nothing else here."""
        request_id = scope["backsaas.request_id"] = request_id_of(scope)
        bound = structlog.contextvars.bind_contextvars(request_id=request_id)
        audit.REQUEST.set(scope)
        try:
            await self.app(scope, receive, send)
        finally:
            structlog.contextvars.reset_contextvars(**bound)


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
