"""The cost of the audit trail: inserts and updates of one entity with audit on (the default) against the
same entity with `audit: false`, side by side.

    python bench/audit.py [--seconds 5] [--connections 16] [--rounds 2] [--statements 200] [--database-url URL]
                          [--database-only | --parts]

Two tenants hold the same schema but for `audit: false`. The audit's whole cost is counted: entries are
written unsealed in the write's transaction and chained by a sealer (engine/audit_trail.py), which runs
here as in the gateway (each second, on a connection of its own) while the audited side is measured, and
seals what is left before the run's CPU is read. Printed:
1. over HTTP (`backsaas serve --workers 2`, a Python load generator with `--connections`, alternating
   on/off runs, `--rounds` each, the best kept): req/s, then per request the CPU time of the server's
   processes and of the database's backends (the sealer's included), and the database transactions; the
   ratio on/off of req/s and of CPU per request (the target: under 1.15, i.e. under 15% cost, and the
   same transactions per request: no extra round trip), also with the server's CPU taken as the mean of
   both sides (it does the same work for both; its per-request CPU is what load disturbs most);
2. in the database alone (no HTTP, one connection per side acting as the tenant's role, the statements
   the engine sends, the context CTE included on the audited side, each its own transaction as a
   request's is): per statement the backend's CPU time and the wall-clock time (commit and its WAL flush
   included), median of interleaved blocks (and the CPU's least block: what a machine shared with other
   work disturbs least); then what sealing those entries cost per entry.
3. with `--parts` (alone): what sealing costs per entry as the entries are spread over 1, 100 and 1,000
   tenants' chains; where an audited insert's database CPU goes, step by step of a capture (a statement
   trigger doing nothing, the capture's SECURITY DEFINER and SET clauses, an entry without its changed
   fields, the engine's capture function); and what sealing those entries costs, split.
CPU times come from /proc (the database must run on this machine for those columns); they are what a
machine shared with other work measures reliably, where wall-clock throughput is not.
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
from typing import Any

import asyncpg
import httpx
import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from rest import backend_cpu, cpu_of_tree, drop_database, free_port, on, start, transactions  # noqa: E402

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
            await create_tenant(db, slug, source=SCHEMA.format(audit=keyword), plan="enterprise")  # nothing bounds the load
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
               connections: int) -> int:
    """Requests done by `connections` clients sending `method` to random `urls` for `seconds`."""
    done = 0
    deadline = time.monotonic() + seconds

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal done
        while time.monotonic() < deadline:
            response = await client.request(method, random.choice(urls), content=body)
            response.raise_for_status()
            done += 1

    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=connections),
                                 headers={**headers, "Content-Type": "application/json"}) as client:
        await asyncio.gather(*(worker(client) for _ in range(connections)))
    return done


class Sealer:
    """The gateway's sealer for the audited tenant's chain, on one connection of its own (so its backend's
    CPU is counted with the others): `backsaas_audit.seal` each second, in a transaction of its own, and
    the vacuum of `pending` after it (engine/audit_trail.py `seal`)."""

    def __init__(self, url: str, slug: str) -> None:
        self.url, self.slug, self.calls = url, slug, 0

    async def __aenter__(self) -> Sealer:
        self.conn = await asyncpg.connect(self.url)
        self.chain = await self.conn.fetchval("SELECT id FROM system.tenants WHERE slug = $1", self.slug)
        self.loop = asyncio.get_running_loop()
        self.lock = asyncio.Lock()  # `settle` and the second's round share the connection: one at a time
        self.task = asyncio.create_task(self.run())
        return self

    async def run(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            await self.seal()

    async def seal(self) -> None:
        async with self.lock:
            sealed = 0
            while True:
                self.calls += 1
                done = await self.conn.fetchval(f"SELECT {audit.SCHEMA}.seal($1, 1000)", self.chain)
                sealed += done
                if done < 1000:
                    break
            if sealed:  # as engine/audit_trail.py's seal does: the dead rows sealing left in `pending`
                await self.conn.execute(f"VACUUM (SKIP_LOCKED) {audit.PENDING}")

    def settle(self) -> None:
        """From another thread: seal what is left now (the run's whole cost falls in the run)."""
        asyncio.run_coroutine_threadsafe(self.seal(), self.loop).result()

    async def __aexit__(self, *exc: object) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.conn.close()


async def with_sealer(url: str, work: Any) -> Any:
    """`work(sealer)` (blocking, in a thread) while a Sealer seals the audited chain each second."""
    async with Sealer(url, "audit-on") as sealer:
        return await asyncio.to_thread(work, sealer)


def over_http(url: str, made: dict[str, dict[str, object]], args: argparse.Namespace) -> None:
    port = free_port()
    server = start([sys.executable, "-m", "gateway.cli", "serve", "--port", str(port), "--workers", "2"],
                   {"DATABASE_URL": url, "BACKSAAS_LOG_LEVEL": "warning", "BACKSAAS_RATE_LIMITS": "off"}, port)
    tree = psutil.Process(server.pid)
    try:
        print(f"1. over HTTP: python load -c{args.connections}, {args.seconds}s per run, best of {args.rounds} "
              f"alternating runs; 2 workers; {os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f}")
        print(f"{'request':12}{'':8}{'req/s':>7}{'server µs':>11}{'db µs':>8}{'tx/req':>8}")
        for label, method in (("insert one", "POST"), ("update one", "PATCH")):
            best: dict[str, tuple[float, float, float, float]] = {}
            for _ in range(args.rounds):
                for slug in TENANTS:
                    base = f"http://127.0.0.1:{port}/api/tenants/{slug}/rest/v1/item"
                    urls = [base] if method == "POST" else [f"{base}?id=eq.{i}" for i in made[slug]["ids"]]
                    body = json.dumps({"name": "bench", "n": 7, "token": "t0ken"} if method == "POST" else {"n": 8})
                    headers = {"apikey": str(made[slug]["key"])}
                    asyncio.run(load(method, urls, body, headers, 1, args.connections))  # warm up
                    time.sleep(1.0)  # pg_stat_database is updated at most every second

                    def run(sealer: Sealer | None = None, method: str = method, urls: list[str] = urls,
                            body: str = body, headers: dict[str, str] = headers
                            ) -> tuple[int, float, float, float | None, float]:
                        """Requests done, seconds, server and database CPU seconds, and the transactions
                        of the requests (the sealer's own, background ones, not counted)."""
                        calls = sealer.calls if sealer else 0
                        before = (asyncio.run(transactions(url)), cpu_of_tree(tree), asyncio.run(backend_cpu(url)))
                        began = time.monotonic()
                        done = asyncio.run(load(method, urls, body, headers, args.seconds, args.connections))
                        elapsed = time.monotonic() - began
                        if sealer is not None:
                            sealer.settle()
                        server_cpu, db_cpu = cpu_of_tree(tree), asyncio.run(backend_cpu(url))
                        time.sleep(1.5)
                        sealed = (sealer.calls - calls) if sealer else 0
                        return (done, elapsed, server_cpu - before[1],
                                None if db_cpu is None or before[2] is None else db_cpu - before[2],
                                asyncio.run(transactions(url)) - before[0] - sealed)

                    done, elapsed, server_cpu, db_cpu, tx = (asyncio.run(with_sealer(url, run)) if slug == "audit-on"
                                                             else run())
                    measured = (done / elapsed, server_cpu / done * 1e6, (db_cpu or 0) / done * 1e6, tx / done)
                    best[slug] = max(best.get(slug, (0, 0, 0, 0)), measured, key=lambda m: m[0])
            on_, off = best["audit-on"], best["audit-off"]
            for side, m in (("on", on_), ("off", off)):
                print(f"{label if side == 'on' else '':12}{side:8}{m[0]:>7.0f}{m[1]:>11.0f}{m[2]:>8.0f}{m[3]:>8.2f}")
            cpu_ratio = (on_[1] + on_[2]) / (off[1] + off[2])
            mean = (on_[1] + off[1]) / 2  # the same work on both sides (the context CTE is in every write)
            print(f"{'':12}{'on/off':8}{on_[0] / off[0]:>7.2f}{on_[1] / off[1]:>11.2f}"
                  f"{on_[2] / off[2] if off[2] else 0:>8.2f}{'':8}  server + db CPU per request: {cpu_ratio:.2f} "
                  f"(the servers' mean for both: {(mean + on_[2]) / (mean + off[2]):.2f})")
    finally:
        server.terminate()
        server.wait(timeout=30)


async def in_database(url: str, statements: int, blocks: int) -> None:
    """The engine's insert and update statements, one per transaction, on one connection per side as the
    tenant's role; the audited side carries the context CTE (engine/audit.py `audited`), as the engine
    sends it. Blocks of `statements` alternate between the sides; medians of the blocks are printed."""
    db = await Database.connect(url)
    context = json.dumps({"request_id": "bench", "key_name": "bench", "roles": "service", "ip": "127.0.0.1"})
    print(f"\n2. in the database: {blocks} blocks of {statements} statements per side, interleaved, one "
          f"connection each, as the tenant's role; load average {os.getloadavg()[0]:.1f}")
    print(f"{'statement':12}{'on cpu µs':>10}{'off cpu µs':>11}{'on/off':>8}{'on wall µs':>12}{'off wall µs':>12}"
          f"{'on/off':>8}")
    sides: dict[str, Any] = {}
    try:
        for slug in TENANTS:
            table = f"t_{slug.replace('-', '_')}.item"
            insert = f"INSERT INTO {table} (name, n, token) VALUES ($1, $2, $3) RETURNING id"
            update = f"UPDATE {table} SET n = $1 WHERE id = $2::uuid RETURNING id"
            if slug == "audit-on":
                insert = audit.audited(audit.CompiledRead(insert, (0, 1, 2), (None, None, None))).sql
                update = audit.audited(audit.CompiledRead(update, (0, 1), (None, None))).sql
            extra = [context] if slug == "audit-on" else []
            conn = await asyncpg.connect(url)
            await conn.execute(f'SET ROLE "{db.role(slug)}"')
            ids = [r["id"] for r in await conn.fetch(f"SELECT id::text FROM {table} LIMIT {ROWS}")]
            sides[slug] = (conn, {
                "insert one": (await conn.prepare(insert), lambda n, e=extra: ["bench", n, "t0ken", *e]),
                "update one": (await conn.prepare(update), lambda n, e=extra, ids=ids: [n, ids[n % len(ids)], *e])})
        cpu: dict[tuple[str, str], list[float]] = {}
        wall: dict[tuple[str, str], list[float]] = {}
        for block in range(blocks + 1):  # block 0 warms up (plans cached, pages read)
            for label in ("insert one", "update one"):
                for slug, (conn, prepared) in sides.items():
                    statement, values = prepared[label]
                    pid = conn.get_server_pid()
                    before, started = schedstat(pid), time.perf_counter()
                    for n in range(statements):
                        await statement.fetchval(*values(block * statements + n))
                    if block:
                        wall.setdefault((label, slug), []).append((time.perf_counter() - started) / statements * 1e6)
                        after = schedstat(pid)
                        if before is not None and after is not None:
                            cpu.setdefault((label, slug), []).append((after - before) / statements / 1e3)
        for label in ("insert one", "update one"):
            c_on, c_off = (statistics.median(cpu.get((label, s), [0])) for s in TENANTS)
            w_on, w_off = (statistics.median(wall[(label, s)]) for s in TENANTS)
            m_on, m_off = (min(cpu.get((label, s), [0])) for s in TENANTS)
            print(f"{label:12}{c_on:>10.0f}{c_off:>11.0f}{c_on / c_off if c_off else 0:>8.2f}{w_on:>12.0f}"
                  f"{w_off:>12.0f}{w_on / w_off:>8.2f}   min cpu µs {m_on:.0f} / {m_off:.0f} = "
                  f"{m_on / m_off if m_off else 0:.2f}")
        sealer = await asyncpg.connect(url)
        try:
            pid = sealer.get_server_pid()
            tenant = await sealer.fetchval("SELECT id FROM system.tenants WHERE slug = 'audit-on'")
            before, started = schedstat(pid), time.perf_counter()
            sealed = 0
            while done := await sealer.fetchval(f"SELECT {audit.SCHEMA}.seal($1, 1000)", tenant):
                sealed += done
            elapsed, after = time.perf_counter() - started, schedstat(pid)
            cpu_each = f"{(after - before) / sealed / 1e3:.0f} µs CPU, " if before is not None and after else ""
            print(f"sealing those {sealed} entries afterwards (in the background, off the write): {cpu_each}"
                  f"{elapsed / max(sealed, 1) * 1e6:.0f} µs wall per entry, in batches of 1000")
        finally:
            await sealer.close()
    finally:
        for conn, _ in sides.values():
            await conn.close()
        await db.close()


# Part 3's steps of a capture, each on a copy of the `item` table (no other trigger on any): the trigger
# function's body (None: no trigger) and options; the last is the engine's own capture function.
BARE_ENTRY = (f"INSERT INTO {audit.PENDING} ({audit.COLUMNS}) SELECT NULL, '00000000-0000-0000-0000-000000000000', "
              f"'create', 'item', n.id, '{{}}'::jsonb, '{{}}'::jsonb, {audit.CONTEXT} FROM new_rows n;")
SPREAD = 2000  # entries part 3 seals over 1, 100 and 1,000 chains
PARTS = (("no trigger", None, ""),
         ("an empty statement trigger", "NULL;", ""),
         ("+ SECURITY DEFINER and SETs", "NULL;", audit.CAPTURE_OPTIONS),
         ("+ an entry without changes", BARE_ENTRY, audit.CAPTURE_OPTIONS),
         ("+ its changed fields: the engine's capture", "engine", ""))


async def spread(admin: asyncpg.Connection) -> None:
    """What sealing costs per entry as the entries are spread over more chains (one per tenant that wrote),
    in a seal of every chain as the gateway's sealer makes, on a database with nothing else pending."""
    print(f"sealing {SPREAD} entries spread over chains, per entry (a seal of every chain, as the gateway's "
          "sealer does; each in a transaction rolled back):")
    await admin.fetchval(f"SELECT {audit.SCHEMA}.seal(NULL, 1000000)")  # what the tenants' making left pending
    await admin.execute(f"VACUUM {audit.PENDING}")
    pid = admin.get_server_pid()
    for chains in (1, 100, 1000):
        undone = admin.transaction()
        await undone.start()
        try:
            await admin.execute(f"INSERT INTO {audit.PENDING} (chain, action, entity, record_id, changes, data) "
                                "SELECT c, 'create', 'item', gen_random_uuid(), '{\"n\": {\"new\": 1, \"old\": null}}', "
                                "'{}' FROM (SELECT gen_random_uuid() AS c FROM generate_series(1, $1)) g, "
                                "generate_series(1, $2)", chains, SPREAD // chains)
            before = schedstat(pid)
            await admin.fetchval(f"SELECT {audit.SCHEMA}.seal(NULL, {SPREAD})")
            after = schedstat(pid)
        finally:
            await undone.rollback()
        await admin.execute(f"VACUUM system.audit_log, {audit.PENDING}, {audit.SCHEMA}.heads")
        print(f"  over {chains:>4} chain(s){(after - before) / SPREAD / 1e3 if before and after else 0:>30.1f} µs")


async def parts(url: str, statements: int, blocks: int) -> None:
    """`spread` first; then where an audited insert's database CPU goes: the same insert (the engine's, its
    context CTE included) into copies of the audited table that carry each step of a capture, on one
    connection each, with `synchronous_commit = off` (the commit's disk flush is the machine's, and swamps
    the differences); then what sealing the captured entries costs, split into the hashing and the move
    into the log (each in a transaction rolled back)."""
    db = await Database.connect(url)
    admin = await asyncpg.connect(url)
    role = {slug: db.role(slug) for slug in TENANTS}
    tenant = await admin.fetchval("SELECT id FROM system.tenants WHERE slug = 'audit-on'")
    context = json.dumps({"request_id": "bench", "key_name": "bench", "roles": "service", "ip": "127.0.0.1"})
    print(f"\n3. where the cost goes (PostgreSQL {admin.get_server_version().major}), load average "
          f"{os.getloadavg()[0]:.1f}")
    await spread(admin)  # first: on a database with nothing else pending
    print(f"capture: {blocks} blocks of {statements} inserts per step, interleaved, one connection each, "
          "synchronous_commit off")
    conns: dict[str, Any] = {}
    statements_of: dict[str, Any] = {}
    try:
        await admin.execute("CREATE SCHEMA bench_parts")
        for number, (label, body, options) in enumerate(PARTS):
            slug = "audit-on" if body == "engine" else "audit-off"
            schema = f"t_{slug.replace('-', '_')}"
            table = f"{schema}.item_part{number}"
            await admin.execute(f'CREATE TABLE {table} (LIKE {schema}.item INCLUDING DEFAULTS INCLUDING CONSTRAINTS); '
                                f'ALTER TABLE {table} OWNER TO "{role[slug]}"')
            function = f"{audit.SCHEMA}.{audit.quote(audit.capture_function(schema, 'item'))}" if body == "engine" \
                else f"bench_parts.part{number}"
            if body not in (None, "engine"):
                await admin.execute(f"CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql {options} AS $$\n"
                                    f"{audit.CAPTURE_DECLARE}\nBEGIN\n  {body}\n  RETURN NULL;\nEND $$")
            if body is not None:
                await admin.execute(f"CREATE TRIGGER part AFTER INSERT ON {table} REFERENCING NEW TABLE AS new_rows "
                                    f"FOR EACH STATEMENT EXECUTE FUNCTION {function}()")
            conn = conns[label] = await asyncpg.connect(url)
            await conn.execute(f'SET synchronous_commit = off; SET ROLE "{role[slug]}"')
            insert = f"INSERT INTO {table} (name, n, token) VALUES ($1, $2, $3) RETURNING id"
            statements_of[label] = await conn.prepare(audit.audited(audit.CompiledRead(insert, (0, 1, 2), (None,) * 3)).sql)
        cpu: dict[str, list[float]] = {}
        for block in range(blocks + 1):  # block 0 warms up
            for label, conn in conns.items():
                pid = conn.get_server_pid()
                before = schedstat(pid)
                for n in range(statements):
                    await statements_of[label].fetchval("bench", n, "t0ken", context)
                after = schedstat(pid)
                if block and before is not None and after is not None:
                    cpu.setdefault(label, []).append((after - before) / statements / 1e3)
        if not cpu:
            print("(the database is not on this machine: no CPU figures)")
            return
        print(f"{'insert into a table with':44}{'cpu µs':>8}{'step':>8}")
        previous = None
        for label in conns:
            median = statistics.median(cpu[label])
            step = f"{median - previous:>+8.1f}" if previous is not None else ""
            print(f"{label:44}{median:>8.1f}{step}")
            previous = median
        pid = admin.get_server_pid()
        entries = await admin.fetchval(f"SELECT count(*) FROM {audit.PENDING} WHERE chain = $1", tenant)
        moved = (f"WITH d AS (DELETE FROM {audit.PENDING} p WHERE p.chain = $1 RETURNING p.*) "
                 f"INSERT INTO system.audit_log ({audit.MOVED}, seq, prev_hash, hash) "
                 f"SELECT {audit.MOVED}, 1000000000 + row_number() OVER (), '', '' FROM d")  # past the chain's seqs
        sealing = (("seal (engine/audit.py), in all", f"SELECT {audit.SCHEMA}.seal($1, {entries + 1})"),
                   ("of it: canonical forms and hashes, set-based",
                    f"SELECT count({audit.hashed('p', seq='1', prev_hash=chr(39) * 2)}) FROM {audit.PENDING} p "
                    "WHERE p.chain = $1"),
                   ("of it: the move into the log", moved))
        print(f"sealing those {entries} entries, per entry (each in a transaction rolled back; the rest of seal's "
              "is its loop, which hashes each entry after the one before it):")
        for label, sql in sealing:
            undone = admin.transaction()  # each part from the same entries
            await undone.start()
            try:
                await admin.execute(f"SELECT set_config('{audit.WRITER}', 'on', true)")  # the move writes the log
                before = schedstat(pid)
                await admin.execute(sql.replace("$1", f"'{tenant}'::uuid"))
                after = schedstat(pid)
            finally:
                await undone.rollback()
            await admin.execute(f"VACUUM system.audit_log, {audit.PENDING}")  # its keys, in the log's indexes, dead
            print(f"  {label:46}{(after - before) / entries / 1e3 if before and after else 0:>8.1f} µs")
    finally:
        for conn in conns.values():
            await conn.close()
        await admin.close()
        await db.close()


def schedstat(pid: int) -> int | None:
    """Nanoseconds on CPU of process `pid` (a backend), or None when it is not on this machine."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])
    except OSError:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--statements", type=int, default=200, help="per block of part 2")
    parser.add_argument("--blocks", type=int, default=7, help="blocks per side of part 2")
    parser.add_argument("--database-url")
    parser.add_argument("--database-only", action="store_true", help="part 2 alone (no HTTP)")
    parser.add_argument("--parts", action="store_true", help="part 3 alone: where the capture's and the seal's costs go")
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
        if args.parts:
            asyncio.run(parts(url, args.statements, args.blocks))
            return
        if not args.database_only:
            over_http(url, made, args)
        asyncio.run(in_database(url, args.statements, args.blocks))
    finally:
        asyncio.run(drop_database(server, database))


if __name__ == "__main__":
    main()
