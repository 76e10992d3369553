"""Cross-origin requests on every surface, the tenants' and the platform's, so that browser apps on other
origins (supabase-js, Hasura-style GraphQL clients, the console) can call BackSaas.

Keys and access tokens travel in headers, never in cookies, so any origin is allowed unless a tenant's
settings name its origins (`settings.cors.allowed_origins`), as Supabase does. Preflights are answered
before tenant resolution's authentication runs: they carry no authority (DESIGN.md, wall 1). Requests
without an `Origin` header (servers, curl, the benchmarks) skip all of it.

This module picks the policy of the request's tenant and knows what each answer carries; the gateway's one
observing layer (gateway/access.py) calls it, so that CORS is no layer of its own wrapping `send` again.
Preflights are Starlette's `CORSMiddleware.preflight_response`; the headers of every other answer (errors
and 429s included) are the ones its `simple_response` adds, precomputed once per policy: `Access-Control-
Allow-Origin` (`*`, or the origin when the policy names it), `Access-Control-Expose-Headers`, and `Origin`
added to `Vary`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

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
MAX_POLICIES = 1024  # origins come from tenants' settings: the memo is bounded

ALLOW_ORIGIN = b"access-control-allow-origin"
EXPOSE = (b"access-control-expose-headers", ", ".join(EXPOSED_HEADERS).encode("latin-1"))
SET_HEADERS = frozenset((ALLOW_ORIGIN, EXPOSE[0], b"vary"))  # replaced, not repeated, in an answer

OriginsOf = Callable[[Scope], Awaitable[tuple[str, ...]]]


async def _no_app(scope: Scope, receive: Receive, send: Send) -> None:  # pragma: no cover - never called
    raise RuntimeError("a CORS policy only answers preflights")


class CorsPolicy:
    """One set of allowed origins (`("*",)` for any): the preflight answer and the headers of the others."""

    __slots__ = ("any", "origins", "preflights", "simple")

    def __init__(self, origins: tuple[str, ...]) -> None:
        self.any = "*" in origins
        self.origins = frozenset(origins)
        self.simple: tuple[tuple[bytes, bytes], ...] = ((ALLOW_ORIGIN, b"*"), EXPOSE) if self.any else (EXPOSE,)
        self.preflights = CORSMiddleware(_no_app, allow_origins=origins, allow_methods=METHODS,
                                         allow_headers=ALLOWED_HEADERS, expose_headers=EXPOSED_HEADERS,
                                         max_age=PREFLIGHT_MAX_AGE)

    def preflight(self, scope: Scope) -> Response:
        """The answer to a preflight (`OPTIONS` with `Access-Control-Request-Method`), 400 when refused."""
        return self.preflights.preflight_response(request_headers=Headers(scope=scope))

    def answer_headers(self, origin: str, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """`headers` of an answer (not a preflight) to a request from `origin`, with this policy's added: a new
        list, the answer's own `Vary` values kept before `Origin`."""
        added = self.simple if self.any or origin not in self.origins else \
            (*self.simple, (ALLOW_ORIGIN, origin.encode("latin-1")))
        kept: list[tuple[bytes, bytes]] = []
        vary: list[bytes] = []
        for header in headers:
            if header[0] in SET_HEADERS:
                if header[0] == b"vary":
                    vary.append(header[1])
            else:
                kept.append(header)
        vary.append(b"Origin")
        kept += added
        kept.append((b"vary", b", ".join(vary)))
        return kept


def is_preflight(scope: Scope) -> bool:
    """Whether a request that carries `Origin` is a preflight."""
    return scope["method"] == "OPTIONS" and any(name == b"access-control-request-method" for name, _ in scope["headers"])


class CrossOrigin:
    """The CORS policy of a request's tenant (`origins_of(scope)`: its allowed origins, `("*",)` for any),
    memoised per set of origins."""

    def __init__(self, origins_of: OriginsOf) -> None:
        self.origins_of = origins_of
        self.policies: dict[tuple[str, ...], CorsPolicy] = {}

    def policy(self, origins: tuple[str, ...]) -> CorsPolicy:
        found = self.policies.get(origins)
        if found is None:
            if len(self.policies) >= MAX_POLICIES:
                self.policies.clear()
            found = self.policies[origins] = CorsPolicy(origins)
        return found

    async def policy_of(self, scope: Scope) -> CorsPolicy:
        return self.policy(await self.origins_of(scope))
