"""The one seam every operation passes through: may this caller do this action on this entity, and on
which rows (`all`, or `own`: the rows whose owner_id is the caller).

Casbin decides (RBAC with domains; the domain is the tenant). Each tenant runtime holds its own
enforcer with only its own policies, generated from the schema's `permissions` when the runtime
compiles, and memoizes decisions by (roles, entity, action): the hot path is a dict lookup, and Casbin
stays the single source of every answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from casbin import Enforcer
from casbin.model import Model

from engine.errors import Forbidden
from engine.schema.model import Schema

MODEL = """
[request_definition]
r = sub, dom, obj, act

[policy_definition]
p = sub, dom, obj, act

[role_definition]
g = _, _, _

[policy_effect]
e = some(where (p.eft == allow))

[matchers]
m = g(r.sub, p.sub, r.dom) && r.dom == p.dom && (p.obj == "*" || r.obj == p.obj) && (p.act == "*" || r.act == p.act)
"""
UNRESTRICTED = ("admin", "service")  # every entity, every action, every row (within their tenant only)
SCOPES = ("all", "own")


@dataclass(frozen=True)
class Caller:
    """Who is acting: their roles in the tenant and, for a signed-in user, their id (the gateway builds
    it from the request's key; no credentials is the `anon` role)."""

    roles: tuple[str, ...]
    user_id: str | None = None


def policies(model: Schema, tenant: str) -> tuple[list[list[str]], list[list[str]]]:
    """(p rules, g rules) of one tenant: `p role tenant entity action:scope`, and every schema role
    inheriting what `authenticated` may do."""
    rules = [[role, tenant, "*", "*"] for role in UNRESTRICTED]
    for entity in model.entities:
        rules += [[g.role, tenant, entity.name, f"{g.action}:{g.scope}"] for g in entity.permissions]
    groupings = [[role, "authenticated", tenant] for role in model.roles]
    return rules, groupings


@dataclass
class Authorizer:
    """One tenant's enforcer and its memo of decisions (valid for the runtime version it belongs to)."""

    tenant: str
    enforcer: Enforcer
    decisions: dict[tuple[tuple[str, ...], str, str], str | None] = field(default_factory=dict)

    @classmethod
    def for_schema(cls, model: Schema, tenant: str) -> Authorizer:
        casbin_model = Model()
        casbin_model.load_model_from_text(MODEL)
        enforcer = Enforcer(casbin_model)
        rules, groupings = policies(model, tenant)
        enforcer.add_policies(rules)
        if groupings:
            enforcer.add_grouping_policies(groupings)
        return cls(tenant, enforcer)

    def scope(self, roles: tuple[str, ...], entity: str, action: str) -> str | None:
        """`all`, `own`, or None (denied): the widest scope any of the roles grants."""
        key = (roles, entity, action)
        if key not in self.decisions:
            self.decisions[key] = next(
                (scope for scope in SCOPES
                 if any(self.enforcer.enforce(role, self.tenant, entity, f"{action}:{scope}") for role in roles)),
                None)
        return self.decisions[key]


def authorize(authorizer: Authorizer, caller: Caller, entity: str, action: str) -> str:
    """The row scope the caller has for `action` on `entity`; `Forbidden` when they have none.

    `own` needs a signed-in caller: without a user id there are no rows of one's own."""
    scope = authorizer.scope(caller.roles, entity, action)
    if scope is None or (scope == "own" and caller.user_id is None):
        raise Forbidden(f"{' or '.join(caller.roles) or 'this caller'} may not {action} {entity}")
    return scope
