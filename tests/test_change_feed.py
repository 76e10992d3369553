"""The change feed NOTIFYs only for tables some process watches (issue 13, item 15): PostgreSQL serialises
the commits of notifying transactions, so a write to a table nobody streams goes without it, while a table
an SSE stream or a subscription watches is NOTIFYed for every committed change, whichever process wrote."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import orjson
import pytest

from engine.channels import CHANGES_FEED
from engine.database import Database
from functions.keys import create_api_key
from functions.tenants import create_tenant
from tests.conftest import driver_url
from tests.server import running_gateway

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
async def key(db: Database) -> str:
    await create_tenant(db, "feed", source=(REPO / "schemas" / "blog.yaml").read_text())
    return (await create_api_key(db, "feed", "service", "service")).key


@pytest.fixture(scope="module")
def base(key: str, database_url: str) -> Iterator[str]:
    with running_gateway(database_url) as url:
        yield f"{url}/api/tenants/feed"


async def notifications(database_url: str) -> tuple[asyncpg.Connection, asyncio.Queue[str]]:
    queue: asyncio.Queue[str] = asyncio.Queue()
    listener = await asyncpg.connect(driver_url(database_url))
    await listener.add_listener(CHANGES_FEED, lambda *args: queue.put_nowait(args[3]))
    return listener, queue


async def write(client: httpx.AsyncClient, key: str, post: str, body: str) -> None:
    response = await client.post("/rest/v1/comment", json={"post_id": post, "body": body}, headers={"apikey": key})
    assert response.status_code == 201, response.text


async def heard(queue: asyncio.Queue[str], table: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            if await asyncio.wait_for(queue.get(), left) == table:
                return True
        except TimeoutError:
            return False
    return False


async def test_only_watched_tables_are_notified_and_a_stream_sees_every_change(base, key, database_url):
    listener, queue = await notifications(database_url)
    table = "t_feed.comment"
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        made = await client.post("/rest/v1/post", json={"title": "p"}, headers={"apikey": key,
                                                                              "Prefer": "return=representation"})
        post = made.json()[0]["id"]
        await write(client, key, post, "nobody watches")
        assert not await heard(queue, table, 1.0)  # no NOTIFY for a table no stream watches
        async with client.stream("GET", "/rest/v1/comment", headers={"apikey": key,
                                                                     "Accept": "text/event-stream"}) as stream:
            lines = stream.aiter_lines()
            assert await anext(lines) == ": connected"
            bodies: list[str] = []
            deadline = time.monotonic() + 15
            while not await heard(queue, table, 0.2):  # the stream registers its interest as it starts
                assert time.monotonic() < deadline
                await write(client, key, post, f"while starting {len(bodies)}")
                bodies.append(f"while starting {len(bodies)}")
            await write(client, key, post, "watched")
            assert await heard(queue, table, 10)
            seen = []
            while "watched" not in seen:
                line = await asyncio.wait_for(anext(lines), 10)
                if line.startswith("data: "):
                    seen.append(orjson.loads(line[6:])["record"]["body"])
            assert seen == [*bodies, "watched"]  # every change committed since it started, in order
        deadline = time.monotonic() + 15  # the last watcher gone, the interest is removed
        while True:
            while not queue.empty():
                queue.get_nowait()
            await write(client, key, post, "after")
            if not await heard(queue, table, 0.5):
                break
            assert time.monotonic() < deadline
    await listener.close()
