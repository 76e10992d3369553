"""GraphQL writes against the same writes by REST: one engine server, the two dialects interleaved.

    python bench/graphql_writes.py [--seconds 4] [--rounds 3] [--connections 32] [--database-url URL]

Why apart from bench/rest.py: that one measures each request against the hand-written server, a row
after another, so the ratio of its GraphQL row to its REST row compares runs minutes apart on a machine
whose throughput moves by ±20% in that time. Here the REST request and its GraphQL twin alternate in
every round, against the one engine server alone (`backsaas serve --workers 2`, on bench/rest.py's
scratch database: the blog schema, 1,000 posts): an insert of one comment (audited) by REST's POST and by
`insert_comment_one`, and an update of one post's rating by REST's PATCH and by `update_post_by_pk`. The
load is wrk (`apt-get install wrk`). Printed per round and request: req/s, then per request the CPU
microseconds of the server's processes and of the database's backends; then the medians of the GraphQL/REST
ratios of req/s (issue 13's target: GraphQL mutations at 0.9x of the REST insert or better).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import asyncpg
import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import rest  # noqa: E402
from rest import backend_cpu, cpu_of_tree, drop_database, free_port, on, prepare, start  # noqa: E402

COMMENT = "mutation($o: comment_insert_input!) { insert_comment_one(object: $o) { id } }"
RATING = "mutation($id: uuid!, $r: Float) { update_post_by_pk(pk_columns: {id: $id}, _set: {rating: $r}) { id } }"


def lua(method: str, body: str, path: str | None = None) -> str:
    """A wrk script sending `body` by `method` (to `path`, an expression of `id`, a random post's, when given)."""
    script = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
    script.write(f'wrk.method = "{method}"\nwrk.headers["Content-Type"] = "application/json"\n')
    if path is None:
        script.write(f"wrk.body = [[{body}]]\n")
    else:  # a random post of the 1,000 per request, by an id list read once
        script.write(f"ids = {{{', '.join(json.dumps(i) for i in POSTS)}}}\nrequest = function()\n"
                     f"  local id = ids[math.random(#ids)]\n  return wrk.format(nil, {path}, nil, {body})\nend\n")
    script.close()
    return script.name


POSTS: list[str] = []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL",
                                                                  "postgresql://postgres@127.0.0.1:5432/postgres"))
    args = parser.parse_args()
    database = f"bench_gqlw_{secrets.token_hex(3)}"

    async def create() -> None:
        admin = await asyncpg.connect(on(args.database_url, "postgres"))
        await admin.execute(f'CREATE DATABASE "{database}"')
        await admin.close()

    asyncio.run(create())
    url = on(args.database_url, database)
    rest.RECEIVER_PORT = free_port()  # prepare() names a webhook receiver; nothing is delivered here
    server = None
    try:
        _, posts, keys, _ = asyncio.run(prepare(url))
        POSTS.extend(posts)
        port = free_port()
        server = start([sys.executable, "-m", "gateway.cli", "serve", "--port", str(port), "--workers", "2"],
                       {"DATABASE_URL": url, "BACKSAAS_LOG_LEVEL": "warning", "BENCH_WEBHOOK_SECRET": "bench"}, port)
        base = f"http://127.0.0.1:{port}/api/tenants/bench"
        comment = json.dumps({"post_id": posts[0], "body": "a comment"})
        pairs = {
            "insert one comment": (
                (f"{base}/rest/v1/comment", lua("POST", comment)),
                (f"{base}/graphql/v1", lua("POST", json.dumps({"query": COMMENT, "variables": {"o": json.loads(comment)}})))),
            "update one post's rating": (
                (f"{base}/rest/v1/post", lua("PATCH", "'{\"rating\": ' .. (math.random(0, 50) / 10) .. '}'",
                                             '"/api/tenants/bench/rest/v1/post?id=eq." .. id')),
                (f"{base}/graphql/v1", lua("POST", "'{\"query\": \"" + RATING.replace('"', '\\"') + "\", \"variables\": "
                                           "{\"id\": \"' .. id .. '\", \"r\": ' .. (math.random(0, 50) / 10) .. '}}'",
                                           '"/api/tenants/bench/graphql/v1"'))),
        }
        tree = psutil.Process(server.pid)

        def run(target: str, script: str, seconds: int) -> tuple[float, float, float]:
            before = cpu_of_tree(tree), asyncio.run(backend_cpu(url))
            output = subprocess.run(["wrk", "-t2", f"-c{args.connections}", f"-d{seconds}s", "-H",
                                     f"apikey: {keys['bench']}", "-s", script, target],
                                    capture_output=True, text=True, check=True).stdout
            errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
            if errors:
                raise RuntimeError(f"{target}: {errors.group(1)} error answers\n{output}")
            count = int(re.search(r"(\d+) requests in", output).group(1))
            server_cpu, db_cpu = cpu_of_tree(tree) - before[0], (asyncio.run(backend_cpu(url)) or 0) - (before[1] or 0)
            return count / seconds, server_cpu / count * 1e6, db_cpu / count * 1e6

        for (target, script) in (p for pair in pairs.values() for p in pair):
            run(target, script, 1)  # warm: runtimes compiled, statements prepared, pools full
        print(f"wrk -c{args.connections}, {args.seconds} s per run, REST and GraphQL alternating, {args.rounds} rounds; "
              f"one engine server, 2 workers; {os.cpu_count()} cores")
        print(f"{'request':26}{'round':>6}{'REST req/s':>11}{'server µs':>10}{'db µs':>7}"
              f"{'GraphQL req/s':>14}{'server µs':>10}{'db µs':>7}{'ratio':>7}")
        ratios: dict[str, list[float]] = {}
        for round_ in range(args.rounds):
            for name, ((rest_url, rest_script), (graphql_url, graphql_script)) in pairs.items():
                r = run(rest_url, rest_script, args.seconds)
                g = run(graphql_url, graphql_script, args.seconds)
                ratios.setdefault(name, []).append(g[0] / r[0])
                print(f"{name:26}{round_ + 1:>6}{r[0]:>11.0f}{r[1]:>10.0f}{r[2]:>7.0f}{g[0]:>14.0f}{g[1]:>10.0f}"
                      f"{g[2]:>7.0f}{g[0] / r[0]:>7.2f}")
        for name, found in ratios.items():
            print(f"{name}: GraphQL/REST req/s, median of {len(found)} rounds: {statistics.median(found):.2f}")
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        asyncio.run(drop_database(args.database_url, database))


if __name__ == "__main__":
    main()
