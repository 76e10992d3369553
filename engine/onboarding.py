"""Onboarding: the first-time steps of a tenant (schema deployed, first user, first API call, plan chosen),
kept as data on its row in the system tenant: `onboarding = {step: time done, or null}`.

A step is marked once; marking it again matches no row, so it writes nothing and notifies no process.
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from engine import catalog

STEPS = ("schema_deployed", "first_user", "first_api_call", "plan_chosen")


def fresh(plan_chosen: bool) -> dict[str, str | None]:
    """A new tenant's onboarding: nothing done, but the plan when its creator named one."""
    return {**dict.fromkeys(STEPS), "plan_chosen": datetime.now(UTC).isoformat() if plan_chosen else None}


async def mark(conn: AsyncConnection, step: str, *, tenant_id: str | None = None, slug: str | None = None) -> None:
    """Record `step` as done now for the tenant (by id or slug), unless it already is."""
    tenants = catalog.platform_tables()["tenants"]
    which = tenants.c.id == tenant_id if tenant_id is not None else tenants.c.slug == slug
    done = sa.func.jsonb_build_object(step, sa.func.to_jsonb(sa.func.now()))
    await conn.execute(tenants.update().where(which, sa.or_(tenants.c.onboarding[step].astext.is_(None),
                                                             tenants.c.onboarding[step] == sa.text("'null'::jsonb")))
                       .values(onboarding=tenants.c.onboarding.op("||")(done)))
