"""Names that resolve to no tenant spend their address's anonymous budget.

Why: a request names its tenant by slug (the path or a subdomain) or by a custom domain (its `Host`). A name
this process has not cached costs a query on the platform's small connection pool, before anything else is
checked: rate limits are a tenant's, and there is no tenant yet. Random slugs or hosts, from anyone and
without a credential, would make every request such a query and keep the pool that every tenant's cold
lookups share busy. So a name that resolves to nothing counts against its address's anonymous budget, as a
failed authentication does (gateway/ratelimit.py `admit_failed`: the same windows, the same 429); once an
address has spent it, its lookups of names the process has not cached are refused (429) before the query.
Names the process holds (every tenant it serves) cost no query and are served as before, to that address too.
"""

from __future__ import annotations

from starlette.types import Scope

from gateway.ratelimit import RateLimits

NO_TENANT = ""  # the budget of lookups, which belong to no tenant


def address_of(scope: Scope) -> str | None:
    client = scope.get("client")
    return client[0] if client else None


async def before_lookup(rate_limits: RateLimits, scope: Scope) -> None:
    """Before a query for a name this process has not cached: 429 when the address spent its budget."""
    window = await rate_limits.refused_address(NO_TENANT, address_of(scope))
    if window is not None:
        raise window.error()


async def unknown_name(rate_limits: RateLimits, scope: Scope) -> None:
    """The name looked up resolves to no tenant: its address's budget pays (429 once it is spent)."""
    window = await rate_limits.admit_failed(NO_TENANT, NO_TENANT, address_of(scope))
    if window is not None:
        raise window.error()
