"""The rules of a schema that JSON Schema cannot state: names that resolve, fit together and are free.

`check` reads the raw YAML data defensively (it runs even when the structure is wrong, so that one report
holds every problem) and returns (path, message) pairs; it never raises and never builds SQL. Names may be
any YAML key (`1:`, `~:`): the loader reports those, and the rules here pass over them (`_named`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from engine import validation  # a module import: engine.validation imports the model, and so this package
from engine.schema.model import (
    ACTIONS,
    BUILTIN_ROLES,
    IMPLICIT_COLUMNS,
    OWNER_COLUMN,
    PLATFORM_ROLES,
    USERS,
    Field,
    freeze,
)

Finding = tuple[tuple[str | int, ...], str]

# PostgreSQL's reserved key words (reserved, and reserved-but-may-be-function-or-type) plus the words
# the REST dialect uses as query parameters: a column may not be named like either.
RESERVED_WORDS = frozenset("""
all analyse analyze and any array as asc asymmetric authorization binary both case cast check collate
collation column concurrently constraint create cross current_catalog current_date current_role
current_schema current_time current_timestamp current_user default deferrable desc distinct do else end
except false fetch for foreign freeze from full grant group having ilike in initially inner intersect into
is isnull join lateral leading left like limit localtime localtimestamp natural not notnull null offset on
only or order outer overlaps placing primary references returning right select session_user similar some
symmetric system_user table tablesample then to trailing true union unique user using variadic verbose
when where window with
columns on_conflict
""".split())

BUILTIN_USER_FIELDS: dict[str, dict[str, Any]] = {
    "email": {"type": "string", "format": "email", "max_length": 320, "required": True, "unique": True},
    "password_hash": {"type": "string", "max_length": 255, "internal": True},
    "roles": {"type": "array", "items": "string", "default": []},
    "verified": {"type": "boolean", "required": True, "default": False},
    # Supabase Auth's user_metadata beyond the declared fields: any JSON object, only through /auth/v1
    "user_metadata": {"type": "json", "internal": True},
}

TYPE_KEYWORDS = {
    "max_length": ("string", "text"),
    "min_length": ("string", "text"),
    "format": ("string", "text"),
    "pattern": ("string", "text"),
    "minimum": ("integer", "bigint", "number", "decimal"),
    "maximum": ("integer", "bigint", "number", "decimal"),
    "precision": ("decimal",),
    "scale": ("decimal",),
    "values": ("enum",),
    "items": ("array",),
    "schema": ("json",),
    "to": ("ref",),
    "on_delete": ("ref",),
    "reverse": ("ref",),
}
MAX_REF_NAME = 60  # the column gets `_id` and must fit PostgreSQL's 63 bytes


def with_builtin_users(data: dict[str, Any]) -> dict[str, Any]:
    """The schema with the built-in `users` entity added, or merged into the declared one."""
    entities = dict(data.get("entities") or {})
    declared = entities.get(USERS) if isinstance(entities.get(USERS), dict) else {}
    fields = dict(declared.get("fields") or {}) if isinstance(declared.get("fields"), dict) else {}
    entities[USERS] = {**declared, "fields": {**BUILTIN_USER_FIELDS, **fields}}
    return {**data, "entities": entities}


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _named(value: Any) -> Iterator[tuple[str, Any]]:
    """The items of a mapping whose keys are names (strings); the others are the loader's to report."""
    return ((name, spec) for name, spec in _mapping(value).items() if isinstance(name, str))


def check(data: Any, *, tenant: bool = False) -> list[Finding]:
    """Every semantic problem of `data`; `tenant`: a tenant's schema, which may not declare the platform's roles."""
    if not isinstance(data, dict):
        return []
    declared_users = _mapping(_mapping(_mapping(data.get("entities")).get(USERS)).get("fields"))
    findings: list[Finding] = [
        (("entities", USERS, "fields", name), f"'{name}' is a built-in field of users and cannot be redeclared")
        for name in declared_users if name in BUILTIN_USER_FIELDS
    ]
    data = with_builtin_users(data)
    entities = _mapping(data.get("entities"))
    roles = [r for r in data.get("roles") or () if isinstance(r, str)] if isinstance(data.get("roles"), list) else []
    findings += _check_roles(roles, tenant=tenant)
    known_roles = set(BUILTIN_ROLES) | set(roles)
    for name, spec in _named(entities):
        if not isinstance(spec, dict):
            continue
        at = ("entities", name)
        if name in RESERVED_WORDS:
            findings.append((at, f"'{name}' is a reserved word and cannot name an entity"))
        if name.startswith("backsaas_"):
            findings.append((at, f"'{name}': names starting with backsaas_ are the engine's"))
        findings += _check_fields(at, spec, entities)
        findings += _check_index_lists(at, spec)
        findings += _check_permissions(at, spec, known_roles)
        findings += _check_member_scope(at, name, spec, entities)
        findings += _check_hooks(at, spec)
    findings += _check_reverses(entities)
    findings += _check_renames(entities)
    findings += _check_functions(_mapping(data.get("functions")), known_roles)
    return findings


def _check_hooks(at: tuple[str, ...], spec: dict[str, Any]) -> Iterator[Finding]:
    """Webhooks and async functions run after commit: they cannot refuse or alter a change."""
    for event, items in _named(spec.get("hooks")):
        for index, item in enumerate(items if isinstance(items, list) else ()):
            after_commit = isinstance(item, dict) and ("webhook" in item or item.get("async") is True)
            if after_commit and not event.startswith("after_"):
                yield (*at, "hooks", event, index), "webhooks and async functions run after commit: use an after_* event"


def _check_functions(functions: dict[str, Any], roles: set[str]) -> Iterator[Finding]:
    for name, spec in functions.items():
        spec = _mapping(spec)
        for index, role in enumerate(spec.get("roles") or () if isinstance(spec.get("roles"), list) else ()):
            if role not in roles:
                yield ("functions", name, "roles", index), f"role '{role}' is not declared"
        if isinstance(spec.get("input"), dict):
            problem = validation.json_schema_problem(spec["input"])
            if problem:
                yield ("functions", name, "input"), problem


def _check_roles(roles: list[str], *, tenant: bool) -> Iterator[Finding]:
    for index, role in enumerate(roles):
        if role in BUILTIN_ROLES:
            yield ("roles", index), f"'{role}' is a built-in role and must not be declared"
        elif tenant and role in PLATFORM_ROLES:
            yield ("roles", index), f"'{role}' is a role of the platform and cannot be declared by a tenant"


def _check_fields(at: tuple[str, ...], spec: dict[str, Any], entities: dict[str, Any]) -> Iterator[Finding]:
    fields = _mapping(spec.get("fields"))
    columns: dict[str, str] = {}
    implicit = (*IMPLICIT_COLUMNS, OWNER_COLUMN)
    for name, fspec in _named(fields):
        here = (*at, "fields", name)
        if name in implicit:
            yield here, f"'{name}' is an implicit column of every entity and cannot be declared"
            continue
        ftype = fspec.get("type") if isinstance(fspec, dict) else None
        column = f"{name}_id" if ftype == "ref" else name
        if column in RESERVED_WORDS:
            yield here, f"'{name}' is a reserved word and cannot name a field"
        if not isinstance(ftype, str):
            continue
        if column in columns:
            yield here, f"column '{column}' would clash with field '{columns[column]}'"
        columns[column] = name
        yield from _check_field(here, name, fspec, entities)


def _check_field(here: tuple[str, ...], name: str, fspec: dict[str, Any], entities: dict[str, Any]) -> Iterator[Finding]:
    ftype = fspec["type"]
    for keyword, types in TYPE_KEYWORDS.items():
        if keyword in fspec and ftype not in types:
            yield (*here, keyword), f"'{keyword}' applies to {' or '.join(types)} fields, not {ftype}"
    yield from _check_bounds(here, fspec)
    if isinstance(fspec.get("schema"), dict):
        problem = validation.json_schema_problem(fspec["schema"])
        if problem:
            yield (*here, "schema"), problem
            return
    if isinstance(fspec.get("pattern"), str):
        problem = validation.pattern_problem(fspec["pattern"])
        if problem:
            yield (*here, "pattern"), problem
            return  # the default cannot be checked against it
    if ftype == "ref":
        target = fspec.get("to")
        if isinstance(target, str) and target not in entities:
            yield (*here, "to"), f"unknown entity '{target}'"
        if len(name) > MAX_REF_NAME:
            yield here, f"a ref field's name may have at most {MAX_REF_NAME} characters (its column adds '_id')"
        if fspec.get("on_delete") == "set_null" and fspec.get("required") is True:
            yield (*here, "on_delete"), "set_null cannot apply to a required field"
        if "default" in fspec:
            yield (*here, "default"), "a ref field cannot have a default"
    elif "default" in fspec:
        yield from _check_default(here, name, fspec)


def _check_bounds(here: tuple[str, ...], fspec: dict[str, Any]) -> Iterator[Finding]:
    for low, high in (("min_length", "max_length"), ("minimum", "maximum"), ("scale", "precision")):
        lo, hi = fspec.get(low), fspec.get(high)
        if isinstance(lo, int | float) and isinstance(hi, int | float) and lo > hi:
            yield (*here, low), f"{low} ({lo}) is greater than {high} ({hi})"
    if "scale" in fspec and "precision" not in fspec:
        yield (*here, "scale"), "scale needs a precision"


def _check_default(here: tuple[str, ...], name: str, fspec: dict[str, Any]) -> Iterator[Finding]:
    default = fspec["default"]
    ftype = fspec["type"]
    if default is None:
        return
    if ftype in ("date", "datetime") and default == "now":
        return
    try:
        field = Field(name=name, type=ftype, default=freeze(default),
                      **{k: freeze(fspec[k]) for k in TYPE_KEYWORDS if k in fspec and k not in ("to", "on_delete", "reverse")})
        errors = validation.value_errors(field, default)
    except (TypeError, KeyError, ValueError):
        return  # the structural check has already reported the malformed keyword
    for message in errors:
        yield (*here, "default"), f"default {default!r} does not fit the field: {message}"


def _check_index_lists(at: tuple[str, ...], spec: dict[str, Any]) -> Iterator[Finding]:
    fields = _mapping(spec.get("fields"))
    known = set(fields) | set(IMPLICIT_COLUMNS) | ({OWNER_COLUMN} if spec.get("owner") is True else set())
    for kind in ("indexes", "unique"):
        lists = spec.get(kind)
        if not isinstance(lists, list):
            continue
        seen: dict[tuple[str, ...], int] = {}
        for index, columns in enumerate(lists):
            if not isinstance(columns, list):
                continue
            for position, column in enumerate(columns):
                if isinstance(column, str) and column not in known:
                    yield (*at, kind, index, position), f"unknown field '{column}'"
            key = tuple(c for c in columns if isinstance(c, str))
            if key in seen:
                yield (*at, kind, index), f"same fields as {kind}[{seen[key]}]"
            seen.setdefault(key, index)


def _check_permissions(at: tuple[str, ...], spec: dict[str, Any], roles: set[str]) -> Iterator[Finding]:
    permissions = _mapping(spec.get("permissions"))
    for action in ACTIONS:
        for role, scope in _mapping(permissions.get(action)).items():
            here = (*at, "permissions", action, role)
            if role not in roles:
                yield here, f"role '{role}' is not declared (declare it under roles:, or use {', '.join(BUILTIN_ROLES)})"
            if scope == "own" and spec.get("owner") is not True:
                yield here, "scope 'own' needs `owner: true` on the entity"


MEMBER_ACTIONS = ("read", "delete")


def membership_roles(entities: dict[str, Any]) -> tuple[str, ...]:
    """The roles a `memberships` entity (ref `user`, ref `tenant` to `tenants`, enum `role`) hands out."""
    fields = _mapping(_mapping(entities.get("memberships")).get("fields"))
    user, tenant, role = (_mapping(fields.get(n)) for n in ("user", "tenant", "role"))
    if user.get("to") != USERS or tenant.get("to") != "tenants" or role.get("type") != "enum":
        return ()
    return tuple(v for v in role.get("values") or () if isinstance(v, str))


def _check_member_scope(at: tuple[str, ...], name: str, spec: dict[str, Any],
                        entities: dict[str, Any]) -> Iterator[Finding]:
    permissions = _mapping(spec.get("permissions"))
    roles = membership_roles(entities)
    by_tenant = name == "tenants" or _mapping(_mapping(spec.get("fields")).get("tenant")).get("to") == "tenants"
    for action in ACTIONS:
        for role, scope in _mapping(permissions.get(action)).items():
            if scope != "member":
                continue
            here = (*at, "permissions", action, role)
            if action not in MEMBER_ACTIONS:
                yield here, f"scope 'member' applies to {' and '.join(MEMBER_ACTIONS)} only (a write could move a row " \
                            "to another tenant)"
            if not roles:
                yield here, "scope 'member' needs a `memberships` entity with refs `user` (to users) and `tenant` " \
                            "(to tenants) and an enum `role`"
            elif role not in roles:
                yield here, f"'{role}' is not a membership role (one of {', '.join(roles)})"
            if not by_tenant:
                yield here, "scope 'member' needs the entity to be `tenants` or to have a ref `tenant` to tenants"


def _check_reverses(entities: dict[str, Any]) -> Iterator[Finding]:
    """Reverse relations appear on the target entity: they must not clash with its fields or each other."""
    claimed: dict[tuple[str, str], str] = {}
    for name, spec in entities.items():
        for fname, fspec in _mapping(_mapping(spec).get("fields")).items():
            if not isinstance(fspec, dict) or fspec.get("type") != "ref" or not isinstance(fspec.get("to"), str):
                continue
            target, here = fspec["to"], ("entities", name, "fields", fname)
            reverse = fspec.get("reverse") if isinstance(fspec.get("reverse"), str) else name
            target_fields = _mapping(_mapping(entities.get(target)).get("fields"))
            if reverse in target_fields or reverse in IMPLICIT_COLUMNS:
                yield here, f"reverse relation '{reverse}' clashes with field '{reverse}' of {target}; name it with reverse:"
            elif (target, reverse) in claimed:
                yield here, (f"reverse relation '{reverse}' on {target} is also claimed by {claimed[(target, reverse)]};"
                             " refs to the same entity must name their reverses with reverse:")
            else:
                claimed[(target, reverse)] = f"{name}.{fname}"


def _check_renames(entities: dict[str, Any]) -> Iterator[Finding]:
    def renames(items: dict[str, Any], at: tuple[str, ...]) -> Iterator[Finding]:
        sources: dict[str, str] = {}
        for name, spec in items.items():
            old = _mapping(spec).get("renamed_from")
            if not isinstance(old, str):
                continue
            if old in items:
                yield (*at, name, "renamed_from"), f"'{old}' still exists; a rename needs the old name gone"
            elif old in sources:
                yield (*at, name, "renamed_from"), f"'{old}' is already renamed to '{sources[old]}'"
            sources[old] = name

    yield from renames(entities, ("entities",))
    for name, spec in entities.items():
        yield from renames(_mapping(_mapping(spec).get("fields")), ("entities", name, "fields"))



