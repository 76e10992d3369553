"""Wall 4: the platform's operations (the system tenant's functions and hooks) are out of every tenant's reach.

The penetration test bound `tenants.reveal_keys` (and the other platform operations) from a tenant's own
schema and called it anonymously for another tenant. Here each way in is tried: binding every platform
operation from a tenant schema (refused at deploy), a binding made before the fix (written straight into
the tenant's history) called at the tenant's own `/functions/v1`, every operation called at the platform's
route as anon, as a tenant's end user and as a member of another tenant, every operation called directly
(past the registry and the gateway) with a wrong caller, and a redeploy of the system tenant's schema.
Every attempt is refused and nothing of the victim changes. An operator's own functions directory still
works for tenant schemas, and cannot register platform operations.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import structlog

from engine import catalog
from engine.authz import Caller
from engine.data import DataApi
from engine.database import Database
from engine.errors import BackSaasError
from engine.hooks import HookContext, functions_dir, resolve
from engine.runtime import RuntimeRegistry
from functions.users import create_platform_admin
from tests.server import free_port, running_gateway
from tests.test_platform import PASSWORD, bearer, call, create_tenant, platform, sign_in, sign_up

REPO = Path(__file__).resolve().parent.parent
ADMIN_EMAIL = "root@wall.example"
ATTACKER_SCHEMA = """
name: evil
entities:
  note:
    fields:
      text: {type: text}
    permissions:
      read: {anon: all, authenticated: all}
      create: {anon: all, authenticated: all}
"""
VICTIM_SCHEMA = """
name: victim
entities:
  secret:
    fields:
      text: {type: text}
    permissions:
      read: {authenticated: all}
"""
PLATFORM = catalog.platform_model()
PLATFORM_FUNCTIONS = [(f.name, f.handler) for f in PLATFORM.functions]
PLATFORM_HOOKS = sorted({h.function for e in PLATFORM.entities for h in e.hooks if h.function})
# accept_invitation is open to anon and authenticated callers by design: its authority is the token
TENANT_SCOPED = [(name, handler) for name, handler in PLATFORM_FUNCTIONS if name != "accept_invitation"]
REFUSED = (401, 403, 404)


@pytest.fixture(scope="module")
async def world(db: Database, database_url: str) -> AsyncIterator[dict[str, Any]]:
    """A victim tenant (an owner, a developer, an open invitation, keys waiting to be revealed) and an
    attacker (mallory) owning a tenant of their own, `evil`, with an end user of it."""
    await create_platform_admin(db, ADMIN_EMAIL, PASSWORD)
    with running_gateway(database_url, outbox={"base_delay": 0.05}) as base:
        owner = sign_up(base, "owner@victim.example")
        create_tenant(base, owner, "victim", initial_schema=VICTIM_SCHEMA, plan="pro")  # 3 members
        invited = call(base, "invite_member", owner, tenant="victim", email="pat@victim.example", role="developer")
        assert call(base, "accept_invitation", None, token=invited.json()["token"], password=PASSWORD).status_code == 200
        pending = call(base, "invite_member", owner, tenant="victim", email="later@victim.example").json()
        mallory = sign_up(base, "mallory@evil.example")
        create_tenant(base, mallory, "evil", initial_schema=ATTACKER_SCHEMA)
        evil_keys = call(base, "reveal_keys", mallory, tenant="evil").json()["keys"]
        end_user = httpx.post(f"{base}/api/tenants/evil/auth/v1/signup",
                              json={"email": "user@evil.example", "password": PASSWORD})
        assert end_user.status_code == 200, end_user.text
        history = call(base, "schema_history", owner, tenant="victim").json()
        yield {"base": base, "owner": owner, "mallory": mallory, "end_user": end_user.json(),
               "evil_anon": evil_keys["anon"], "invitation": pending["id"], "victim_checksum": history[-1]["checksum"]}


def payload_for(name: str, world: dict[str, Any]) -> dict[str, Any]:
    """What an attacker sends each operation to act on the victim (only the fields its input takes)."""
    everything: dict[str, Any] = {
        "tenant": "victim", "reason": "pwned", "email": "mallory@evil.example", "role": "owner",
        "source": "name: victim\nentities: {}\n", "expected_checksum": world["victim_checksum"],
        "allow_destructive": True, "version": 1, "name": "Pwned", "settings": {"general": {"display_name": "pwned"}},
        "invitation": world["invitation"], "token": "x" * 43, "password": PASSWORD, "value": "a secret of the attacker"}
    if name in ("change_member_role", "remove_member"):
        everything["email"] = "pat@victim.example"
    if name.endswith("webhook_secret"):
        everything["name"] = "STOLEN"
    everything.update(domain="victim.example.com", kind="invitation", decision="complete",  # the trust layer's
                      request="00000000-0000-0000-0000-000000000000")
    everything.update(plan="enterprise", cycle="year")  # billing's: a stranger moving the victim to another plan
    declared = next(f for f in PLATFORM.functions if f.name == name).input
    properties = declared["properties"] if declared else everything
    return {key: value for key, value in everything.items() if key in properties}


async def snapshot(db: Database) -> dict[str, Any]:
    """Everything of the platform an attack on the victim (or on the platform itself) could change."""
    tables = catalog.platform_tables()
    queries = {
        "tenants": sa.select(tables["tenants"].c.slug, tables["tenants"].c.status, tables["tenants"].c.name,
                             tables["tenants"].c.settings),
        "memberships": sa.select(tables["memberships"].c.user_id, tables["memberships"].c.tenant_id,
                                 tables["memberships"].c.role),
        "invitations": sa.select(tables["invitations"].c.id, tables["invitations"].c.email,
                                 tables["invitations"].c.role, tables["invitations"].c.revoked_at,
                                 tables["invitations"].c.accepted_at),
        "keys": sa.select(tables["api_keys"].c.name, tables["api_keys"].c.revoked_at,
                          tables["api_keys"].c.pending_reveal.is_not(None)),
        "versions": sa.select(tables["schema_versions"].c.tenant_id, tables["schema_versions"].c.version,
                              tables["schema_versions"].c.checksum),
        "users": sa.select(tables["users"].c.email, tables["users"].c.roles),
    }
    async with db.begin() as conn:
        return {name: sorted(map(repr, (await conn.execute(query)).all())) for name, query in queries.items()}


def evil_schema_binding(handler: str, *, hook: bool) -> str:
    if hook:
        return ATTACKER_SCHEMA + f"    hooks:\n      before_create: [{handler}]\n"
    return ATTACKER_SCHEMA + f"functions:\n  grab:\n    handler: {handler}\n    roles: [anon, authenticated]\n"


@pytest.mark.parametrize("handler,hook", [(h, False) for _, h in PLATFORM_FUNCTIONS] + [(h, True) for h in PLATFORM_HOOKS])
async def test_a_tenant_schema_binding_a_platform_operation_is_refused_at_deploy(world, db, handler, hook):
    base, mallory = world["base"], world["mallory"]
    before = await snapshot(db)
    source = evil_schema_binding(handler, hook=hook)
    planned = call(base, "plan_schema", mallory, tenant="evil", source=source)
    assert planned.status_code == 422 and planned.json()["code"] == "schema_invalid", planned.text
    checksum = call(base, "schema_history", mallory, tenant="evil").json()[-1]["checksum"]
    deployed = call(base, "deploy_schema", mallory, tenant="evil", source=source, expected_checksum=checksum)
    assert deployed.status_code == 422 and deployed.json()["code"] == "schema_invalid", deployed.text
    problem = deployed.json()["details"][0]
    assert "installed" in problem["message"] and handler in problem["message"]
    assert await snapshot(db) == before


async def test_a_tenant_created_with_a_schema_binding_a_platform_operation_is_refused(world, db):
    base, mallory = world["base"], world["mallory"]
    before = await snapshot(db)
    made = httpx.post(platform(base, "rest/v1/tenants"), headers=bearer(mallory), json={
        "slug": "evil-two", "name": "x", "initial_schema": evil_schema_binding("tenants.reveal_keys", hook=False)})
    assert made.status_code == 422 and made.json()["code"] == "schema_invalid", made.text
    assert await snapshot(db) == before


@pytest.fixture(scope="module")
async def bound_before_the_fix(world, db: Database) -> str:
    """The old attack as it stood: `evil`'s history holds a version binding every platform function (as
    `op_<name>`, open to anon) and a platform hook, written as a deploy before the fix would have."""
    source = ATTACKER_SCHEMA + "    hooks:\n      after_create: [tenants.add_owner]\nfunctions:\n" + "".join(
        f"  op_{name}:\n    handler: {handler}\n    roles: [anon, authenticated]\n" for name, handler in PLATFORM_FUNCTIONS)
    async with db.begin() as conn:
        tenant = await catalog.find_tenant(conn, "evil")
        current = await catalog.current_version(conn, tenant.id)
        await catalog.record_version(conn, tenant.id, current.version + 1, source, [], "attacker")
    base = world["base"]
    deadline = time.monotonic() + 10
    while httpx.post(f"{base}/api/tenants/evil/functions/v1/op_schema_history", json={}).json().get("code") \
            == "function_not_found":
        assert time.monotonic() < deadline, "the runtime never swapped in the attacker's version"
        time.sleep(0.05)
    return source


def tenant_route_callers(world: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {"anon without a key": {}, "anon with the tenant's key": {"apikey": world["evil_anon"]},
            "the tenant's end user": {"apikey": world["evil_anon"], **bearer(world["end_user"])},
            "a member of another tenant": bearer(world["mallory"])}


@pytest.mark.parametrize("name,handler", PLATFORM_FUNCTIONS)
async def test_a_platform_function_bound_by_a_tenant_is_refused_at_the_tenants_route(bound_before_the_fix, world, db,
                                                                                      name, handler):
    before = await snapshot(db)
    for who, headers in tenant_route_callers(world).items():
        answer = httpx.post(f"{world['base']}/api/tenants/evil/functions/v1/op_{name}",
                            json=payload_for(name, world), headers=headers, timeout=60)
        assert answer.status_code in REFUSED, (who, answer.text)
        assert "bsk_" not in answer.text
    assert await snapshot(db) == before


def users_readable_by_anon() -> str:
    return catalog.PLATFORM_SCHEMA_PATH.read_text(encoding="utf-8").replace(
        "      read: {platform_admin: all}\n      create: {platform_admin: all}\n",
        "      read: {platform_admin: all, anon: all}\n      create: {platform_admin: all}\n", 1)


async def test_the_old_attack_on_the_system_tenants_schema_is_refused(bound_before_the_fix, world, db):
    before = await snapshot(db)
    async with db.begin() as conn:
        system = await catalog.find_tenant(conn, "system")
        checksum = (await catalog.current_version(conn, system.id)).checksum
    answer = httpx.post(f"{world['base']}/api/tenants/evil/functions/v1/op_deploy_schema", timeout=60, json={
        "tenant": "system", "source": users_readable_by_anon(), "expected_checksum": checksum, "allow_destructive": True})
    assert answer.status_code in REFUSED, answer.text
    assert httpx.get(platform(world["base"], "rest/v1/users")).status_code in REFUSED
    assert await snapshot(db) == before


async def test_a_platform_hook_bound_by_a_tenant_refuses_to_run(bound_before_the_fix, world, db):
    before = await snapshot(db)
    written = httpx.post(f"{world['base']}/api/tenants/evil/rest/v1/note", json={"text": "hi"},
                         headers={"apikey": world["evil_anon"], **bearer(world["end_user"])})
    assert written.status_code == 403, written.text
    assert httpx.get(f"{world['base']}/api/tenants/evil/rest/v1/note", headers={"apikey": world["evil_anon"]}).json() == []
    assert await snapshot(db) == before


@pytest.mark.parametrize("name,handler", TENANT_SCOPED)
async def test_a_platform_function_is_refused_at_the_platforms_route_to_strangers(world, db, name, handler):
    before = await snapshot(db)
    strangers = {"anon": None, "a tenant's end user": world["end_user"], "a member of another tenant": world["mallory"]}
    for who, session in strangers.items():
        answer = httpx.post(platform(world["base"], f"functions/v1/{name}"), json=payload_for(name, world),
                            headers=bearer(session) if session else {}, timeout=60)
        assert answer.status_code in REFUSED, (who, answer.text)
        assert "bsk_" not in answer.text
    assert await snapshot(db) == before


@pytest.fixture(scope="module")
async def system_runtime(db: Database, world) -> Any:
    return await RuntimeRegistry(db).get("system")


async def run_directly(db: Database, runtime: Any, tenant: str, caller: Caller, name: str, handler: str,
                       payload: dict[str, Any]) -> Any:
    """Call a platform function itself, past the registry, Casbin and the gateway: its own check is all
    that stands."""
    fn = resolve(handler, "function")
    assert fn is not None, handler
    async with db.as_role(runtime.role) as conn, conn.transaction():
        context = HookContext(tenant, caller, f"function:{name}", DataApi(runtime, db, caller, conn),
                              structlog.get_logger("tests"))
        return await fn(context, payload)


@pytest.mark.parametrize("name,handler", PLATFORM_FUNCTIONS)
async def test_a_platform_function_checks_its_caller_itself(world, db, system_runtime, name, handler):
    async with db.begin() as conn:
        users = catalog.platform_tables()["users"]
        mallory_id = str(await conn.scalar(sa.select(users.c.id).where(users.c.email == "mallory@evil.example")))
    wrong = {"anon in the system tenant": ("system", Caller(("anon",))),
             "a tenant's end user": ("system", Caller(("authenticated",), world["end_user"]["user"]["id"])),
             "a member of another tenant": ("system", Caller(("authenticated",), mallory_id)),
             "a platform admin's token inside a tenant": ("evil", Caller(("platform_admin",))),
             "a tenant's service role": ("evil", Caller(("service",))),
             "no user id, authenticated": ("system", Caller(("authenticated",)))}
    if name == "accept_invitation":  # open to anyone holding a token, in the system tenant only
        wrong = {who: (tenant, caller) for who, (tenant, caller) in wrong.items() if tenant != "system"}
    before = await snapshot(db)
    for who, (tenant, caller) in wrong.items():
        with pytest.raises(BackSaasError) as refused:
            await run_directly(db, system_runtime, tenant, caller, name, handler, payload_for(name, world))
        assert refused.value.status in REFUSED, (who, refused.value.as_dict())
    assert await snapshot(db) == before


async def test_the_system_tenants_schema_is_never_deployed_through_the_deploy_functions(world, db):
    base = world["base"]
    admin = sign_in(base, ADMIN_EMAIL)
    before = await snapshot(db)
    opened = users_readable_by_anon()
    assert opened != catalog.PLATFORM_SCHEMA_PATH.read_text(encoding="utf-8")
    async with db.begin() as conn:
        system = await catalog.find_tenant(conn, "system")
        checksum = (await catalog.current_version(conn, system.id)).checksum
    guarded = {"expected_checksum": checksum, "allow_destructive": True}
    for name, extra in (("plan_schema", {"source": opened}), ("deploy_schema", {"source": opened, **guarded}),
                        ("rollback_schema", {"version": 1, **guarded})):
        answer = call(base, name, admin, tenant="system", **extra)
        assert answer.status_code == 403 and "platform.yaml" in answer.json()["message"], (name, answer.text)
    assert httpx.get(platform(base, "rest/v1/users")).status_code in REFUSED
    assert await snapshot(db) == before


OPERATOR_MODULE = '''
from engine.hooks import HookContext, function


@function
async def hello(ctx: HookContext, payload: dict) -> dict:
    return {"hello": payload["name"], "tenant": ctx.tenant}
'''


def test_a_function_from_the_operators_directory_is_bound_and_called_by_a_tenant(world, tmp_path, monkeypatch):
    package = f"greet{secrets.token_hex(3)}"
    (tmp_path / f"{package}.py").write_text(OPERATOR_MODULE, encoding="utf-8")
    monkeypatch.setenv("BACKSAAS_FUNCTIONS_DIR", str(tmp_path))
    base, mallory = world["base"], world["mallory"]
    source = ATTACKER_SCHEMA + f"functions:\n  hello:\n    handler: {package}.hello\n    roles: [anon]\n"
    checksum = call(base, "schema_history", mallory, tenant="evil").json()[-1]["checksum"]
    deployed = call(base, "deploy_schema", mallory, tenant="evil", source=source, expected_checksum=checksum)
    assert deployed.status_code == 200, deployed.text
    answer = httpx.post(f"{base}/api/tenants/evil/functions/v1/hello", json={"name": "ada"},
                        headers={"apikey": world["evil_anon"]})
    assert answer.status_code == 200 and answer.json() == {"hello": "ada", "tenant": "evil"}, answer.text


SNEAKY_MODULE = '''
from engine.hooks import HookContext, platform_function


@platform_function
async def grab(ctx: HookContext, payload: dict) -> dict:
    return {}
'''
SHADOW_MODULE = '''
from engine.hooks import HookContext, function


@function
async def reveal_keys(ctx: HookContext, payload: dict) -> dict:
    return {}
'''


@pytest.mark.parametrize("module,handler", [(SNEAKY_MODULE, "sneaky{}.grab"), (SHADOW_MODULE, "tenants.reveal_keys")],
                         ids=["its own platform_function", "a module named like the platform's"])
def test_the_operators_directory_cannot_register_platform_operations(world, tmp_path, monkeypatch, module, handler):
    name = handler.split(".")[0].format(secrets.token_hex(3))
    handler = f"{name}.{handler.split('.')[1]}"
    (tmp_path / f"{name}.py").write_text(module, encoding="utf-8")
    monkeypatch.setenv("BACKSAAS_FUNCTIONS_DIR", str(tmp_path))
    base, mallory = world["base"], world["mallory"]
    source = ATTACKER_SCHEMA + f"functions:\n  grab:\n    handler: {handler}\n    roles: [anon]\n"
    planned = call(base, "plan_schema", mallory, tenant="evil", source=source)
    assert planned.status_code == 422 and planned.json()["code"] == "schema_invalid", planned.text
    assert handler in planned.json()["details"][0]["message"]
    bound = resolve(handler, "function", "system")
    assert bound is None or bound.__module__ == "functions.tenants"  # the platform's own, not the operator's


def test_a_platform_operation_names_no_tenant_function_even_by_its_module_path():
    assert resolve("tenants.reveal_keys", "function", "evil") is None
    assert resolve("members.invite_member", "function", "evil") is None
    assert resolve("examples.noop", "hook", "system") is None
    assert resolve("tenants.reveal_keys", "function", "system") is not None


def test_the_default_functions_directory_is_the_projects_own(tmp_path, monkeypatch):
    monkeypatch.delenv("BACKSAAS_FUNCTIONS_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    assert functions_dir() is None
    (tmp_path / "functions").mkdir()
    assert functions_dir() == tmp_path.resolve() / "functions"
    monkeypatch.chdir(REPO)
    assert functions_dir() is None  # a checkout's functions/ is the shipped package, never the operator's


def test_serve_refuses_a_functions_directory_that_does_not_exist(tmp_path):
    served = subprocess.run([sys.executable, "-m", "gateway.cli", "serve", "--port", str(free_port()),
                             "--functions-dir", str(tmp_path / "missing")], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert served.returncode != 0 and "functions_dir_missing" in served.stdout + served.stderr
    assert not (tmp_path / ".backsaas").exists()  # stopped before any database was made


def test_an_operators_module_that_fails_to_import_is_named_at_deploy(world, tmp_path, monkeypatch):
    name = f"broken{secrets.token_hex(3)}"
    (tmp_path / f"{name}.py").write_text("import a_module_nobody_installed\n", encoding="utf-8")
    monkeypatch.setenv("BACKSAAS_FUNCTIONS_DIR", str(tmp_path))
    source = ATTACKER_SCHEMA + f"functions:\n  go:\n    handler: {name}.go\n    roles: [anon]\n"
    planned = call(world["base"], "plan_schema", world["mallory"], tenant="evil", source=source)
    assert planned.status_code == 422, planned.text
    assert "failed to import" in planned.json()["details"][0]["message"]
    assert "a_module_nobody_installed" in planned.json()["details"][0]["message"]


def test_code_outside_the_platforms_files_cannot_register_a_platform_operation_by_claiming_its_module():
    from engine.hooks import platform_function

    async def suspend(ctx: HookContext, payload: dict) -> dict:
        return {}

    suspend.__module__ = "functions.tenants"  # what an operator's module could claim
    with pytest.raises(TypeError):
        platform_function(suspend)
    bound = resolve("tenants.suspend", "function", "system")
    assert bound is not None and bound is not suspend


@pytest.mark.parametrize("name", ["list_members", "reveal_keys", "usage", "audit_entries", "schema_history"])
def test_a_nul_in_a_platform_functions_tenant_is_a_400(world, name):
    answer = call(world["base"], name, world["mallory"], tenant="ev\u0000il")
    assert answer.status_code == 400 and answer.json()["code"] == "PGRST102", answer.text  # gateway/bodies.py
    assert answer.json()["details"][0]["path"] == "tenant"
