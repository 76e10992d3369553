"""(caller, entity, action) -> the permission a plan carries: the row scope as a plan `Condition` and the
columns the caller may use. The one place a row scope becomes a predicate, for every surface (the REST
parser, the GraphQL compiler and mutations, the hooked writer, hooks' and functions' data API) and every
operation kind: read, embed, filter and order through a relation, aggregate, the rows an update or a
delete touches, the row an upsert meets (the update's scope) and the rows a write returns (the read scope).

Casbin decides (`engine.authz.authorize`); this module turns the decision into plan values. It never builds
SQL, and it never sees a request: the caller's user id is a parameter of the plan, so a plan stays the
cache key of every request of its shape.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from engine.authz import MEMBER, Authorizer, Caller, authorize
from engine.errors import Forbidden
from engine.query.plan import NO_ROWS, Condition, Filter, Membership, Reference, Relation
from engine.schema.model import OWNER_COLUMN, USERS

CallerParam = Callable[[], int]  # adds the caller's user id to the plan's parameters; its index
TENANTS = "tenants"  # a `member` scope's rows are the tenant itself (system tenant), or rows of the tenant


@dataclass(frozen=True)
class Permission:
    """What one caller may reach of one entity for one action: `scope` (`all`, `own`, `member`, or `none`
    for rows a write returns to a caller who may not read them) and the columns it may use."""

    entity: str
    action: str
    scope: str
    columns: Mapping[str, str]
    member_roles: tuple[str, ...] = ()

    def predicate(self, caller_param: CallerParam) -> Condition | None:
        """The row scope as a condition of the plan (None: every row)."""
        if self.scope == "all":
            return None
        if self.scope == "own":
            return Condition("and", (Filter(OWNER_COLUMN, "eq", caller_param()),))
        if self.scope == MEMBER:
            column = "id" if self.entity == TENANTS else "tenant_id"
            return Condition("and", (Membership(column, caller_param(), self.member_roles),))
        return NO_ROWS


class Permissions:
    """The permissions of one caller in one tenant runtime (Casbin's decisions are memoized by the
    authorizer; what this adds is a dataclass per question)."""

    def __init__(self, authorizer: Authorizer, caller: Caller, columns: Mapping[str, Mapping[str, str]]) -> None:
        self.authorizer, self.caller, self.columns = authorizer, caller, columns

    def of(self, entity: str, action: str) -> Permission:
        """The caller's permission for `action` on `entity`; `Forbidden` when it has none."""
        scope = authorize(self.authorizer, self.caller, entity, action)
        roles = self.authorizer.member_roles(entity, action) if scope == MEMBER else ()
        return Permission(entity, action, scope, self.columns[entity], roles)

    def scope(self, entity: str, action: str, caller_param: CallerParam) -> Condition | None:
        """The row scope of `action` on `entity` as a plan condition; `Forbidden` when the caller has none."""
        return self.of(entity, action).predicate(caller_param)

    def shown(self, entity: str, caller_param: CallerParam) -> Condition | None:
        """The scope of what a write returns: the read scope, or no rows for a caller who may not read
        the entity (written, not shown: as PostgREST and Hasura answer)."""
        try:
            return self.scope(entity, "read", caller_param)
        except Forbidden:
            return NO_ROWS

    def references(self, entity: str, relations: Mapping[str, Relation], columns: Iterable[str],
                   caller_param: CallerParam) -> tuple[Reference, ...]:
        """The ref columns among `columns` a write of `entity` sets (its `relations` given), each with
        the rows of its target the caller may read, which its value must name: every write path's rule
        (engine/query/sql.py `referenced` puts it in the statement). None for a target the caller reads
        whole, where the foreign key alone decides; none for `users`, whose ids other rows are meant to
        name (assigned to, shared with) though a user reads only their own."""
        written = set(columns)
        found: dict[str, Reference] = {}
        for relation in relations.values():
            if relation.kind != "one" or relation.source_column not in written or relation.target == USERS \
                    or relation.source_column in found:
                continue
            scope = self.shown(relation.target, caller_param)
            if scope is not None:
                found[relation.source_column] = Reference(entity, relation.source_column, relation.target, scope)
        return tuple(found.values())

    def may(self, entity: str, action: str) -> bool:
        try:
            self.of(entity, action)
        except Forbidden:
            return False
        return True
