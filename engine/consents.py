"""Consent records of a tenant's users, kept in the system tenant (`consents`): append-only, so the history
is the table itself and a user's current consent of a type is its latest record.

A record says what (`type`, e.g. `marketing_email`), whether it was granted or withdrawn, under which
version of the policy, where it was given (`source`: the app's sign-up form, a settings page, `api`) and
when (`created_at`). Users record and read their own at `/auth/v1/privacy/consents`; the tenant's admins read
any user's at `/privacy/v1/users/{id}/consents`. Recording is audited (ids and the type, no personal values).
"""

from __future__ import annotations

import re
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from engine import audit, catalog
from engine.errors import Problem, ValidationFailed

CONSENT_TYPE = re.compile(r"[a-z][a-z0-9_.-]{0,79}\Z")


def consent_problems(body: dict[str, Any]) -> list[Problem]:
    problems = []
    if not isinstance(body.get("type"), str) or not CONSENT_TYPE.match(body["type"]):
        problems.append(Problem("type", "is a lowercase name of at most 80 characters (a-z, 0-9, _ . -)"))
    if not isinstance(body.get("granted"), bool):
        problems.append(Problem("granted", "is true (granted) or false (withdrawn)"))
    version = body.get("policy_version")
    if not isinstance(version, str) or not 0 < len(version) <= 40:
        problems.append(Problem("policy_version", "is required, at most 40 characters"))
    source = body.get("source", "api")
    if not isinstance(source, str) or not 0 < len(source) <= 80:
        problems.append(Problem("source", "is at most 80 characters"))
    unknown = sorted(set(body) - {"type", "granted", "policy_version", "source"})
    problems += [Problem(k, "is not a field of a consent") for k in unknown]
    return problems


def consent_json(row: Any) -> dict[str, Any]:
    return {"id": str(row.id), "type": row.type, "granted": row.granted, "policy_version": row.policy_version,
            "source": row.source, "at": row.created_at.isoformat()}


async def record_consent(conn: AsyncConnection, tenant_id: str, user_id: str, body: dict[str, Any]) -> dict[str, Any]:
    """Append a consent record (checked; 422 with each field at fault)."""
    problems = consent_problems(body)
    if problems:
        raise ValidationFailed(f"{len(problems)} problem(s) with the consent", details=problems)
    consents = catalog.platform_tables()["consents"]
    row = (await conn.execute(consents.insert().values(
        tenant_id=tenant_id, user_id=user_id, type=body["type"], granted=body["granted"],
        policy_version=body["policy_version"], source=body.get("source", "api"))
        .returning(consents.c.id, consents.c.type, consents.c.granted, consents.c.policy_version, consents.c.source,
                   consents.c.created_at))).one()
    await audit.record(conn, "privacy.consent_recorded", tenant_id=tenant_id, entity="consents", record_id=str(row.id),
                       data={"user_id": user_id, "type": row.type, "granted": row.granted})
    return consent_json(row)


async def consent_state(conn: AsyncConnection, tenant_id: str, user_id: str) -> dict[str, Any]:
    """`current`: the latest record of each type; `history`: every record, oldest first."""
    consents = catalog.platform_tables()["consents"]
    rows = (await conn.execute(
        sa.select(consents.c.id, consents.c.type, consents.c.granted, consents.c.policy_version, consents.c.source,
                  consents.c.created_at)
        .where(consents.c.tenant_id == tenant_id, consents.c.user_id == user_id)
        .order_by(consents.c.created_at, consents.c.id))).all()
    history = [consent_json(r) for r in rows]
    current: dict[str, Any] = {}
    for record in history:
        current[record["type"]] = record
    return {"current": current, "history": history}
