"""Function hooks and exposed functions, through REST and GraphQL: each hook point in order (an expected-
events list per request), a refusing before-hook, a failing after-hook rolling the write back, an async
after-hook run from the outbox, a hook out of time, and a function with bad input."""

from __future__ import annotations

import asyncio
import sys
import time
import types
from collections.abc import Iterator

import httpx
import pytest

from engine.database import Database
from engine.errors import SchemaInvalid
from engine.hooks import Change, HookContext, Refuse, function, hook
from engine.storage.deploy import deploy
from functions.keys import create_api_key
from functions.tenants import create_tenant
from tests.server import running_gateway

EVENTS: list[tuple] = []


@hook
async def stamp(ctx: HookContext, change: Change) -> dict:
    EVENTS.append(("before_create", change.record["title"]))
    if change.record["title"] == "forbidden":
        raise Refuse("this title is not allowed", field="title")
    if change.record["title"] == "miscounted":
        return {**change.record, "revision": "one"}  # not an integer: what a hook returns is checked as a body
    return {**change.record, "slug": change.record["title"].lower().replace(" ", "-")}


@hook
async def log_after(ctx: HookContext, change: Change) -> None:
    row = change.record or change.old
    EVENTS.append((f"after_{change.action}", row["title"]))
    if row["title"] == "explode":
        raise RuntimeError("the after hook failed")
    await ctx.data.elevated().insert("trail", {"what": f"{change.action} {row['title']}"})


@hook
def keep_history(ctx: HookContext, change: Change) -> dict:  # a plain function: run in a worker thread
    EVENTS.append(("before_update", change.old["title"]))
    return {**change.record, "revision": change.old["revision"] + 1}


@hook
async def guard_delete(ctx: HookContext, change: Change) -> None:
    EVENTS.append(("before_delete", change.old["title"]))
    if change.old["locked"]:
        raise Refuse("locked articles cannot be deleted", field="locked")


@hook
async def dawdle(ctx: HookContext, change: Change) -> None:
    await asyncio.sleep(5)


@hook
async def later(ctx: HookContext, change: Change) -> None:
    await ctx.data.elevated().insert("trail", {"what": f"later {change.record['title']}"})


@function
async def publish(ctx: HookContext, payload: dict) -> dict:
    rows = await ctx.data.update("article", {"id": f"eq.{payload['id']}"}, {"status": "published"})
    return {"published": len(rows)}


@function
async def add_notes(ctx: HookContext, payload: dict) -> dict:
    rows = await ctx.data.insert("note", payload["notes"])
    return {"notes": sorted([r["title"], r["status"], r["rank"]] for r in rows)}


module = types.ModuleType("functions.hooktests")
for fn in (stamp, log_after, keep_history, guard_delete, dawdle, later, publish, add_notes):
    setattr(module, fn.__name__, fn)

SCHEMA = """
name: hooked
roles: [editor]
entities:
  article:
    fields:
      title:    {type: string, required: true, max_length: 80}
      slug:     {type: string}
      status:   {type: enum, values: [draft, published], default: draft, required: true}
      revision: {type: integer, default: 0, required: true}
      locked:   {type: boolean, default: false, required: true}
    permissions:
      read: {anon: all, editor: all}
      create: {anon: all}
      update: {anon: all, editor: all}
      delete: {anon: all}
    hooks:
      before_create: [hooktests.stamp]
      after_create:  [hooktests.log_after, {function: hooktests.later, async: true}]
      before_update: [hooktests.keep_history]
      after_update:  [hooktests.log_after]
      before_delete: [hooktests.guard_delete]
      after_delete:  [hooktests.log_after]
  note:
    fields:
      title:  {type: string, required: true}
      status: {type: enum, values: [draft, published], default: draft, required: true}
      rank:   {type: integer, default: 7}
    permissions:
      read: {anon: all, editor: all}
      create: {anon: all, editor: all}
      update: {anon: all}
    hooks:
      after_create: [hooktests.log_after]
      after_update: [hooktests.log_after]
  trail:
    fields:
      what: {type: text, required: true}
    permissions:
      read: {anon: all}
  revised:
    fields:
      title:    {type: string, required: true, unique: true}
      revision: {type: integer, default: 0, required: true}
    permissions:
      read: {anon: all}
      create: {anon: all}
      update: {anon: all}
    hooks:
      before_update: [hooktests.keep_history]
  slowpoke:
    fields:
      x: {type: text}
    permissions:
      create: {anon: all}
      read: {anon: all}
    hooks:
      before_create: [{function: hooktests.dawdle, timeout: 0.2}]
functions:
  add_notes:
    handler: hooktests.add_notes
    roles: [editor]
    input: {type: object, required: [notes], properties: {notes: {type: array, items: {type: object}}}}
  publish:
    handler: hooktests.publish
    roles: [editor]
    input:
      type: object
      required: [id]
      additionalProperties: false
      properties:
        id: {type: string, format: uuid}
"""


@pytest.fixture(scope="module")
async def keys(db: Database) -> Iterator[dict[str, str]]:
    sys.modules["functions.hooktests"] = module
    await create_tenant(db, "hooked", source=SCHEMA)
    made = {role: (await create_api_key(db, "hooked", role, role)).key for role in ("anon", "editor", "service")}
    yield made
    del sys.modules["functions.hooktests"]


@pytest.fixture(scope="module")
def base(keys: dict[str, str], database_url: str) -> Iterator[str]:
    with running_gateway(database_url) as url:
        yield url


@pytest.fixture
def rest(base: str, keys: dict[str, str]) -> Iterator[httpx.Client]:
    EVENTS.clear()
    with httpx.Client(base_url=f"{base}/api/tenants/hooked/rest/v1",
                      headers={"apikey": keys["anon"], "Prefer": "return=representation"}) as client:
        yield client


def graphql(base: str, keys: dict[str, str], query: str, role: str = "anon") -> dict:
    return httpx.post(f"{base}/api/tenants/hooked/graphql/v1", json={"query": query},
                      headers={"apikey": keys[role]}).json()


def trail(rest: httpx.Client) -> list[str]:
    return [t["what"] for t in rest.get("/trail", params={"order": "created_at"}).json()]


def test_rest_create_runs_before_then_after_hooks_and_keeps_what_they_did(rest):
    created = rest.post("/article", json={"title": "Hello World"})
    assert created.status_code == 201 and created.json()[0]["slug"] == "hello-world"
    assert EVENTS == [("before_create", "Hello World"), ("after_create", "Hello World")]
    assert "create Hello World" in trail(rest)


def test_rest_update_and_delete_hooks_see_the_old_row(rest):
    rest.post("/article", json={"title": "Versioned"})
    EVENTS.clear()
    updated = rest.patch("/article", params={"title": "eq.Versioned"}, json={"status": "published"})
    assert updated.json()[0]["revision"] == 1 and updated.json()[0]["status"] == "published"
    assert EVENTS == [("before_update", "Versioned"), ("after_update", "Versioned")]
    EVENTS.clear()
    deleted = rest.delete("/article", params={"title": "eq.Versioned"})
    assert deleted.status_code == 200 and deleted.json()[0]["title"] == "Versioned"
    assert EVENTS == [("before_delete", "Versioned"), ("after_delete", "Versioned")]
    assert {"update Versioned", "delete Versioned"} <= set(trail(rest))


def test_a_refusing_before_hook_is_a_422_on_its_field_and_writes_nothing(rest):
    refused = rest.post("/article", json={"title": "forbidden"})
    assert refused.status_code == 422
    assert refused.json()["code"] == "hook_refused"
    assert refused.json()["details"] == [{"field": "title", "message": "this title is not allowed"}]
    assert rest.get("/article", params={"title": "eq.forbidden"}).json() == []
    rest.post("/article", json={"title": "Locked", "locked": True})
    kept = rest.delete("/article", params={"title": "eq.Locked"})
    assert kept.status_code == 422 and kept.json()["details"][0]["field"] == "locked"
    assert len(rest.get("/article", params={"title": "eq.Locked"}).json()) == 1


def test_what_a_before_hook_returns_is_validated_as_a_body_is_and_writes_nothing(rest):
    refused = rest.post("/article", json=[{"title": "fine"}, {"title": "miscounted"}])
    assert refused.status_code == 422 and refused.json()["code"] == "validation_failed", refused.text
    assert [p["field"] for p in refused.json()["details"]] == ["revision"]
    assert rest.get("/article", params={"title": "in.(fine,miscounted)"}).json() == []


def test_a_failing_after_hook_rolls_the_write_back(rest):
    failed = rest.post("/article", json={"title": "explode"})
    assert failed.status_code == 500 and failed.json()["code"] == "hook_failed"
    assert "log_after" in failed.json()["message"] and "Traceback" not in failed.text
    assert rest.get("/article", params={"title": "eq.explode"}).json() == []
    assert "create explode" not in trail(rest)


def test_an_async_after_hook_runs_after_commit_from_the_outbox(rest):
    rest.post("/article", json={"title": "Deferred"})
    deadline = time.monotonic() + 10
    while "later Deferred" not in trail(rest) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "later Deferred" in trail(rest)


def test_a_bulk_create_with_only_after_hooks_runs_them_per_row_in_order(rest):
    created = rest.post("/note", json=[{"title": "n1"}, {"title": "n2"}, {"title": "n3"}])
    assert created.status_code == 201, created.text
    assert [(n["title"], n["status"], n["rank"]) for n in created.json()] == \
        [("n1", "draft", 7), ("n2", "draft", 7), ("n3", "draft", 7)]
    assert EVENTS == [("after_create", "n1"), ("after_create", "n2"), ("after_create", "n3")]
    assert trail(rest)[-3:] == ["create n1", "create n2", "create n3"]


def test_a_data_api_bulk_insert_of_objects_with_different_keys_keeps_each_rows_own_defaults(base, keys, rest):
    notes = [{"title": "d1"}, {"title": "d2", "status": "published", "rank": 1}, {"title": "d3", "rank": None}]
    added = httpx.post(f"{base}/api/tenants/hooked/functions/v1/add_notes", json={"notes": notes},
                       headers={"apikey": keys["editor"]})
    assert added.status_code == 200, added.text
    assert added.json() == {"notes": [["d1", "draft", 7], ["d2", "published", 1], ["d3", "draft", None]]}
    assert EVENTS == [("after_create", "d1"), ("after_create", "d2"), ("after_create", "d3")]


def test_a_graphql_bulk_insert_into_a_hooked_entity_keeps_defaults_runs_hooks_per_row_and_counts_rows(base, keys, rest):
    objects = [{"title": "g1"}, {"title": "g2", "status": "published", "rank": 1}]
    created = httpx.post(f"{base}/api/tenants/hooked/graphql/v1", headers={"apikey": keys["anon"]}, json={
        "query": "mutation($o: [note_insert_input!]!) { insert_note(objects: $o) "
                 "{ affected_rows returning { title status rank } } }", "variables": {"o": objects}}).json()
    assert created["data"]["insert_note"] == {"affected_rows": 2, "returning": [
        {"title": "g1", "status": "draft", "rank": 7}, {"title": "g2", "status": "published", "rank": 1}]}, created
    assert EVENTS == [("after_create", "g1"), ("after_create", "g2")]


def test_a_bulk_update_with_only_after_hooks_changes_every_row_and_runs_them_per_row(rest):
    rest.post("/note", json=[{"title": "u1"}, {"title": "u2"}, {"title": "u3"}])
    EVENTS.clear()
    updated = rest.patch("/note", params={"title": "in.(u1,u2)"}, json={"rank": 3})
    assert updated.status_code == 200, updated.text
    assert sorted((n["title"], n["rank"]) for n in updated.json()) == [("u1", 3), ("u2", 3)]
    assert sorted(EVENTS) == [("after_update", "u1"), ("after_update", "u2")]
    assert {n["title"]: n["rank"] for n in rest.get("/note", params={"title": "like.u*"}).json()} == \
        {"u1": 3, "u2": 3, "u3": 7}


def test_a_hook_out_of_time_fails_the_request_and_writes_nothing(rest):
    slow = rest.post("/slowpoke", json={"x": "late"})
    assert slow.status_code == 504 and slow.json()["code"] == "hook_timeout"
    assert rest.get("/slowpoke").json() == []


def test_graphql_mutations_run_the_same_hooks(base, keys, rest):
    made = graphql(base, keys, 'mutation { insert_article_one(object: {title: "Via GraphQL"}) { slug } }')
    assert made == {"data": {"insert_article_one": {"slug": "via-graphql"}}}
    updated = graphql(base, keys, 'mutation { update_article(where: {title: {_eq: "Via GraphQL"}}, '
                                  '_set: {status: published}) { affected_rows returning { revision } } }')
    assert updated["data"]["update_article"] == {"affected_rows": 1, "returning": [{"revision": 1}]}
    refused = graphql(base, keys, 'mutation { insert_article(objects: [{title: "ok one"}, {title: "forbidden"}]) '
                                  '{ affected_rows } }')
    assert refused["errors"][0]["extensions"]["code"] == "hook_refused"
    assert rest.get("/article", params={"title": "eq.ok one"}).json() == []  # the whole mutation rolled back
    deleted = graphql(base, keys, 'mutation { delete_article(where: {title: {_eq: "Via GraphQL"}}) '
                                  '{ returning { title } } }')
    assert deleted["data"]["delete_article"]["returning"] == [{"title": "Via GraphQL"}]
    assert [e[0] for e in EVENTS] == ["before_create", "after_create", "before_update", "after_update",
                                      # a bulk insert as REST's: every row's before hooks and write, then the
                                      # after hooks; the second row is refused, so no after hook ran
                                      "before_create", "before_create",
                                      "before_delete", "after_delete"]


def test_an_exposed_function_checks_its_caller_and_input(base, keys, rest):
    article = rest.post("/article", json={"title": "To publish"}).json()[0]
    url = f"{base}/api/tenants/hooked/functions/v1/publish"
    assert httpx.post(url, json={"id": article["id"]}, headers={"apikey": keys["anon"]}).status_code == 403
    for body, field in (({}, "id"), ({"id": "nope"}, "id"), ({"id": article["id"], "x": 1}, "")):
        bad = httpx.post(url, json=body, headers={"apikey": keys["editor"]})
        assert bad.status_code == 422 and bad.json()["details"][0]["field"] == field
    done = httpx.post(url, json={"id": article["id"]}, headers={"apikey": keys["editor"]})
    assert done.status_code == 200 and done.json() == {"published": 1}
    assert rest.get("/article", params={"id": f"eq.{article['id']}", "select": "status"}).json() == \
        [{"status": "published"}]
    missing = httpx.post(f"{base}/api/tenants/hooked/functions/v1/nope", json={}, headers={"apikey": keys["editor"]})
    assert missing.status_code == 404 and missing.json()["code"] == "function_not_found"


def test_supabase_sdk_invokes_functions(base, keys, rest):
    from supabase import create_client

    article = rest.post("/article", json={"title": "Via SDK"}).json()[0]
    client = create_client(f"{base}/api/tenants/hooked", keys["editor"])
    answer = client.functions.invoke("publish", invoke_options={"body": {"id": article["id"]}})
    assert b'"published":1' in (answer if isinstance(answer, bytes) else answer.encode())


async def test_a_schema_naming_a_hook_that_is_not_installed_is_refused_at_deploy(db, keys):
    with pytest.raises(SchemaInvalid) as refused:
        await deploy(db, "hooked", SCHEMA.replace("hooktests.keep_history", "hooktests.nowhere"))
    assert refused.value.details[0].path == "entities.article.hooks.before_update[0]"
    with pytest.raises(SchemaInvalid):
        await deploy(db, "hooked", SCHEMA.replace("handler: hooktests.publish", "handler: hooktests.stamp"))


def test_another_tenants_key_cannot_invoke_functions(base, keys, db):
    response = httpx.post(f"{base}/api/tenants/hooked/functions/v1/publish", json={},
                          headers={"apikey": "bsk_someone_elses"})
    assert response.status_code == 401



def test_hooks_data_api_and_graphql_mutations_never_reach_the_rest_handler():
    """ctx.data runs on the plan/write core both dialects share: no module a GraphQL mutation's hook or a
    function goes through imports the REST dialect's HTTP handler, even inside a function (issue 11,
    finding 14)."""
    import ast
    from pathlib import Path

    engine = Path(__file__).resolve().parent.parent / "engine"
    for module in ("data.py", "writes.py", "hooks.py", "invoke.py", "graphql/mutations.py", "graphql/api.py"):
        tree = ast.parse((engine / module).read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert "engine.rest.api" not in imported, module


LINKED = """
name: linked
entities:
  author:
    fields:
      name: {type: string}
  book:
    fields:
      title:  {type: string}
      author: {type: ref, to: author, reverse: books}
"""


async def test_hooks_data_api_refuses_an_update_whose_only_filter_is_on_an_embed(db: Database):
    """An embedded filter does not narrow the root rows: `ctx.data` must refuse it as unfiltered, as REST does,
    rather than update every row in the caller's scope."""
    from engine.authz import Caller
    from engine.data import DataApi
    from engine.errors import UnfilteredWrite
    from engine.runtime import RuntimeRegistry

    await create_tenant(db, "linked", source=LINKED)
    runtime = await RuntimeRegistry(db).get("linked")
    async with db.as_role(runtime.role) as conn, conn.transaction():
        data = DataApi(runtime, db, Caller(("service",)), conn)
        author = (await data.insert("author", {"name": "Ann"}))[0]
        await data.insert("book", [{"title": "one", "author_id": author["id"]}, {"title": "two"}])
        with pytest.raises(UnfilteredWrite):
            await data.update("book", {"select": "*,author(*)", "author.name": "eq.Ann"}, {"title": "overwritten"})
        assert sorted(b["title"] for b in await data.select("book")) == ["one", "two"]


def test_an_upsert_that_may_update_an_entity_with_update_hooks_is_refused_and_changes_nothing(rest, base, keys):
    """An upsert is one statement, which runs no hook: its update would pass `before_update` by."""
    row = rest.post("/revised", json={"title": "once"}).json()[0]
    merged = rest.post("/revised?on_conflict=title", json={"title": "once", "revision": 40},
                       headers={"Prefer": "resolution=merge-duplicates"})
    assert merged.status_code == 400 and "update hooks" in merged.json()["message"], merged.text
    put = rest.put(f"/revised?id=eq.{row['id']}", json={"id": row["id"], "title": "once", "revision": 41})
    assert put.status_code == 400, put.text
    upsert = graphql(base, keys, 'mutation { insert_revised(objects: [{title: "once", revision: 42}], on_conflict: '
                                 '{constraint: revised_title_key, update_columns: [revision]}) { affected_rows } }')
    assert upsert["errors"][0]["extensions"]["code"] == "validation-failed", upsert
    ignored = rest.post("/revised?on_conflict=title", json={"title": "once"},
                        headers={"Prefer": "resolution=ignore-duplicates, return=representation"})
    assert ignored.status_code == 201 and ignored.json() == []  # nothing updated: no update hook passed by
    assert rest.get(f"/revised?id=eq.{row['id']}").json()[0]["revision"] == 0
    assert rest.patch(f"/revised?id=eq.{row['id']}", json={"title": "twice"}).json()[0]["revision"] == 1  # the hook ran
