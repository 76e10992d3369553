"""Creating tenants: the slug rules, the tenant's row, its schema and role, and its first schema version.

All of it is one transaction: a tenant whose schema fails to deploy leaves no row, schema or role behind.
"""

from __future__ import annotations

import re

from engine import catalog
from engine.database import Database
from engine.errors import InvalidInput, Problem, TenantExists
from engine.storage.deploy import Deployment, Progress, create_tenant_schema, deploy_in

SLUG_PATTERN = re.compile(r"^[a-z][a-z0-9-]*$")
RESERVED_SLUGS = frozenset({"system", "api", "admin", "www", "platform", "auth", "rest", "graphql", "functions",
                            "static", "assets", "app", "dashboard", "status", "docs", "mail", "public"})


def slug_problems(slug: str) -> list[Problem]:
    problems = []
    if not 3 <= len(slug) <= 40:
        problems.append(Problem("slug", "must be 3 to 40 characters long"))
    if not SLUG_PATTERN.match(slug):
        problems.append(Problem("slug", "must start with a lowercase letter and hold only a-z, 0-9 and -"))
    if slug in RESERVED_SLUGS:
        problems.append(Problem("slug", f"'{slug}' is reserved"))
    return problems


def empty_schema(slug: str) -> str:
    return f"name: {slug.replace('-', '_')}\nentities: {{}}\n"


async def create_tenant(db: Database, slug: str, *, name: str | None = None, source: str | None = None,
                        actor: str = "engine", progress: Progress | None = None) -> Deployment:
    """Provision tenant `slug` running `source` (an empty schema if None) and return its first deployment."""
    problems = slug_problems(slug)
    if problems:
        raise InvalidInput(f"invalid tenant slug '{slug}'", details=problems)
    async with db.begin() as conn:
        if await catalog.find_tenant(conn, slug) is not None:
            raise TenantExists(f"tenant '{slug}' already exists")
        await catalog.insert_tenant(conn, slug, name or slug, "active")
        await create_tenant_schema(conn, db, slug)
        return await deploy_in(conn, db, slug, source or empty_schema(slug), actor=actor, progress=progress)
