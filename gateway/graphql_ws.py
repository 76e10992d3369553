"""GraphQL over WebSocket, in the `graphql-transport-ws` protocol (the one `graphql-ws`,
Apollo and `gql` speak), at a tenant's `/graphql/v1`.

`connection_init` carries the credentials (`{"headers": {"Authorization": ...}}`, or `Authorization` /
`apikey` at the top of the payload; the upgrade request's own headers count too); they are checked as
any request's are (4403 when they fail). They are held to for the socket's life: the socket closes with
4401 when its key is revoked or expires, its session ends or its access token expires, and with 4403
when its tenant is suspended or deleted (`gateway.auth.stream_guard`, woken by NOTIFY on every process).
A socket counts against its tenant's open streams (4429 beyond the plan's cap, `limits.realtime`), and
its subscriptions are capped by the same plan (an `error` message `too_many_subscriptions`). Each `subscribe` compiles
like the query it mirrors, sends the current result, then a fresh one after each committed change to
a table it reads (PostgreSQL NOTIFY, so changes made by any server process count), when the result
differs. The subscriber's own permissions apply to every result, as they apply to their queries.

A `subscribe` whose operation is a query or a mutation gets one result (`next`, then `complete`), run
through the gateway's `Operation`: the same rate windows, quotas, fairness slot and meter as an HTTP
request, so that a socket is no way around the plan.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any

import orjson
import structlog
from starlette.websockets import WebSocket, WebSocketDisconnect

from engine.authz import Caller
from engine.database import Database
from engine.errors import BackSaasError
from engine.graphql.api import GraphQLApi, Subscription, problem
from engine.graphql.compiler import STREAM_CURSOR, STREAM_CURSOR_KEY, GraphQLError, StreamRequest
from engine.runtime import RuntimeRegistry, TenantRuntime
from engine.streams import StreamGuard, TooManyStreams, TooManySubscriptions, stream_limits
from gateway.auth import acting_as, authenticate, stream_guard
from gateway.bodies import MAX_BODY_VALUES, BodyShape

PROTOCOL = "graphql-transport-ws"
INIT_TIMEOUT = 10.0
MAX_REASON = 123  # bytes: what a WebSocket close frame can carry
log = structlog.get_logger("backsaas.graphql_ws")
# What runs one query or mutation of a socket as the gateway runs an HTTP request (gateway/app.py): its rate
# windows, its quotas, its share of the tenant's slots, the meter; it yields the caller the operation acts as
Operation = Callable[[Caller], AbstractAsyncContextManager[Caller]]


def close_reason(error: BackSaasError) -> str:
    """`code: message`, cut to what a close frame carries (the code always fits)."""
    return f"{error.code}: {error.message}".encode()[:MAX_REASON].decode("utf-8", "ignore")


class Connection:
    def __init__(self, websocket: WebSocket, registry: RuntimeRegistry, runtime: TenantRuntime,
                 limits: Mapping[str, Any], db: Database, headers: dict[str, str], tenant_from_header: bool,
                 operation: Operation) -> None:
        self.websocket, self.registry, self.runtime, self.limits, self.db = websocket, registry, runtime, limits, db
        self.operation = operation
        self.headers, self.tenant_from_header = headers, tenant_from_header
        self.caller: Caller | None = None
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.sending = asyncio.Lock()
        self.guard: StreamGuard | None = None
        self.watchdog: asyncio.Task[None] | None = None

    async def send(self, message: dict[str, Any]) -> None:
        async with self.sending:
            await self.websocket.send_text(orjson.dumps(message).decode())

    async def serve(self) -> None:
        if PROTOCOL not in self.websocket.scope.get("subprotocols", []):
            await self.websocket.close(4406, "Subprotocol not acceptable")
            return
        await self.websocket.accept(subprotocol=PROTOCOL)
        try:
            slot = self.registry.streams.take(self.runtime.tenant_id, self.limits)
        except TooManyStreams as error:
            await self.websocket.close(4429, close_reason(error))
            return
        try:
            try:
                first = await asyncio.wait_for(self.receive(), INIT_TIMEOUT)
            except TimeoutError:
                await self.websocket.close(4408, "Connection initialisation timeout")
                return
            if first is None:
                return
            if first.get("type") != "connection_init":
                await self.websocket.close(4401, "Unauthorized")
                return
            if not await self.initialise(first.get("payload")):
                return
            while (message := await self.receive()) is not None:
                await self.dispatch(message)
        except WebSocketDisconnect:
            pass
        finally:
            slot.release()
            self.stop()

    def stop(self) -> None:
        """Stop every subscription and stop watching the credentials."""
        for task in self.tasks.values():
            task.cancel()
        self.tasks.clear()
        if self.watchdog is not None:
            self.watchdog.cancel()
        if self.guard is not None:
            self.guard.close()

    async def receive(self) -> dict[str, Any] | None:
        """The next message, a JSON object in a text frame, bounded as a request's body is (its values and
        its depth, gateway/bodies.py); anything else closes the socket with 4400, as the protocol says."""
        frame = await self.websocket.receive()
        if frame["type"] == "websocket.disconnect":
            return None
        text = frame.get("text")
        if text is None:
            await self.websocket.close(4400, "Invalid message: graphql-transport-ws messages are text frames")
            return None
        try:
            BodyShape(MAX_BODY_VALUES).feed(text.encode())
            message = orjson.loads(text)
        except BackSaasError as error:
            await self.websocket.close(4400, close_reason(error))
            return None
        except orjson.JSONDecodeError:
            message = None
        if not isinstance(message, dict):
            await self.websocket.close(4400, "Invalid message")
            return None
        return message

    async def initialise(self, payload: Any) -> bool:
        payload = payload if isinstance(payload, dict) else {}
        given = payload.get("headers") if isinstance(payload.get("headers"), dict) else payload
        headers = {**self.headers, **{str(k).lower(): str(v) for k, v in given.items() if isinstance(v, str)}}
        try:
            self.caller = acting_as(await authenticate(self.registry, self.runtime, headers,
                                                       tenant_from_header=self.tenant_from_header), headers, self.runtime)
            self.guard = await stream_guard(self.registry, self.runtime, headers, self.caller,
                                            tenant_from_header=self.tenant_from_header, hasura=True)
        except BackSaasError as error:
            await self.websocket.close(4403, f"Forbidden: {error.code}")
            return False
        self.watchdog = asyncio.create_task(self.close_when_ended(self.guard))
        await self.send({"type": "connection_ack"})
        return True

    async def close_when_ended(self, guard: StreamGuard) -> None:
        """Close the socket once its credentials end: 4401 for the caller's own (key, session, token),
        4403 for the tenant's (suspended, deleted)."""
        try:
            error = await guard.ended()
            code, reason = 4401 if error.status == 401 else 4403, close_reason(error)
        except Exception:  # the credentials could not be checked again: the socket closes rather than outlive them
            log.exception("graphql_ws.recheck_failed", tenant=self.runtime.slug)
            code, reason = 1011, "the credentials could not be checked again"
        for task in self.tasks.values():
            task.cancel()
        async with self.sending:  # never in the middle of a result
            with contextlib.suppress(RuntimeError):  # the peer went away first
                await self.websocket.close(code, reason)

    async def dispatch(self, message: dict[str, Any]) -> None:
        kind, ident = message.get("type"), message.get("id")
        if kind == "ping":
            await self.send({"type": "pong"})
        elif kind == "pong":
            return
        elif kind == "connection_init":
            await self.websocket.close(4429, "Too many initialisation requests")
        elif kind == "subscribe" and isinstance(ident, str):
            if ident in self.tasks:
                await self.websocket.close(4409, f"Subscriber for {ident} already exists")
                return
            cap = stream_limits(self.limits)["max_subscriptions"]
            if len(self.tasks) >= cap:
                error = TooManySubscriptions(f"this socket already runs {cap} subscriptions, its plan's limit")
                await self.send({"id": ident, "type": "error", "payload": [problem(error.code, error.message)]})
                return
            payload = message.get("payload")
            if not isinstance(payload, dict):
                await self.websocket.close(4400, "Invalid message: subscribe's payload is an object")
                return
            self.tasks[ident] = asyncio.create_task(self.run(ident, payload))
        elif kind == "complete" and isinstance(ident, str):
            task = self.tasks.pop(ident, None)
            if task is not None:
                task.cancel()
        else:
            await self.websocket.close(4400, f"Invalid message type {kind!r}")

    async def run(self, ident: str, payload: dict[str, Any]) -> None:
        assert self.caller is not None
        api = GraphQLApi(self.runtime, self.db, self.caller, self.limits)
        try:
            query, variables = payload.get("query"), payload.get("variables") or {}
            if not isinstance(query, str) or not isinstance(variables, dict):
                raise GraphQLError("validation-failed", "subscribe needs a `query` string and `variables` object")
            name = payload.get("operationName")
            if api.is_subscription(query, name):
                await self.stream(ident, api, api.subscription(query, name, variables))
                return
            async with self.operation(self.caller) as caller:  # a query or a mutation: one result
                answer = await GraphQLApi(self.runtime, self.db, caller, self.limits).answer(query, name, variables)
            result = orjson.loads(answer.body)
            if "data" not in result:  # refused before it ran (the protocol's `error`)
                await self.send({"id": ident, "type": "error", "payload": result["errors"]})
            else:  # as written by the database (a decimal's digits are not a float's)
                await self.send({"id": ident, "type": "next", "payload": orjson.Fragment(answer.body)})
                await self.send({"id": ident, "type": "complete"})
            self.tasks.pop(ident, None)
        except (GraphQLError, BackSaasError) as error:
            await self.send({"id": ident, "type": "error", "payload": [problem(error.code, error.message)]})
            self.tasks.pop(ident, None)
        except Exception:  # never a subscription that ends without a word: the client hears, the log says why
            log.exception("graphql_ws.operation_failed", tenant=self.runtime.slug, id=ident)
            await self.send({"id": ident, "type": "error",
                             "payload": [problem("unexpected", "the server failed to answer this operation")]})
            self.tasks.pop(ident, None)

    async def stream(self, ident: str, api: GraphQLApi, subscription: Subscription) -> None:
        """The current result, then a new one after each change that alters it; for a streaming subscription
        (`{entity}_stream`), each batch of rows past the cursor, then the next as they come."""
        if subscription.stream is not None:
            await self.batches(ident, api, subscription, *subscription.stream)
            return
        last = None
        async with self.registry.changes.watching(api.runtime.role, subscription.tables) as changed:
            while True:
                changed.clear()
                data = await api.execute(subscription.compiled, subscription.variables)
                if data != last:  # as written by the database (a decimal's digits are not a float's)
                    await self.send({"id": ident, "type": "next", "payload": {"data": orjson.Fragment(data)}})
                    last = data
                await changed.wait()

    async def batches(self, ident: str, api: GraphQLApi, subscription: Subscription, key: str,
                      stream: StreamRequest) -> None:
        """Hasura's streaming subscription: the rows past the cursor, `batch_size` at a time, the cursor moved
        to the last row sent; once a batch comes back short, the next waits for a change of the tables."""
        cursor = stream.initial
        async with self.registry.changes.watching(api.runtime.role, subscription.tables) as changed:
            while True:
                changed.clear()
                data = await api.execute(subscription.compiled, {**subscription.variables, STREAM_CURSOR: cursor})
                rows = json.loads(data, parse_float=orjson.Fragment)[key]  # numbers sent as the database wrote them
                if rows:
                    cursor = rows[-1][STREAM_CURSOR_KEY]  # its text, exact whatever the column's type
                    for row in rows:
                        del row[STREAM_CURSOR_KEY]
                    await self.send({"id": ident, "type": "next", "payload": {"data": {key: rows}}})
                if len(rows) < stream.batch_size:
                    await changed.wait()


async def serve_graphql_ws(websocket: WebSocket, registry: RuntimeRegistry, runtime: TenantRuntime,
                           limits: Mapping[str, Any], db: Database, headers: dict[str, str],
                           tenant_from_header: bool, operation: Operation) -> None:
    connection = Connection(websocket, registry, runtime, limits, db, headers, tenant_from_header, operation)
    with contextlib.suppress(RuntimeError):  # the peer went away while we closed
        await connection.serve()
