"""Plans as data: seeded when absent and never overwritten, edited by platform admins only through the
platform's REST API (limits and features checked by platform.yaml's JSON Schema), and an edit reaches every
running gateway at once (the plans NOTIFY)."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from typing import Any

import asyncpg
import httpx
import pytest

from engine import catalog
from engine.database import Database
from engine.errors import PlanFeatureRequired
from engine.plans import SEED_PLANS, UNLIMITED, Plan, plan_of, require_feature
from engine.storage import deploy as deploy_module
from engine.storage.deploy import deploy_platform
from functions.keys import create_api_key
from functions.tenants import create_tenant
from functions.users import create_platform_admin
from tests.conftest import driver_url, with_database
from tests.server import running_gateway

PASSWORD = "a long enough passphrase"
ADMIN = "root@plans.example"
SCHEMA = """
name: shelf
entities:
  book:
    fields:
      title: {type: text, required: true}
    permissions:
      read: {anon: all, authenticated: all}
      create: {anon: all, authenticated: all}
"""


@pytest.fixture(scope="module")
async def keys(db: Database) -> dict[str, str]:
    await create_platform_admin(db, ADMIN, PASSWORD)
    plans = catalog.platform_tables()["plans"]
    async with db.begin() as conn:
        await conn.execute(plans.insert().values(code="narrow", name="Narrow", limits={"max_rows": 2}))
    await create_tenant(db, "shelf", source=SCHEMA, plan="narrow")
    return {role: (await create_api_key(db, "shelf", role, role)).key for role in ("anon", "service")}


@pytest.fixture(scope="module")
def base(keys: dict[str, str], database_url: str) -> Iterator[str]:
    with running_gateway(database_url) as url:
        yield url


@pytest.fixture(scope="module")
def other(keys: dict[str, str], database_url: str) -> Iterator[str]:
    """A second gateway on the same database: it hears of plan edits only through PostgreSQL."""
    with running_gateway(database_url) as url:
        yield url


def sign_in(base: str, email: str, prefix: str = "/api/platform") -> dict[str, str]:
    session = httpx.post(f"{base}{prefix}/auth/v1/token", params={"grant_type": "password"},
                         json={"email": email, "password": PASSWORD})
    assert session.status_code == 200, session.text
    return {"Authorization": f"Bearer {session.json()['access_token']}"}


def sign_up(base: str, email: str, prefix: str = "/api/platform") -> dict[str, str]:
    made = httpx.post(f"{base}{prefix}/auth/v1/signup", json={"email": email, "password": PASSWORD})
    assert made.status_code == 200, made.text
    return {"Authorization": f"Bearer {made.json()['access_token']}"}


def plans_url(base: str, code: str | None = None) -> str:
    return f"{base}/api/platform/rest/v1/plans" + (f"?code=eq.{code}" if code else "")


def edit(base: str, headers: dict[str, str], code: str, **fields: Any) -> httpx.Response:
    return httpx.patch(plans_url(base, code), json=fields, headers={**headers, "Prefer": "return=representation"})


def test_the_four_plans_are_seeded_with_every_limit_and_feature(base):
    admin = sign_in(base, ADMIN)
    found = {p["code"]: p for p in httpx.get(plans_url(base), headers=admin).json()}
    assert {"free", "starter", "pro", "enterprise"} <= set(found)
    for seeded in SEED_PLANS:
        row = found[seeded["code"]]
        assert row["limits"] == seeded["limits"] and row["features"] == seeded["features"]
        assert row["price_monthly_cents"] == seeded["price_monthly_cents"]
        assert row["price_yearly_cents"] == seeded["price_yearly_cents"]
    assert set(found["enterprise"]["limits"].values()) == {UNLIMITED}
    assert found["free"]["price_monthly_cents"] == 0 and found["pro"]["features"]["custom_domain"] is True


async def test_a_platform_deploy_seeds_missing_plans_and_keeps_an_operators_edits(db):
    plans = catalog.platform_tables()["plans"]
    async with db.begin() as conn:
        await conn.execute(plans.update().where(plans.c.code == "starter")
                           .values(limits={"requests_per_minute": 7}, price_monthly_cents=1))
        await conn.execute(plans.delete().where(plans.c.code == "pro"))
    await deploy_platform(db)
    async with db.engine.connect() as conn:
        starter, pro = await plan_of(conn, "starter"), await plan_of(conn, "pro")
    assert starter is not None and dict(starter.limits) == {"requests_per_minute": 7}
    assert starter.price_monthly_cents == 1
    assert pro is not None and pro.limit("requests_per_minute") == 6000


def test_a_platform_admin_creates_and_edits_a_plan(base):
    admin = sign_in(base, ADMIN)
    made = httpx.post(plans_url(base), headers={**admin, "Prefer": "return=representation"},
                      json={"code": "team", "name": "Team", "price_monthly_cents": 4900, "price_yearly_cents": 49000,
                            "trial_days": 7, "limits": {"requests_per_minute": 100, "rows": -1},
                            "features": {"custom_branding": True, "audit_retention_days": 60}})
    assert made.status_code == 201, made.text
    changed = edit(base, admin, "team", limits={"requests_per_minute": 200, "rows": 5}, grace_days=3)
    assert changed.status_code == 200, changed.text
    assert changed.json()[0]["limits"] == {"requests_per_minute": 200, "rows": 5}
    assert changed.json()[0]["grace_days"] == 3


@pytest.mark.parametrize(("limits", "field"), [
    ({"requests_per_minute": "many"}, "requests_per_minute"),
    ({"rows": -2}, "rows"),
    ({"request_per_minute": 10}, "request_per_minute"),
    ({"concurrent_requests": 0}, "concurrent_requests"),
])
def test_limits_outside_the_plans_json_schema_are_refused_naming_the_field(base, limits, field):
    admin = sign_in(base, ADMIN)
    refused = edit(base, admin, "free", limits=limits)
    assert refused.status_code == 422, refused.text
    body = refused.json()
    assert body["code"] == "validation_failed"
    assert any(d["field"].startswith("limits") and field in d["field"] + d["message"] for d in body["details"]), body
    assert httpx.get(plans_url(base, "free"), headers=admin).json()[0]["limits"] == SEED_PLANS[0]["limits"]


def test_an_unknown_feature_is_refused_naming_it(base):
    refused = edit(base, sign_in(base, ADMIN), "free", features={"teleport": True})
    assert refused.status_code == 422 and "teleport" in refused.text


def test_nobody_but_a_platform_admin_edits_a_plan(base, keys):
    member = sign_up(base, "member@plans.example")
    end_user = sign_up(base, "reader@plans.example", prefix="/api/tenants/shelf")
    attempts = {
        "platform member": member,
        "another tenant's service key": {"apikey": keys["service"], "Authorization": f"Bearer {keys['service']}"},
        "another tenant's end user": end_user,
        "anonymous": {},
    }
    for who, headers in attempts.items():
        patched = edit(base, headers, "free", limits={"requests_per_minute": 1})
        assert patched.status_code in (401, 403) or patched.json() == [], (who, patched.status_code, patched.text)
        created = httpx.post(plans_url(base), headers=headers, json={"code": f"x{secrets.token_hex(2)}", "name": "X"})
        assert created.status_code in (401, 403), (who, created.status_code, created.text)
        deleted = httpx.delete(plans_url(base, "free"), headers=headers)
        assert deleted.status_code in (401, 403) or (deleted.status_code == 204 and deleted.text == ""), who
    admin = sign_in(base, ADMIN)
    assert httpx.get(plans_url(base, "free"), headers=admin).json()[0]["limits"] == SEED_PLANS[0]["limits"]
    assert httpx.get(f"{base}/api/platform/rest/v1/plans", headers={"apikey": keys["service"]}).status_code == 401


def test_a_plan_edit_reaches_every_running_gateway_at_once(base, other, keys):
    service = {"apikey": keys["service"]}
    for _ in range(4):
        assert httpx.post(f"{base}/api/tenants/shelf/rest/v1/book", json={"title": "t"}, headers=service).status_code == 201
    for gateway in (base, other):
        assert len(httpx.get(f"{gateway}/api/tenants/shelf/rest/v1/book", headers=service).json()) == 2
    assert edit(base, sign_in(base, ADMIN), "narrow", limits={"max_rows": 3}).status_code == 200
    for gateway in (base, other):  # the next request of each already reads the new plan
        assert len(httpx.get(f"{gateway}/api/tenants/shelf/rest/v1/book", headers=service).json()) == 3


def test_require_feature_refuses_with_402_naming_the_feature():
    plan = Plan.from_row(SEED_PLANS[0])
    with pytest.raises(PlanFeatureRequired) as refused:
        require_feature(plan, "custom_domain")
    assert refused.value.status == 402 and refused.value.code == "plan_feature_required"
    assert "custom domain" in refused.value.message
    require_feature(Plan.from_row(SEED_PLANS[2]), "custom_domain")  # pro has it: nothing raised


def test_minus_one_and_an_absent_limit_mean_unlimited():
    plan = Plan.from_row({"code": "x", "limits": {"rows": -1, "members": 3, "requests_per_minute": 0}})
    assert plan.limit("rows") is None and plan.limit("storage_bytes") is None
    assert plan.limit("members") == 3 and plan.limit("requests_per_minute") == 0
    assert plan.rate_windows == (("requests_per_minute", 60, 0),)


OLD_PLANS = """  plans:
    fields:
      code:        {type: string, required: true, unique: true, max_length: 40}
      name:        {type: string, required: true, max_length: 120}
      price_cents: {type: integer, required: true, default: 0, minimum: 0}
      currency:    {type: string, required: true, default: usd, max_length: 3}
      interval:    {type: enum, values: [month, year], required: true, default: month}
      limits:      {type: json, required: true, default: {}}
      active:      {type: boolean, required: true, default: true}
    permissions:
      read: {authenticated: all, platform_admin: all}
      create: {platform_admin: all}
      update: {platform_admin: all}
      delete: {platform_admin: all}

"""


async def test_a_platform_deployed_before_plans_had_prices_and_features_migrates_in_place(server_url, monkeypatch):
    """An existing data directory starts: its `price_cents` becomes `price_monthly_cents`, its own plans
    keep their values and the missing seed plans are added."""
    current = catalog.PLATFORM_SCHEMA_PATH.read_text(encoding="utf-8")
    old = re.sub(r"  plans:\n.*?\n(?=  tenants:\n)", lambda _: OLD_PLANS, current, count=1, flags=re.S)
    assert "price_cents" in old and "price_monthly_cents" not in old
    name = f"bst_plansold_{secrets.token_hex(3)}"
    admin = await asyncpg.connect(driver_url(server_url))
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    db = await Database.connect(with_database(server_url, name))
    try:
        await _deploy_old(db, old, monkeypatch)
        deployed = await deploy_platform(db)
        assert deployed.changed and deployed.version == 2
        async with db.engine.connect() as conn:
            legacy, starter = await plan_of(conn, "legacy"), await plan_of(conn, "starter")
        assert legacy is not None and legacy.price_monthly_cents == 1234 and dict(legacy.limits) == {"max_rows": 5}
        assert starter is not None and starter.trial_days == 14
    finally:
        await db.close()
        admin = await asyncpg.connect(driver_url(server_url))
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        for (role,) in await admin.fetch("SELECT rolname FROM pg_roles WHERE starts_with(rolname, $1)", f"{name}_"):
            await admin.execute(f'DROP ROLE "{role}"')
        await admin.close()


async def _deploy_old(db: Database, source: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The platform as an earlier release deployed it (which seeded `free` alone), with a plan of the
    operator's own."""
    async def old_seed(conn: Any) -> None:
        await conn.exec_driver_sql("INSERT INTO system.plans (code, name) VALUES ('free', 'Free')")

    with monkeypatch.context() as patched:
        patched.setattr(deploy_module, "seed_plans", old_seed)
        await deploy_platform(db, source=source)
    async with db.begin() as conn:
        await conn.exec_driver_sql("INSERT INTO system.plans (code, name, price_cents, limits) "
                                   "VALUES ('legacy', 'Legacy', 1234, '{\"max_rows\": 5}')")
