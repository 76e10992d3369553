"""`{tenant}/branding` (JSON) and `{tenant}/branding.css` (CSS custom properties): a tenant's white-label.

Public on purpose: an app shows its tenant's brand on the sign-in page, before anyone signs in, and a
`<link rel="stylesheet">` sends no credentials. Credentials that are sent are still checked by the
gateway first (another tenant's key or token is 401 before this runs). The plan must include
`custom_branding` (402 `plan_feature_required` otherwise). Both answers carry a strong ETag of their body and
`Cache-Control: public, max-age=60`; `If-None-Match` with that tag answers 304 without a body.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import orjson
import sqlalchemy as sa
from starlette.requests import Request
from starlette.responses import Response

from engine import catalog
from engine.plans import Plan, plan_of, require_feature
from engine.runtime import TenantRuntime
from functions.branding import FEATURE, branding_css, branding_of

CACHE_CONTROL = "public, max-age=60"


async def tenant_branding_settings(request: Request, runtime: TenantRuntime) -> Mapping[str, Any]:
    """The tenant's settings, once its plan (which the gateway resolved with the tenant, from memory) is known
    to include custom branding: one query, for the settings."""
    plan: Plan | None = request.scope.get("backsaas.plan")
    tenants = catalog.platform_tables()["tenants"]
    async with request.app.state.db.engine.connect() as conn:
        if plan is None:  # served outside the gateway's tenant path: read it
            code = await conn.scalar(sa.select(tenants.c.plan).where(tenants.c.id == runtime.tenant_id))
            plan = await plan_of(conn, code) or Plan(str(code))
        require_feature(plan, FEATURE)
        settings = await conn.scalar(sa.select(tenants.c.settings).where(tenants.c.id == runtime.tenant_id))
    return settings or {}


def cached(request: Request, body: bytes, media_type: str) -> Response:
    """`body` with its ETag, or 304 when the client already holds it."""
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    headers = {"ETag": etag, "Cache-Control": CACHE_CONTROL}
    held = request.headers.get("if-none-match", "")
    if etag in (tag.strip().removeprefix("W/") for tag in held.split(",")) or held.strip() == "*":
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=media_type, headers=headers)


async def branding_json(request: Request, runtime: TenantRuntime) -> Response:
    """`GET {tenant}/branding`: colours, logo and favicon URLs, fonts, custom CSS."""
    settings = await tenant_branding_settings(request, runtime)
    return cached(request, orjson.dumps(branding_of(runtime.slug, settings)), "application/json")


async def branding_stylesheet(request: Request, runtime: TenantRuntime) -> Response:
    """`GET {tenant}/branding.css`: the branding as `:root` custom properties, then the custom CSS."""
    settings = await tenant_branding_settings(request, runtime)
    return cached(request, branding_css(settings).encode(), "text/css; charset=utf-8")
