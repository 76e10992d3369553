"""CPU per request of the gateway called in-process: what its layers cost, without sockets or a load generator.

    python bench/layers.py [--database-url postgresql://postgres@127.0.0.1:5432/postgres] [--requests 300]
                           [--rounds 9] [--log-level warning] [--cases get,insert]

Why: on a small machine shared with PostgreSQL and the load generator (and here with other work), wrk's
req/s move by ±10% between runs, more than the gateway's own layers cost. This calls the ASGI apps
directly with a minimal receive/send (no HTTP parsing, no httpx, whose own cost would hide ours) and
measures the process's CPU time per request, the least of `--rounds` rounds of `--requests` sequential
requests, the apps interleaved within each round so that they see the same disturbance.

On one scratch database (the blog schema, as bench/rest.py --business makes it: a tenant `business` on a
plan with a limit of every kind, none reached, and a tenant `tight` allowing one request a minute), with
the tenants' service keys:

- `gateway`: `create_app` as deployed (metering, quotas and rate limits on);
- `no business`: the same with metering and rate limits off (`metering={"enabled": False}`,
  `rate_limits={"enabled": False}`): gateway minus it is the business layer's cost (issue 14), printed as
  a share of the gateway's;
- `routing`: the gateway's TenantRouting alone, without the observing layer outside it (gateway/access.py);
  the business layer's metering and quotas are then skipped too;
- `plain`: bench/plain_app.py, plain ASGI + asyncpg running the same SQL (issue 13's baseline).

for a GET of one post by id (the same id, and a new id at each request as a client reading rows one by one
sends: no query string repeats), a list of 20 (both also against `plain`), an insert of one author
(bench/rest.py --business's write: the business layer's share of a write, whose rows are metered and
checked against the rows quota), the same insert as a GraphQL `insert_author_one`, a PATCH of one post's
rating (also by a new id at each request, which matches no row) and the same update as a GraphQL
`update_post_by_pk` (issue 13's GraphQL-against-REST lines), a 429 (the `tight` tenant's minute is spent)
and a 404 (an unknown entity); `--cases` picks some by name. The log level is `warning` as in
bench/rest.py's servers; `info` adds the access line's cost.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import secrets
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from rest import BUSINESS_PLAN, drop_database, on, prepare_business  # noqa: E402

App = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


async def prepare_tight(url: str) -> tuple[str, str]:
    """A tenant `tight` whose plan allows one request a minute: its service key; and the database role of
    `business` (plain_app.py runs as it)."""
    from engine import catalog
    from engine.database import Database
    from functions.keys import create_api_key
    from functions.tenants import create_tenant

    db = await Database.connect(url)
    async with db.begin() as conn:
        await conn.execute(catalog.platform_tables()["plans"].insert().values(
            code="bench-tight", name="Tight", limits={**BUSINESS_PLAN, "requests_per_minute": 1}))
    await create_tenant(db, "tight", source=(REPO / "schemas" / "blog.yaml").read_text(), plan="bench-tight")
    key = (await create_api_key(db, "tight", "service", "service")).key
    role = db.role("business")
    await db.close()
    return key, role


def scope_of(path: str, headers: list[tuple[bytes, bytes]], method: str = "GET") -> dict[str, Any]:
    route, _, query = path.partition("?")
    return {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
            "method": method, "scheme": "http", "path": route, "raw_path": route.encode(), "query_string": query.encode(),
            "root_path": "", "headers": [(b"host", b"127.0.0.1:8000"), (b"user-agent", b"wrk"), *headers],
            "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 8000)}


def receiving(body: bytes) -> Callable[[], Awaitable[dict[str, Any]]]:
    """A `receive` handing over `body` whole (every time: each request reads it once)."""
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}
    return receive


receive = receiving(b"")


class Answer:
    """A `send` keeping the status (and nothing else: the cost measured is the server's)."""

    def __init__(self) -> None:
        self.status = 0

    async def __call__(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]


async def requests(app: App, scope: dict[str, Any], count: int, body: bytes = b"") -> int:
    """Run `count` requests one after the other; the last status. A scope whose query string holds `{id}`
    asks for a new random id at each request (ids never asked for before: no request repeats another)."""
    answer = Answer()
    received = receiving(body) if body else receive
    template = scope["query_string"]
    for _ in range(count):
        if b"{id}" in template:
            scope = {**scope, "query_string": template.replace(b"{id}", str(uuid.uuid4()).encode())}
        await app(dict(scope), received, answer)  # the app writes into its scope: a fresh one each time
    return answer.status


async def measure(url: str, args: argparse.Namespace) -> None:
    from asgi_lifespan import LifespanManager

    from gateway.app import TenantRouting, create_app

    post, key = await prepare_business(url)
    tight, role = await prepare_tight(url)
    os.environ.update(BENCH_DATABASE_URL=url, BENCH_ROLE=role, BENCH_SCHEMA="t_business",
                      BACKSAAS_RATE_LIMIT_HOLD_SECONDS="0")  # the 429's CPU, not its pause (gateway/ratelimit.py)
    import plain_app  # reads BENCH_* when imported

    gateway = create_app(url)
    no_business = create_app(url, metering={"enabled": False}, rate_limits={"enabled": False})
    routing: Any = gateway
    while not isinstance(routing, TenantRouting):
        routing = routing.app
    business, tight_key = [(b"apikey", key.encode())], [(b"apikey", tight.encode())]
    base = "/api/tenants/business/rest/v1"
    inserting = [*business, (b"content-type", b"application/json")]
    author = b'{"name": "a bench author"}'  # bench/rest.py's insert
    graphql_author = b'{"query": "mutation($o: author_insert_input!) { insert_author_one(object: $o) { id } }", ' \
                     b'"variables": {"o": {"name": "a bench author"}}}'  # bench/rest.py's GraphQL insert
    rating = b'{"rating": 3}'
    graphql_rating = (b'{"query": "mutation($id: uuid!, $r: Float) { update_post_by_pk(pk_columns: {id: $id}, '
                      b'_set: {rating: $r}) { id } }", "variables": {"id": "' + post.encode() + b'", "r": 3}}')
    cases = [("get one by id", f"{base}/post?id=eq.{post}", business, f"/get?id={post}", b""),
             ("get by a new id each", f"{base}/post?id=eq.{{id}}", business, "/get?id={id}", b""),
             ("list 20", f"{base}/post?select=id,title,status,rating&status=eq.published&order=published_at.desc"
                         "&limit=20", business, "/list?status=published", b""),
             ("insert one", f"{base}/author", inserting, None, author),
             ("GraphQL insert one", "/api/tenants/business/graphql/v1", inserting, None, graphql_author),
             ("PATCH one by id", f"{base}/post?id=eq.{post}", inserting, None, rating),
             ("PATCH by a new id each", f"{base}/post?id=eq.{{id}}", inserting, None, rating),
             ("GraphQL update by pk", "/api/tenants/business/graphql/v1", inserting, None, graphql_rating),
             ("429 rate limited", f"/api/tenants/tight/rest/v1/post?id=eq.{post}", tight_key, None, b""),
             ("404 unknown entity", f"{base}/nosuch", business, None, b"")]
    refused = "429 rate limited"  # without the business layer it is a read: no column, no share
    apps = {"gateway": gateway, "no business": no_business, "routing": routing, "plain": plain_app.app}
    async with LifespanManager(gateway), LifespanManager(no_business), LifespanManager(plain_app.app):
        print(f"CPU us per request, least of {args.rounds} rounds of {args.requests}; log level {args.log_level}; "
              f"load average {os.getloadavg()[0]:.2f}")
        print(f"{'request':22}{'status':>7}" + "".join(f"{name:>13}" for name in apps) + f"{'business':>10}")
        for name, path, headers, plain_path, body in cases:
            if args.cases and not any(part.strip() in name for part in args.cases.split(",")):
                continue
            method = "PATCH" if name.startswith("PATCH") else "POST" if body else "GET"
            scopes = {app: scope_of(path, headers, method) for app in apps if app != "plain"}
            if name == refused:
                del scopes["no business"]
            if plain_path is not None:
                scopes["plain"] = scope_of(plain_path, [])
            for app, scope in scopes.items():
                await requests(apps[app], scope, max(20, args.requests // 5), body)  # warm: statements, caches
            status = await requests(gateway, scopes["gateway"], 1, body)
            least = {app: float("inf") for app in scopes}
            for _ in range(args.rounds):
                for app, scope in scopes.items():
                    gc.collect()
                    started = time.process_time()
                    await requests(apps[app], scope, args.requests, body)
                    least[app] = min(least[app], (time.process_time() - started) / args.requests * 1e6)
            cells = "".join(f"{least[app]:>13.0f}" if app in least else f"{'':>13}" for app in apps)
            share = f"{(least['gateway'] - least['no business']) / least['gateway'] * 100:>9.1f}%" \
                if "no business" in least else ""
            print(f"{name:22}{status:>7}{cells}{share}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL",
                                                                  "postgresql://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--log-level", default="warning")
    parser.add_argument("--cases", help="only the requests whose names contain one of these (comma-separated)")
    args = parser.parse_args()
    from gateway.logs import configure_logging

    configure_logging(args.log_level, stream=open(os.devnull, "w"))  # lines rendered as deployed, not kept
    database = f"bench_layers_{secrets.token_hex(3)}"

    async def create() -> None:
        admin = await asyncpg.connect(args.database_url)
        await admin.execute(f'CREATE DATABASE "{database}"')
        await admin.close()

    asyncio.run(create())
    try:
        asyncio.run(measure(on(args.database_url, database), args))
    finally:
        asyncio.run(drop_database(args.database_url, database))


if __name__ == "__main__":
    main()
