"""A tenant slug taken again after its tenant was purged starts from nothing: credentials bind to the tenant's
id, so the old tenant's tokens are refused by the new one, and the gateway's caches (runtime, keys) follow
the new tenant at once, without a restart."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest

from engine.database import Database
from functions.keys import create_api_key
from functions.tenants import create_tenant, delete_tenant, purge_tenants
from tests.server import running_gateway

SCHEMA = """
name: phoenix
entities:
  post:
    fields:
      title: {type: text, required: true}
    permissions:
      read: {anon: all, authenticated: all}
"""
PASSWORD = "a long passphrase"


@pytest.fixture(scope="module")
def base(db: Database, database_url: str) -> Iterator[str]:
    with running_gateway(database_url) as url:
        yield url


async def new_tenant(db: Database) -> dict[str, str]:
    await create_tenant(db, "phoenix", source=SCHEMA)
    return {role: (await create_api_key(db, "phoenix", role, role)).key for role in ("anon", "service")}


def posts(base: str) -> str:
    return f"{base}/api/tenants/phoenix/rest/v1/post"


def admin_token(base: str, keys: dict[str, str]) -> str:
    """A signed-in user of the tenant promoted to its `admin` role, and their access token."""
    auth = f"{base}/api/tenants/phoenix/auth/v1"
    user = httpx.post(f"{auth}/signup", json={"email": "boss@example.com", "password": PASSWORD},
                      headers={"apikey": keys["anon"]}).json()["user"]
    promoted = httpx.patch(f"{base}/api/tenants/phoenix/rest/v1/users", params={"id": f"eq.{user['id']}"},
                           json={"roles": ["admin"]}, headers={"apikey": keys["service"]})
    assert promoted.status_code == 204, promoted.text
    signed_in = httpx.post(f"{auth}/token?grant_type=password", json={"email": "boss@example.com", "password": PASSWORD},
                           headers={"apikey": keys["anon"]}).json()
    assert "admin" in signed_in["user"]["app_metadata"]["roles"]
    return signed_in["access_token"]


@pytest.fixture(scope="module")
async def reborn(db: Database, base: str) -> dict[str, Any]:
    """The tenant `phoenix` used through the gateway (so its runtime and keys are cached), then deleted,
    purged and created again with the same schema (so the same version number)."""
    old = await new_tenant(db)
    token = admin_token(base, old)
    assert httpx.get(posts(base), headers={"apikey": old["anon"], "Authorization": f"Bearer {token}"}).status_code == 200
    await delete_tenant(db, "phoenix")
    assert await purge_tenants(db, timedelta(0)) == ["phoenix"]
    return {"old_token": token, "new": await new_tenant(db)}


def test_a_token_of_a_purged_tenant_is_refused_by_the_tenant_reusing_its_slug(base, reborn):
    refused = httpx.get(posts(base), headers={"Authorization": f"Bearer {reborn['old_token']}"})
    assert refused.status_code == 401 and refused.json()["code"] == "tenant_mismatch"


def test_the_tenant_reusing_a_slug_serves_its_own_keys_without_a_restart(base, reborn):
    for role in ("anon", "service"):
        answer = httpx.get(posts(base), headers={"apikey": reborn["new"][role]})
        assert answer.status_code == 200, answer.text

