"""Each tenant's share of a gateway process: at most its plan's `concurrent_requests` in progress at once.

Why: one process serves every tenant on one event loop and one pool of database connections. Rate windows
bound how many requests a tenant makes per minute, not how many it keeps in progress: a tenant with many
connections, or with requests that each hold the loop or a connection longer, takes as large a share of
the process as it can send, and every other tenant's requests queue behind its own. A tenant at its bound
waits for one of its own requests to finish (first come, first served), so that it, not its neighbours,
absorbs its excess; one that waits longer than `BACKSAAS_TENANT_QUEUE_SECONDS` (default 10) is answered
429 `too_many_concurrent_requests`. A slot covers the request's work up to its response, not the streaming
of a response's body (an SSE stream or an export keeps no slot). The bound is per process: with
`--workers N` a tenant may have N times as many requests in progress.
"""

from __future__ import annotations

import asyncio
import os
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from engine.errors import InvalidInput, Problem, TooManyConcurrentRequests

QUEUE_SECONDS_VARIABLE = "BACKSAAS_TENANT_QUEUE_SECONDS"
DEFAULT_QUEUE_SECONDS = 10.0


def queue_seconds_from_env() -> float:
    """How long a request may wait for its tenant's turn (400 `invalid_input` for what is no positive number:
    `backsaas serve` checks it before starting)."""
    text = os.environ.get(QUEUE_SECONDS_VARIABLE, "").strip()
    if not text:
        return DEFAULT_QUEUE_SECONDS
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds < float("inf"):
        raise InvalidInput(f"{QUEUE_SECONDS_VARIABLE} is a positive number of seconds",
                           details=[Problem(QUEUE_SECONDS_VARIABLE, f"{text!r} is not a positive number")])
    return seconds


class _Gate:
    __slots__ = ("active", "waiting")

    def __init__(self) -> None:
        self.active = 0
        self.waiting: deque[asyncio.Future[None]] = deque()


class TenantGates:
    """The requests in progress per tenant in this process, and those waiting for a slot, in arrival order.
    A tenant's entry exists only while it has a request in progress (so idle tenants cost nothing)."""

    def __init__(self, queue_seconds: float | None = None) -> None:
        self.queue_seconds = queue_seconds if queue_seconds is not None else queue_seconds_from_env()
        self._gates: dict[str, _Gate] = {}

    def in_progress(self, tenant_id: str) -> int:
        gate = self._gates.get(tenant_id)
        return gate.active if gate is not None else 0

    @asynccontextmanager
    async def slot(self, tenant_id: str, bound: int | None) -> AsyncIterator[None]:
        """Hold one of the tenant's `bound` slots for the block (`bound` None: no bound)."""
        if bound is None:
            yield
            return
        gate = self._gates.get(tenant_id)
        if gate is None:
            gate = self._gates[tenant_id] = _Gate()
        if gate.active < bound and not gate.waiting:
            gate.active += 1
        else:
            await self._wait(tenant_id, gate, bound)
        try:
            yield
        finally:
            self._release(tenant_id, gate)

    async def _wait(self, tenant_id: str, gate: _Gate, bound: int) -> None:
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        gate.waiting.append(turn)
        try:
            async with asyncio.timeout(self.queue_seconds):
                await turn  # `_release` hands its slot over: `active` already counts this request
        except BaseException as stopped:  # the wait's end or the request's cancellation
            if turn.done() and not turn.cancelled():
                self._release(tenant_id, gate)  # the slot came as we gave up: pass it on
            else:
                gate.waiting.remove(turn)
                turn.cancel()
            if isinstance(stopped, TimeoutError):
                raise TooManyConcurrentRequests(
                    f"this tenant already has {bound} requests in progress (its plan's concurrent_requests) and "
                    f"this one waited {self.queue_seconds:g} s for its turn", retry_after=1) from None
            raise

    def _release(self, tenant_id: str, gate: _Gate) -> None:
        while gate.waiting:
            turn = gate.waiting.popleft()
            if not turn.done():
                turn.set_result(None)
                return
        gate.active -= 1
        if gate.active == 0 and self._gates.get(tenant_id) is gate:
            del self._gates[tenant_id]
