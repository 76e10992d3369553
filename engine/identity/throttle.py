"""Failed sign-ins are rate limited per account and per client address (moving windows, `limits`); so are
the mails that `/auth/v1` sends (recovery, magic links, confirmations), per address and per client address.

Only failures count for sign-ins: a user who signs in correctly is never slowed down; attempts still being
evaluated count as failures while they run, so concurrent guesses are bounded too. A mail counts when it
is asked for, whether or not the address has an account, so the limit tells nothing about who has one.

Counters live in memory, or in Redis when `REDIS_URL` is set so that every server process shares them: the
windows of failures and mails (limits' Redis storage) and the count of each account's attempts being
evaluated (a counter of our own on limits' own Redis client, so on every Redis URL form limits takes:
`INCR` on entering and `DECR` on leaving, in one Lua script each), so that N gateway processes together
evaluate no more of an account's guesses than one would. (A `REDIS_URL` of another store limits speaks,
memcached or MongoDB, shares the windows only: attempts being evaluated are then counted per process.) A Redis that fails
or is slower than `REDIS_TIMEOUT_SECONDS` never fails a sign-in: this process counts in its own memory
(each process then bounds guesses on its own, as without Redis), logs `throttle.redis_unavailable`, and
tries Redis again after `PROBE_SECONDS`. An attempt that was counted in Redis and could not be uncounted
(Redis went away meanwhile) holds its place until the account has had no attempt for `ATTEMPT_SECONDS`:
it errs on refusing.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import structlog
from limits import RateLimitItem, parse, storage
from limits.aio.strategies import MovingWindowRateLimiter, WindowStats

from engine.errors import TooManyAttempts

PER_ACCOUNT = "5/5 minutes"
PER_ADDRESS = "30/5 minutes"
MAILS_PER_EMAIL = "5/hour"  # mails to one address of a tenant (GoTrue limits them too: over_email_send_rate_limit)
MAILS_PER_CLIENT = "60/hour"  # mails asked for from one client address, whatever the addresses
REDIS_TIMEOUT_SECONDS = 0.5  # a Redis slower than this counts as down (as gateway/ratelimit.py's)
PROBE_SECONDS = 5.0  # how long this process counts in memory after Redis failed, before trying it again
ATTEMPT_SECONDS = 120  # an account's shared count of attempts lapses this long after its last attempt began
PENDING_PREFIX = "backsaas:login:pending:"
# the count of an account's attempts being evaluated: up on entering (its expiry pushed back), down on leaving
ENTER = "local n = redis.call('INCR', KEYS[1]) redis.call('EXPIRE', KEYS[1], ARGV[1]) return n"
LEAVE = "local n = redis.call('DECR', KEYS[1]) if n <= 0 then redis.call('DEL', KEYS[1]) end return n"

log = structlog.get_logger("backsaas.throttle")


class LoginThrottle:
    def __init__(self, redis_url: str | None = None, per_account: str = PER_ACCOUNT,
                 per_address: str = PER_ADDRESS, mails_per_email: str = MAILS_PER_EMAIL,
                 mails_per_client: str = MAILS_PER_CLIENT, probe_seconds: float = PROBE_SECONDS) -> None:
        self.memory = MovingWindowRateLimiter(storage.storage_from_string("async+memory://"))
        self.shared: MovingWindowRateLimiter | None = None
        self.redis: Any = None  # limits' Redis bridge (coredis): the client of the shared attempt counts
        if redis_url:
            backend = storage.storage_from_string(f"async+{redis_url}", wrap_exceptions=True,
                                                  connect_timeout=REDIS_TIMEOUT_SECONDS,
                                                  stream_timeout=REDIS_TIMEOUT_SECONDS)
            self.shared = MovingWindowRateLimiter(backend)
            self.redis = getattr(backend, "bridge", None)
        self.per_account: RateLimitItem = parse(per_account)
        self.per_address: RateLimitItem = parse(per_address)
        self.mails_per_email: RateLimitItem = parse(mails_per_email)
        self.mails_per_client: RateLimitItem = parse(mails_per_client)
        self.pending: dict[str, int] = {}  # account -> its attempts being evaluated in this process (memory mode)
        self.probe_seconds = probe_seconds
        self.down_until = 0.0  # while Redis is considered down (time.monotonic()), counts stay in memory
        self.degraded = False

    # -- Redis, or this process's memory while it is down --

    def _redis_up(self) -> bool:
        return self.shared is not None and time.monotonic() >= self.down_until

    def _degrade(self, exc: Exception) -> None:
        self.down_until = time.monotonic() + self.probe_seconds
        if not self.degraded:
            self.degraded = True
            log.error("throttle.redis_unavailable", error=f"{type(exc).__name__}: {exc}",
                      fallback="sign-in and mail counters in this process's memory until Redis answers again")

    def _recovered(self) -> None:
        if self.degraded:
            self.degraded = False
            log.warning("throttle.redis_recovered")

    async def _windows(self, operation: str, item: RateLimitItem, *identifiers: str) -> Any:
        """`operation` (test, hit, get_window_stats) of limits' moving-window limiter, on Redis when it is
        up, else (and when it fails now) on this process's memory."""
        if self._redis_up():
            assert self.shared is not None
            try:
                answer = await getattr(self.shared, operation)(item, *identifiers)
            except Exception as exc:  # limits' StorageError (wrapped), a timeout: Redis is down, not sign-in
                self._degrade(exc)
            else:
                self._recovered()
                return answer
        return await getattr(self.memory, operation)(item, *identifiers)

    async def _enter(self, account: str) -> tuple[bool, int]:
        """Count one more attempt on `account` being evaluated: (counted in Redis, how many there are now,
        this one included)."""
        if self.redis is not None and self._redis_up():
            try:  # the connection as limits asks for it (a sentinel's master, a cluster's client)
                count = await self.redis.get_connection().eval(ENTER, keys=[PENDING_PREFIX + account],
                                                               args=[ATTEMPT_SECONDS])
            except Exception as exc:
                self._degrade(exc)
            else:
                self._recovered()
                return True, int(count)
        self.pending[account] = self.pending.get(account, 0) + 1
        return False, self.pending[account]

    async def _leave(self, account: str, shared: bool) -> None:
        if not shared:
            self.pending[account] -= 1
            if not self.pending[account]:
                del self.pending[account]
            return
        try:
            await self.redis.get_connection().eval(LEAVE, keys=[PENDING_PREFIX + account], args=[])
        except Exception as exc:  # the count lapses ATTEMPT_SECONDS after the account's last attempt
            self._degrade(exc)

    # -- sign-ins --

    async def _refuse(self, item: RateLimitItem, kind: str, key: str) -> None:
        stats: WindowStats = await self._windows("get_window_stats", item, "login", kind, key)
        wait = max(1, math.ceil(stats.reset_time - time.time()))
        raise TooManyAttempts(f"too many failed sign-ins for this {kind}; try again later", wait)

    @asynccontextmanager
    async def attempt(self, tenant: str, email: str, address: str | None) -> AsyncIterator[None]:
        """Around the evaluation of a password or a code: `TooManyAttempts` (429, with the seconds to wait)
        when the client address or the account is locked out, counting the account's attempts still being
        evaluated (in every process sharing Redis) as if they had failed. A check of failures alone let 60
        concurrent wrong codes all pass it before the first was counted; a count per process let each of N
        processes evaluate the account's remaining failures at once. The attempt is counted first and the
        failures read after, so an attempt that ends in between is seen as one or the other (or both: then
        it refuses, never admits, one more). Only failures (`failed`) stay counted, so a user who signs in
        correctly is never slowed down."""
        account = f"{tenant}:{email.strip().lower()}"
        if address and not await self._windows("test", self.per_address, "login", "address", f"{tenant}:{address}"):
            await self._refuse(self.per_address, "address", f"{tenant}:{address}")
        shared, running = await self._enter(account)
        try:
            stats: WindowStats = await self._windows("get_window_stats", self.per_account, "login", "account", account)
            if running > stats.remaining:
                await self._refuse(self.per_account, "account", account)
            yield
        finally:
            await asyncio.shield(self._leave(account, shared))  # a cancelled request still leaves

    async def failed(self, tenant: str, email: str, address: str | None) -> None:
        """A refused password or code (within its `attempt`): counted for the account and the client address."""
        for item, kind, key in self._limits(tenant, email, address):
            await self._windows("hit", item, "login", kind, key)

    def _limits(self, tenant: str, email: str, address: str | None) -> list[tuple[RateLimitItem, str, str]]:
        checks = [(self.per_account, "account", f"{tenant}:{email.strip().lower()}")]
        if address:
            checks.append((self.per_address, "address", f"{tenant}:{address}"))
        return checks

    # -- mails --

    async def mail(self, tenant: str, email: str, address: str | None) -> None:
        """Count one mail asked for `email` (from client `address`); `TooManyAttempts` (429,
        `over_email_send_rate_limit`) past either limit, before anything is looked up or sent."""
        checks = [(self.mails_per_email, "address", f"{tenant}:{email.strip().lower()}")]
        if address:
            checks.append((self.mails_per_client, "client", f"{tenant}:{address}"))
        for item, kind, key in checks:
            if not await self._windows("hit", item, "mail", kind, key):
                stats: WindowStats = await self._windows("get_window_stats", item, "mail", kind, key)
                wait = max(1, math.ceil(stats.reset_time - time.time()))
                error = TooManyAttempts(f"too many mails asked for this {'email address' if kind == 'address' else kind}"
                                        "; try again later", wait)
                error.code = "over_email_send_rate_limit"
                raise error
