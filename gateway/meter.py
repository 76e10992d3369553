"""The gateway's meter: counts every tenant request into the process's `Meter`, and applies quotas.

Plain ASGI around the tenant routing: it gives the request a `RequestUsage` (the context variable the
write core reports written rows into, and the tenant's quota standing the write core consults), then,
once the response has gone, adds its counts by the surface its path names (`rest_calls`,
`graphql_calls`, `auth_calls`, `function_calls` and `function_ms`), its status class (`errors_4xx`,
`errors_5xx`), its latency bucket, the body bytes sent (`egress_bytes`) and, when it succeeded, the rows
it wrote. A request that reaches no tenant (unknown, or outside the tenant surfaces) counts nothing.
The counting is a few dict additions: no database round trip (engine/metering.py flushes in batches).

`admit` is called by the tenant app once the tenant is resolved and the caller authenticated (request
flow step 3): it refuses what a hard quota refuses whole (402) and keeps the tenant's standing for the
write core and for the `X-Quota-Warning` header.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine import metering
from engine.quotas import WARNING_HEADER, QuotaBook

WARNING_HEADER_NAME = WARNING_HEADER.lower().encode("latin-1")
SURFACES = (("/rest/v1", "rest_calls"), ("/graphql/v1", "graphql_calls"), ("/auth/v1", "auth_calls"),
            ("/functions/v1/", "function_calls"))


def surface_of(path: str) -> str | None:
    for prefix, metric in SURFACES:
        if path.startswith(prefix):
            return metric
    return None


class Metering:
    """Counts each HTTP request of a tenant (see the module's docstring); `book` holds the quotas."""

    def __init__(self, app: ASGIApp, meter: metering.Meter, book: QuotaBook) -> None:
        self.app, self.meter, self.book = app, meter, book

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        usage = metering.RequestUsage()
        scope["backsaas.usage"] = usage
        scope["backsaas.quotas"] = self.book
        token = metering.CURRENT.set(usage)
        started = time.perf_counter()
        status, sent = 500, 0

        async def counting_send(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
                warning = usage.quota.warning if usage.quota is not None else None
                if warning:
                    message["headers"] = [*message.get("headers", ()), (WARNING_HEADER_NAME, warning.encode())]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            metering.CURRENT.reset(token)
            if usage.tenant_id is not None:
                self.count(scope, usage, status, sent, (time.perf_counter() - started) * 1000)

    def count(self, scope: Scope, usage: metering.RequestUsage, status: int, sent: int, ms: float) -> None:
        path = scope["path"][len(scope.get("root_path", "")):]
        surface = surface_of(path)
        amounts: dict[str, int] = {metering.latency_metric(ms): 1, "egress_bytes": sent}
        if surface is not None:
            amounts[surface] = 1
            if surface == "function_calls":
                amounts["function_ms"] = max(1, round(ms))
        if status >= 500:
            amounts["errors_5xx"] = 1
        elif status >= 400:
            amounts["errors_4xx"] = 1
        else:
            amounts["rows_written"] = usage.rows_written
        self.meter.add_many(usage.tenant_id or "", amounts)


async def admit(scope: Scope, runtime: Any, method: str, path: str) -> None:
    """Quotas for a request of a resolved tenant: refuses (402 `quota_exceeded`) what a used-up quota
    refuses whole, and keeps the tenant's standing for the write core and the warning header. Nothing
    when metering is off."""
    usage: metering.RequestUsage | None = scope.get("backsaas.usage")
    if usage is None:
        return
    usage.tenant_id = runtime.tenant_id
    book: QuotaBook = scope["backsaas.quotas"]
    limits = scope["backsaas.limits"]
    usage.quota = book.admit(runtime.tenant_id, runtime.slug, runtime.version, limits, method, path)
    if method == "POST" and path == "/auth/v1/signup" and usage.quota is not None:
        await book.admit_signup(runtime.pg_schema, limits)
