"""Casbin decisions at the authorization seam, and row scopes enforced in SQL, through the engine's REST API.

The gateway does not authenticate yet (issue 4), so these drive `RestApi` with explicit callers."""

from __future__ import annotations

import uuid

import orjson
import pytest

from engine.authz import Authorizer, Caller, authorize
from engine.database import Database
from engine.errors import Forbidden, ValidationFailed
from engine.rest.api import RestApi
from engine.runtime import RuntimeRegistry
from engine.schema import load_schema
from functions.tenants import create_tenant

NOTES = """
name: notes
roles: [member, editor]
entities:
  board:
    fields:
      name: {type: text}
    permissions:
      read:   {member: all}
  note:
    owner: true
    fields:
      text:  {type: text, required: true}
      board: {type: ref, to: board, reverse: notes}
    permissions:
      read:   {anon: all, member: own}
      create: {member: all}
      update: {member: own, editor: all}
      delete: {editor: all}
  secret:
    fields:
      v: {type: text}
"""


@pytest.fixture(scope="module")
def authorizer() -> Authorizer:
    return Authorizer.for_schema(load_schema(NOTES), "notes")


@pytest.mark.parametrize(("roles", "entity", "action", "scope"), [
    (("anon",), "note", "read", "all"),
    (("member",), "note", "read", "own"),
    (("member", "anon"), "note", "read", "all"),  # the widest scope of the caller's roles
    (("member",), "note", "create", "all"),
    (("editor",), "note", "update", "all"),
    (("admin",), "secret", "delete", "all"),
    (("service",), "note", "read", "all"),  # service bypasses row scopes
    (("platform_admin",), "secret", "update", "all"),  # a platform admin, in any tenant
    (("anon",), "note", "delete", None),
    (("member",), "secret", "read", None),  # absent action: nobody but admin
    (("authenticated",), "note", "read", None),
])
def test_casbin_decides_each_path(authorizer, roles, entity, action, scope):
    assert authorizer.scope(roles, entity, action) == scope


def test_decisions_are_memoized_per_roles_entity_action(authorizer):
    authorizer.scope(("member",), "note", "update")
    assert authorizer.decisions[(("member",), "note", "update")] == "own"


def test_denied_actions_raise_permission_denied(authorizer):
    with pytest.raises(Forbidden) as denied:
        authorize(authorizer, Caller(roles=("anon",)), "note", "delete")
    assert denied.value.code == "permission_denied" and denied.value.status == 403


def test_own_scope_needs_a_signed_in_caller(authorizer):
    with pytest.raises(Forbidden):
        authorize(authorizer, Caller(roles=("member",)), "note", "read")


def test_a_tenants_enforcer_holds_only_its_own_policies(authorizer):
    assert {rule[1] for rule in authorizer.enforcer.get_policy()} == {"notes"}
    assert authorizer.enforcer.enforce("admin", "other", "note", "read:all") is False


@pytest.fixture(scope="module")
async def runtime(db: Database):
    await create_tenant(db, "notes", source=NOTES)
    return await RuntimeRegistry(db).get("notes")


async def call(db, runtime, caller, method, query=b"", body=None):
    api = RestApi(runtime, db, caller)
    return await api.handle(method, "note", query, {"prefer": "return=representation"},
                            orjson.dumps(body) if body is not None else b"")


async def test_own_rows_are_created_read_updated_and_deleted_by_their_owner_only(db, runtime):
    x, y = Caller(("member",), str(uuid.uuid4())), Caller(("member",), str(uuid.uuid4()))
    await db_user(db, x.user_id)
    await db_user(db, y.user_id)
    created = orjson.loads((await call(db, runtime, x, "POST", body={"text": "x's note"})).body)
    assert created[0]["owner_id"] == x.user_id  # set from the caller
    await call(db, runtime, y, "POST", body={"text": "y's note"})
    seen_by_x = orjson.loads((await call(db, runtime, x, "GET")).body)
    assert [n["text"] for n in seen_by_x] == ["x's note"]
    updated = orjson.loads((await call(db, runtime, y, "PATCH", f"id=eq.{created[0]['id']}".encode(),
                                       {"text": "hijacked"})).body)
    assert updated == []  # y's update matches none of x's rows
    everyone = orjson.loads((await call(db, runtime, Caller(("anon",)), "GET", b"order=text")).body)
    assert [n["text"] for n in everyone] == ["x's note", "y's note"]
    with pytest.raises(Forbidden):
        await call(db, runtime, y, "DELETE", f"id=eq.{created[0]['id']}".encode())


async def test_owner_id_cannot_be_forged(db, runtime):
    x = Caller(("member",), str(uuid.uuid4()))
    await db_user(db, x.user_id)
    with pytest.raises(ValidationFailed):
        await call(db, runtime, x, "POST", body={"text": "forged", "owner_id": str(uuid.uuid4())})


async def db_user(db: Database, user_id: str) -> None:
    async with db.as_role(db.role("notes")) as conn:
        await conn.execute("INSERT INTO t_notes.users (id, email) VALUES ($1, $2)", uuid.UUID(user_id),
                           f"{user_id}@example.com")


async def test_own_scope_applies_inside_embeds(db, runtime):
    x, y = Caller(("member",), str(uuid.uuid4())), Caller(("member",), str(uuid.uuid4()))
    await db_user(db, x.user_id)
    await db_user(db, y.user_id)
    service = RestApi(runtime, db, Caller(("service",)))
    board = orjson.loads((await service.handle("POST", "board", b"", {"prefer": "return=representation"},
                                               b'{"name": "shared"}')).body)[0]
    for caller in (x, y):
        await call(db, runtime, caller, "POST", body={"text": f"on the board {caller.user_id[:4]}", "board_id": board["id"]})
    seen = orjson.loads((await RestApi(runtime, db, x).handle(
        "GET", "board", f"select=name,notes(text)&id=eq.{board['id']}".encode(), {}, b"")).body)
    assert [n["text"] for n in seen[0]["notes"]] == [f"on the board {x.user_id[:4]}"]  # y's note stays hidden
