"""The outbox dispatcher: delivers `system.events` after commit — webhooks as signed POSTs, async hooks
as calls — at least once, retried with exponential backoff and jitter, then `dead` until redelivered.

Every server process runs one. An event is claimed with `FOR UPDATE SKIP LOCKED` and a lease
(`locked_until`): two processes never deliver it at the same time, and if the one holding it dies the
lease runs out and another delivers it again (receivers deduplicate by the event's `id`). Every attempt
is logged in `system.deliveries` (status code, latency, error). The dispatcher sleeps until a NOTIFY
says events were written, or until the next retry is due.

Webhook signatures follow Stripe's scheme: `BackSaas-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of
"<t>.<body>" with the secret>`, the secret read from the environment variable the schema names.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import orjson
import sqlalchemy as sa
import structlog

from engine import catalog
from engine.authz import Caller
from engine.channels import OUTBOX_CHANNEL
from engine.database import Database, driver_url
from engine.errors import BackSaasError
from engine.hooks import Change, HookContext, call, resolve

SIGNATURE_HEADER = "BackSaas-Signature"
log = structlog.get_logger("backsaas.outbox")


def sign(secret: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify_signature(secret: str, header: str, body: bytes, tolerance: int = 300) -> bool:
    """What a receiver does (and the tests do): check the HMAC and that the timestamp is recent."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    expected = sign(secret, timestamp, body).split("v1=", 1)[1]
    return abs(time.time() - timestamp) <= tolerance and hmac.compare_digest(expected, parts.get("v1", ""))


@dataclass(frozen=True)
class Event:
    id: str
    tenant_id: str
    slug: str
    entity: str
    action: str
    kind: str
    target: str
    secret_name: str | None
    payload: Mapping[str, Any]
    caller: Mapping[str, Any]
    attempts: int

    def body(self) -> bytes:
        return orjson.dumps({"id": self.id, **self.payload})


@dataclass(frozen=True)
class Outcome:
    ok: bool
    status_code: int | None = None
    error: str | None = None


class Dispatcher:
    def __init__(self, db: Database, registry: Any, *, max_attempts: int = 8, base_delay: float = 2.0,
                 max_delay: float = 600.0, batch: int = 20, lease: float = 60.0, timeout: float = 10.0) -> None:
        self.db, self.registry = db, registry
        self.max_attempts, self.base_delay, self.max_delay = max_attempts, base_delay, max_delay
        self.batch, self.lease, self.timeout = batch, lease, timeout
        self.wake = asyncio.Event()
        self.client = httpx.AsyncClient(timeout=timeout)

    async def run(self) -> None:
        """Deliver until cancelled; a lost database connection is retried, never fatal."""
        listener: asyncpg.Connection | None = None
        try:
            while True:
                if listener is None or listener.is_closed():
                    listener = await self.listen()
                try:
                    claimed = await self.claim()
                except (OSError, asyncpg.PostgresError, BackSaasError) as exc:
                    log.warning("outbox.claim_failed", error=str(exc))
                    claimed = []
                if claimed:
                    results = await asyncio.gather(*(self.deliver(e) for e in claimed), return_exceptions=True)
                    for failure in (r for r in results if isinstance(r, Exception)):
                        # its lease runs out and it is delivered again; the dispatcher carries on
                        log.error("outbox.record_failed", error=f"{type(failure).__name__}: {failure}")
                    continue
                self.wake.clear()
                try:
                    await asyncio.wait_for(self.wake.wait(), await self.idle_time())
                except TimeoutError:
                    pass
        finally:
            await self.client.aclose()
            if listener is not None and not listener.is_closed():
                await listener.close()

    async def listen(self) -> asyncpg.Connection | None:
        try:
            listener = await asyncpg.connect(driver_url(self.db.url))
            await listener.add_listener(OUTBOX_CHANNEL, lambda *_: self.wake.set())
            return listener
        except (OSError, asyncpg.PostgresError) as exc:
            log.warning("outbox.listen_failed", error=str(exc))
            return None

    async def idle_time(self) -> float:
        """Seconds until the next event is due (at most 5: a missed NOTIFY is caught by the next look)."""
        events = catalog.platform_tables()["events"]
        try:
            async with self.db.engine.connect() as conn:
                due = await conn.scalar(sa.select(sa.func.min(sa.func.coalesce(
                    sa.case((events.c.status == "delivering", events.c.locked_until), else_=events.c.next_attempt_at),
                    events.c.next_attempt_at))).where(events.c.status.in_(("pending", "delivering"))))
        except (OSError, asyncpg.PostgresError, sa.exc.SQLAlchemyError):
            return 5.0
        if due is None:
            return 5.0
        return min(5.0, max(0.05, (due - datetime.now(UTC)).total_seconds()))

    async def claim(self) -> list[Event]:
        events = catalog.platform_tables()["events"]
        tenants = catalog.platform_tables()["tenants"]
        now = sa.func.now()
        due = (sa.select(events.c.id).where(sa.or_(
            sa.and_(events.c.status == "pending", events.c.next_attempt_at <= now),
            sa.and_(events.c.status == "delivering", events.c.locked_until <= now)))
            .order_by(events.c.next_attempt_at).limit(self.batch).with_for_update(skip_locked=True))
        claim = (events.update().where(events.c.id.in_(due.scalar_subquery()))
                 .values(status="delivering", attempts=events.c.attempts + 1,
                         locked_until=now + timedelta(seconds=self.lease))
                 .returning(events.c.id, events.c.tenant_id, events.c.entity, events.c.action, events.c.kind,
                            events.c.target, events.c.secret_name, events.c.payload, events.c.caller,
                            events.c.attempts,
                            sa.select(tenants.c.slug).where(tenants.c.id == events.c.tenant_id)
                            .scalar_subquery().label("slug")))
        async with self.db.begin() as conn:
            rows = (await conn.execute(claim)).all()
        return [Event(str(r.id), str(r.tenant_id), r.slug, r.entity, r.action, r.kind, r.target, r.secret_name,
                      r.payload, r.caller or {}, r.attempts) for r in rows]

    async def deliver(self, event: Event) -> None:
        started = time.perf_counter()
        try:
            outcome = await (self.post(event) if event.kind == "webhook" else self.run_hook(event))
        except Exception as exc:  # any failure of one delivery is that delivery's outcome, logged with it
            outcome = Outcome(False, error=f"{type(exc).__name__}: {exc}")
        latency = round((time.perf_counter() - started) * 1000, 2)
        await self.record(event, outcome, latency)

    async def post(self, event: Event) -> Outcome:
        body = event.body()
        headers = {"Content-Type": "application/json", "BackSaas-Event-Id": event.id}
        if event.secret_name:
            secret = os.environ.get(event.secret_name)
            if not secret:
                return Outcome(False, error=f"the signing secret {event.secret_name} is not set on this server")
            headers[SIGNATURE_HEADER] = sign(secret, int(time.time()), body)
        try:
            response = await self.client.post(event.target, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return Outcome(False, error=f"{type(exc).__name__}: {exc}")
        ok = 200 <= response.status_code < 300
        return Outcome(ok, response.status_code, None if ok else f"HTTP {response.status_code}")

    async def run_hook(self, event: Event) -> Outcome:
        """An async after_* hook, in a transaction of its own, as the caller of the original write."""
        from engine.data import DataApi

        fn = resolve(event.target)
        if fn is None:
            return Outcome(False, error=f"no hook '{event.target}' is installed on this server")
        runtime = await self.registry.get(event.slug)
        caller = Caller(tuple(event.caller.get("roles") or ("service",)), event.caller.get("user_id"))
        async with self.db.as_role(runtime.role) as conn, conn.transaction():
            context = HookContext(event.slug, caller, f"after_{event.action}", DataApi(runtime, self.db, caller, conn),
                                  log.bind(tenant=event.slug, hook=event.target))
            payload = event.payload
            await call(fn, event.target, self.timeout, context,
                       Change(event.entity, event.action, payload.get("record"), payload.get("old_record")))
        return Outcome(True)

    def backoff(self, attempts: int) -> float:
        return min(self.max_delay, self.base_delay * 2 ** (attempts - 1)) * random.uniform(0.5, 1.5)

    async def record(self, event: Event, outcome: Outcome, latency: float) -> None:
        events = catalog.platform_tables()["events"]
        deliveries = catalog.platform_tables()["deliveries"]
        if outcome.ok:
            values: dict[str, Any] = {"status": "delivered", "delivered_at": sa.func.now(), "last_error": None}
        elif event.attempts >= self.max_attempts:
            values = {"status": "dead", "last_error": outcome.error}
        else:
            values = {"status": "pending", "last_error": outcome.error,
                      "next_attempt_at": sa.func.now() + timedelta(seconds=self.backoff(event.attempts))}
        async with self.db.begin() as conn:
            await conn.execute(deliveries.insert().values(
                event_id=event.id, tenant_id=event.tenant_id, attempt=event.attempts, succeeded=outcome.ok,
                status_code=outcome.status_code, latency_ms=latency, error=outcome.error))
            await conn.execute(events.update().where(events.c.id == event.id, events.c.status == "delivering")
                               .values(locked_until=None, **values))
        log.info("outbox.delivered" if outcome.ok else "outbox.failed", event_id=event.id, tenant=event.slug,
                 attempt=event.attempts, status=values["status"], error=outcome.error)


async def list_events(db: Database, tenant_id: str, status: str | None, limit: int = 100) -> list[dict[str, Any]]:
    """A tenant's outbox events, newest first, with their last error (for its admins)."""
    events = catalog.platform_tables()["events"]
    query = (sa.select(events.c.id, events.c.entity, events.c.action, events.c.kind, events.c.target, events.c.status,
                       events.c.attempts, events.c.last_error, events.c.next_attempt_at, events.c.delivered_at,
                       events.c.created_at)
             .where(events.c.tenant_id == tenant_id).order_by(events.c.created_at.desc()).limit(limit))
    if status is not None:
        query = query.where(events.c.status == status)
    async with db.engine.connect() as conn:
        return [dict(r._mapping) for r in await conn.execute(query)]


async def event_deliveries(db: Database, tenant_id: str, event_id: str) -> list[dict[str, Any]] | None:
    """The delivery log of one of the tenant's events (None when it has no such event)."""
    events = catalog.platform_tables()["events"]
    deliveries = catalog.platform_tables()["deliveries"]
    async with db.engine.connect() as conn:
        found = await conn.scalar(sa.select(events.c.id).where(events.c.id == event_id, events.c.tenant_id == tenant_id))
        if found is None:
            return None
        rows = await conn.execute(sa.select(deliveries.c.attempt, deliveries.c.succeeded, deliveries.c.status_code,
                                            deliveries.c.latency_ms, deliveries.c.error, deliveries.c.created_at)
                                  .where(deliveries.c.event_id == event_id).order_by(deliveries.c.attempt))
        return [dict(r._mapping) for r in rows]


async def redeliver(db: Database, slug: str, event_id: str) -> bool:
    """Put a dead (or delivered) event of tenant `slug` back in the queue; False when it has none such."""
    events = catalog.platform_tables()["events"]
    tenants = catalog.platform_tables()["tenants"]
    async with db.begin() as conn:
        result = await conn.execute(
            events.update().where(events.c.id == event_id, events.c.status.in_(("dead", "delivered")),
                                  events.c.tenant_id == sa.select(tenants.c.id).where(tenants.c.slug == slug)
                                  .scalar_subquery())
            .values(status="pending", next_attempt_at=sa.func.now(), last_error=None))
    return result.rowcount == 1
