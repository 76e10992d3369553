"""Host -> tenant for custom domains: the gateway serves a tenant at each of its verified domains.

A request whose `Host` is neither the platform's (`BASE_DOMAIN`, its subdomains, `localhost`) nor an address
may be a tenant's custom domain (functions/domains.py). The answer (a slug, or None) is held per process,
so a host costs one query the first time; the cache is trusted only while the registry's LISTEN is up,
and the `DOMAINS_CHANGED` notification (a domain verified or removed, from any process) empties it at
once, so a removed domain stops being served on every process before its next request. It is bounded:
anyone can send any `Host`.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
from typing import Any

import sqlalchemy as sa

from engine import catalog
from engine.changes import tenant_key
from engine.channels import DOMAINS_CHANGED
from engine.errors import outages_as_unavailable

MAX_CACHED_HOSTS = 10_000


@functools.lru_cache(maxsize=4096)
def is_address(host: str) -> bool:
    """Whether `host` is an IP address (parsing one costs more than the rest of routing: memoized, bounded)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def host_of(headers: Any) -> str:
    """The request's host name, lowercase, without port or trailing dot."""
    host = next((v.decode("latin-1") for k, v in headers if k == b"host"), "")
    if host.startswith("["):  # an IPv6 literal
        return host.split("]")[0].lower() + "]"
    return host.split(":")[0].lower().rstrip(".")


class CustomDomains:
    """Verified custom domain -> tenant slug, cached per process (see the module's docstring)."""

    def __init__(self, state: Any, base_domain: str) -> None:
        self.state = state  # the app's state: its registry exists once the lifespan has started
        self.base = base_domain.lower().strip(".")
        self._hosts: dict[str, str | None] = {}
        self._served: set[str] = set()  # hosts that named a tenant once (bounded as `_hosts` is)
        self._changed: asyncio.Event | None = None

    def candidate(self, host: str) -> bool:
        """Whether `host` could be a custom domain (the platform's own names and addresses never are)."""
        if not host or "." not in host or host.startswith("[") or host == self.base or host.endswith("." + self.base):
            return False
        return not is_address(host)

    def knows(self, host: str) -> bool:
        """Whether `host` named a tenant here before, or its answer is held: looking it up is no probe for
        names (gateway/probes.py), even when a change emptied the cache."""
        return host in self._served or (host in self._hosts and self._changed is not None
                                        and not self._changed.is_set() and self.state.registry.changes.listening)

    async def slug_of(self, host: str) -> str | None:
        """The slug of the tenant verified for `host`, or None."""
        if not self.candidate(host):
            return None
        registry = self.state.registry
        if self._changed is None:
            self._changed = asyncio.Event()
            registry.changes.add([tenant_key(DOMAINS_CHANGED)], self._changed)
        if self._changed.is_set() or not registry.changes.listening:
            self._hosts.clear()
            self._changed.clear()
        elif host in self._hosts:
            return self._hosts[host]
        domains, tenants = catalog.platform_tables()["tenant_domains"], catalog.platform_tables()["tenants"]
        with outages_as_unavailable():
            async with registry.db.engine.connect() as conn:
                slug = await conn.scalar(sa.select(tenants.c.slug).join(domains, domains.c.tenant_id == tenants.c.id)
                                         .where(domains.c.domain == host, domains.c.verified_at.is_not(None)))
        if registry.changes.listening and not self._changed.is_set():
            if len(self._hosts) >= MAX_CACHED_HOSTS:
                self._hosts.clear()
            self._hosts[host] = slug
        if slug is not None:
            if len(self._served) >= MAX_CACHED_HOSTS:
                self._served.clear()
            self._served.add(host)
        return slug
