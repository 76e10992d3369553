"""The gateway skeleton over HTTP: health, readiness, and tenant resolution by path and by host."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient

from engine import catalog
from engine.database import Database
from functions.tenants import create_tenant
from gateway.app import create_app

BLOG = "name: blog\nentities:\n  post:\n    fields:\n      title: {type: string}\n"


@pytest.fixture(scope="module")
async def tenants(db: Database) -> Database:
    await create_tenant(db, "blog", source=BLOG)
    await create_tenant(db, "frozen", source=BLOG)
    await create_tenant(db, "gone", source=BLOG)
    tenants = catalog.platform_tables()["tenants"]
    async with db.begin() as conn:
        await conn.execute(tenants.update().where(tenants.c.slug == "frozen").values(status="suspended"))
        await conn.execute(tenants.update().where(tenants.c.slug == "gone").values(status="deleted"))
    return db


@pytest.fixture(scope="module")
def client(tenants: Database, database_url: str) -> Iterator[TestClient]:
    with TestClient(create_app(database_url, base_domain="example.test")) as test_client:
        yield test_client


def test_healthz_answers_without_a_tenant(client: TestClient):
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_readyz_checks_the_database(client: TestClient):
    response = client.get("/readyz")
    assert response.status_code == 200 and response.json()["database"] == "ok"


def test_readyz_and_tenant_routes_are_503_when_the_database_is_unreachable():
    with TestClient(create_app("postgresql://postgres@127.0.0.1:1/none")) as unreachable:
        ready = unreachable.get("/readyz")
        tenant = unreachable.get("/api/tenants/blog/")
        health = unreachable.get("/healthz")
    assert ready.status_code == 503 and ready.json()["database"] == "unreachable"
    assert tenant.status_code == 503 and tenant.json()["code"] == "database_unavailable"
    assert health.status_code == 200


def test_platform_base_url_serves_the_system_tenant(client: TestClient):
    body = client.get("/api/platform/").json()
    assert body["tenant"] == "system" and body["schema"]["version"] == 1
    assert "tenants" in {e["name"] for e in body["entities"]}
    assert body["base_url"] == "http://testserver/api/platform"


def test_tenant_base_url_by_path(client: TestClient):
    body = client.get("/api/tenants/blog/").json()
    assert body["tenant"] == "blog" and [e["name"] for e in body["entities"]] == ["post", "users"]
    assert body["base_url"] == "http://testserver/api/tenants/blog"


def test_internal_fields_are_not_described(client: TestClient):
    users = next(e for e in client.get("/api/tenants/blog/").json()["entities"] if e["name"] == "users")
    assert "password_hash" not in {f["name"] for f in users["fields"]}


def test_tenant_base_url_by_host(client: TestClient):
    body = client.get("/", headers={"host": "blog.example.test"}).json()
    assert body["tenant"] == "blog" and body["base_url"] == "http://blog.example.test"


@pytest.mark.parametrize(("path", "host"), [("/api/tenants/nobody/", None), ("/", "nobody.example.test"),
                                            ("/api/tenants/gone/", None)])
def test_unknown_or_deleted_tenant_is_404_tenant_not_found(client: TestClient, path: str, host: str | None):
    response = client.get(path, headers={"host": host} if host else {})
    assert response.status_code == 404
    assert response.json()["code"] == "tenant_not_found" and "message" in response.json()


def test_suspended_tenant_is_403_tenant_suspended(client: TestClient):
    response = client.get("/api/tenants/frozen/")
    assert response.status_code == 403 and response.json()["code"] == "tenant_suspended"


def test_unknown_routes_are_json_404(client: TestClient):
    for path in ("/nowhere", "/api/tenants/blog/rest/v2/post"):
        response = client.get(path)
        assert response.status_code == 404 and response.json()["code"] == "not_found"


async def test_a_deploy_is_served_without_restarting(tenants: Database, client: TestClient):
    import asyncio

    from engine.storage.deploy import deploy

    await deploy(tenants, "blog", BLOG + "  tag:\n    fields: {}\n")
    for _ in range(50):  # the NOTIFY crosses processes asynchronously; it lands within milliseconds
        body = client.get("/api/tenants/blog/").json()
        if body["schema"]["version"] == 2:
            break
        await asyncio.sleep(0.02)
    assert body["schema"]["version"] == 2 and "tag" in {e["name"] for e in body["entities"]}
    async with tenants.begin() as conn:
        assert await conn.scalar(sa.text("SELECT to_regclass('t_blog.tag') IS NOT NULL"))


async def test_a_status_change_reaches_a_running_gateway_at_once(tenants: Database, client: TestClient):
    import asyncio

    assert client.get("/api/tenants/blog/").status_code == 200  # resolved, and cached
    rows = catalog.platform_tables()["tenants"]
    async with tenants.begin() as conn:
        await conn.execute(rows.update().where(rows.c.slug == "blog").values(status="suspended"))
    try:
        for _ in range(50):  # the NOTIFY crosses processes asynchronously; it lands within milliseconds
            if client.get("/api/tenants/blog/").status_code == 403:
                break
            await asyncio.sleep(0.02)
        assert client.get("/api/tenants/blog/").json()["code"] == "tenant_suspended"
    finally:
        async with tenants.begin() as conn:
            await conn.execute(rows.update().where(rows.c.slug == "blog").values(status="active"))
