"""Tenant isolation, attacked from every side: tenant A's credentials against tenant B on every REST and
auth route, forged tokens, X-Tenant-ID spoofing, B's ids through A's URL, SQL in query parameters, one
user against another's own rows, a platform member against tenants they do not belong to, and SQL that
bypasses the application entirely. Every attempt fails and no byte of B's data comes back."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator

import asyncpg
import httpx
import jwt
import orjson
import pytest

from engine.database import Database
from engine.identity.signing import load_keyring
from functions.keys import create_api_key
from functions.tenants import create_tenant
from functions.users import create_platform_admin
from tests.server import running_gateway

SCHEMA = """
name: diary
roles: [writer]
entities:
  entry:
    owner: true
    fields:
      text: {type: text, required: true}
    permissions:
      read:   {authenticated: own}
      create: {authenticated: all}
      update: {authenticated: own}
      delete: {authenticated: own}
  notice:
    fields:
      text: {type: text}
    permissions:
      read: {anon: all, authenticated: all}
"""
SECRET = "beta's secret entry"
PASSWORD = "a long enough passphrase"


@pytest.fixture(scope="module")
async def setup(db: Database) -> dict[str, str]:
    made: dict[str, str] = {}
    for slug in ("alpha", "beta"):
        await create_tenant(db, slug, source=SCHEMA)
        for role in ("anon", "service"):
            made[f"{slug}_{role}"] = (await create_api_key(db, slug, role, role)).key
    await create_platform_admin(db, "root@example.com", PASSWORD)
    return made


@pytest.fixture(scope="module")
def base(setup: dict[str, str], database_url: str) -> Iterator[str]:
    with running_gateway(database_url) as url:
        yield url


def tenant(base: str, slug: str) -> str:
    return f"{base}/api/tenants/{slug}"


def sign_up(base: str, keys: dict[str, str], slug: str, email: str) -> dict:
    response = httpx.post(f"{tenant(base, slug)}/auth/v1/signup", headers={"apikey": keys[f"{slug}_anon"]},
                          json={"email": email, "password": PASSWORD})
    assert response.status_code == 200, response.text
    return response.json()


def as_user(session: dict) -> dict[str, str]:
    return {"Authorization": f"Bearer {session['access_token']}"}


def as_key(key: str) -> dict[str, str]:
    return {"apikey": key, "Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def world(base: str, setup: dict[str, str]) -> dict:
    """Users in both tenants, each with an entry of their own; beta also has a public notice."""
    people = {name: sign_up(base, setup, slug, f"{name}@example.com")
              for name, slug in (("ann", "alpha"), ("bob", "beta"), ("cat", "beta"))}
    entries = {}
    for name, slug in (("ann", "alpha"), ("bob", "beta"), ("cat", "beta")):
        text = SECRET if name == "bob" else f"{name}'s entry"
        created = httpx.post(f"{tenant(base, slug)}/rest/v1/entry", headers={**as_user(people[name]),
                             "Prefer": "return=representation"}, json={"text": text})
        assert created.status_code == 201, created.text
        entries[name] = created.json()[0]["id"]
    httpx.post(f"{tenant(base, 'beta')}/rest/v1/notice", headers=as_key(setup["beta_service"]), json={"text": "hello"})
    admin = httpx.post(f"{base}/api/platform/auth/v1/token?grant_type=password",
                       json={"email": "root@example.com", "password": PASSWORD})
    assert admin.status_code == 200, admin.text
    return {"people": people, "entries": entries, "admin": admin.json(), "keys": setup}


def leaks(response: httpx.Response) -> bool:
    return SECRET in response.text or "bob@example.com" in response.text


REST_ROUTES = [("GET", "/rest/v1/entry", None), ("POST", "/rest/v1/entry", {"text": "x"}),
               ("PATCH", "/rest/v1/entry?text=neq.z", {"text": "x"}), ("DELETE", "/rest/v1/entry?text=neq.z", None),
               ("GET", "/rest/v1/notice", None), ("GET", "/rest/v1/", None)]
AUTH_ROUTES = [("GET", "/auth/v1/user", None), ("PUT", "/auth/v1/user", {"data": {}}), ("POST", "/auth/v1/logout", None)]


@pytest.mark.parametrize(("method", "path", "body"), REST_ROUTES + AUTH_ROUTES)
def test_alphas_access_token_is_refused_by_beta(base, world, method, path, body):
    response = httpx.request(method, tenant(base, "beta") + path, headers=as_user(world["people"]["ann"]), json=body)
    assert response.status_code == 401 and response.json()["code"] == "tenant_mismatch"
    assert not leaks(response)


@pytest.mark.parametrize("role", ["anon", "service"])
@pytest.mark.parametrize(("method", "path", "body"), REST_ROUTES + AUTH_ROUTES)
def test_alphas_api_keys_are_refused_by_beta(base, world, role, method, path, body):
    response = httpx.request(method, tenant(base, "beta") + path, headers=as_key(world["keys"][f"alpha_{role}"]),
                             json=body)
    assert response.status_code == 401 and response.json()["code"] == "tenant_mismatch"
    assert not leaks(response)


def test_alphas_refresh_token_is_unknown_to_beta(base, world):
    response = httpx.post(f"{tenant(base, 'beta')}/auth/v1/token?grant_type=refresh_token",
                          json={"refresh_token": world["people"]["ann"]["refresh_token"]})
    assert response.status_code == 400 and response.json()["code"] == "refresh_token_not_found"
    again = httpx.post(f"{tenant(base, 'alpha')}/auth/v1/token?grant_type=refresh_token",
                       json={"refresh_token": world["people"]["ann"]["refresh_token"]})
    assert again.status_code == 200  # the attempt at beta neither used nor revoked it


def _segments(token: str) -> list[str]:
    return token.split(".")


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(data)).rstrip(b"=").decode()


def forged_tokens(genuine: str) -> dict[str, str]:
    claims = jwt.decode(genuine, options={"verify_signature": False})
    header = jwt.get_unverified_header(genuine)
    beta_claims = {**claims, "tenant": "beta"}
    now = int(time.time())
    return {
        "wrong key": jwt.encode(beta_claims, "not the platform's key, though long enough", algorithm="HS256",
                                headers={"kid": header["kid"]}),
        "alg none": f"{_b64({'alg': 'none', 'typ': 'JWT', 'kid': header['kid']})}.{_b64(beta_claims)}.",
        "tampered tenant": f"{_segments(genuine)[0]}.{_b64(beta_claims)}.{_segments(genuine)[2]}",
        "expired": jwt.encode({**beta_claims, "iat": now - 3600, "exp": now - 1800}, "x" * 32, algorithm="HS256",
                              headers={"kid": header["kid"]}),
        "unknown kid": jwt.encode(beta_claims, "x" * 32, algorithm="HS256", headers={"kid": "nope"}),
        "garbage": "not.a.token",
    }


@pytest.mark.parametrize("kind", ["wrong key", "alg none", "tampered tenant", "expired", "unknown kid", "garbage"])
def test_forged_tokens_are_refused(base, world, kind):
    token = forged_tokens(world["people"]["ann"]["access_token"])[kind]
    for method, path, body in (("GET", "/rest/v1/entry", None), ("GET", "/auth/v1/user", None)):
        response = httpx.request(method, tenant(base, "beta") + path, headers={"Authorization": f"Bearer {token}"},
                                 json=body)
        assert response.status_code == 401 and response.json()["code"] in ("invalid_token", "token_expired")
        assert not leaks(response)


async def test_a_genuinely_signed_but_expired_token_is_refused(base, world, db):
    async with db.engine.connect() as conn:
        keyring = await load_keyring(conn)
    claims = jwt.decode(world["people"]["bob"]["access_token"], options={"verify_signature": False})
    expired, _ = keyring.issue({k: claims[k] for k in ("sub", "tenant", "roles", "session_id")}, lifetime=-60)
    response = httpx.get(f"{tenant(base, 'beta')}/rest/v1/entry", headers={"Authorization": f"Bearer {expired}"})
    assert response.status_code == 401 and response.json()["code"] == "token_expired" and not leaks(response)


def test_x_tenant_id_is_honoured_only_for_platform_admins_and_service_keys(base, world):
    spoof = {"X-Tenant-ID": "beta"}
    for headers in ({}, as_key(world["keys"]["beta_anon"]), as_user(world["people"]["bob"])):
        refused = httpx.get(f"{base}/rest/v1/entry", headers={**spoof, **headers})
        assert refused.status_code == 403 and refused.json()["code"] == "tenant_header_forbidden"
        assert not leaks(refused)
    ann = httpx.get(f"{base}/rest/v1/entry", headers={**spoof, **as_user(world["people"]["ann"])})
    assert ann.status_code == 401 and not leaks(ann)
    service = httpx.get(f"{base}/rest/v1/entry?select=text", headers={**spoof, **as_key(world["keys"]["beta_service"])})
    assert service.status_code == 200 and SECRET in service.text
    admin = httpx.get(f"{base}/rest/v1/entry?select=text", headers={**spoof, **as_user(world["admin"])})
    assert admin.status_code == 200 and SECRET in admin.text
    contradiction = httpx.get(f"{tenant(base, 'alpha')}/rest/v1/entry", headers={**spoof, **as_user(world["admin"])})
    assert contradiction.status_code == 400 and not leaks(contradiction)


def test_betas_ids_through_alphas_url_find_nothing_and_change_nothing(base, world):
    bob_entry = world["entries"]["bob"]
    alpha = f"{tenant(base, 'alpha')}/rest/v1/entry?id=eq.{bob_entry}"
    service = as_key(world["keys"]["alpha_service"])
    assert httpx.get(alpha, headers=service).json() == []
    assert httpx.patch(alpha, headers={**service, "Prefer": "return=representation"}, json={"text": "x"}).json() == []
    assert httpx.delete(alpha, headers={**service, "Prefer": "return=representation"}).json() == []
    still = httpx.get(f"{tenant(base, 'beta')}/rest/v1/entry?id=eq.{bob_entry}&select=text",
                      headers=as_key(world["keys"]["beta_service"]))
    assert still.json() == [{"text": SECRET}]


@pytest.mark.parametrize("query", [
    "select=*,t_beta.entry(*)", 'select="t_beta"."entry".text', "select=text,(select text from t_beta.entry)",
    "order=id;select * from t_beta.entry", 'order="t_beta.entry".text', "text=eq.x' or '1'='1",
    "text=eq.x%27%20union%20select%20text%20from%20t_beta.entry--", "or=(id.eq.x) union select * from t_beta.entry",
    "id=in.(select id from t_beta.entry)", "t_beta.entry.text=eq.x", 'select=text&"t_beta"."entry"=eq.1',
    "limit=1;drop table t_beta.entry", "select=text::text",
])
def test_sql_in_query_parameters_never_reaches_beta(base, world, query):
    response = httpx.get(f"{tenant(base, 'alpha')}/rest/v1/entry?{query}", headers=as_key(world["keys"]["alpha_service"]))
    assert response.status_code in (200, 400, 404) and not leaks(response)
    if response.status_code >= 400:
        assert {"code", "message"} <= set(response.json())


def test_one_users_own_rows_are_invisible_and_untouchable_to_another(base, world):
    beta = f"{tenant(base, 'beta')}/rest/v1/entry"
    cat = {**as_user(world["people"]["cat"]), "Prefer": "return=representation"}
    bob_entry = world["entries"]["bob"]
    assert [e["text"] for e in httpx.get(beta, headers=cat).json()] == ["cat's entry"]
    assert httpx.get(f"{beta}?id=eq.{bob_entry}", headers=cat).json() == []
    assert httpx.patch(f"{beta}?id=eq.{bob_entry}", headers=cat, json={"text": "mine now"}).json() == []
    assert httpx.delete(f"{beta}?id=eq.{bob_entry}", headers=cat).json() == []
    forged_owner = httpx.post(beta, headers=cat, json={"text": "x", "owner_id": world["people"]["bob"]["user"]["id"]})
    assert forged_owner.status_code == 422  # owner_id is set from the caller, never from the body
    bob = httpx.get(beta, headers=as_user(world["people"]["bob"])).json()
    assert [e["text"] for e in bob] == [SECRET]


def test_users_cannot_grant_themselves_roles(base, world):
    users = f"{tenant(base, 'beta')}/rest/v1/users?id=eq.{world['people']['cat']['user']['id']}"
    escalate = httpx.patch(users, headers=as_key(world["keys"]["beta_anon"]), json={"roles": ["admin"]})
    assert escalate.status_code == 403 and escalate.json()["code"] == "permission_denied"


def test_a_platform_admin_token_works_in_every_tenant_and_a_platform_users_does_not(base, world):
    for slug in ("alpha", "beta"):
        response = httpx.get(f"{tenant(base, slug)}/rest/v1/entry?select=text", headers=as_user(world["admin"]))
        assert response.status_code == 200 and len(response.json()) >= 1
    member = httpx.post(f"{base}/api/platform/auth/v1/signup", json={"email": "dev@example.com", "password": PASSWORD})
    refused = httpx.get(f"{tenant(base, 'beta')}/rest/v1/entry", headers=as_user(member.json()))
    assert refused.status_code == 401 and refused.json()["code"] == "tenant_mismatch"


def test_platform_members_see_only_their_tenants_by_role(base, world):
    platform = f"{base}/api/platform/rest/v1"
    admin = as_user(world["admin"])
    member = httpx.post(f"{base}/api/platform/auth/v1/signup", json={"email": "viewer@example.com",
                                                                     "password": PASSWORD}).json()
    alpha_id = httpx.get(f"{platform}/tenants?slug=eq.alpha&select=id", headers=admin).json()[0]["id"]
    made = httpx.post(f"{platform}/memberships", headers=admin,
                      json={"user_id": member["user"]["id"], "tenant_id": alpha_id, "role": "viewer"})
    assert made.status_code == 201, made.text
    mine = as_user(member)
    assert [t["slug"] for t in httpx.get(f"{platform}/tenants?select=slug", headers=mine).json()] == ["alpha"]
    versions = httpx.get(f"{platform}/schema_versions?select=tenant_id", headers=mine).json()
    assert versions and {v["tenant_id"] for v in versions} == {alpha_id}
    assert httpx.get(f"{platform}/api_keys", headers=mine).json() == []  # a viewer's membership does not reach keys
    assert httpx.get(f"{platform}/users", headers=mine).status_code == 403
    assert httpx.delete(f"{platform}/tenants?slug=eq.alpha", headers=mine).status_code == 403
    squat = httpx.post(f"{platform}/tenants", headers=mine, json={"slug": "gamma", "name": "squat", "status": "active"})
    assert squat.status_code == 403  # a user creates tenants, but the platform alone provisions and activates them
    promoted = httpx.patch(f"{platform}/memberships?user_id=eq.{member['user']['id']}", headers=admin,
                           json={"role": "admin"})
    assert promoted.status_code == 204
    keys = httpx.get(f"{platform}/api_keys?select=name,tenant_id", headers=mine).json()
    assert sorted(k["name"] for k in keys) == ["anon", "initial-anon", "initial-service", "service"]
    assert {k["tenant_id"] for k in keys} == {alpha_id}
    assert all("key_hash" not in k for k in httpx.get(f"{platform}/api_keys", headers=mine).json())


async def test_sql_that_bypasses_the_application_is_refused_by_postgres(db, setup):
    async with db.as_role(db.role("alpha")) as conn:
        assert await conn.fetchval("SELECT count(*) FROM t_alpha.entry") >= 0
        for statement in ("SELECT text FROM t_beta.entry", "DELETE FROM t_beta.entry", "SELECT * FROM system.users",
                          "SELECT secret FROM system.signing_keys", "UPDATE system.tenants SET status = 'active'"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(statement)


def test_tenant_settings_are_written_through_the_platform_and_read_by_the_tenants_admins(base, world):
    platform = f"{base}/api/platform/rest/v1/tenants?slug=eq.alpha"
    admin = as_user(world["admin"])
    bad = httpx.patch(platform, headers=admin, json={"settings": {"features": {"dark_mode": "yes"}}})
    assert bad.status_code == 422 and bad.json()["details"][0]["field"] == "settings.features.dark_mode"
    settings = {"general": {"display_name": "Alpha Inc."}, "features": {"dark_mode": True}}
    assert httpx.patch(platform, headers=admin, json={"settings": settings}).status_code == 204
    url = f"{tenant(base, 'alpha')}/settings"
    assert httpx.get(url, headers=as_key(world["keys"]["alpha_service"])).json() == settings
    assert httpx.get(url, headers=as_key(world["keys"]["alpha_anon"])).status_code == 403
    stranger = httpx.get(url, headers=as_key(world["keys"]["beta_service"]))
    assert stranger.status_code == 401 and "Alpha" not in stranger.text
