"""Time to provision N tenants running schemas/blog.yaml, against a hand-written baseline in the same run.

    python bench/tenants.py [--tenants 100] [--database-url URL]

Engine: `functions.tenants.create_tenant` per tenant (slug checks and the pending row, then provisioning in
one transaction: role, schema, plan from the model, DDL as the tenant role, version recorded, owner, two
API keys, plan subscription, onboarding).
Baseline: the same DDL, pre-rendered once, sent over one asyncpg connection per tenant in one
transaction with CREATE ROLE / CREATE SCHEMA: the floor PostgreSQL itself sets.
Both run in a scratch database on the same server (DATABASE_URL, else the embedded server), dropped after.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import sys
import time
from pathlib import Path

import asyncpg
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.database import Database
from engine.embedded import EmbeddedPostgres, data_directory
from engine.schema import load_schema
from engine.storage.deploy import deploy_platform
from engine.storage.planner import plan_migration
from functions.tenants import create_tenant

REPO = Path(__file__).resolve().parent.parent
BLOG = (REPO / "schemas" / "blog.yaml").read_text()


def server_url(given: str | None) -> str:
    if given or os.environ.get("DATABASE_URL"):
        return given or os.environ["DATABASE_URL"]
    return EmbeddedPostgres.start(data_directory(REPO, name="bench-pgdata")).url("postgres")


def on(url: str, database: str) -> str:
    return make_url(url).set(database=database).render_as_string(hide_password=False)


async def engine_run(url: str, count: int) -> list[float]:
    db = await Database.connect(url)
    await deploy_platform(db)
    times = []
    for i in range(count):
        started = time.perf_counter()
        await create_tenant(db, f"bench-{i}", source=BLOG)
        times.append(time.perf_counter() - started)
    await db.close()
    return times


async def baseline_run(url: str, database: str, count: int) -> list[float]:
    model = load_schema(BLOG)
    conn = await asyncpg.connect(on(url, database))
    times = []
    for i in range(count):
        schema, role = f"t_raw_{i}", f"{database}_t_raw_{i}"
        plan = plan_migration(None, model, schema)  # rendered per tenant (its schema name differs), untimed
        script = ";\n".join(q for step in plan.steps for q in step.sql)
        started = time.perf_counter()
        async with conn.transaction():
            await conn.execute(f'CREATE ROLE "{role}" NOLOGIN; CREATE SCHEMA "{schema}" AUTHORIZATION "{role}"; '
                               f'SET LOCAL ROLE "{role}"; CREATE FUNCTION "{schema}".backsaas_touch_updated_at() '
                               "RETURNS trigger LANGUAGE plpgsql AS $$BEGIN NEW.updated_at := now(); RETURN NEW; END$$; "
                               + script)
        times.append(time.perf_counter() - started)
    await conn.close()
    return times


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--database-url")
    args = parser.parse_args()
    url = server_url(args.database_url)
    database = f"bench_{secrets.token_hex(3)}"
    admin = await asyncpg.connect(on(url, "postgres"))
    await admin.execute(f'CREATE DATABASE "{database}"')
    try:
        engine_times = await engine_run(on(url, database), args.tenants)
        baseline_times = await baseline_run(url, database, args.tenants)
    finally:
        await admin.execute(f'DROP DATABASE "{database}" WITH (FORCE)')
        for (role,) in await admin.fetch("SELECT rolname FROM pg_roles WHERE starts_with(rolname, $1)", f"{database}_"):
            await admin.execute(f'DROP ROLE "{role}"')
        version = await admin.fetchval("SHOW server_version")
        await admin.close()

    print(f"provisioning {args.tenants} tenants running schemas/blog.yaml (PostgreSQL {version})")
    print(f"{'':28}{'total s':>10}{'per tenant ms':>15}{'median ms':>11}{'p95 ms':>9}")
    for name, times in (("engine (create_tenant)", engine_times), ("baseline (raw DDL, asyncpg)", baseline_times)):
        ordered = sorted(times)
        print(f"{name:28}{sum(times):>10.2f}{1000 * sum(times) / len(times):>15.2f}"
              f"{1000 * statistics.median(times):>11.2f}{1000 * ordered[int(0.95 * (len(times) - 1))]:>9.2f}")
    print(f"ratio engine / baseline: {sum(engine_times) / sum(baseline_times):.2f}x")


if __name__ == "__main__":
    asyncio.run(main())
