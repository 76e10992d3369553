"""Names of database objects: tenant schemas, tenant roles, constraints and indexes.

All of them are derived, never stored, so that the planner can name what it created in an earlier
deploy. PostgreSQL truncates identifiers at 63 bytes: a longer name keeps a readable head and gets a
short hash, so two long names never collide after truncation.
"""

from __future__ import annotations

import hashlib
import re

SYSTEM_TENANT = "system"
SLUG_PATTERN = re.compile(r"[a-z][a-z0-9-]*\Z")  # what a tenant's name may be (`SLUG_PATTERN.match`)
MAX_SLUG_LENGTH = 40
MAX_IDENTIFIER = 63


def fit(name: str) -> str:
    """`name`, or a unique shortening of it when PostgreSQL would truncate it."""
    if len(name) <= MAX_IDENTIFIER:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: MAX_IDENTIFIER - 9]}_{digest}"


def schema_name(slug: str) -> str:
    """The Postgres schema of a tenant: `system`, or `t_{slug}` (slugs use `-`, schemas `_`)."""
    return SYSTEM_TENANT if slug == SYSTEM_TENANT else fit(f"t_{slug.replace('-', '_')}")


def role_name(database: str, slug: str) -> str:
    """The NOLOGIN role owning a tenant's schema.

    Roles are global to a PostgreSQL cluster while schemas live in one database, so the role name
    carries the database's: two installations (or two test databases) on one server never share roles.
    """
    return fit(f"{database}_{schema_name(slug)}")


def gateway_role_name(database: str) -> str:
    """The LOGIN role of the request pool, a member of the tenant roles and nothing more.

    `{database}_gateway` is never a tenant role's name (those are `{database}_t_...` and `{database}_system`).
    """
    return fit(f"{database}_gateway")


def platform_gateway_role_name(database: str) -> str:
    """The LOGIN role of the platform's request pool (the system tenant's requests), a member of the system
    tenant's role alone, so that no tenant's request connection can become the platform's role."""
    return fit(f"{database}_gateway_platform")


def unique_name(table: str, columns: tuple[str, ...]) -> str:
    return fit(f"{table}_{'_'.join(columns)}_key")


def index_name(table: str, columns: tuple[str, ...]) -> str:
    return fit(f"ix_{table}_{'_'.join(columns)}")


def foreign_key_name(table: str, column: str) -> str:
    return fit(f"{table}_{column}_fkey")


def check_name(table: str, column: str) -> str:
    return fit(f"{table}_{column}_check")


def primary_key_name(table: str) -> str:
    return fit(f"{table}_pkey")


def trigger_name(table: str) -> str:
    return fit(f"{table}_touch_updated_at")


TOUCH_FUNCTION = "backsaas_touch_updated_at"
CHANGE_FUNCTION = "backsaas_notify_change"
LOG_FUNCTION = "backsaas_log_change"
CHANGE_LOG = "backsaas_changes"  # a realtime entity's changes, for Server-Sent Events
WATCHED = "backsaas_watched"  # the tables some process's streams watch: the change feed NOTIFYs only for those


def log_trigger_name(table: str) -> str:
    return fit(f"{table}_log_change")


def change_trigger_name(table: str) -> str:
    return fit(f"{table}_notify_change")
