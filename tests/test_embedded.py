"""The embedded PostgreSQL: first start, restart with data, stop on exit, and the wheel's traps.

Each scenario runs in its own Python process (as `backsaas` itself does), because what is under test
is what happens when that process exits, is terminated or is killed.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx2
import psutil
import pytest

from engine.embedded import RELOCATED_ROOT, data_directory

REPO = Path(__file__).resolve().parent.parent


def run_python(code: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


START = """
    import asyncio, json, os, sys
    from pathlib import Path
    from engine.embedded import EmbeddedPostgres, data_directory, ensure_database
    from engine.database import Database
    server = EmbeddedPostgres.start(data_directory(Path.cwd()))
    asyncio.run(ensure_database(server.url("postgres")))
    url = server.url()
"""


def postgres_running(pgdata: Path, pid: int) -> bool:
    return psutil.pid_exists(pid) and (pgdata / "postmaster.pid").exists()


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    return tmp_path


def test_first_start_initialises_and_exit_stops_the_server_and_restart_keeps_data(project: Path):
    first = run_python(START + """
    import sqlalchemy as sa
    async def main():
        db = await Database.connect(url)
        async with db.begin() as conn:
            await conn.execute(sa.text("CREATE TABLE kept (v text)"))
            await conn.execute(sa.text("INSERT INTO kept VALUES ('still here')"))
            version = await conn.scalar(sa.text("SHOW server_version_num"))
        await db.close()
        print(json.dumps({"pid": server.pid(), "version": int(version)}))
    asyncio.run(main())
    """, project)
    assert first.returncode == 0, first.stderr
    started = json.loads(first.stdout)
    pgdata = data_directory(project)
    assert (pgdata / "PG_VERSION").exists() and started["version"] >= 180000
    assert not postgres_running(pgdata, started["pid"])  # stopped when the process exited

    second = run_python(START + """
    import sqlalchemy as sa
    async def main():
        db = await Database.connect(url)
        async with db.begin() as conn:
            print(await conn.scalar(sa.text("SELECT v FROM kept")))
        await db.close()
    asyncio.run(main())
    """, project)
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == "still here"


def test_a_killed_process_leaves_no_server_running_after_the_next_exit(project: Path):
    killed = run_python(START + """
    import signal
    print(server.pid(), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
    """, project)
    assert killed.returncode == -signal.SIGKILL
    pgdata = data_directory(project)
    pid = int(killed.stdout.strip())
    assert postgres_running(pgdata, pid)  # the kill skipped every exit handler: the server is orphaned
    try:
        joined = run_python(START + "    print(server.pid())\n", project)
        assert joined.returncode == 0, joined.stderr
        assert int(joined.stdout.strip()) == pid  # the next process joins the orphan ...
        deadline = time.monotonic() + 10
        while postgres_running(pgdata, pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not postgres_running(pgdata, pid)  # ... and, the dead PID pruned, stops it on exit
    finally:
        if psutil.pid_exists(pid):
            psutil.Process(pid).terminate()


def test_tenant_roles_are_confined_on_the_embedded_servers_superuser_connection(project: Path):
    result = run_python(START + """
    import sqlalchemy as sa
    from sqlalchemy.exc import DBAPIError
    from engine.storage.deploy import deploy_platform
    from functions.tenants import create_tenant
    async def main():
        db = await Database.connect(url)
        await deploy_platform(db)
        await create_tenant(db, "alpha", source="name: a\\nentities:\\n  secret:\\n    fields: {v: {type: text}}\\n")
        await create_tenant(db, "beta", source="name: b\\nentities: {}\\n")
        try:
            async with db.begin() as conn:
                await conn.exec_driver_sql(f'SET LOCAL ROLE "{db.role("beta")}"')
                await conn.execute(sa.text("SELECT * FROM t_alpha.secret"))
            print("read")
        except DBAPIError as exc:
            print("denied" if "permission denied" in str(exc) else f"other: {exc}")
        await db.close()
    asyncio.run(main())
    """, project)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "denied"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_serve_runs_on_embedded_postgres_and_sigterm_stops_it(project: Path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    server = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--port", str(port), "--demo"],
                              cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if httpx2.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx2.TransportError:
                time.sleep(0.2)
        ready = httpx2.get(f"{base}/readyz").json()
        assert (ready["status"], ready["database"]) == ("ok", "ok")
        assert ready["connections"]["requests"]["open"] >= 1  # the request pool logs in as its own role here too
        assert httpx2.get(f"{base}/api/platform/").json()["tenant"] == "system"
        demo = httpx2.get(f"{base}/api/tenants/demo/").json()
        assert {"author", "post", "comment"} <= {e["name"] for e in demo["entities"]}
        pgdata = data_directory(project)
        postmaster = int((pgdata / "postmaster.pid").read_text().split()[0])
    finally:
        server.send_signal(signal.SIGTERM)
        stdout, stderr = server.communicate(timeout=30)
    assert server.returncode == 0 or server.returncode == 128 + signal.SIGTERM, stderr
    assert "platform admin login: admin@backsaas.local" in stdout
    deadline = time.monotonic() + 10
    while psutil.pid_exists(postmaster) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not psutil.pid_exists(postmaster)


def test_data_directory_is_kept_out_of_roots_home_when_running_as_root(tmp_path: Path):
    root_home = Path("/root")
    moved = data_directory(root_home / "project", euid=0)
    assert moved.parent.parent == RELOCATED_ROOT and moved.name == "pgdata"
    assert data_directory(root_home / "project", euid=1000) == root_home / "project" / ".backsaas" / "pgdata"
    assert data_directory(tmp_path, euid=0) == (tmp_path / ".backsaas" / "pgdata").resolve()
