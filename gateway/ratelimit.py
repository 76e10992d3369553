"""Request rate limits: per tenant from its plan's windows, per client address for anonymous callers.

Why: one tenant (or one anonymous client of a tenant) must not take the capacity every tenant shares
(DESIGN.md, request flow step 3). Counters are fixed windows aligned to the clock (a minute window resets
at the minute), kept by the `limits` library's storage: in this process's memory, or in Redis when
`REDIS_URL` is set so that every gateway process counts against one budget.

- A tenant's windows are its plan's `requests_per_second` (a burst: a minute's budget is not spent in one
  second), `requests_per_minute`, `requests_per_hour` and `requests_per_day` (engine/plans.py; `-1` or
  absent: no window). The platform itself (the system tenant) has none.
- An anonymous caller (no signed-in user; no key, or the public anon key) also counts against a budget per
  tenant and client address (`BACKSAAS_ANON_RATE_LIMIT`, default `ANON_PER_ADDRESS`: a minute, an hour and a
  day window), checked first, so one address cannot spend its tenant's whole budget.
- A failed authentication (401) counts against the same budget of its address (`admit_failed`), and an
  address whose budget failures helped spend is refused before its credentials are even looked at
  (`refused_address`), so that nobody tries keys or tokens faster than an anonymous client may read.
- Windows are counted shortest first and a request refused by one is not counted by the longer ones: a
  client hammering through a refused minute does not spend its day.
- Refusals are 429 `rate_limited` with `Retry-After`; every answer of a limited tenant carries the IETF
  draft headers `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` of its tightest window.
- A refusal is answered after a pause (`hold`: its `Retry-After`, at most `hold_seconds`, 1 s by default),
  as nginx's `limit_req` delays a request past its rate: a client that ignores `Retry-After` and sends again
  the moment it is refused can then send one request per pause and connection, not as many as the gateway
  can refuse. A refusal costs the gateway a fraction of an ordinary request, but a client that repeats it
  thousands of times a second took half a small gateway's capacity from every other tenant (a flood of 8
  clients refused 1,370 times a second doubled another tenant's p99, bench/noisy_neighbour.py). A held
  answer is one sleeping coroutine: it holds no fairness slot and no database connection, and reads no more
  of a body (the server stops reading past its buffer); past `MAX_HELD` of them in the process, refusals are
  answered at once, so holding never becomes what an attacker exhausts. Both request surfaces take it where
  they answer a refusal: an HTTP request (gateway/app.py `TenantApp.__call__`) and a query or mutation sent
  over a GraphQL socket (`TenantApp.socket_operation`), whose held operation keeps its place in the socket's
  cap of operations, so one socket cannot outpace the pause either.

A tenant's writes are also bounded by the rows they change: its plan's `rows_written_per_second`. A request
counts as many as it wrote (inserted, updated or deleted: what the meter counts, `engine.metering.wrote`),
once it has run, and a request that may write (any method but GET, HEAD and OPTIONS, and every operation of
a GraphQL socket) is refused while the tenant's writes are more than `WRITE_BURST_SECONDS` ahead of that
rate (a generic cell rate algorithm: the moment its rows are paid for moves on by rows / rate at each
write). Why: a request window counts a 1,000-row write as one request, and a tenant's writes cost the
database in proportion to their rows (each is validated, written, audited, sealed, and perhaps sent to a
webhook); 25 writes a second of 40 hooked rows each doubled another tenant's p99
(bench/noisy_neighbour.py). Reads are never refused by it. It is counted per process, in memory (a plan's
`max_write_rows` bounds what one request can add), and only while the meter runs (`BACKSAAS_METERING`, on
unless `off`), which is what counts the rows.

Cost: one counter increment per window (a dictionary update in memory, a round trip to Redis), no
database. A Redis outage does not take the API down: the counters fall back to this process's memory (each
process then limits on its own), the outage is logged, and Redis is probed in the background and used
again as soon as it answers.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Callable
from typing import NamedTuple

import structlog
from limits import RateLimitItem, RateLimitItemPerSecond, parse_many
from limits.aio.storage import Storage
from limits.storage import storage_from_string
from starlette.types import Message, Send

from engine.authz import Caller
from engine.errors import RateLimited
from engine.plans import Plan
from engine.storage.naming import SYSTEM_TENANT
from gateway.access import ObservedSend

ANON_PER_ADDRESS = "300/minute;5000/hour;50000/day"  # an anonymous client address's requests to one tenant
PERIODS = {1: "second", 60: "minute", 3600: "hour", 86400: "day"}
MAX_SUSPECTS = 100_000  # (tenant, address) pairs with failed authentications remembered per process
MAX_CACHED_KEYS = 100_000
PROBE_SECONDS = 5.0  # how often a Redis that failed is tried again
HOLD_SECONDS = 1.0  # the longest pause before a refusal is answered (`RateLimits.hold`)
MAX_HELD = 1024  # refusals held at once in a process; past it they are answered at once
WRITE_BURST_SECONDS = 1.0  # how far ahead of its rows_written_per_second a tenant's writes may be
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})  # requests that never write (`writes_refused`)
REDIS_TIMEOUT_SECONDS = 0.5  # a Redis slower than this counts as down
log = structlog.get_logger("backsaas.ratelimit")


class Window(NamedTuple):
    """The state of one window after this request: what the `RateLimit-*` headers say (a named tuple: one
    is made per request, a frozen dataclass costs four times as much to make)."""

    limit: int
    remaining: int  # below 0: this request was refused
    reset: float  # seconds until the window starts again
    name: str = ""  # the plan's key (`requests_per_minute`, ...) or `address`
    seconds: int = 0  # the window's length

    @property
    def refused(self) -> bool:
        return self.remaining < 0

    def error(self) -> RateLimited:
        """The 429 of a refused request."""
        wait = max(1, math.ceil(self.reset))
        if self.name == "address":
            period = PERIODS.get(self.seconds, f"{self.seconds} seconds")
            what = f"this address's anonymous limit of {self.limit} requests per {period}"
        else:
            what = f"the plan's {self.name.replace('_', ' ')} limit of {self.limit} requests"
        return RateLimited(f"{what} is spent; try again in {wait} s", wait)

    def headers(self) -> list[tuple[bytes, bytes]]:
        """`RateLimit-Limit`, `-Remaining` (at least 0) and `-Reset` (whole seconds, at least 1), as bytes (fields
        by index and comparisons instead of `max`: this runs for every answer of a limited tenant)."""
        limit, remaining, reset = self[0], self[1], self[2]
        return [(b"ratelimit-limit", b"%d" % limit), (b"ratelimit-remaining", b"%d" % (remaining if remaining > 0 else 0)),
                (b"ratelimit-reset", b"%d" % (_ceil(reset) if reset > 1 else 1))]


_ceil = math.ceil
_new_window = tuple.__new__  # Window(...) through its generated __new__ costs twice as much (one per request)


class ProcessCounters:
    """This process's fixed-window counters: `limits`' storage interface (`incr`, `get`), synchronous.

    Why not `limits`' MemoryStorage: it serves every strategy and thread, so each increment takes a lock and
    starts an expiry task (its asyncio version) or thread (its synchronous one) that scans every key; on this
    gateway's hot path that was most of the rate limiter's time, and the thread's GIL contention cost a fifth
    of the throughput (bench/rest.py --business). A window's key names its start (`RateLimits._spend`), so a
    counter is one dictionary entry that expires with its window; expired entries are swept at most once a
    minute, when new ones are made. Redis, when configured, keeps `limits`' own storage."""

    SWEEP_SECONDS = 60.0

    def __init__(self) -> None:
        self.counts: dict[str, list[float]] = {}  # key -> [when it expires, count]
        self.swept_at = 0.0

    def incr(self, key: str, expiry: float, amount: int = 1, now: float | None = None) -> int:
        now = time.time() if now is None else now
        found = self.counts.get(key)
        if found is None or found[0] <= now:
            if now - self.swept_at >= self.SWEEP_SECONDS:
                self.counts = {k: v for k, v in self.counts.items() if v[0] > now}
                self.swept_at = now
            self.counts[key] = [now + expiry, amount]
            return amount
        found[1] += amount
        return int(found[1])

    def get(self, key: str) -> int:
        found = self.counts.get(key)
        return int(found[1]) if found is not None and found[0] > time.time() else 0

    def spend(self, checks: tuple[Counted, ...], now: float) -> tuple[Counted, int]:
        """Count one request in each of `checks` (at least one), shortest first: the first that refuses it and
        its remaining count (below 0; the longer ones are not counted), else the tightest and its remaining.
        A check holds its open window's bounds and counter (`Counted.open`): while `now` is within them, which
        is every request but a window's first in this process, counting is one addition to that counter."""
        tightest, least = checks[0], 0
        first = True
        for check in checks:
            if check.begins <= now < check.ends:
                counter = check.counter
                counter[1] += 1
                count = counter[1]
            else:
                count = self.open(check, now)
            remaining = check.amount - count
            if remaining < 0:
                return check, remaining
            if first or remaining < least:
                tightest, least, first = check, remaining, False
        return tightest, least

    def open(self, check: Counted, now: float) -> int:
        """Count one request in the window of `check` that holds `now`, first of that window's in this check:
        its counter (made, or found: counted by another check of the same key, or before a plan edit) is kept
        in the check with the window's bounds. A counter lives in `counts` from its window's first request
        until `SWEEP_SECONDS` after its window ended (it expires a window's length after its first request), so
        the one held is the one `incr` and `get` find while the window is open."""
        key = check.key_at(now)
        count = self.incr(key, check.seconds, 1, now)
        start = check.start
        check.counter = self.counts[key]
        check.begins, check.ends = start * check.seconds, (start + 1) * check.seconds
        return count


class Counted:
    """One window a request is counted in: its name (the plan's key, or `address`), bound and length, and its
    counter's key (`limits`' key of a window that long, whatever its limit, so that a plan edited in the
    middle of a window keeps its count; then `/` and the window's start), built once per window start: a
    request formats no string. In memory it also holds its open window's bounds and counter
    (`ProcessCounters.open`). Held per tenant and per anonymous address (`RateLimits._checks`)."""

    __slots__ = ("amount", "begins", "counter", "ends", "key", "name", "prefix", "seconds", "start")

    def __init__(self, name: str, amount: int, seconds: int, identifiers: tuple[str, ...]) -> None:
        self.name, self.amount, self.seconds = name, amount, seconds
        self.prefix = RateLimitItemPerSecond(1, seconds).key_for(*identifiers)
        self.start, self.key = -1, ""
        self.begins, self.ends = 0.0, 0.0  # the open window's bounds in memory: none yet
        self.counter: list[float] = [0.0, 0]

    def key_at(self, now: float) -> str:
        start = int(now // self.seconds)
        if start != self.start:
            self.start, self.key = start, f"{self.prefix}/{start}"
        return self.key

    def window(self, remaining: int, now: float) -> Window:
        return _new_window(Window, (self.amount, remaining, (int(now // self.seconds) + 1) * self.seconds - now,
                                    self.name, self.seconds))


class RateLimits:
    """The gateway's rate limiter (one per process). `admit` counts a request and refuses it past a window.

    Settings (keyword, else environment): `enabled` (`BACKSAAS_RATE_LIMITS`, on unless `off`; off, nothing is
    counted or refused: for a deployment limited in front of the gateway), `anon_per_address`
    (`BACKSAAS_ANON_RATE_LIMIT`, one or more `limits` windows such as "300/minute;5000/hour"), `key_prefix` of
    the Redis keys
    (`BACKSAAS_RATE_LIMIT_PREFIX`), `probe_seconds` between tries of a Redis that failed
    (`BACKSAAS_RATE_LIMIT_PROBE_SECONDS`), `hold_seconds`, the longest pause before a refusal is answered
    (`BACKSAAS_RATE_LIMIT_HOLD_SECONDS`, default `HOLD_SECONDS`; 0: answered at once) and `max_held`, how many
    refusals may be held at once (`MAX_HELD`)."""

    def __init__(self, redis_url: str | None = None, *, enabled: bool | None = None,
                 anon_per_address: str | None = None, key_prefix: str | None = None, probe_seconds: float | None = None,
                 hold_seconds: float | None = None, max_held: int = MAX_HELD,
                 on_refused: Callable[[str, str], None] | None = None) -> None:
        self.enabled = enabled if enabled is not None else os.environ.get("BACKSAAS_RATE_LIMITS", "on") != "off"
        prefix = key_prefix or os.environ.get("BACKSAAS_RATE_LIMIT_PREFIX") or "backsaas"
        self.fallback = ProcessCounters()  # in memory: without Redis, and while Redis is down
        self.shared: Storage | None = None
        if redis_url:
            self.shared = storage_from_string(f"async+{redis_url}", wrap_exceptions=True, key_prefix=prefix,
                                              connect_timeout=REDIS_TIMEOUT_SECONDS,
                                              stream_timeout=REDIS_TIMEOUT_SECONDS)
        self.storage: Storage | ProcessCounters = self.shared or self.fallback
        self.anon: list[RateLimitItem] = sorted(parse_many(anon_per_address or os.environ.get("BACKSAAS_ANON_RATE_LIMIT")
                                                           or ANON_PER_ADDRESS), key=lambda item: item.get_expiry())
        self._suspects: dict[tuple[str, str], float] = {}  # (tenant id, address) -> when its last failure is forgotten
        self.probe_seconds = probe_seconds or float(os.environ.get("BACKSAAS_RATE_LIMIT_PROBE_SECONDS") or PROBE_SECONDS)
        self.on_refused = on_refused  # (tenant slug, window key) of each refusal, for /metrics
        held = os.environ.get("BACKSAAS_RATE_LIMIT_HOLD_SECONDS")
        self.hold_seconds = hold_seconds if hold_seconds is not None else float(held) if held else HOLD_SECONDS
        self.held, self.max_held = 0, max_held  # refusals being held now (`hold`), and at most
        # tenant id -> (the plan last seen, its windows' Counted); (tenant id, address) -> the address's Counted
        self._tenants: dict[str, tuple[Plan, tuple[Counted, ...]]] = {}
        self._addresses: dict[tuple[str, str], tuple[Counted, ...]] = {}
        self._paid_until: dict[str, float] = {}  # tenant id -> when its rows written are paid for (monotonic)
        self._probe: asyncio.Task[None] | None = None

    @property
    def degraded(self) -> bool:
        """Whether Redis is configured but out of use (counting in this process's memory meanwhile)."""
        return self.shared is not None and self.storage is self.fallback

    async def _count(self, key: str, seconds: int, amount: int = 1) -> int:
        storage = self.storage
        if storage is self.fallback:
            return self.fallback.incr(key, seconds, amount)
        try:
            return await storage.incr(key, seconds, amount)  # type: ignore[misc]
        except Exception as exc:  # limits' StorageError (wrapped) or a timeout: Redis is down, not the API
            self._degrade(exc)
            return self.fallback.incr(key, seconds, amount)

    def _degrade(self, exc: Exception) -> None:
        if self.storage is self.fallback:
            return
        self.storage = self.fallback
        log.error("ratelimit.redis_unavailable", error=f"{type(exc).__name__}: {exc}",
                  fallback="per-process memory counters until Redis answers again")
        self._probe = asyncio.get_running_loop().create_task(self._recover())

    async def _recover(self) -> None:
        """Probe Redis until it answers, then count there again (the counters it held are kept, so budgets
        carry on from where they were, give or take the requests counted in memory meanwhile)."""
        assert self.shared is not None
        while True:
            await asyncio.sleep(self.probe_seconds)
            try:
                alive = await asyncio.wait_for(self.shared.check(), REDIS_TIMEOUT_SECONDS * 2)
            except TimeoutError:
                alive = False
            if alive:
                self.storage = self.shared
                log.warning("ratelimit.redis_recovered")
                return

    async def hold(self, refusal: RateLimited) -> float:
        """Pause before `refusal` is answered (see the module): its `Retry-After`, at most `hold_seconds`; no
        pause while `max_held` refusals are held already. Returns the pause's seconds (the metrics leave it
        out: gateway/access.py `HELD_SECONDS`)."""
        pause = min(self.hold_seconds, refusal.retry_after or self.hold_seconds)
        if pause <= 0 or self.held >= self.max_held:
            return 0.0
        self.held += 1
        try:
            await asyncio.sleep(pause)
        finally:
            self.held -= 1
        return pause

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()

    async def admit(self, slug: str, tenant_id: str, plan: Plan, caller: Caller, address: str | None
                    ) -> Window | None:
        """Count one request and answer its tightest window (None when nothing limits it), or the window
        that refuses it (`refused`; the caller raises its `error()`). In memory it is counted here, without
        awaiting `_spend`: this runs for every request."""
        if not self.enabled:
            return None
        if slug == SYSTEM_TENANT:
            checks: tuple[Counted, ...] = ()
        else:
            found = self._tenants.get(tenant_id)
            checks = found[1] if found is not None and found[0] is plan else self._tenant_checks(tenant_id, plan)
        if address and caller.user_id is None and "anon" in caller.roles:
            checks = (*self._address_checks(tenant_id, address), *checks)
        if not checks:
            return None
        if self.storage is self.fallback:
            now = time.time()
            check, remaining = self.fallback.spend(checks, now)
            if remaining < 0:
                return self._refused(slug, check, remaining, now)
            return _new_window(Window, (check.amount, remaining, check.ends - now, check.name, check.seconds))
        return await self._spend(slug, checks)

    def writes_refused(self, slug: str, tenant_id: str, plan: Plan) -> RateLimited | None:
        """Before a request that may write: the 429 of a tenant whose rows written are more than
        `WRITE_BURST_SECONDS` ahead of its plan's `rows_written_per_second` (see the module), else None."""
        rate = self._rows_rate(slug, plan)
        if rate is None:
            return None
        ahead = self._paid_until.get(tenant_id, 0.0) - time.monotonic()
        if ahead <= WRITE_BURST_SECONDS:
            return None
        wait = max(1, math.ceil(ahead - WRITE_BURST_SECONDS))
        return RateLimited(f"the plan's rows written per second limit of {rate} rows is spent; try again in {wait} s",
                           wait)

    def wrote(self, slug: str, tenant_id: str, plan: Plan, rows: int) -> None:
        """Count the `rows` a request of the tenant wrote against its `rows_written_per_second`."""
        rate = self._rows_rate(slug, plan) if rows > 0 else None
        if rate is None:
            return
        now = time.monotonic()
        if len(self._paid_until) >= MAX_CACHED_KEYS:  # those paid up owe nothing: forgotten (all, past the bound)
            self._paid_until = {t: until for t, until in self._paid_until.items() if until > now}
            if len(self._paid_until) >= MAX_CACHED_KEYS:
                self._paid_until.clear()
        self._paid_until[tenant_id] = max(self._paid_until.get(tenant_id, now), now) + rows / rate

    def _rows_rate(self, slug: str, plan: Plan) -> int | None:
        """The tenant's `rows_written_per_second`, or None: unbounded, limits off, or the platform itself (the
        system tenant has no request window either). 0 is no rate: a bad value written around the schema."""
        rate = plan.limit("rows_written_per_second")
        return rate if rate and self.enabled and slug != SYSTEM_TENANT else None

    def _tenant_checks(self, tenant_id: str, plan: Plan) -> tuple[Counted, ...]:
        """The tenant's windows as `Counted`, kept with the plan they were made for: made again only when the
        plan's windows differ (a plan object reloaded with the same windows keeps them, and their counters)."""
        windows = plan.rate_windows
        found = self._tenants.get(tenant_id)
        if found is None or found[0].rate_windows != windows:
            if len(self._tenants) >= MAX_CACHED_KEYS:  # one per tenant: bounded all the same
                self._tenants.clear()
            checks = tuple(Counted(key, bound, seconds, ("tenant", tenant_id, key)) for key, seconds, bound in windows)
        else:
            checks = found[1]
        self._tenants[tenant_id] = (plan, checks)
        return checks

    def _address_checks(self, tenant_id: str, address: str) -> tuple[Counted, ...]:
        found = self._addresses.get((tenant_id, address))
        if found is None:
            if len(self._addresses) >= MAX_CACHED_KEYS:  # anyone can come from a new address: bounded
                self._addresses.clear()
            found = self._addresses[(tenant_id, address)] = tuple(
                Counted("address", item.amount, int(item.get_expiry()), ("address", tenant_id, address))
                for item in self.anon)
        return found

    async def admit_failed(self, slug: str, tenant_id: str, address: str | None) -> Window | None:
        """Count a failed authentication (a 401) against its address's anonymous budget, as `admit` counts an
        anonymous request, and remember the address as one to check before authenticating
        (`refused_address`) until its longest window ends. Answers the window that refuses it (the caller
        raises its `error()`, a 429, instead of the 401), else None."""
        if not self.enabled or not address:
            return None
        if len(self._suspects) >= MAX_SUSPECTS:
            now = time.time()
            self._suspects = {pair: until for pair, until in self._suspects.items() if until > now}
            if len(self._suspects) >= MAX_SUSPECTS:  # all current: forget them rather than grow without bound
                self._suspects.clear()
        self._suspects[(tenant_id, address)] = time.time() + max(int(item.get_expiry()) for item in self.anon)
        window = await self._spend(slug, self._address_checks(tenant_id, address))
        return window if window is not None and window.refused else None

    async def refused_address(self, tenant_id: str, address: str | None) -> Window | None:
        """Before authenticating: the spent window of an address that failed to authenticate in this process
        within its windows, else None. Such an address gets 429 whatever credentials it sends, so that a
        correct guess is not told apart from a wrong one once its budget is spent. Other addresses cost a
        dictionary lookup, no counter read."""
        if not self.enabled or not address or not self._suspects:
            return None
        until = self._suspects.get((tenant_id, address))
        if until is None:
            return None
        now = time.time()
        if until <= now:
            del self._suspects[(tenant_id, address)]
            return None
        for check in self._address_checks(tenant_id, address):
            key = check.key_at(now)
            storage = self.storage
            if storage is self.fallback:
                count = self.fallback.get(key)
            else:
                try:
                    count = await storage.get(key)  # type: ignore[misc]
                except Exception as exc:  # Redis down: the counters in memory stand in, as for `_count`
                    self._degrade(exc)
                    count = self.fallback.get(key)
            if count >= check.amount:
                return check.window(-1, now)
        return None

    async def _spend(self, slug: str, checks: tuple[Counted, ...]) -> Window | None:
        """Count one request in each window of `checks` (shortest first); the tightest, or the refusing one."""
        if not checks:
            return None
        now = time.time()
        tightest: Counted | None = None
        least = 0
        if self.storage is self.fallback:  # in memory: one window after the other, stopping at a refusal
            check, remaining = self.fallback.spend(checks, now)
            return self._refused(slug, check, remaining, now) if remaining < 0 else check.window(remaining, now)
        # in Redis: every window in the time of one round trip, and the longer ones given back on a refusal
        keys = [check.key_at(now) for check in checks]
        counts = await asyncio.gather(*(self._count(key, check.seconds) for key, check in zip(keys, checks, strict=True)))
        for index, (check, count) in enumerate(zip(checks, counts, strict=True)):
            remaining = check.amount - count
            if remaining < 0:
                if len(checks) > index + 1:  # a refused request does not spend the longer windows
                    await asyncio.gather(*(self._count(key, later.seconds, -1)
                                           for key, later in zip(keys[index + 1:], checks[index + 1:], strict=True)))
                return self._refused(slug, check, remaining, now)
            if tightest is None or remaining < least:
                tightest, least = check, remaining
        return tightest.window(least, now) if tightest is not None else None

    def _refused(self, slug: str, check: Counted, remaining: int, now: float) -> Window:
        if self.on_refused is not None:
            self.on_refused(slug, check.name)
        return check.window(remaining, now)


def with_headers(send: Send, headers: list[tuple[bytes, bytes]]) -> Send:
    """`send` adding `headers` to the response's start. The gateway's observed send (gateway/access.py), which
    every tenant request gets, takes them into the one header list it builds at the start: no wrapper, no
    copy; any other `send` is wrapped (plain ASGI: no copy of the body)."""
    if isinstance(send, ObservedSend):
        send.add_headers(headers)
        return send

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), *headers]}
        await send(message)
    return sending
