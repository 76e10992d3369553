"""`POST /functions/v1/{name}`: a function the tenant's schema exposes, called with a JSON body.

Who may call it is Casbin policy (`roles:` of the function; admin and service always may; a membership
role of the system tenant may for the tenants it is a member of), the function must come from the
registry of the tenant's kind (the platform's operations for the system tenant only: `engine/hooks.py`),
and each platform operation checks its caller again itself (`functions/access.py`); the body
is checked against the function's JSON Schema (`input:`, every error listed, 422), and the function
runs in one transaction as the tenant's role with the caller's data API and its time limit: whatever
it writes is kept only if it returns normally. It is the path Supabase's `functions.invoke` calls.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import orjson
import structlog
from jsonschema import ValidationError

from engine.authz import Caller, function_object, unrestricted
from engine.data import DataApi
from engine.database import quote_identifier
from engine.errors import BackSaasError, Forbidden, InvalidBody, Problem, ValidationFailed, input_refusal
from engine.hooks import HookContext, HookFailed, call, check_binding, resolve
from engine.limits import DEFAULT_BOUNDS, Bounds
from engine.schema.model import thaw
from engine.validation import FORMAT_CHECKER, TenantValidator


class FunctionNotFound(BackSaasError):
    code = "function_not_found"
    status = 404


def _where(error: ValidationError) -> str:
    """The dotted path of a JSON Schema error (for a missing property, the property's own path)."""
    path = [str(p) for p in error.absolute_path]
    if error.validator == "required" and isinstance(error.instance, dict):
        missing = [k for k in error.validator_value if k not in error.instance]
        path += missing[:1]
    return ".".join(path)


async def check_membership(conn: Any, runtime: Any, caller: Caller, name: str, payload: Any,
                           roles: tuple[str, ...]) -> None:
    """A function granted to membership roles (the system tenant's) acts on the tenant its input names
    as `tenant`: the caller's membership role there must be one of `roles`."""
    slug = payload.get("tenant") if isinstance(payload, dict) else None
    if not isinstance(slug, str):
        raise ValidationFailed(f"{name} acts on a tenant: name it", details=[Problem("tenant", "is required")])
    schema = quote_identifier(runtime.pg_schema)
    role = await conn.fetchval(f"SELECT m.role FROM {schema}.memberships m JOIN {schema}.tenants t ON t.id = m.tenant_id"
                               " WHERE t.slug = $1 AND m.user_id = $2::uuid", slug, caller.user_id)
    if role not in roles:
        raise Forbidden(f"invoking {name} for tenant '{slug}' needs membership as {' or '.join(roles)}")


async def invoke(runtime: Any, db: Any, caller: Caller, name: str, body: bytes,
                 bounds: Bounds = DEFAULT_BOUNDS) -> tuple[int, bytes]:
    exposed = next((f for f in runtime.model.functions if f.name == name), None)
    if exposed is None:
        raise FunctionNotFound(f"tenant '{runtime.slug}' exposes no function '{name}'",
                               hint=", ".join(f.name for f in runtime.model.functions) or None)
    obj = function_object(name)
    granted = unrestricted(caller) or runtime.authorizer.scope(caller.roles, obj, "invoke") is not None
    member_roles = () if granted or caller.user_id is None else runtime.authorizer.member_roles(obj, "invoke")
    if not granted and not member_roles:
        raise Forbidden(f"{' or '.join(caller.roles)} may not invoke {name}")
    fn = resolve(exposed.handler, "function")
    if fn is None:
        raise HookFailed(f"the function '{exposed.handler}' is not installed on this server")
    check_binding(fn, exposed.handler, runtime.slug)  # a platform operation bound by a tenant: 403, nothing runs
    try:
        payload = orjson.loads(body) if body.strip() else None
    except orjson.JSONDecodeError as exc:
        raise InvalidBody(f"the body is not valid JSON: {exc}") from exc
    if exposed.input is not None:
        validator = runtime.validators.get(("function", name))
        if validator is None:  # compiled once per runtime, like the entities' body validators
            validator = runtime.validators[("function", name)] = TenantValidator(thaw(exposed.input),
                                                                                format_checker=FORMAT_CHECKER)
        problems = [Problem(_where(e), e.message) for e in validator.iter_errors(payload)]
        if problems:
            raise ValidationFailed(f"{len(problems)} problem(s) with the input of {name}", details=problems)
    try:
        async with db.as_role(runtime.role) as conn, conn.transaction():
            if not granted:
                await check_membership(conn, runtime, caller, name, payload, member_roles)
            context = HookContext(runtime.slug, caller, f"function:{name}", DataApi(runtime, db, caller, conn, bounds),
                                  structlog.get_logger("backsaas.functions").bind(tenant=runtime.slug, function=name))
            result = await call(fn, exposed.handler, exposed.timeout, context, payload)
    except asyncpg.PostgresError as exc:  # the membership check refused the input (a NUL in `tenant`, say)
        refusal = input_refusal(exc)
        if refusal is None:
            raise
        raise refusal from exc
    return (204, b"") if result is None else (200, orjson.dumps(result))
