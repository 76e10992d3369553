"""Opening a GraphQL WebSocket spends its tenant's rate-limit windows (and its address's anonymous budget),
as an HTTP request does: a tenant past its budget opens no new subscriptions, and other tenants still do.
So does each query or mutation sent over an open socket: a socket is no way around the plan, nor around the
pause before a refusal is answered (gateway/ratelimit.py `hold`), during which other tenants are answered,
nor around the plan's rows written per second: a mutation's rows count, and past them the next is refused."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import pytest
import websockets
from websockets.exceptions import InvalidStatus

from engine import catalog
from engine.database import Database
from functions.keys import create_api_key
from functions.tenants import create_tenant
from tests.server import running_gateway

SCHEMA = """
name: sockets
entities:
  item:
    fields:
      label: {type: text}
    permissions:
      read: {anon: all}
"""


@pytest.fixture(scope="module")
async def tenants(db: Database) -> dict[str, str]:
    plans = catalog.platform_tables()["plans"]
    async with db.begin() as conn:
        await conn.execute(plans.insert().values(code="ws-two", name="two", limits={"requests_per_minute": 2}))
        await conn.execute(plans.insert().values(code="ws-three", name="three", limits={"requests_per_minute": 3}))
        await conn.execute(plans.insert().values(code="ws-open", name="open", limits={}))
        await conn.execute(plans.insert().values(code="ws-rows", name="rows", limits={"rows_written_per_second": 10}))
    await create_tenant(db, "tight", source=SCHEMA, plan="ws-two")
    await create_tenant(db, "queries", source=SCHEMA, plan="ws-three")
    await create_tenant(db, "roomy", source=SCHEMA, plan="ws-open")
    await create_tenant(db, "paced", source=SCHEMA, plan="ws-two")
    await create_tenant(db, "scribbler", source=SCHEMA, plan="ws-rows")
    keys = {slug: (await create_api_key(db, slug, "anon", "anon")).key for slug in ("queries", "roomy", "paced")}
    return {**keys, "scribbler": (await create_api_key(db, "scribbler", "service", "service")).key}


@pytest.fixture(scope="module")
def base(tenants: dict[str, str], database_url: str) -> Iterator[str]:
    with running_gateway(database_url, rate_limits={"anon_per_address": "100/minute"}) as url:
        yield url


async def opens(base: str, slug: str) -> bool:
    url = base.replace("http://", "ws://") + f"/api/tenants/{slug}/graphql/v1"
    try:
        async with websockets.connect(url, subprotocols=["graphql-transport-ws"]):  # type: ignore[list-item]
            return True
    except InvalidStatus:
        return False


async def test_a_tenant_past_its_window_opens_no_socket_while_another_tenant_does(base: str) -> None:
    if 60 - time.time() % 60 < 8:  # the three opens fall in one clock-aligned minute
        time.sleep(60 - time.time() % 60 + 0.05)
    assert [await opens(base, "tight") for _ in range(3)] == [True, True, False]
    assert await opens(base, "roomy")


async def socket_of(base: str, slug: str, key: str) -> websockets.ClientConnection:
    socket = await websockets.connect(base.replace("http://", "ws://") + f"/api/tenants/{slug}/graphql/v1",
                                      subprotocols=["graphql-transport-ws"])  # type: ignore[list-item]
    await socket.send(json.dumps({"type": "connection_init", "payload": {"apikey": key}}))
    assert json.loads(await socket.recv())["type"] == "connection_ack"
    return socket


async def answers(base: str, slug: str, key: str, count: int) -> list[str]:
    """The kind of answer (`next` or the error's code) to `count` queries sent over one socket."""
    url = base.replace("http://", "ws://") + f"/api/tenants/{slug}/graphql/v1"
    found = []
    async with websockets.connect(url, subprotocols=["graphql-transport-ws"]) as socket:  # type: ignore[list-item]
        await socket.send(json.dumps({"type": "connection_init", "payload": {"apikey": key}}))
        assert json.loads(await socket.recv())["type"] == "connection_ack"
        for number in range(count):
            await socket.send(json.dumps({"id": str(number), "type": "subscribe",
                                          "payload": {"query": "{ item { label } }"}}))
            answer = json.loads(await socket.recv())
            found.append(answer["type"] if answer["type"] != "error" else answer["payload"][0]["extensions"]["code"])
            if answer["type"] == "next":
                assert json.loads(await socket.recv())["type"] == "complete"
    return found


async def test_each_query_over_a_socket_spends_its_tenants_window(base: str, tenants: dict[str, str]) -> None:
    if 60 - time.time() % 60 < 8:  # the opening and the queries fall in one clock-aligned minute
        time.sleep(60 - time.time() % 60 + 0.05)
    assert await answers(base, "queries", tenants["queries"], 3) == ["next", "next", "rate_limited"]
    assert await answers(base, "roomy", tenants["roomy"], 3) == ["next", "next", "next"]


async def test_a_query_refused_over_a_socket_is_answered_after_a_pause_while_other_tenants_are_answered(
        base: str, tenants: dict[str, str]) -> None:
    if 60 - time.time() % 60 < 8:  # the opening and the queries fall in one clock-aligned minute
        time.sleep(60 - time.time() % 60 + 0.05)
    query = {"type": "subscribe", "payload": {"query": "{ item { label } }"}}
    paced, roomy = await socket_of(base, "paced", tenants["paced"]), await socket_of(base, "roomy", tenants["roomy"])
    try:  # the plan's two requests a minute: the opening, then this query
        await paced.send(json.dumps({**query, "id": "spends"}))
        assert json.loads(await paced.recv())["type"] == "next" and json.loads(await paced.recv())["type"] == "complete"
        started = time.monotonic()
        await paced.send(json.dumps({**query, "id": "refused"}))
        refused = asyncio.create_task(paced.recv())
        await asyncio.sleep(0.2)  # the refusal is being held meanwhile
        await roomy.send(json.dumps({**query, "id": "elsewhere"}))
        assert json.loads(await roomy.recv())["type"] == "next"
        assert not refused.done()
        answer = json.loads(await refused)
        held_for = time.monotonic() - started
    finally:
        await paced.close()
        await roomy.close()
    assert answer["type"] == "error" and answer["payload"][0]["extensions"]["code"] == "rate_limited"
    assert held_for >= 0.9  # the pause of HOLD_SECONDS, 1 s


async def test_mutations_over_a_socket_spend_and_meet_the_plans_rows_written_per_second(
        base: str, tenants: dict[str, str]) -> None:
    insert = "mutation($o: [item_insert_input!]!) { insert_item(objects: $o) { affected_rows } }"
    socket = await socket_of(base, "scribbler", tenants["scribbler"])
    try:
        kinds = []
        for number in range(2):  # 30 rows at 10 a second: the second write is 3 s ahead of the plan
            await socket.send(json.dumps({"id": str(number), "type": "subscribe", "payload": {
                "query": insert, "variables": {"o": [{"label": "row"}] * 30}}}))
            answer = json.loads(await socket.recv())
            kinds.append(answer["type"] if answer["type"] != "error" else answer["payload"][0]["extensions"]["code"])
            if answer["type"] == "next":
                assert answer["payload"]["data"]["insert_item"]["affected_rows"] == 30
                assert json.loads(await socket.recv())["type"] == "complete"
    finally:
        await socket.close()
    assert kinds == ["next", "rate_limited"]
