"""The HTTP gateway: a Starlette app that resolves the tenant of each request and hands it on.

Tenant resolution (DESIGN.md, request flow step 1): the host `{slug}.{BASE_DOMAIN}`, else the path
prefix `/api/tenants/{slug}`, with `/api/platform` for the system tenant. Outside any tenant it
serves `/healthz` and `/readyz`. Errors are rendered here, once, from the engine's error catalogue.
"""

from __future__ import annotations

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
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from engine.database import Database
from engine.errors import BackSaasError
from engine.rest.api import RestApi
from engine.rest.openapi import openapi_document
from engine.runtime import RuntimeRegistry, TenantRuntime
from engine.storage.naming import SYSTEM_TENANT

log = structlog.get_logger("backsaas.gateway")


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


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
REST_METHODS = ("GET", "HEAD", "POST", "PATCH", "DELETE")


async def rest_entity(request: Request, runtime: TenantRuntime, entity: str) -> Response:
    """`/rest/v1/{entity}`: the HTTP request handed to the engine's REST dialect, its answer handed back."""
    if request.method not in REST_METHODS:
        return JSONResponse({"code": "method_not_allowed", "message": f"{request.method} is not supported here",
                             "details": None, "hint": f"use one of {', '.join(REST_METHODS)}"},
                            status_code=405, headers={"Allow": ", ".join(REST_METHODS)})
    api = RestApi(runtime, request.app.state.db)
    try:
        result = await api.handle(request.method, entity, request.query_params.multi_items(), request.headers,
                                  await request.body())
    except BackSaasError as error:
        return error_response(error)
    return Response(result.body, status_code=result.status, headers=dict(result.headers))


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
    """ASGI app for everything under a tenant's base URL.

    The slug is fixed (`/api/platform`), in the path (`/api/tenants/{slug}`, mounted: `root_path` is then
    the tenant's base) or in the host (`HostTenancy`: the base is the server's root).
    """

    def __init__(self, fixed_slug: str | None = None) -> None:
        self.fixed_slug = fixed_slug

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        slug = self.fixed_slug or scope.get("backsaas.slug") or request.path_params.get("slug", "")
        try:
            runtime = await request.app.state.registry.get(slug)
        except BackSaasError as error:
            await error_response(error)(scope, receive, send)
            return
        scope["backsaas.tenant"] = runtime.slug
        path = scope["path"][len(scope.get("root_path", "")):]
        if path.startswith(REST_PREFIX) and path != REST_PREFIX:
            response = await rest_entity(request, runtime, path[len(REST_PREFIX):])
        else:
            handler = TENANT_ROUTES.get((request.method, path))
            response = await handler(request, runtime) if handler else not_found(f"no route {request.method} {path or '/'}")
        await response(scope, receive, send)


class HostTenancy:
    """Routes `{slug}.{BASE_DOMAIN}` hosts to the tenant app before path routing sees them."""

    def __init__(self, app: ASGIApp, base_domain: str) -> None:
        self.app = app
        self.suffix = "." + base_domain.lower().strip(".")
        self.tenant_app = TenantApp()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), "").split(":")[0].lower()
            slug = host[: -len(self.suffix)] if host.endswith(self.suffix) else ""
            if slug and "." not in slug:
                scope["backsaas.slug"] = slug
                await self.tenant_app(scope, receive, send)
                return
        await self.app(scope, receive, send)


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


def create_app(database_url: str, *, base_domain: str = "localhost") -> Starlette:
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

    app = Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Mount("/api/platform", app=TenantApp(SYSTEM_TENANT)),
            Mount("/api/tenants/{slug}", app=TenantApp()),
        ],
        lifespan=lifespan,
        exception_handlers={404: unknown_route},
    )
    app.add_middleware(HostTenancy, base_domain=base_domain)
    app.add_middleware(AccessLog)
    return app


def app_from_env() -> Starlette:
    """The factory uvicorn imports in each worker; `backsaas serve` sets the variables."""
    from gateway.logs import configure_logging

    configure_logging()
    return create_app(os.environ["BACKSAAS_DATABASE_URL"], base_domain=os.environ.get("BASE_DOMAIN", "localhost"))
