"""The rows one update or delete may change: the plan's `max_write_rows` (issue 11, "no tenant can stall the
others"), on every surface that updates or deletes: REST PATCH and DELETE, GraphQL `update_*`/`delete_*`, the
write core of entities with hooks, and the data API of functions. A write reaching more rows is refused whole
(400 `too_many_rows`) and changes nothing; one within the bound writes as before.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator

import httpx
import pytest

from engine import catalog
from engine.database import Database
from engine.hooks import Change, HookContext, function, hook
from functions.keys import create_api_key
from functions.tenants import create_tenant
from tests.server import running_gateway

HOOK_CALLS: list[str] = []


@hook
async def noted(ctx: HookContext, change: Change) -> None:
    HOOK_CALLS.append(change.action)


@function
async def renumber(ctx: HookContext, payload: dict) -> dict:
    rows = await ctx.data.update("item", {"label": f"eq.{payload['label']}"}, {"n": 99})
    return {"changed": len(rows)}


module = types.ModuleType("functions.writebounds")
for fn in (noted, renumber):
    setattr(module, fn.__name__, fn)

SCHEMA = """
name: bounded
entities:
  item:
    fields:
      label: {type: string}
      n:     {type: integer, default: 0}
  guarded:
    fields:
      label: {type: string}
      n:     {type: integer, default: 0}
    hooks:
      before_update: [writebounds.noted]
      before_delete: [writebounds.noted]
  note:
    owner: true
    fields:
      label: {type: string}
      n:     {type: integer, default: 0}
    permissions:
      read:   {authenticated: own}
      create: {authenticated: all}
      update: {authenticated: own}
      delete: {authenticated: own}
functions:
  renumber:
    handler: writebounds.renumber
    roles: [service]
"""
BOUND = 3


@pytest.fixture(scope="module")
async def keys(db: Database) -> Iterator[dict[str, str]]:
    sys.modules["functions.writebounds"] = module
    plans = catalog.platform_tables()["plans"]
    async with db.begin() as conn:
        await conn.execute(plans.insert().values(code="narrow", name="Narrow", limits={"max_write_rows": BOUND}))
    await create_tenant(db, "bounded", source=SCHEMA, plan="narrow")
    await create_tenant(db, "roomy", source=SCHEMA)  # the default plan: the default bound (1,000)
    made = {slug: (await create_api_key(db, slug, "service", "service")).key for slug in ("bounded", "roomy")}
    yield {**made, "anon": (await create_api_key(db, "bounded", "anon", "anon")).key}
    del sys.modules["functions.writebounds"]


@pytest.fixture(scope="module")
def base(keys: dict[str, str], database_url: str) -> Iterator[str]:
    with running_gateway(database_url) as url:
        yield url


def rest(base: str, keys: dict[str, str], slug: str = "bounded") -> httpx.Client:
    return httpx.Client(base_url=f"{base}/api/tenants/{slug}/rest/v1", headers={"apikey": keys[slug]}, timeout=60)


def made(client: httpx.Client, entity: str, label: str, count: int) -> None:
    assert client.post(f"/{entity}", json=[{"label": label}] * count).status_code == 201


def numbers(client: httpx.Client, entity: str, label: str) -> list[int]:
    return sorted(r["n"] for r in client.get(f"/{entity}", params={"label": f"eq.{label}"}).json())


def assert_too_many_rows(response: httpx.Response) -> None:
    assert response.status_code == 400, response.text[:300]
    body = response.json()
    assert body["code"] == "too_many_rows" and str(BOUND) in body["message"] and body["hint"]


def test_a_patch_reaching_more_rows_than_the_plan_allows_is_a_400_and_changes_nothing(base, keys):
    with rest(base, keys) as client:
        made(client, "item", "patched", BOUND + 1)
        assert_too_many_rows(client.patch("/item", params={"label": "eq.patched"}, json={"n": 1}))
        assert numbers(client, "item", "patched") == [0] * (BOUND + 1)


def test_a_patch_reaching_as_many_rows_as_the_plan_allows_changes_them(base, keys):
    with rest(base, keys) as client:
        made(client, "item", "enough", BOUND)
        changed = client.patch("/item", params={"label": "eq.enough"}, json={"n": 1},
                               headers={"Prefer": "return=representation"})
        assert changed.status_code == 200 and len(changed.json()) == BOUND
        assert numbers(client, "item", "enough") == [1] * BOUND


def test_a_delete_reaching_more_rows_than_the_plan_allows_is_a_400_and_deletes_nothing(base, keys):
    with rest(base, keys) as client:
        made(client, "item", "deleted", BOUND + 1)
        assert_too_many_rows(client.delete("/item", params={"label": "eq.deleted"},
                                           headers={"Accept": "application/vnd.pgrst.object+json"}))
        assert_too_many_rows(client.delete("/item", params={"label": "eq.deleted"}))
        assert len(numbers(client, "item", "deleted")) == BOUND + 1


def test_a_limited_patch_within_the_bound_changes_its_first_rows_of_many(base, keys):
    with rest(base, keys) as client:
        made(client, "item", "paged", BOUND + 2)
        changed = client.patch("/item", params={"label": "eq.paged", "order": "id", "limit": "2"}, json={"n": 1})
        assert changed.status_code == 204, changed.text
        assert numbers(client, "item", "paged") == [0] * BOUND + [1, 1]
        assert_too_many_rows(client.patch("/item", params={"label": "eq.paged", "order": "id", "limit": str(BOUND + 1)},
                                          json={"n": 2}))


def test_the_bound_is_the_tenants_plans(base, keys):
    with rest(base, keys, "roomy") as client:
        made(client, "item", "roomy", BOUND + 1)
        assert client.patch("/item", params={"label": "eq.roomy"}, json={"n": 1}).status_code == 204
        assert numbers(client, "item", "roomy") == [1] * (BOUND + 1)


def test_a_graphql_update_or_delete_reaching_more_rows_than_the_plan_allows_is_refused_and_changes_nothing(base, keys):
    with rest(base, keys) as client:
        made(client, "item", "graphed", BOUND + 1)

        def graphql(query: str) -> dict:
            return httpx.post(f"{base}/api/tenants/bounded/graphql/v1", json={"query": query},
                              headers={"apikey": keys["bounded"]}).json()

        for mutation in ('mutation { update_item(where: {label: {_eq: "graphed"}}, _inc: {n: 1}) { affected_rows } }',
                         'mutation { delete_item(where: {label: {_eq: "graphed"}}) { affected_rows } }'):
            answer = graphql(mutation)
            assert answer.get("data") is None and answer["errors"][0]["extensions"]["code"] == "too-many-rows", answer
        assert numbers(client, "item", "graphed") == [0] * (BOUND + 1)
        same_rows = graphql('mutation { update_item(where: {label: {_eq: "graphed"}, n: {_eq: 0}}, _set: {n: 0}) '
                            '{ affected_rows } }')
        assert same_rows["errors"][0]["extensions"]["code"] == "too-many-rows"  # 4 rows, whatever `_set` says
        made(client, "item", "few", BOUND)
        assert graphql('mutation { update_item(where: {label: {_eq: "few"}}, _inc: {n: 1}) { affected_rows } }') == \
            {"data": {"update_item": {"affected_rows": BOUND}}}


def test_an_update_of_an_entity_with_hooks_reaching_more_rows_than_allowed_runs_no_hook_and_changes_nothing(base, keys):
    with rest(base, keys) as client:
        made(client, "guarded", "hooked", BOUND + 1)
        HOOK_CALLS.clear()
        assert_too_many_rows(client.patch("/guarded", params={"label": "eq.hooked"}, json={"n": 1}))
        assert_too_many_rows(client.delete("/guarded", params={"label": "eq.hooked"}))
        answer = httpx.post(f"{base}/api/tenants/bounded/graphql/v1", headers={"apikey": keys["bounded"]},
                            json={"query": 'mutation { update_guarded(where: {label: {_eq: "hooked"}}, _set: {n: 1}) '
                                           "{ affected_rows } }"}).json()
        assert answer["errors"][0]["extensions"]["code"] == "too-many-rows", answer
        assert HOOK_CALLS == []
        assert numbers(client, "guarded", "hooked") == [0] * (BOUND + 1)


def test_a_functions_data_api_is_held_to_the_same_bound(base, keys):
    with rest(base, keys) as client:
        made(client, "item", "called", BOUND + 1)
        refused = httpx.post(f"{base}/api/tenants/bounded/functions/v1/renumber", json={"label": "called"},
                             headers={"apikey": keys["bounded"]})
        assert_too_many_rows(refused)
        assert numbers(client, "item", "called") == [0] * (BOUND + 1)
        made(client, "item", "allowed", BOUND)
        done = httpx.post(f"{base}/api/tenants/bounded/functions/v1/renumber", json={"label": "allowed"},
                          headers={"apikey": keys["bounded"]})
        assert done.status_code == 200 and done.json() == {"changed": BOUND}


def test_the_bound_counts_only_the_rows_in_the_callers_scope_and_tells_no_one_else_of_the_others(base, keys):
    signed_in = {}
    for name in ("ann", "bob"):
        session = httpx.post(f"{base}/api/tenants/bounded/auth/v1/signup", headers={"apikey": keys["anon"]},
                             json={"email": f"{name}@bounds.example", "password": "a long enough passphrase"})
        assert session.status_code == 200, session.text
        signed_in[name] = {"apikey": keys["anon"], "Authorization": f"Bearer {session.json()['access_token']}"}
    url = f"{base}/api/tenants/bounded/rest/v1/note"
    assert httpx.post(url, json=[{"label": "ann's"}] * (BOUND + 1), headers=signed_in["ann"]).status_code == 201
    mine = {"label": "eq.ann's"}
    bob = {**signed_in["bob"], "Prefer": "return=representation"}
    assert httpx.patch(url, params=mine, json={"n": 1}, headers=bob).json() == []  # not too_many_rows
    assert httpx.delete(url, params=mine, headers=bob).json() == []
    graphql = httpx.post(f"{base}/api/tenants/bounded/graphql/v1", headers=signed_in["bob"], json={
        "query": 'mutation { update_note(where: {label: {_eq: "ann\'s"}}, _set: {n: 1}) { affected_rows } }'})
    assert graphql.json() == {"data": {"update_note": {"affected_rows": 0}}}
    for stranger in ({"apikey": keys["anon"]}, {"apikey": keys["roomy"], "Authorization": f"Bearer {keys['roomy']}"}):
        refused = httpx.patch(url, params=mine, json={"n": 1}, headers=stranger)
        assert refused.status_code in (401, 403) and refused.json()["code"] != "too_many_rows", refused.text
    assert_too_many_rows(httpx.patch(url, params=mine, json={"n": 1}, headers=signed_in["ann"]))  # she reaches them
    assert sorted(r["n"] for r in httpx.get(url, params=mine, headers=signed_in["ann"]).json()) == [0] * (BOUND + 1)
