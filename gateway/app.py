"""The HTTP gateway: resolves the tenant of each request and hands it to the engine.

Tenant resolution (DESIGN.md, request flow step 1): the host `{slug}.{BASE_DOMAIN}`, else the path
prefix `/api/tenants/{slug}`, with `/api/platform` for the system tenant. Outside any tenant it
serves `/healthz` and `/readyz`. Errors are rendered here, once, from the engine's error catalogue.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import orjson
import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from engine.database import Database
from engine.errors import BackSaasError
from engine.rest.api import RestApi
from engine.rest.openapi import openapi_document
from engine.runtime import RuntimeRegistry, TenantRuntime
from engine.storage.naming import SYSTEM_TENANT
from gateway.auth import authenticate

log = structlog.get_logger("backsaas.gateway")


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        try:
            return orjson.dumps(content)
        except TypeError:  # e.g. a lone surrogate echoed from the request: escape it rather than fail
            return json.dumps(content, default=str).encode()


def error_response(error: BackSaasError) -> JSONResponse:
    return JSONResponse(error.as_dict(), status_code=error.status)


def not_found(message: str) -> JSONResponse:
    return JSONResponse({"code": "not_found", "message": message, "details": None, "hint": None}, status_code=404)


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    db: Database = request.app.state.db
    try:
        await db.ping()
    except Exception as exc:  # any failure to reach the database means not ready; the reason is logged
        log.warning("readyz.database_unreachable", error=str(exc))
        return JSONResponse({"status": "unavailable", "database": "unreachable"}, status_code=503)
    return JSONResponse({"status": "ok", "database": "ok"})


async def tenant_index(request: Request, runtime: TenantRuntime) -> Response:
    """What a tenant runs: its deployed schema version and entities."""
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
    })


REST_PREFIX = "/rest/v1/"
PLATFORM_BASE = "/api/platform"
TENANTS_BASE = "/api/tenants/"
REST_METHODS = ("GET", "HEAD", "POST", "PATCH", "DELETE")


MAX_BODY = 10 * 1024 * 1024


class PayloadTooLarge(BackSaasError):
    code = "payload_too_large"
    status = 413


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


def request_headers(scope: Scope) -> dict[str, str]:
    """The request's headers by lowercase name; repeated ones joined by commas, as HTTP allows."""
    headers: dict[str, str] = {}
    for key, value in scope["headers"]:
        name, text = key.decode("latin-1").lower(), value.decode("latin-1")
        headers[name] = f"{headers[name]}, {text}" if name in headers else text
    return headers


async def read_body(receive: Receive) -> bytes:
    chunks, size, more = [], 0, True
    while more:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            raise PayloadTooLarge(f"the body is larger than {MAX_BODY} bytes")
        chunks.append(chunk)
        more = message.get("more_body", False)
    return b"".join(chunks)


async def rest_entity(request: Request, runtime: TenantRuntime, entity: str) -> Response | RawResponse:
    """`/rest/v1/{entity}`: the HTTP request handed to the engine's REST dialect, its answer handed back."""
    if request.method not in REST_METHODS:
        return JSONResponse({"code": "method_not_allowed", "message": f"{request.method} is not supported here",
                             "details": None, "hint": f"use one of {', '.join(REST_METHODS)}"},
                            status_code=405, headers={"Allow": ", ".join(REST_METHODS)})
    headers = request_headers(request.scope)
    caller = await authenticate(request.app.state.registry, runtime, headers)
    api = RestApi(runtime, request.app.state.db, caller)
    body = b"" if request.method in ("GET", "HEAD") else await read_body(request.receive)
    result = await api.handle(request.method, entity, request.scope["query_string"], headers, body)
    return RawResponse(result.status, result.headers, result.body)


async def rest_openapi(request: Request, runtime: TenantRuntime) -> Response:
    """`GET /rest/v1/`: the tenant's OpenAPI 3.1 document, built once per runtime and base URL."""
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
}


class TenantApp:
    """ASGI app for everything under a tenant's base URL (`scope["root_path"]` is that base).

    Plain ASGI and outside Starlette's router on purpose: this is the hot path. It renders the engine's
    errors itself and turns anything unexpected into a JSON 500 without a stack trace (which is logged).
    """

    def __init__(self, starlette: Starlette) -> None:
        self.starlette = starlette

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["app"] = self.starlette
        request = Request(scope, receive)
        response: Response | RawResponse
        try:
            try:
                response = await self.respond(request, scope)
            except BackSaasError as error:
                response = error_response(error)
        except Exception:
            log.exception("request.failed", path=scope["path"], tenant=scope.get("backsaas.tenant"))
            response = JSONResponse({"code": "internal_error", "message": "the server failed to answer this request",
                                     "details": None, "hint": None}, status_code=500)
        await response(scope, receive, send)

    async def respond(self, request: Request, scope: Scope) -> Response | RawResponse:
        runtime = await self.starlette.state.registry.get(scope["backsaas.slug"])
        scope["backsaas.tenant"] = runtime.slug
        path = scope["path"][len(scope["root_path"]):]
        if path.startswith(REST_PREFIX) and path != REST_PREFIX:
            return await rest_entity(request, runtime, path[len(REST_PREFIX):])
        handler = TENANT_ROUTES.get((request.method, path))
        return await handler(request, runtime) if handler else not_found(f"no route {request.method} {path or '/'}")


class TenantRouting:
    """Finds the tenant of a request before anything else: the host `{slug}.{BASE_DOMAIN}`, else the
    path `/api/tenants/{slug}/...` or `/api/platform/...`; everything else goes to Starlette."""

    def __init__(self, starlette: Starlette, base_domain: str) -> None:
        self.starlette = starlette
        self.tenant_app = TenantApp(starlette)
        self.suffix = "." + base_domain.lower().strip(".")

    def tenant_of(self, scope: Scope) -> tuple[str, str] | None:
        """(slug, base path) of a tenant request, or None."""
        host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), "").split(":")[0].lower()
        slug = host[: -len(self.suffix)] if host.endswith(self.suffix) else ""
        if slug and "." not in slug:
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
        if scope["type"] == "http":
            found = self.tenant_of(scope)
            if found is not None:
                scope["backsaas.slug"] = found[0]
                scope["root_path"] = scope.get("root_path", "") + found[1]
                await self.tenant_app(scope, receive, send)
                return
        await self.starlette(scope, receive, send)


class AccessLog:
    """One structured log line per request (plain ASGI, no per-request task)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_record(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            log.info("request", method=scope["method"], path=scope["path"], status=status,
                     tenant=scope.get("backsaas.tenant"), ms=round((time.perf_counter() - started) * 1000, 2))


def create_app(database_url: str, *, base_domain: str = "localhost") -> ASGIApp:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        db = Database.open(database_url)
        app.state.db = db
        app.state.registry = registry = RuntimeRegistry(db)
        await registry.start()
        log.info("gateway.started", database=db.name)
        try:
            yield
        finally:
            await registry.close()
            await db.close()
            log.info("gateway.stopped")

    async def unknown_route(request: Request, exc: Exception) -> Response:
        return not_found(f"no route {request.method} {request.url.path}")

    starlette = Starlette(routes=[Route("/healthz", healthz), Route("/readyz", readyz)], lifespan=lifespan,
                          exception_handlers={404: unknown_route})
    return AccessLog(TenantRouting(starlette, base_domain))


def app_from_env() -> ASGIApp:
    """The factory uvicorn imports in each worker; `backsaas serve` sets the variables."""
    from gateway.logs import configure_logging

    configure_logging()
    return create_app(os.environ["BACKSAAS_DATABASE_URL"], base_domain=os.environ.get("BASE_DOMAIN", "localhost"))
