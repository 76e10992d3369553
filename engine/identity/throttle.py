"""Failed sign-ins are rate limited per account and per client address (moving windows, `limits`).

Only failures count: a user who signs in correctly is never slowed down. Counters live in memory, or in
Redis when `REDIS_URL` is set so that every server process shares them.
"""

from __future__ import annotations

import math
import time

from limits import RateLimitItem, parse, storage
from limits.aio.strategies import MovingWindowRateLimiter

from engine.errors import TooManyAttempts

PER_ACCOUNT = "5/5 minutes"
PER_ADDRESS = "30/5 minutes"


class LoginThrottle:
    def __init__(self, redis_url: str | None = None, per_account: str = PER_ACCOUNT,
                 per_address: str = PER_ADDRESS) -> None:
        backend = storage.storage_from_string(f"async+{redis_url}" if redis_url else "async+memory://")
        self.limiter = MovingWindowRateLimiter(backend)
        self.per_account: RateLimitItem = parse(per_account)
        self.per_address: RateLimitItem = parse(per_address)

    def _limits(self, tenant: str, email: str, address: str | None) -> list[tuple[RateLimitItem, str, str]]:
        checks = [(self.per_account, "account", f"{tenant}:{email.strip().lower()}")]
        if address:
            checks.append((self.per_address, "address", f"{tenant}:{address}"))
        return checks

    async def check(self, tenant: str, email: str, address: str | None) -> None:
        """`TooManyAttempts` (429, with the seconds to wait) when the account or the address is locked out."""
        for item, kind, key in self._limits(tenant, email, address):
            if not await self.limiter.test(item, "login", kind, key):
                stats = await self.limiter.get_window_stats(item, "login", kind, key)
                wait = max(1, math.ceil(stats.reset_time - time.time()))
                raise TooManyAttempts(f"too many failed sign-ins for this {kind}; try again later", wait)

    async def failed(self, tenant: str, email: str, address: str | None) -> None:
        for item, kind, key in self._limits(tenant, email, address):
            await self.limiter.hit(item, "login", kind, key)
