"""Authentication at the gateway: who is calling, from the request's credentials.

Supabase's clients send the tenant's API key as `apikey: K` and as `Authorization: Bearer K` until a user
signs in, then the user's access token as the bearer: the bearer decides who is calling, and an `apikey`
beside it must still be a valid key of this tenant. No credentials is the tenant's `anon` role.

- An API key of another tenant, or an access token issued by another tenant, is 401 `tenant_mismatch`;
  the one exception is a platform admin's token (issued by the system tenant), valid in every tenant.
- Unknown, revoked or expired keys, and tokens that are forged, tampered, unsigned or expired, are 401.
- A request whose tenant came from `X-Tenant-ID` must be a platform admin's or carry the tenant's
  `service` key (403 `tenant_header_forbidden` otherwise).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from engine.authz import Caller
from engine.errors import BackSaasError, Unauthorized
from engine.runtime import RuntimeRegistry, TenantRuntime
from engine.storage.naming import SYSTEM_TENANT
from functions.keys import KEY_PREFIX, key_hash

ANONYMOUS = Caller(roles=("anon",))
PLATFORM_ADMIN = "platform_admin"


class TenantHeaderForbidden(BackSaasError):
    code = "tenant_header_forbidden"
    status = 403


async def key_caller(registry: RuntimeRegistry, runtime: TenantRuntime, key: str) -> Caller:
    if not key.startswith(KEY_PREFIX):
        raise Unauthorized("invalid_api_key", "not a valid API key")
    found = await registry.api_key(runtime.slug, key_hash(key))
    if found is None:
        raise Unauthorized("invalid_api_key", "not a valid API key")
    if found.tenant_id != runtime.tenant_id:
        raise Unauthorized("tenant_mismatch", "this key belongs to another tenant")
    if found.revoked_at is not None:
        raise Unauthorized("key_revoked", "this API key has been revoked")
    if found.expires_at is not None and found.expires_at <= datetime.now(UTC):
        raise Unauthorized("key_expired", "this API key has expired")
    return Caller(roles=(found.role,))


async def token_caller(registry: RuntimeRegistry, runtime: TenantRuntime, token: str) -> Caller:
    claims = (await registry.keyring()).verify(token)
    roles, tenant, subject = claims["roles"], claims["tenant"], claims["sub"]
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles) or not isinstance(subject, str):
        raise Unauthorized("invalid_token", "the access token's claims are malformed")
    if tenant == runtime.slug:
        session = claims.get("session_id")
        return Caller(tuple(roles), subject, session if isinstance(session, str) else None)
    if tenant == SYSTEM_TENANT and PLATFORM_ADMIN in roles:
        return Caller((PLATFORM_ADMIN,))
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
