"""Custom domains over HTTP: a tenant claims a domain, proves it with a DNS TXT record (a fake resolver
stands in for DNS), is then served at that `Host` on every surface with its own credentials only, keeps it
from every other tenant, and stops being served the moment it removes it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from engine.database import Database
from functions import domains
from functions.keys import create_api_key
from functions.tenants import create_tenant
from functions.users import create_platform_admin
from tests.server import running_gateway

PASSWORD = "a long enough passphrase"
DOMAIN = "shop.acme.example"
SCHEMA = """
name: shop
entities:
  item:
    fields:
      name: {type: string, required: true, max_length: 80}
    permissions:
      read: {anon: all, authenticated: all}
"""


class FakeDns:
    """TXT records by name, as a zone would publish them."""

    def __init__(self) -> None:
        self.records: dict[str, list[str]] = {}
        self.asked: list[str] = []

    async def txt(self, name: str) -> list[str]:
        self.asked.append(name)
        return list(self.records.get(name, []))


@pytest.fixture(scope="module")
def dns() -> Iterator[FakeDns]:
    fake = FakeDns()
    previous = domains.use_resolver(fake)
    yield fake
    domains.use_resolver(previous)


@pytest.fixture(scope="module")
async def keys(db: Database) -> dict[str, str]:
    made = {}
    for slug, plan in (("acme", "pro"), ("rival", "pro"), ("basic", "free"), ("mallory", "pro")):
        await create_tenant(db, slug, source=SCHEMA, plan=plan)
        for role in ("anon", "service"):
            made[f"{slug}_{role}"] = (await create_api_key(db, slug, role, role)).key
    await create_platform_admin(db, "root@platform.example", PASSWORD)
    return made


@pytest.fixture(scope="module")
def base(keys: dict[str, str], database_url: str, dns: FakeDns) -> Iterator[str]:
    with running_gateway(database_url) as url:
        httpx.post(f"{url}/api/tenants/acme/rest/v1/item", json={"name": "anvil"}, headers={"apikey": keys["acme_service"]})
        httpx.post(f"{url}/api/tenants/rival/rest/v1/item", json={"name": "rival's"},
                   headers={"apikey": keys["rival_service"]})
        yield url


@pytest.fixture(scope="module")
def root(base: str) -> dict[str, str]:
    session = httpx.post(f"{base}/api/platform/auth/v1/token", params={"grant_type": "password"},
                         json={"email": "root@platform.example", "password": PASSWORD}).json()
    return {"Authorization": f"Bearer {session['access_token']}"}


def call(base: str, name: str, headers: dict[str, str], **payload: Any) -> httpx.Response:
    return httpx.post(f"{base}/api/platform/functions/v1/{name}", json=payload, headers=headers)


def at(base: str, path: str, **headers: str) -> httpx.Response:
    return httpx.get(f"{base}{path}", headers={"Host": DOMAIN, **headers})


def test_a_verified_domain_serves_the_tenant_and_only_its_credentials(base, keys, dns, root):
    added = call(base, "add_domain", root, tenant="acme", domain="Shop.Acme.Example.")
    assert added.status_code == 200, added.text
    record = added.json()["record"]
    assert record["name"] == f"_backsaas-challenge.{DOMAIN}" and record["value"].startswith("backsaas-verify=")
    assert at(base, "/rest/v1/item").status_code == 404  # not before it is verified

    unproven = call(base, "verify_domain", root, tenant="acme", domain=DOMAIN)
    assert unproven.status_code == 422 and unproven.json()["code"] == "domain_not_verified"
    dns.records[record["name"]] = ["some-other=record", record["value"]]
    verified = call(base, "verify_domain", root, tenant="acme", domain=DOMAIN)
    assert verified.status_code == 200 and verified.json()["verified"] is True
    assert dns.asked[-1] == record["name"]

    assert at(base, "/rest/v1/item").json() == [{**at(base, "/rest/v1/item").json()[0], "name": "anvil"}]
    assert at(base, "/rest/v1/item", apikey=keys["acme_service"]).status_code == 200
    graphql = httpx.post(f"{base}/graphql/v1", json={"query": "{ item { name } }"}, headers={"Host": DOMAIN})
    assert graphql.json() == {"data": {"item": [{"name": "anvil"}]}}
    signup = httpx.post(f"{base}/auth/v1/signup", json={"email": "ann@example.com", "password": PASSWORD},
                        headers={"Host": DOMAIN, "apikey": keys["acme_anon"]})
    assert signup.status_code == 200 and signup.json()["user"]["app_metadata"]["tenant"] == "acme"
    token = {"Authorization": f"Bearer {signup.json()['access_token']}"}
    assert at(base, "/rest/v1/item", **token).status_code == 200
    assert at(base, "/functions/v1/nothing", **token).status_code in (404, 405)  # the functions surface is acme's

    foreign = at(base, "/rest/v1/item", apikey=keys["rival_service"])
    assert foreign.status_code == 401 and "rival's" not in foreign.text
    rival_user = httpx.post(f"{base}/api/tenants/rival/auth/v1/signup", headers={"apikey": keys["rival_anon"]},
                            json={"email": "rita@example.com", "password": PASSWORD}).json()
    assert at(base, "/rest/v1/item", Authorization=f"Bearer {rival_user['access_token']}").status_code == 401


def test_a_domain_belongs_to_one_tenant_and_needs_the_plan_feature(base, root):
    taken = call(base, "add_domain", root, tenant="rival", domain=DOMAIN)
    assert taken.status_code == 409 and taken.json()["code"] == "domain_taken"
    unpaid = call(base, "add_domain", root, tenant="basic", domain="basic.example.org")
    assert unpaid.status_code == 402 and unpaid.json()["code"] == "plan_feature_required"
    for bad in ("localhost", "x.localhost", "127.0.0.1", "no_underscores.example", "single"):
        refused = call(base, "add_domain", root, tenant="rival", domain=bad)
        assert refused.status_code == 422 and refused.json()["details"][0]["field"] == "domain", bad


def test_removing_a_domain_stops_serving_it_at_once(base, dns, root):
    call(base, "add_domain", root, tenant="rival", domain="rival.example.net")
    assert at(base, "/rest/v1/item").status_code == 200  # acme's, from the first test
    removed = call(base, "remove_domain", root, tenant="acme", domain=DOMAIN)
    assert removed.status_code == 200 and removed.json()["removed"] is True
    assert at(base, "/rest/v1/item").status_code == 404
    assert call(base, "remove_domain", root, tenant="acme", domain=DOMAIN).status_code == 404


def test_nobody_but_the_tenants_owners_manages_its_domains(base, keys, root):
    stranger = httpx.post(f"{base}/api/platform/auth/v1/signup",
                          json={"email": "stranger@example.com", "password": PASSWORD}).json()
    as_stranger = {"Authorization": f"Bearer {stranger['access_token']}"}
    for name in ("add_domain", "verify_domain", "remove_domain"):
        for headers in (as_stranger, {}, {"apikey": keys["acme_service"]}):
            refused = call(base, name, headers, tenant="rival", domain="rival.example.net")
            assert refused.status_code in (401, 403), (name, headers, refused.text)
    listed = httpx.get(f"{base}/api/platform/rest/v1/tenant_domains", headers=as_stranger)
    assert listed.status_code in (200, 403) and "rival.example.net" not in listed.text
    assert "rival.example.net" in httpx.get(f"{base}/api/platform/rest/v1/tenant_domains", headers=root).text


def test_a_claim_reserves_nothing_and_the_first_tenant_to_verify_holds_the_domain(base, keys, dns, root):
    contested = "acme-corp.example"
    squat = call(base, "add_domain", root, tenant="mallory", domain=contested)
    assert squat.status_code == 200, squat.text
    claim = call(base, "add_domain", root, tenant="acme", domain=contested)
    assert claim.status_code == 200, claim.text  # Mallory's earlier claim does not keep the owner out
    record = claim.json()["record"]
    assert record["value"] != squat.json()["record"]["value"]  # each claim has its own token
    dns.records[record["name"]] = [record["value"]]  # the real owner publishes theirs

    unproven = call(base, "verify_domain", root, tenant="mallory", domain=contested)
    assert unproven.status_code == 422 and unproven.json()["code"] == "domain_not_verified"
    assert call(base, "verify_domain", root, tenant="acme", domain=contested).status_code == 200
    lost = call(base, "verify_domain", root, tenant="mallory", domain=contested)
    assert lost.status_code == 409 and lost.json()["code"] == "domain_taken"
    late = call(base, "add_domain", root, tenant="rival", domain=contested)
    assert late.status_code == 409 and late.json()["code"] == "domain_taken"

    served = httpx.get(f"{base}/rest/v1/item", headers={"Host": contested})
    assert [i["name"] for i in served.json()] == ["anvil"]
    assert httpx.get(f"{base}/rest/v1/item", headers={"Host": contested,
                                                     "apikey": keys["mallory_service"]}).status_code == 401


async def test_an_unverified_claim_expires_after_seven_days(base, dns, root, db):
    stale = "stale-claim.example"
    assert call(base, "add_domain", root, tenant="mallory", domain=stale).status_code == 200
    async with db.begin() as conn:
        await conn.execute(sa.text("UPDATE system.tenant_domains SET created_at = now() - interval '8 days'"
                                   " WHERE domain = :domain"), {"domain": stale})
    expired = call(base, "verify_domain", root, tenant="mallory", domain=stale)
    assert expired.status_code == 404 and expired.json()["code"] == "domain_not_found"
    async with db.engine.connect() as conn:
        left = await conn.scalar(sa.text("SELECT count(*) FROM system.tenant_domains WHERE domain = :domain"),
                                 {"domain": stale})
    assert left == 0
    again = call(base, "add_domain", root, tenant="mallory", domain=stale)
    assert again.status_code == 200 and again.json()["verified"] is False
