"""Authentication at the gateway: who is calling, from the request's credentials.

Supabase's clients send the tenant's API key as `apikey: K` and as `Authorization: Bearer K`; a request
without credentials is the tenant's `anon` role. A key of another tenant is 401 `tenant_mismatch`;
unknown, revoked or expired keys are 401 too. User access tokens (JWTs from `/auth/v1`) are not issued
yet, so a bearer that is not a key is refused rather than ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from engine.authz import Caller
from engine.errors import BackSaasError
from engine.runtime import RuntimeRegistry, TenantRuntime
from functions.keys import KEY_PREFIX, key_hash

ANONYMOUS = Caller(roles=("anon",))


class Unauthorized(BackSaasError):
    status = 401

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The credential of the request: `apikey`, else the bearer token."""
    bearer = headers.get("authorization", "")
    token = bearer[7:].strip() if bearer[:7].lower() == "bearer " else None
    key = headers.get("apikey") or token
    if token and token != key:
        raise Unauthorized("invalid_token", "the bearer token is neither this request's API key nor a valid access token")
    return key


async def authenticate(registry: RuntimeRegistry, runtime: TenantRuntime, headers: Mapping[str, str]) -> Caller:
    key = presented_key(headers)
    if key is None:
        return ANONYMOUS
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
