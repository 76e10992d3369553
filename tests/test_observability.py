"""What a maintainer debugging a user's report gets: a request id on every response, in every error body and
in every log line of the request; an access line naming the caller and the reason of a refusal; JSON
lines on stderr unless told otherwise. The gateway runs as its own process, logging to a file."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from engine.database import Database
from functions.keys import create_api_key
from functions.tenants import create_tenant
from tests.server import free_port

SCHEMA = """
name: logs
entities:
  item:
    fields:
      name: {type: string}
    permissions:
      read: {anon: all}
"""


@pytest.fixture(scope="module")
async def tenant(db: Database) -> str:
    await create_tenant(db, "logs", source=SCHEMA)
    return "logs"


@pytest.fixture(scope="module")
async def service_key(db: Database, tenant: str) -> str:
    return (await create_api_key(db, tenant, "backend", "service")).key


@pytest.fixture(scope="module")
def gateway(tenant: str, database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    logfile = tmp_path_factory.mktemp("logs") / "gateway.log"
    port = free_port()
    env = {**os.environ, "BACKSAAS_DATABASE_URL": database_url, "BACKSAAS_LOG_LEVEL": "info"}
    env.pop("BACKSAAS_LOG_FORMAT", None)
    with logfile.open("wb") as sink:
        process = subprocess.Popen([sys.executable, "-m", "uvicorn", "gateway.app:app_from_env", "--factory",
                                    "--port", str(port), "--no-access-log"], env=env, stdout=sink, stderr=sink)
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


def log_lines(logfile: Path, request_id: str) -> list[dict]:
    time.sleep(0.2)  # the access line is written as the response completes
    lines = [orjson.loads(line) for line in logfile.read_bytes().splitlines() if line.startswith(b"{")]
    return [line for line in lines if line.get("request_id") == request_id]


def test_every_response_carries_a_new_request_id(gateway: tuple[str, Path]):
    base, _ = gateway
    first = httpx.get(f"{base}/api/tenants/logs/rest/v1/item").headers["x-request-id"]
    second = httpx.get(f"{base}/healthz").headers["x-request-id"]
    assert len(first) == 32 and first != second


def test_a_clients_request_id_is_kept_and_a_malformed_one_replaced(gateway: tuple[str, Path]):
    base, _ = gateway
    kept = httpx.get(f"{base}/api/tenants/logs/rest/v1/item", headers={"X-Request-Id": "trace-abc-123"})
    assert kept.headers["x-request-id"] == "trace-abc-123"
    replaced = httpx.get(f"{base}/api/tenants/logs/rest/v1/item", headers={"X-Request-Id": "x" * 500})
    assert replaced.headers["x-request-id"] != "x" * 500 and len(replaced.headers["x-request-id"]) == 32


@pytest.mark.parametrize("path", ["/api/tenants/logs/rest/v1/missing", "/api/tenants/nobody/rest/v1/item",
                                  "/api/tenants/logs/auth/v1/token?grant_type=password", "/nowhere"])
def test_error_bodies_carry_the_request_id(gateway: tuple[str, Path], path: str):
    base, _ = gateway
    response = httpx.request("POST" if "token" in path else "GET", base + path, json={} if "token" in path else None)
    assert response.status_code >= 400
    body = response.json()
    assert body["request_id"] == response.headers["x-request-id"]
    assert int(response.headers["content-length"]) == len(response.content)


def test_the_access_line_names_the_caller_and_the_reason_of_a_refusal(gateway: tuple[str, Path]):
    base, logfile = gateway
    response = httpx.post(f"{base}/api/tenants/logs/rest/v1/item", json={"name": "x"},
                          headers={"X-Request-Id": "refused-write-1"})
    assert response.status_code == 403
    lines = log_lines(logfile, "refused-write-1")
    access = [line for line in lines if line["event"] == "request"]
    assert access, lines
    assert access[0]["status"] == 403 and access[0]["error"] == "permission_denied"
    assert access[0]["roles"] == ["anon"] and access[0]["tenant"] == "logs"


def test_the_access_line_names_the_key_a_request_came_by(gateway: tuple[str, Path], service_key: str):
    base, logfile = gateway
    httpx.get(f"{base}/api/tenants/logs/rest/v1/item", headers={"apikey": service_key, "X-Request-Id": "by-key-1"})
    access = [line for line in log_lines(logfile, "by-key-1") if line["event"] == "request"]
    assert access and access[0]["key"] == "backend" and access[0]["roles"] == ["service"]


def test_log_lines_are_json_with_the_request_id_when_stderr_is_not_a_terminal(gateway: tuple[str, Path]):
    base, logfile = gateway
    httpx.get(f"{base}/api/tenants/logs/rest/v1/item", headers={"X-Request-Id": "json-line-1"})
    lines = log_lines(logfile, "json-line-1")
    assert lines and all("timestamp" in line and "level" in line for line in lines)
