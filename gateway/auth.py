"""Authentication at the gateway: who is calling, from the request's credentials.

Supabase's clients send the tenant's API key as `apikey: K` and as `Authorization: Bearer K` until a user
signs in, then the user's access token as the bearer: the bearer decides who is calling, and an `apikey`
beside it must still be a valid key of this tenant. No credentials is the tenant's `anon` role.

- An API key of another tenant, or an access token issued by another tenant, is 401 `tenant_mismatch`;
  the exceptions are the system tenant's tokens of a platform admin, valid in every tenant, and of a
  member of the tenant (`memberships`, as the console acts): an owner, admin or developer acts as the
  tenant's `admin`, a viewer as its read-only `viewer`; anyone else's platform token is `tenant_mismatch`.
  Keys and tokens name their tenant by its id, never its slug: a slug taken again after its tenant
  was purged belongs to a new tenant, which the old tenant's credentials do not reach.
- Unknown, revoked or expired keys, and tokens that are forged, tampered, unsigned or expired, are 401.
- A request whose tenant came from `X-Tenant-ID` must be a platform admin's or carry the tenant's
  `service` key (403 `tenant_header_forbidden` otherwise).

A stream (SSE, GraphQL subscription) is authenticated like any request when it opens, then kept honest
by a `StreamGuard` (`stream_guard`): whenever what its credentials depend on changes (NOTIFY), it runs
the same checks again, plus that the token's session is still live, and ends the stream when they fail.
"""

from __future__ import annotations

import dataclasses
import functools
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime

from engine.authz import VIEWER, Caller, unrestricted
from engine.changes import CREDENTIALS, session_key, tenant_key
from engine.errors import BackSaasError, TenantNotFound, Unauthorized, outages_as_unavailable
from engine.identity import sessions
from engine.runtime import RuntimeRegistry, TenantRuntime
from engine.storage.naming import SYSTEM_TENANT
from engine.streams import StreamGuard
from functions.keys import KEY_PREFIX, key_hash

ANONYMOUS = Caller(roles=("anon",))
PLATFORM_ADMIN = "platform_admin"
# the tenant role a platform member acts as in their tenant, by membership role
MEMBER_ACTS_AS = {"owner": "admin", "admin": "admin", "developer": "admin", "viewer": VIEWER}


class TenantHeaderForbidden(BackSaasError):
    code = "tenant_header_forbidden"
    status = 403


# `key_hash`, memoized: each request of a client repeats its key, and the registry's key cache is by hash
hash_of = functools.lru_cache(maxsize=1024)(key_hash)


async def key_caller(registry: RuntimeRegistry, runtime: TenantRuntime, key: str) -> Caller:
    if not key.startswith(KEY_PREFIX):
        raise Unauthorized("invalid_api_key", "not a valid API key")
    hashed = hash_of(key)
    found = await registry.api_key(runtime.slug, hashed)
    if found is None:
        raise Unauthorized("invalid_api_key", "not a valid API key")
    if found.tenant_id != runtime.tenant_id:
        raise Unauthorized("tenant_mismatch", "this key belongs to another tenant")
    if found.revoked_at is not None:
        raise Unauthorized("key_revoked", "this API key has been revoked")
    if found.expires_at is not None and found.expires_at <= datetime.now(UTC):
        raise Unauthorized("key_expired", "this API key has expired")
    return Caller(roles=(found.role,), key_name=found.name)


async def token_caller(registry: RuntimeRegistry, runtime: TenantRuntime, token: str) -> Caller:
    claims = (await registry.keyring()).verify(token)
    roles, tenant, subject = claims["roles"], claims["tenant"], claims["sub"]
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles) or not isinstance(subject, str):
        raise Unauthorized("invalid_token", "the access token's claims are malformed")
    if tenant == runtime.tenant_id:
        session = claims.get("session_id")
        return Caller(tuple(roles), subject, session if isinstance(session, str) else None)
    if tenant == (await registry.get(SYSTEM_TENANT)).tenant_id:
        if PLATFORM_ADMIN in roles:
            return Caller((PLATFORM_ADMIN,))
        membership = await registry.membership_role(runtime.slug, runtime.tenant_id, subject)
        if membership is not None:
            return Caller((MEMBER_ACTS_AS[membership],), member_id=subject)
    raise Unauthorized("tenant_mismatch", "this access token was issued by another tenant")


def bearer_of(headers: Mapping[str, str]) -> str | None:
    value = headers.get("authorization", "")
    return value[7:].strip() or None if value[:7].lower() == "bearer " else None


async def authenticate(registry: RuntimeRegistry, runtime: TenantRuntime, headers: Mapping[str, str], *,
                       tenant_from_header: bool = False) -> Caller:
    apikey, bearer = headers.get("apikey"), bearer_of(headers)
    caller = await key_caller(registry, runtime, apikey) if apikey else ANONYMOUS
    if bearer and bearer != apikey:
        caller = await (key_caller if bearer.startswith(KEY_PREFIX) else token_caller)(registry, runtime, bearer)
    if tenant_from_header and PLATFORM_ADMIN not in caller.roles and caller.roles != ("service",):
        raise TenantHeaderForbidden("X-Tenant-ID is honoured only with a platform admin's token or the tenant's "
                                    "service key")
    return caller


HASURA_ROLE, HASURA_USER_ID = "x-hasura-role", "x-hasura-user-id"


class RoleNotAllowed(BackSaasError):
    code = "access-denied"
    status = 403


def acting_as(caller: Caller, headers: Mapping[str, str], runtime: TenantRuntime) -> Caller:
    """Hasura's `x-hasura-role` on the GraphQL surface: the request acts as one role of the caller's own,
    never a wider one (an app, or its developer, seeing what that role sees); a service or admin key may act
    as any role of the tenant's schema, and with `x-hasura-user-id` as that user (the key may already do
    anything that user may). Anything else is 403 `access-denied`, as Hasura answers."""
    role = headers.get(HASURA_ROLE)
    if role is None:
        return caller
    if role in caller.roles:
        return dataclasses.replace(caller, roles=(role,))
    if not unrestricted(caller) or role not in runtime.model.all_roles:
        raise RoleNotAllowed(f"the role '{role}' is not one of the caller's roles")
    user = headers.get(HASURA_USER_ID)
    if user is not None:
        try:
            user = str(uuid.UUID(user))
        except ValueError:
            raise RoleNotAllowed(f"{HASURA_USER_ID} '{user}' is not a user id") from None
    return Caller((role,), user_id=None if role == "anon" else user, key_name=caller.key_name)


async def session_live(registry: RuntimeRegistry, tenant_id: str, session_id: str) -> bool:
    """Whether the session (of the tenant that issued the token) has not been revoked."""
    try:
        uuid.UUID(tenant_id), uuid.UUID(session_id)
    except ValueError:
        return False
    with outages_as_unavailable():
        async with registry.db.engine.connect() as conn:
            return await sessions.is_live(conn, tenant_id, session_id)


async def stream_guard(registry: RuntimeRegistry, runtime: TenantRuntime, headers: Mapping[str, str], caller: Caller,
                       *, tenant_from_header: bool = False, hasura: bool = False) -> StreamGuard:
    """The guard of a stream opened with `headers` (which `authenticate` made `caller`, then with `hasura`
    `acting_as`): it ends the stream
    when the tenant is suspended, deleted or replaced, a key is revoked or expires, the access token
    expires or its session ends. Raises now (401 `session_ended`) for a token of an ended session."""
    bearer = bearer_of(headers)
    claims = (await registry.keyring()).verify(bearer) if bearer and not bearer.startswith(KEY_PREFIX) else None
    issuer = str(claims["tenant"]) if claims else runtime.tenant_id
    session = claims.get("session_id") if claims else None
    session = session if isinstance(session, str) else None
    watched = {tenant_key(runtime.slug), CREDENTIALS}
    sessions_watched = {session_key(session), session_key(issuer)} if session is not None else set()

    async def recheck(session_too: bool) -> None:
        current = await registry.get(runtime.slug)
        if current.tenant_id != runtime.tenant_id:
            raise TenantNotFound(f"tenant '{runtime.slug}' was deleted")
        now = await authenticate(registry, current, headers, tenant_from_header=tenant_from_header)
        if (acting_as(now, headers, current) if hasura else now) != caller:
            raise Unauthorized("credentials_changed", "the credentials no longer grant what they did")
        if session is not None and session_too and not await session_live(registry, issuer, session):
            raise Unauthorized("session_ended", "the session has ended (signed out or revoked); sign in again")

    guard = StreamGuard(registry.changes, watched, sessions_watched, float(claims["exp"]) if claims else None, recheck)
    try:
        await recheck(True)  # after the guard watches: nothing between this check and the stream goes unheard
    except BaseException:
        guard.close()
        raise
    return guard
