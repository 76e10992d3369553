"""The one seam every operation passes through: may this caller do this action on this entity, and on
which rows (`all`; `own`: the rows whose owner_id is the caller; `member`: in the system tenant, the rows
of the tenants where the caller's membership role is granted the action).

Casbin decides (RBAC with domains; the domain is the tenant). Each tenant runtime holds its own
enforcer with only its own policies, generated from the schema's `permissions` when the runtime
compiles, and memoizes decisions by (roles, entity, action): the hot path is a dict lookup, and Casbin
stays the single source of every answer. `engine.authz.permissions` turns an answer into what every plan
carries (the row scope as a plan condition, the columns): the only place a scope becomes a predicate.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from casbin import Enforcer
from casbin.model import Model

from engine.errors import Forbidden, Problem, ProcessingRestricted, ValidationFailed
from engine.schema.model import USERS, Schema

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
UNRESTRICTED = ("admin", "service", "platform_admin")  # every entity, action and row: admin and service within
# their tenant only; platform_admin (a system-tenant account's role) in every tenant
VIEWER = "viewer"  # in a tenant (never the system tenant): a platform member with the `viewer` membership role,
# who reads every entity's rows and changes nothing; only the gateway grants it (tenant schemas may not name it)
SCOPES = ("all", "own")
MEMBER = "member"  # scope: rows of the tenants where the caller's membership role is granted it
MEMBERSHIPS = "memberships"


@dataclass(frozen=True)
class Caller:
    """Who is acting: their roles in the tenant and, for a signed-in user, their id and session (the
    gateway builds it from the request's key or access token; no credentials is the `anon` role)."""

    roles: tuple[str, ...]
    user_id: str | None = None
    session_id: str | None = None
    key_name: str | None = field(default=None, compare=False)  # the API key it came by, for the access log
    restricted: bool = field(default=False, compare=False)  # GDPR restriction: the user's data is read-only
    member_id: str | None = None  # a platform account acting in this tenant as its member (gateway/auth.py)


def membership_subject(role: str) -> str:
    """Membership roles are Casbin subjects of their own (`member:admin` is not the built-in `admin`)."""
    return f"member:{role}"


def membership_roles(model: Schema) -> tuple[str, ...]:
    entity = model.entity(MEMBERSHIPS)
    role = next((f for f in entity.fields if f.name == "role"), None) if entity else None
    return tuple(role.values) if role and role.values else ()


def policies(model: Schema, tenant: str, *, platform: bool = False) -> tuple[list[list[str]], list[list[str]]]:
    """(p rules, g rules) of one tenant: `p role tenant entity action:scope` (a `member` grant's subject is
    the membership role's, and so is a function's granted to a membership role), and every schema role
    inheriting what `authenticated` may do. A tenant's `viewer` reads every row of every entity (the
    platform's own schema has no such role: there `viewer` is a membership role)."""
    rules = [[role, tenant, "*", "*"] for role in UNRESTRICTED]
    if not platform:
        rules.append([VIEWER, tenant, "*", "read:all"])
    for entity in model.entities:
        rules += [[membership_subject(g.role) if g.scope == MEMBER else g.role, tenant, entity.name,
                   f"{g.action}:{g.scope}"] for g in entity.permissions]
    members = membership_roles(model)  # a function granted to a membership role acts on that member's tenants
    rules += [[membership_subject(role), tenant, function_object(f.name), f"invoke:{MEMBER}"] if role in members
              else [role, tenant, function_object(f.name), "invoke:all"] for f in model.functions for role in f.roles]
    groupings = [[role, "authenticated", tenant] for role in model.roles]
    return rules, groupings


def function_object(name: str) -> str:
    """The Casbin object of an exposed function (entities and functions share a tenant's policies)."""
    return f"function:{name}"


@dataclass
class Authorizer:
    """One tenant's enforcer and its memo of decisions (valid for the runtime version it belongs to)."""

    tenant: str
    enforcer: Enforcer
    memberships: tuple[str, ...] = ()  # the membership roles of the schema (the system tenant's)
    decisions: dict[tuple[tuple[str, ...], str, str], str | None] = field(default_factory=dict)
    member_decisions: dict[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def for_schema(cls, model: Schema, tenant: str, *, platform: bool = False) -> Authorizer:
        casbin_model = Model()
        casbin_model.load_model_from_text(MODEL)
        enforcer = Enforcer(casbin_model)
        rules, groupings = policies(model, tenant, platform=platform)
        enforcer.add_policies(rules)
        if groupings:
            enforcer.add_grouping_policies(groupings)
        return cls(tenant, enforcer, membership_roles(model))

    def scope(self, roles: tuple[str, ...], entity: str, action: str) -> str | None:
        """`all`, `own`, or None (denied): the widest scope any of the roles grants."""
        key = (roles, entity, action)
        if key not in self.decisions:
            self.decisions[key] = next(
                (scope for scope in SCOPES
                 if any(self.enforcer.enforce(role, self.tenant, entity, f"{action}:{scope}") for role in roles)),
                None)
        return self.decisions[key]

    def member_roles(self, entity: str, action: str) -> tuple[str, ...]:
        """The membership roles granted `action` on `entity` for their tenants' rows."""
        key = (entity, action)
        if key not in self.member_decisions:
            self.member_decisions[key] = tuple(
                role for role in self.memberships
                if self.enforcer.enforce(membership_subject(role), self.tenant, entity, f"{action}:{MEMBER}"))
        return self.member_decisions[key]


def unrestricted(caller: Caller) -> bool:
    """Whether the caller holds a role that may do anything in the tenant (admin, service, platform_admin)."""
    return any(role in UNRESTRICTED for role in caller.roles)


PRIVILEGED_USER_FIELDS = ("roles", "verified")


def assignable_roles(model: Schema) -> frozenset[str]:
    """The roles a user of a tenant of `model` may hold (their access token carries them): the schema's and
    the built-in ones but anon (a signed-in user is never anonymous)."""
    return frozenset(model.all_roles) - {"anon"}


def guard_user_fields(entity: str, caller: Caller, objects: Iterable[object], model: Schema) -> None:
    """Whoever may edit users must not grant themselves roles: only unrestricted callers set these fields;
    and the roles they give are roles of the tenant (a name it has not would be dropped from the user's
    token without a word)."""
    if entity != USERS:
        return
    objects = list(objects)
    if not unrestricted(caller):
        privileged = sorted({k for o in objects if isinstance(o, dict) for k in o if k in PRIVILEGED_USER_FIELDS})
        if privileged:
            raise Forbidden(f"only admin and service may set {', '.join(privileged)} of users",
                            details=[Problem(k, "is writable by admin and service only") for k in privileged])
    known = assignable_roles(model)
    unknown = sorted({str(r) for o in objects if isinstance(o, dict) and isinstance(o.get("roles"), list)
                      for r in o["roles"] if isinstance(r, str) and r not in known})  # others: the validator's
    if unknown:
        raise ValidationFailed(f"roles the tenant does not have: {', '.join(unknown)}",
                               details=[Problem("roles", f"expected roles among {', '.join(sorted(known))}")])


def authorize(authorizer: Authorizer, caller: Caller, entity: str, action: str) -> str:
    """The row scope the caller has for `action` on `entity` (`all`, `member`, `own`); `Forbidden` when none.

    `member` and `own` need a signed-in caller: without a user id there are no rows of one's own. A user
    whose processing is restricted (engine/gdpr.py) reads but writes nothing: 403 `processing_restricted`."""
    if caller.restricted and action != "read":
        raise ProcessingRestricted(f"the processing of this user's data is restricted: they may not {action} {entity}")
    scope = authorizer.scope(caller.roles, entity, action)
    if scope == "all":
        return scope
    if caller.user_id is not None and authorizer.member_roles(entity, action):
        return MEMBER
    if scope is None or caller.user_id is None:
        raise Forbidden(f"{' or '.join(caller.roles) or 'this caller'} may not {action} {entity}")
    return scope
