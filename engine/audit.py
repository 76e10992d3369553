"""The platform's audit log: one row per security-relevant event, in the system tenant's `audit_log`.

Written in the transaction of the change it records when there is one, so an event is never logged for
a change that rolled back (and a change never commits without its event).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from engine import catalog


async def record(conn: AsyncConnection, action: str, *, tenant_id: str | None, data: dict[str, Any] | None = None,
                 actor: str | None = None, entity: str | None = None, record_id: str | None = None,
                 ip: str | None = None) -> None:
    """Append an event: `action` like `auth.login_failed`; `actor` is a platform account, when there is one."""
    audit_log = catalog.platform_tables()["audit_log"]
    await conn.execute(audit_log.insert().values(tenant_id=tenant_id, actor_id=actor, action=action, entity=entity,
                                                 record_id=record_id, data=data or {}, ip=(ip or None) and ip[:45]))
