"""The HTTP gateway: resolves the tenant of each request and hands it to the engine.

Tenant resolution (DESIGN.md, request flow step 1): the host `{slug}.{BASE_DOMAIN}`, else the path
prefix `/api/tenants/{slug}`, with `/api/platform` for the system tenant. Outside any tenant it
serves `/healthz` and `/readyz`. Errors are rendered here, once, from the engine's error catalogue.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import orjson
import sqlalchemy as sa
import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from engine import audit, catalog, mailer
from engine.audit_trail import AuditSealer
from engine.authz import Caller, unrestricted
from engine.billing.sweeper import BillingSweeper
from engine.database import Database
from engine.errors import (
    BackSaasError,
    DatabaseUnavailable,
    Forbidden,
    InvalidBody,
    InvalidInput,
    Problem,
    QueryParseError,
    RateLimited,
    TenantNotFound,
    Unauthorized,
    is_outage,
)
from engine.gdpr import RestrictedUsers
from engine.graphql.api import GraphQLApi, MalformedRequest, refused_credentials
from engine.identity.gotrue import AuthApi
from engine.identity.throttle import LoginThrottle
from engine.invoke import invoke
from engine.limits import Bounds
from engine.metering import Meter, RequestUsage, metering_enabled
from engine.outbox import Dispatcher, event_deliveries, list_events, redeliver
from engine.outbox import settings_from_env as outbox_settings_from_env
from engine.plans import Plan
from engine.quotas import QuotaBook
from engine.rest.api import RestApi
from engine.rest.openapi import openapi_document
from engine.runtime import RuntimeRegistry, TenantRuntime
from engine.storage.naming import SYSTEM_TENANT
from functions.keys import platform_public_key
from gateway import metrics, probes
from gateway.access import HELD_SECONDS, RequestObserver
from gateway.admin_console import CONSOLE_HOST, AdminConsole, is_console
from gateway.audit import EXPORT_PATH, audit_export
from gateway.auth import ANONYMOUS, RoleNotAllowed, acting_as, authenticate
from gateway.bodies import read_body
from gateway.branding import branding_json, branding_stylesheet
from gateway.cors import ANY_ORIGIN
from gateway.domains import CustomDomains, host_of
from gateway.fairness import TenantGates
from gateway.graphql_ws import serve_graphql_ws
from gateway.ide import STATIC_PREFIX, StaticAssets, graphiql_page, swagger_page, wants_html
from gateway.meter import Metering, admit
from gateway.privacy import PRIVACY_BASE, privacy_endpoint
from gateway.ratelimit import READ_METHODS, RateLimits, with_headers
from gateway.sse import event_stream
from gateway.stripe_webhook import PATH as STRIPE_WEBHOOK_PATH
from gateway.stripe_webhook import stripe_webhook

log = structlog.get_logger("backsaas.gateway")


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        try:
            return orjson.dumps(content)
        except TypeError:  # e.g. a lone surrogate echoed from the request: escape it rather than fail
            return json.dumps(content, default=str).encode()


def error_response(error: BackSaasError) -> JSONResponse:
    headers = {"Retry-After": str(error.retry_after)} if error.retry_after is not None else {}
    if isinstance(error, Unauthorized):
        headers["WWW-Authenticate"] = error.challenge
    return JSONResponse(error.as_dict(), status_code=error.status, headers=headers or None)


def not_found(message: str) -> JSONResponse:
    return JSONResponse({"code": "not_found", "message": message, "details": None, "hint": None}, status_code=404)


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


READY_SECONDS = 3.0  # a database slower than this to answer a probe is not ready either


async def readyz(request: Request) -> Response:
    """Ready when a request would be served: `Database.probe` opens new request connections and runs a
    statement as a tenant role (a connection the process already holds keeps working while the server
    shuts down and refuses every new one)."""
    db: Database = request.app.state.db
    try:
        async with asyncio.timeout(READY_SECONDS):
            await db.probe()
    except Exception as exc:  # any failure to reach the database means not ready; the reason is logged
        log.warning("readyz.database_unreachable", error=f"{type(exc).__name__}: {exc}")
        return JSONResponse({"status": "unavailable", "database": "unreachable"}, status_code=503,
                            headers={"Retry-After": str(DatabaseUnavailable.retry_after)})
    return JSONResponse({"status": "ok", "database": "ok", "connections": db.connection_counts()})


async def tenant_index(request: Request, runtime: TenantRuntime) -> Response:
    """What a tenant runs: its deployed schema version and entities (and, for the platform, its public anon
    key, which Supabase's SDKs need to sign up and in)."""
    base = str(request.url.replace(path=request.scope.get("root_path", ""), query="")).rstrip("/")
    return JSONResponse({
        "tenant": runtime.slug,
        "schema": {"name": runtime.model.name, "version": runtime.version, "checksum": runtime.checksum},
        "entities": [
            {"name": e.name,
             "fields": [{"name": f.name, "type": f.type, "column": f.column, "required": f.required}
                        for f in e.fields if not f.internal]}
            for e in runtime.model.entities
        ],
        "base_url": base,
        **({"anon_key": await platform_public_key(request.app.state.db)} if runtime.slug == SYSTEM_TENANT else {}),
    })


REST_PREFIX = "/rest/v1/"
AUTH_PREFIX = "/auth/v1/"
AUTH_API_VERSION = (b"x-supabase-api-version", b"2024-01-01")  # GoTrue's: its error bodies carry `code`
MAIL_DRAIN_SECONDS = 5.0
FUNCTIONS_PREFIX = "/functions/v1/"
EVENTS_BASE = "/events/v1"
TENANT_SURFACES = ("/rest/v1", "/auth/v1", "/graphql/v1", "/functions/v1")  # what X-Tenant-ID may address
PLATFORM_BASE = "/api/platform"
TENANTS_BASE = "/api/tenants/"
REST_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


class RawResponse:
    """An ASGI response from the engine's (status, headers, body), with nothing computed on the way."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in self.headers]
        headers.append((b"content-length", str(len(self.body)).encode()))
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})


def share_of(runtime: TenantRuntime, plan: Plan, caller: Caller, address: str | None, db: Database
             ) -> tuple[str, int | None]:
    """Whose share of the process a request spends (gateway/fairness.py), and its bound: its tenant's, by its
    plan. The platform serves every tenant's developers from a small pool of its own, so there a share is
    the caller's (the user, else the client's address), bounded by the system tenant's plan and below that
    pool's size: one account's slow requests queue behind its own and leave a connection to the others."""
    bound = plan.limit("concurrent_requests")
    if runtime.slug != SYSTEM_TENANT:
        return runtime.tenant_id, bound
    below_pool = max(1, db.platform_pool_max - 1)
    return f"{runtime.tenant_id}/{caller.user_id or address or caller.key_name}", min(bound or below_pool, below_pool)


CONNECTION_CLOSE = (b"connection", b"close")
LARGE_BODY_BYTES = 64 * 1024


def sends_large_body(scope: Scope) -> bool:
    """Whether the request announced a body of more than `LARGE_BODY_BYTES`, or one of unknown length (chunked).

    A refusal of such a request (401, 413, 429, ...) closes the connection (`Connection: close`): on a
    connection kept alive, the server would go on receiving and parsing the rest of a body it refused,
    which is how a client that repeats a refused multi-megabyte request would spend the process's time."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            return not value.isdigit() or int(value) > LARGE_BODY_BYTES
        if name == b"transfer-encoding":
            return True
    return False


def request_headers(scope: Scope) -> dict[str, str]:
    """The request's headers by lowercase name; repeated ones joined by commas, as HTTP allows."""
    headers: dict[str, str] = {}
    for key, value in scope["headers"]:
        name, text = key.decode("latin-1").lower(), value.decode("latin-1")
        headers[name] = f"{headers[name]}, {text}" if name in headers else text
    return headers


async def rest_entity(request: Request, runtime: TenantRuntime, entity: str) -> Response | RawResponse:
    """`/rest/v1/{entity}`: the HTTP request handed to the engine's REST dialect, its answer handed back
    (read from the scope itself: Starlette's `Request` properties cost a call each)."""
    scope = request.scope
    method = scope["method"]
    if method not in REST_METHODS:
        return JSONResponse({"code": "method_not_allowed", "message": f"{method} is not supported here",
                             "details": None, "hint": f"use one of {', '.join(REST_METHODS)}"},
                            status_code=405, headers={"Allow": ", ".join(REST_METHODS)})
    headers = scope["backsaas.headers"]
    if method == "GET" and "text/event-stream" in headers.get("accept", ""):
        return await event_stream(request, runtime, entity)
    api = RestApi(runtime, scope["app"].state.db, scope["backsaas.caller"], limits=scope["backsaas.limits"])
    body = b"" if method in ("GET", "HEAD") else await read_body(request)
    result = await api.handle(method, entity, scope["query_string"], headers, body)
    return RawResponse(result.status, result.headers, result.body)


async def auth_endpoint(request: Request, runtime: TenantRuntime, route: str) -> RawResponse:
    """`/auth/v1/{route}`: the tenant's identity endpoints (GoTrue protocol)."""
    headers = request.scope["backsaas.headers"]
    registry: RuntimeRegistry = request.app.state.registry
    client = request.scope.get("client")
    api = AuthApi(runtime, request.app.state.db, await registry.keyring(), request.app.state.throttle,
                  request.scope["backsaas.caller"], client[0] if client else None)
    body = b"" if request.method in ("GET", "HEAD") else await read_body(request)
    result = await api.handle(request.method, route, request.scope["query_string"], headers, body)
    return RawResponse(result.status, result.headers, result.body)


async def graphql_endpoint(request: Request, runtime: TenantRuntime) -> Response | RawResponse:
    """`/graphql/v1`: GraphQL over HTTP (GET or POST); a browser's GET without a query gets GraphiQL. A POST
    carries everything in its body: its query string is not parsed."""
    scope = request.scope
    method = scope["method"]
    if method not in ("GET", "POST"):
        return JSONResponse({"code": "method_not_allowed", "message": f"{method} is not supported here",
                             "details": None, "hint": "use GET or POST"}, status_code=405, headers={"Allow": "GET, POST"})
    if method == "GET" and "query" not in request.query_params \
            and wants_html(scope["backsaas.headers"].get("accept", "")):
        return HTMLResponse(graphiql_page(runtime.slug))
    api = GraphQLApi(runtime, scope["app"].state.db, scope["backsaas.caller"], scope["backsaas.limits"])
    try:
        body = await read_body(request) if method == "POST" else b""
    except InvalidBody as error:  # a body no GraphQL request can hold: in GraphQL's shape, as the API's own refusals
        answer = MalformedRequest.of_body(error).answer()
        return RawResponse(answer.status, answer.headers, answer.body)
    result = await api.handle(method, request.query_params if method == "GET" else {}, body)
    return RawResponse(result.status, result.headers, result.body)


async def function_endpoint(request: Request, runtime: TenantRuntime, name: str) -> Response | RawResponse:
    """`/functions/v1/{name}`: a function the tenant's schema exposes (POST JSON)."""
    if request.method != "POST":
        return JSONResponse({"code": "method_not_allowed", "message": f"{request.method} is not supported here",
                             "details": None, "hint": "use POST"}, status_code=405, headers={"Allow": "POST"})
    status, body = await invoke(runtime, request.app.state.db, request.scope["backsaas.caller"], name,
                                await read_body(request), Bounds.of_plan(request.scope.get("backsaas.limits")))
    return RawResponse(status, [("Content-Type", "application/json")] if body else [], body)


EVENT_STATUSES = ("pending", "delivering", "delivered", "dead")


async def events_endpoint(request: Request, runtime: TenantRuntime, rest: str) -> Response:
    """`/events/v1`: the tenant's outbox for its admins — `GET` lists events (`?status=dead`), `GET
    /events/v1/{id}/deliveries` is an event's delivery log, `POST /events/v1/{id}/redeliver` puts a dead or
    delivered event back in the queue."""
    caller = request.scope["backsaas.caller"]
    if not unrestricted(caller):
        raise Forbidden("the outbox is for the tenant's admins (admin or service)")
    db: Database = request.app.state.db
    if request.method == "GET" and rest in ("", "/"):
        status = request.query_params.get("status")
        if status is not None and status not in EVENT_STATUSES:
            raise InvalidInput(f"status must be one of {', '.join(EVENT_STATUSES)}",
                               details=[Problem("status", f"'{status}' is not a status")])
        return JSONResponse(await list_events(db, runtime.tenant_id, status))
    parts = rest.strip("/").split("/")
    if len(parts) != 2 or (request.method, parts[1]) not in (("POST", "redeliver"), ("GET", "deliveries")):
        return not_found(f"no route {request.method} /events/v1{rest}")
    try:
        event_id = str(uuid.UUID(parts[0]))
    except ValueError:
        raise InvalidInput("not an event id", details=[Problem("id", f"'{parts[0]}' is not a UUID")]) from None
    if parts[1] == "deliveries":
        log = await event_deliveries(db, runtime.tenant_id, event_id)
        return JSONResponse(log) if log is not None else not_found(f"tenant '{runtime.slug}' has no event {event_id}")
    if not await redeliver(db, runtime.slug, event_id):
        return not_found(f"tenant '{runtime.slug}' has no dead or delivered event {event_id}")
    return JSONResponse({"id": event_id, "status": "pending"}, status_code=202)


async def tenant_settings(request: Request, runtime: TenantRuntime) -> Response:
    """`GET {tenant}/settings`: the tenant's settings (general, features, limits, integrations), read-only,
    for its admins; they are written through the platform (`tenants.settings`, checked by its JSON Schema)."""
    if not unrestricted(request.scope["backsaas.caller"]):
        raise Forbidden("the tenant's settings are for its admins (admin or service)")
    tenants = catalog.platform_tables()["tenants"]
    async with request.app.state.db.engine.connect() as conn:
        settings = await conn.scalar(sa.select(tenants.c.settings).where(tenants.c.id == runtime.tenant_id))
    return JSONResponse(settings or {})


async def rest_openapi(request: Request, runtime: TenantRuntime) -> Response:
    """`GET /rest/v1/`: the tenant's OpenAPI 3.1 document, built once per runtime and base URL (Swagger UI
    showing it, for a browser)."""
    if wants_html(request.headers.get("accept", "")):
        return HTMLResponse(swagger_page(runtime.slug))
    server = str(request.url.replace(path=request.scope.get("root_path", "") + "/rest/v1", query=""))
    key = ("openapi", server)
    document = runtime.statements.get(key)
    if document is None:
        document = runtime.statements[key] = orjson.dumps(openapi_document(runtime, server))
    return Response(document, media_type="application/openapi+json")


TenantHandler = Callable[[Request, TenantRuntime], Awaitable[Response]]
TENANT_ROUTES: dict[tuple[str, str], TenantHandler] = {
    ("GET", "/"): tenant_index, ("GET", ""): tenant_index,
    ("GET", "/rest/v1/"): rest_openapi, ("GET", "/rest/v1"): rest_openapi,
    ("GET", "/settings"): tenant_settings,
    ("GET", EXPORT_PATH): audit_export,  # the platform's only: gateway/audit.py
    ("GET", "/branding"): branding_json, ("GET", "/branding.css"): branding_stylesheet,
}
GRAPHQL_PATHS = ("/graphql/v1", "/graphql/v1/")


class TenantApp:
    """ASGI app for everything under a tenant's base URL (`scope["root_path"]` is that base).

    Plain ASGI and outside Starlette's router on purpose: this is the hot path. It renders the engine's
    errors itself and turns anything unexpected into a JSON 500 without a stack trace (which is logged).
    """

    def __init__(self, starlette: Starlette) -> None:
        self.starlette = starlette
        self.gates = TenantGates()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["app"] = self.starlette
        request = Request(scope, receive)
        response: Response | RawResponse
        refused = False
        try:
            try:
                response = await self.respond(request, scope)
            except BackSaasError as error:
                if error.status == 403 and "backsaas.tenant_id" in scope:  # every denial is audited
                    await audit.denied(self.starlette.state.db, scope["backsaas.tenant_id"], error.message, scope)
                if isinstance(error, RateLimited):  # answered after a pause (gateway/ratelimit.py `hold`)
                    scope[HELD_SECONDS] = await self.starlette.state.rate_limits.hold(error)
                response, refused = error_response(error), True
                if (error.status == 401 or isinstance(error, RoleNotAllowed)) \
                        and scope["path"][len(scope["root_path"]):] in GRAPHQL_PATHS:
                    answer = refused_credentials(error)
                    response = RawResponse(answer.status, answer.headers, answer.body)
        except Exception as exc:
            if is_outage(exc):  # the database went away under the request: a 503 to retry, not a bug
                log.warning("request.database_unavailable", path=scope["path"], tenant=scope.get("backsaas.tenant"),
                            error=f"{type(exc).__name__}: {exc}")
                await error_response(DatabaseUnavailable())(scope, receive, send)
                return
            log.exception("request.failed", path=scope["path"], tenant=scope.get("backsaas.tenant"))
            response = JSONResponse({"code": "internal_error", "message": "the server failed to answer this request",
                                     "details": None, "hint": None}, status_code=500)
        extra = scope["backsaas.ratelimit"].headers() if "backsaas.ratelimit" in scope else []
        if scope["path"].startswith(AUTH_PREFIX, len(scope["root_path"])):  # supabase-js then reads errors' `code`
            extra.append(AUTH_API_VERSION)
        if refused and sends_large_body(scope):
            extra.append(CONNECTION_CLOSE)
        await response(scope, receive, with_headers(send, extra) if extra else send)

    async def websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """WebSockets of a tenant: GraphQL subscriptions at /graphql/v1; refused before accepting otherwise."""
        path = scope["path"][len(scope["root_path"]):]
        if path not in GRAPHQL_PATHS:
            await send({"type": "websocket.close", "code": 4404, "reason": "no such endpoint"})
            return
        registry: RuntimeRegistry = self.starlette.state.registry
        try:
            runtime, plan = await self.named_tenant(scope)
        except BackSaasError as error:
            code = {404: 4404, 429: 4429}.get(error.status, 4403)
            await send({"type": "websocket.close", "code": code, "reason": error.code})
            return
        # opening a socket spends the tenant's windows and its address's as an anonymous request does (the
        # credentials come later, in connection_init): a tenant past its budget opens no new subscriptions
        client = scope.get("client")
        address = client[0] if client else None
        window = await self.starlette.state.rate_limits.admit(runtime.slug, runtime.tenant_id, plan, ANONYMOUS, address)
        if window is not None and window.refused:
            await send({"type": "websocket.close", "code": 4429, "reason": "rate_limited"})
            return
        await serve_graphql_ws(WebSocket(scope, receive, send), registry, runtime, plan.limits, self.starlette.state.db,
                               request_headers(scope), scope.get("backsaas.tenant_header", False),
                               functools.partial(self.socket_operation, runtime, plan, address))

    @asynccontextmanager
    async def socket_operation(self, runtime: TenantRuntime, plan: Plan, address: str | None, caller: Caller
                               ) -> AsyncIterator[Caller]:
        """A query or mutation of a GraphQL socket, as an HTTP request of the tenant's: its rate windows (a
        429 as an `error` message, after the pause an HTTP refusal takes: the operation keeps its place in
        the socket's cap meanwhile), its quotas (402), its share of the tenant's slots, the meter's count as
        a GraphQL call; it acts as `caller`, marked restricted whose processing is (GDPR: no writes)."""
        rate_limits: RateLimits = self.starlette.state.rate_limits
        window = await rate_limits.admit(runtime.slug, runtime.tenant_id, plan, caller, address)
        refusal = window.error() if window is not None and window.refused else \
            rate_limits.writes_refused(runtime.slug, runtime.tenant_id, plan)  # an operation may be a mutation
        if refusal is not None:
            await rate_limits.hold(refusal)
            raise refusal
        metering: Metering | None = self.starlette.state.metering
        request = {"path": GRAPHQL_PATHS[0], "root_path": "", "backsaas.limits": plan.limits}
        usage, token = metering.begin(request) if metering is not None else (None, None)
        started, status = time.perf_counter(), 200
        try:
            await admit(request, runtime, "POST", GRAPHQL_PATHS[0])
            caller = await self.as_restricted(runtime, caller)
            self.starlette.state.registry.note_call(runtime)
            async with self.gates.slot(*share_of(runtime, plan, caller, address, self.starlette.state.db)):
                yield caller
        except BackSaasError as error:
            status = error.status
            raise
        finally:
            if usage is not None:
                rate_limits.wrote(runtime.slug, runtime.tenant_id, plan, usage.rows_written)
            if metering is not None and usage is not None and token is not None:
                metering.end(request, usage, token, status, 0, time.perf_counter() - started)

    async def as_restricted(self, runtime: TenantRuntime, caller: Caller) -> Caller:
        """The caller, marked restricted when its user's processing is (GDPR: their writes are refused)."""
        if caller.user_id is not None and await self.starlette.state.privacy.restricted(runtime, caller.user_id):
            return dataclasses.replace(caller, restricted=True)
        return caller

    async def named_tenant(self, scope: Scope) -> tuple[TenantRuntime, Plan]:
        """The active tenant the request names, and its plan. A name this process does not hold costs a
        query, which an address naming no tenant pays from its anonymous budget (gateway/probes.py)."""
        registry: RuntimeRegistry = self.starlette.state.registry
        slug = scope["backsaas.slug"]
        held = registry.knows(slug)
        if not held:
            await probes.before_lookup(self.starlette.state.rate_limits, scope)
        try:
            return await registry.resolve_plan(slug)
        except TenantNotFound:
            if not held:
                await probes.unknown_name(self.starlette.state.rate_limits, scope)
            raise

    async def respond(self, request: Request, scope: Scope) -> Response | RawResponse:
        if b"%00" in scope["query_string"]:  # PostgreSQL's text holds no NUL: refused once, here, not by a query
            raise QueryParseError("the query string holds a NUL character (%00), which no value may hold",
                                  details=[Problem("query", "a NUL character")])
        registry = self.starlette.state.registry
        runtime, plan = await self.named_tenant(scope)
        scope["backsaas.limits"], scope["backsaas.plan"] = plan.limits, plan
        scope["backsaas.tenant"] = runtime.slug
        scope["backsaas.tenant_id"] = runtime.tenant_id
        await admit(scope, runtime, request.method, scope["path"][len(scope["root_path"]):])  # quotas: 402 past one
        scope["backsaas.headers"] = headers = request_headers(scope)
        rate_limits: RateLimits = self.starlette.state.rate_limits
        client = scope.get("client")
        address = client[0] if client else None
        suspect = await rate_limits.refused_address(runtime.tenant_id, address)  # its failures spent its budget
        if suspect is not None:
            raise suspect.error()
        try:
            scope["backsaas.caller"] = await authenticate(registry, runtime, headers,
                                                          tenant_from_header=scope.get("backsaas.tenant_header", False))
        except BackSaasError as error:  # a wrong key or token spends its address's anonymous budget
            if error.status == 401 and (refused := await rate_limits.admit_failed(runtime.slug, runtime.tenant_id,
                                                                                  address)) is not None:
                raise refused.error() from None
            raise
        async with self.gates.slot(*share_of(runtime, plan, scope["backsaas.caller"], address,  # its share
                                             self.starlette.state.db)):
            try:
                return await self.serve(request, scope, runtime, plan, address)
            finally:  # the rows it wrote, whether it then succeeded or not: their work is done
                usage: RequestUsage | None = scope.get("backsaas.usage")
                if usage is not None:
                    rate_limits.wrote(runtime.slug, runtime.tenant_id, plan, usage.rows_written)

    async def serve(self, request: Request, scope: Scope, runtime: TenantRuntime, plan: Plan, address: str | None
                    ) -> Response | RawResponse:
        """`respond`'s rest, within one of the tenant's slots: the rate windows, then the route."""
        registry = self.starlette.state.registry
        rate_limits: RateLimits = self.starlette.state.rate_limits
        window = await rate_limits.admit(runtime.slug, runtime.tenant_id, plan, scope["backsaas.caller"], address)
        if window is not None:
            scope["backsaas.ratelimit"] = window
            if window.refused:
                raise window.error()
        if request.method not in READ_METHODS:  # the rows its writes changed are paid for (gateway/ratelimit.py)
            spent = rate_limits.writes_refused(runtime.slug, runtime.tenant_id, plan)
            if spent is not None:
                raise spent
        path = scope["path"][len(scope["root_path"]):]
        caller = scope["backsaas.caller"]
        if path in GRAPHQL_PATHS:  # Hasura's x-hasura-role: one of the caller's roles (or, for a service key, any)
            caller = scope["backsaas.caller"] = acting_as(caller, scope["backsaas.headers"], runtime)
        scope["backsaas.caller"] = await self.as_restricted(runtime, caller)
        registry.note_call(runtime)
        if path.startswith(REST_PREFIX) and path != REST_PREFIX:
            return await rest_entity(request, runtime, path[len(REST_PREFIX):])
        if path.startswith(AUTH_PREFIX):
            return await auth_endpoint(request, runtime, path[len(AUTH_PREFIX):])
        if path in GRAPHQL_PATHS:
            return await graphql_endpoint(request, runtime)
        if path == EVENTS_BASE or path.startswith(EVENTS_BASE + "/"):
            return await events_endpoint(request, runtime, path[len(EVENTS_BASE):])
        if path.startswith(FUNCTIONS_PREFIX):
            return await function_endpoint(request, runtime, path[len(FUNCTIONS_PREFIX):])
        if path == PRIVACY_BASE or path.startswith(PRIVACY_BASE + "/"):
            return await privacy_endpoint(request, runtime, path[len(PRIVACY_BASE):])
        handler = TENANT_ROUTES.get((request.method, path))
        return await handler(request, runtime) if handler else not_found(f"no route {request.method} {path or '/'}")


class TenantRouting:
    """Finds the tenant of a request before anything else: the host `{slug}.{BASE_DOMAIN}`, else the
    path `/api/tenants/{slug}/...` or `/api/platform/...`; everything else goes to Starlette."""

    def __init__(self, starlette: Starlette, base_domain: str) -> None:
        self.starlette = starlette
        self.tenant_app = TenantApp(starlette)
        self.assets = StaticAssets()
        self.console = AdminConsole()
        self.suffix = "." + base_domain.lower().strip(".")
        self.domains = CustomDomains(starlette.state, base_domain)

    async def resolve(self, scope: Scope) -> tuple[str, str] | None:
        """(slug, base path) of a tenant request: a tenant's verified custom domain first (gateway/domains.py,
        the tenant's whole API at its root), else `tenant_of`."""
        host = host_of(scope["headers"])
        custom = None
        if self.domains.candidate(host):
            held = self.domains.knows(host)
            if not held:  # a query: an address whose unknown names spent its budget gets 429 (gateway/probes.py)
                await probes.before_lookup(self.starlette.state.rate_limits, scope)
            custom = await self.domains.slug_of(host)
            if custom is None and not held:
                await probes.unknown_name(self.starlette.state.rate_limits, scope)
        return (custom, "") if custom is not None else self.tenant_of(scope)

    def tenant_of(self, scope: Scope) -> tuple[str, str] | None:
        """(slug, base path) of a tenant request by its host or path, or None."""
        host = header_text(scope, b"host").split(":")[0].lower()
        slug = host[: -len(self.suffix)] if host.endswith(self.suffix) else ""
        if slug and "." not in slug and slug != CONSOLE_HOST:
            return slug, ""
        path: str = scope["path"]
        if path == PLATFORM_BASE or path.startswith(PLATFORM_BASE + "/"):
            return SYSTEM_TENANT, PLATFORM_BASE
        if path.startswith(TENANTS_BASE):
            slug = path[len(TENANTS_BASE):].split("/", 1)[0]
            if slug:
                return slug, TENANTS_BASE + slug
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(STATIC_PATHS):
            await self.assets(scope, receive, send)  # on every host, tenants' included
            return
        if scope["type"] == "http" and scope["path"] == STRIPE_WEBHOOK_PATH:
            await self.starlette(scope, receive, send)  # the platform's, but not the system tenant's API
            return
        if scope["type"] in ("http", "websocket"):
            try:
                found = await self.resolve(scope)
            except BackSaasError as error:  # the database is down: answered readably
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1013, "reason": error.code})
                else:
                    await error_response(error)(scope, receive, send)
                return
            named = header_text(scope, b"x-tenant-id").strip().lower()
            if found is not None and named and named != found[0]:
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 4400, "reason": "X-Tenant-ID contradicts the URL"})
                    return
                await error_response(InvalidInput(f"X-Tenant-ID '{named}' contradicts the tenant of the URL "
                                                  f"'{found[0]}'"))(scope, receive, send)
                return
            if found is None and named and scope["path"].startswith(TENANT_SURFACES):
                found = (named, "")  # honoured only for a platform admin or the tenant's service key
                scope["backsaas.tenant_header"] = True
            if found is not None:
                scope["backsaas.slug"] = found[0]
                scope["root_path"] = scope.get("root_path", "") + found[1]
                if scope["type"] == "websocket":
                    await self.tenant_app.websocket(scope, receive, send)
                else:
                    await self.tenant_app(scope, receive, send)
                return
            if scope["type"] == "http" and (is_console(scope["path"]) or (scope["path"] == "/" and self.on_console_host(scope))):
                await self.console(scope, receive, send)
                return
        await self.starlette(scope, receive, send)

    def on_console_host(self, scope: Scope) -> bool:
        return header_text(scope, b"host").split(":")[0].lower() == CONSOLE_HOST + self.suffix


STATIC_PATHS = STATIC_PREFIX + "/"


def header_text(scope: Scope, name: bytes) -> str:
    """The first value of the request header `name` (lowercase), or ""."""
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return ""


async def start_meter(meter: Meter, book: QuotaBook) -> None:
    """Start the meter's flusher, refreshing the quotas after each flush, and once now (a database that is
    down now is tried again after the first flush)."""
    meter.after_flush.append(book.refresh)
    try:
        await book.refresh()
    except Exception as exc:  # the quotas start open; the next refresh, after the first flush, tries again
        log.warning("quotas.refresh_failed", error=f"{type(exc).__name__}: {exc}")
    meter.start()


DISPATCHER_STOP_SECONDS = 5.0


async def stop_dispatcher(dispatcher: asyncio.Task[None]) -> None:
    """Cancel the outbox dispatcher and wait for it, a tenth of a second at a time: on shutdown a task was
    seen left unwoken after its query had finished (1 stop in 4 to 6 hung for good), and a loop that turns
    on a timer runs its wakeup. Past the limit the stop goes on without it: an event it held is delivered
    again when its lease runs out."""
    dispatcher.cancel()
    for _ in range(int(DISPATCHER_STOP_SECONDS * 10)):
        if dispatcher.done():
            break
        await asyncio.sleep(0.1)
    if not dispatcher.done():
        log.warning("outbox.dispatcher_not_stopped", seconds=DISPATCHER_STOP_SECONDS)
    elif not dispatcher.cancelled() and dispatcher.exception() is not None:
        log.error("outbox.dispatcher_failed", error=repr(dispatcher.exception()))


def create_app(database_url: str, *, base_domain: str = "localhost", jwt_secret: str | None = None,
               redis_url: str | None = None, outbox: dict[str, Any] | None = None,
               rate_limits: dict[str, Any] | None = None, metering: dict[str, Any] | None = None) -> ASGIApp:
    """The gateway; `outbox` tunes its dispatcher (`Dispatcher`'s keyword arguments), `rate_limits` the rate
    limiter (`RateLimits`' keyword arguments), `metering` the meter and quotas (`enabled`, default
    `BACKSAAS_METERING`; `flush_seconds`; `QuotaBook`'s `soft_percent` and `measure_seconds`)."""
    metering = dict(metering or {})
    meter = Meter(None, metering.pop("flush_seconds", None)) if metering.pop("enabled", metering_enabled()) else None
    book = QuotaBook(None, meter, **metering) if meter is not None else None

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        db = Database.open(database_url)
        app.state.db = db
        app.state.registry = registry = RuntimeRegistry(db, jwt_secret=jwt_secret)
        app.state.throttle = LoginThrottle(redis_url)
        app.state.privacy = RestrictedUsers(registry)
        app.state.rate_limits = RateLimits(redis_url, **{"on_refused": metrics.rate_limited, **(rate_limits or {})})
        app.state.outbox_metrics = metrics.OutboxCollector()  # /metrics reads the outbox's figures when scraped
        pools = asyncio.create_task(metrics.pool_recorder(db))
        await registry.start()
        if meter is not None and book is not None:
            meter.db = book.db = db
            await start_meter(meter, book)
        dispatcher = asyncio.create_task(Dispatcher(db, registry, meter=meter, quotas=book, **(outbox or {})).run())
        sweeper = BillingSweeper(db).start()  # grace periods ending, manual trials and periods
        audit_sealer = AuditSealer(db).start()  # audit entries chained into their tenants' chains each second
        mailer.log_configuration()  # where this process's mails go: SMTP, or the log when none is configured
        registry.heap.settle(collect=True)  # what the process loaded to start stays for its life (engine/heap.py)
        log.info("gateway.started", database=db.name)
        try:
            yield
        finally:
            await stop_dispatcher(dispatcher)
            await sweeper.stop()
            await audit_sealer.stop()
            if meter is not None:
                await meter.close()  # what was counted since the last flush
            await registry.close()
            await app.state.rate_limits.close()
            await mailer.current().drain(MAIL_DRAIN_SECONDS)  # mails still queued get their chance to go
            pools.cancel()
            metrics.process_ended()
            await db.close()
            log.info("gateway.stopped")

    async def unknown_route(request: Request, exc: Exception) -> Response:
        return not_found(f"no route {request.method} {request.url.path}")

    starlette = Starlette(routes=[Route("/healthz", healthz), Route("/readyz", readyz),
                                  Route(metrics.METRICS_PATH, metrics.metrics_endpoint),
                                  Route(STRIPE_WEBHOOK_PATH, stripe_webhook, methods=["POST"])], lifespan=lifespan,
                          exception_handlers={404: unknown_route})
    starlette.state.metering = Metering(meter, book) if meter is not None and book is not None else None
    routing = TenantRouting(starlette, base_domain)

    async def origins_of(scope: Scope) -> tuple[str, ...]:
        try:
            found = await routing.resolve(scope)
            if found is None:
                return ANY_ORIGIN
            return await starlette.state.registry.cors_origins(found[0])
        except BackSaasError:  # the database is down: the request itself answers 503, readably
            return ANY_ORIGIN

    return RequestObserver(routing, origins_of, starlette.state.metering)


def app_from_env() -> ASGIApp:
    """The factory uvicorn imports in each worker; `backsaas serve` sets the variables."""
    from gateway.logs import configure_logging

    configure_logging()
    outbox = outbox_settings_from_env()  # `serve` checked them before starting: a lease a delivery outlasts is refused
    return create_app(os.environ["BACKSAAS_DATABASE_URL"], base_domain=os.environ.get("BASE_DOMAIN", "localhost"),
                      jwt_secret=os.environ.get("BACKSAAS_JWT_SECRET") or None,
                      redis_url=os.environ.get("REDIS_URL") or None, outbox=outbox)
