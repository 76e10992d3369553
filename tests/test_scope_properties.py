"""Property: whatever two users of a tenant send, through REST or GraphQL, no response shows a row outside the
caller's read scope, no row changes outside the caller's scope for the change, and nothing answers 5xx.

Hypothesis draws a schema (every action of two related entities, `parent` and `item`, granted to signed-in
users as `none`, `own` or `all`, from sets that cover every scope of every action, plus the diary and the
drop box of issue 11) and a few requests of every kind (read, embed both ways, filter and order through a
relation, aggregate, insert, bulk insert, upsert, update, delete, each returning rows) as ann or bob. Each
example starts from the same rows (both users own parents and items, items pointing at either's parents);
after each request a model computed in Python from the rows before and after says what the caller may have
seen and changed."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Iterator
from typing import Any

import asyncpg
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.database import Database
from functions.keys import create_api_key
from functions.tenants import create_tenant
from tests.conftest import driver_url
from tests.server import running_gateway

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
ACTIONS = ("read", "create", "update", "delete")
ENTITIES = ("parent", "item")
SCOPES = ("none", "own", "all")
PASSWORD = "a long enough passphrase"
P_ANN, P_BOB = "00000000-0000-4000-8000-0000000000a1", "00000000-0000-4000-8000-0000000000b1"
SEED_PARENTS = [(P_ANN, "alpha", "ann"), (P_BOB, "mike", "bob")]
SEED_ITEMS = [("00000000-0000-4000-8000-0000000001a1", "apple", "sann", P_ANN, "ann"),
              ("00000000-0000-4000-8000-0000000001a2", "pear", "sannb", P_BOB, "ann"),
              ("00000000-0000-4000-8000-0000000001b1", "plum", "sbob", P_ANN, "bob"),
              ("00000000-0000-4000-8000-0000000001b2", "fig", "sbobb", P_BOB, "bob")]
TITLES = ("bravo", "kilo", "zulu", "alpha")
SLUGS = ("sann", "sbob", "snew", "sannb")


def schema_source(perms: dict[str, dict[str, str]]) -> str:
    def permissions(entity: str) -> str:
        granted = {a: s for a, s in perms[entity].items() if s != "none"}
        return "{" + ", ".join(f"{a}: {{authenticated: {s}}}" for a, s in granted.items()) + "}"

    return f"""
name: props
entities:
  parent:
    owner: true
    fields:
      title: {{type: string}}
    permissions: {permissions("parent")}
  item:
    owner: true
    fields:
      title:  {{type: string}}
      slug:   {{type: string, unique: true}}
      parent: {{type: ref, to: parent, reverse: items}}
    permissions: {permissions("item")}
"""


SLOTS = [(e, a) for e in ENTITIES for a in ACTIONS]


def covering_schemas() -> list[dict[str, dict[str, str]]]:
    """Six permission sets in which every (entity, action) takes every scope twice, with the pairs varied,
    and two of issue 11 (a tenant per set: making one costs seconds here, so schemas are drawn from these)."""
    found = []
    for i in range(6):
        perms: dict[str, dict[str, str]] = {e: {} for e in ENTITIES}
        for k, (entity, action) in enumerate(SLOTS):
            perms[entity][action] = SCOPES[(i + k * (1 + i // 3)) % 3]
        found.append(perms)
    diary = dict(read="own", create="all", update="own", delete="own")  # finding 2's: create all, update own
    drop_box = dict(read="own", create="all", update="all", delete="all")  # finding 4's: write all, read own
    return [*found, {"parent": diary, "item": diary}, {"parent": drop_box, "item": drop_box}]


schemas = st.sampled_from(covering_schemas())
KINDS = ("rest_read", "rest_embed_many", "gql_read", "gql_order_by_parent", "gql_where_parent", "gql_aggregate",
         "rest_insert", "rest_bulk_insert", "rest_upsert", "gql_insert", "gql_upsert", "rest_update", "gql_update",
         "gql_update_by_pk", "rest_delete", "gql_delete_by_pk", "rest_update_parent", "rest_delete_parent")
requests = st.lists(st.fixed_dictionaries({
    "who": st.sampled_from(("ann", "bob")), "kind": st.sampled_from(KINDS), "target": st.integers(0, 5),
    "title": st.sampled_from(TITLES), "slug": st.sampled_from(SLUGS), "representation": st.booleans(),
}), min_size=1, max_size=4)


@pytest.fixture(scope="module")
async def platform(db: Database) -> Database:
    return db  # the system tenant is deployed; each drawn schema becomes a tenant of its own


@pytest.fixture(scope="module")
def base(platform: Database, database_url: str) -> Iterator[str]:
    with running_gateway(database_url) as url:
        yield url


class World:
    """The tenants made so far, one per drawn schema: their keys and their two users."""

    def __init__(self, base: str, database_url: str) -> None:
        self.base, self.url, self.tenants = base, database_url, {}

    def tenant(self, perms: dict[str, dict[str, str]]) -> dict[str, Any]:
        source = schema_source(perms)
        slug = "p" + hashlib.sha256(source.encode()).hexdigest()[:10]
        if slug not in self.tenants:
            anon, service = asyncio.run(self.create(slug, source))
            root = f"{self.base}/api/tenants/{slug}"
            users = {}
            for name in ("ann", "bob"):
                made = httpx.post(f"{root}/auth/v1/signup", headers={"apikey": anon},
                                  json={"email": f"{name}@example.com", "password": PASSWORD})
                assert made.status_code == 200, made.text
                users[name] = {"id": made.json()["user"]["id"],
                               "headers": {"Authorization": f"Bearer {made.json()['access_token']}"}}
            self.tenants[slug] = {"slug": slug, "root": root, "service": service, "users": users}
        return self.tenants[slug]

    async def create(self, slug: str, source: str) -> tuple[str, str]:
        db = await Database.connect(self.url)
        try:
            await create_tenant(db, slug, source=source)
            return tuple([(await create_api_key(db, slug, role, role)).key for role in ("anon", "service")])
        finally:
            await db.close()

    def reset(self, tenant: dict[str, Any]) -> None:
        """The same rows at the start of every example (so that a failure replays)."""
        users = {name: u["id"] for name, u in tenant["users"].items()}

        async def run() -> None:
            conn = await asyncpg.connect(driver_url(self.url))
            try:
                schema = f't_{tenant["slug"]}'
                await conn.execute(f"TRUNCATE {schema}.item, {schema}.parent")
                await conn.executemany(f"INSERT INTO {schema}.parent (id, title, owner_id) VALUES ($1, $2, $3)",
                                       [(i, t, users[o]) for i, t, o in SEED_PARENTS])
                await conn.executemany(f"INSERT INTO {schema}.item (id, title, slug, parent_id, owner_id) "
                                       "VALUES ($1, $2, $3, $4, $5)",
                                       [(i, t, s, p, users[o]) for i, t, s, p, o in SEED_ITEMS])
            finally:
                await conn.close()

        asyncio.run(run())


@pytest.fixture(scope="module")
def world(base: str, database_url: str) -> World:
    return World(base, database_url)


# -- the model --


def rows(tenant: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """id -> row (with its entity), read in one query with the service key, which no scope restricts."""
    response = httpx.post(f"{tenant['root']}/graphql/v1", headers={"apikey": tenant["service"]}, json={
        "query": "{ parent { id title owner_id } item { id title slug parent_id owner_id } }"})
    assert response.status_code == 200 and "errors" not in response.json(), response.text
    data = response.json()["data"]
    return {r["id"]: {**r, "entity": entity} for entity in ENTITIES for r in data[entity]}


def may(perms: dict[str, dict[str, str]], user: str, action: str, row: dict[str, Any]) -> bool:
    scope = perms[row["entity"]][action]
    return scope == "all" or (scope == "own" and row["owner_id"] == user)


def ids_in(value: Any) -> Iterator[str]:
    """Every row id a response shows (any object with an `id`, at any depth)."""
    if isinstance(value, dict):
        if isinstance(value.get("id"), str):
            yield value["id"]
        for item in value.values():
            yield from ids_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from ids_in(item)


def readable(perms: dict[str, dict[str, str]], user: str, table: dict[str, dict[str, Any]], entity: str) -> list[str]:
    return sorted(i for i, r in table.items() if r["entity"] == entity and may(perms, user, "read", r))


# -- the requests --


def send(tenant: dict[str, Any], request: dict[str, Any], table: dict[str, dict[str, Any]]) -> httpx.Response:
    user = tenant["users"][request["who"]]
    headers = dict(user["headers"])
    rest, graphql = f"{tenant['root']}/rest/v1", f"{tenant['root']}/graphql/v1"
    items = sorted(i for i, r in table.items() if r["entity"] == "item")
    parents = sorted(i for i, r in table.items() if r["entity"] == "parent")
    item = items[request["target"] % len(items)] if items else P_ANN
    parent = parents[request["target"] % len(parents)] if parents else P_ANN
    title, slug = request["title"], request["slug"]
    prefer = "return=representation" if request["representation"] else "return=minimal"
    new = {"title": title, "parent_id": parent}

    def gql(query: str) -> httpx.Response:
        return httpx.post(graphql, headers=headers, json={"query": query})

    kind = request["kind"]
    if kind == "rest_read":
        return httpx.get(f"{rest}/item?select=id,title,parent(id,title)&order=id",
                         headers={**headers, "Prefer": "count=exact"})
    if kind == "rest_embed_many":
        return httpx.get(f"{rest}/parent?select=id,title,items(id,title)", headers=headers)
    if kind == "gql_read":
        return gql("{ item(order_by: {id: asc}) { id title parent_id parent { id title } } }")
    if kind == "gql_order_by_parent":
        return gql("{ item(order_by: [{parent: {title: asc}}, {id: asc}]) { id } }")
    if kind == "gql_where_parent":
        return gql('{ item(where: {parent: {title: {_eq: "alpha"}}}, order_by: {id: asc}) { id } }')
    if kind == "gql_aggregate":
        return gql("{ item_aggregate { aggregate { count } nodes { id parent { id } } } }")
    if kind == "rest_insert":
        return httpx.post(f"{rest}/item?select=id,title,parent(id,title)", headers={**headers, "Prefer": prefer},
                          json={**new, "slug": f"{slug}-{request['target']}"})
    if kind == "rest_bulk_insert":
        return httpx.post(f"{rest}/item", headers={**headers, "Prefer": prefer},
                          json=[{**new, "slug": None}, {"title": "zulu", "slug": None, "parent_id": P_BOB}])
    if kind == "rest_upsert":
        return httpx.post(f"{rest}/item?on_conflict=slug&select=id,title,owner_id,parent(id,title)",
                          headers={**headers, "Prefer": f"resolution=merge-duplicates,{prefer}"},
                          json=[{**new, "slug": slug}])
    if kind in ("gql_insert", "gql_upsert"):
        conflict = ", on_conflict: {constraint: item_slug_key, update_columns: [title, parent_id]}" \
            if kind == "gql_upsert" else ""
        return gql(f'mutation {{ insert_item(objects: [{{title: "{title}", slug: "{slug}", parent_id: "{parent}"}}]'
                   f'{conflict}) {{ affected_rows returning {{ id title parent {{ id title }} }} }} }}')
    if kind == "rest_update":
        return httpx.patch(f"{rest}/item?id=eq.{item}&select=id,title,parent(id)", headers={**headers, "Prefer": prefer},
                           json={"title": title, "parent_id": parent})
    if kind == "gql_update":
        return gql(f'mutation {{ update_item(where: {{id: {{_eq: "{item}"}}}}, _set: {{title: "{title}"}}) '
                   "{ affected_rows returning { id title parent { id title } } } }")
    if kind == "gql_update_by_pk":
        return gql(f'mutation {{ update_item_by_pk(pk_columns: {{id: "{item}"}}, _set: {{parent_id: "{parent}"}}) '
                   "{ id title parent { id } } }")
    if kind == "rest_delete":
        return httpx.delete(f"{rest}/item?id=eq.{item}&select=id,parent(id,title)", headers={**headers, "Prefer": prefer})
    if kind == "gql_delete_by_pk":
        return gql(f'mutation {{ delete_item_by_pk(id: "{item}") {{ id title parent {{ id title }} }} }}')
    if kind == "rest_update_parent":
        return httpx.patch(f"{rest}/parent?id=eq.{parent}&select=id,items(id)",
                           headers={**headers, "Prefer": prefer}, json={"title": title})
    assert kind == "rest_delete_parent"
    return httpx.delete(f"{rest}/parent?id=eq.{parent}", headers={**headers, "Prefer": prefer})


WRITES = {"delete": ("rest_delete", "gql_delete_by_pk", "rest_delete_parent"),
          "create": ("rest_insert", "rest_bulk_insert", "rest_upsert", "gql_insert", "gql_upsert"),
          "update": ("rest_upsert", "gql_upsert", "rest_update", "gql_update", "gql_update_by_pk", "rest_update_parent")}


def check(perms: dict[str, dict[str, str]], user: str, request: dict[str, Any], response: httpx.Response,
          before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]) -> None:
    kind = request["kind"]
    assert response.status_code < 500, (kind, response.text)
    body = response.json() if response.content else None
    # nothing shown outside the read scope
    for shown in set(ids_in(body)):
        row = before.get(shown) or after.get(shown)
        assert row is not None, (kind, shown, body)
        assert may(perms, user, "read", after.get(shown) or row), (kind, "shows", row, body)
    # nothing changed outside the scope of the change
    for row_id, old in before.items():
        new = after.get(row_id)
        if new is None:
            assert kind in WRITES["delete"] and may(perms, user, "delete", old), (kind, "deleted", old)
        elif new != old:
            assert kind in WRITES["update"] and may(perms, user, "update", old), (kind, "changed", old, new)
            assert new["owner_id"] == old["owner_id"], (kind, "moved", old, new)
    for row_id, new in after.items():
        if row_id not in before:
            assert kind in WRITES["create"] and perms[new["entity"]]["create"] != "none", (kind, "created", new)
            assert new["owner_id"] == user, (kind, "created for another", new)
    # reads show exactly the readable rows, and order and count by what is readable
    data = body.get("data") if isinstance(body, dict) else None
    items = readable(perms, user, before, "item")
    if kind == "rest_read" and response.status_code == 200:
        assert [r["id"] for r in body] == items
        assert response.headers["content-range"].endswith(f"/{len(items)}")
    if kind == "gql_read" and data:
        assert [r["id"] for r in data["item"]] == items
    if kind == "gql_aggregate" and data:
        assert data["item_aggregate"]["aggregate"]["count"] == len(items)
    if kind == "gql_where_parent" and data:
        expected = [i for i in items if (p := before.get(before[i]["parent_id"] or "")) is not None
                    and may(perms, user, "read", p) and p["title"] == "alpha"]
        assert [r["id"] for r in data["item"]] == expected
    if kind == "gql_order_by_parent" and data:
        def key(item_id: str) -> tuple[int, str, str]:
            parent = before.get(before[item_id]["parent_id"] or "")
            title = parent["title"] if parent is not None and may(perms, user, "read", parent) else None
            return (title is None, title or "", item_id)  # an unreadable parent orders as null: last

        assert [r["id"] for r in data["item"]] == sorted(items, key=key)


@SETTINGS
@given(perms=schemas, sequence=requests)
def test_no_request_reaches_a_row_outside_the_callers_scope(world: World, perms: dict[str, dict[str, str]],
                                                           sequence: list[dict[str, Any]]) -> None:
    tenant = world.tenant(perms)
    world.reset(tenant)
    for request in sequence:
        before = rows(tenant)
        response = send(tenant, request, before)
        after = rows(tenant)
        user = tenant["users"][request["who"]]["id"]
        check(perms, user, request, response, before, after)


def test_the_model_sees_what_it_checks():
    """The checker itself: a response showing another's private row, or a change by a caller without the
    scope for it, is caught (so a passing property means something)."""
    perms = {"parent": dict.fromkeys(ACTIONS, "own"), "item": dict.fromkeys(ACTIONS, "own")}
    mine = {"id": "a", "entity": "item", "owner_id": "u1", "title": "x", "parent_id": None}
    theirs = {"id": "b", "entity": "item", "owner_id": "u2", "title": "y", "parent_id": None}
    before = {"a": mine, "b": theirs}
    leak = httpx.Response(200, json=[{"id": "a"}, {"id": "b"}])
    with pytest.raises(AssertionError):
        check(perms, "u1", {"kind": "rest_update"}, leak, before, before)
    changed = {"a": mine, "b": {**theirs, "title": "z"}}
    with pytest.raises(AssertionError):
        check(perms, "u1", {"kind": "rest_update"}, httpx.Response(200, json=[]), before, changed)
    check(perms, "u1", {"kind": "rest_update"}, httpx.Response(200, content=json.dumps([{"id": "a"}]).encode()),
          before, {"a": {**mine, "title": "w"}, "b": theirs})
