"""Open streams (SSE, GraphQL subscriptions): what ends them, and how many a tenant may hold.

A request is authorized once, but a stream lasts: it is only as good as the credential that opened it. A
`StreamGuard` watches, on the process's `ChangeHub`, what that credential depends on (the tenant's row and
keys, the session, the signing keys), wakes when any of it changes on any process (PostgreSQL NOTIFY),
checks the credential again (`recheck`, given by whoever authenticated it), and reports why the stream
must end: a revoked or expired key, an ended session, a suspended or deleted tenant, an expired access
token (a timer, no NOTIFY needed). While the LISTEN connection is down it rechecks every
`RECHECK_SECONDS` instead. It never decides who may stream: it only asks the authenticator again.

`OpenStreams` counts a tenant's open streams in this process against its plan (`limits.realtime`), and a
socket's subscriptions are capped by the same plan; refusals are 429s with their own codes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from engine.changes import ChangeHub
from engine.errors import BackSaasError, Unauthorized

RECHECK_SECONDS = 30.0
DEFAULT_STREAM_LIMITS = {"max_connections": 1000, "max_subscriptions": 100}  # `limits.realtime` overrides them


class TooManyStreams(BackSaasError):
    code = "too_many_streams"
    status = 429


class TooManySubscriptions(BackSaasError):
    code = "too_many_subscriptions"
    status = 429


def stream_limits(limits: Mapping[str, Any]) -> dict[str, int]:
    """The plan's caps on open streams per tenant (`max_connections`, each SSE stream or socket counts one)
    and subscriptions per socket (`max_subscriptions`)."""
    given = limits.get("realtime")
    chosen = {**DEFAULT_STREAM_LIMITS, **(given if isinstance(given, dict) else {})}
    return {name: int(chosen[name]) for name in DEFAULT_STREAM_LIMITS}


class StreamGuard:
    """Ends a stream when its credential ends. It starts watching when it is made: make it before the last
    check of the credential, so that nothing that happens after that check goes unheard.

    `keys` wake it for the credential (the tenant's row and keys, the signing keys), `session_keys` for
    the session too; `recheck(session)` checks the credential again, and the session (a query) only when
    `session` is true: a change to the tenant's keys does not cost every signed-in stream a query."""

    def __init__(self, hub: ChangeHub, keys: Iterable[str], session_keys: Iterable[str], expires_at: float | None,
                 recheck: Callable[[bool], Awaitable[None]]) -> None:
        self.hub, self.expires_at, self.recheck = hub, expires_at, recheck
        self.keys, self.session_keys = frozenset(keys), frozenset(session_keys)
        self.woken, self.session_woken = asyncio.Event(), asyncio.Event()
        hub.add(self.keys, self.woken)
        hub.add(self.session_keys, self.session_woken)

    def close(self) -> None:
        self.hub.discard(self.keys, self.woken)
        self.hub.discard(self.session_keys, self.session_woken)

    async def ended(self) -> BackSaasError:
        """Wait until the stream must end; the error says why (401: the credential; 403: the tenant)."""
        while True:
            wait = None if self.hub.listening else RECHECK_SECONDS
            if self.expires_at is not None:
                left = self.expires_at - time.time()
                if left <= 0:
                    return Unauthorized("token_expired", "the access token has expired; refresh the session")
                wait = left if wait is None else min(wait, left)
            waiters = [asyncio.ensure_future(self.woken.wait()), asyncio.ensure_future(self.session_woken.wait())]
            try:
                done, _ = await asyncio.wait(waiters, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()
            session = self.session_woken.is_set() or not done or not self.hub.listening  # heard, or maybe missed
            self.woken.clear()
            self.session_woken.clear()
            try:
                await self.recheck(session)
            except BackSaasError as error:
                if error.status == 503:  # the database is away: no verdict on the credentials; look again later
                    continue
                return error


class OpenStreams:
    """How many streams each tenant has open in this process, held against the plan's cap."""

    def __init__(self) -> None:
        self.open: dict[str, int] = {}

    def take(self, tenant_id: str, limits: Mapping[str, Any]) -> Slot:
        """A slot for one more stream of the tenant, or `TooManyStreams`; release it when the stream ends."""
        cap = stream_limits(limits)["max_connections"]
        held = self.open.get(tenant_id, 0)
        if held >= cap:
            raise TooManyStreams(f"the tenant already has {held} open streams, its plan's limit",
                                 hint="close a stream (SSE or WebSocket) or raise the plan's limits.realtime.max_connections")
        self.open[tenant_id] = held + 1
        return Slot(self, tenant_id)


class Slot:
    """One open stream of a tenant; `release` is idempotent."""

    def __init__(self, streams: OpenStreams, tenant_id: str) -> None:
        self.streams, self.tenant_id, self.held = streams, tenant_id, True

    def release(self) -> None:
        if self.held:
            self.held = False
            left = self.streams.open[self.tenant_id] - 1
            if left:
                self.streams.open[self.tenant_id] = left
            else:
                del self.streams.open[self.tenant_id]
