"""Webhooks from the transactional outbox, against a real HTTP receiver started by the test: down for the
first attempts, then up, with the server restarted in the middle — every event reaches the receiver's
dedup store exactly once, signed with the tenant's own secret; a receiver that always fails leaves dead
events that the tenant's admin redelivers; a down or slow receiver never blocks or fails a write.
The receivers listen on 127.0.0.1, which the gateways here allow as the operator would
(`BACKSAAS_WEBHOOK_ALLOW_HOSTS`); tests/test_webhook_guard.py covers what is refused."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import orjson
import pytest

from engine.database import Database
from engine.outbox import SIGNATURE_HEADER, verify_signature
from functions.keys import create_api_key
from functions.secrets import store_webhook_secret
from functions.tenants import create_tenant
from tests.server import free_port, running_gateway

SECRET = "whsec-test-secret"


class Receiver:
    """A webhook receiver: verifies signatures and keeps each event once (by id), as receivers should."""

    def __init__(self, port: int, answer: int = 200) -> None:
        self.port, self.answer = port, answer
        self.store: dict[str, dict] = {}
        self.requests = 0
        self.bad_signatures = 0
        self.server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests += 1
                if not verify_signature(SECRET, self.headers.get(SIGNATURE_HEADER, ""), body):
                    receiver.bad_signatures += 1
                elif receiver.answer == 200:
                    event = orjson.loads(body)
                    receiver.store.setdefault(event["id"], event)
                self.send_response(receiver.answer)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def schema(port: int) -> str:
    return f"""
name: shop
entities:
  purchase:
    fields:
      ref: {{type: string, required: true}}
      total: {{type: number}}
    permissions:
      read: {{anon: all}}
      create: {{anon: all}}
      update: {{anon: all}}
    hooks:
      after_create: [{{webhook: "http://127.0.0.1:{port}/hook", secret: SHOP_WEBHOOK_SECRET}}]
      after_update: [{{webhook: "http://127.0.0.1:{port}/hook", secret: SHOP_WEBHOOK_SECRET}}]
"""


def wait_until(check, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


class Gateway:
    """A gateway in a process of its own, so that the test can stop it mid-delivery and start another."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self) -> str:
        port = free_port()
        env = {**os.environ, "BACKSAAS_DATABASE_URL": self.database_url, "BACKSAAS_WEBHOOK_ALLOW_HOSTS": "127.0.0.1",
               "BACKSAAS_OUTBOX_BASE_DELAY": "0.2", "BACKSAAS_OUTBOX_MAX_ATTEMPTS": "100", "BACKSAAS_LOG_LEVEL": "warning",
               "BACKSAAS_OUTBOX_LEASE": "3",  # an event claimed by the stopped gateway is retaken within the wait
               "BACKSAAS_OUTBOX_TIMEOUT": "1"}  # which a delivery fits in: its attempt and its recording, 1 s each
        self.process = subprocess.Popen([sys.executable, "-m", "uvicorn", "gateway.app:app_from_env", "--factory",
                                         "--port", str(port), "--log-level", "warning"], env=env)
        self.url = f"http://127.0.0.1:{port}"
        assert wait_until(lambda: _up(self.url)), "the gateway did not start"
        return self.url

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=30)


def _up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture(scope="module")
def receiver_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
async def keys(db: Database, receiver_port: int) -> dict[str, str]:
    await create_tenant(db, "shop", source=schema(receiver_port))
    await store_webhook_secret(db, "shop", "SHOP_WEBHOOK_SECRET", SECRET)
    return {role: (await create_api_key(db, "shop", role, role)).key for role in ("anon", "service")}


def test_every_event_reaches_the_receiver_once_across_an_outage_and_a_restart(keys, database_url, receiver_port):
    receiver = Receiver(receiver_port)
    first = Gateway(database_url)
    url = first.start()
    try:
        for i in range(5):  # the receiver is down: the writes still succeed at once
            started = time.monotonic()
            made = httpx.post(f"{url}/api/tenants/shop/rest/v1/purchase", json={"ref": f"A{i}", "total": i},
                              headers={"apikey": keys["anon"]})
            assert made.status_code == 201 and time.monotonic() - started < 2
        failed_attempts = lambda: httpx.get(f"{url}/api/tenants/shop/events/v1",  # noqa: E731
                                            headers={"apikey": keys["service"]}).json()
        assert wait_until(lambda: all(e["attempts"] >= 2 for e in failed_attempts()) and len(failed_attempts()) == 5)
        assert all(e["last_error"] == "could not connect" for e in failed_attempts())
    finally:
        first.stop()  # mid-delivery: events pending, some perhaps claimed
    receiver.start()
    second = Gateway(database_url)
    url = second.start()
    try:
        for i in range(5):
            httpx.post(f"{url}/api/tenants/shop/rest/v1/purchase", json={"ref": f"B{i}"}, headers={"apikey": keys["anon"]})
        httpx.patch(f"{url}/api/tenants/shop/rest/v1/purchase", params={"ref": "eq.B0"}, json={"total": 99},
                    headers={"apikey": keys["anon"]})
        assert wait_until(lambda: len(receiver.store) == 11), f"{len(receiver.store)} of 11 delivered"
        events = httpx.get(f"{url}/api/tenants/shop/events/v1", headers={"apikey": keys["service"]}).json()
        assert {e["status"] for e in events} == {"delivered"} and len(events) == 11
        early = next(e for e in events if e["attempts"] >= 3)  # one of the first five
        log = httpx.get(f"{url}/api/tenants/shop/events/v1/{early['id']}/deliveries",
                        headers={"apikey": keys["service"]}).json()
        assert [d["succeeded"] for d in log] == [False] * (len(log) - 1) + [True]
        assert log[0]["status_code"] is None and log[0]["error"] == "could not connect"
        assert log[-1]["status_code"] == 200 and log[-1]["latency_ms"] > 0
        hidden = httpx.get(f"{url}/api/tenants/shop/events/v1/{early['id']}/deliveries",
                           headers={"apikey": keys["anon"]})
        assert hidden.status_code == 403
    finally:
        second.stop()
        receiver.stop()
    assert receiver.bad_signatures == 0
    refs = sorted((e["action"], e["record"]["ref"]) for e in receiver.store.values())
    assert refs == sorted([("create", f"A{i}") for i in range(5)] + [("create", f"B{i}") for i in range(5)]
                          + [("update", "B0")])
    update = next(e for e in receiver.store.values() if e["action"] == "update")
    assert update["old_record"]["total"] is None and update["record"]["total"] == 99
    assert {"id", "tenant", "entity", "action", "record", "old_record", "at"} <= set(update)


async def test_a_failing_receiver_leaves_dead_events_that_an_admin_redelivers(keys, database_url, db):
    port = free_port()
    await create_tenant(db, "flaky", source=schema(port).replace("name: shop", "name: flaky"))
    await store_webhook_secret(db, "flaky", "SHOP_WEBHOOK_SECRET", SECRET)
    admin = (await create_api_key(db, "flaky", "service", "service")).key
    anon = (await create_api_key(db, "flaky", "anon", "anon")).key
    receiver = Receiver(port, answer=500)
    receiver.start()
    try:
        with running_gateway(database_url, outbox={"max_attempts": 2, "base_delay": 0.05,
                                                   "allow_hosts": ("127.0.0.1",)}) as url:
            httpx.post(f"{url}/api/tenants/flaky/rest/v1/purchase", json={"ref": "X"}, headers={"apikey": anon})
            dead = lambda: httpx.get(f"{url}/api/tenants/flaky/events/v1", params={"status": "dead"},  # noqa: E731
                                     headers={"apikey": admin}).json()
            assert wait_until(lambda: len(dead()) == 1)
            assert dead()[0]["attempts"] == 2 and dead()[0]["last_error"] == "HTTP 500" and receiver.requests == 2
            refused = httpx.post(f"{url}/api/tenants/flaky/events/v1/{dead()[0]['id']}/redeliver",
                                 headers={"apikey": anon})
            assert refused.status_code == 403
            receiver.answer = 200
            event_id = dead()[0]["id"]
            again = httpx.post(f"{url}/api/tenants/flaky/events/v1/{event_id}/redeliver", headers={"apikey": admin})
            assert again.status_code == 202
            assert wait_until(lambda: event_id in receiver.store)
            other = httpx.post(f"{url}/api/tenants/shop/events/v1/{event_id}/redeliver",
                               headers={"apikey": keys["service"]})
            assert other.status_code == 404  # another tenant's event is not found through shop
    finally:
        receiver.stop()
