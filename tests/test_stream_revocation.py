"""Streams end when what opened them ends: an SSE stream ends with an `error` event, a GraphQL subscription's
socket closes (4401/4403), when its API key is revoked, its session ends, its tenant is suspended or its access
token expires, whichever gateway the stream is on; and a plan caps the streams a tenant holds open."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import orjson
import pytest
import sqlalchemy as sa
import websockets
from websockets.exceptions import ConnectionClosed

from engine import catalog
from engine.database import Database
from engine.identity.signing import load_keyring
from functions.keys import create_api_key, revoke_api_key
from functions.tenants import create_tenant, suspend_tenant
from tests.server import running_gateway

SCHEMA = """
name: river
entities:
  post:
    realtime: true
    fields:
      title: {type: text, required: true}
    permissions:
      read: {anon: all, authenticated: all}
"""
PASSWORD = "a long passphrase"
SUBSCRIPTION = "subscription { post { title } }"
TENANTS = ("river", "drought", "narrow")


@pytest.fixture(scope="module")
async def keys(db: Database) -> dict[str, str]:
    plans = catalog.platform_tables()["plans"]
    async with db.begin() as conn:
        await conn.execute(plans.insert().values(code="tiny", name="Tiny",
                                                 limits={"realtime": {"max_connections": 2, "max_subscriptions": 2}}))
    made = {}
    for slug in TENANTS:
        await create_tenant(db, slug, source=SCHEMA, plan="tiny" if slug == "narrow" else None)
        made.update({f"{slug}_{role}": (await create_api_key(db, slug, role, role)).key for role in ("anon", "service")})
    return made


@pytest.fixture(scope="module")
def base(keys: dict[str, str], database_url: str) -> Iterator[str]:
    with running_gateway(database_url) as url:
        yield url


@pytest.fixture(scope="module")
def other(keys: dict[str, str], database_url: str) -> Iterator[str]:
    """A second gateway on the same database: it learns of revocations only through PostgreSQL."""
    with running_gateway(database_url) as url:
        yield url


class EventStream:
    """An SSE stream read in a thread: its status, its events (name, data) and whether the server ended it."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        self.status = 0
        self.events: list[tuple[str, Any]] = []
        self.opened, self.ended = threading.Event(), threading.Event()
        self.client = httpx.Client(timeout=60)
        self.thread = threading.Thread(target=self.read, args=(url, headers), daemon=True)
        self.thread.start()
        assert self.opened.wait(10)

    def read(self, url: str, headers: dict[str, str]) -> None:
        try:
            with self.client.stream("GET", url, headers={"Accept": "text/event-stream", **headers}) as response:
                self.status = response.status_code
                self.opened.set()
                current: dict[str, str] = {}
                for line in response.iter_lines():
                    if line.startswith(":"):
                        continue
                    if line:
                        name, _, value = line.partition(": ")
                        current[name] = value
                    elif "data" in current:
                        self.events.append((current.get("event", "message"), orjson.loads(current["data"])))
                        current = {}
        except httpx.HTTPError:
            return  # closed by `close()`
        finally:
            self.opened.set()
            self.ended.set()

    def close(self) -> None:
        self.client.close()
        self.thread.join(10)

    def error(self, timeout: float = 20.0) -> dict[str, Any]:
        """The `error` event the server ended the stream with."""
        assert self.ended.wait(timeout), "the stream is still open"
        assert self.events and self.events[-1][0] == "error", self.events
        return self.events[-1][1]


def rest(base: str, slug: str = "river") -> str:
    return f"{base}/api/tenants/{slug}/rest/v1/post"


def ws_url(base: str, slug: str = "river") -> str:
    return base.replace("http://", "ws://") + f"/api/tenants/{slug}/graphql/v1"


async def subscribed(base: str, headers: dict[str, str], slug: str = "river", count: int = 1) -> Any:
    """A socket that has `count` subscriptions running (each got its first result)."""
    socket = await websockets.connect(ws_url(base, slug), subprotocols=["graphql-transport-ws"])
    await socket.send(orjson.dumps({"type": "connection_init", "payload": {"headers": headers}}).decode())
    assert orjson.loads(await asyncio.wait_for(socket.recv(), 10))["type"] == "connection_ack"
    for number in range(count):
        await socket.send(orjson.dumps({"id": str(number), "type": "subscribe", "payload": {"query": SUBSCRIPTION}}).decode())
        assert orjson.loads(await asyncio.wait_for(socket.recv(), 10))["type"] == "next"
    return socket


async def eventually_subscribed(base: str, headers: dict[str, str], slug: str, attempts: int = 50) -> Any:
    """`subscribed`, once the server has noticed a stream that was closed (and so freed its slot)."""
    for _ in range(attempts):
        try:
            return await subscribed(base, headers, slug)
        except ConnectionClosed:
            await asyncio.sleep(0.1)
    raise AssertionError("no slot was freed")


async def close_code(socket: Any, timeout: float = 20.0) -> int:
    """The code the server closes the socket with (whatever results it still sends before)."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                await socket.recv()
    except ConnectionClosed as closed:
        assert closed.rcvd is not None
        return closed.rcvd.code


async def sign_up(base: str, keys: dict[str, str], email: str, slug: str = "river") -> dict[str, Any]:
    response = await asyncio.to_thread(httpx.post, f"{base}/api/tenants/{slug}/auth/v1/signup",
                                       json={"email": email, "password": PASSWORD}, headers={"apikey": keys[f"{slug}_anon"]})
    assert response.status_code == 200, response.text
    return response.json()


def as_user(keys: dict[str, str], session: dict[str, Any], slug: str = "river") -> dict[str, str]:
    return {"apikey": keys[f"{slug}_anon"], "Authorization": f"Bearer {session['access_token']}"}


async def logout(base: str, keys: dict[str, str], session: dict[str, Any]) -> None:
    response = await asyncio.to_thread(httpx.post, f"{base}/api/tenants/river/auth/v1/logout",
                                       headers=as_user(keys, session))
    assert response.status_code == 204, response.text


async def brief_token(db: Database, session: dict[str, Any], seconds: int = 2) -> str:
    """An access token of the session that lives `seconds`, as the gateway's keyring signs them."""
    async with db.engine.connect() as conn:
        keyring = await load_keyring(conn)
    claims = jwt.decode(session["access_token"], options={"verify_signature": False})
    token, _ = keyring.issue({k: claims[k] for k in ("sub", "tenant", "roles", "session_id")}, lifetime=seconds)
    return token


async def test_an_event_stream_ends_with_an_error_event_when_its_api_key_is_revoked(base, keys, db):
    key = (await create_api_key(db, "river", "sse-doomed", "anon")).key
    stream = await asyncio.to_thread(EventStream, rest(base), {"apikey": key})
    assert stream.status == 200
    await revoke_api_key(db, "river", "sse-doomed")
    assert (await asyncio.to_thread(stream.error))["code"] == "key_revoked"


async def test_a_subscription_socket_closes_4401_when_its_api_key_is_revoked(base, keys, db):
    key = (await create_api_key(db, "river", "ws-doomed", "anon")).key
    socket = await subscribed(base, {"apikey": key})
    await revoke_api_key(db, "river", "ws-doomed")
    assert await close_code(socket) == 4401


async def test_an_event_stream_ends_when_its_user_logs_out(base, keys):
    session = await sign_up(base, keys, "sse-logout@example.com")
    stream = await asyncio.to_thread(EventStream, rest(base), as_user(keys, session))
    assert stream.status == 200
    await logout(base, keys, session)
    assert (await asyncio.to_thread(stream.error))["code"] == "session_ended"


async def test_a_subscription_socket_closes_4401_when_its_user_logs_out(base, keys):
    session = await sign_up(base, keys, "ws-logout@example.com")
    socket = await subscribed(base, as_user(keys, session))
    await logout(base, keys, session)
    assert await close_code(socket) == 4401


async def test_a_reused_refresh_token_ends_the_sessions_streams(base, keys):
    session = await sign_up(base, keys, "reuse@example.com")
    socket = await subscribed(base, as_user(keys, session))
    grant = f"{base}/api/tenants/river/auth/v1/token?grant_type=refresh_token"
    for expected in (200, 400):  # the second use of the same refresh token revokes the session
        used = await asyncio.to_thread(httpx.post, grant, json={"refresh_token": session["refresh_token"]},
                                       headers={"apikey": keys["river_anon"]})
        assert used.status_code == expected, used.text
    assert await close_code(socket) == 4401


async def test_streams_of_a_suspended_tenant_end(base, keys, db):
    stream = await asyncio.to_thread(EventStream, rest(base, "drought"), {"apikey": keys["drought_anon"]})
    socket = await subscribed(base, {"apikey": keys["drought_anon"]}, slug="drought")
    await suspend_tenant(db, "drought", "unpaid")
    assert (await asyncio.to_thread(stream.error))["code"] == "tenant_suspended"
    assert await close_code(socket) == 4403


async def test_an_event_stream_ends_when_its_access_token_expires(base, keys, db):
    session = await sign_up(base, keys, "sse-brief@example.com")
    token = await brief_token(db, session)
    stream = await asyncio.to_thread(EventStream, rest(base), {"apikey": keys["river_anon"],
                                                                 "Authorization": f"Bearer {token}"})
    assert stream.status == 200
    assert (await asyncio.to_thread(stream.error))["code"] == "token_expired"


async def test_a_platform_admins_subscription_closes_4401_when_the_token_expires(base, keys, db):
    users = catalog.platform_tables()["users"]
    async with db.begin() as conn:
        admin_id = await conn.scalar(users.insert().values(email="ops@example.com", password_hash="x",
                                                           roles=["platform_admin"]).returning(users.c.id))
        system_id = await conn.scalar(sa.select(catalog.platform_tables()["tenants"].c.id)
                                      .where(catalog.platform_tables()["tenants"].c.slug == "system"))
        keyring = await load_keyring(conn)
    token, _ = keyring.issue({"sub": str(admin_id), "tenant": str(system_id), "roles": ["platform_admin"]}, lifetime=2)
    socket = await subscribed(base, {"Authorization": f"Bearer {token}"})
    assert await close_code(socket) == 4401


async def test_a_logout_through_one_gateway_ends_streams_on_another(base, other, keys):
    session = await sign_up(base, keys, "elsewhere@example.com")
    stream = await asyncio.to_thread(EventStream, rest(base), as_user(keys, session))
    socket = await subscribed(base, as_user(keys, session))
    await logout(other, keys, session)
    assert (await asyncio.to_thread(stream.error))["code"] == "session_ended"
    assert await close_code(socket) == 4401


async def test_a_stream_cannot_open_with_an_ended_session(base, keys):
    session = await sign_up(base, keys, "ended@example.com")
    await logout(base, keys, session)
    refused = await asyncio.to_thread(httpx.get, rest(base), headers={"Accept": "text/event-stream",
                                                                        **as_user(keys, session)})
    assert refused.status_code == 401 and refused.json()["code"] == "session_ended"


async def test_a_socket_refuses_subscriptions_beyond_the_plans_cap(base, keys):
    socket = await subscribed(base, {"apikey": keys["narrow_anon"]}, slug="narrow", count=2)
    await socket.send(orjson.dumps({"id": "x", "type": "subscribe", "payload": {"query": SUBSCRIPTION}}).decode())
    refused = orjson.loads(await asyncio.wait_for(socket.recv(), 10))
    assert refused["id"] == "x" and refused["type"] == "error"
    assert refused["payload"][0]["extensions"]["code"] == "too_many_subscriptions"
    await socket.close()


async def test_a_tenant_refuses_streams_beyond_the_plans_cap(base, keys):
    headers = {"apikey": keys["narrow_anon"]}
    first = await subscribed(base, headers, slug="narrow")
    stream = await asyncio.to_thread(EventStream, rest(base, "narrow"), headers)
    assert stream.status == 200
    refused = await asyncio.to_thread(httpx.get, rest(base, "narrow"), headers={"Accept": "text/event-stream", **headers})
    assert refused.status_code == 429 and refused.json()["code"] == "too_many_streams"
    third = await websockets.connect(ws_url(base, "narrow"), subprotocols=["graphql-transport-ws"])
    assert await close_code(third) == 4429
    stream.close()
    again = await eventually_subscribed(base, headers, "narrow")  # a freed slot is taken again
    await again.close()
    await first.close()
