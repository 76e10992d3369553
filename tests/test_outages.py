"""A database outage is answered as an outage: 503 `database_unavailable` with `Retry-After`, never a 500;
`/readyz` says 503 while requests would fail and 200 once they succeed; the gateway recovers by itself.
A failure that is not an outage is diagnosable from its JSON log line (type, traceback, request id). The
outbox's lease always outlasts a delivery.

The outage tests stop and start a PostgreSQL cluster of their own (tests/outage_drill.py), never the
shared server."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import orjson
import pytest

from engine.database import Database
from engine.outbox import LEASE_SLACK, Dispatcher, OutboxMisconfigured, lease_for, settings_from_env, shortest_lease
from engine.storage.deploy import deploy_platform
from functions.keys import create_api_key
from functions.tenants import create_tenant
from tests.outage_drill import Cluster, Drill, private_cluster, run_drill
from tests.server import free_port, running_gateway

SCHEMA = """
name: shop
entities:
  item:
    fields:
      name: {type: string}
    permissions:
      read: {anon: all}
"""


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with private_cluster() as own:
        yield own


@pytest.fixture(scope="module")
async def outage_tenant(cluster: Cluster) -> AsyncIterator[tuple[str, str]]:
    """(database URL, service key) of the tenant `shop` on the private cluster."""
    admin = await asyncpg.connect(cluster.url)
    try:
        await admin.execute('CREATE DATABASE "drill"')
    finally:
        await admin.close()
    url = cluster.url.rsplit("/", 1)[0] + "/drill"
    db = await Database.connect(url)
    try:
        await deploy_platform(db)
        await create_tenant(db, "shop", source=SCHEMA)
        key = (await create_api_key(db, "shop", "backend", "service")).key
    finally:
        await db.close()
    yield url, key


def outage_answers(drill: Drill) -> list:
    """Data responses that failed, and every response sent while the server was stopping, down or starting."""
    since, until = drill.marks["stop_begin"], drill.marks["start_done"]
    return [a for a in drill.data() if a.status >= 400 or since <= a.sent <= until]


async def test_a_stopped_and_restarted_database_is_503_with_retry_after_never_500(cluster: Cluster, outage_tenant):
    url, key = outage_tenant
    with running_gateway(url) as base:
        drill = await run_drill(cluster, f"{base}/api/tenants/shop/rest/v1/item", f"{base}/readyz", key)
    failed = [a for a in drill.data() if a.status >= 400]
    assert failed, "the outage failed no request: the drill did not reach the database"
    assert not [a for a in drill.answers if a.status >= 500 and a.status != 503], "a 500 (or a dropped connection)"
    assert all(a.status == 503 and a.retry_after and a.code == "database_unavailable" for a in failed), \
        {(a.status, a.code, a.retry_after) for a in failed}
    assert drill.recovered_at() is not None, "requests never succeeded again after the restart"
    last = max(a.sent for a in drill.data())
    assert [a.status for a in drill.data() if a.sent >= last - 0.5] and \
        all(a.status < 400 for a in drill.data() if a.sent >= drill.recovered_at() + 1.0), "it failed again after recovering"
    assert {a.kind for a in drill.data() if a.sent >= drill.recovered_at() and a.status < 400} == {"read", "write"}


async def test_readyz_is_503_while_the_database_is_down_and_200_after(cluster: Cluster, outage_tenant):
    url, key = outage_tenant
    with running_gateway(url) as base:
        drill = await run_drill(cluster, f"{base}/api/tenants/shop/rest/v1/item", f"{base}/readyz", key)
    first_failure = drill.first_failure()
    assert first_failure is not None
    ready = drill.of("ready")
    assert all(a.status == 200 for a in ready if a.received < drill.marks["stop_begin"])
    during = [a for a in ready if a.sent >= first_failure.received and a.received <= drill.marks["start_begin"]]
    assert during and all(a.status == 503 and a.retry_after for a in during), [a.status for a in during]
    assert ready[-1].status == 200


async def test_a_smart_shutdown_held_open_by_the_gateway_is_503_not_500(cluster: Cluster, outage_tenant):
    """`pg_ctl stop -m smart` waits for every session to end, and the gateway holds some (its listeners): the
    server refuses every new connection (57P03) for as long as that lasts. Readiness says so; requests that
    need a new connection get 503; a later fast stop and start brings everything back."""
    url, key = outage_tenant
    with running_gateway(url) as base:
        items = f"{base}/api/tenants/shop/rest/v1/item"
        async with httpx.AsyncClient(timeout=30) as client:
            assert (await client.get(f"{base}/readyz")).status_code == 200
            await asyncio.to_thread(cluster.stop, "smart", wait=False)
            await asyncio.sleep(0.5)
            assert cluster.running(), "the server stopped: nothing held it open"
            ready = await client.get(f"{base}/readyz")
            assert ready.status_code == 503 and ready.headers["retry-after"]
            # more requests at once than the pool holds connections: some need a new one
            graphql = f"{base}/api/tenants/shop/graphql/v1"
            answers = await asyncio.gather(*(client.get(items, headers={"apikey": key}) for _ in range(30)),
                                           *(client.post(items, headers={"apikey": key}, json={"name": "smart"})
                                             for _ in range(10)),
                                           *(client.post(graphql, headers={"apikey": key},
                                                         json={"query": "{ item(limit: 5) { id name } }"})
                                             for _ in range(20)))
            assert {r.status_code for r in answers} <= {200, 201, 503}
            refused = [r for r in answers if r.status_code == 503]
            assert all(r.headers["retry-after"] and r.json()["code"] == "database_unavailable" for r in refused)
            assert not [r for r in answers if r.status_code == 200 and "errors" in r.json()]  # GraphQL's too
            await asyncio.to_thread(cluster.stop, "fast")
            await asyncio.to_thread(cluster.start)
            deadline = time.monotonic() + 30
            while (await client.get(f"{base}/readyz")).status_code != 200 and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            statuses = [(await client.get(items, headers={"apikey": key})).status_code for _ in range(20)]
            assert statuses[-10:] == [200] * 10, statuses


# -- a failure that is not an outage: its log line says what and where -----------------------------------

FAULTY_GATEWAY = """
import sys, uvicorn
import engine.rest.api as rest

async def broken(self, *args, **kwargs):
    raise RuntimeError("injected fault for the log test")

rest.RestApi.handle = broken
uvicorn.run("gateway.app:app_from_env", factory=True, port=int(sys.argv[1]), access_log=False, log_level="warning")
"""


@pytest.fixture(scope="module")
async def faulty_gateway(db: Database, database_url: str, tmp_path_factory: pytest.TempPathFactory):
    """A gateway process whose REST handler raises an unexpected exception, logging JSON to a file."""
    await create_tenant(db, "faulty", source=SCHEMA)
    logfile = tmp_path_factory.mktemp("outage-logs") / "gateway.log"
    port = free_port()
    env = {**os.environ, "BACKSAAS_DATABASE_URL": database_url, "BACKSAAS_LOG_FORMAT": "json"}
    with logfile.open("wb") as sink:
        process = subprocess.Popen([sys.executable, "-c", FAULTY_GATEWAY, str(port)], env=env, stdout=sink,
                                   stderr=sink, cwd=Path(__file__).resolve().parent.parent)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        yield base, logfile
    finally:
        process.terminate()
        process.wait(timeout=20)


def test_an_unexpected_exception_is_logged_with_its_type_traceback_and_request_id(faulty_gateway):
    base, logfile = faulty_gateway
    response = httpx.get(f"{base}/api/tenants/faulty/rest/v1/item", headers={"X-Request-Id": "trace-me-17"})
    assert response.status_code == 500 and response.json()["code"] == "internal_error"
    assert "injected" not in response.text  # the detail is for the log, not the client
    time.sleep(0.3)
    lines = [orjson.loads(line) for line in logfile.read_bytes().splitlines() if line.startswith(b"{")]
    failed = [line for line in lines if line.get("event") == "request.failed"]
    assert len(failed) == 1, lines
    (line,) = failed
    assert line["request_id"] == "trace-me-17" and line["tenant"] == "faulty"
    (exception,) = line["exception"]
    assert exception["exc_type"] == "RuntimeError" and exception["exc_value"] == "injected fault for the log test"
    assert exception["frames"][-1]["name"] == "broken"
    assert any(frame["name"] == "rest_entity" and frame["filename"].endswith("app.py") for frame in exception["frames"])
    assert "locals" not in orjson.dumps(line).decode()  # a request's variables (keys, bodies) never reach the log


# -- the outbox's lease always outlasts a delivery ---------------------------------------------------------


def test_a_lease_shorter_than_a_delivery_is_refused():
    """A delivery is its attempt and the recording of its outcome, each bounded by the timeout, and the claim."""
    assert shortest_lease(10) == 2 * 10 + LEASE_SLACK
    with pytest.raises(OutboxMisconfigured) as refused:
        lease_for(timeout=10, lease=3)
    assert refused.value.details[0].path == "BACKSAAS_OUTBOX_LEASE"
    with pytest.raises(OutboxMisconfigured):
        lease_for(timeout=10, lease=shortest_lease(10) - 0.5)
    assert lease_for(timeout=10, lease=shortest_lease(10)) == shortest_lease(10)


def test_the_default_lease_outlasts_the_default_and_any_longer_timeout():
    assert lease_for(timeout=10) == 60  # the default: a delivery takes at most 21 s
    assert lease_for(timeout=120) == shortest_lease(120)
    assert Dispatcher(None, None, timeout=90).lease == shortest_lease(90)  # type: ignore[arg-type]


def test_outbox_settings_from_the_environment_are_checked():
    assert settings_from_env({"BACKSAAS_OUTBOX_LEASE": "120", "BACKSAAS_OUTBOX_MAX_ATTEMPTS": "3"}) == \
        {"lease": 120.0, "max_attempts": 3}
    assert settings_from_env({"BACKSAAS_OUTBOX_TIMEOUT": "50"}) == {"timeout": 50.0}  # no lease given: made to fit
    for bad in ({"BACKSAAS_OUTBOX_LEASE": "5"}, {"BACKSAAS_OUTBOX_TIMEOUT": "50", "BACKSAAS_OUTBOX_LEASE": "60"},
                {"BACKSAAS_OUTBOX_LEASE": "soon"}, {"BACKSAAS_OUTBOX_BASE_DELAY": "-1"}):
        with pytest.raises(OutboxMisconfigured):
            settings_from_env(bad)


def test_serve_refuses_to_start_with_a_lease_a_delivery_outlasts(tmp_path: Path):
    env = {**os.environ, "BACKSAAS_OUTBOX_LEASE": "3", "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"}
    result = subprocess.run([sys.executable, "-m", "gateway.cli", "serve", "--port", str(free_port())], env=env,
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "outbox_misconfigured" in result.stderr and "BACKSAAS_OUTBOX_LEASE" in result.stderr
