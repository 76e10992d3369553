"""The one seam every operation passes through: may this caller do this action on this entity, and on
which rows.

For now it reads the schema's `permissions` directly; the identity issue replaces the lookup with Casbin
and the row scope with a SQL predicate, without changing any caller.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.errors import Forbidden
from engine.schema.model import Entity

UNRESTRICTED = ("admin", "service")


@dataclass(frozen=True)
class Caller:
    """Who is acting. Until authentication lands, every request acts as the tenant's admin."""

    role: str = "admin"
    user_id: str | None = None


def authorize(caller: Caller, entity: Entity, action: str) -> str:
    """The row scope (`all` or `own`) the caller has for `action` on `entity`; `Forbidden` if none."""
    if caller.role in UNRESTRICTED:
        return "all"
    for grant in entity.permissions:
        if grant.action == action and grant.role == caller.role:
            return grant.scope
    raise Forbidden(f"role '{caller.role}' may not {action} {entity.name}")
