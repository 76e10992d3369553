"""Request rate limits: per tenant from its plan's windows, per client address for anonymous callers.

Why: one tenant (or one anonymous client of a tenant) must not take the capacity every tenant shares
(DESIGN.md, request flow step 3). Counters are fixed windows aligned to the clock (a minute window resets
at the minute), kept by the `limits` library's storage: in this process's memory, or in Redis when
`REDIS_URL` is set so that every gateway process counts against one budget.

- A tenant's windows are its plan's `requests_per_minute`, `requests_per_hour` and `requests_per_day`
  (engine/plans.py; `-1` or absent: no window). The platform itself (the system tenant) has none.
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
from dataclasses import dataclass

import structlog
from limits import RateLimitItem, RateLimitItemPerSecond, parse_many
from limits.aio.storage import Storage
from limits.storage import storage_from_string
from starlette.types import Message, Send

from engine.authz import Caller
from engine.errors import RateLimited
from engine.plans import Plan
from engine.storage.naming import SYSTEM_TENANT

ANON_PER_ADDRESS = "300/minute;5000/hour;50000/day"  # an anonymous client address's requests to one tenant
PERIODS = {1: "second", 60: "minute", 3600: "hour", 86400: "day"}
MAX_SUSPECTS = 100_000  # (tenant, address) pairs with failed authentications remembered per process
MAX_CACHED_KEYS = 100_000
PROBE_SECONDS = 5.0  # how often a Redis that failed is tried again
REDIS_TIMEOUT_SECONDS = 0.5  # a Redis slower than this counts as down
log = structlog.get_logger("backsaas.ratelimit")


@dataclass(frozen=True)
class Window:
    """The state of one window after this request: what the `RateLimit-*` headers say."""

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
        return [(b"ratelimit-limit", str(self.limit).encode()),
                (b"ratelimit-remaining", str(max(0, self.remaining)).encode()),
                (b"ratelimit-reset", str(max(1, math.ceil(self.reset))).encode())]


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
        self.counts: dict[str, tuple[float, int]] = {}  # key -> (when it expires, count)
        self.swept_at = 0.0

    def incr(self, key: str, expiry: float, amount: int = 1) -> int:
        now = time.time()
        found = self.counts.get(key)
        if found is None or found[0] <= now:
            if now - self.swept_at >= self.SWEEP_SECONDS:
                self.counts = {k: v for k, v in self.counts.items() if v[0] > now}
                self.swept_at = now
            self.counts[key] = (now + expiry, amount)
            return amount
        count = found[1] + amount
        self.counts[key] = (found[0], count)
        return count

    def get(self, key: str) -> int:
        found = self.counts.get(key)
        return found[1] if found is not None and found[0] > time.time() else 0


class RateLimits:
    """The gateway's rate limiter (one per process). `admit` counts a request and refuses it past a window.

    Settings (keyword, else environment): `enabled` (`BACKSAAS_RATE_LIMITS`, on unless `off`; off, nothing is
    counted or refused: for a deployment limited in front of the gateway), `anon_per_address`
    (`BACKSAAS_ANON_RATE_LIMIT`, one or more `limits` windows such as "300/minute;5000/hour"), `key_prefix` of
    the Redis keys
    (`BACKSAAS_RATE_LIMIT_PREFIX`), `probe_seconds` between tries of a Redis that failed
    (`BACKSAAS_RATE_LIMIT_PROBE_SECONDS`)."""

    def __init__(self, redis_url: str | None = None, *, enabled: bool | None = None,
                 anon_per_address: str | None = None, key_prefix: str | None = None, probe_seconds: float | None = None,
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
        self._keys: dict[tuple[int, tuple[str, ...]], str] = {}
        self._probe: asyncio.Task[None] | None = None

    @property
    def degraded(self) -> bool:
        """Whether Redis is configured but out of use (counting in this process's memory meanwhile)."""
        return self.shared is not None and self.storage is self.fallback

    def _key(self, seconds: int, identifiers: tuple[str, ...]) -> str:
        """The counter key of a window but for its start: `limits`' key of a window that long, whatever its
        limit (a plan edited in the middle of a window keeps its count). Cached: building it costs more
        than counting in memory."""
        cache_key = (seconds, identifiers)
        found = self._keys.get(cache_key)
        if found is None:
            if len(self._keys) >= MAX_CACHED_KEYS:  # one per tenant window and anonymous address: bounded
                self._keys.clear()
            found = self._keys[cache_key] = RateLimitItemPerSecond(1, seconds).key_for(*identifiers)
        return found

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

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()

    async def admit(self, slug: str, tenant_id: str, plan: Plan, caller: Caller, address: str | None
                    ) -> Window | None:
        """Count one request and answer its tightest window (None when nothing limits it), or the window
        that refuses it (`refused`; the caller raises its `error()`)."""
        if not self.enabled:
            return None
        checks: list[tuple[str, int, int, tuple[str, ...]]] = []
        if address and caller.user_id is None and "anon" in caller.roles:
            checks += self._address_checks(tenant_id, address)
        if slug != SYSTEM_TENANT:
            checks += [(key, bound, seconds, ("tenant", tenant_id, key)) for key, seconds, bound in plan.rate_windows]
        return await self._spend(slug, checks)

    def _address_checks(self, tenant_id: str, address: str) -> list[tuple[str, int, int, tuple[str, ...]]]:
        return [("address", item.amount, int(item.get_expiry()), ("address", tenant_id, address)) for item in self.anon]

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
        if not self.enabled or not address:
            return None
        until = self._suspects.get((tenant_id, address))
        if until is None:
            return None
        now = time.time()
        if until <= now:
            del self._suspects[(tenant_id, address)]
            return None
        for name, amount, seconds, ids in self._address_checks(tenant_id, address):
            key = f"{self._key(seconds, ids)}/{int(now // seconds)}"
            storage = self.storage
            if storage is self.fallback:
                count = self.fallback.get(key)
            else:
                try:
                    count = await storage.get(key)  # type: ignore[misc]
                except Exception as exc:  # Redis down: the counters in memory stand in, as for `_count`
                    self._degrade(exc)
                    count = self.fallback.get(key)
            if count >= amount:
                return Window(amount, -1, (int(now // seconds) + 1) * seconds - now, name, seconds)
        return None

    async def _spend(self, slug: str, checks: list[tuple[str, int, int, tuple[str, ...]]]) -> Window | None:
        """Count one request in each window of `checks` (shortest first); the tightest, or the refusing one."""
        if not checks:
            return None
        now = time.time()
        keys = [(f"{self._key(seconds, ids)}/{int(now // seconds)}", seconds) for _, _, seconds, ids in checks]
        if self.storage is self.fallback:  # in memory: one window after the other, stopping at a refusal
            counts: list[int] = []
            for key, seconds in keys:
                counts.append(await self._count(key, seconds))
                if counts[-1] > checks[len(counts) - 1][1]:
                    break
        else:  # in Redis: every window in the time of one round trip, and the longer ones given back on a refusal
            counts = list(await asyncio.gather(*(self._count(key, seconds) for key, seconds in keys)))
        tightest: Window | None = None
        for index, ((name, amount, seconds, _), count) in enumerate(zip(checks, counts, strict=False)):
            window = Window(amount, amount - count, (int(now // seconds) + 1) * seconds - now, name, seconds)
            if window.refused:
                if len(counts) > index + 1:  # a refused request does not spend the longer windows
                    await asyncio.gather(*(self._count(key, seconds, -1) for key, seconds in keys[index + 1:]))
                if self.on_refused is not None:
                    self.on_refused(slug, name)
                return window
            if tightest is None or window.remaining < tightest.remaining:
                tightest = window
        return tightest


def with_headers(send: Send, headers: list[tuple[bytes, bytes]]) -> Send:
    """`send` adding `headers` to the response's start (plain ASGI: no copy of the body)."""
    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), *headers]}
        await send(message)
    return sending
