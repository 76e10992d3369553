"""Custom domains of a tenant (plan feature `custom_domain`), as the platform's operations.

A tenant's owner adds a domain (`add_domain`) and is given a token to publish as a DNS TXT record,
`_backsaas-challenge.{domain}` holding `backsaas-verify={token}`; `verify_domain` looks the record up
(dnspython's resolver, or whatever `use_resolver` installed: the tests' fake) and, once it holds the token,
marks the domain verified. From then on the gateway serves the tenant at that host on every surface
(gateway/domains.py). `remove_domain` deletes it and NOTIFYs `DOMAINS_CHANGED`, so that every gateway
process stops serving it at once. Every change is audited.

A claim proves nothing, so it reserves nothing: several tenants may claim one domain, each with its own
token (else whoever claims first squats on someone else's name), and the first to verify holds it. The
others' verify is then 409 `domain_taken`, as is any new claim of a verified domain. One verified row per
domain is the database's rule too (a partial unique index, engine/storage/deploy.py); claims and
verifications of a domain are serialised by a transaction lock on its name. An unverified claim older
than 7 days expires: it is deleted (and audited) when anyone next claims or verifies that domain.

The DNS lookup runs outside any transaction (a slow resolver holds no connection); the domain is written
in one transaction afterwards.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
from datetime import timedelta
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from engine import audit, catalog
from engine.channels import CHANGES_CHANNEL, DOMAINS_CHANGED
from engine.errors import BackSaasError, Problem, ValidationFailed
from engine.hooks import HookContext, platform_function
from engine.plans import Plan, plan_of, require_feature
from functions.access import MANAGERS, OWNERS, authorize

FEATURE = "custom_domain"
CHALLENGE = "_backsaas-challenge"
PREFIX = "backsaas-verify="
CLAIM_DAYS = 7  # an unverified claim expires after this


class DomainTaken(BackSaasError):
    code = "domain_taken"
    status = 409


class DomainNotFound(BackSaasError):
    code = "domain_not_found"
    status = 404


class DomainNotVerified(BackSaasError):
    code = "domain_not_verified"
    status = 422


class TxtResolver(Protocol):
    async def txt(self, name: str) -> list[str]:
        """The TXT strings published at `name` (empty when there are none)."""
        ...


class DnsResolver:
    """dnspython's asynchronous resolver, with the system's name servers and a short lifetime."""

    def __init__(self, lifetime: float = 5.0) -> None:
        self.lifetime = lifetime

    async def txt(self, name: str) -> list[str]:
        import dns.asyncresolver
        import dns.exception
        import dns.resolver

        try:
            answer = await dns.asyncresolver.Resolver().resolve(name, "TXT", lifetime=self.lifetime)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except (dns.resolver.NoNameservers, dns.exception.Timeout) as exc:
            raise DomainNotVerified(f"the DNS lookup of {name} failed: {exc}; try again later") from exc
        return [b"".join(record.strings).decode("utf-8", "replace") for record in answer]


_resolver: TxtResolver = DnsResolver()


def use_resolver(resolver: TxtResolver) -> TxtResolver:
    """Install the resolver verify_domain asks (tests install a fake one); returns the previous one."""
    global _resolver
    previous, _resolver = _resolver, resolver
    return previous


def base_domain() -> str:
    return os.environ.get("BASE_DOMAIN", "localhost").lower().strip(".")


def normalise(domain: Any) -> str:
    """A host name in lowercase ASCII (IDNA), checked: labels of letters, digits and hyphens, two at least;
    not an address, and not the platform's own domain or one of its subdomains."""
    text = str(domain).strip().lower().rstrip(".")
    try:
        ascii_name = text.encode("idna").decode("ascii")
    except UnicodeError:
        ascii_name = ""
    labels = ascii_name.split(".")
    valid = (0 < len(ascii_name) <= 253 and len(labels) >= 2 and not labels[-1].isdigit()
             and all(0 < len(label) <= 63 and label[0] != "-" and label[-1] != "-"
                     and all(c.isalnum() or c == "-" for c in label) for label in labels))
    try:
        ipaddress.ip_address(text)
        valid = False
    except ValueError:
        pass
    if not valid:
        raise ValidationFailed("not a domain name", details=[Problem("domain", f"'{text[:253]}' is not a host name")])
    base = base_domain()
    if ascii_name == base or ascii_name.endswith("." + base):
        raise ValidationFailed("the platform's own domain", details=[Problem("domain", f"is under {base}, the platform's")])
    return ascii_name


async def _tenant(conn: AsyncConnection, slug: str, feature: bool = True) -> str:
    tenant = await catalog.find_tenant(conn, slug)
    if tenant is None or tenant.status == "deleted":
        raise DomainNotFound(f"no tenant '{slug}'")
    if feature:
        require_feature(await plan_of(conn, tenant.plan) or Plan(tenant.plan), FEATURE)
    return tenant.id


async def _changed(conn: AsyncConnection) -> None:
    await conn.execute(sa.select(sa.func.pg_notify(CHANGES_CHANNEL, DOMAINS_CHANGED)))


def record_of(domain: str, token: str) -> dict[str, str]:
    return {"name": f"{CHALLENGE}.{domain}", "type": "TXT", "value": f"{PREFIX}{token}"}


async def _lock(conn: AsyncConnection, domain: str) -> None:
    """Serialise, until the transaction ends, every claim and verification of `domain`."""
    await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(sa.func.hashtext("backsaas-domain:" + domain))))


async def _expire(conn: AsyncConnection, domain: str) -> None:
    """Delete the unverified claims of `domain` older than CLAIM_DAYS, whichever tenant made them."""
    domains = catalog.platform_tables()["tenant_domains"]
    expired = await conn.execute(domains.delete().where(
        domains.c.domain == domain, domains.c.verified_at.is_(None),
        domains.c.created_at < sa.func.now() - timedelta(days=CLAIM_DAYS)).returning(domains.c.id, domains.c.tenant_id))
    for row in expired:
        await audit.record(conn, "domain.expired", tenant_id=str(row.tenant_id), entity="tenant_domains",
                           record_id=str(row.id), data={"domain": domain})


async def _refuse_if_held(conn: AsyncConnection, domain: str, tenant_id: str) -> None:
    """DomainTaken when another tenant holds `domain` verified."""
    domains = catalog.platform_tables()["tenant_domains"]
    held = await conn.scalar(sa.select(domains.c.id).where(
        domains.c.domain == domain, domains.c.verified_at.is_not(None), domains.c.tenant_id != tenant_id))
    if held is not None:
        raise DomainTaken(f"{domain} is verified by another tenant", details=[Problem("domain", "is taken")])


def _taken(exc: IntegrityError) -> bool:
    return getattr(exc.orig, "sqlstate", None) == "23505"


@platform_function
async def add_domain(ctx: HookContext, payload: dict[str, Any]) -> dict[str, Any]:
    """add_domain: claim a domain for the tenant; the answer is the TXT record that proves it."""
    actor = await authorize(ctx, payload["tenant"], OWNERS)
    domain = normalise(payload["domain"])
    domains = catalog.platform_tables()["tenant_domains"]
    token = secrets.token_urlsafe(24)
    try:
        async with ctx.data.db.begin() as conn:
            tenant_id = await _tenant(conn, payload["tenant"])
            await _lock(conn, domain)
            await _expire(conn, domain)
            await _refuse_if_held(conn, domain, tenant_id)
            await conn.execute(domains.insert().values(tenant_id=tenant_id, domain=domain, token=token))
            await audit.record(conn, "domain.added", tenant_id=tenant_id, actor=actor.user_id, entity="tenant_domains",
                               data={"domain": domain})
    except IntegrityError as exc:
        if _taken(exc):  # (tenant, domain) is unique: the tenant claimed it already
            raise DomainTaken(f"the tenant has already claimed {domain}", details=[Problem("domain", "is claimed")]) from exc
        raise
    return {"tenant": payload["tenant"], "domain": domain, "verified": False, "record": record_of(domain, token)}


@platform_function
async def verify_domain(ctx: HookContext, payload: dict[str, Any]) -> dict[str, Any]:
    """verify_domain: look up the TXT record; verified once it holds the domain's token, unless another
    tenant verified the domain first (409 domain_taken)."""
    actor = await authorize(ctx, payload["tenant"], MANAGERS)
    domain = normalise(payload["domain"])
    domains = catalog.platform_tables()["tenant_domains"]
    async with ctx.data.db.begin() as conn:
        tenant_id = await _tenant(conn, payload["tenant"])
        await _lock(conn, domain)
        await _expire(conn, domain)
        row = (await conn.execute(sa.select(domains.c.id, domains.c.token, domains.c.verified_at)
                                  .where(domains.c.tenant_id == tenant_id, domains.c.domain == domain))).first()
    if row is None:
        raise DomainNotFound(f"tenant '{payload['tenant']}' has no domain {domain} (an unverified claim expires "
                             f"after {CLAIM_DAYS} days: add it again)")
    async with ctx.data.db.begin() as conn:
        await _refuse_if_held(conn, domain, tenant_id)  # before asking DNS: nothing it says would change that
    record = record_of(domain, row.token)
    published = await _resolver.txt(record["name"])
    found = record["value"] in (value.strip() for value in published)
    try:
        async with ctx.data.db.begin() as conn:
            await _lock(conn, domain)
            await _refuse_if_held(conn, domain, tenant_id)  # another tenant may have verified during the lookup
            values: dict[str, Any] = {"checked_at": sa.func.now(),
                                      "last_error": None if found else f"{record['name']} has no TXT record {record['value']}"}
            if found and row.verified_at is None:
                values["verified_at"] = sa.func.now()
            updated = await conn.scalar(domains.update().where(domains.c.id == row.id).values(**values)
                                        .returning(domains.c.id))
            if updated is None:
                raise DomainNotFound(f"tenant '{payload['tenant']}' no longer has domain {domain}")
            if found:
                await audit.record(conn, "domain.verified", tenant_id=tenant_id, actor=actor.user_id,
                                   entity="tenant_domains", record_id=str(row.id), data={"domain": domain})
                await _changed(conn)
    except IntegrityError as exc:
        if _taken(exc):  # the partial unique index: one verified row per domain
            raise DomainTaken(f"{domain} is verified by another tenant", details=[Problem("domain", "is taken")]) from exc
        raise
    if not found:
        raise DomainNotVerified(f"{record['name']} does not hold the TXT record {record['value']} (yet)",
                                details=[Problem("domain", "the TXT record was not found")],
                                hint="publish the record, wait for DNS to carry it, then verify again")
    return {"tenant": payload["tenant"], "domain": domain, "verified": True, "record": record}


@platform_function
async def remove_domain(ctx: HookContext, payload: dict[str, Any]) -> dict[str, Any]:
    """remove_domain: the tenant is no longer served at the domain, on every process at once."""
    actor = await authorize(ctx, payload["tenant"], OWNERS)
    domain = normalise(payload["domain"])
    domains = catalog.platform_tables()["tenant_domains"]
    async with ctx.data.db.begin() as conn:
        tenant_id = await _tenant(conn, payload["tenant"], feature=False)
        removed = await conn.scalar(domains.delete().where(domains.c.tenant_id == tenant_id, domains.c.domain == domain)
                                    .returning(domains.c.id))
        if removed is None:
            raise DomainNotFound(f"tenant '{payload['tenant']}' has no domain {domain}")
        await audit.record(conn, "domain.removed", tenant_id=tenant_id, actor=actor.user_id, entity="tenant_domains",
                           record_id=str(removed), data={"domain": domain})
        await _changed(conn)
    return {"tenant": payload["tenant"], "domain": domain, "removed": True}
