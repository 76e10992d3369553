"""The audit trail, driven through the public surfaces: an entry for every write (REST, GraphQL, a hook's and
a function's `ctx.data`), every authentication event, platform operation and permission denial, with its
actor and request and the values that must not be seen redacted; none for a write that failed or was
killed mid-transaction, none for an entity that opts out; nobody but a tenant's owners and admins and
the platform's admins reads it, and no tenant can write, edit or delete it, by API or by SQL."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import sys
import types
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from engine.database import Database
from engine.hooks import Change, HookContext, function, hook
from functions.keys import create_api_key, revoke_api_key
from functions.tenants import activate_tenant, create_tenant, suspend_tenant
from functions.users import create_platform_admin
from tests.conftest import driver_url
from tests.server import running_gateway

PASSWORD = "a long enough passphrase"


@hook
async def remember(ctx: HookContext, change: Change) -> None:
    await ctx.data.elevated().insert("journal", {"what": f"made {change.record['title']}"})


@function
async def jot(ctx: HookContext, payload: dict) -> dict:
    rows = await ctx.data.insert("journal", {"what": payload["what"]})
    return {"id": rows[0]["id"]}


@hook
async def explode(ctx: HookContext, change: Change) -> None:
    raise RuntimeError("the after hook fails once the row is written")


module = types.ModuleType("functions.audittests")
for fn in (remember, jot, explode):
    setattr(module, fn.__name__, fn)

SCHEMA = """
name: ledger
entities:
  note:
    fields:
      title:  {type: string, required: true}
      secret: {type: string, sensitive: true}
      contact: {type: string, pii: true}
      score:  {type: integer}
    permissions:
      read: {anon: all, authenticated: all}
      create: {anon: all, authenticated: all}
      update: {anon: all}
      delete: {anon: all}
  hooked:
    fields:
      title: {type: string, required: true}
    permissions:
      read: {anon: all}
      create: {anon: all}
    hooks:
      after_create: [audittests.remember]
  typed:
    fields:
      tags:  {type: array, items: string}
      meta:  {type: json}
      due:   {type: datetime}
      price: {type: decimal, precision: 8, scale: 2}
      done:  {type: boolean}
      day:   {type: date}
    permissions:
      read: {anon: all}
      create: {anon: all}
      update: {anon: all}
  journal:
    fields:
      what: {type: text, required: true}
    permissions:
      read: {anon: all}
      create: {anon: all}
  reading:
    audit: false
    fields:
      value: {type: number}
    permissions:
      read: {anon: all}
      create: {anon: all}
  locked:
    fields:
      title: {type: string}
    permissions:
      read: {anon: all}
  tagged:
    fields:
      code: {type: string, unique: true}
    permissions:
      read: {anon: all}
      create: {anon: all}
    hooks:
      after_create: [audittests.explode]
  claim:
    owner: true
    fields:
      code:  {type: string, unique: true}
      title: {type: string}
    permissions:
      read: {authenticated: all}
      create: {authenticated: all}
      update: {authenticated: own}
  unique_code:
    fields:
      code: {type: string, unique: true}
    permissions:
      read: {anon: all}
      create: {anon: all}
functions:
  jot:
    handler: audittests.jot
    roles: [anon]
"""


@pytest.fixture(scope="module")
async def setup(db: Database) -> Iterator[dict[str, Any]]:
    sys.modules["functions.audittests"] = module
    made: dict[str, Any] = {}
    for slug in ("alpha", "beta"):
        await create_tenant(db, slug, source=SCHEMA)
        for role in ("anon", "service"):
            made[f"{slug}_{role}"] = (await create_api_key(db, slug, role, role)).key
    made["admin_id"] = await create_platform_admin(db, "root@example.com", PASSWORD)
    yield made
    del sys.modules["functions.audittests"]


@pytest.fixture(scope="module")
def base(setup: dict[str, Any], database_url: str) -> Iterator[str]:
    with running_gateway(database_url) as url:
        yield url


@pytest.fixture(scope="module")
async def ids(setup: dict[str, Any], database_url: str) -> dict[str, str]:
    conn = await asyncpg.connect(driver_url(database_url))
    try:
        rows = await conn.fetch("SELECT slug, id::text FROM system.tenants")
    finally:
        await conn.close()
    return {r["slug"]: r["id"] for r in rows}


def api(base: str, slug: str) -> str:
    return f"{base}/api/tenants/{slug}"


def as_key(key: str) -> dict[str, str]:
    return {"apikey": key, "Authorization": f"Bearer {key}"}


async def query(database_url: str, sql: str, *args: Any) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(driver_url(database_url))
    try:
        return [dict(r) for r in await conn.fetch(sql, *args)]
    finally:
        await conn.close()


async def trail(database_url: str, tenant_id: str, **where: Any) -> list[dict[str, Any]]:
    """The tenant's entries (as the platform's superuser reads them), oldest first, `where` column = value;
    sealed first, as the gateway's sealer would have within a second."""
    await query(database_url, "SELECT backsaas_audit.seal($1::uuid)", tenant_id)
    clauses = "".join(f" AND {k} = ${i}" for i, k in enumerate(where, start=2))
    rows = await query(database_url, f"SELECT * FROM system.audit_log WHERE chain = $1::uuid{clauses} ORDER BY seq",
                       tenant_id, *where.values())
    for row in rows:
        row["changes"] = orjson.loads(row["changes"]) if row["changes"] else {}
        row["data"] = orjson.loads(row["data"]) if row["data"] else {}
    return rows


def platform_session(base: str, email: str) -> dict[str, Any]:
    made = httpx.post(f"{base}/api/platform/auth/v1/signup", json={"email": email, "password": PASSWORD})
    if made.status_code != 200:
        made = httpx.post(f"{base}/api/platform/auth/v1/token", params={"grant_type": "password"},
                          json={"email": email, "password": PASSWORD})
    assert made.status_code == 200, made.text
    return made.json()


def bearer(session: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {session['access_token']}"}


# -- every write, whatever the surface -------------------------------------------------------------------


async def test_rest_writes_are_audited_with_old_and_new_values_actor_and_request(base, setup, ids, database_url):
    headers = {**as_key(setup["alpha_anon"]), "Prefer": "return=representation", "User-Agent": "audit-test/1",
               "X-Request-Id": "req-audit-rest-1"}
    made = httpx.post(f"{api(base, 'alpha')}/rest/v1/note", headers=headers,
                      json={"title": "first", "secret": "hunter2", "score": 1})
    assert made.status_code == 201, made.text
    row_id = made.json()[0]["id"]
    changed = httpx.patch(f"{api(base, 'alpha')}/rest/v1/note?id=eq.{row_id}",
                          headers={**headers, "X-Request-Id": "req-audit-rest-2"}, json={"score": 2, "secret": "x"})
    assert changed.status_code == 200, changed.text
    gone = httpx.delete(f"{api(base, 'alpha')}/rest/v1/note?id=eq.{row_id}",
                        headers={**headers, "X-Request-Id": "req-audit-rest-3"})
    assert gone.status_code == 200, gone.text

    entries = await trail(database_url, ids["alpha"], entity="note", record_id=uuid.UUID(row_id))
    assert [e["action"] for e in entries] == ["create", "update", "delete"]
    create, update, delete = entries
    assert create["changes"]["title"] == {"old": None, "new": "first"}
    assert create["changes"]["secret"] == {"old": None, "new": "[redacted]"}
    assert update["changes"]["score"] == {"old": 1, "new": 2}
    assert update["changes"]["secret"] == {"old": "[redacted]", "new": "[redacted]"}
    assert set(update["changes"]) == {"score", "secret"}  # only what changed (updated_at is the engine's)
    assert delete["changes"]["title"] == {"old": "first", "new": None}
    assert [e["request_id"] for e in entries] == ["req-audit-rest-1", "req-audit-rest-2", "req-audit-rest-3"]
    for entry in entries:
        assert entry["key_name"] == "anon" and entry["roles"] == "anon"
        assert entry["ip"] == "127.0.0.1" and entry["user_agent"] == "audit-test/1"
        assert entry["created_at"] is not None
    assert "hunter2" not in orjson.dumps([e["changes"] for e in entries]).decode()


async def test_an_update_records_the_fields_whose_value_changed_compared_as_their_type_compares(
        base, setup, ids, database_url):
    headers = {**as_key(setup["alpha_anon"]), "Prefer": "return=representation"}
    made = httpx.post(f"{api(base, 'alpha')}/rest/v1/typed", headers=headers, json={
        "tags": ["a"], "meta": {"k": [1, 2]}, "due": "2026-01-01T10:00:00Z", "price": 1.5, "done": False,
        "day": "2026-01-01"})
    assert made.status_code == 201, made.text
    row_id = made.json()[0]["id"]
    same_values_written_otherwise = {"meta": {"k": [1, 2]}, "due": "2026-01-01T11:00:00+01:00", "price": "1.50",
                                     "day": "2026-01-01"}
    changed = httpx.patch(f"{api(base, 'alpha')}/rest/v1/typed?id=eq.{row_id}", headers=headers,
                          json={**same_values_written_otherwise, "tags": ["a", "b"], "done": True})
    assert changed.status_code == 200, changed.text

    create, update = await trail(database_url, ids["alpha"], entity="typed", record_id=uuid.UUID(row_id))
    assert {k: v["new"] for k, v in create["changes"].items() if k in ("tags", "meta", "done", "day")} == \
        {"tags": ["a"], "meta": {"k": [1, 2]}, "done": False, "day": "2026-01-01"}
    assert create["changes"]["price"] == {"old": None, "new": 1.5}
    assert update["changes"] == {"tags": {"old": ["a"], "new": ["a", "b"]}, "done": {"old": False, "new": True}}


async def test_personal_data_never_enters_the_trail(base, setup, ids, database_url):
    """pii fields and users' emails are redacted like secrets: a GDPR erasure cannot edit a hash chain."""
    made = httpx.post(f"{api(base, 'alpha')}/rest/v1/note", json={"title": "reach me", "contact": "zed@example.com"},
                      headers={**as_key(setup["alpha_anon"]), "Prefer": "return=representation"})
    assert made.status_code == 201, made.text
    user = httpx.post(f"{api(base, 'alpha')}/auth/v1/signup", headers=as_key(setup["alpha_anon"]),
                      json={"email": "zed@example.com", "password": PASSWORD})
    assert user.status_code == 200, user.text
    note = await trail(database_url, ids["alpha"], entity="note", record_id=uuid.UUID(made.json()[0]["id"]))
    assert note[0]["changes"]["contact"] == {"old": None, "new": "[redacted]"}
    everything = orjson.dumps(await trail(database_url, ids["alpha"]), default=str).decode()
    assert "zed@example.com" not in everything


async def test_a_signed_in_users_write_names_the_user(base, setup, ids, database_url):
    user = httpx.post(f"{api(base, 'alpha')}/auth/v1/signup", headers={"apikey": setup["alpha_anon"]},
                      json={"email": "writer@example.com", "password": PASSWORD}).json()
    made = httpx.post(f"{api(base, 'alpha')}/rest/v1/note", json={"title": "by a user"},
                      headers={"apikey": setup["alpha_anon"], "Authorization": f"Bearer {user['access_token']}",
                               "Prefer": "return=representation"})
    assert made.status_code == 201, made.text
    [entry] = await trail(database_url, ids["alpha"], entity="note",
                          record_id=uuid.UUID(made.json()[0]["id"]))
    assert str(entry["user_id"]) == user["user"]["id"] and entry["roles"] == "authenticated"


async def test_graphql_mutations_are_audited(base, setup, ids, database_url):
    answer = httpx.post(f"{api(base, 'alpha')}/graphql/v1", headers={**as_key(setup["alpha_anon"]),
                                                                     "X-Request-Id": "req-audit-gql"},
                        json={"query": 'mutation { insert_note_one(object: {title: "via graphql", secret: "s"}) '
                                       '{ id } }'})
    assert answer.status_code == 200 and "errors" not in answer.json(), answer.text
    row_id = answer.json()["data"]["insert_note_one"]["id"]
    updated = httpx.post(f"{api(base, 'alpha')}/graphql/v1", headers=as_key(setup["alpha_anon"]),
                         json={"query": f'mutation {{ update_note(where: {{id: {{_eq: "{row_id}"}}}}, '
                                        '_set: {score: 7}) { affected_rows } }'})
    assert updated.status_code == 200 and "errors" not in updated.json(), updated.text
    entries = await trail(database_url, ids["alpha"], entity="note", record_id=uuid.UUID(row_id))
    assert [e["action"] for e in entries] == ["create", "update"]
    assert entries[0]["request_id"] == "req-audit-gql" and entries[0]["changes"]["secret"]["new"] == "[redacted]"
    assert entries[1]["changes"]["score"] == {"old": None, "new": 7}


async def test_writes_of_hooks_and_functions_through_ctx_data_are_audited(base, setup, ids, database_url):
    made = httpx.post(f"{api(base, 'alpha')}/rest/v1/hooked", json={"title": "with a hook"},
                      headers={**as_key(setup["alpha_anon"]), "X-Request-Id": "req-audit-hook"})
    assert made.status_code == 201, made.text
    called = httpx.post(f"{api(base, 'alpha')}/functions/v1/jot", json={"what": "from a function"},
                        headers={**as_key(setup["alpha_anon"]), "X-Request-Id": "req-audit-fn"})
    assert called.status_code == 200, called.text
    journal = await trail(database_url, ids["alpha"], entity="journal")
    by_request = {e["request_id"]: e for e in journal}
    assert by_request["req-audit-hook"]["changes"]["what"]["new"] == "made with a hook"
    assert by_request["req-audit-fn"]["changes"]["what"]["new"] == "from a function"
    assert str(by_request["req-audit-fn"]["record_id"]) == called.json()["id"]
    assert [e["request_id"] for e in await trail(database_url, ids["alpha"], entity="hooked")] == ["req-audit-hook"]


async def test_an_entity_with_audit_false_leaves_no_entry(base, setup, ids, database_url):
    made = httpx.post(f"{api(base, 'alpha')}/rest/v1/reading", json={"value": 1.5},
                      headers={**as_key(setup["alpha_anon"]), "Prefer": "return=representation"})
    assert made.status_code == 201, made.text
    assert await trail(database_url, ids["alpha"], entity="reading") == []


async def test_a_failed_write_leaves_no_entry(base, setup, ids, database_url):
    """A statement the database refuses half-way, and a write whose after-hook fails once the rows (and
    their entries) were written: neither leaves an entry, and the chain goes on unbroken."""
    before = await trail(database_url, ids["alpha"])
    duplicate = httpx.post(f"{api(base, 'alpha')}/rest/v1/unique_code", json=[{"code": "a"}, {"code": "a"}],
                           headers=as_key(setup["alpha_anon"]))
    assert duplicate.status_code == 409, duplicate.text
    hooked = httpx.post(f"{api(base, 'alpha')}/rest/v1/tagged", json={"code": "b"}, headers=as_key(setup["alpha_anon"]))
    assert hooked.status_code == 500 and hooked.json()["code"] == "hook_failed", hooked.text
    after = await trail(database_url, ids["alpha"])
    assert [e["seq"] for e in after] == [e["seq"] for e in before]
    assert not [e for e in after if e["entity"] in ("unique_code", "tagged")]
    ok = httpx.post(f"{api(base, 'alpha')}/rest/v1/unique_code", json={"code": "c"}, headers=as_key(setup["alpha_anon"]))
    assert ok.status_code == 201
    last = (await trail(database_url, ids["alpha"]))[-1]
    assert last["entity"] == "unique_code" and last["seq"] == before[-1]["seq"] + 1


async def test_a_write_killed_between_statements_leaves_no_entry(db, setup, ids, database_url):
    """A transaction that wrote (and so appended its entry) and then dies before COMMIT leaves neither."""
    before = await trail(database_url, ids["alpha"])
    victim = await asyncpg.connect(driver_url(database_url))
    killer = await asyncpg.connect(driver_url(database_url))
    try:
        await victim.execute("BEGIN")
        await victim.execute(f'SET LOCAL ROLE "{db.role("alpha")}"')
        await victim.execute("INSERT INTO t_alpha.note (title) VALUES ('never committed')")
        inside = await killer.fetchval("SELECT count(*) FROM system.audit_log WHERE chain = $1::uuid", ids["alpha"])
        assert inside == len(before)  # not visible outside its transaction
        pid = victim.get_server_pid()
        assert await killer.fetchval("SELECT pg_terminate_backend($1)", pid)
        with pytest.raises(Exception):  # noqa: B017 - the connection is gone: whichever way the client says so
            await victim.execute("INSERT INTO t_alpha.note (title) VALUES ('second statement')")
    finally:
        await killer.close()
        victim.terminate()
    after = await trail(database_url, ids["alpha"])
    assert [e["seq"] for e in after] == [e["seq"] for e in before]
    assert not any("never committed" in orjson.dumps(e["changes"]).decode() for e in after)
    # the chain goes on where it was: the next write takes the next seq
    async with db.as_role(db.role("alpha")) as conn:
        await conn.execute("INSERT INTO t_alpha.note (title) VALUES ('after the kill')")
    again = await trail(database_url, ids["alpha"])
    assert again[-1]["seq"] == before[-1]["seq"] + 1 and again[-1]["prev_hash"] == before[-1]["hash"]


# -- authentication events, platform operations, denials --------------------------------------------------


async def test_authentication_events_are_audited_without_secrets(base, setup, ids, database_url):
    auth = f"{api(base, 'beta')}/auth/v1"
    anon = {"apikey": setup["beta_anon"]}
    first = httpx.post(f"{auth}/signup", headers={**anon, "X-Request-Id": "req-signup"},
                       json={"email": "eve@example.com", "password": PASSWORD}).json()
    wrong = httpx.post(f"{auth}/token?grant_type=password", headers=anon,
                       json={"email": "eve@example.com", "password": "not the password at all"})
    assert wrong.status_code == 400
    signed = httpx.post(f"{auth}/token?grant_type=password", headers=anon,
                        json={"email": "eve@example.com", "password": PASSWORD}).json()
    rotated = httpx.post(f"{auth}/token?grant_type=refresh_token", headers=anon,
                         json={"refresh_token": signed["refresh_token"]})
    assert rotated.status_code == 200
    reused = httpx.post(f"{auth}/token?grant_type=refresh_token", headers=anon,
                        json={"refresh_token": signed["refresh_token"]})
    assert reused.status_code == 400
    user_headers = {**anon, "Authorization": f"Bearer {first['access_token']}"}
    changed = httpx.put(f"{auth}/user", headers=user_headers, json={"password": "another long passphrase"})
    assert changed.status_code == 200, changed.text
    out = httpx.post(f"{auth}/logout", headers=user_headers)
    assert out.status_code == 204, out.text
    await create_api_key(Database.open(database_url), "beta", "ci", "service")
    entries = await trail(database_url, ids["beta"])
    actions = [e["action"] for e in entries]
    for action in ("auth.signup", "auth.login_failed", "auth.login", "auth.refresh_token_reused", "auth.user_updated",
                   "auth.logout"):
        assert action in actions, action
    password_change = [e for e in entries if e["entity"] == "users" and e["action"] == "update"
                       and "password_hash" in e["changes"]]
    assert password_change and password_change[-1]["changes"]["password_hash"] == {"old": "[redacted]",
                                                                                   "new": "[redacted]"}
    signup_row = next(e for e in entries if e["entity"] == "users" and e["action"] == "create")
    assert signup_row["changes"]["password_hash"]["new"] == "[redacted]"
    assert signup_row["request_id"] == "req-signup" and signup_row["key_name"] == "anon"  # the auth API's writes too
    failed = next(e for e in entries if e["action"] == "auth.login_failed")
    assert failed["data"]["email_sha256"] == hashlib.sha256(b"eve@example.com").hexdigest()  # pseudonymised
    assert "eve@example.com" not in orjson.dumps(failed, default=str).decode()
    assert PASSWORD not in orjson.dumps(failed["data"]).decode()
    assert "not the password" not in orjson.dumps([e["data"] for e in entries]).decode()


async def test_api_keys_made_and_revoked_are_audited_with_the_key_redacted(db, ids, database_url):
    made = await create_api_key(db, "beta", "deploy-bot", "service")
    await revoke_api_key(db, "beta", "deploy-bot")
    entries = await trail(database_url, ids["beta"], entity="api_keys")
    assert {"auth.key_created", "auth.key_revoked"} <= {e["action"] for e in entries}
    text = orjson.dumps([e["changes"] for e in entries]).decode()
    assert made.key not in text
    created = next(e for e in entries if e["action"] == "create" and e["changes"]["name"]["new"] == "deploy-bot")
    assert created["changes"]["key_hash"]["new"] == "[redacted]"
    revoked = [e for e in entries if e["action"] == "update" and "revoked_at" in e["changes"]]
    assert revoked and revoked[-1]["changes"]["revoked_at"]["old"] is None  # in the tenant's chain, as the rest


async def test_platform_operations_are_audited_in_the_tenants_chain(db, ids, database_url):
    await suspend_tenant(db, "beta", "audit test")
    await activate_tenant(db, "beta")
    actions = [e["action"] for e in await trail(database_url, ids["beta"])]
    assert "tenant.suspended" in actions and "tenant.active" in actions
    status_changes = [e for e in await trail(database_url, ids["beta"], entity="tenants", action="update")
                      if "status" in e["changes"]]
    assert [e["changes"]["status"]["new"] for e in status_changes[-2:]] == ["suspended", "active"]


async def test_a_permission_denial_is_audited(base, setup, ids, database_url):
    denied = httpx.patch(f"{api(base, 'alpha')}/rest/v1/locked?id=eq.{'0' * 8}-0000-0000-0000-{'0' * 12}",
                         json={"title": "x"}, headers={**as_key(setup["alpha_anon"]), "X-Request-Id": "req-denied"})
    assert denied.status_code == 403, denied.text
    [entry] = await trail(database_url, ids["alpha"], request_id="req-denied")
    assert entry["action"] == "access.denied" and entry["key_name"] == "anon"
    assert entry["data"]["method"] == "PATCH" and entry["data"]["path"].endswith("/rest/v1/locked")


async def test_a_graphql_denial_is_audited_though_graphql_answers_200(base, setup, ids, database_url):
    def user(email: str) -> dict[str, str]:
        made = httpx.post(f"{api(base, 'alpha')}/auth/v1/signup", headers={"apikey": setup["alpha_anon"]},
                          json={"email": email, "password": PASSWORD}).json()
        return {"apikey": setup["alpha_anon"], "Authorization": f"Bearer {made['access_token']}"}

    ann, bob = user("ann.claims@example.com"), user("bob.claims@example.com")
    made = httpx.post(f"{api(base, 'alpha')}/rest/v1/claim", json={"code": "c1", "title": "ann's"},
                      headers={**ann, "Prefer": "return=representation"})
    assert made.status_code == 201, made.text
    taken = httpx.post(f"{api(base, 'alpha')}/graphql/v1", headers={**bob, "X-Request-Id": "req-gql-denied"},
                       json={"query": 'mutation { insert_claim_one(object: {code: "c1", title: "bob"}, '
                                      'on_conflict: {constraint: claim_code_key, update_columns: [title]}) { id } }'})
    assert taken.status_code == 200 and taken.json()["errors"], taken.text
    [entry] = await trail(database_url, ids["alpha"], request_id="req-gql-denied")
    assert entry["action"] == "access.denied" and entry["data"]["path"].endswith("/graphql/v1")


# -- nobody writes it -------------------------------------------------------------------------------------


async def test_a_tenant_role_can_neither_read_nor_forge_edit_or_delete_entries_by_sql(db, ids, database_url):
    conn = await asyncpg.connect(driver_url(database_url))
    try:
        role = db.role("alpha")
        for statement in ("SELECT count(*) FROM system.audit_log",
                          "UPDATE system.audit_log SET action = 'forged'",
                          "DELETE FROM system.audit_log",
                          "INSERT INTO system.audit_log (action, data) VALUES ('forged', '{}')",
                          "UPDATE backsaas_audit.heads SET seq = 0",
                          "SELECT count(*) FROM backsaas_audit.pending",
                          "INSERT INTO backsaas_audit.pending (chain, action, data) VALUES (gen_random_uuid(), 'forged', '{}')",
                          "DELETE FROM backsaas_audit.pending",
                          "SELECT backsaas_audit.moved(ARRAY[gen_random_uuid()], ARRAY[1::bigint], ARRAY[''], ARRAY['x'], "
                          "ARRAY[gen_random_uuid()], ARRAY[1::bigint], ARRAY['x'])",
                          f"SELECT backsaas_audit.append('[{{\"tenant_id\": \"{ids['beta']}\", \"action\": \"forged\"}}]')",
                          "CREATE TRIGGER forged AFTER INSERT ON t_alpha.journal REFERENCING NEW TABLE AS new_rows "
                          'FOR EACH STATEMENT EXECUTE FUNCTION backsaas_audit."capture.t_beta.journal"()'):
            async with conn.transaction():
                await conn.execute(f'SET LOCAL ROLE "{role}"')
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await conn.execute(statement)
        # a tenant's own connection may note an event, in its own chain only, whatever tenant it names
        async with conn.transaction():
            await conn.execute(f'SET LOCAL ROLE "{role}"')
            await conn.execute("SELECT backsaas_audit.note($1::jsonb)",
                               orjson.dumps([{"tenant_id": ids["beta"], "action": "app.noted"}]).decode())
    finally:
        await conn.close()
    assert [e["action"] for e in await trail(database_url, ids["alpha"], action="app.noted")] == ["app.noted"]
    assert await trail(database_url, ids["beta"], action="app.noted") == []
    assert await trail(database_url, ids["beta"], action="forged") == []


def test_the_trail_cannot_be_written_through_the_platform_api(base, setup):
    admin = platform_session(base, "root@example.com")
    url = f"{base}/api/platform/rest/v1/audit_log"
    assert httpx.post(url, headers=bearer(admin), json={"action": "forged", "data": {}}).status_code in (403, 405)
    assert httpx.patch(f"{url}?action=eq.tenant.provisioned", headers=bearer(admin),
                       json={"action": "forged"}).status_code in (403, 405)
    assert httpx.delete(f"{url}?action=eq.tenant.provisioned", headers=bearer(admin)).status_code in (403, 405)
    assert httpx.get(url, headers=bearer(admin), params={"action": "eq.forged"}).json() == []


# -- who reads it --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def owner(base: str, ids: dict[str, str], database_url: str) -> dict[str, Any]:
    """A platform account that owns alpha (a membership), signed in."""
    session = platform_session(base, "owner@example.com")
    await query(database_url, "INSERT INTO system.memberships (user_id, tenant_id, role) VALUES ($1::uuid, $2::uuid, "
                "'owner')", session["user"]["id"], ids["alpha"])
    return session


def call(base: str, name: str, headers: dict[str, str], **payload: Any) -> httpx.Response:
    return httpx.post(f"{base}/api/platform/functions/v1/{name}", json=payload, headers=headers)


async def test_a_tenant_owner_pages_through_the_trail_with_filters(base, owner, setup, ids, database_url):
    for n in range(5):
        assert httpx.post(f"{api(base, 'alpha')}/rest/v1/note", json={"title": f"paged {n}"},
                          headers=as_key(setup["alpha_anon"])).status_code == 201
    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = call(base, "audit_entries", bearer(owner), tenant="alpha", entity="note", action="create", limit=2,
                    **({"cursor": cursor} if cursor else {}))
        assert page.status_code == 200, page.text
        seen += page.json()["entries"]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
    expected = await trail(database_url, ids["alpha"], entity="note", action="create")
    assert [e["seq"] for e in seen] == [e["seq"] for e in expected]
    assert all(e["tenant_id"] == ids["alpha"] for e in seen)
    by_actor = call(base, "audit_entries", bearer(owner), tenant="alpha", actor="anon", action="access.").json()
    assert [e["action"] for e in by_actor["entries"]] == ["access.denied"] * len(by_actor["entries"])
    one_row = call(base, "audit_entries", bearer(owner), tenant="alpha", record_id=str(expected[0]["record_id"])).json()
    assert {e["record_id"] for e in one_row["entries"]} == {str(expected[0]["record_id"])}
    later = call(base, "audit_entries", bearer(owner), tenant="alpha",
                 since=expected[-1]["created_at"].isoformat(), entity="note", action="create").json()
    assert [e["seq"] for e in later["entries"]][-1] == expected[-1]["seq"] and len(later["entries"]) < len(expected)


def test_export_streams_csv_and_json_with_filters(base, owner, setup):
    url = f"{base}/api/platform/audit/v1/export"
    as_json = httpx.get(url, headers=bearer(owner), params={"tenant": "alpha", "entity": "note", "format": "json"})
    assert as_json.status_code == 200, as_json.text
    rows = as_json.json()
    assert rows and {r["entity"] for r in rows} == {"note"}
    as_csv = httpx.get(url, headers=bearer(owner), params={"tenant": "alpha", "entity": "note", "format": "csv"})
    assert as_csv.status_code == 200 and as_csv.headers["content-type"].startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(as_csv.text)))
    assert [r["seq"] for r in table] == [str(r["seq"]) for r in rows]
    assert {r["entity"] for r in table} == {"note"}
    assert orjson.loads(table[0]["changes"]) == rows[0]["changes"]
    bad = httpx.get(url, headers=bearer(owner), params={"tenant": "alpha", "format": "xml"})
    assert bad.status_code == 400 and bad.json()["details"][0]["path"] == "format"


def test_another_tenants_owner_reads_nothing_of_its_trail(base, owner):
    for name in ("audit_entries", "verify_audit", "audit_heads"):
        refused = call(base, name, bearer(owner), tenant="beta")
        assert refused.status_code == 403, (name, refused.text)
        assert "beta" not in refused.text or "membership" in refused.text
    export = httpx.get(f"{base}/api/platform/audit/v1/export", headers=bearer(owner), params={"tenant": "beta"})
    assert export.status_code == 403
    everyone = call(base, "audit_entries", bearer(owner))  # every tenant's: platform admins only
    assert everyone.status_code in (403, 422) and "entries" not in everyone.json()


def test_an_end_user_a_tenant_key_or_anonymous_reads_no_trail(base, setup):
    user = httpx.post(f"{api(base, 'alpha')}/auth/v1/signup", headers={"apikey": setup["alpha_anon"]},
                      json={"email": "nosy@example.com", "password": PASSWORD}).json()
    attempts = [{"Authorization": f"Bearer {user['access_token']}"}, as_key(setup["alpha_service"]), {}]
    for headers in attempts:
        for name in ("audit_entries", "verify_audit"):
            answer = call(base, name, headers, tenant="alpha")
            assert answer.status_code in (401, 403), (name, answer.text)
            assert "hash" not in answer.text
        export = httpx.get(f"{base}/api/platform/audit/v1/export", headers=headers, params={"tenant": "alpha"})
        assert export.status_code in (401, 403), export.text
        rest = httpx.get(f"{base}/api/platform/rest/v1/audit_log", headers=headers)
        assert rest.status_code in (401, 403) or rest.json() == [], rest.text
    # a tenant's own base URL has no audit route
    assert httpx.get(f"{api(base, 'alpha')}/audit/v1/export", headers=as_key(setup["alpha_service"])).status_code == 404


def test_a_platform_admin_reads_every_tenants_trail(base, ids):
    admin = platform_session(base, "root@example.com")
    page = call(base, "audit_entries", bearer(admin), limit=1000)
    assert page.status_code == 200, page.text
    assert {ids["alpha"], ids["beta"]} <= {e["tenant_id"] for e in page.json()["entries"]}


async def test_concurrent_requests_keep_their_own_context(base, setup, ids, database_url):
    async with httpx.AsyncClient() as client:
        answers = await asyncio.gather(*(client.post(
            f"{api(base, 'alpha')}/rest/v1/journal", json={"what": f"parallel {n}"},
            headers={**as_key(setup["alpha_anon"]), "X-Request-Id": f"req-parallel-{n}"}) for n in range(8)))
    assert all(a.status_code == 201 for a in answers)
    entries = [e for e in await trail(database_url, ids["alpha"], entity="journal")
               if e["changes"].get("what", {}).get("new", "").startswith("parallel ")]
    assert {e["request_id"]: e["changes"]["what"]["new"] for e in entries} == {
        f"req-parallel-{n}": f"parallel {n}" for n in range(8)}
