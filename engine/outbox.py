"""The outbox dispatcher: delivers `system.events` after commit — webhooks as signed POSTs, async hooks
as calls — at least once, retried with exponential backoff and jitter, then `dead` until redelivered.

Every server process runs one. An event is claimed with `FOR UPDATE SKIP LOCKED` and a lease
(`locked_until`): two processes never deliver it at the same time, and if the one holding it dies the
lease runs out and another delivers it again (receivers deduplicate by the event's `id`). Every attempt
is logged in `system.deliveries` (status code, latency, error). The dispatcher sleeps until a NOTIFY
says events were written, a delivery ends, or the next retry is due.

One tenant never stalls the others: deliveries run side by side (at most `concurrency` per process), and
a claim takes at most `per_tenant` events of a tenant, counting those already in flight under a live
lease on any process, so a tenant whose receiver is slow waits on its own slots only.

A webhook goes only to a public address. The `GuardedTransport` resolves the URL's host once, refuses
the request when any address is loopback, private, link-local, multicast, unspecified or otherwise not
global (unless the operator allows the host: `BACKSAAS_WEBHOOK_ALLOW_HOSTS`), and connects to the address
it checked, with the name as the Host header and TLS server name, so a second DNS answer (rebinding)
is never used. What a tenant sees of a failure is its kind ("refused: destination not allowed",
"could not connect", "HTTP 500"), never the server's internal detail (that goes to the server's log).

The lease always outlasts a delivery: the whole attempt (secret lookup, request or hook) is bounded by
`timeout`, and so is the recording of its outcome; a lease shorter than twice the timeout plus
`LEASE_SLACK` is refused (`lease_for`), so an event is delivered twice only when a process dies or its
outcome could not be recorded in time, never because a receiver was slow.

Webhook signatures follow Stripe's scheme: `BackSaas-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of
"<t>.<body>" with the secret>`, the secret being the tenant's own, stored by the platform under the
name the schema gives (`secret: NAME`, set with `set_webhook_secret`; engine/vault.py).

A tenant past its plan's `webhook_deliveries_per_month` (engine/quotas.py) gets no more deliveries: each of
its webhooks is held (pending again, its attempt not counted, `last_error` saying why) and looked at again
every `hold` seconds, so it goes out when the month turns or the plan grows, and nothing is lost.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import os
import random
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import orjson
import sqlalchemy as sa
import structlog
from sqlalchemy.dialects.postgresql import JSONB

from engine import catalog, metering, vault
from engine.authz import Caller
from engine.database import Database, driver_url
from engine.errors import BackSaasError, InvalidInput, Problem
from engine.hooks import Change, HookContext, call, resolve
from engine.plans import limit_of
from engine.storage.deploy import OUTBOX_CHANNEL

SIGNATURE_HEADER = "BackSaas-Signature"
ALLOW_HOSTS_VARIABLE = "BACKSAAS_WEBHOOK_ALLOW_HOSTS"
REFUSED = "refused: destination not allowed"
log = structlog.get_logger("backsaas.outbox")

# Beyond what `ipaddress` calls not global (its list in Python 3.11 misses some): IANA's special-purpose
# blocks that are not globally reachable, multicast, and the IPv6 blocks that embed an IPv4 address,
# which is checked in their place.
NOT_GLOBAL = tuple(ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12", "192.0.0.0/24",
    "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24",
    "224.0.0.0/4", "240.0.0.0/4",
    "::/8", "64:ff9b:1::/48", "100::/64", "2001::/23", "2001:db8::/32", "3fff::/20", "5f00::/16", "fc00::/7",
    "fe80::/10", "fec0::/10", "ff00::/8"))
NAT64 = ipaddress.ip_network("64:ff9b::/96")

Resolver = Callable[[str, int], Awaitable[list[str]]]


def public_address(text: str) -> bool:
    """Whether a webhook may connect to this address: globally reachable, not multicast."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return False  # e.g. an IPv6 address with a zone: link-local
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if address in NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return public_address(str(embedded))
    return address.is_global and not address.is_multicast and not any(address in n for n in NOT_GLOBAL)


async def resolve_host(host: str, port: int) -> list[str]:
    """The addresses of `host` from the system's resolver (an IP literal is its own address)."""
    found = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in found if info[0] in (socket.AF_INET, socket.AF_INET6)))


def allowed_hosts_from_env() -> frozenset[str]:
    """The operator's exceptions to the address check (`BACKSAAS_WEBHOOK_ALLOW_HOSTS=127.0.0.1,localhost`)."""
    return frozenset(_host_key(h) for h in os.environ.get(ALLOW_HOSTS_VARIABLE, "").split(",") if h.strip())


def _host_key(host: str) -> str:
    return host.strip().strip("[]").rstrip(".").lower()


class DestinationRefused(Exception):
    """A webhook's destination is not allowed (the reason is for the server's log, not for the tenant)."""


class GuardedTransport(httpx.AsyncBaseTransport):
    """Resolves each request's host once, checks every address, and sends the request to the address it
    checked (the name stays the Host header and the TLS server name); `inner` does the sending."""

    def __init__(self, inner: httpx.AsyncBaseTransport, resolver: Resolver = resolve_host,
                 allow_hosts: Iterable[str] = ()) -> None:
        self.inner, self.resolver = inner, resolver
        self.allow_hosts = frozenset(_host_key(h) for h in allow_hosts)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme not in ("http", "https"):
            raise DestinationRefused(f"scheme {url.scheme!r}")
        host = url.raw_host.decode("ascii")
        try:
            addresses = await self.resolver(host, url.port or (443 if url.scheme == "https" else 80))
        except OSError as exc:
            raise DestinationRefused(f"{host} does not resolve: {exc}") from exc
        if not addresses:
            raise DestinationRefused(f"{host} has no address")
        if _host_key(host) not in self.allow_hosts:
            refused = [a for a in addresses if not public_address(a)]
            if refused:
                raise DestinationRefused(f"{host} resolves to {refused[0]}")
        extensions = dict(request.extensions)
        if url.scheme == "https" and not _is_literal(host):
            extensions["sni_hostname"] = host
        pinned = httpx.Request(request.method, url.copy_with(host=addresses[0]), headers=request.headers,
                               stream=request.stream, extensions=extensions)
        return await self.inner.handle_async_request(pinned)

    async def aclose(self) -> None:
        await self.inner.aclose()


def _is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


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


DEFAULT_LEASE = 60.0
DEFAULT_TIMEOUT = 10.0
# After a claim that took nothing, the next waits this long: every writing statement of every tenant
# NOTIFYs, and while a tenant's slots are all held by a slow receiver each of its writes woke a claim that
# found nothing to take (its gateway CPU showed in other tenants' latency); the NOTIFYs meanwhile are
# answered by one claim. A claim that took events is followed at once (a delivery ending wakes the next).
IDLE_CLAIM_GAP = 0.1
LEASE_SLACK = 1.0  # beyond the attempt and its recording (each at most `timeout`): the claim's own round trip
SETTINGS_VARIABLES = {"base_delay": "BACKSAAS_OUTBOX_BASE_DELAY", "max_attempts": "BACKSAAS_OUTBOX_MAX_ATTEMPTS",
                      "lease": "BACKSAAS_OUTBOX_LEASE", "timeout": "BACKSAAS_OUTBOX_TIMEOUT",
                      "hold": "BACKSAAS_OUTBOX_QUOTA_HOLD"}
QUOTA_HOLD_SECONDS = 600.0  # how long a webhook past its tenant's monthly deliveries waits before it is looked at again


class OutboxMisconfigured(InvalidInput):
    """Outbox settings that would deliver events twice by design (a lease shorter than a delivery) or that
    are not numbers: refused when the server starts, before it serves anything."""

    code = "outbox_misconfigured"


def lease_for(timeout: float, lease: float | None = None) -> float:
    """The lease of a claim: `lease` when a whole delivery fits in it (`shortest_lease`), else refused;
    unset, 60 s or, for a longer timeout, the shortest lease that fits it."""
    shortest = shortest_lease(timeout)
    if lease is None:
        return max(DEFAULT_LEASE, shortest)
    if lease < shortest:
        raise OutboxMisconfigured(
            f"the outbox lease ({lease:g} s) is shorter than a delivery: the attempt and the recording of its outcome "
            f"(each up to the delivery timeout, {timeout:g} s) and {LEASE_SLACK:g} s; a slow receiver would get "
            "events twice",
            details=[Problem(SETTINGS_VARIABLES["lease"], f"must be at least {shortest:g}")],
            hint=f"set {SETTINGS_VARIABLES['lease']} to {shortest:g} or more, or leave it unset")
    return lease


def shortest_lease(timeout: float) -> float:
    """The shortest lease a delivery fits in: its attempt and the recording of its outcome, each bounded by
    `timeout`, and `LEASE_SLACK` for the claim itself."""
    return 2 * timeout + LEASE_SLACK


def settings_from_env(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The dispatcher's settings from `BACKSAAS_OUTBOX_*` (those set), checked now: `serve` refuses to start
    with a lease that a delivery can outlast."""
    environ = os.environ if environ is None else environ
    settings: dict[str, Any] = {}
    for key, name in SETTINGS_VARIABLES.items():
        text = environ.get(name, "").strip()
        if not text:
            continue
        try:
            value = int(text) if key == "max_attempts" else float(text)
        except ValueError:
            raise OutboxMisconfigured(f"{name} must be a number, not {text!r}",
                                      details=[Problem(name, "is not a number")]) from None
        if value <= 0:
            raise OutboxMisconfigured(f"{name} must be positive", details=[Problem(name, "must be positive")])
        settings[key] = value
    lease_for(settings.get("timeout", DEFAULT_TIMEOUT), settings.get("lease"))
    return settings


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


# The claim (`Dispatcher.claim`). `waiting` walks the tenants with pending events in the partial index
# `PENDING_BY_TENANT` (one probe per tenant, however many events each holds); `lapsed` are deliveries whose
# lease ran out (their process died), due again; a tenant's free slots are `per_tenant` minus its live
# leases, and only that many of its due events are read, oldest first. The claimed rows are locked with
# SKIP LOCKED and checked again for being due: a row another process claimed since this statement's
# snapshot is rechecked by PostgreSQL once its lock is free, and skipped.
CLAIM = sa.text("""
WITH RECURSIVE waiting(tenant_id) AS (
    (SELECT tenant_id FROM system.events WHERE status = 'pending' ORDER BY tenant_id LIMIT 1)
  UNION ALL
    SELECT (SELECT e.tenant_id FROM system.events e WHERE e.status = 'pending' AND e.tenant_id > w.tenant_id
            ORDER BY e.tenant_id LIMIT 1)
    FROM waiting w WHERE w.tenant_id IS NOT NULL
), lapsed AS (
    SELECT id, tenant_id, next_attempt_at AS due_at FROM system.events
    WHERE status = 'delivering' AND locked_until <= now()
), busy AS (
    SELECT tenant_id, count(*) AS n FROM system.events
    WHERE status = 'delivering' AND locked_until > now() GROUP BY tenant_id
), slots AS (
    SELECT t.tenant_id, greatest(0, :per_tenant - coalesce(b.n, 0)) AS free
    FROM (SELECT tenant_id FROM waiting WHERE tenant_id IS NOT NULL UNION SELECT tenant_id FROM lapsed) t
    LEFT JOIN busy b USING (tenant_id)
), eligible AS (
    SELECT c.id FROM slots s CROSS JOIN LATERAL (
        SELECT due.id, due.due_at FROM (
            (SELECT e.id, e.next_attempt_at AS due_at FROM system.events e
             WHERE e.tenant_id = s.tenant_id AND e.status = 'pending' AND e.next_attempt_at <= now()
             ORDER BY e.next_attempt_at LIMIT s.free)
          UNION ALL
            SELECT l.id, l.due_at FROM lapsed l WHERE l.tenant_id = s.tenant_id
        ) due ORDER BY due.due_at LIMIT s.free
    ) c
    ORDER BY c.due_at LIMIT :limit
), locked AS (
    SELECT id FROM system.events
    WHERE id IN (SELECT id FROM eligible)
      AND ((status = 'pending' AND next_attempt_at <= now()) OR (status = 'delivering' AND locked_until <= now()))
    FOR UPDATE SKIP LOCKED
)
UPDATE system.events e SET status = 'delivering', attempts = e.attempts + 1, locked_until = now() + :lease
FROM locked WHERE e.id = locked.id
RETURNING e.id, e.tenant_id, e.entity, e.action, e.kind, e.target, e.secret_name, e.payload, e.caller, e.attempts,
          (SELECT slug FROM system.tenants t WHERE t.id = e.tenant_id) AS slug
""").columns(payload=JSONB(), caller=JSONB())


class Dispatcher:
    """`concurrency` deliveries at once in this process, at most `per_tenant` of one tenant's (across
    processes); `timeout` bounds a whole delivery, and `lease` must outlast it (`lease_for`; unset, it
    fits the timeout). `allow_hosts` defaults to the environment's list; `resolver` and `transport` are the
    network's edges (tests replace them)."""

    def __init__(self, db: Database, registry: Any, *, max_attempts: int = 8, base_delay: float = 2.0,
                 max_delay: float = 600.0, concurrency: int = 32, per_tenant: int = 4, lease: float | None = None,
                 timeout: float = DEFAULT_TIMEOUT, allow_hosts: Iterable[str] | None = None, resolver: Resolver = resolve_host,
                 transport: httpx.AsyncBaseTransport | None = None, meter: Any = None, quotas: Any = None,
                 hold: float = QUOTA_HOLD_SECONDS) -> None:
        self.db, self.registry = db, registry
        self.meter = meter  # engine.metering.Meter: webhook deliveries and async hooks' rows, per tenant
        self.quotas, self.hold = quotas, hold  # engine.quotas.QuotaBook: webhooks past the month's deliveries wait
        self.in_flight: dict[str, int] = {}  # tenant id -> its deliveries (and hooks) this process has under way
        self.max_attempts, self.base_delay, self.max_delay = max_attempts, base_delay, max_delay
        self.concurrency, self.per_tenant, self.timeout = concurrency, per_tenant, timeout
        self.lease = lease_for(timeout, lease)
        self.wake = asyncio.Event()
        self.inflight: set[asyncio.Task[None]] = set()
        # no keep-alive: a pooled TLS connection is keyed by address, and must not serve another name
        inner = transport or httpx.AsyncHTTPTransport(limits=httpx.Limits(max_keepalive_connections=0))
        guarded = GuardedTransport(inner, resolver, allowed_hosts_from_env() if allow_hosts is None else allow_hosts)
        self.client = httpx.AsyncClient(transport=guarded, timeout=timeout, follow_redirects=False, trust_env=False)

    async def run(self) -> None:
        """Deliver until cancelled; a lost database connection is retried, never fatal."""
        listener: asyncpg.Connection | None = None
        loop = asyncio.get_running_loop()
        next_claim = 0.0
        try:
            while True:
                if listener is None or listener.is_closed():
                    listener = await self.listen()
                if (pause := next_claim - loop.time()) > 0:
                    await asyncio.sleep(pause)
                self.wake.clear()  # before the claim: a delivery ending or a NOTIFY after it wakes the wait
                free = self.concurrency - len(self.inflight)
                claimed: list[Event] = []
                if free > 0:
                    try:
                        claimed = await self.claim(free)
                    except (OSError, asyncpg.PostgresError, sa.exc.SQLAlchemyError, BackSaasError) as exc:
                        log.warning("outbox.claim_failed", error=str(exc))
                next_claim = 0.0 if claimed else loop.time() + IDLE_CLAIM_GAP
                for event in claimed:
                    task = asyncio.create_task(self.deliver(event))
                    self.inflight.add(task)
                    task.add_done_callback(self.finished)
                wait = 5.0 if len(claimed) == free else await self.idle_time()
                try:
                    await asyncio.wait_for(self.wake.wait(), wait)
                except TimeoutError:
                    pass
        finally:
            for task in self.inflight:
                task.cancel()  # its lease runs out and it is delivered again
            await asyncio.gather(*self.inflight, return_exceptions=True)
            await self.client.aclose()
            if listener is not None and not listener.is_closed():
                await listener.close()

    def finished(self, task: asyncio.Task[None]) -> None:
        self.inflight.discard(task)
        self.wake.set()  # a slot is free: its tenant's next event may be claimed
        if not task.cancelled() and task.exception() is not None:
            # recording the outcome failed: its lease runs out and it is delivered again
            failure = task.exception()
            log.error("outbox.record_failed", error=f"{type(failure).__name__}: {failure}")

    async def listen(self) -> asyncpg.Connection | None:
        try:
            listener = await asyncpg.connect(driver_url(self.db.url))
            await listener.add_listener(OUTBOX_CHANNEL, lambda *_: self.wake.set())
            return listener
        except (OSError, asyncpg.PostgresError) as exc:
            log.warning("outbox.listen_failed", error=str(exc))
            return None

    async def idle_time(self) -> float:
        """Seconds until the next event falls due or a lease runs out (at most 5: a missed NOTIFY is caught
        by the next look). Events due now but held back by their tenant's cap wait for a delivery to end."""
        events = catalog.platform_tables()["events"]
        try:
            async with self.db.engine.connect() as conn:
                due = await conn.scalar(sa.select(sa.func.min(sa.case(
                    (events.c.status == "delivering", events.c.locked_until), else_=events.c.next_attempt_at)))
                    .where(sa.or_(sa.and_(events.c.status == "pending", events.c.next_attempt_at > sa.func.now()),
                                  sa.and_(events.c.status == "delivering", events.c.locked_until > sa.func.now()))))
        except (OSError, asyncpg.PostgresError, sa.exc.SQLAlchemyError):
            return 5.0
        if due is None:
            return 5.0
        return min(5.0, max(0.05, (due - datetime.now(UTC)).total_seconds()))

    async def claim(self, limit: int) -> list[Event]:
        """Up to `limit` due events, oldest first, none of a tenant beyond its `per_tenant` slots (counting
        its deliveries in flight under live leases, on any process). `CLAIM` visits each tenant that has
        pending events once, by index, and takes only as many of its due events as it has free slots, so a
        tenant whose backlog waits on its own slots costs a claim one index probe, not a sort of its backlog
        (which made every claim, and so every tenant's deliveries, slower as one tenant's backlog grew)."""
        async with self.db.begin() as conn:
            rows = (await conn.execute(CLAIM, {"limit": limit, "per_tenant": self.per_tenant,
                                               "lease": timedelta(seconds=self.lease)})).all()
        return [Event(str(r.id), str(r.tenant_id), r.slug, r.entity, r.action, r.kind, r.target, r.secret_name,
                      r.payload, r.caller or {}, r.attempts) for r in rows]

    async def deliver(self, event: Event) -> None:
        webhook = event.kind == "webhook"
        try:
            if webhook and (spent := await self.deliveries_spent(event)) is not None:
                await self.hold_back(event, spent)
                return
        except BackSaasError as exc:  # its tenant is gone or suspended meanwhile: an attempt that failed
            await self.record(event, Outcome(False, error=exc.message), 0.0)
            return
        if webhook:  # under way until recorded (and metered): a claim hands several of a tenant's events over
            self.in_flight[event.tenant_id] = self.in_flight.get(event.tenant_id, 0) + 1
        try:
            await self.attempt(event)
        finally:
            if webhook:
                self.in_flight[event.tenant_id] -= 1

    async def attempt(self, event: Event) -> None:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout):  # the whole attempt, its secret or runtime lookup included
                outcome = await (self.post(event) if event.kind == "webhook" else self.run_hook(event))
        except TimeoutError:
            outcome = Outcome(False, error=f"timed out after {self.timeout:g} s")
        except BackSaasError as exc:  # the engine's own errors say what went wrong in the tenant's terms
            outcome = Outcome(False, error=exc.message)
        except Exception:  # any other failure of one delivery is that delivery's outcome; detail to the log
            log.exception("outbox.delivery_crashed", event_id=event.id, tenant=event.slug)
            outcome = Outcome(False, error="internal error")
        latency = round((time.perf_counter() - started) * 1000, 2)
        await self.record(event, outcome, latency)

    async def deliveries_spent(self, event: Event) -> str | None:
        """Why `event` may not be delivered now: its tenant's plan's monthly webhook deliveries are used up."""
        if self.quotas is None:
            return None
        _, plan = await self.registry.resolve_plan(event.slug)
        allowed = limit_of(plan.limits, "webhook_deliveries_per_month")
        if allowed is None:
            return None
        used = self.quotas.used(event.tenant_id, "webhook_deliveries_per_month") + self.in_flight.get(event.tenant_id, 0)
        if used < allowed:
            return None
        return (f"held: this month's {allowed} webhook deliveries of the plan are used ({used}); it is delivered "
                "when the month turns or the plan allows more")

    async def hold_back(self, event: Event, reason: str) -> None:
        """Put a claimed webhook back, unattempted, to be looked at again in `hold` seconds."""
        events = catalog.platform_tables()["events"]
        async with asyncio.timeout(self.timeout), self.db.begin() as conn:
            await conn.execute(events.update().where(events.c.id == event.id, events.c.status == "delivering")
                               .values(status="pending", attempts=events.c.attempts - 1, locked_until=None,
                                       last_error=reason,
                                       next_attempt_at=sa.func.now() + timedelta(seconds=self.hold)))
        log.info("outbox.held", event_id=event.id, tenant=event.slug, reason=reason)

    async def post(self, event: Event) -> Outcome:
        body = event.body()
        headers = {"Content-Type": "application/json", "BackSaas-Event-Id": event.id}
        if event.secret_name:
            async with self.db.engine.connect() as conn:
                secret = await vault.reveal(conn, event.tenant_id, event.secret_name)
            if secret is None:
                return Outcome(False, error=f"secret {event.secret_name} is not set (set_webhook_secret)")
            headers[SIGNATURE_HEADER] = sign(secret, int(time.time()), body)
        failure = log.bind(event_id=event.id, tenant=event.slug)
        try:
            async with asyncio.timeout(self.timeout):  # the whole delivery, however slowly a receiver answers
                async with self.client.stream("POST", event.target, content=body, headers=headers) as response:
                    status = response.status_code  # the body is never read
        except DestinationRefused as exc:
            failure.warning("outbox.refused", reason=str(exc))
            return Outcome(False, error=REFUSED)
        except (TimeoutError, httpx.TimeoutException) as exc:
            failure.info("outbox.timed_out", error=repr(exc))
            return Outcome(False, error=f"timed out after {self.timeout:g} s")
        except httpx.ConnectError as exc:
            failure.info("outbox.connect_failed", error=repr(exc))
            return Outcome(False, error="could not connect")
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            failure.info("outbox.request_failed", error=repr(exc))
            return Outcome(False, error="the request failed")
        ok = 200 <= status < 300
        return Outcome(ok, status, None if ok else f"HTTP {status}")

    async def run_hook(self, event: Event) -> Outcome:
        """An async after_* hook, in a transaction of its own, as the caller of the original write."""
        from engine.data import DataApi

        fn = resolve(event.target, "hook", event.slug)  # from the registry of the tenant it runs for
        if fn is None:
            return Outcome(False, error=f"no hook '{event.target}' is installed on this server")
        runtime = await self.registry.get(event.slug)
        caller = Caller(tuple(event.caller.get("roles") or ("service",)), event.caller.get("user_id"))
        usage = metering.RequestUsage(event.tenant_id)
        token = metering.CURRENT.set(usage)  # the rows its ctx.data writes, counted once it commits
        try:
            async with self.db.as_role(runtime.role) as conn, conn.transaction():
                context = HookContext(event.slug, caller, f"after_{event.action}",
                                      DataApi(runtime, self.db, caller, conn), log.bind(tenant=event.slug, hook=event.target))
                payload = event.payload
                await call(fn, event.target, self.timeout, context,
                           Change(event.entity, event.action, payload.get("record"), payload.get("old_record")))
        finally:
            metering.CURRENT.reset(token)
        if self.meter is not None:
            self.meter.add(event.tenant_id, "rows_written", usage.rows_written)
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
        async with asyncio.timeout(self.timeout), self.db.begin() as conn:  # within the lease (shortest_lease)
            await conn.execute(deliveries.insert().values(
                event_id=event.id, tenant_id=event.tenant_id, attempt=event.attempts, succeeded=outcome.ok,
                status_code=outcome.status_code, latency_ms=latency, error=outcome.error))
            await conn.execute(events.update().where(events.c.id == event.id, events.c.status == "delivering")
                               .values(locked_until=None, **values))
        if outcome.ok and event.kind == "webhook" and self.meter is not None:
            self.meter.add(event.tenant_id, "webhook_deliveries")
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


async def enqueue_platform_event(conn: Any, tenant_id: str, slug: str, name: str, data: Mapping[str, Any]) -> int:
    """A platform event about a tenant (`quota.warning`, `billing.payment_failed`), put in the outbox in the
    caller's transaction (an admin connection of the platform), once for each webhook the tenant's deployed
    schema declares (each distinct URL and secret), so the tenant's receivers get it signed and retried like
    any change. The row's entity is the event's name and its action `event` (a platform event, not a change
    of a row); the body is `{id, tenant, event, at, ...data}`. Answers how many events were written (none
    for a tenant without webhooks)."""
    from engine.schema import load_schema  # a tenant's schema, parsed only when a platform event is sent

    version = await catalog.current_version(conn, tenant_id)
    if version is None:
        return 0
    model = load_schema(version.source, f"{slug} v{version.version}")
    targets = list(dict.fromkeys((h.webhook, h.secret) for e in model.entities for h in e.hooks if h.webhook))
    if not targets:
        return 0
    payload = {"tenant": slug, "event": name, "at": datetime.now(UTC).isoformat(), **data}
    events = catalog.platform_tables()["events"]
    await conn.execute(events.insert(), [
        {"tenant_id": tenant_id, "entity": name, "action": "event", "kind": "webhook", "target": url,
         "secret_name": secret, "payload": payload, "caller": {}} for url, secret in targets])
    return len(targets)
