"""Rate limits: each window of a tenant's plan with its `RateLimit-*` headers and the 429 past it, answered
after a pause that stalls no other tenant (and at once past the process's cap of held refusals), the
per-address budget of anonymous callers (a minute, an hour and a day window, spent by failed authentications
too), a plan edit reaching a running gateway, one budget shared by two
gateway processes through Redis, and a Redis outage degrading to per-process counters (logged) and back."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from engine import catalog
from engine.database import Database
from engine.errors import RateLimited
from functions.keys import create_api_key
from functions.tenants import create_tenant
from functions.users import create_platform_admin
from gateway.ratelimit import RateLimits
from tests.server import free_port, running_gateway

PASSWORD = "a long enough passphrase"
ADMIN = "root@limits.example"
SCHEMA = """
name: counter
entities:
  item:
    fields:
      label: {type: text}
    permissions:
      read: {anon: all, authenticated: all}
"""
PLANS = {
    "per-minute": {"requests_per_minute": 3, "requests_per_hour": 100, "requests_per_day": 1000},
    "per-hour": {"requests_per_minute": 100, "requests_per_hour": 3, "requests_per_day": -1},
    "per-day": {"requests_per_minute": -1, "requests_per_day": 3},
    "per-second": {"requests_per_second": 3, "requests_per_minute": 100},
    "roomy": {"requests_per_minute": 1000},
    "five": {"requests_per_minute": 5},
    "open": {},
    "scribe": {"rows_written_per_second": 10},
}
TENANTS = {"second": "per-second", "minute": "per-minute", "hour": "per-hour", "day": "per-day", "anons": "open",
           "edited": "roomy", "shared": "five", "outage": "five", "unbounded": "open", "hourly": "open", "failures": "open",
           "held": "per-minute", "scribe": "scribe", "neighbour": "scribe"}


@pytest.fixture(scope="module")
async def keys(db: Database) -> dict[str, dict[str, str]]:
    await create_platform_admin(db, ADMIN, PASSWORD)
    plans = catalog.platform_tables()["plans"]
    async with db.begin() as conn:
        for code, limits in PLANS.items():
            await conn.execute(plans.insert().values(code=f"rl-{code}", name=code, limits=limits))
    made: dict[str, dict[str, str]] = {}
    for slug, plan in TENANTS.items():
        await create_tenant(db, slug, source=SCHEMA, plan=f"rl-{plan}")
        made[slug] = {role: (await create_api_key(db, slug, role, role)).key for role in ("anon", "service")}
    return made


@pytest.fixture(scope="module")
def base(keys: dict[str, dict[str, str]], database_url: str) -> Iterator[str]:
    with running_gateway(database_url, rate_limits={"anon_per_address": "4/minute"}) as url:
        yield url


def items(base: str, slug: str, headers: dict[str, str]) -> httpx.Response:
    return httpx.get(f"{base}/api/tenants/{slug}/rest/v1/item", headers=headers)


def in_one_window(seconds: int, margin: float = 8.0) -> None:
    """Wait, if need be, so that the next `margin` seconds fall in one clock-aligned window."""
    left = seconds - time.time() % seconds
    if left < margin:
        time.sleep(left + 0.05)


def window_headers(response: httpx.Response) -> tuple[int, int, int]:
    return (int(response.headers["RateLimit-Limit"]), int(response.headers["RateLimit-Remaining"]),
            int(response.headers["RateLimit-Reset"]))


@pytest.mark.parametrize(("slug", "seconds"), [("minute", 60), ("hour", 3600), ("day", 86400)])
def test_each_window_of_the_plan_counts_down_in_its_headers_then_refuses_with_429(base, keys, slug, seconds):
    in_one_window(seconds)
    service = {"apikey": keys[slug]["service"]}
    for left in (2, 1, 0):
        answer = items(base, slug, service)
        assert answer.status_code == 200, answer.text
        limit, remaining, reset = window_headers(answer)
        assert (limit, remaining) == (3, left) and 0 < reset <= seconds
    refused = items(base, slug, service)
    assert refused.status_code == 429 and refused.json()["code"] == "rate_limited"
    assert 0 < int(refused.headers["Retry-After"]) <= seconds
    assert window_headers(refused)[:2] == (3, 0)
    assert "3 requests" in refused.json()["message"]


def test_a_plans_requests_per_second_refuses_a_burst_its_minute_would_allow(base, keys):
    service = {"apikey": keys["second"]["service"]}
    answers = [items(base, "second", service) for _ in range(10)]  # within two or three clock seconds: 9 at most
    refused = [a for a in answers if a.status_code == 429]
    assert refused and {a.status_code for a in answers} == {200, 429}
    assert refused[0].json()["code"] == "rate_limited" and "3 requests" in refused[0].json()["message"]
    assert int(refused[0].headers["Retry-After"]) == 1 and window_headers(refused[0])[:2] == (3, 0)
    time.sleep(1.05)
    assert items(base, "second", service).status_code == 200


async def test_a_refusal_is_answered_after_a_pause_during_which_other_tenants_are_answered(base, keys):
    """A client that resends the moment it is refused sends one request per pause (gateway/ratelimit.py)."""
    in_one_window(60)
    service, other = {"apikey": keys["held"]["service"]}, {"apikey": keys["unbounded"]["service"]}
    answered: list[tuple[str, int]] = []
    async with httpx.AsyncClient() as client:
        async def ask(slug: str, headers: dict[str, str]) -> None:
            answer = await client.get(f"{base}/api/tenants/{slug}/rest/v1/item", headers=headers)
            answered.append((slug, answer.status_code))

        for _ in range(3):
            await ask("held", service)
        started = time.monotonic()
        refused = asyncio.create_task(ask("held", service))
        await asyncio.sleep(0.2)  # the refusal is being held meanwhile
        await ask("unbounded", other)
        await refused
        held_for = time.monotonic() - started
    assert answered == [("held", 200)] * 3 + [("unbounded", 200), ("held", 429)]
    assert held_for >= 0.9  # its Retry-After (at least 1 s) bounded by the pause of HOLD_SECONDS, 1 s


async def test_past_its_cap_of_held_refusals_a_process_answers_refusals_at_once():
    limits = RateLimits(hold_seconds=30, max_held=2)
    refusal = RateLimited("the plan's limit is spent", 30)
    held = [asyncio.create_task(limits.hold(refusal)) for _ in range(2)]
    await asyncio.sleep(0)  # both are held now
    third = asyncio.create_task(limits.hold(refusal))
    done, _ = await asyncio.wait([third, *held], return_when=asyncio.FIRST_COMPLETED)
    assert done == {third} and limits.held == 2
    for task in held:
        task.cancel()
    await asyncio.gather(*held, return_exceptions=True)
    assert limits.held == 0


def test_a_tenant_past_its_rows_written_per_second_is_refused_writes_while_its_reads_and_other_tenants_go_on(
        base, keys):
    service = {"apikey": keys["scribe"]["service"]}
    url = f"{base}/api/tenants/scribe/rest/v1/item"
    assert httpx.post(url, json=[{"label": "first"}] * 30, headers=service).status_code == 201  # 3 s of its rows
    refused = httpx.patch(url, params={"label": "eq.first"}, json={"label": "second"}, headers=service)
    assert refused.status_code == 429 and refused.json()["code"] == "rate_limited", refused.text
    assert "rows written per second" in refused.json()["message"] and int(refused.headers["Retry-After"]) >= 1
    mutation = httpx.post(f"{base}/api/tenants/scribe/graphql/v1", headers=service,
                          json={"query": 'mutation { delete_item(where: {label: {_eq: "first"}}) { affected_rows } }'})
    assert mutation.status_code == 429
    assert [r["label"] for r in items(base, "scribe", service).json()] == ["first"] * 30  # reads go on; unchanged
    assert httpx.post(f"{base}/api/tenants/neighbour/rest/v1/item", json=[{"label": "mine"}] * 5,
                      headers={"apikey": keys["neighbour"]["service"]}).status_code == 201


def test_a_tenant_without_windows_carries_no_rate_limit_headers(base, keys):
    answer = items(base, "unbounded", {"apikey": keys["unbounded"]["service"]})
    assert answer.status_code == 200 and "RateLimit-Limit" not in answer.headers


def test_an_anonymous_address_has_its_own_budget_and_others_keep_theirs(base, keys):
    in_one_window(60)
    anon = {"apikey": keys["anons"]["anon"]}
    for left in (3, 2, 1, 0):
        answer = items(base, "anons", anon)
        assert answer.status_code == 200 and window_headers(answer)[:2] == (4, left)
    assert items(base, "anons", anon).status_code == 429
    assert items(base, "anons", {}).status_code == 429  # no key at all is as anonymous
    elsewhere = items(base, "anons", {**anon, "X-Forwarded-For": "203.0.113.9"})  # uvicorn trusts its local proxy
    assert elsewhere.status_code == 200 and window_headers(elsewhere)[:2] == (4, 3)
    assert items(base, "anons", {"apikey": keys["anons"]["service"]}).status_code == 200  # not anonymous


def test_the_default_anonymous_budget_has_a_minute_an_hour_and_a_day_window(monkeypatch):
    monkeypatch.delenv("BACKSAAS_ANON_RATE_LIMIT", raising=False)
    assert [(item.amount, item.get_expiry()) for item in RateLimits().anon] == [(300, 60), (5000, 3600), (50000, 86400)]


def test_an_anonymous_address_is_held_to_its_hour_window_too(keys, database_url):
    with running_gateway(database_url, rate_limits={"anon_per_address": "1000/day;100/minute;3/hour"}) as other:
        in_one_window(3600)
        anon = {"apikey": keys["hourly"]["anon"]}
        answers = [items(other, "hourly", anon) for _ in range(4)]
        assert [a.status_code for a in answers] == [200] * 3 + [429]
        assert window_headers(answers[0])[:2] == (3, 2)  # the tightest of the three windows is the hour's
        assert "anonymous limit of 3 requests per hour" in answers[3].json()["message"]
        assert 0 < int(answers[3].headers["Retry-After"]) <= 3600


def test_failed_authentications_spend_the_address_budget_then_no_credential_is_tried(base, keys):
    """Wrong keys or tokens count as anonymous requests of their address: past its budget they are refused
    (429), and so is anything else the address sends, a right key included, until the window ends.
    (Wired in gateway/app.py's TenantApp.respond: `refused_address` before authenticating, `admit_failed`
    on a 401.)"""
    in_one_window(60)
    wrong = {"apikey": "bsk_not-a-key-of-anyone", "Authorization": "Bearer not-a-token"}
    answers = [items(base, "failures", wrong) for _ in range(5)]
    assert [a.status_code for a in answers] == [401] * 4 + [429]
    assert "anonymous limit of 4 requests per minute" in answers[4].json()["message"]
    assert items(base, "failures", {"apikey": keys["failures"]["service"]}).status_code == 429
    elsewhere = items(base, "failures", {**wrong, "X-Forwarded-For": "203.0.113.77"})  # the test server trusts 127.0.0.1
    assert elsewhere.status_code == 401  # another address keeps its budget


def test_a_plan_edit_reaches_the_running_gateway_at_once_and_keeps_the_windows_count(base, keys):
    in_one_window(60)
    service = {"apikey": keys["edited"]["service"]}
    assert window_headers(items(base, "edited", service))[:2] == (1000, 999)
    session = httpx.post(f"{base}/api/platform/auth/v1/token", params={"grant_type": "password"},
                         json={"email": ADMIN, "password": PASSWORD}).json()
    edited = httpx.patch(f"{base}/api/platform/rest/v1/plans?code=eq.rl-roomy", json={"limits": {"requests_per_minute": 700}},
                         headers={"Authorization": f"Bearer {session['access_token']}"})
    assert edited.status_code == 204, edited.text
    assert window_headers(items(base, "edited", service))[:2] == (700, 698)


# -- processes sharing Redis, and Redis going away ----------------------------------------------------------


def serve(database_url: str, port: int, redis_url: str, prefix: str, log: Path) -> subprocess.Popen[bytes]:
    """A gateway process of its own (`backsaas serve`), counting in `redis_url` under `prefix`."""
    env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": redis_url, "BACKSAAS_RATE_LIMIT_PREFIX": prefix,
           "BACKSAAS_RATE_LIMIT_PROBE_SECONDS": "0.3"}
    process = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--port", str(port)], env=env,
                               stdout=subprocess.DEVNULL, stderr=log.open("wb"))
    deadline = time.monotonic() + 180  # two servers starting at once on a busy machine take a while
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise AssertionError(log.read_text())


def stop(*processes: subprocess.Popen[bytes]) -> None:
    for process in processes:
        process.send_signal(signal.SIGTERM)
    for process in processes:
        process.wait(timeout=30)


def redis_keys(port: int, prefix: str) -> list[str]:
    found = subprocess.run(["redis-cli", "-p", str(port), "--scan", "--pattern", f"{prefix}*"], capture_output=True,
                           text=True, check=True)
    return found.stdout.split()


def test_two_gateway_processes_share_one_budget_in_redis(keys, database_url, tmp_path):
    prefix = f"bst-rl-{secrets.token_hex(4)}"
    ports = [free_port(), free_port()]
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for port in ports:  # one by one: a server that fails to start leaves the one before it stopped
            processes.append(serve(database_url, port, "redis://127.0.0.1:6379/0", prefix, tmp_path / f"{port}.log"))
        in_one_window(60, margin=15)  # the servers are up: the requests fall in one minute
        service = {"apikey": keys["shared"]["service"]}
        answers = [items(f"http://127.0.0.1:{ports[n % 2]}", "shared", service) for n in range(7)]
        assert [a.status_code for a in answers] == [200] * 5 + [429] * 2
        assert [int(a.headers["RateLimit-Remaining"]) for a in answers[:5]] == [4, 3, 2, 1, 0]
        assert redis_keys(6379, prefix)
    finally:
        stop(*processes)
        for key in redis_keys(6379, prefix):
            subprocess.run(["redis-cli", "-p", "6379", "DEL", key], capture_output=True, check=True)


def start_redis(port: int, directory: Path) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(["redis-server", "--port", str(port), "--save", "", "--appendonly", "no",
                                "--dir", str(directory)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True, text=True).stdout.strip() != "PONG":
        assert time.monotonic() < deadline, "redis-server did not start"
        time.sleep(0.05)
    return process


def test_a_redis_outage_degrades_to_per_process_limits_logs_it_and_recovers(keys, database_url, tmp_path):
    redis_port, port = free_port(), free_port()
    redis = start_redis(redis_port, tmp_path)
    log = tmp_path / "gateway.log"
    prefix = "bst-outage"
    gateway = None
    base, service = f"http://127.0.0.1:{port}", {"apikey": keys["outage"]["service"]}
    try:
        gateway = serve(database_url, port, f"redis://127.0.0.1:{redis_port}/0", prefix, log)
        in_one_window(60, margin=25)  # the server is up: what follows falls in one minute
        assert [items(base, "outage", service).status_code for _ in range(2)] == [200, 200]
        assert redis_keys(redis_port, prefix)
        redis.kill()
        redis.wait()
        during = [items(base, "outage", service) for _ in range(6)]  # the process counts on its own, from zero
        assert [a.status_code for a in during] == [200] * 5 + [429]
        assert window_headers(during[0])[:2] == (5, 4)
        assert "ratelimit.redis_unavailable" in log.read_text()
        redis = start_redis(redis_port, tmp_path)  # an empty Redis: the budget counts there again
        deadline = time.monotonic() + 10
        while not redis_keys(redis_port, prefix):
            assert time.monotonic() < deadline, log.read_text()
            items(base, "outage", service)
            time.sleep(0.2)
        assert "ratelimit.redis_recovered" in log.read_text()
    finally:
        if gateway is not None:
            stop(gateway)
        redis.kill()
        redis.wait()
