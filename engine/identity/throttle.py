"""Failed sign-ins are rate limited per account and per client address (moving windows, `limits`); so are
the mails that `/auth/v1` sends (recovery, magic links, confirmations), per address and per client address.

Only failures count for sign-ins: a user who signs in correctly is never slowed down; attempts still being
evaluated count as failures while they run, so concurrent guesses are bounded too. A mail counts when it
is asked for, whether or not the address has an account, so the limit tells nothing about who has one.
Counters live in memory, or in Redis when `REDIS_URL` is set so that every server process shares them.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from limits import RateLimitItem, parse, storage
from limits.aio.strategies import MovingWindowRateLimiter

from engine.errors import TooManyAttempts

PER_ACCOUNT = "5/5 minutes"
PER_ADDRESS = "30/5 minutes"
MAILS_PER_EMAIL = "5/hour"  # mails to one address of a tenant (GoTrue limits them too: over_email_send_rate_limit)
MAILS_PER_CLIENT = "60/hour"  # mails asked for from one client address, whatever the addresses


class LoginThrottle:
    def __init__(self, redis_url: str | None = None, per_account: str = PER_ACCOUNT,
                 per_address: str = PER_ADDRESS, mails_per_email: str = MAILS_PER_EMAIL,
                 mails_per_client: str = MAILS_PER_CLIENT) -> None:
        backend = storage.storage_from_string(f"async+{redis_url}" if redis_url else "async+memory://")
        self.limiter = MovingWindowRateLimiter(backend)
        self.per_account: RateLimitItem = parse(per_account)
        self.per_address: RateLimitItem = parse(per_address)
        self.mails_per_email: RateLimitItem = parse(mails_per_email)
        self.mails_per_client: RateLimitItem = parse(mails_per_client)
        self.pending: dict[str, int] = {}  # account -> its attempts being evaluated now, in this process

    async def _refuse(self, item: RateLimitItem, kind: str, key: str) -> None:
        stats = await self.limiter.get_window_stats(item, "login", kind, key)
        wait = max(1, math.ceil(stats.reset_time - time.time()))
        raise TooManyAttempts(f"too many failed sign-ins for this {kind}; try again later", wait)

    @asynccontextmanager
    async def attempt(self, tenant: str, email: str, address: str | None) -> AsyncIterator[None]:
        """Around the evaluation of a password or a code: `TooManyAttempts` (429, with the seconds to wait)
        when the client address or the account is locked out, counting the account's attempts still being
        evaluated as if they had failed. A check of failures alone let 60 concurrent wrong codes all pass it
        before the first was counted; now at most the account's remaining failures are evaluated at once (in
        this process: each server process allows as many). Only failures (`failed`) stay counted, so a user
        who signs in correctly is never slowed down."""
        account = f"{tenant}:{email.strip().lower()}"
        if address and not await self.limiter.test(self.per_address, "login", "address", f"{tenant}:{address}"):
            await self._refuse(self.per_address, "address", f"{tenant}:{address}")
        stats = await self.limiter.get_window_stats(self.per_account, "login", "account", account)
        if self.pending.get(account, 0) >= stats.remaining:  # no await from this check to the count below
            await self._refuse(self.per_account, "account", account)
        self.pending[account] = self.pending.get(account, 0) + 1
        try:
            yield
        finally:
            self.pending[account] -= 1
            if not self.pending[account]:
                del self.pending[account]

    async def failed(self, tenant: str, email: str, address: str | None) -> None:
        """A refused password or code (within its `attempt`): counted for the account and the client address."""
        for item, kind, key in self._limits(tenant, email, address):
            await self.limiter.hit(item, "login", kind, key)

    def _limits(self, tenant: str, email: str, address: str | None) -> list[tuple[RateLimitItem, str, str]]:
        checks = [(self.per_account, "account", f"{tenant}:{email.strip().lower()}")]
        if address:
            checks.append((self.per_address, "address", f"{tenant}:{address}"))
        return checks

    async def mail(self, tenant: str, email: str, address: str | None) -> None:
        """Count one mail asked for `email` (from client `address`); `TooManyAttempts` (429,
        `over_email_send_rate_limit`) past either limit, before anything is looked up or sent."""
        checks = [(self.mails_per_email, "address", f"{tenant}:{email.strip().lower()}")]
        if address:
            checks.append((self.mails_per_client, "client", f"{tenant}:{address}"))
        for item, kind, key in checks:
            if not await self.limiter.hit(item, "mail", kind, key):
                stats = await self.limiter.get_window_stats(item, "mail", kind, key)
                wait = max(1, math.ceil(stats.reset_time - time.time()))
                error = TooManyAttempts(f"too many mails asked for this {'email address' if kind == 'address' else kind}"
                                        "; try again later", wait)
                error.code = "over_email_send_rate_limit"
                raise error
