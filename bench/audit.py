"""The cost of the audit trail: inserts and updates of one entity with audit on (the default) against the
same entity with `audit: false`, side by side.

    python bench/audit.py [--seconds 5] [--connections 16] [--rounds 2] [--database-url URL]

Two tenants hold the same schema but for `audit: false`. Printed:
1. over HTTP (`backsaas serve --workers 2`, a Python load generator with `--connections`, alternating
   on/off runs, best of `--rounds`): req/s and p50 of a one-row POST and a one-row PATCH by id, and the
   ratio on/off (the target: above 0.85, i.e. under 15% cost) with the database transactions per request
   (the audit adds no round trip: the same count with it on);
2. in the database alone (no HTTP, one connection acting as the tenant's role, the statements the engine
   sends, the context CTE included on the audited side): microseconds per statement and the ratio, the
   audit's whole cost with nothing around it to hide it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import statistics
import sys
import time
from pathlib import Path

import asyncpg
import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from rest import drop_database, free_port, on, start, transactions  # noqa: E402

from engine import audit  # noqa: E402
from engine.database import Database  # noqa: E402
from engine.embedded import EmbeddedPostgres, data_directory  # noqa: E402
from engine.storage.deploy import deploy_platform  # noqa: E402
from functions.keys import create_api_key  # noqa: E402
from functions.tenants import create_tenant  # noqa: E402

SCHEMA = """
name: audited
entities:
  item:
    {audit}
    fields:
      name:  {{type: string, max_length: 80}}
      n:     {{type: integer}}
      token: {{type: string, sensitive: true}}
    permissions:
      read: {{anon: all}}
      create: {{anon: all}}
      update: {{anon: all}}
"""
TENANTS = {"audit-on": "", "audit-off": "audit: false"}
ROWS = 1000


async def prepare(url: str) -> dict[str, dict[str, object]]:
    """Both tenants, a service key each, and ROWS rows each to update."""
    db = await Database.connect(url)
    made: dict[str, dict[str, object]] = {}
    try:
        await deploy_platform(db)
        for slug, keyword in TENANTS.items():
            await create_tenant(db, slug, source=SCHEMA.format(audit=keyword))
            key = (await create_api_key(db, slug, "bench", "service")).key
            async with db.as_role(db.role(slug)) as conn:
                ids = [str(r["id"]) for r in await conn.fetch(
                    f"INSERT INTO t_{slug.replace('-', '_')}.item (name, n, token) "
                    "SELECT 'row ' || g, g, 'secret' FROM generate_series(1, $1) g RETURNING id", ROWS)]
            made[slug] = {"key": key, "ids": ids}
    finally:
        await db.close()
    return made


async def load(method: str, urls: list[str], body: str, headers: dict[str, str], seconds: float,
               connections: int) -> tuple[float, float]:
    """req/s and p50 ms of `connections` clients sending `method` to random `urls` for `seconds`."""
    latencies: list[float] = []
    deadline = time.monotonic() + seconds

    async def worker(client: httpx.AsyncClient) -> None:
        while time.monotonic() < deadline:
            started = time.perf_counter()
            response = await client.request(method, random.choice(urls), content=body)
            response.raise_for_status()
            latencies.append((time.perf_counter() - started) * 1000)

    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=connections),
                                 headers={**headers, "Content-Type": "application/json"}) as client:
        began = time.monotonic()
        await asyncio.gather(*(worker(client) for _ in range(connections)))
        elapsed = time.monotonic() - began
    return len(latencies) / elapsed, statistics.median(latencies)


def over_http(url: str, made: dict[str, dict[str, object]], args: argparse.Namespace) -> None:
    port = free_port()
    server = start([sys.executable, "-m", "gateway.cli", "serve", "--port", str(port), "--workers", "2"],
                   {"DATABASE_URL": url, "BACKSAAS_LOG_LEVEL": "warning", "BACKSAAS_RATE_LIMITS": "off"}, port)
    try:
        print(f"1. over HTTP: python load -c{args.connections}, {args.seconds}s per run, best of {args.rounds} "
              f"alternating runs; 2 workers; {os.cpu_count()} cores")
        print(f"{'request':16}{'on req/s':>10}{'p50 ms':>8}{'tx/req':>7}{'off req/s':>11}{'p50 ms':>8}{'tx/req':>7}"
              f"{'on/off':>8}")
        for label, method in (("insert one", "POST"), ("update one", "PATCH")):
            best: dict[str, tuple[float, float, float]] = {}
            for _ in range(args.rounds):
                for slug in TENANTS:
                    base = f"http://127.0.0.1:{port}/api/tenants/{slug}/rest/v1/item"
                    urls = [base] if method == "POST" else [f"{base}?id=eq.{i}" for i in made[slug]["ids"]]
                    body = json.dumps({"name": "bench", "n": 7, "token": "t0ken"} if method == "POST" else {"n": 8})
                    headers = {"apikey": str(made[slug]["key"])}
                    asyncio.run(load(method, urls, body, headers, 1, args.connections))  # warm up
                    time.sleep(1.0)  # pg_stat_database is updated at most every second
                    before = asyncio.run(transactions(url))
                    rate, p50 = asyncio.run(load(method, urls, body, headers, args.seconds, args.connections))
                    time.sleep(1.5)
                    per_request = (asyncio.run(transactions(url)) - before) / max(rate * args.seconds, 1)
                    best[slug] = max(best.get(slug, (0, 0, 0)), (rate, p50, per_request), key=lambda m: m[0])
            on_, off = best["audit-on"], best["audit-off"]
            print(f"{label:16}{on_[0]:>10.0f}{on_[1]:>8.2f}{on_[2]:>7.2f}{off[0]:>11.0f}{off[1]:>8.2f}{off[2]:>7.2f}"
                  f"{on_[0] / off[0]:>8.2f}")
    finally:
        server.terminate()
        server.wait(timeout=30)


async def in_database(url: str, statements: int) -> None:
    """The engine's insert and update statements, one after another on one connection as the tenant's
    role; the audited side carries the context CTE (engine/audit.py `audited`), as the engine sends it."""
    db = await Database.connect(url)
    context = json.dumps({"request_id": "bench", "key_name": "bench", "roles": "service", "ip": "127.0.0.1"})
    print(f"\n2. in the database: {statements} statements each, one connection, as the tenant's role")
    print(f"{'statement':16}{'on µs':>10}{'off µs':>10}{'on/off':>8}")
    try:
        results: dict[str, dict[str, float]] = {"insert one": {}, "update one": {}}
        for slug in TENANTS:
            table = f"t_{slug.replace('-', '_')}.item"
            insert = f"INSERT INTO {table} (name, n, token) VALUES ($1, $2, $3) RETURNING id"
            update = f"UPDATE {table} SET n = $1 WHERE id = $2::uuid RETURNING id"
            if slug == "audit-on":
                insert = audit.audited(audit.CompiledRead(insert, (0, 1, 2), (None, None, None))).sql
                update = audit.audited(audit.CompiledRead(update, (0, 1), (None, None))).sql
            extra = [context] if slug == "audit-on" else []
            async with db.as_role(db.role(slug)) as conn:
                ids = [r["id"] for r in await conn.fetch(f"SELECT id::text FROM {table} LIMIT {ROWS}")]
                for label, sql, values in (("insert one", insert, lambda n: ["bench", n, "t0ken"]),
                                           ("update one", update, lambda n, ids=ids: [n, ids[n % len(ids)]])):
                    await conn.execute(sql, *values(0), *extra)  # prepared
                    started = time.perf_counter()
                    for n in range(statements):
                        await conn.execute(sql, *values(n), *extra)
                    results[label][slug] = (time.perf_counter() - started) / statements * 1e6
        for label, by in results.items():
            print(f"{label:16}{by['audit-on']:>10.0f}{by['audit-off']:>10.0f}{by['audit-on'] / by['audit-off']:>8.2f}")
    finally:
        await db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--statements", type=int, default=2000)
    parser.add_argument("--database-url")
    parser.add_argument("--database-only", action="store_true", help="part 2 alone (no HTTP)")
    args = parser.parse_args()
    server = args.database_url or os.environ.get("DATABASE_URL") or \
        EmbeddedPostgres.start(data_directory(REPO, name="bench-pgdata")).url("postgres")
    database = f"bench_audit_{secrets.token_hex(3)}"

    async def create() -> None:
        admin = await asyncpg.connect(on(server, "postgres"))
        await admin.execute(f'CREATE DATABASE "{database}"')
        await admin.close()

    asyncio.run(create())
    url = on(server, database)
    try:
        made = asyncio.run(prepare(url))
        if not args.database_only:
            over_http(url, made, args)
        asyncio.run(in_database(url, args.statements))
    finally:
        asyncio.run(drop_database(server, database))


if __name__ == "__main__":
    main()
