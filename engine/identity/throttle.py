"""Failed sign-ins are rate limited per account and per client address (moving windows, `limits`); so are
the mails that `/auth/v1` sends (recovery, magic links, confirmations), per address and per client address.

Sign-ins: each attempt on an account is counted before its password or code is evaluated (so concurrent
guesses are bounded too), and a correct one clears the account's count, so a user who signs in correctly
is never slowed down; the client address counts failures. A mail counts when it
is asked for, whether or not the address has an account, so the limit tells nothing about who has one.
Counters live in memory, or in Redis when `REDIS_URL` is set so that every server process shares them.
"""

from __future__ import annotations

import math
import time

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

    @staticmethod
    async def _refuse(limiter: MovingWindowRateLimiter, item: RateLimitItem, kind: str, key: str) -> None:
        stats = await limiter.get_window_stats(item, "login", kind, key)
        wait = max(1, math.ceil(stats.reset_time - time.time()))
        raise TooManyAttempts(f"too many failed sign-ins for this {kind}; try again later", wait)

    async def attempt(self, tenant: str, email: str, address: str | None) -> None:
        """Before a password or a code is evaluated: `TooManyAttempts` (429, with the seconds to wait) when
        the client address or the account is locked out. The account's attempt is counted here, before the
        evaluation, so concurrent guesses cannot all pass a check made before any of them was counted (60
        parallel wrong codes were all evaluated when it was counted after); `succeeded` forgives it."""
        account = f"{tenant}:{email.strip().lower()}"
        if address and not await self.limiter.test(self.per_address, "login", "address", f"{tenant}:{address}"):
            await self._refuse(self.limiter, self.per_address, "address", f"{tenant}:{address}")
        if not await self.limiter.hit(self.per_account, "login", "account", account):
            await self._refuse(self.limiter, self.per_account, "account", account)

    async def failed(self, tenant: str, email: str, address: str | None) -> None:
        """After a refused password or code: the client address's count (the account's was counted by
        `attempt`). The address limit bounds guesses spread over many accounts; each account's own limit is
        the strict one."""
        if address:
            await self.limiter.hit(self.per_address, "login", "address", f"{tenant}:{address}")

    async def succeeded(self, tenant: str, email: str) -> None:
        """The right password or code: the account's count is forgiven (its owner is never slowed down by
        their own sign-ins; whoever passed knows the secret)."""
        await self.limiter.clear(self.per_account, "login", "account", f"{tenant}:{email.strip().lower()}")

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
