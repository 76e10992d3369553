"""Cross-origin requests on every surface, the tenants' and the platform's, so that browser apps on other
origins (supabase-js, Hasura-style GraphQL clients, the console) can call BackSaas.

Keys and access tokens travel in headers, never in cookies, so any origin is allowed unless a tenant's
settings name its origins (`settings.cors.allowed_origins`), as Supabase does. Preflights are answered
here, before tenant resolution's authentication runs: they carry no authority (DESIGN.md, wall 1).
Starlette's `CORSMiddleware` speaks the protocol; this module only picks the policy of the request's
tenant. Requests without an `Origin` header (servers, curl, the benchmarks) skip it entirely.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

ANY_ORIGIN: tuple[str, ...] = ("*",)
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
# what Supabase's and PostgREST's clients send, and our own request and tenant headers
ALLOWED_HEADERS = ("apikey", "authorization", "content-type", "prefer", "range", "range-unit", "x-client-info",
                   "accept-profile", "content-profile", "x-supabase-api-version", "x-request-id", "x-tenant-id",
                   "last-event-id", "x-region")
# what a browser script may read of a response: paging, upsert outcomes, tracing and throttling
EXPOSED_HEADERS = ("Content-Range", "Range-Unit", "Location", "Preference-Applied", "X-Request-Id", "Retry-After",
                   "RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset", "Content-Profile",
                   "X-Supabase-Api-Version")
PREFLIGHT_MAX_AGE = 3600

OriginsOf = Callable[[Scope], Awaitable[tuple[str, ...]]]


class CrossOrigin:
    """Wraps the gateway: a request with an `Origin` header goes through the CORS policy of its tenant
    (`origins_of(scope)`: the allowed origins, `("*",)` for any)."""

    def __init__(self, app: ASGIApp, origins_of: OriginsOf) -> None:
        self.app = app
        self.origins_of = origins_of
        self.policies: dict[tuple[str, ...], CORSMiddleware] = {}

    def policy(self, origins: tuple[str, ...]) -> CORSMiddleware:
        found = self.policies.get(origins)
        if found is None:
            if len(self.policies) > 1024:  # origins come from tenants' settings: keep the memo bounded
                self.policies.clear()
            found = self.policies[origins] = CORSMiddleware(
                self.app, allow_origins=origins, allow_methods=METHODS, allow_headers=ALLOWED_HEADERS,
                expose_headers=EXPOSED_HEADERS, max_age=PREFLIGHT_MAX_AGE)
        return found

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not any(name == b"origin" for name, _ in scope["headers"]):
            await self.app(scope, receive, send)
            return
        await self.policy(await self.origins_of(scope))(scope, receive, send)
