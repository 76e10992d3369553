"""Server-Sent Events at the edge: `GET {tenant}/rest/v1/{entity}` with `Accept: text/event-stream`.

The engine (`engine.realtime`) makes the stream; this module holds what the stream owes the tenant and
its credentials while it is open: a slot among the tenant's open streams (429 `too_many_streams` beyond
its plan's cap) and a `StreamGuard` that ends the stream when its key, session, token or tenant ends. Both
are released when the response ends, however it ends (even before its first byte).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from engine import realtime
from engine.runtime import RuntimeRegistry, TenantRuntime
from engine.streams import Slot, StreamGuard
from gateway.auth import stream_guard


class EventStreamResponse(StreamingResponse):
    """A streaming response that gives back its slot and its guard when it ends."""

    def __init__(self, events: AsyncIterator[bytes], slot: Slot, guard: StreamGuard) -> None:
        super().__init__(events, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.slot, self.guard = slot, guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.slot.release()
            self.guard.close()


async def event_stream(request: Request, runtime: TenantRuntime, entity: str) -> EventStreamResponse:
    """The entity's change stream for the request's caller (a 4xx before the first byte when it cannot be)."""
    registry: RuntimeRegistry = request.app.state.registry
    headers, caller = request.scope["backsaas.headers"], request.scope["backsaas.caller"]
    slot = registry.streams.take(runtime.tenant_id, request.scope["backsaas.limits"])  # a tenant at its cap: no query
    guard = None
    try:
        guard = await stream_guard(registry, runtime, headers, caller,
                                   tenant_from_header=request.scope.get("backsaas.tenant_header", False))
        events = await realtime.stream(runtime, request.app.state.db, caller, registry.changes, entity,
                                       request.scope["query_string"], headers.get("last-event-id"), guard)
    except BaseException:
        slot.release()
        if guard is not None:
            guard.close()
        raise
    return EventStreamResponse(events, slot, guard)
