"""The gateway's meter: counts every tenant request into the process's `Meter`, and applies quotas.

Called by the gateway's one observing layer (gateway/access.py) at each HTTP request's start and end: it
gives the request a `RequestUsage` (the context variable the write core reports written rows into, and the
tenant's quota standing the write core consults), then, once the response has gone, counts it by the surface
its path names (`rest_calls`, `graphql_calls`, `auth_calls`, `function_calls` and `function_ms`), its status
class (`errors_4xx`, `errors_5xx`), its latency bucket, the body bytes sent (`egress_bytes`) and, when it
succeeded, the rows it wrote. A request that reaches no tenant (unknown, or outside the tenant surfaces)
counts nothing. The counting is one tally in memory: no database round trip (engine/metering.py expands the
tallies into metrics and flushes them in batches).

`admit` is called by the tenant app once the tenant is resolved and the caller authenticated (request
flow step 3): it refuses what a hard quota refuses whole (402) and keeps the tenant's standing for the
write core and for the `X-Quota-Warning` header.
"""

from __future__ import annotations

from contextvars import Token
from typing import Any

from starlette.types import Scope

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
    """The meter's part of each HTTP request (see the module's docstring); `book` holds the quotas."""

    def __init__(self, meter: metering.Meter, book: QuotaBook) -> None:
        self.meter, self.book = meter, book

    def begin(self, scope: Scope) -> tuple[metering.RequestUsage, Token[metering.RequestUsage | None]]:
        """The request's usage, in its scope and the write core's context variable (`end` resets it)."""
        usage = metering.RequestUsage()
        scope["backsaas.usage"] = usage
        scope["backsaas.quotas"] = self.book
        return usage, metering.CURRENT.set(usage)

    def end(self, scope: Scope, usage: metering.RequestUsage, token: Token[metering.RequestUsage | None],
            status: int, sent: int, seconds: float) -> None:
        """Count the request (when it reached a tenant) once its answer has gone."""
        metering.CURRENT.reset(token)
        if usage.tenant_id is not None:
            surface = surface_of(scope["path"][len(scope.get("root_path", "")):])
            self.meter.count_request(usage.tenant_id, surface, status, seconds * 1000, sent, usage.rows_written)


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
