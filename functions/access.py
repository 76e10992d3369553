"""Who may perform a platform operation: decided here, in one place, by every platform operation itself.

A platform operation (`functions/tenants.py`, `members.py`, `deploys.py`) acts on any tenant through the
platform's own connection, so it never relies on whoever bound or invoked it having checked its caller
(wall 4 of DESIGN.md): its first line is `authorize` (or `in_platform`, for the hooks on the platform's
own entities), which answers with an `Actor` or refuses. The actors are:

- a platform admin: a caller of the system tenant holding `platform_admin` (or the system tenant's own
  admin or service role), for every tenant;
- a signed-in platform account whose membership role in the tenant acted on is one the operation allows;
- the server itself (the CLI, provisioning): `SYSTEM` or `system_actor(...)`, which only code can pass.

It never trusts roles of a context that is not the system tenant's (a tenant may name a role
`platform_admin`, and a platform admin's token inside a tenant carries no user), and a caller without a
user id is never a member, let alone an owner.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import sqlalchemy as sa

from engine import catalog
from engine.authz import unrestricted
from engine.errors import Forbidden
from engine.hooks import HookContext, PlatformOnly
from engine.storage.naming import SYSTEM_TENANT

PLATFORM_ADMIN = "platform_admin"
SYSTEM_ROLE = "system"
OWNERS = ("owner",)
MANAGERS = ("owner", "admin")
DEVELOPERS = ("owner", "admin", "developer")
MEMBERS = ("owner", "admin", "developer", "viewer")
PLATFORM_ADMINS_ONLY: tuple[str, ...] = ()


@dataclass(frozen=True)
class Actor:
    """Who performs a platform operation, once `authorize` (or the server's own code) said so."""

    role: str  # SYSTEM_ROLE, PLATFORM_ADMIN, or a membership role held in `tenant`
    user_id: str | None = None
    tenant: str | None = None  # the tenant a membership role is held in; None for the platform-wide actors
    label: str = "engine"  # how schema history names them

    @property
    def platform_wide(self) -> bool:
        return self.role in (SYSTEM_ROLE, PLATFORM_ADMIN)

    def check_tenant(self, slug: str) -> None:
        """A member acts only in the tenant their role was found in."""
        if not self.platform_wide and self.tenant != slug:
            raise Forbidden(f"this actor was authorized for tenant '{self.tenant}', not '{slug}'")


def system_actor(label: str) -> Actor:
    """The server acting on its own behalf (the CLI as `cli:<user>`, provisioning): every tenant."""
    return Actor(SYSTEM_ROLE, None, None, label)


SYSTEM = system_actor("engine")


def in_platform(ctx: HookContext) -> None:
    """A platform operation runs for the system tenant only, whatever bound it."""
    if ctx.tenant != SYSTEM_TENANT:
        raise PlatformOnly(f"{ctx.event} is an operation of the platform: it runs at /api/platform only")


def is_platform_admin(ctx: HookContext) -> bool:
    return ctx.tenant == SYSTEM_TENANT and unrestricted(ctx.caller)


def _label(ctx: HookContext) -> str:
    return f"user:{ctx.caller.user_id}" if ctx.caller.user_id else "service"


async def authorize(ctx: HookContext, slug: str, roles: tuple[str, ...]) -> Actor:
    """The caller of platform operation `ctx.event` acting on tenant `slug`, if they may: a platform admin,
    or a signed-in platform account whose membership role in `slug` is one of `roles` (an empty `roles`:
    platform admins only). Forbidden otherwise, with the same answer whether or not `slug` exists."""
    in_platform(ctx)
    if is_platform_admin(ctx):
        return Actor(PLATFORM_ADMIN, ctx.caller.user_id, None, _label(ctx))
    operation = ctx.event.removeprefix("function:")
    if not roles:
        raise Forbidden(f"{operation} is for platform admins")
    needed = f"{operation} for tenant '{slug}' needs membership as {' or '.join(roles)}"
    user_id = ctx.caller.user_id
    if user_id is None:
        raise Forbidden(f"{needed}: sign in with a platform account")
    try:
        uuid.UUID(user_id)
    except ValueError:
        raise Forbidden(needed) from None
    tenants, memberships = catalog.platform_tables()["tenants"], catalog.platform_tables()["memberships"]
    async with ctx.data.db.begin() as conn:
        role = await conn.scalar(sa.select(memberships.c.role).join(tenants, tenants.c.id == memberships.c.tenant_id)
                                 .where(tenants.c.slug == slug, memberships.c.user_id == user_id))
    if role not in roles:
        raise Forbidden(needed)
    return Actor(role, user_id, slug, _label(ctx))
