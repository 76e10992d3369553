"""Names that resolve to no tenant (a slug, a custom domain's host) are paid for from their address's
anonymous budget: past it, that address's lookups of names the gateway does not hold are refused with 429
before any query, while the tenants it already serves keep answering, to that address too
(gateway/probes.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from engine.database import Database
from functions.keys import create_api_key
from functions.tenants import create_tenant
from tests.server import running_gateway

SCHEMA = """
name: known
entities:
  item:
    fields:
      name: {type: string}
    permissions:
      read: {anon: all}
"""
ELSEWHERE = {"X-Forwarded-For": "203.0.113.9"}  # another client: the test server trusts 127.0.0.1's header


@pytest.fixture(scope="module")
async def key(db: Database) -> str:
    await create_tenant(db, "known", source=SCHEMA)
    return (await create_api_key(db, "known", "service", "service")).key  # no anonymous budget of its own


@pytest.fixture
def base(key: str, database_url: str) -> Iterator[str]:
    """A gateway of its own per test: every test starts with the address's whole budget (4 a minute)."""
    left = 60 - time.time() % 60
    if left < 10:  # the test's requests fall in one minute window
        time.sleep(left + 0.05)
    with running_gateway(database_url, rate_limits={"anon_per_address": "4/minute"}) as url:
        yield url


def items(base: str, slug: str, key: str, **headers: str) -> httpx.Response:
    return httpx.get(f"{base}/api/tenants/{slug}/rest/v1/item", headers={"apikey": key, **headers})


def test_unknown_slugs_spend_the_address_budget_then_are_refused_while_known_tenants_answer(base, key):
    assert items(base, "known", key).status_code == 200  # held by the gateway from now on
    answers = [items(base, f"nobody{i}", key).status_code for i in range(5)]
    assert answers == [404] * 4 + [429]
    refused = items(base, "nobody-else", key)
    assert refused.status_code == 429 and refused.json()["code"] == "rate_limited"
    assert "Retry-After" in refused.headers
    again = items(base, "known", key)
    assert again.status_code == 200, again.text  # a tenant it serves costs no query: still served
    assert items(base, "nobody9", key, **ELSEWHERE).status_code == 404  # another address keeps its budget


def test_unknown_hosts_spend_the_address_budget_then_are_refused(base, key):
    answers = [items(base, "known", key, Host=f"probe{i}.example.org").status_code for i in range(5)]
    assert answers == [200] * 4 + [429]
    assert items(base, "known", key).status_code == 200  # by its path, without a host to look up
    assert items(base, "known", key, Host="probe1.example.org").status_code == 200  # held now: no query

