"""Opening a GraphQL WebSocket spends its tenant's rate-limit windows (and its address's anonymous budget),
as an HTTP request does: a tenant past its budget opens no new subscriptions, and other tenants still do."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import websockets
from websockets.exceptions import InvalidStatus

from engine import catalog
from engine.database import Database
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
async def tenants(db: Database) -> None:
    plans = catalog.platform_tables()["plans"]
    async with db.begin() as conn:
        await conn.execute(plans.insert().values(code="ws-two", name="two", limits={"requests_per_minute": 2}))
        await conn.execute(plans.insert().values(code="ws-open", name="open", limits={}))
    await create_tenant(db, "tight", source=SCHEMA, plan="ws-two")
    await create_tenant(db, "roomy", source=SCHEMA, plan="ws-open")


@pytest.fixture(scope="module")
def base(tenants: None, database_url: str) -> Iterator[str]:
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
