"""A newcomer's first steps with a tenant's identity: what sign-up reports about the address is what the
engine stores, and the two never disagree."""

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
def base(keys: dict[str, str], database_url: str) -> Iterator[str]:
    with running_gateway(database_url) as url:
        yield f"{url}/api/tenants/first"


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
