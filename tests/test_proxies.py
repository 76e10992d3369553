"""Which address is the client's: the peer's, unless the peer is a proxy the operator trusts
(`BACKSAAS_TRUSTED_PROXIES` / `backsaas serve --trusted-proxies`), whose `X-Forwarded-For` then names it.

The address is what the anonymous per-address rate limit counts and what the audit trail records; uvicorn
alone trusts `X-Forwarded-For` from 127.0.0.1, so any local process (or anything a local proxy passes on
unchanged) could spend another address's budget, escape its own, or write any address in the audit trail.
Each test runs `backsaas serve` as an operator does, with and without a trusted proxy."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from engine.database import Database
from functions.keys import create_api_key
from functions.tenants import create_tenant
from tests.server import free_port

SCHEMA = """
name: proxied
entities:
  item:
    fields:
      label: {type: text}
    permissions:
      read: {anon: all}
"""
PASSWORD = "a long enough passphrase"
BUDGET = 3  # an anonymous address's requests a minute, in these gateways


@pytest.fixture(scope="module")
async def keys(db: Database) -> dict[str, str]:
    made = {}
    for slug in ("direct", "behind", "signin"):
        await create_tenant(db, slug, source=SCHEMA)
        made[slug] = (await create_api_key(db, slug, "anon", "anon")).key
    return made


def serve(database_url: str, log: Path, *flags: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    environment = {**os.environ, "DATABASE_URL": database_url, "BACKSAAS_ANON_RATE_LIMIT": f"{BUDGET}/minute",
                   **(env or {})}
    environment.pop("REDIS_URL", None)
    process = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--port", str(port), *flags],
                               env=environment, stdout=subprocess.DEVNULL, stderr=log.open("wb"))
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return process, f"http://127.0.0.1:{port}"
        except httpx.TransportError:
            time.sleep(0.1)
        if process.poll() is not None:
            break
    process.kill()
    raise AssertionError(log.read_text())


@pytest.fixture(scope="module")
def untrusting(keys, database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`backsaas serve` as it starts by default: no proxy trusted (a stray FORWARDED_ALLOW_IPS changes nothing)."""
    process, base = serve(database_url, tmp_path_factory.mktemp("untrusting") / "log",
                          env={"BACKSAAS_TRUSTED_PROXIES": "", "FORWARDED_ALLOW_IPS": "*"})
    try:
        yield base
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def trusting(keys, database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`backsaas serve --trusted-proxies 127.0.0.0/8`: this machine is the operator's proxy."""
    process, base = serve(database_url, tmp_path_factory.mktemp("trusting") / "log", "--trusted-proxies", "127.0.0.0/8")
    try:
        yield base
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def in_one_minute(margin: float = 10.0) -> None:
    left = 60 - time.time() % 60
    if left < margin:
        time.sleep(left + 0.05)


def read(base: str, slug: str, key: str, forwarded: str) -> httpx.Response:
    return httpx.get(f"{base}/api/tenants/{slug}/rest/v1/item", headers={"apikey": key, "X-Forwarded-For": forwarded})


def test_forwarded_for_from_an_untrusted_peer_does_not_escape_the_peers_budget(untrusting, keys):
    in_one_minute()
    answers = [read(untrusting, "direct", keys["direct"], f"203.0.113.{n}") for n in range(1, BUDGET + 2)]
    assert [a.status_code for a in answers] == [200] * BUDGET + [429]  # every claimed address is the peer's


def test_forwarded_for_from_a_trusted_proxy_names_the_client(trusting, keys):
    in_one_minute()
    first = [read(trusting, "behind", keys["behind"], "198.51.100.1") for _ in range(BUDGET + 1)]
    assert [a.status_code for a in first] == [200] * BUDGET + [429]
    other = read(trusting, "behind", keys["behind"], "198.51.100.2")
    assert other.status_code == 200 and other.headers["RateLimit-Remaining"] == str(BUDGET - 1)


async def signed_in_from(base: str, key: str, forwarded: str, email: str) -> None:
    async with httpx.AsyncClient(base_url=f"{base}/api/tenants/signin/auth/v1",
                                 headers={"apikey": key, "X-Forwarded-For": forwarded}) as client:
        assert (await client.post("/signup", json={"email": email, "password": PASSWORD})).status_code == 200
        signed = await client.post("/token", params={"grant_type": "password"}, json={"email": email, "password": PASSWORD})
        assert signed.status_code == 200, signed.text


async def login_ips(database_url: str) -> list[str]:
    """The addresses of the tenant's sign-ins in the audit trail, in order (its emails are pseudonymised)."""
    conn = await asyncpg.connect(database_url.replace("+asyncpg", ""))
    try:
        await conn.execute("SELECT backsaas_audit.seal(NULL)")
        rows = await conn.fetch("SELECT l.ip FROM system.audit_log l JOIN system.tenants t ON t.id = l.tenant_id "
                                "WHERE t.slug = 'signin' AND l.action = 'auth.login' ORDER BY l.created_at, l.id")
        return [row["ip"] for row in rows]
    finally:
        await conn.close()


async def test_the_audit_trail_records_the_peer_unless_a_trusted_proxy_names_the_client(untrusting, trusting, keys,
                                                                                         database_url):
    await signed_in_from(untrusting, keys["signin"], "203.0.113.50", "direct@example.com")
    await signed_in_from(trusting, keys["signin"], "198.51.100.50", "proxied@example.com")
    assert await login_ips(database_url) == ["127.0.0.1", "198.51.100.50"]


def test_serve_refuses_a_trusted_proxy_that_is_no_address(database_url, tmp_path):
    done = subprocess.run([sys.executable, "-m", "gateway.cli", "serve", "--port", str(free_port()),
                           "--trusted-proxies", "10.0.0.0/8,proxy.internal"],
                          env={**os.environ, "DATABASE_URL": database_url}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "'proxy.internal' is not an address or a network" in done.stderr
