"""GraphQL subscriptions over WebSocket, in the `graphql-transport-ws` protocol (the one `graphql-ws`,
Apollo and `gql` speak), at a tenant's `/graphql/v1`.

`connection_init` carries the credentials (`{"headers": {"Authorization": ...}}`, or `Authorization` /
`apikey` at the top of the payload; the upgrade request's own headers count too); they are checked as
any request's are, and an access token's expiry closes the socket with 4401. Each `subscribe` compiles
like the query it mirrors, sends the current result, then a fresh one after each committed change to
a table it reads (PostgreSQL NOTIFY, so changes made by any server process count), when the result
differs. The subscriber's own permissions apply to every result, as they apply to their queries.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from typing import Any

import orjson
import structlog
from starlette.websockets import WebSocket, WebSocketDisconnect

from engine.authz import Caller
from engine.database import Database
from engine.errors import BackSaasError
from engine.graphql.api import GraphQLApi, Subscription, problem
from engine.graphql.compiler import GraphQLError
from engine.runtime import RuntimeRegistry, TenantRuntime
from gateway.auth import authenticate, bearer_of

PROTOCOL = "graphql-transport-ws"
INIT_TIMEOUT = 10.0
log = structlog.get_logger("backsaas.graphql_ws")


class Connection:
    def __init__(self, websocket: WebSocket, registry: RuntimeRegistry, runtime: TenantRuntime,
                 limits: Mapping[str, Any], db: Database, headers: dict[str, str], tenant_from_header: bool) -> None:
        self.websocket, self.registry, self.runtime, self.limits, self.db = websocket, registry, runtime, limits, db
        self.headers, self.tenant_from_header = headers, tenant_from_header
        self.caller: Caller | None = None
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.sending = asyncio.Lock()
        self.expiry: asyncio.Task[None] | None = None

    async def send(self, message: dict[str, Any]) -> None:
        async with self.sending:
            await self.websocket.send_text(orjson.dumps(message).decode())

    async def serve(self) -> None:
        if PROTOCOL not in self.websocket.scope.get("subprotocols", []):
            await self.websocket.close(4406, "Subprotocol not acceptable")
            return
        await self.websocket.accept(subprotocol=PROTOCOL)
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
            for task in self.tasks.values():
                task.cancel()
            if self.expiry is not None:
                self.expiry.cancel()

    async def receive(self) -> dict[str, Any] | None:
        try:
            text = await self.websocket.receive_text()
        except WebSocketDisconnect:
            return None
        try:
            message = orjson.loads(text)
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
            self.caller = await authenticate(self.registry, self.runtime, headers,
                                             tenant_from_header=self.tenant_from_header)
        except BackSaasError as error:
            await self.websocket.close(4403, f"Forbidden: {error.code}")
            return False
        token = bearer_of(headers)
        if self.caller.session_id is not None and token:
            expires = (await self.registry.keyring()).verify(token)["exp"]
            self.expiry = asyncio.create_task(self.close_at(expires))
        await self.send({"type": "connection_ack"})
        return True

    async def close_at(self, expires: float) -> None:
        await asyncio.sleep(max(0.0, expires - time.time()))
        await self.websocket.close(4401, "Unauthorized: the access token has expired")

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
            self.tasks[ident] = asyncio.create_task(self.run(ident, message.get("payload") or {}))
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
            subscription = api.subscription(query, payload.get("operationName"), variables)
            await self.stream(ident, api, subscription)
        except GraphQLError as error:
            await self.send({"id": ident, "type": "error", "payload": [problem(error.code, error.message)]})
            self.tasks.pop(ident, None)
        except BackSaasError as error:
            await self.send({"id": ident, "type": "error", "payload": [problem(error.code, error.message)]})
            self.tasks.pop(ident, None)

    async def stream(self, ident: str, api: GraphQLApi, subscription: Subscription) -> None:
        """The current result, then a new one after each change that alters it."""
        last = None
        with self.registry.changes.watch(subscription.tables) as changed:
            while True:
                changed.clear()
                data = await api.execute(subscription.compiled, subscription.variables)
                if data != last:
                    await self.send({"id": ident, "type": "next", "payload": {"data": orjson.loads(data)}})
                    last = data
                await changed.wait()


async def serve_graphql_ws(websocket: WebSocket, registry: RuntimeRegistry, runtime: TenantRuntime,
                           limits: Mapping[str, Any], db: Database, headers: dict[str, str],
                           tenant_from_header: bool) -> None:
    connection = Connection(websocket, registry, runtime, limits, db, headers, tenant_from_header)
    with contextlib.suppress(RuntimeError):  # the peer went away while we closed
        await connection.serve()
