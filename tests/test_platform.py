"""The platform as the system tenant, driven over HTTP only: provisioning, deploys, members, lifecycle.

Everything goes through `/api/platform/rest/v1` and `/api/platform/functions/v1` — the system tenant's
generated API and its functions — as a tenant developer, a colleague and a platform admin would.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from engine import catalog
from engine.database import Database
from functions import tenants as tenant_functions
from functions.users import create_platform_admin
from tests.server import running_gateway

BLOG = (Path(__file__).resolve().parent.parent / "schemas" / "blog.yaml").read_text(encoding="utf-8")
PASSWORD = "a long enough passphrase"
ADMIN_EMAIL = "root@platform.example"


@pytest.fixture(scope="module")
async def base(db: Database, database_url: str) -> Iterator[str]:
    await create_platform_admin(db, ADMIN_EMAIL, PASSWORD)
    with running_gateway(database_url, outbox={"base_delay": 0.05}) as url:
        yield url


def platform(base: str, path: str) -> str:
    return f"{base}/api/platform/{path}"


def bearer(session: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {session['access_token']}"}


def sign_up(base: str, email: str) -> dict[str, Any]:
    made = httpx.post(platform(base, "auth/v1/signup"), json={"email": email, "password": PASSWORD})
    assert made.status_code == 200, made.text
    return made.json()


def sign_in(base: str, email: str) -> dict[str, Any]:
    session = httpx.post(platform(base, "auth/v1/token"), params={"grant_type": "password"},
                         json={"email": email, "password": PASSWORD})
    assert session.status_code == 200, session.text
    return session.json()


def call(base: str, name: str, session: dict[str, Any] | None, **payload: Any) -> httpx.Response:
    return httpx.post(platform(base, f"functions/v1/{name}"), json=payload,
                      headers=bearer(session) if session else {}, timeout=60)


def wait_for(check: Callable[[], Any], timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError("timed out")


def create_tenant(base: str, session: dict[str, Any], slug: str, **fields: Any) -> dict[str, Any]:
    """POST a tenant as `session`, then wait for its provisioning to end (active or failed)."""
    made = httpx.post(platform(base, "rest/v1/tenants"), json={"slug": slug, "name": slug.title(), **fields},
                      headers={**bearer(session), "Prefer": "return=representation",
                               "Accept": "application/vnd.pgrst.object+json"})
    assert made.status_code == 201, made.text
    assert made.json()["status"] == "pending"

    def ended() -> dict[str, Any] | None:
        row = httpx.get(platform(base, "rest/v1/tenants"), params={"slug": f"eq.{slug}"}, headers=bearer(session))
        found = row.json()[0]
        return found if found["status"] in ("active", "failed") else None

    return wait_for(ended)


def deploy(base: str, session: dict[str, Any], slug: str, source: str) -> httpx.Response:
    planned = call(base, "plan_schema", session, tenant=slug, source=source)
    assert planned.status_code == 200, planned.text
    return call(base, "deploy_schema", session, tenant=slug, source=source,
                expected_checksum=planned.json()["base_checksum"])


def test_a_tenant_developers_whole_path(base):
    dev = sign_up(base, "dev@acme.example")
    tenant = create_tenant(base, dev, "acme")
    assert tenant["status"] == "active" and tenant["provisioning"]["steps"] == [name for name, _ in tenant_functions.STEPS]
    keys = call(base, "reveal_keys", dev, tenant="acme")
    assert keys.status_code == 200 and set(keys.json()["keys"]) == {"anon", "service"}
    again = call(base, "reveal_keys", dev, tenant="acme")
    assert again.status_code == 410 and again.json()["code"] == "keys_already_revealed"
    service = {"apikey": keys.json()["keys"]["service"]}
    anon = {"apikey": keys.json()["keys"]["anon"]}
    api = f"{base}/api/tenants/acme"

    planned = call(base, "plan_schema", dev, tenant="acme", source=BLOG).json()
    assert planned["base_version"] == 1 and any("CREATE TABLE" in sql for s in planned["steps"] for sql in s["sql"])
    deployed = call(base, "deploy_schema", dev, tenant="acme", source=BLOG, expected_checksum=planned["base_checksum"])
    assert deployed.status_code == 200 and deployed.json()["version"] == 2, deployed.text
    author = httpx.post(f"{api}/rest/v1/author", json={"name": "Ada"}, headers={**service, "Prefer": "return=representation"})
    assert author.status_code == 201, author.text
    post = httpx.post(f"{api}/rest/v1/post", json={"title": "Hello", "author_id": author.json()[0]["id"]}, headers=service)
    assert post.status_code == 201
    assert httpx.get(f"{api}/rest/v1/post?select=title", headers=anon).json() == [{"title": "Hello"}]
    graphql = httpx.post(f"{api}/graphql/v1", json={"query": "{ post { title author { name } } }"}, headers=anon)
    assert graphql.json() == {"data": {"post": [{"title": "Hello", "author": {"name": "Ada"}}]}}

    second = BLOG.replace("      rating:       {type: number, minimum: 0, maximum: 5}\n",
                          "      rating:       {type: number, minimum: 0, maximum: 5}\n      slug: {type: string}\n"
                          ).replace("    indexes: [[status, published_at]]\n", "    indexes: [[status, published_at], [slug]]\n")
    assert deploy(base, dev, "acme", second).json()["version"] == 3
    assert httpx.get(f"{api}/rest/v1/post?select=title,slug", headers=anon).json() == [{"title": "Hello", "slug": None}]
    history = call(base, "schema_history", dev, tenant="acme").json()
    assert [v["version"] for v in history] == [1, 2, 3] and "+      slug: {type: string}" in history[2]["diff"]
    rolled = call(base, "rollback_schema", dev, tenant="acme", version=2, expected_checksum=history[2]["checksum"],
                  allow_destructive=True)
    assert rolled.status_code == 200 and rolled.json()["version"] == 4, rolled.text
    gone = httpx.get(f"{api}/rest/v1/post?select=slug", headers=anon)
    assert gone.status_code == 400  # the column went with the rollback

    invited = call(base, "invite_member", dev, tenant="acme", email="pat@acme.example", role="developer")
    assert invited.status_code == 200, invited.text
    joined = call(base, "accept_invitation", None, token=invited.json()["token"], password=PASSWORD)
    assert joined.status_code == 200 and joined.json()["role"] == "developer", joined.text
    pat = sign_in(base, "pat@acme.example")
    third = BLOG.replace("      bio:   {type: text}\n", "      bio:   {type: text}\n      site: {type: string}\n")
    assert deploy(base, pat, "acme", third).json()["version"] == 5
    assert call(base, "reveal_keys", pat, tenant="acme").status_code == 403  # developers do not handle keys

    reader = httpx.post(f"{api}/auth/v1/signup", json={"email": "reader@example.com", "password": PASSWORD}).json()
    admin = sign_in(base, ADMIN_EMAIL)
    suspended = call(base, "suspend_tenant", admin, tenant="acme", reason="unpaid invoice")
    assert suspended.status_code == 200, suspended.text
    for headers in (anon, service, bearer(reader)):
        refused = httpx.get(f"{api}/rest/v1/post", headers=headers)
        assert refused.status_code == 403 and refused.json()["code"] == "tenant_suspended"
    assert httpx.post(f"{api}/graphql/v1", json={"query": "{ post { title } }"}, headers=anon).status_code == 403
    assert call(base, "activate_tenant", admin, tenant="acme").status_code == 200
    assert httpx.get(f"{api}/rest/v1/post?select=title", headers=anon).json() == [{"title": "Hello"}]
    refreshed = httpx.post(f"{api}/auth/v1/token", params={"grant_type": "refresh_token"},
                           json={"refresh_token": reader["refresh_token"]})
    assert refreshed.status_code in (400, 401)  # the suspension ended every session for good

    onboarding = httpx.get(platform(base, "rest/v1/tenants"), params={"slug": "eq.acme"}, headers=bearer(dev)).json()[0]
    assert all(onboarding["onboarding"][step] for step in ("schema_deployed", "first_user", "first_api_call"))
    assert onboarding["onboarding"]["plan_chosen"] is None


def test_tenant_slugs_are_checked_before_any_row(base):
    dev = sign_up(base, "slugs@example.com")
    posted = lambda body: httpx.post(platform(base, "rest/v1/tenants"), json=body, headers=bearer(dev))  # noqa: E731
    reserved = posted({"slug": "admin", "name": "x"})
    assert reserved.status_code == 422 and reserved.json()["details"][0]["field"] == "slug"
    assert posted({"slug": "No_Caps", "name": "x"}).status_code == 422
    assert posted({"slug": "ab", "name": "x"}).status_code == 422
    assert posted({"slug": "notext", "name": "x", "initial_schema": 5}).status_code == 422
    bad_schema = posted({"slug": "badschema", "name": "x", "initial_schema": "entities: {a: {fields: {x: {type: nope}}}}"})
    assert bad_schema.status_code == 422 and bad_schema.json()["code"] == "schema_invalid"
    no_plan = posted({"slug": "noplan", "name": "x", "plan": "platinum"})
    assert no_plan.status_code == 422 and no_plan.json()["details"][0]["field"] == "plan"
    create_tenant(base, dev, "taken")
    taken = posted({"slug": "taken", "name": "again"})
    assert taken.status_code == 409 and taken.json()["code"] == "tenant_exists"
    forged = posted({"slug": "forged", "name": "x", "status": "active"})
    assert forged.status_code == 403
    slugs = [t["slug"] for t in httpx.get(platform(base, "rest/v1/tenants"), headers=bearer(dev)).json()]
    assert slugs == ["taken"]


@pytest.mark.parametrize("failing", [name for name, _ in tenant_functions.STEPS])
async def test_a_provisioning_step_that_fails_leaves_no_trace_and_a_retry_succeeds(base, db, monkeypatch, failing):
    dev = sign_up(base, f"fail-{failing}@example.com")
    slug = f"fail-{failing}"

    async def broken(conn, tenant, run):
        raise RuntimeError(f"injected failure in {failing}")

    monkeypatch.setattr(tenant_functions, "STEPS", [(name, broken if name == failing else step)
                                                    for name, step in tenant_functions.STEPS])
    tenant = create_tenant(base, dev, slug, initial_schema=BLOG)
    assert tenant["status"] == "failed" and f"step '{failing}' failed" in tenant["status_reason"]
    assert "injected failure" in tenant["status_reason"] and tenant["provisioning"]["failed_step"] == failing
    tables = catalog.platform_tables()
    async with db.begin() as conn:
        assert await conn.scalar(sa.text("SELECT count(*) FROM pg_namespace WHERE nspname = :s"),
                                 {"s": f"t_{slug.replace('-', '_')}"}) == 0
        assert await conn.scalar(sa.text("SELECT count(*) FROM pg_roles WHERE rolname = :r"), {"r": db.role(slug)}) == 0
        for name in ("schema_versions", "api_keys", "subscriptions"):
            count = await conn.scalar(sa.select(sa.func.count()).select_from(tables[name])
                                      .where(tables[name].c.tenant_id == tenant["id"]))
            assert count == 0, name
    assert httpx.get(f"{base}/api/tenants/{slug}/rest/v1/post").status_code == 404
    monkeypatch.undo()
    retried = call(base, "provision_tenant", dev, tenant=slug)
    assert retried.status_code == 200 and retried.json()["status"] == "active", retried.text
    assert call(base, "provision_tenant", dev, tenant=slug).json()["steps"] == []  # active: nothing to do
    keys = call(base, "reveal_keys", dev, tenant=slug).json()["keys"]
    assert httpx.get(f"{base}/api/tenants/{slug}/rest/v1/post", headers={"apikey": keys["anon"]}).json() == []


def test_each_lifecycle_transition_is_refused_from_the_wrong_state(base):
    admin = sign_in(base, ADMIN_EMAIL)
    owner = sign_up(base, "life@example.com")
    life = create_tenant(base, owner, "life")
    expect = [("activate_tenant", {}, 409), ("restore_tenant", {}, 409), ("suspend_tenant", {"reason": ""}, 422),
              ("suspend_tenant", {"reason": "abuse"}, 200), ("suspend_tenant", {"reason": "again"}, 409),
              ("delete_tenant", {}, 200), ("delete_tenant", {}, 409), ("activate_tenant", {}, 409),
              ("restore_tenant", {}, 200)]
    for name, extra, status in expect:
        answer = call(base, name, admin, tenant="life", **extra)
        assert answer.status_code == status, (name, answer.text)
        if status == 409:
            assert answer.json()["code"] == "transition_refused"
    assert call(base, "suspend_tenant", owner, tenant="life", reason="mine").status_code == 403  # admins only
    assert call(base, "delete_tenant", owner, tenant="life").status_code == 200  # an owner may delete...
    assert call(base, "restore_tenant", owner, tenant="life").status_code == 200  # ...and restore
    direct = httpx.patch(platform(base, "rest/v1/tenants"), params={"slug": "eq.life"}, json={"status": "suspended"},
                         headers=bearer(admin))
    assert direct.status_code == 403  # the status moves through the lifecycle functions only
    renamed = httpx.patch(platform(base, "rest/v1/tenants"), params={"slug": "eq.life"}, json={"slug": "other"},
                          headers=bearer(admin))
    assert renamed.status_code == 403 and renamed.json()["details"][0]["path"] == "slug"
    lifecycle = ["tenant.provisioned", "tenant.suspended", "tenant.deleted", "tenant.active", "tenant.deleted",
                 "tenant.active"]
    for _ in range(100):  # the platform API shows an entry once a gateway's sealer has chained it (each second)
        audit = httpx.get(platform(base, "rest/v1/audit_log"), params={"tenant_id": f"eq.{life['id']}", "select": "action",
                                                                    "order": "created_at", "action": "like.tenant.*"},
                          headers=bearer(admin)).json()
        if len(audit) >= len(lifecycle):
            break
        time.sleep(0.1)
    assert [a["action"] for a in audit] == lifecycle


def test_concurrent_deploys_of_one_tenant_exactly_one_wins(base):
    dev = sign_up(base, "race@example.com")
    create_tenant(base, dev, "race")
    checksum = call(base, "plan_schema", dev, tenant="race", source=BLOG).json()["base_checksum"]
    sources = [BLOG, BLOG.replace("      bio:   {type: text}\n", "      bio:   {type: text}\n      other: {type: text}\n")]
    answers: list[httpx.Response] = []
    threads = [threading.Thread(target=lambda s=s: answers.append(
        call(base, "deploy_schema", dev, tenant="race", source=s, expected_checksum=checksum))) for s in sources]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(a.status_code for a in answers) == [200, 409]
    assert next(a for a in answers if a.status_code == 409).json()["code"] == "version_conflict"
    assert [v["version"] for v in call(base, "schema_history", dev, tenant="race").json()] == [1, 2]


def test_a_deploy_swaps_the_runtime_under_load_without_a_failed_request(base):
    dev = sign_up(base, "swap@example.com")
    create_tenant(base, dev, "swap", initial_schema=BLOG)
    anon = {"apikey": call(base, "reveal_keys", dev, tenant="swap").json()["keys"]["anon"]}
    statuses: list[int] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client() as client:
            while not stop.is_set():
                statuses.append(client.get(f"{base}/api/tenants/swap/rest/v1/post?select=title", headers=anon).status_code)

    workers = [threading.Thread(target=load) for _ in range(4)]
    for worker in workers:
        worker.start()
    source = BLOG
    for i in range(3):
        source = source.replace("      bio:   {type: text}\n", f"      bio:   {{type: text}}\n      extra{i}: {{type: text}}\n")
        assert deploy(base, dev, "swap", source).status_code == 200
    stop.set()
    for worker in workers:
        worker.join()
    assert len(statuses) > 20 and set(statuses) == {200}


async def test_members_invitations_and_the_last_owner(base, db):
    owner = sign_up(base, "boss@team.example")
    create_tenant(base, owner, "team", plan="pro")  # four members: more than the free plan allows
    admin_invite = call(base, "invite_member", owner, tenant="team", email="adm@team.example", role="admin").json()
    assert call(base, "accept_invitation", None, token=admin_invite["token"], password=PASSWORD).status_code == 200
    reused = call(base, "accept_invitation", None, token=admin_invite["token"], password=PASSWORD)
    assert reused.status_code == 410 and reused.json()["code"] == "invitation_invalid"  # single use
    adm = sign_in(base, "adm@team.example")
    assert call(base, "invite_member", adm, tenant="team", email="x@team.example", role="owner").status_code == 403
    other = sign_up(base, "other@team.example")
    for_someone_else = call(base, "invite_member", adm, tenant="team", email="dev@team.example").json()
    wrong_account = call(base, "accept_invitation", other, token=for_someone_else["token"])
    assert wrong_account.status_code == 403
    cancelled = call(base, "cancel_invitation", adm, tenant="team", invitation=for_someone_else["id"])
    assert cancelled.status_code == 204
    assert call(base, "accept_invitation", None, token=for_someone_else["token"], password=PASSWORD).status_code == 410
    late = call(base, "invite_member", owner, tenant="team", email="other@team.example", role="viewer").json()
    invitations = catalog.platform_tables()["invitations"]

    async with db.begin() as conn:  # a week later
        await conn.execute(invitations.update().where(invitations.c.id == late["id"])
                           .values(expires_at=sa.func.now() - sa.text("interval '1 second'")))
    assert call(base, "accept_invitation", other, token=late["token"]).status_code == 410

    last = call(base, "remove_member", owner, tenant="team", email="boss@team.example")
    assert last.status_code == 409 and last.json()["code"] == "last_owner"
    demoted = call(base, "change_member_role", owner, tenant="team", email="boss@team.example", role="admin")
    assert demoted.status_code == 409
    assert call(base, "change_member_role", adm, tenant="team", email="boss@team.example", role="viewer").status_code == 403
    members = call(base, "list_members", adm, tenant="team").json()
    assert [(m["email"], m["role"]) for m in members] == [("adm@team.example", "admin"), ("boss@team.example", "owner")]
    assert call(base, "remove_member", adm, tenant="team", email="adm@team.example").status_code == 204


def test_another_tenants_member_cannot_act_on_a_tenant(base):
    mine, theirs = sign_up(base, "a@one.example"), sign_up(base, "b@two.example")
    create_tenant(base, mine, "one")
    create_tenant(base, theirs, "two")
    for name, extra in (("plan_schema", {"source": BLOG}), ("reveal_keys", {}), ("list_members", {}),
                        ("schema_history", {}), ("invite_member", {"email": "c@x.example"}), ("delete_tenant", {}),
                        ("update_tenant", {"settings": {}}), ("provision_tenant", {})):
        refused = call(base, name, mine, tenant="two", **extra)
        assert refused.status_code == 403 and refused.json()["code"] == "permission_denied", (name, refused.text)
    assert call(base, "list_members", None, tenant="two").status_code in (401, 403)
    rows = httpx.get(platform(base, "rest/v1/tenants"), params={"select": "slug"}, headers=bearer(mine)).json()
    assert rows == [{"slug": "one"}]


def test_settings_are_validated_written_by_owners_and_read_by_the_tenants_admins(base):
    owner = sign_up(base, "settings@example.com")
    create_tenant(base, owner, "knobs")
    bad = call(base, "update_tenant", owner, tenant="knobs", settings={"features": {"beta": "yes"}})
    assert bad.status_code == 422 and bad.json()["details"][0]["field"].startswith("settings")
    good = call(base, "update_tenant", owner, tenant="knobs", settings={"features": {"beta": True},
                                                                        "general": {"timezone": "Europe/Paris"}})
    assert good.status_code == 200, good.text
    keys = call(base, "reveal_keys", owner, tenant="knobs").json()["keys"]
    read = httpx.get(f"{base}/api/tenants/knobs/settings", headers={"apikey": keys["service"]})
    assert read.status_code == 200 and read.json()["features"] == {"beta": True}
    assert httpx.get(f"{base}/api/tenants/knobs/settings", headers={"apikey": keys["anon"]}).status_code == 403


def test_a_tenant_created_through_graphql_is_provisioned_the_same_way(base):
    dev = sign_up(base, "gql@example.com")
    made = httpx.post(platform(base, "graphql/v1"), headers=bearer(dev), json={
        "query": 'mutation { insert_tenants_one(object: {slug: "viagql", name: "Via GraphQL"}) { slug status } }'})
    assert made.json() == {"data": {"insert_tenants_one": {"slug": "viagql", "status": "pending"}}}, made.text
    status = lambda: httpx.post(platform(base, "graphql/v1"), headers=bearer(dev), json={  # noqa: E731
        "query": '{ tenants(where: {slug: {_eq: "viagql"}}) { status memberships { role } } }'}).json()["data"]["tenants"]
    assert wait_for(lambda: status()[0]["status"] == "active")
    assert status()[0]["memberships"] == [{"role": "owner"}]
    reserved = httpx.post(platform(base, "graphql/v1"), headers=bearer(dev), json={
        "query": 'mutation { insert_tenants_one(object: {slug: "www", name: "x"}) { slug } }'}).json()
    assert reserved["errors"][0]["extensions"]["code"] == "validation-failed"
