"""GraphQL subscriptions over WebSocket (`graphql-transport-ws`), driven by `gql`'s websockets transport:
changes made through REST on ANOTHER server process reach subscribers, filtered by their permissions."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import jwt
import orjson
import pytest
from gql import Client, gql
from gql.transport.exceptions import TransportConnectionFailed, TransportQueryError
from gql.transport.websockets import WebsocketsTransport
from websockets.exceptions import ConnectionClosed

from engine.database import Database
from engine.identity.signing import load_keyring
from functions.keys import create_api_key
from functions.tenants import create_tenant
from tests.server import free_port, running_gateway

SCHEMA = """
name: live
entities:
  message:
    fields:
      text:   {type: text, required: true}
      public: {type: boolean, required: true, default: true}
    permissions:
      read: {anon: all, authenticated: all}
  note:
    owner: true
    fields:
      text: {type: text, required: true}
      amount: {type: decimal, precision: 30, scale: 1}
    permissions:
      read:   {authenticated: own}
      create: {authenticated: all}
  event_stream:               # an entity whose name ends as a streaming field's does: the entity's
    fields:
      title: {type: text}
    permissions:
      read: {anon: all}
"""


@pytest.fixture(scope="module")
async def keys(db: Database) -> dict[str, str]:
    await create_tenant(db, "live", source=SCHEMA)
    await create_tenant(db, "elsewhere", source=SCHEMA.replace("name: live", "name: elsewhere"))
    made = {role: (await create_api_key(db, "live", role, role)).key for role in ("anon", "service")}
    return {**made, "elsewhere": (await create_api_key(db, "elsewhere", "service", "service")).key}


@pytest.fixture(scope="module")
def base(keys: dict[str, str], database_url: str) -> Iterator[str]:
    with running_gateway(database_url) as url:
        yield url


@pytest.fixture(scope="module")
def other_process(keys: dict[str, str], database_url: str) -> Iterator[str]:
    """A second gateway, in a process of its own, on the same database."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "uvicorn", "gateway.app:app_from_env", "--factory",
                                "--port", str(port), "--log-level", "warning"],
                               env={**os.environ, "BACKSAAS_DATABASE_URL": database_url})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{url}/healthz", timeout=1)
            break
        except httpx.TransportError:
            time.sleep(0.1)
    yield url
    process.terminate()
    process.wait(timeout=20)


def transport(base: str, **init: str) -> WebsocketsTransport:
    url = base.replace("http://", "ws://") + "/api/tenants/live/graphql/v1"
    return WebsocketsTransport(url=url, init_payload={"headers": init},
                               subprotocols=[WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL])


async def next_result(stream, timeout: float = 10.0):
    return await asyncio.wait_for(anext(stream), timeout)


async def test_a_subscriber_gets_the_current_result_then_changes_made_through_rest_elsewhere(base, other_process, keys):
    query = gql("subscription { message(where: {public: {_eq: true}}, order_by: {text: asc}) { text } }")
    async with Client(transport=transport(base, apikey=keys["anon"])) as session:
        stream = session.subscribe(query)
        assert await next_result(stream) == {"message": []}
        written = await asyncio.to_thread(httpx.post, f"{other_process}/api/tenants/live/rest/v1/message",
                                          json={"text": "hello"}, headers={"apikey": keys["service"]})
        assert written.status_code == 201
        assert await next_result(stream) == {"message": [{"text": "hello"}]}
        await asyncio.to_thread(httpx.post, f"{other_process}/api/tenants/live/rest/v1/message",
                                json={"text": "hidden", "public": False}, headers={"apikey": keys["service"]})
        await asyncio.to_thread(httpx.post, f"{other_process}/api/tenants/live/rest/v1/message",
                                json={"text": "again"}, headers={"apikey": keys["service"]})
        assert await next_result(stream) == {"message": [{"text": "again"}, {"text": "hello"}]}
        await stream.aclose()


async def sign_up(base: str, keys: dict[str, str], email: str) -> dict:
    response = await asyncio.to_thread(httpx.post, f"{base}/api/tenants/live/auth/v1/signup",
                                       json={"email": email, "password": "a long passphrase"},
                                       headers={"apikey": keys["anon"]})
    return response.json()


async def test_subscribers_see_only_rows_their_permissions_allow(base, keys):
    ann, bob = await sign_up(base, keys, "ann@example.com"), await sign_up(base, keys, "bob@example.com")
    query = gql("subscription { note { text } }")
    async with Client(transport=transport(base, apikey=keys["anon"],
                                          Authorization=f"Bearer {ann['access_token']}")) as session:
        stream = session.subscribe(query)
        assert await next_result(stream) == {"note": []}
        for who, text in ((bob, "bob's"), (ann, "ann's")):
            await asyncio.to_thread(httpx.post, f"{base}/api/tenants/live/rest/v1/note", json={"text": text},
                                    headers={"apikey": keys["anon"], "Authorization": f"Bearer {who['access_token']}"})
        assert await next_result(stream) == {"note": [{"text": "ann's"}]}
        await stream.aclose()


async def test_a_streaming_subscription_sends_the_callers_rows_past_its_cursor_in_batches(base, keys):
    """Hasura's `{entity}_stream`: batches of `batch_size` rows after the cursor, in its column's order, then each
    new row as it comes; only rows of the caller's read scope (bob's notes never reach ann)."""
    ann, bob = await sign_up(base, keys, "streamer@example.com"), await sign_up(base, keys, "other@example.com")

    async def note(who: dict, text: str) -> None:
        written = await asyncio.to_thread(httpx.post, f"{base}/api/tenants/live/rest/v1/note", json={"text": text},
                                          headers={"apikey": keys["anon"], "Authorization": f"Bearer {who['access_token']}"})
        assert written.status_code == 201, written.text

    for text in ("s1", "s2", "s3"):
        await note(ann, text)
    query = gql("subscription($from: timestamptz) { note_stream(batch_size: 2, "
                "cursor: {initial_value: {created_at: $from}, ordering: ASC}) { text } }")
    async with Client(transport=transport(base, apikey=keys["anon"],
                                          Authorization=f"Bearer {ann['access_token']}")) as session:
        stream = session.subscribe(query, variable_values={"from": "2000-01-01T00:00:00Z"})
        assert await next_result(stream) == {"note_stream": [{"text": "s1"}, {"text": "s2"}]}
        assert await next_result(stream) == {"note_stream": [{"text": "s3"}]}
        await note(bob, "bob's")
        await note(ann, "s4")
        assert await next_result(stream) == {"note_stream": [{"text": "s4"}]}
        await stream.aclose()
    async with Client(transport=transport(base, apikey=keys["anon"])) as anonymous:
        with pytest.raises(TransportQueryError) as refused:
            await next_result(anonymous.subscribe(query, variable_values={"from": "2000-01-01T00:00:00Z"}))
        assert refused.value.errors[0]["extensions"]["code"] == "validation-failed"  # anon reads no note
    async with Client(transport=transport(base, apikey=keys["anon"],
                                          Authorization=f"Bearer {ann['access_token']}")) as session:
        with pytest.raises(TransportQueryError) as two:
            await next_result(session.subscribe(gql(
                "subscription { note_stream(batch_size: 1, cursor: [{initial_value: {text: \"a\"}}, "
                "{initial_value: {text: \"b\"}}]) { text } }")))
        assert "exactly one cursor" in two.value.errors[0]["message"]


async def test_another_tenants_key_streams_nothing(base, keys):
    """A stream is refused to another tenant's service key before anything runs (its credentials are bound to its
    own tenant), and that tenant's own stream sees its rows alone."""
    query = gql('subscription { message_stream(batch_size: 5, cursor: {initial_value: {text: ""}}) { text } }')
    with pytest.raises(TransportConnectionFailed) as refused:
        async with Client(transport=transport(base, apikey=keys["elsewhere"])) as session:
            await next_result(session.subscribe(query))
    assert isinstance(refused.value.__cause__, ConnectionClosed) and refused.value.__cause__.rcvd.code in (4401, 4403)
    url = base.replace("http://", "ws://") + "/api/tenants/elsewhere/graphql/v1"
    own = WebsocketsTransport(url=url, init_payload={"headers": {"apikey": keys["elsewhere"]}},
                              subprotocols=[WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL])
    await asyncio.to_thread(httpx.post, f"{base}/api/tenants/live/rest/v1/message", json={"text": "live's"},
                            headers={"apikey": keys["service"]})
    await asyncio.to_thread(httpx.post, f"{base}/api/tenants/elsewhere/rest/v1/message", json={"text": "its own"},
                            headers={"apikey": keys["elsewhere"]})
    async with Client(transport=own) as session:  # its first batch: its own message, never live's
        assert await next_result(session.subscribe(query)) == {"message_stream": [{"text": "its own"}]}


async def test_a_stream_on_a_decimal_sends_each_row_once_with_its_digits(base, keys):
    """The cursor is kept as the database's text, and numbers go out as it wrote them (a float's 17 digits
    would skip a row, or send one again and again)."""
    from websockets.asyncio.client import connect

    who = await sign_up(base, keys, "decimals@example.com")
    headers = {"apikey": keys["anon"], "Authorization": f"Bearer {who['access_token']}"}
    amounts = ["1234567890123456789.5", "1234567890123456790.5", "1234567890123456810.5"]
    for amount in amounts:
        written = await asyncio.to_thread(httpx.post, f"{base}/api/tenants/live/rest/v1/note",
                                          json={"text": amount, "amount": amount}, headers=headers)
        assert written.status_code == 201, written.text
    url = base.replace("http://", "ws://") + "/api/tenants/live/graphql/v1"
    async with connect(url, subprotocols=["graphql-transport-ws"]) as socket:
        await socket.send(orjson.dumps({"type": "connection_init", "payload": {"headers": headers}}).decode())
        assert orjson.loads(await socket.recv())["type"] == "connection_ack"
        await socket.send(orjson.dumps({"type": "subscribe", "id": "d", "payload": {"query": (
            'subscription { note_stream(batch_size: 1, cursor: {initial_value: {amount: "0"}}) { amount } }')}}).decode())
        sent = [await asyncio.wait_for(socket.recv(), 10) for _ in amounts]
        assert [f'"payload":{{"data":{{"note_stream":[{{"amount":{amount}}}]}}}}' in m for m, amount
                in zip(sent, amounts, strict=True)] == [True] * 3, sent
        with pytest.raises(TimeoutError):  # each row once: nothing more until a new one comes
            await asyncio.wait_for(socket.recv(), 1)
    async with Client(transport=transport(base, apikey=keys["anon"])) as session:  # the entity, not a stream
        assert await next_result(session.subscribe(gql("subscription { event_stream { title } }"))) == {
            "event_stream": []}


async def test_an_expired_access_token_closes_the_socket_with_4401(base, keys, db):
    session = await sign_up(base, keys, "brief@example.com")
    async with db.engine.connect() as conn:
        keyring = await load_keyring(conn)
    claims = jwt.decode(session["access_token"], options={"verify_signature": False})
    brief, _ = keyring.issue({k: claims[k] for k in ("sub", "tenant", "roles", "session_id")}, lifetime=2)
    with pytest.raises(TransportConnectionFailed) as closed:
        async with Client(transport=transport(base, Authorization=f"Bearer {brief}")) as live:
            stream = live.subscribe(gql("subscription { message { text } }"))
            await next_result(stream)
            await next_result(stream, timeout=15)
    assert isinstance(closed.value.__cause__, ConnectionClosed) and closed.value.__cause__.rcvd.code == 4401


async def test_bad_credentials_are_refused_at_connection_init(base, keys):
    with pytest.raises(TransportConnectionFailed) as refused:
        async with Client(transport=transport(base, apikey="bsk_forged")) as session:
            await session.execute(gql("subscription { message { text } }"))
    assert isinstance(refused.value.__cause__, ConnectionClosed) and refused.value.__cause__.rcvd.code == 4403


async def test_errors_of_a_subscription_come_back_as_error_messages(base, keys):
    async with Client(transport=transport(base, apikey=keys["anon"])) as session:
        with pytest.raises(TransportQueryError) as failed:
            await next_result(session.subscribe(gql("subscription { note { text } }")))
    assert failed.value.errors[0]["extensions"]["code"] == "validation-failed"  # anon's schema has no `note`


async def test_one_cached_query_answers_each_user_with_their_own_rows(base, keys):
    cat, dan = await sign_up(base, keys, "cat@example.com"), await sign_up(base, keys, "dan@example.com")
    for who in (cat, dan):
        await asyncio.to_thread(httpx.post, f"{base}/api/tenants/live/rest/v1/note", json={"text": who["user"]["email"]},
                                headers={"apikey": keys["anon"], "Authorization": f"Bearer {who['access_token']}"})
    for who in (cat, dan, cat):
        answer = await asyncio.to_thread(httpx.post, f"{base}/api/tenants/live/graphql/v1",
                                         json={"query": "{ note { text } }"},
                                         headers={"apikey": keys["anon"], "Authorization": f"Bearer {who['access_token']}"})
        assert answer.json() == {"data": {"note": [{"text": who["user"]["email"]}]}}


@pytest.mark.parametrize("frame", [b'{"type": "connection_init"}',
                                   '{"type": "connection_init", "payload": ' + "[" * 300 + "]" * 300 + "}",
                                   '{"type": "subscribe", "id": "p", "payload": [1]}'],
                         ids=["binary", "nested too deep", "a payload that is no object"])
async def test_a_frame_the_protocol_does_not_allow_closes_the_socket_with_4400(base, keys, frame):
    from websockets.asyncio.client import connect

    url = base.replace("http://", "ws://") + "/api/tenants/live/graphql/v1"
    async with connect(url, subprotocols=["graphql-transport-ws"]) as socket:
        if "subscribe" in str(frame):
            await socket.send(orjson.dumps({"type": "connection_init", "payload": {"apikey": keys["anon"]}}).decode())
            assert orjson.loads(await socket.recv())["type"] == "connection_ack"
        await socket.send(frame)
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(socket.recv(), 10)
    assert closed.value.rcvd.code == 4400


async def test_queries_and_mutations_run_over_the_socket_within_the_callers_scope(base, keys):
    """gql's WebSocket transport fetches the schema (an introspection query) before anything else."""
    eve, fay = await sign_up(base, keys, "eve@example.com"), await sign_up(base, keys, "fay@example.com")
    for who in (eve, fay):
        headers = {"apikey": keys["anon"], "Authorization": f"Bearer {who['access_token']}"}
        async with Client(transport=transport(base, **headers), fetch_schema_from_transport=True) as session:
            made = await session.execute(gql('mutation($t: String!) { insert_note_one(object: {text: $t}) { text } }'),
                                         variable_values={"t": f"by {who['user']['email']}"})
            assert made == {"insert_note_one": {"text": f"by {who['user']['email']}"}}
            seen = await session.execute(gql("{ note { text } }"))
            assert seen == {"note": [{"text": f"by {who['user']['email']}"}]}  # their own row, never the other's
    async with Client(transport=transport(base, apikey=keys["anon"])) as anonymous:
        with pytest.raises(TransportQueryError) as refused:
            await anonymous.execute(gql('mutation { insert_note_one(object: {text: "anon"}) { text } }'))
        assert refused.value.errors[0]["extensions"]["code"] == "validation-failed"
        assert "message" in await anonymous.execute(gql("{ message { text } }"))  # what anon may read, it reads


async def test_x_hasura_role_in_connection_init_narrows_the_sockets_caller(base, keys):
    narrowed = transport(base, apikey=keys["service"], **{"x-hasura-role": "anon"})
    async with Client(transport=narrowed) as session:
        assert "message" in await session.execute(gql("{ message { text } }"))
        with pytest.raises(TransportQueryError) as refused:
            await session.execute(gql("{ note { text } }"))  # anon's schema has no note; the service key's has
        assert refused.value.errors[0]["extensions"]["code"] == "validation-failed"
    with pytest.raises(TransportConnectionFailed) as widened:
        async with Client(transport=transport(base, apikey=keys["anon"], **{"x-hasura-role": "service"})) as session:
            await session.execute(gql("{ message { text } }"))
    assert isinstance(widened.value.__cause__, ConnectionClosed) and widened.value.__cause__.rcvd.code == 4403
