"""Usage metering: every tenant request counted in memory and flushed to `usage_daily` in batches.

Driven over HTTP against real gateways (a thread, or `backsaas serve` processes) on a real PostgreSQL;
the totals are read from `system.usage_daily`, as the usage function and the billing read them.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import asyncpg
import httpx
import pytest

from engine import catalog, metering
from engine.database import Database
from functions.keys import create_api_key
from functions.tenants import create_tenant
from tests.conftest import driver_url
from tests.server import free_port, running_gateway

SCHEMA = """
name: meter
entities:
  note:
    fields:
      body: {type: text}
    permissions:
      read: {anon: all, authenticated: all}
functions:
  whoami:
    handler: examples.whoami
    roles: [anon]
"""
http = httpx.Client(timeout=60)  # generous: the test machine may be loaded
PASSWORD = "a long enough passphrase"
UNLIMITED_PLAN = "metering-test"


async def add_plan(db: Database, code: str, limits: dict[str, Any]) -> None:
    async with db.begin() as conn:
        await conn.execute(catalog.platform_tables()["plans"].insert().values(code=code, name=code, limits=limits))


@pytest.fixture(scope="module")
async def keys(db: Database) -> dict[str, dict[str, str]]:
    await add_plan(db, UNLIMITED_PLAN, {})
    made = {}
    for slug in ("meter-a", "meter-b", "meter-c", "meter-d"):
        await create_tenant(db, slug, source=SCHEMA, plan=UNLIMITED_PLAN)
        made[slug] = {role: (await create_api_key(db, slug, role, role)).key for role in ("anon", "service")}
    return made


def totals(database_url: str, slug: str) -> dict[str, int]:
    """The tenant's usage_daily, summed by metric over every day."""
    async def read() -> dict[str, int]:
        conn = await asyncpg.connect(driver_url(database_url))
        try:
            rows = await conn.fetch("SELECT u.metric, sum(u.value)::bigint AS v FROM system.usage_daily u "
                                    "JOIN system.tenants t ON t.id = u.tenant_id WHERE t.slug = $1 GROUP BY u.metric", slug)
        finally:
            await conn.close()
        return {r["metric"]: r["v"] for r in rows}
    return asyncio.run(read())


def wait_for(check: Callable[[], Any], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def some_traffic(base: str, slug: str, keys: dict[str, str], reads: int) -> dict[str, int]:
    """REST reads and writes, GraphQL, auth and a function call; what the meter should count for them."""
    api = f"{base}/api/tenants/{slug}"
    service = {"apikey": keys["service"]}
    for _ in range(reads):
        assert http.get(f"{api}/rest/v1/note", headers=service).status_code == 200
    assert http.post(f"{api}/rest/v1/note", json=[{"body": "a"}, {"body": "b"}, {"body": "c"}],
                      headers=service).status_code == 201
    assert http.patch(f"{api}/rest/v1/note?body=eq.a", json={"body": "z"}, headers=service).status_code == 204
    assert http.delete(f"{api}/rest/v1/note?body=eq.b", headers=service).status_code == 204
    assert http.post(f"{api}/rest/v1/note", json={"nope": 1}, headers=service).status_code == 422
    inserted = http.post(f"{api}/graphql/v1", headers=service, json={
        "query": 'mutation { insert_note(objects: [{body: "g1"}, {body: "g2"}]) { affected_rows } }'})
    assert inserted.json() == {"data": {"insert_note": {"affected_rows": 2}}}
    updated = http.post(f"{api}/graphql/v1", headers=service, json={
        "query": 'mutation { update_note(where: {body: {_eq: "g1"}}, _set: {body: "g3"}) { returning { body } } }'})
    assert updated.json() == {"data": {"update_note": {"returning": [{"body": "g3"}]}}}
    failed = http.post(f"{api}/graphql/v1", headers=service, json={  # rolled back whole: no rows written
        "query": 'mutation { a: insert_note_one(object: {body: "x"}) { id } b: insert_note_one(object: {nope: 1}) { id } }'})
    assert failed.json().get("errors"), failed.text
    assert http.post(f"{api}/functions/v1/whoami", json={}, headers={"apikey": keys["anon"]}).status_code == 200
    signed = http.post(f"{api}/auth/v1/signup", headers={"apikey": keys["anon"]},
                        json={"email": f"user{time.monotonic_ns()}@example.com", "password": PASSWORD})
    assert signed.status_code == 200, signed.text
    return {"rest_calls": reads + 4, "graphql_calls": 3, "function_calls": 1, "auth_calls": 1,
            "rows_written": 3 + 1 + 1 + 2 + 1, "errors_4xx": 1}


def expect(found: dict[str, int], wanted: dict[str, int], requests_made: int) -> None:
    assert {k: found.get(k, 0) for k in wanted} == wanted
    assert sum(found.get(m, 0) for m in metering.LATENCY_METRICS) == requests_made
    assert found.get("egress_bytes", 0) > 0 and found.get("function_ms", 0) >= 1


def test_metering_totals_equal_the_requests_made_after_a_flush(keys, database_url):
    with running_gateway(database_url, metering={"flush_seconds": 0.2}) as base:
        wanted = some_traffic(base, "meter-a", keys["meter-a"], reads=7)
        made = sum(wanted[m] for m in metering.SURFACE_METRICS)
        found = wait_for(lambda: (t := totals(database_url, "meter-a")) and
                         sum(t.get(m, 0) for m in metering.SURFACE_METRICS) >= made and t)
        expect(found, wanted, made)
        time.sleep(0.5)  # later flushes add nothing that was not asked
        assert totals(database_url, "meter-a") == found


def test_counts_are_flushed_when_the_gateway_stops_gracefully(keys, database_url):
    with running_gateway(database_url, metering={"flush_seconds": 3600}) as base:
        wanted = some_traffic(base, "meter-b", keys["meter-b"], reads=5)
        flushed = totals(database_url, "meter-b")  # nothing counted is written while it runs: a flush per interval
        assert not set(flushed) & set(metering.COUNTERS), flushed
    made = sum(wanted[m] for m in metering.SURFACE_METRICS)
    expect(totals(database_url, "meter-b"), wanted, made)


def serve(database_url: str, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "DATABASE_URL": database_url, "BACKSAAS_METER_FLUSH_SECONDS": "0.3"}
    process = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--port", str(port)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if http.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise AssertionError(process.stderr.read().decode() if process.stderr else "serve did not start")


def test_two_gateway_processes_add_up(keys, database_url):
    first, second = free_port(), free_port()
    processes: list[subprocess.Popen[bytes]] = []
    try:
        processes.append(serve(database_url, first))
        processes.append(serve(database_url, second))
        a = some_traffic(f"http://127.0.0.1:{first}", "meter-c", keys["meter-c"], reads=6)
        b = some_traffic(f"http://127.0.0.1:{second}", "meter-c", keys["meter-c"], reads=9)
        wanted = {k: a[k] + b[k] for k in a}
        made = sum(wanted[m] for m in metering.SURFACE_METRICS)
        found = wait_for(lambda: (t := totals(database_url, "meter-c")) and
                         sum(t.get(m, 0) for m in metering.SURFACE_METRICS) >= made and t)
        expect(found, wanted, made)
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            process.wait(timeout=30)


def test_a_request_of_an_unknown_tenant_counts_nothing(keys, database_url):
    with running_gateway(database_url, metering={"flush_seconds": 3600}) as base:
        assert http.get(f"{base}/api/tenants/nobody/rest/v1/note").status_code == 404
        api = f"{base}/api/tenants/meter-d/rest/v1/note"
        for _ in range(3):
            assert http.get(api, headers={"apikey": keys["meter-d"]["anon"]}).status_code == 200
    found = totals(database_url, "meter-d")
    assert found["rest_calls"] == 3 and sum(found.get(m, 0) for m in metering.LATENCY_METRICS) == 3
