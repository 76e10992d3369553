"""CORS over HTTP: every tenant surface and the platform's answer preflights without credentials and
label their responses for browsers on other origins; a tenant that names its origins admits only those."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import sqlalchemy as sa

from engine import catalog
from engine.database import Database
from functions.tenants import create_tenant
from tests.server import running_gateway

SCHEMA = """
name: shop
entities:
  item:
    fields:
      name: {type: string}
    permissions:
      read: {anon: all}
"""
ORIGIN = "http://app.example.test:5173"
SUPABASE_HEADERS = "apikey, authorization, content-type, prefer, range, x-client-info, accept-profile, " \
                   "content-profile, x-supabase-api-version"
SURFACES = ["/rest/v1/item", "/auth/v1/token?grant_type=password", "/graphql/v1", "/functions/v1/anything",
            "/events/v1", "/rest/v1/"]


@pytest.fixture(scope="module")
async def tenants(db: Database) -> Database:
    await create_tenant(db, "open", source=SCHEMA)
    await create_tenant(db, "walled", source=SCHEMA)
    tenants = catalog.platform_tables()["tenants"]
    async with db.begin() as conn:
        await conn.execute(tenants.update().where(tenants.c.slug == "walled")
                           .values(settings={"cors": {"allowed_origins": ["https://walled.example.com"]}}))
    return db


@pytest.fixture(scope="module")
def base(tenants: Database, database_url: str) -> Iterator[str]:
    with running_gateway(database_url) as url:
        yield url


def preflight(url: str, method: str = "POST", origin: str = ORIGIN) -> httpx.Response:
    return httpx.options(url, headers={"Origin": origin, "Access-Control-Request-Method": method,
                                       "Access-Control-Request-Headers": SUPABASE_HEADERS})


@pytest.mark.parametrize("path", SURFACES)
def test_preflight_of_every_tenant_surface_is_answered_without_credentials(base: str, path: str):
    response = preflight(f"{base}/api/tenants/open{path}")
    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == "*"
    allowed = {h.strip().lower() for h in response.headers["access-control-allow-headers"].split(",")}
    assert {h.strip() for h in SUPABASE_HEADERS.split(",")} <= allowed
    assert "PATCH" in response.headers["access-control-allow-methods"]


def test_preflight_of_the_platform_and_by_host_name_is_answered(base: str):
    assert preflight(f"{base}/api/platform/auth/v1/signup").headers["access-control-allow-origin"] == "*"
    port = base.rsplit(":", 1)[1]
    response = httpx.options(f"http://127.0.0.1:{port}/rest/v1/item",
                             headers={"Host": f"open.localhost:{port}", "Origin": ORIGIN,
                                      "Access-Control-Request-Method": "GET"})
    assert response.status_code == 200 and response.headers["access-control-allow-origin"] == "*"


def test_responses_carry_the_origin_and_expose_paging_headers(base: str):
    response = httpx.get(f"{base}/api/tenants/open/rest/v1/item", headers={"Origin": ORIGIN, "Prefer": "count=exact"})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "*"
    exposed = {h.strip().lower() for h in response.headers["access-control-expose-headers"].split(",")}
    assert {"content-range", "location", "preference-applied", "x-request-id"} <= exposed


def test_errors_are_readable_by_browsers_too(base: str):
    response = httpx.get(f"{base}/api/tenants/open/rest/v1/nothing", headers={"Origin": ORIGIN})
    assert response.status_code == 404 and response.headers["access-control-allow-origin"] == "*"
    unknown = httpx.get(f"{base}/api/tenants/nobody/rest/v1/item", headers={"Origin": ORIGIN})
    assert unknown.status_code == 404 and unknown.headers["access-control-allow-origin"] == "*"


def test_preflight_grants_no_authority(base: str):
    """An OPTIONS preflight is answered before authentication and runs nothing: the write it announces
    is still refused when it comes without credentials."""
    assert preflight(f"{base}/api/tenants/open/rest/v1/item").status_code == 200
    response = httpx.post(f"{base}/api/tenants/open/rest/v1/item", json={"name": "x"}, headers={"Origin": ORIGIN})
    assert response.status_code in (401, 403)
    assert response.headers["access-control-allow-origin"] == "*"


def test_a_tenant_naming_its_origins_admits_only_those(base: str):
    url = f"{base}/api/tenants/walled/rest/v1/item"
    assert preflight(url, origin=ORIGIN).status_code == 400
    assert "access-control-allow-origin" not in httpx.get(url, headers={"Origin": ORIGIN}).headers
    allowed = preflight(url, origin="https://walled.example.com")
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://walled.example.com"
    read = httpx.get(url, headers={"Origin": "https://walled.example.com"})
    assert read.headers["access-control-allow-origin"] == "https://walled.example.com"
    assert "origin" in read.headers["vary"].lower()


def test_requests_without_an_origin_carry_no_cors_headers(base: str):
    response = httpx.get(f"{base}/api/tenants/open/rest/v1/item")
    assert response.status_code == 200 and "access-control-allow-origin" not in response.headers


async def test_cors_settings_are_checked_by_the_settings_schema(tenants: Database):
    from engine.schema import load_schema
    from engine.validation import BodyValidator

    async with tenants.engine.connect() as conn:
        source = await conn.scalar(sa.text("SELECT source FROM system.schema_versions sv JOIN system.tenants t "
                                           "ON t.id = sv.tenant_id WHERE t.slug = 'system' ORDER BY version DESC LIMIT 1"))
    runtime_entity = load_schema(source, "platform.yaml").entity("tenants")
    validator = BodyValidator(runtime_entity, partial=True)
    assert validator.problems({"settings": {"cors": {"allowed_origins": ["https://a.example.com", "*"]}}}) == []
    assert validator.problems({"settings": {"cors": {"allowed_origins": ["javascript:alert(1)"]}}})
