"""A newcomer's first steps with identity: what sign-up reports about the address is what the engine stores;
the platform publishes an anon key, so Supabase's SDKs sign up and in to the platform like any tenant."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from engine.database import Database
from functions.keys import create_api_key
from functions.tenants import create_tenant
from tests.server import running_gateway

SCHEMA = """
name: first
entities:
  note:
    owner: true
    fields:
      text: {type: text}
    permissions:
      read: {authenticated: own}
      create: {authenticated: all}
"""
PASSWORD = "a long enough passphrase"


@pytest.fixture(scope="module")
async def keys(db: Database) -> dict[str, str]:
    await create_tenant(db, "first", source=SCHEMA)
    return {role: (await create_api_key(db, "first", role, role)).key for role in ("anon", "service")}


@pytest.fixture(scope="module")
def gateway(keys: dict[str, str], database_url: str) -> Iterator[str]:
    with running_gateway(database_url) as url:
        yield url


@pytest.fixture(scope="module")
def base(gateway: str) -> str:
    return f"{gateway}/api/tenants/first"


def test_signup_confirms_the_address_and_marks_the_user_verified_together(base: str, keys: dict[str, str]):
    anon = {"apikey": keys["anon"]}
    signed_up = httpx.post(f"{base}/auth/v1/signup", headers=anon,
                           json={"email": "new@example.com", "password": PASSWORD}).json()
    user = signed_up["user"]
    assert user["email_confirmed_at"] is not None and user["verified"] is True
    service = {"apikey": keys["service"], "Authorization": f"Bearer {keys['service']}"}
    stored = httpx.get(f"{base}/rest/v1/users?select=verified&email=eq.new@example.com", headers=service).json()
    assert stored == [{"verified": True}]


def test_an_address_marked_unverified_is_reported_unconfirmed(base: str, keys: dict[str, str]):
    anon = {"apikey": keys["anon"]}
    session = httpx.post(f"{base}/auth/v1/signup", headers=anon,
                         json={"email": "later@example.com", "password": PASSWORD}).json()
    service = {"apikey": keys["service"], "Authorization": f"Bearer {keys['service']}"}
    patched = httpx.patch(f"{base}/rest/v1/users?email=eq.later@example.com", headers=service, json={"verified": False})
    assert patched.status_code in (200, 204), patched.text
    user = httpx.get(f"{base}/auth/v1/user",
                     headers={**anon, "Authorization": f"Bearer {session['access_token']}"}).json()
    assert user["verified"] is False and user["email_confirmed_at"] is None and user["confirmed_at"] is None


def test_the_platform_publishes_an_anon_key_that_supabase_clients_sign_up_with(gateway: str):
    from supabase import create_client

    key = httpx.get(f"{gateway}/api/platform/").json()["anon_key"]
    assert httpx.get(f"{gateway}/api/platform/").json()["anon_key"] == key  # made once, then the same
    client = create_client(f"{gateway}/api/platform", key)
    signed_up = client.auth.sign_up({"email": "developer@example.com", "password": PASSWORD})
    assert signed_up.user.email == "developer@example.com"
    client.auth.sign_in_with_password({"email": "developer@example.com", "password": PASSWORD})
    plans = client.table("plans").select("code").execute().data
    assert {"code": "free"} in plans
