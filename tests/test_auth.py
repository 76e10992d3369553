"""`/auth/v1` (the GoTrue protocol) driven by Supabase's own SDK and by plain HTTP: sign-up, sign-in,
refresh rotation with reuse detection, logout, the user object, failed-login limits and their audit."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator

import httpx
import jwt
import pytest
import sqlalchemy as sa

from engine import audit_trail, catalog
from engine.database import Database
from engine.errors import Unauthorized
from engine.identity.signing import Keyring, rotate_signing_key
from functions.keys import create_api_key
from functions.tenants import create_tenant, suspend_tenant
from tests.server import running_gateway

NOTES = """
name: notes
roles: [member]
entities:
  users:
    fields:
      display_name: {type: string, max_length: 40}
    permissions:
      read: {authenticated: all}
  note:
    owner: true
    fields:
      text: {type: text, required: true}
    permissions:
      read:   {authenticated: own}
      create: {authenticated: all}
      update: {authenticated: own}
      delete: {authenticated: own}
"""
PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
async def keys(db: Database) -> dict[str, str]:
    made = {}
    for slug in ("notes", "other"):
        await create_tenant(db, slug, source=NOTES)
        for role in ("anon", "service"):
            made[f"{slug}_{role}"] = (await create_api_key(db, slug, role, role)).key
    return made


@pytest.fixture(scope="module")
async def tenant_ids(db: Database, keys: dict[str, str]) -> dict[str, str]:
    tenants = catalog.platform_tables()["tenants"]
    async with db.begin() as conn:
        return {row.slug: str(row.id) for row in await conn.execute(sa.select(tenants.c.slug, tenants.c.id))}


@pytest.fixture(scope="module")
def base(keys: dict[str, str], database_url: str) -> Iterator[str]:
    with running_gateway(database_url) as url:
        yield url


def auth_url(base: str, slug: str = "notes") -> str:
    return f"{base}/api/tenants/{slug}/auth/v1"


def anon(keys: dict[str, str], slug: str = "notes") -> dict[str, str]:
    return {"apikey": keys[f"{slug}_anon"], "Authorization": f"Bearer {keys[f'{slug}_anon']}"}


def sign_up(base: str, keys: dict[str, str], email: str, slug: str = "notes", **data: object) -> dict:
    response = httpx.post(f"{auth_url(base, slug)}/signup", headers=anon(keys, slug),
                          json={"email": email, "password": PASSWORD, "data": data})
    assert response.status_code == 200, response.text
    return response.json()


def bearer(keys: dict[str, str], session: dict, slug: str = "notes") -> dict[str, str]:
    return {"apikey": keys[f"{slug}_anon"], "Authorization": f"Bearer {session['access_token']}"}


def eventually(check, timeout: float = 15.0):
    """The check's result once it is truthy: other processes learn of a change by NOTIFY, a moment later."""
    deadline = time.monotonic() + timeout
    while not (result := check()) and time.monotonic() < deadline:
        time.sleep(0.02)
    return result


def test_supabase_sdk_signs_up_in_refreshes_updates_and_out(base, keys):
    from supabase import create_client

    client = create_client(f"{base}/api/tenants/notes", keys["notes_anon"])
    signed_up = client.auth.sign_up({"email": "Sdk@Example.com", "password": PASSWORD,
                                     "options": {"data": {"display_name": "Sdk"}}})
    assert signed_up.user.email == "sdk@example.com" and signed_up.user.user_metadata == {"display_name": "Sdk"}
    assert signed_up.session.token_type == "bearer" and signed_up.session.expires_in == 900
    session = client.auth.sign_in_with_password({"email": "sdk@example.com", "password": PASSWORD}).session
    assert client.auth.get_user().user.id == signed_up.user.id
    updated = client.auth.update_user({"data": {"display_name": "Renamed"}})
    assert updated.user.user_metadata == {"display_name": "Renamed"}
    refreshed = client.auth.refresh_session().session
    assert refreshed.refresh_token != session.refresh_token and refreshed.user.id == signed_up.user.id
    note = client.table("note").insert({"text": "mine"}).execute().data[0]
    assert note["owner_id"] == signed_up.user.id
    assert [n["text"] for n in client.table("note").select("text").execute().data] == ["mine"]
    client.auth.sign_out()
    assert client.auth.get_session() is None
    stale = httpx.get(f"{auth_url(base)}/user", headers=bearer(keys, {"access_token": refreshed.access_token}))
    assert stale.status_code == 403 and stale.json()["code"] == "session_not_found"



def test_health_and_settings_answer_as_gotrue(base, keys):
    health = httpx.get(f"{auth_url(base)}/health", headers=anon(keys))
    assert health.status_code == 200 and health.json()["name"] == "GoTrue", health.text
    settings = httpx.get(f"{auth_url(base)}/settings", headers=anon(keys))
    assert settings.status_code == 200, settings.text
    assert settings.json()["external"]["email"] is True and settings.json()["external"]["google"] is False
    assert settings.json()["disable_signup"] is False and settings.json()["mailer_autoconfirm"] is True


def test_an_anonymous_sign_in_is_refused_as_gotrue_refuses_it_when_off(base, keys):
    from supabase import AuthApiError, create_client

    client = create_client(f"{base}/api/tenants/notes", keys["notes_anon"])
    with pytest.raises(AuthApiError) as refused:
        client.auth.sign_in_anonymously()
    assert refused.value.code == "anonymous_provider_disabled" and refused.value.status == 422

def test_access_token_carries_the_documented_claims(base, keys, tenant_ids):
    session = sign_up(base, keys, "claims@example.com")
    claims = jwt.decode(session["access_token"], options={"verify_signature": False})
    assert {"sub", "tenant", "roles", "iat", "exp", "iss", "jti"} <= set(claims)
    assert claims["tenant"] == tenant_ids["notes"] and claims["roles"] == ["authenticated"]  # its id, not its slug
    assert claims["exp"] - claims["iat"] == 900 and session["expires_at"] == claims["exp"]
    assert session["user"]["aud"] == "authenticated" and session["user"]["role"] == "authenticated"


def test_signup_refuses_weak_passwords_with_reasons(base, keys):
    for password in ("short", "weak@example.com"):
        refused = httpx.post(f"{auth_url(base)}/signup", headers=anon(keys),
                             json={"email": "weak@example.com", "password": password})
        assert refused.status_code == 422 and refused.json()["code"] == "weak_password"
        assert refused.json()["weak_password"]["reasons"]


def test_signup_refuses_a_taken_email_and_bad_metadata(base, keys):
    sign_up(base, keys, "taken@example.com")
    again = httpx.post(f"{auth_url(base)}/signup", headers=anon(keys),
                       json={"email": "TAKEN@example.com", "password": PASSWORD})
    assert again.status_code == 422 and again.json()["code"] == "user_already_exists"
    for data, field in (({"roles": ["admin"]}, "data.roles"), ({"display_name": "x" * 41}, "data.display_name")):
        bad = httpx.post(f"{auth_url(base)}/signup", headers=anon(keys),
                         json={"email": "meta@example.com", "password": PASSWORD, "data": data})
        assert bad.status_code == 422 and bad.json()["details"][0]["field"] == field


def test_refresh_rotates_and_a_reused_token_revokes_the_whole_family(base, keys):
    first = sign_up(base, keys, "rotate@example.com")
    url = f"{auth_url(base)}/token?grant_type=refresh_token"
    second = httpx.post(url, headers=anon(keys), json={"refresh_token": first["refresh_token"]}).json()
    third = httpx.post(url, headers=anon(keys), json={"refresh_token": second["refresh_token"]}).json()
    reused = httpx.post(url, headers=anon(keys), json={"refresh_token": first["refresh_token"]})
    assert reused.status_code == 400 and reused.json()["code"] == "refresh_token_already_used"
    latest = httpx.post(url, headers=anon(keys), json={"refresh_token": third["refresh_token"]})
    assert latest.status_code == 400 and latest.json()["code"] == "session_expired"
    assert httpx.get(f"{auth_url(base)}/user", headers=bearer(keys, third)).status_code == 403


EMAIL_SHA256 = hashlib.sha256(b"locked@example.com").hexdigest()  # the trail keeps no address (engine/audit.py)


async def test_wrong_passwords_are_rate_limited_and_audited(base, keys, db):
    sign_up(base, keys, "locked@example.com")
    url = f"{auth_url(base)}/token?grant_type=password"
    statuses = [httpx.post(url, headers=anon(keys), json={"email": "locked@example.com", "password": "wrong one!!"})
                .status_code for _ in range(6)]
    assert statuses == [400] * 5 + [429]
    locked = httpx.post(url, headers=anon(keys), json={"email": "locked@example.com", "password": PASSWORD})
    assert locked.status_code == 429 and int(locked.headers["retry-after"]) > 0
    audit_log = catalog.platform_tables()["audit_log"]
    await audit_trail.seal(db)
    async with db.begin() as conn:
        events = await conn.scalar(sa.select(sa.func.count()).select_from(audit_log).where(
            audit_log.c.action == "auth.login_failed", audit_log.c.data["email_sha256"].astext == EMAIL_SHA256))
    assert events == 5


def test_unknown_accounts_fail_like_wrong_passwords(base, keys):
    response = httpx.post(f"{auth_url(base)}/token?grant_type=password", headers=anon(keys),
                          json={"email": "nobody@example.com", "password": PASSWORD})
    assert response.status_code == 400 and response.json()["code"] == "invalid_credentials"


def test_logout_scopes(base, keys):
    sign_up(base, keys, "scopes@example.com")
    url = f"{auth_url(base)}/token?grant_type=password"
    a, b, c = (httpx.post(url, headers=anon(keys), json={"email": "scopes@example.com", "password": PASSWORD}).json()
               for _ in range(3))
    assert httpx.post(f"{auth_url(base)}/logout?scope=local", headers=bearer(keys, a)).status_code == 204
    assert httpx.get(f"{auth_url(base)}/user", headers=bearer(keys, a)).status_code == 403
    assert httpx.get(f"{auth_url(base)}/user", headers=bearer(keys, b)).status_code == 200
    assert httpx.post(f"{auth_url(base)}/logout?scope=others", headers=bearer(keys, b)).status_code == 204
    assert httpx.get(f"{auth_url(base)}/user", headers=bearer(keys, c)).status_code == 403
    assert httpx.get(f"{auth_url(base)}/user", headers=bearer(keys, b)).status_code == 200
    assert httpx.post(f"{auth_url(base)}/logout", headers=bearer(keys, b)).status_code == 204
    assert httpx.get(f"{auth_url(base)}/user", headers=bearer(keys, b)).status_code == 403


def test_update_user_changes_the_password_at_once_and_the_email_once_confirmed(base, keys):
    session = sign_up(base, keys, "change@example.com")
    new = "another long passphrase"
    changed = httpx.put(f"{auth_url(base)}/user", headers=bearer(keys, session),
                        json={"email": "changed@example.com", "password": new})
    assert changed.status_code == 200 and changed.json()["email"] == "change@example.com"
    assert changed.json()["new_email"] == "changed@example.com"  # mailed a confirmation (tests/test_mail.py)
    url = f"{auth_url(base)}/token?grant_type=password"
    assert httpx.post(url, headers=anon(keys), json={"email": "change@example.com", "password": new}).status_code == 200
    weak = httpx.put(f"{auth_url(base)}/user", headers=bearer(keys, session), json={"password": "short"})
    assert weak.status_code == 422 and weak.json()["code"] == "weak_password"


def test_user_endpoints_need_a_users_token(base, keys):
    for headers in ({}, anon(keys), {"apikey": keys["notes_service"], "Authorization": f"Bearer {keys['notes_service']}"}):
        response = httpx.get(f"{auth_url(base)}/user", headers=headers)
        assert response.status_code == 401 and response.json()["code"] == "no_authorization"


def test_unsupported_grants_and_bodies_are_clear_errors(base, keys):
    grant = httpx.post(f"{auth_url(base)}/token?grant_type=magic", headers=anon(keys), json={})
    assert grant.status_code == 400 and grant.json()["code"] == "unsupported_grant_type"
    body = httpx.post(f"{auth_url(base)}/signup", headers=anon(keys), content=b"{nope")
    assert body.status_code == 400 and body.json()["code"] == "PGRST102"
    missing = httpx.post(f"{auth_url(base)}/signup", headers=anon(keys), json={"email": "x@example.com"})
    assert missing.status_code == 422 and missing.json()["details"][0]["field"] == "password"
    route = httpx.get(f"{auth_url(base)}/nowhere", headers=anon(keys))
    assert route.status_code == 404


async def test_rotated_signing_key_keeps_earlier_tokens_valid(base, keys, db):
    before = sign_up(base, keys, "rotation@example.com")
    await rotate_signing_key(db)

    def sign_in_with_the_new_key() -> dict | None:
        session = httpx.post(f"{auth_url(base)}/token?grant_type=password", headers=anon(keys),
                             json={"email": "rotation@example.com", "password": PASSWORD}).json()
        new_kid = jwt.get_unverified_header(session["access_token"])["kid"]
        return session if new_kid != jwt.get_unverified_header(before["access_token"])["kid"] else None

    after = eventually(sign_in_with_the_new_key)
    assert after is not None
    for session in (before, after):
        assert httpx.get(f"{auth_url(base)}/user", headers=bearer(keys, session)).status_code == 200
    await rotate_signing_key(db)  # the key of `before` is now two rotations old: retired
    retired = eventually(lambda: (r := httpx.get(f"{auth_url(base)}/user", headers=bearer(keys, before)))
                         .status_code == 401 and r)
    assert retired and retired.json()["code"] == "invalid_token"
    assert httpx.get(f"{auth_url(base)}/user", headers=bearer(keys, after)).status_code == 200


async def test_suspension_revokes_every_session_of_the_tenant(base, keys, db):
    session = sign_up(base, keys, "suspended@example.com", slug="other")
    await suspend_tenant(db, "other", "unpaid invoices")
    refused = eventually(lambda: (r := httpx.get(f"{auth_url(base, 'other')}/user",
                                                 headers=bearer(keys, session, "other"))).status_code == 403 and r)
    assert refused and refused.json()["code"] == "tenant_suspended"
    sessions = catalog.platform_tables()["auth_sessions"]
    async with db.begin() as conn:
        live = await conn.scalar(sa.select(sa.func.count()).select_from(sessions).where(
            sessions.c.revoked_at.is_(None), sessions.c.tenant_id == sa.select(catalog.platform_tables()["tenants"].c.id)
            .where(catalog.platform_tables()["tenants"].c.slug == "other").scalar_subquery()))
    assert live == 0


def test_a_token_verified_once_is_still_refused_once_it_expires():
    keyring = Keyring("k1", "s" * 64, {"k1": "s" * 64})
    token, _ = keyring.issue({"sub": "u", "tenant": "notes", "roles": ["authenticated"]}, lifetime=5)
    claims = keyring.verify(token)  # whole seconds: a 1 s lifetime issued late in a second lasted a few ms
    assert claims["sub"] == "u"
    time.sleep(max(0.0, claims["exp"] - time.time()) + 1.1)
    with pytest.raises(Unauthorized) as expired:
        keyring.verify(token)
    assert expired.value.code == "token_expired"


@pytest.mark.parametrize("kind", [[], {}, 1])
def test_a_verification_type_that_is_not_a_string_is_a_400(base, keys, kind):
    answer = httpx.post(f"{auth_url(base)}/verify", headers=anon(keys), json={"type": kind, "token_hash": "x"})
    assert answer.status_code == 400 and answer.json()["code"] == "validation_failed", answer.text
