"""REST throughput and latency: the engine against a hand-written Starlette + asyncpg app, same run.

    python bench/rest.py [--seconds 10] [--connections 32] [--database-url URL]

Both servers run with 2 workers (`backsaas serve --workers 2`, `uvicorn --workers 2`) on one scratch
database holding the blog schema with 1,000 posts, and answer the same requests: list 20 posts with a
filter and an order, get one post by id, list 20 posts with their author embedded (by REST, then by
GraphQL as one query), insert one comment (audited, the default; by REST, then by GraphQL's
`insert_comment_one`), update one post's rating (a random one of the 1,000 per request: by REST's PATCH,
then by GraphQL's `update_post_by_pk`; these need wrk), and insert one comment into tenants whose
comments have `audit: false` (the write path without the audit trail, whose cost `--audit` measures), a
no-op `before_create` hook (`examples.noop`) or an `after_create` webhook (delivered meanwhile from the
outbox to a local receiver). The load comes from wrk (Debian's package) when installed, else from a
Python load generator.
The hand-written servers write into the engine's own tables, so the database's triggers run for both sides
alike: the hand-written insert is captured by the audit trail (an entry without actor or request), sealed
by the engine's sealer, and announced by the change feed. The `insert one` line is therefore like for like
on the audit; the `audit: false` line sets an unaudited engine insert against that audited hand-written
one, so its ratio holds the audit's share and is no measure of the engine's own overhead.
Printed per request: req/s, p50 and p99 for both (the best of `--rounds` alternating runs, which
damps the noise of a small machine shared by the servers, PostgreSQL and the load generator), the ratio
engine/baseline, and the database transactions per request (each a round trip of a one-statement request;
counted in the first round only, as it takes PostgreSQL's statistics 10 s to settle on each side of a run;
background work such as the audit sealer and the meter's flush adds a few hundredths), and the CPU
microseconds per request of the servers and the database's backends together (the least of the rounds,
from /proc: the database must run on this machine; a VM's neighbours move it less than req/s).
The `--business` and `--audit` tables carry the same CPU figure for both sides and its ratio.

Then the cost of the business layer (`--business` runs this part alone): two engine servers on the same
database, one as deployed (metering, quotas and rate limits on) and one with `BACKSAAS_METERING=off` and
`BACKSAAS_RATE_LIMITS=off`, answer the same requests of a tenant whose plan has (generous) limits of every
kind, so that every check runs; printed: req/s and transactions per request of both, and the ratio on/off
(the target: above 0.95, with no more transactions per request).

Then the cost of identity: a tenant whose entries are readable by anon and by their owner (`own`), 20 of
one user's 200 entries read (a) anonymously with an explicit `owner_id` filter and (b) with that user's
access token (JWT verification, Casbin decision, the `own` scope compiled into the same filter); the
ratio b/a is what authentication and authorization cost.

Then the cost of the audit trail (`--audit` runs this part alone): one engine server, two tenants with the
blog schema, one as written (audited, the default) and one with `audit: false` on every entity; inserts of
one comment and updates of one post's rating (a random one of 1,000 per request, so writers rarely queue on
a row's lock), alternating runs; printed: req/s and transactions per request of both, and the ratio
(the target: audited above 0.85 of unaudited, with no more transactions per request). bench/audit.py
breaks the same cost down into server and database CPU.
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
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import psutil
from sqlalchemy.engine import make_url

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from engine.database import Database  # noqa: E402
from engine.embedded import EmbeddedPostgres, data_directory  # noqa: E402
from engine.storage.deploy import deploy_platform  # noqa: E402
from functions.keys import create_api_key  # noqa: E402
from functions.tenants import create_tenant  # noqa: E402


def cpu_of_tree(process: psutil.Process) -> float:
    """CPU seconds (user + system) of a process and its children (a server's workers)."""
    total = 0.0
    for p in [process, *process.children(recursive=True)]:
        try:
            times = p.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


async def backend_cpu(url: str) -> float | None:
    """CPU seconds of the database's backends (every connection to it), from /proc/PID/schedstat; None
    when the server is not on this machine."""
    conn = await asyncpg.connect(url)
    try:
        pids = [r["pid"] for r in await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")]
    finally:
        await conn.close()
    total = 0
    for pid in pids:
        try:
            total += int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])
        except FileNotFoundError:  # ended meanwhile
            continue
        except OSError:
            return None
    return total / 1e9


def cpu_meter(servers: list[subprocess.Popen[bytes]], db_url: str) -> Callable[[], float | None]:
    """The CPU seconds used so far by `servers` (their workers included) and the database's backends
    (None when the database is not on this machine): sampled around a run, what the run cost the machine,
    which a VM's neighbours disturb less than its throughput."""
    trees = [psutil.Process(s.pid) for s in servers]

    def used() -> float | None:
        database = asyncio.run(backend_cpu(db_url))
        return None if database is None else database + sum(cpu_of_tree(t) for t in trees)
    return used


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def on(url: str, database: str) -> str:
    return make_url(url).set(database=database).render_as_string(hide_password=False)


# The measured tenants' plan: nothing of a plan bounds a benchmark's load (a free plan's 600 requests a minute,
# 4 requests in progress and 50,000 rows would be measured instead of the engine); `--business` measures them.
UNBOUNDED = "enterprise"


async def prepare(url: str) -> tuple[str, list[str], dict[str, str], dict[str, str]]:
    """The bench role, 20 post ids, a service key per tenant, and a post of each other tenant (hooked, unaudited)."""
    db = await Database.connect(url)
    await deploy_platform(db)
    await create_tenant(db, "bench", source=(REPO / "schemas" / "blog.yaml").read_text(), plan=UNBOUNDED)
    await create_tenant(db, "journal", source=JOURNAL, plan=UNBOUNDED)
    blog = (REPO / "schemas" / "blog.yaml").read_text()
    hooked = blog.replace("      update: {authenticated: own}\n      delete: {authenticated: own, admin: all}",
                          "      update: {authenticated: own}\n      delete: {authenticated: own, admin: all}\n"
                          "    hooks:\n      EVENT: [HOOK]")
    await create_tenant(db, "hooked", source=hooked.replace("EVENT", "before_create").replace("HOOK", "examples.noop"),
                        plan=UNBOUNDED)
    webhook = f'{{webhook: "http://127.0.0.1:{RECEIVER_PORT}/hook", secret: BENCH_WEBHOOK_SECRET}}'
    await create_tenant(db, "webhooked", source=hooked.replace("EVENT", "after_create").replace("HOOK", webhook), plan=UNBOUNDED)
    await create_tenant(db, "unaudited", source=unaudited(blog), plan=UNBOUNDED)
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
    first_posts = {}
    for slug in ("hooked", "webhooked", "unaudited"):
        async with db.as_role(db.role(slug)) as conn:
            first_posts[slug] = await conn.fetchval(f"INSERT INTO t_{slug}.post (title) VALUES ('a post') RETURNING id::text")
    keys = {slug: (await create_api_key(db, slug, "service", "service")).key
            for slug in ("bench", "hooked", "webhooked", "unaudited")}
    await db.close()
    return db.role("bench"), posts, keys, first_posts


RECEIVER_PORT = 0  # set in main(): where the webhook line's receiver listens


def receiver(port: int) -> subprocess.Popen[bytes]:
    """A webhook receiver answering 200 to everything (uvicorn, one process)."""
    app = ("async def app(scope, receive, send):\n"
           "    while (await receive()).get('more_body'): pass\n"
           "    await send({'type': 'http.response.start', 'status': 200, 'headers': []})\n"
           "    await send({'type': 'http.response.body', 'body': b''})\n")
    code = f"import uvicorn\n{app}uvicorn.run(app, port={port}, log_level='warning')"
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


JOURNAL = """
name: journal
entities:
  entry:
    owner: true
    fields:
      text: {type: text, required: true}
    permissions:
      read:   {anon: all, authenticated: own}
      create: {authenticated: all}
"""


def sign_in(rest_base: str, email: str) -> dict[str, str]:
    """A journal user's session (signed up on first call), with 200 entries of their own."""
    auth = f"{rest_base}/api/tenants/journal/auth/v1"
    credentials = {"email": email, "password": "a bench passphrase"}
    session = httpx.post(f"{auth}/signup", json=credentials)
    if session.status_code != 200:
        session = httpx.post(f"{auth}/token?grant_type=password", json=credentials)
    session.raise_for_status()
    return session.json()


def seed_journal(rest_base: str) -> tuple[str, str]:
    """(user id, access token) of the measured user; a second user's entries sit beside theirs."""
    for email in ("other@example.com", "writer@example.com"):
        session = sign_in(rest_base, email)
        entries = [{"text": f"entry {i} of {email}"} for i in range(200)]
        httpx.post(f"{rest_base}/api/tenants/journal/rest/v1/entry", json=entries,
                   headers={"Authorization": f"Bearer {session['access_token']}"}).raise_for_status()
    return session["user"]["id"], session["access_token"]


BUSINESS_PLAN = {"requests_per_minute": 10**9, "requests_per_hour": 10**9, "requests_per_day": 10**9,
                 "requests_per_month": 10**12, "rows": 10**9, "storage_bytes": 10**12, "end_users": 10**6,
                 "function_ms_per_month": 10**12, "concurrent_requests": 10**6}
SWITCHED_OFF = {"BACKSAAS_METERING": "off", "BACKSAAS_RATE_LIMITS": "off"}


async def prepare_business(url: str) -> tuple[str, str]:
    """The tenant `business` on a plan with a limit of every kind (none reached); a post's id, a service key."""
    from engine import catalog

    db = await Database.connect(url)
    await deploy_platform(db)
    async with db.begin() as conn:
        await conn.execute(catalog.platform_tables()["plans"].insert().values(code="bench-business", name="Bench",
                                                                              limits=BUSINESS_PLAN))
    await create_tenant(db, "business", source=(REPO / "schemas" / "blog.yaml").read_text(), plan="bench-business")
    async with db.as_role(db.role("business")) as conn:
        post = await conn.fetchval("""
            WITH a AS (INSERT INTO t_business.author (name) VALUES ('author') RETURNING id)
            INSERT INTO t_business.post (title, status, author_id, published_at)
              SELECT 'post ' || i, 'published', (SELECT id FROM a), now() - i * interval '1 hour'
              FROM generate_series(1, 100) i RETURNING id::text""")
    key = (await create_api_key(db, "business", "service", "service")).key
    await db.close()
    return post, key


Case = tuple[str, tuple[str, str], tuple[str | None, str | None], str | None]  # name, URLs, wrk scripts, body


def side_by_side(title: str, sides: tuple[str, str], cases: list[Case], url: str, args: argparse.Namespace,
                 headers: tuple[dict[str, str], dict[str, str]], cpu: Callable[[], float | None]) -> list[float]:
    """Each case's two requests (a URL each, a wrk Lua script each or None, one body) measured alternately
    `args.rounds` times, the best of each kept, and printed with the transactions per request of the first
    round and the least CPU per request (servers and database, `cpu_meter`) of any round; returns the
    ratios first/second of req/s."""
    print(f"\n{title}, best of {args.rounds}; CPU: µs of the servers and the database per request, the least of the rounds")
    print(f"{'request':28}{sides[0] + ' req/s':>16}{'tx/req':>7}{'CPU µs':>8}{sides[1] + ' req/s':>16}{'tx/req':>7}"
          f"{'CPU µs':>8}{'ratio':>8}{'CPU ratio':>11}")
    ratios = []
    for name, targets, scripts, body in cases:
        best: dict[int, tuple[float, float, float, float, float]] = {}
        counted: dict[int, float] = {}
        least: dict[int, float] = {}
        for round_ in range(args.rounds):
            for side, target in enumerate(targets):
                m = measure(target, args.seconds, args.connections, body, scripts[side], url, headers[side],
                            count=round_ == 0, cpu=cpu)
                counted.setdefault(side, m[3])
                least[side] = min(least.get(side, m[4]), m[4])
                best[side] = max(best.get(side, m), m, key=lambda r: r[0])
        first, second = best[0][0], best[1][0]
        ratios.append(first / second)
        print(f"{name:28}{first:>16.0f}{counted[0]:>7.2f}{least[0]:>8.0f}{second:>16.0f}{counted[1]:>7.2f}"
              f"{least[1]:>8.0f}{first / second:>8.2f}{least[0] / least[1]:>11.2f}")
    return ratios


def business_layer(url: str, args: argparse.Namespace) -> None:
    """Metering, quotas and rate limits on against all off, same requests, alternating runs."""
    post, key = asyncio.run(prepare_business(url))
    on_port, off_port = free_port(), free_port()
    command = [sys.executable, "-m", "gateway.cli", "serve", "--workers", "2", "--port"]
    quiet = {"DATABASE_URL": url, "BACKSAAS_LOG_LEVEL": "warning"}
    servers: list[subprocess.Popen[bytes]] = []
    try:
        servers.append(start([*command, str(on_port)], quiet, on_port))
        servers.append(start([*command, str(off_port)], {**quiet, **SWITCHED_OFF}, off_port))
        base = "/api/tenants/business/rest/v1"
        cases = [("get one by id", f"{base}/post?id=eq.{post}", None),
                 ("list 20, filter + order", f"{base}/post?select=id,title&status=eq.published"
                                             "&order=published_at.desc&limit=20", None),
                 ("insert one", f"{base}/author", json.dumps({"name": "a bench author"}))]
        switches = ", ".join(f"{k}={v}" for k, v in SWITCHED_OFF.items())
        ratios = side_by_side(f"business layer: metering + quotas + rate limits on vs off ({switches})", ("on", "off"),
                              [(name, (f"http://127.0.0.1:{on_port}{path}", f"http://127.0.0.1:{off_port}{path}"),
                                (None, None), body) for name, path, body in cases],
                              url, args, ({"apikey": key}, {"apikey": key}), cpu_meter(servers, url))
        print(f"business layer costs {(1 - statistics.mean(ratios)) * 100:.1f}% of throughput on average")
    finally:
        for server in servers:
            server.terminate()
            server.wait(timeout=30)


def unaudited(source: str) -> str:
    """`source` (a schema whose entities are indented by two spaces) with `audit: false` on every entity."""
    head, entities = source.split("\nentities:\n", 1)
    entities, rest = re.match(r"(?s)(.*?\n)((?=[a-z]).*|)$", entities).groups()
    marked = re.sub(r"(?m)^(  [a-z_]+:\n)", r"\1    audit: false\n", entities)
    return f"{head}\nentities:\n{marked}{rest}"


async def prepare_audit(url: str) -> tuple[list[str], dict[str, str]]:
    """Tenants `audited` (the blog schema) and `unaudited` (the same, `audit: false`), 1,000 posts each;
    the posts' ids (the same on both sides) and a service key per tenant."""
    db = await Database.connect(url)
    await deploy_platform(db)
    blog = (REPO / "schemas" / "blog.yaml").read_text()
    keys, ids = {}, [str(uuid.uuid4()) for _ in range(1000)]
    for slug, source in (("audited", blog), ("unaudited", unaudited(blog))):
        await create_tenant(db, slug, source=source, plan=UNBOUNDED)
        async with db.as_role(db.role(slug)) as conn:
            await conn.execute(f"""
                WITH a AS (INSERT INTO t_{slug}.author (name) VALUES ('author') RETURNING id)
                INSERT INTO t_{slug}.post (id, title, status, author_id, rating)
                  SELECT id::uuid, 'post ' || n, 'published', (SELECT id FROM a), 2.5
                    FROM unnest($1::text[]) WITH ORDINALITY AS i(id, n)""", ids)
        keys[slug] = (await create_api_key(db, slug, "service", "service")).key
    await db.close()
    return ids, keys


def audit_cost(url: str, args: argparse.Namespace) -> None:
    """Inserts and updates of the same entity audited against `audit: false`, one server, alternating runs."""
    if not shutil.which("wrk"):  # the updates are a Lua script's (a random post each)
        raise SystemExit("--audit needs wrk (apt-get install wrk)")
    ids, keys = asyncio.run(prepare_audit(url))
    port = free_port()
    server = start([sys.executable, "-m", "gateway.cli", "serve", "--workers", "2", "--port", str(port)],
                   {"DATABASE_URL": url, "BACKSAAS_LOG_LEVEL": "warning"}, port)
    try:
        def rest(slug: str) -> str:
            return f"http://127.0.0.1:{port}/api/tenants/{slug}/rest/v1"

        def update(slug: str) -> str:  # PATCH a random post's rating (a value that changes it) per request
            listed = ", ".join(f'"{i}"' for i in ids)
            return (f'local ids = {{{listed}}}\nwrk.method = "PATCH"\nwrk.headers["Content-Type"] = "application/json"\n'
                    f'request = function()\n  return wrk.format(nil, "/api/tenants/{slug}/rest/v1/post?id=eq." .. '
                    f'ids[math.random(#ids)], nil, \'{{"rating": \' .. (math.random(0, 50) / 10) .. \'}}\')\nend\n')

        comment = json.dumps({"post_id": ids[0], "body": "a comment"})
        cases = [("insert one comment", (f"{rest('audited')}/comment", f"{rest('unaudited')}/comment"),
                  (None, None), comment),  # the updates' paths and bodies are their scripts'
                 ("update one post", (f"{rest('audited')}/post", f"{rest('unaudited')}/post"),
                  (update("audited"), update("unaudited")), None)]
        ratios = side_by_side("audit trail: audited vs `audit: false`", ("audited", "off"), cases, url, args,
                              ({"apikey": keys["audited"]}, {"apikey": keys["unaudited"]}), cpu_meter([server], url))
        print(f"the audit trail costs {(1 - statistics.mean(ratios)) * 100:.1f}% of write throughput on average")
    finally:
        server.terminate()
        server.wait(timeout=30)


def start(command: list[str], env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    """Start a server and wait (up to 3 minutes: a loaded machine is slow) until it answers /healthz. Its
    stderr goes to a file (a pipe nobody reads would stall it, and its workers would hold the pipe open)."""
    log = tempfile.TemporaryFile()
    process = subprocess.Popen(command, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=log)
    process.log = log  # type: ignore[attr-defined]  # what `log_tail` reads
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and process.poll() is None:
        try:
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
            return process
        except httpx.TransportError:
            time.sleep(0.2)
    process.terminate()
    process.wait(timeout=30)
    raise RuntimeError(f"{command[0]} did not start: {log_tail(process)}")


def log_tail(process: subprocess.Popen[bytes], size: int = 4000) -> str:
    """The last `size` characters a server started by `start` wrote to its stderr (its log, at warning)."""
    log = process.log  # type: ignore[attr-defined]
    log.seek(0)
    return log.read().decode(errors="replace")[-size:]


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


STATS_SETTLE_SECONDS = 11  # PostgreSQL 15's backends report their statistics when idle, at the latest 10 s later


@dataclass(frozen=True)
class Script:
    """A case's requests as wrk's Lua script (each request its own: a random row), instead of one body."""

    lua: str


def sent(body: str | Script | None) -> tuple[str | None, str | None]:
    """`measure`'s body and script of a case's body."""
    return (None, body.lua) if isinstance(body, Script) else (body, None)


def update_script(ids: list[str], method: str, path: str, body: str) -> str:
    """wrk's Lua for requests naming a random one of `ids` (`id` in the `path` and `body` expressions)."""
    listed = ", ".join(f'"{i}"' for i in ids)
    return (f'local ids = {{{listed}}}\nwrk.method = "{method}"\nwrk.headers["Content-Type"] = "application/json"\n'
            f"request = function()\n  local id = ids[math.random(#ids)]\n"
            f"  return wrk.format(nil, {path}, nil, {body})\nend\n")


async def post_ids(url: str) -> list[str]:
    conn = await asyncpg.connect(url)
    try:
        return [r[0] for r in await conn.fetch("SELECT id::text FROM t_bench.post")]
    finally:
        await conn.close()


def measure(url: str, seconds: int, connections: int, body: str | None, script: str | None, db_url: str,
            headers: dict[str, str], count: bool = True,
            cpu: Callable[[], float | None] | None = None) -> tuple[float, float, float, float, float]:
    """req/s, p50 and p99 (ms), with `count` the database transactions per request (else nan): counted
    in pg_stat_database after the backends reported everything before and during the run, which takes
    `STATS_SETTLE_SECONDS` on each side (a second's wait let the neighbouring runs' counts leak in by up to
    half a figure), and with `cpu` (`cpu_meter`) the CPU microseconds per request of the servers and the
    database during the run (else nan). `script`: wrk's Lua script for the requests (then `body` is not sent)."""
    if script is None and body is not None:
        script = f'wrk.method = "POST"\nwrk.body = {json.dumps(body)}\nwrk.headers["Content-Type"] = "application/json"\n'
    lua = None
    if script is not None:
        lua = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
        lua.write(script)
        lua.close()
    use_wrk = shutil.which("wrk") is not None
    run = (lambda s: wrk(url, s, connections, lua.name if lua else None, headers)) if use_wrk else \
        (lambda s: asyncio.run(python_load(url, s, connections, body, headers)))
    try:
        run(1)  # warm up: runtimes compiled, statements prepared, pools full
    except RuntimeError:  # a cold server's first answers (a pool still filling) do not count
        run(1)
    nan = float("nan")

    def timed() -> tuple[float, float, float, float]:
        began = cpu() if cpu else None
        rate, p50, p99 = run(seconds)
        ended = cpu() if cpu else None
        used = (ended - began) * 1e6 / max(rate * seconds, 1) if began is not None and ended is not None else nan
        return rate, p50, p99, used

    if not count:
        rate, p50, p99, used = timed()
        return rate, p50, p99, nan, used
    time.sleep(STATS_SETTLE_SECONDS)
    before = asyncio.run(transactions(db_url))
    rate, p50, p99, used = timed()
    time.sleep(STATS_SETTLE_SECONDS)
    after = asyncio.run(transactions(db_url))
    return rate, p50, p99, (after - before) / max(rate * seconds, 1), used


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2, help="alternate engine and baseline this many times; keep each best")
    parser.add_argument("--database-url")
    parser.add_argument("--business", action="store_true", help="only the business layer's cost (on vs off)")
    parser.add_argument("--audit", action="store_true", help="only the audit trail's cost (audited vs audit: false)")
    parser.add_argument("--cases", help="run only the requests whose names contain one of these (comma-separated); "
                                        "the identity cost runs when 'identity' is among them")
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
    if args.business or args.audit:
        try:
            (business_layer if args.business else audit_cost)(url, args)
        finally:
            asyncio.run(drop_database(server, database))
        return
    global RECEIVER_PORT
    RECEIVER_PORT = free_port()
    webhook_receiver = receiver(RECEIVER_PORT)
    role, posts, keys, first_posts = asyncio.run(prepare(url))
    headers = {"apikey": keys["bench"]}  # the engine is called with the tenant's service key, as a backend would
    engine_port, baseline_port = free_port(), free_port()
    engine = start([sys.executable, "-m", "gateway.cli", "serve", "--port", str(engine_port), "--workers", "2"],
                   {"DATABASE_URL": url, "BACKSAAS_LOG_LEVEL": "warning", "BENCH_WEBHOOK_SECRET": "bench",
                    "BACKSAAS_ANON_RATE_LIMIT": "1000000000/minute"}, engine_port)  # wrk is one address
    baseline = start([sys.executable, "-m", "uvicorn", "--app-dir", str(REPO / "bench"), "baseline_app:app",
                      "--port", str(baseline_port), "--workers", "2", "--log-level", "warning", "--no-access-log"],
                     {"BENCH_DATABASE_URL": url, "BENCH_ROLE": role}, baseline_port)
    plain_port = free_port()  # the same statements with no framework at all: plain ASGI + asyncpg
    plain = start([sys.executable, "-m", "uvicorn", "--app-dir", str(REPO / "bench"), "plain_app:app",
                   "--port", str(plain_port), "--workers", "2", "--log-level", "warning", "--no-access-log"],
                  {"BENCH_DATABASE_URL": url, "BENCH_ROLE": role}, plain_port)
    rest = f"http://127.0.0.1:{engine_port}/api/tenants/bench/rest/v1"
    hand = f"http://127.0.0.1:{baseline_port}"
    comment = json.dumps({"post_id": posts[0], "body": "a comment"})
    graphql = f"http://127.0.0.1:{engine_port}/api/tenants/bench/graphql/v1"
    embed_query = json.dumps({"query": "{ post(order_by: {created_at: desc}, limit: 20) { id title author { name } } }"})
    insert_mutation = json.dumps({"query": "mutation($c: comment_insert_input!) { insert_comment_one(object: $c) { id } }",
                                  "variables": {"c": {"post_id": posts[0], "body": "a comment"}}})
    every_post = asyncio.run(post_ids(url))

    def rating(path: str, method: str = "PATCH") -> Script:  # one of the 1,000 posts' rating per request
        return Script(update_script(every_post, method, f'"{path}"',
                                    "'{\"rating\": ' .. (math.random(0, 50) / 10) .. '}'"))

    graphql_rating = Script(update_script(every_post, "POST", '"/api/tenants/bench/graphql/v1"',
                                          "'{\"query\": \"mutation($id: uuid!, $r: Float) { update_post_by_pk("
                                          "pk_columns: {id: $id}, _set: {rating: $r}) { id } }\", \"variables\": "
                                          "{\"id\": \"' .. id .. '\", \"r\": ' .. (math.random(0, 50) / 10) .. '}}'"))

    def other(slug: str) -> tuple[str, str, dict[str, str]]:  # a comment into another tenant
        return (rest.replace("/bench/", f"/{slug}/") + "/comment",
                json.dumps({"post_id": first_posts[slug], "body": "a comment"}), {"apikey": keys[slug]})

    cases = [  # (name, engine URL, engine body, baseline URL, baseline body[, engine headers])
        ("list 20, filter + order", f"{rest}/post?select=id,title,status,rating&status=eq.published"
                                    "&order=published_at.desc&limit=20", None, f"{hand}/list?status=published", None),
        ("get one by id", f"{rest}/post?id=eq.{posts[1]}", None, f"{hand}/get?id={posts[1]}", None),
        ("list 20 + embedded author", f"{rest}/post?select=id,title,author(name)&order=created_at.desc&limit=20", None,
         f"{hand}/embed", None),
        ("GraphQL, same as embed", graphql, embed_query, f"{hand}/embed", None),
        ("insert one", f"{rest}/comment", comment, f"{hand}/insert", comment),
        ("GraphQL insert_comment_one", graphql, insert_mutation, f"{hand}/insert", comment),
        ("PATCH one post's rating", f"{rest}/post", rating("/api/tenants/bench/rest/v1/post?id=eq.\" .. id .. \""),
         f"{hand}/update", rating("/update?id=\" .. id .. \"")),
        ("GraphQL update_post_by_pk", graphql, graphql_rating, f"{hand}/update", rating("/update?id=\" .. id .. \"")),
        ("insert one, audit: false", *other("unaudited")[:2], f"{hand}/insert", comment, other("unaudited")[2]),
        ("insert, no-op before-hook", *other("hooked")[:2], f"{hand}/insert", comment, other("hooked")[2]),
        ("insert, webhook hook", *other("webhooked")[:2], f"{hand}/insert", comment, other("webhooked")[2]),
    ]
    try:
        print(f"load: {'wrk' if shutil.which('wrk') else 'python'} -c{args.connections}, {args.seconds}s per run, "
              f"best of {args.rounds} alternating runs; servers with 2 workers; {os.cpu_count()} cores")
        print("baseline: Starlette + asyncpg (bench/baseline_app.py); plain: plain ASGI + asyncpg (bench/plain_app.py)")
        print(f"{'request':28}{'engine req/s':>13}{'p50 ms':>8}{'p99 ms':>8}{'tx/req':>7}{'CPU µs':>8}"
              f"{'baseline req/s':>16}{'p50 ms':>8}{'p99 ms':>8}{'tx/req':>7}{'CPU µs':>8}{'ratio':>7}"
              f"{'plain req/s':>13}{'ratio':>7}")
        cpu = cpu_meter([engine, baseline, plain], url)
        wanted = [c.strip() for c in args.cases.split(",")] if args.cases else None
        for name, engine_url, engine_body, baseline_url, baseline_body, *engine_headers in cases:
            if wanted is not None and not any(w in name for w in wanted):
                continue
            if isinstance(engine_body, Script) and not shutil.which("wrk"):
                print(f"{name:28}needs wrk (its requests are a Lua script's)")
                continue
            plain_url = baseline_url.replace(hand, f"http://127.0.0.1:{plain_port}")
            runs = [(measure(engine_url, args.seconds, args.connections, *sent(engine_body), url,
                             engine_headers[0] if engine_headers else headers, count=round_ == 0, cpu=cpu),
                     measure(baseline_url, args.seconds, args.connections, *sent(baseline_body), url, {},
                             count=round_ == 0, cpu=cpu),
                     measure(plain_url, args.seconds, args.connections, *sent(baseline_body), url, {}, count=False))
                    for round_ in range(args.rounds)]
            e, b, p = (max((r[i] for r in runs), key=lambda m: m[0]) for i in range(3))
            # transactions: the counted round's; CPU per request: the least of the rounds
            e, b = ((*m[:3], runs[0][i][3], min(r[i][4] for r in runs)) for i, m in enumerate((e, b)))
            print(f"{name:28}{e[0]:>13.0f}{e[1]:>8.2f}{e[2]:>8.2f}{e[3]:>7.2f}{e[4]:>8.0f}"
                  f"{b[0]:>16.0f}{b[1]:>8.2f}{b[2]:>8.2f}{b[3]:>7.2f}{b[4]:>8.0f}{e[0] / b[0]:>7.2f}"
                  f"{p[0]:>13.0f}{e[0] / p[0]:>7.2f}")
        if wanted is not None and "identity" not in wanted:
            return
        user_id, _ = seed_journal(f"http://127.0.0.1:{engine_port}")
        entries = f"http://127.0.0.1:{engine_port}/api/tenants/journal/rest/v1/entry?select=id,text&order=created_at.desc" \
                  "&limit=20"
        print(f"\nidentity cost: 20 of one user's 200 entries (another user's 200 beside them), best of {args.rounds}")
        print(f"{'request':40}{'req/s':>8}{'p50 ms':>8}{'p99 ms':>8}")
        best: dict[str, tuple[float, float, float, float]] = {}
        for _ in range(args.rounds):
            token = sign_in(f"http://127.0.0.1:{engine_port}", "writer@example.com")["access_token"]  # fresh: 15 min
            for label, target, auth in (("anon, explicit owner_id filter", f"{entries}&owner_id=eq.{user_id}", {}),
                                        ("user JWT, own scope", entries, {"Authorization": f"Bearer {token}"})):
                m = measure(target, args.seconds, args.connections, None, None, url, auth, count=False)
                best[label] = max(best.get(label, m), m, key=lambda r: r[0])
        for label, m in best.items():
            print(f"{label:40}{m[0]:>8.0f}{m[1]:>8.2f}{m[2]:>8.2f}")
        anon_rate, jwt_rate = (m[0] for m in best.values())
        print(f"ratio JWT/anon {jwt_rate / anon_rate:.2f} (authentication + authorization cost "
              f"{(1 - jwt_rate / anon_rate) * 100:.0f}% of throughput)")
    except Exception:  # error answers from wrk, say: what the engine logged about them
        print(f"\nthe end of the engine's log:\n{log_tail(engine)}", file=sys.stderr)
        raise
    finally:
        for process in (engine, baseline, plain, webhook_receiver):
            process.terminate()
            process.wait(timeout=30)

        asyncio.run(drop_database(server, database))


async def drop_database(server: str, database: str) -> None:
    admin = await asyncpg.connect(on(server, "postgres"))
    await admin.execute(f'DROP DATABASE "{database}" WITH (FORCE)')
    for (name,) in await admin.fetch("SELECT rolname FROM pg_roles WHERE starts_with(rolname, $1)", f"{database}_"):
        await admin.execute(f'DROP ROLE "{name}"')
    await admin.close()


if __name__ == "__main__":
    main()
