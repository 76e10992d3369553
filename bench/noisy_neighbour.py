"""Can one tenant stall the others? Tenant B's ordinary reads, alone and while tenant A runs each
pathological request, side by side in one run against one gateway process.

    python bench/noisy_neighbour.py [--database-url postgresql://postgres@127.0.0.1:5432/postgres]
                                    [--seconds 6] [--rounds 3] [--connections 8]

B's load is `wrk` (GET of 10 rows, anon) when installed (`apt-get install wrk`), else an httpx loop; A's
requests run in two concurrent loops for the whole window: a sign-in with a 20 KB email that a
backtracking regex takes seconds on, a POST matching `^(a+)+$`, a YAML alias bomb sent to `plan_schema` by a
platform account that signed up and made a tenant of its own, a
200,000-object bulk insert, a nested embed that multiplies rows by 20 per level, 40 webhooks to a
receiver that answers after 8 s, a PATCH of every one of A's 40,000 rows (within its plan's rows quota; each
row's update audited), and last a flood of plain reads from as many clients as B has. The
gateway runs with one worker: what blocks its event loop blocks everyone. Prints B's p50 and p99 per
scenario and the p99's ratio to B alone (target: within 2x). Each round measures each scenario as a pair of
windows, B alone then B while A runs, and the figures are medians over the rounds: B alone saturates the
gateway, so one window's p99 moves by half from one window to the next on this machine.

Rate limits are on, as deployed: A is on the plan `--a-plan` (default `free`, whose per-second window, 25,
bounds its bursts, whose per-minute window stops the flood with cheap 429s, whose `concurrent_requests`,
4, keeps its flood's excess waiting behind its own requests, whose `rows_written_per_second`, 500, paces
the webhooks' 40-row writes, and whose `max_write_rows`, 1,000 by default, refuses the PATCH of 40,000 rows
having read 1,001), B on `enterprise` (no windows, no bound).
A's client threads run at nice 19: an attacker's client is on the attacker's machine, and on this small
one its Python HTTP client would otherwise take the CPU the gateway and PostgreSQL need, which is no
isolation property of the gateway.
Each scenario's A is a tenant of its own in each round (`noisy1r0`, `noisy2r0`, ...), so that each starts with its plan's
whole budget, as an attacker with one more account would, rather than with what the scenarios before it
left of one minute window; B's clients all come from this machine's address, so the anonymous
per-address budget is raised for the run (`BACKSAAS_ANON_RATE_LIMIT`). With
`--no-rate-limits` the gateway runs with `BACKSAAS_RATE_LIMITS=off`, to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import http.server
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple

import asyncpg
import httpx
import orjson
import sqlalchemy as sa
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine import catalog
from engine.database import Database
from engine.storage.deploy import deploy_platform
from functions.keys import create_api_key
from functions.tenants import create_tenant

PASSWORD = "a long enough passphrase"
TENANT_B = """
name: quiet
entities:
  item:
    fields:
      name: {type: string}
    permissions:
      read: {anon: all}
"""
TENANT_A = """
name: noisy
entities:
  item:
    fields:
      name: {type: string}
  coded:
    fields:
      code: {type: string, pattern: "^(a+)+$"}
    permissions:
      create: {anon: all}
  node:
    fields:
      parent: {type: ref, to: node, reverse: children}
    permissions:
      read: {anon: all}
  hooked:
    fields:
      name: {type: string}
    hooks:
      after_create: [{webhook: "http://127.0.0.1:RECEIVER/hook"}]
"""
ALIAS_BOMB = "a: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n" \
             "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: [*e,*e,*e,*e,*e,*e,*e,*e,*e]\n"
FLOOD = "flood of plain reads"
DEEP = "id," + "children(id,parent(id," * 3 + "id" + "))" * 3


def on(url: str, database: str) -> str:
    return make_url(url).set(database=database).render_as_string(hide_password=False)


def slow_receiver(delay: float) -> tuple[http.server.ThreadingHTTPServer, int]:
    class Slow(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length") or 0))
            time.sleep(delay)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


async def prepare(url: str, receiver: int, a_plan: str, a_rpm: int | None, rounds: int) -> dict[str, str]:
    db = await Database.connect(url)
    await deploy_platform(db)
    if a_rpm is not None:  # A's plan with a smaller minute window, so that a short run reaches it
        plans = catalog.platform_tables()["plans"]
        async with db.begin() as conn:
            limits = await conn.scalar(sa.select(plans.c.limits).where(plans.c.code == a_plan))
            await conn.execute(plans.insert().values(code="bench-a", name="Bench A",
                                                     limits={**(limits or {}), "requests_per_minute": a_rpm}))
        a_plan = "bench-a"
    await create_tenant(db, "quiet", source=TENANT_B, plan="enterprise")
    keys = {}
    for round_ in range(rounds):
        for number in range(1, SCENARIOS + 1):
            slug = a_tenant(number, round_)
            await create_tenant(db, slug, source=TENANT_A.replace("RECEIVER", str(receiver)), plan=a_plan)
            keys[slug] = (await create_api_key(db, slug, "bench", "service")).key
    await db.close()
    conn = await asyncpg.connect(url.replace("+asyncpg", ""))
    try:
        await conn.execute("INSERT INTO t_quiet.item (name) SELECT 'item ' || g FROM generate_series(1, 100) g")
        for round_ in range(rounds):  # 20 roots, 20 children each, 20 each of theirs: DEEP multiplies by 20 a level
            schema = f"t_{a_tenant(5, round_)}"
            await conn.execute(f"""
                WITH roots AS (INSERT INTO {schema}.node (parent_id) SELECT NULL FROM generate_series(1, 20) RETURNING id),
                     kids AS (INSERT INTO {schema}.node (parent_id) SELECT r.id FROM roots r, generate_series(1, 20)
                              RETURNING id)
                INSERT INTO {schema}.node (parent_id) SELECT k.id FROM kids k, generate_series(1, 20)""")
        for round_ in range(rounds):  # MASS's rows, put in place as a restore would (no trigger: no audit)
            await conn.execute(f"""SET session_replication_role = replica;
                INSERT INTO t_{a_tenant(8, round_)}.item (name) SELECT 'row ' || g FROM generate_series(1, {MASS_ROWS}) g;
                SET session_replication_role = DEFAULT""")
    finally:
        await conn.close()
    return keys


def a_tenant(scenario: int, round_: int) -> str:
    """Tenant A of a scenario in a round: each its own, so each starts with its plan's whole budget."""
    return f"noisy{scenario}r{round_}"


def start_gateway(url: str, port: int, rate_limits: bool) -> subprocess.Popen[bytes]:
    env = {**os.environ, "DATABASE_URL": url, "BACKSAAS_LOG_LEVEL": "error",
           "BACKSAAS_WEBHOOK_ALLOW_HOSTS": "127.0.0.1", "BACKSAAS_ANON_RATE_LIMIT": "10000000/minute",
           "BACKSAAS_RATE_LIMITS": "on" if rate_limits else "off"}
    process = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--port", str(port), "--workers", "1"],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise SystemExit("the gateway did not become ready")


def measure_b(base: str, seconds: float, connections: int) -> tuple[float, float, int]:
    """B's latency percentiles (ms) and request count over the window."""
    url = f"{base}/api/tenants/quiet/rest/v1/item?limit=10"
    if shutil.which("wrk"):
        out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "60s", "--latency",
                              url], capture_output=True, text=True, check=True).stdout
        p50, p99 = (parse_ms(re.search(rf"^\s*{p}%\s+(\S+)", out, re.M).group(1)) for p in ("50", "99"))  # type: ignore[union-attr]
        count = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
        return (p50, p99, count) if count else (float("inf"), float("inf"), 0)  # not one answer in the window
    return asyncio.run(python_load(url, seconds, connections))


def parse_ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[unit]


async def python_load(url: str, seconds: float, connections: int) -> tuple[float, float, int]:
    latencies: list[float] = []
    end = time.monotonic() + seconds
    async with httpx.AsyncClient(timeout=60) as client:
        async def loop() -> None:
            while time.monotonic() < end:
                started = time.perf_counter()
                await client.get(url)
                latencies.append((time.perf_counter() - started) * 1000)
        await asyncio.gather(*(loop() for _ in range(connections)))
    latencies.sort()
    if not latencies:
        return float("inf"), float("inf"), 0
    return statistics.median(latencies), latencies[int(len(latencies) * 0.99) - 1], len(latencies)


SCENARIOS = 8  # one tenant A each per round (`a_tenant`), numbered as in `attacks`
MASS = "PATCH of all 40,000 rows"
MASS_ROWS = 40_000


def developer_of_a_tenant(base: str) -> tuple[str, str]:
    """A platform account that signed up and created a tenant of its own through the platform's API, as an
    attacker would: (its access token, its tenant's slug)."""
    session = httpx.post(f"{base}/api/platform/auth/v1/signup", json={"email": "dev@example.com", "password": PASSWORD})
    session.raise_for_status()
    bearer = {"Authorization": f"Bearer {session.json()['access_token']}"}
    httpx.post(f"{base}/api/platform/rest/v1/tenants", json={"slug": "noisydev", "name": "Noisy dev"},
               headers=bearer).raise_for_status()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = httpx.get(f"{base}/api/platform/rest/v1/tenants", params={"slug": "eq.noisydev"}, headers=bearer).json()
        if found and found[0]["status"] == "active":
            return bearer["Authorization"].removeprefix("Bearer "), "noisydev"
        time.sleep(0.1)
    raise SystemExit("the developer's tenant was not provisioned")


def attacks(base: str, keys: dict[str, str], developer: tuple[str, str], round_: int) -> dict[str, Any]:
    a = {n: f"{base}/api/tenants/{a_tenant(n, round_)}" for n in range(1, SCENARIOS + 1)}
    service = {n: {"apikey": keys[a_tenant(n, round_)], "Authorization": f"Bearer {keys[a_tenant(n, round_)]}"}
               for n in a}
    token, own_tenant = developer
    bulk = orjson.dumps([{"name": "x"}] * 200_000)  # encoded once: the client's encoding is not the server's load
    return {
        "20 KB email sign-in": lambda c: c.post(f"{a[1]}/auth/v1/token?grant_type=password",
                                               json={"email": "a@" + "." * 20_000 + "@", "password": PASSWORD}),
        "pattern ^(a+)+$ POST": lambda c: c.post(f"{a[2]}/rest/v1/coded", json={"code": "a" * 25 + "!"}),
        "YAML alias bomb": lambda c: c.post(f"{base}/api/platform/functions/v1/plan_schema",
                                            headers={"Authorization": f"Bearer {token}"},
                                            json={"tenant": own_tenant, "source": ALIAS_BOMB}),
        "200k-object bulk insert": lambda c: c.post(f"{a[4]}/rest/v1/item", content=bulk,
                                                    headers={**service[4], "Content-Type": "application/json"}),
        "20x fan-out embed": lambda c: c.get(f"{a[5]}/rest/v1/node", params={"select": DEEP}),
        "40 webhooks, 8 s receiver": lambda c: c.post(f"{a[6]}/rest/v1/hooked", headers=service[6],
                                                      json=[{"name": f"h{i}"} for i in range(40)]),
        MASS: lambda c: c.patch(f"{a[8]}/rest/v1/item", params={"id": "not.is.null"}, headers=service[8],
                                json={"name": "renamed"}),
        FLOOD: lambda c: c.get(f"{a[7]}/rest/v1/node", params={"limit": "10"}),
    }


class Window(NamedTuple):
    """B's figures over one window: p50 and p99 (ms), requests, and the gateway's CPU seconds meanwhile."""
    p50: float
    p99: float
    count: int
    cpu: float


def window(pid: int, base: str, args: argparse.Namespace) -> Window:
    cpu = cpu_seconds(pid)
    p50, p99, count = measure_b(base, args.seconds, args.connections)
    return Window(p50, p99, count, cpu_seconds(pid) - cpu)


def row(label: str, windows: list[Window], alone_p99: float | None, answered: str) -> str:
    """A table row: medians over the windows; the p99's ratio to `alone_p99` (the alone row's is 1)."""
    if any(w.count == 0 for w in windows):
        return f"{label:40} {'stalled: a window had no answer':>31}   {answered}"
    p50, p99, count = (statistics.median(getattr(w, f) for w in windows) for f in ("p50", "p99", "count"))
    per_request = sum(w.cpu for w in windows) / sum(w.count for w in windows) * 1e6
    ratio = p99 / alone_p99 if alone_p99 else 1.0
    return f"{label:40} {p50:9.2f} {p99:9.2f} {ratio:11.2f}x {count:7.0f} {per_request:9.0f}  {answered}"


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of a process and its descendants so far, from /proc (Linux)."""
    total = 0.0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(child) for child in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def load_average() -> str:
    return ", ".join(f"{figure:.2f}" for figure in os.getloadavg())


def run_attack(send: Any, stop: threading.Event, statuses: list[int]) -> None:
    """One of A's clients, sending `send`'s request again and again. Its thread runs at the lowest CPU
    priority (nice 19): an attacker's client runs on the attacker's machine, and on this one (where B's load,
    the gateway and PostgreSQL share a few cores) its own work must not be what slows B down."""
    os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    with httpx.Client(timeout=120) as client:
        while not stop.is_set():
            try:
                statuses.append(send(client).status_code)
            except httpx.HTTPError:
                statuses.append(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL",
                                                                 "postgresql://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=3, help="pairs of windows (alone, then attacked) per scenario")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--a-plan", default="free", help="tenant A's plan (its rate-limit windows apply)")
    parser.add_argument("--a-rpm", type=int, help="A's plan with this requests_per_minute instead of its own")
    parser.add_argument("--no-rate-limits", action="store_true", help="run the gateway with BACKSAAS_RATE_LIMITS=off")
    parser.add_argument("--scenarios", help="run only the scenarios whose names contain one of these (comma-separated)")
    args = parser.parse_args()
    name = f"bench_noisy_{secrets.token_hex(3)}"
    admin_url = args.database_url.replace("+asyncpg", "")

    async def database(sql: str) -> None:
        conn = await asyncpg.connect(admin_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(database(f'CREATE DATABASE "{name}"'))
    receiver, receiver_port = slow_receiver(8.0)
    url = on(args.database_url, name)
    gateway = None
    try:
        keys = asyncio.run(prepare(url, receiver_port, args.a_plan, args.a_rpm, args.rounds))
        port = int(os.environ.get("BENCH_PORT", "8391"))
        gateway = start_gateway(url, port, not args.no_rate_limits)
        base = f"http://127.0.0.1:{port}"
        developer = developer_of_a_tenant(base)
        started_load = load_average()
        measure_b(base, 1, args.connections)  # warm up
        alone: dict[str, list[Window]] = {}
        attacked: dict[str, list[Window]] = {}
        answers: dict[str, list[int]] = {}
        for round_ in range(args.rounds):
            for label, send in attacks(base, keys, developer, round_).items():
                if args.scenarios and not any(wanted in label for wanted in args.scenarios.split(",")):
                    continue
                alone.setdefault(label, []).append(window(gateway.pid, base, args))  # B alone just before, paired
                stop, statuses = threading.Event(), answers.setdefault(label, [])
                loops = args.connections if label == FLOOD else 2  # a flood is as many clients as B has
                threads = [threading.Thread(target=run_attack, args=(send, stop, statuses)) for _ in range(loops)]
                for thread in threads:
                    thread.start()
                time.sleep(0.5)
                attacked.setdefault(label, []).append(window(gateway.pid, base, args))
                stop.set()
                for thread in threads:
                    thread.join(timeout=180)
        a_plan = args.a_plan + (f" at {args.a_rpm}/minute" if args.a_rpm is not None else "")
        limited = "off" if args.no_rate_limits else f"on (A on plan {a_plan}, B on enterprise)"
        print(f"\nB: GET 10 rows, {args.connections} connections, {args.seconds:g} s windows, {args.rounds} rounds, "
              f"gateway 1 worker, rate limits {limited}")
        print(f"load average (1, 5, 15 min) at the start {started_load}, at the end {load_average()}: figures taken on a "
              f"machine others load vary with them\n")
        print("Each round measures every scenario as a pair of windows, B alone and then B while A runs (A a tenant of "
              "its own per round); a row's figures are the medians over the rounds, and its ratio is the median "
              "p99 while A runs over the median p99 of its paired alone windows. 'B alone' is the median of all "
              "alone windows. gateway CPU: the microseconds of the gateway's whole CPU per request of B's (what A's "
              "requests cost shows as the growth over B alone)\n")
        print(f"{'scenario':40} {'B p50 ms':>9} {'B p99 ms':>9} {'p99 / alone':>12} {'B reqs':>7} {'us/B req':>9}"
              f"  A's answers")
        print(row("B alone", [w for windows in alone.values() for w in windows], None, ""))
        for label, windows in attacked.items():
            paired = alone[label]
            statuses = answers[label]
            answered = ", ".join(f"{s}x{statuses.count(s)}" for s in sorted(set(statuses)))
            print(row(f"while A: {label}", windows, statistics.median(w.p99 for w in paired), answered))
    finally:
        if gateway is not None:
            gateway.terminate()
            gateway.wait(timeout=30)
        receiver.shutdown()
        asyncio.run(database(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        asyncio.run(database(f"""DO $$ DECLARE r text; BEGIN  -- the tenants' roles are the server's, not the database's
            FOR r IN SELECT rolname FROM pg_roles WHERE starts_with(rolname, '{name}_') LOOP
              EXECUTE format('DROP ROLE %I', r);
            END LOOP; END $$"""))


if __name__ == "__main__":
    main()
