"""`GET /metrics`: Prometheus' text format that `prometheus_client.parser` reads, counting the requests a test
made by tenant, surface, method and status, rate-limit refusals, the outbox and the pools; refused without a
bearer that may read it; added up over the workers of `backsaas serve --workers 2`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from engine import catalog
from engine.database import Database
from functions.keys import create_api_key
from functions.tenants import create_tenant
from functions.users import create_platform_admin
from tests.server import free_port, running_gateway

PASSWORD = "a long enough passphrase"
ADMIN = "root@metrics.example"
TOKEN = "scrape-token-of-the-metrics-tests"
SCHEMA = """
name: gauge
entities:
  reading:
    fields:
      value: {type: integer}
    permissions:
      read: {anon: all, authenticated: all}
      create: {anon: all, authenticated: all}
"""
TENANTS = {"mx-counted": "rl-metrics-open", "mx-limited": "rl-metrics-two", "mx-outbox": "rl-metrics-open",
           "mx-workers": "rl-metrics-open"}


@pytest.fixture(scope="module")
async def keys(db: Database) -> dict[str, dict[str, str]]:
    await create_platform_admin(db, ADMIN, PASSWORD)
    plans = catalog.platform_tables()["plans"]
    async with db.begin() as conn:
        await conn.execute(plans.insert().values(code="rl-metrics-open", name="Open", limits={}))
        await conn.execute(plans.insert().values(code="rl-metrics-two", name="Two", limits={"requests_per_minute": 2}))
    made: dict[str, dict[str, str]] = {}
    for slug, plan in TENANTS.items():
        await create_tenant(db, slug, source=SCHEMA, plan=plan)
        made[slug] = {role: (await create_api_key(db, slug, role, role)).key for role in ("anon", "service")}
    return made


@pytest.fixture(scope="module")
def base(keys: dict[str, dict[str, str]], database_url: str) -> Iterator[str]:
    with running_gateway(database_url, rate_limits={}) as url:
        yield url


@pytest.fixture
def token(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv("BACKSAAS_METRICS_TOKEN", TOKEN)
    return {"Authorization": f"Bearer {TOKEN}"}


def scrape(base: str, headers: dict[str, str]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of `/metrics`, by (name, sorted labels), read by Prometheus' own parser."""
    answer = httpx.get(f"{base}/metrics", headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(answer.text) for s in family.samples}


def requests_of(samples: dict, tenant: str) -> dict[tuple[str, str, str], float]:
    """(surface, method, status) -> count of `backsaas_requests_total` for `tenant`."""
    found = {}
    for (name, labels), value in samples.items():
        labels = dict(labels)
        if name == "backsaas_requests_total" and labels["tenant"] == tenant:
            found[(labels["surface"], labels["method"], labels["status"])] = value
    return found


def sign_in(base: str, email: str) -> dict[str, str]:
    session = httpx.post(f"{base}/api/platform/auth/v1/token", params={"grant_type": "password"},
                         json={"email": email, "password": PASSWORD})
    assert session.status_code == 200, session.text
    return {"Authorization": f"Bearer {session.json()['access_token']}"}


def test_metrics_count_the_requests_made_by_tenant_surface_method_and_status(base, keys, token):
    api, service = f"{base}/api/tenants/mx-counted", {"apikey": keys["mx-counted"]["service"]}
    for value in range(3):
        assert httpx.post(f"{api}/rest/v1/reading", json={"value": value}, headers=service).status_code == 201
    for _ in range(5):
        assert httpx.get(f"{api}/rest/v1/reading", headers=service).status_code == 200
    assert httpx.get(f"{api}/rest/v1/nothing", headers=service).status_code == 404
    assert httpx.post(f"{api}/graphql/v1", json={"query": "{ reading { value } }"}, headers=service).status_code == 200
    samples = scrape(base, token)
    assert requests_of(samples, "mx-counted") == {("rest", "POST", "201"): 3, ("rest", "GET", "200"): 5,
                                                  ("rest", "GET", "404"): 1, ("graphql", "POST", "200"): 1}
    histogram = dict(((n, dict(labels).get("surface")), v) for (n, labels), v in samples.items()
                     if dict(labels).get("tenant") == "mx-counted")
    assert histogram[("backsaas_request_duration_seconds_count", "rest")] == 9
    assert histogram[("backsaas_request_duration_seconds_count", "graphql")] == 1


def test_metrics_count_rate_limit_refusals(base, keys, token):
    left = 60 - time.time() % 60
    if left < 5:  # the four requests in one minute
        time.sleep(left + 0.05)
    service = {"apikey": keys["mx-limited"]["service"]}
    statuses = [httpx.get(f"{base}/api/tenants/mx-limited/rest/v1/reading", headers=service).status_code
                for _ in range(4)]
    refused = statuses.count(429)
    assert statuses == [200, 200, 429, 429]
    samples = scrape(base, token)
    counted = sum(v for (name, labels), v in samples.items() if name == "backsaas_rate_limited_total"
                  and dict(labels) == {"tenant": "mx-limited", "window": "requests_per_minute"})
    assert counted == refused
    assert requests_of(samples, "mx-limited").get(("rest", "GET", "429")) == refused


def test_the_latency_metrics_leave_out_the_pause_before_a_refusal(base, keys, token):
    """A refusal is answered after a pause of about a second (gateway/ratelimit.py `hold`); the latency
    histogram measures how fast the gateway served it, not the pause."""
    service = {"apikey": keys["mx-limited"]["service"]}
    for _ in range(2):  # refused and held, unless a new minute began: then answered at once
        httpx.get(f"{base}/api/tenants/mx-limited/rest/v1/reading", headers=service)
    samples = scrape(base, token)
    served = sum(v for (name, labels), v in samples.items() if name == "backsaas_request_duration_seconds_sum"
                 and dict(labels).get("tenant") == "mx-limited")
    assert served < 1.0  # six requests, four of them held about a second each


async def test_metrics_show_the_outbox_and_the_pools(base, keys, token, db):
    t = catalog.platform_tables()
    async with db.begin() as conn:
        tenant_id = (await catalog.find_tenant(conn, "mx-outbox")).id
        event = (await conn.execute(t["events"].insert().returning(t["events"].c.id).values(
            tenant_id=tenant_id, entity="reading", action="create", kind="webhook", target="https://example.invalid/",
            payload={}, status="dead", attempts=2))).scalar_one()
        for attempt in (1, 2):
            await conn.execute(t["deliveries"].insert().values(event_id=event, tenant_id=tenant_id, attempt=attempt,
                                                               succeeded=False, error="refused"))
    samples = scrape(base, token)
    assert samples[("backsaas_outbox_events", (("status", "dead"), ("tenant", "mx-outbox")))] == 1
    assert samples[("backsaas_outbox_delivery_failures_total", (("tenant", "mx-outbox"),))] == 2
    assert samples[("backsaas_db_pool_connections", (("pool", "requests"), ("state", "max")))] > 0


def test_metrics_are_refused_without_a_bearer_that_may_read_them(base, keys, token):
    member = httpx.post(f"{base}/api/platform/auth/v1/signup", json={"email": "member@metrics.example",
                                                                     "password": PASSWORD})
    assert member.status_code == 200
    end_user = httpx.post(f"{base}/api/tenants/mx-counted/auth/v1/signup",
                          json={"email": "reader@metrics.example", "password": PASSWORD},
                          headers={"apikey": keys["mx-counted"]["anon"]})
    assert end_user.status_code == 200, end_user.text
    refused = {
        "anonymous": {},
        "a wrong token": {"Authorization": "Bearer not-the-token"},
        "a tenant's service key": {"Authorization": f"Bearer {keys['mx-counted']['service']}"},
        "a platform member": {"Authorization": f"Bearer {member.json()['access_token']}"},
        "a tenant's end user": {"Authorization": f"Bearer {end_user.json()['access_token']}"},
    }
    for who, headers in refused.items():
        answer = httpx.get(f"{base}/metrics", headers=headers)
        assert answer.status_code == 401, (who, answer.text)
        assert "backsaas_requests" not in answer.text and answer.json()["code"] == "metrics_unauthorized"
    assert scrape(base, sign_in(base, ADMIN))  # a platform admin's access token reads them


def test_metrics_add_up_the_workers_of_one_server(keys, database_url):
    port = free_port()
    env = {**os.environ, "DATABASE_URL": database_url, "BACKSAAS_METRICS_TOKEN": TOKEN}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    process = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--port", str(port), "--workers", "2"],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and process.poll() is None, "serve --workers 2 did not start"
            time.sleep(0.2)
        service = {"apikey": keys["mx-workers"]["service"]}
        for _ in range(12):  # new connections each: the kernel spreads them over both workers
            assert httpx.get(f"{base}/api/tenants/mx-workers/rest/v1/reading", headers=service).status_code == 200
        totals = [requests_of(scrape(base, {"Authorization": f"Bearer {TOKEN}"}), "mx-workers") for _ in range(4)]
        assert all(found == {("rest", "GET", "200"): 12} for found in totals), totals
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
