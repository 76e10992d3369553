"""REST throughput and latency: the engine against a hand-written Starlette + asyncpg app, same run.

    python bench/rest.py [--seconds 10] [--connections 32] [--database-url URL]

Both servers run with 2 workers (`backsaas serve --workers 2`, `uvicorn --workers 2`) on one scratch
database holding the blog schema with 1,000 posts, and answer the same four requests: list 20 posts
with a filter and an order, get one post by id, list 20 posts with their author embedded, insert one
comment. The load comes from wrk (Debian's package) when installed, else from a Python load generator.
Printed per request: req/s, p50 and p99 for both (the best of `--rounds` alternating runs, which
damps the noise of a small machine shared by the servers, PostgreSQL and the load generator), the ratio
engine/baseline, and the database transactions per request (each a round trip of a one-statement request).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import httpx
from sqlalchemy.engine import make_url

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from engine.database import Database  # noqa: E402
from engine.embedded import EmbeddedPostgres, data_directory  # noqa: E402
from engine.storage.deploy import deploy_platform  # noqa: E402
from functions.keys import create_api_key  # noqa: E402
from functions.tenants import create_tenant  # noqa: E402


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def on(url: str, database: str) -> str:
    return make_url(url).set(database=database).render_as_string(hide_password=False)


async def prepare(url: str) -> tuple[str, list[str], str]:
    db = await Database.connect(url)
    await deploy_platform(db)
    await create_tenant(db, "bench", source=(REPO / "schemas" / "blog.yaml").read_text())
    async with db.as_role(db.role("bench")) as conn:
        await conn.execute("""
            INSERT INTO t_bench.author (name, email) SELECT 'author ' || i, 'a' || i || '@example.com'
              FROM generate_series(1, 50) i;
            INSERT INTO t_bench.post (title, status, author_id, rating, published_at, tags)
              SELECT 'post ' || i, CASE WHEN i % 3 = 0 THEN 'draft' ELSE 'published' END,
                     (SELECT id FROM t_bench.author ORDER BY name OFFSET (i % 50) LIMIT 1),
                     (i % 50) / 10.0, now() - i * interval '1 hour', ARRAY['t' || (i % 7)]
              FROM generate_series(1, 1000) i""")
        posts = [r["id"] for r in await conn.fetch("SELECT id::text FROM t_bench.post ORDER BY title LIMIT 20")]
    role = db.role("bench")
    key = (await create_api_key(db, "bench", "service", "service")).key
    await db.close()
    return role, posts, key


def start(command: list[str], env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(command, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
            return process
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"{command[0]} did not start: {process.stderr.read().decode() if process.stderr else ''}")


def wrk(url: str, seconds: int, connections: int, lua: str | None, headers: dict[str, str]) -> tuple[float, float, float]:
    command = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency"]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    if lua:
        command += ["-s", lua]
    output = subprocess.run([*command, url], capture_output=True, text=True, check=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if errors:
        raise RuntimeError(f"{url}: {errors.group(1)} error responses\n{output}")

    def percentile(p: str) -> float:
        value, unit = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", output).groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    return rate, percentile("50"), percentile("99")


async def python_load(url: str, seconds: int, connections: int, body: str | None,
                      headers: dict[str, str]) -> tuple[float, float, float]:
    latencies: list[float] = []
    deadline = time.monotonic() + seconds

    async def worker(client: httpx.AsyncClient) -> None:
        while time.monotonic() < deadline:
            started = time.perf_counter()
            response = await (client.post(url, content=body, headers={"Content-Type": "application/json"}) if body
                              else client.get(url))
            response.raise_for_status()
            latencies.append((time.perf_counter() - started) * 1000)

    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=connections), headers=headers) as client:
        began = time.monotonic()
        await asyncio.gather(*(worker(client) for _ in range(connections)))
        elapsed = time.monotonic() - began
    latencies.sort()
    return len(latencies) / elapsed, statistics.median(latencies), latencies[int(0.99 * (len(latencies) - 1))]


async def transactions(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval("SELECT xact_commit + xact_rollback FROM pg_stat_database "
                                   "WHERE datname = current_database()")
    finally:
        await conn.close()


def measure(url: str, seconds: int, connections: int, body: str | None, db_url: str,
            headers: dict[str, str]) -> tuple[float, float, float, float]:
    lua = None
    if body is not None:
        lua = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
        lua.write(f'wrk.method = "POST"\nwrk.body = {json.dumps(body)}\nwrk.headers["Content-Type"] = "application/json"\n')
        lua.close()
    use_wrk = shutil.which("wrk") is not None
    run = (lambda s: wrk(url, s, connections, lua.name if lua else None, headers)) if use_wrk else \
        (lambda s: asyncio.run(python_load(url, s, connections, body, headers)))
    run(1)  # warm up: runtimes compiled, statements prepared, pools full
    time.sleep(1.0)  # pg_stat_database is updated by the backends at most every second
    before = asyncio.run(transactions(db_url))
    rate, p50, p99 = run(seconds)
    time.sleep(1.5)
    after = asyncio.run(transactions(db_url))
    return rate, p50, p99, (after - before) / max(rate * seconds, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2, help="alternate engine and baseline this many times; keep each best")
    parser.add_argument("--database-url")
    args = parser.parse_args()
    server = args.database_url or os.environ.get("DATABASE_URL") or \
        EmbeddedPostgres.start(data_directory(REPO, name="bench-pgdata")).url("postgres")
    database = f"bench_rest_{secrets.token_hex(3)}"

    async def create() -> None:
        admin = await asyncpg.connect(on(server, "postgres"))
        await admin.execute(f'CREATE DATABASE "{database}"')
        await admin.close()

    asyncio.run(create())
    url = on(server, database)
    role, posts, key = asyncio.run(prepare(url))
    headers = {"apikey": key}  # the engine is called with the tenant's service key, as a backend would
    engine_port, baseline_port = free_port(), free_port()
    engine = start([sys.executable, "-m", "gateway.cli", "serve", "--port", str(engine_port), "--workers", "2"],
                   {"DATABASE_URL": url, "BACKSAAS_LOG_LEVEL": "warning"}, engine_port)
    baseline = start([sys.executable, "-m", "uvicorn", "--app-dir", str(REPO / "bench"), "baseline_app:app",
                      "--port", str(baseline_port), "--workers", "2", "--log-level", "warning", "--no-access-log"],
                     {"BENCH_DATABASE_URL": url, "BENCH_ROLE": role}, baseline_port)
    rest = f"http://127.0.0.1:{engine_port}/api/tenants/bench/rest/v1"
    hand = f"http://127.0.0.1:{baseline_port}"
    comment = json.dumps({"post_id": posts[0], "body": "a comment"})
    cases = [
        ("list 20, filter + order", f"{rest}/post?select=id,title,status,rating&status=eq.published"
                                    "&order=published_at.desc&limit=20", f"{hand}/list?status=published", None),
        ("get one by id", f"{rest}/post?id=eq.{posts[1]}", f"{hand}/get?id={posts[1]}", None),
        ("list 20 + embedded author", f"{rest}/post?select=id,title,author(name)&order=created_at.desc&limit=20",
         f"{hand}/embed", None),
        ("insert one", f"{rest}/comment", f"{hand}/insert", comment),
    ]
    try:
        print(f"load: {'wrk' if shutil.which('wrk') else 'python'} -c{args.connections}, {args.seconds}s per run, "
              f"best of {args.rounds} alternating runs; servers with 2 workers; {os.cpu_count()} cores")
        print(f"{'request':28}{'engine req/s':>13}{'p50 ms':>8}{'p99 ms':>8}{'tx/req':>7}"
              f"{'baseline req/s':>16}{'p50 ms':>8}{'p99 ms':>8}{'tx/req':>7}{'ratio':>7}")
        for name, engine_url, baseline_url, body in cases:
            runs = [(measure(engine_url, args.seconds, args.connections, body, url, headers),
                     measure(baseline_url, args.seconds, args.connections, body, url, {})) for _ in range(args.rounds)]
            e = max((r[0] for r in runs), key=lambda m: m[0])
            b = max((r[1] for r in runs), key=lambda m: m[0])
            print(f"{name:28}{e[0]:>13.0f}{e[1]:>8.2f}{e[2]:>8.2f}{e[3]:>7.2f}"
                  f"{b[0]:>16.0f}{b[1]:>8.2f}{b[2]:>8.2f}{b[3]:>7.2f}{e[0] / b[0]:>7.2f}")
    finally:
        for process in (engine, baseline):
            process.terminate()
            process.wait(timeout=30)

        async def drop() -> None:
            admin = await asyncpg.connect(on(server, "postgres"))
            await admin.execute(f'DROP DATABASE "{database}" WITH (FORCE)')
            for (name,) in await admin.fetch("SELECT rolname FROM pg_roles WHERE starts_with(rolname, $1)", f"{database}_"):
                await admin.execute(f'DROP ROLE "{name}"')
            await admin.close()

        asyncio.run(drop())


if __name__ == "__main__":
    main()
