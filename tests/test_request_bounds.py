"""Bounded work per request, and bad input that is a 4xx, never a 5xx (issue 11, findings 5, 6 and 11).

Embeds nest only as deep as the tenant's plan allows, every array is truncated at the plan's `max_rows`,
a request whose estimated rows (each list's limit, or an assumed page, times its parent's) pass the plan's
budget is refused before it runs, in REST and in GraphQL; bodies hold at most the plan's items, and a big
batch is validated off the event loop. The fan-out of the penetration test (a row with 20 children,
`children(parent(children(...)))` four times) is refused with its 400.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import httpx
import orjson
import pytest

from engine import catalog
from engine.authz import Caller
from engine.database import Database
from engine.limits import DEFAULT_MAX_BODY_ITEMS, DEFAULT_MAX_EMBED_DEPTH, MAX_JSON_PATH_STEPS, VALIDATE_IN_THREAD_ABOVE
from engine.rest.api import RestApi
from engine.runtime import RuntimeRegistry
from engine.validation import BodyValidator
from functions.keys import create_api_key
from functions.tenants import create_tenant
from tests.server import running_gateway

SCHEMA = """
name: tree
entities:
  node:
    fields:
      label:  {type: string, max_length: 40}
      code:   {type: string, max_length: 40, unique: true}
      parent: {type: ref, to: node, reverse: children}
      tags:   {type: array, items: string}
      meta:   {type: json}
    permissions:
      read: {anon: all}
  bare:
    fields:
      note: {type: text}
      count: {type: integer, default: 7}
"""
SMALL_PLAN = {"max_rows": 5, "max_request_rows": 40, "max_embed_depth": 2, "max_body_items": 3}


@pytest.fixture(scope="module")
async def keys(db: Database) -> dict[str, str]:
    plans = catalog.platform_tables()["plans"]
    async with db.begin() as conn:
        await conn.execute(plans.insert().values(code="small", name="Small", limits=SMALL_PLAN))
    await create_tenant(db, "tree", source=SCHEMA)
    await create_tenant(db, "twig", source=SCHEMA, plan="small")
    return {slug: (await create_api_key(db, slug, "service", "service")).key for slug in ("tree", "twig")}


@pytest.fixture(scope="module")
def base(keys: dict[str, str], database_url: str) -> Iterator[str]:
    with running_gateway(database_url) as url:
        yield url


def rest(base: str, keys: dict[str, str], slug: str = "tree") -> httpx.Client:
    return httpx.Client(base_url=f"{base}/api/tenants/{slug}/rest/v1", headers={"apikey": keys[slug]}, timeout=60)


def graphql(base: str, keys: dict[str, str], query: str, variables: dict | None = None,
            slug: str = "tree") -> httpx.Response:
    return httpx.post(f"{base}/api/tenants/{slug}/graphql/v1", json={"query": query, "variables": variables or {}},
                      headers={"apikey": keys[slug]}, timeout=60)


@pytest.fixture(scope="module")
def root(base: str, keys: dict[str, str]) -> str:
    """A row with 20 children (21 rows in all), in both tenants."""
    for slug in ("tree", "twig"):
        with rest(base, keys, slug) as client:
            made = client.post("/node", json={"label": "root"}, headers={"Prefer": "return=representation"})
            root_id = made.json()[0]["id"]
            for start in range(0, 20, 3):  # the small plan takes 3 objects a body
                children = [{"label": f"child {i}", "parent_id": root_id} for i in range(start, min(start + 3, 20))]
                assert client.post("/node", json=children).status_code == 201
            if slug == "tree":
                tree_root = root_id
    return tree_root


def assert_refused(response: httpx.Response, status: int, code: str, field: str | None = None) -> dict:
    assert response.status_code == status, response.text[:300]
    body = response.json()
    assert body["code"] == code and body["message"]
    if field is not None:
        assert [d["path"] if "path" in d else d["field"] for d in body["details"]] == [field]
    return body


def graphql_error(response: httpx.Response) -> dict:
    assert response.status_code == 200, response.text[:300]
    body = response.json()
    assert "errors" in body, str(body)[:300]
    return body["errors"][0]


def nested(inner: str, relation: str, times: int) -> str:
    for _ in range(times):
        inner = f"id,{relation}({inner})"
    return inner


# -- depth, rows, cost ---------------------------------------------------------------------------------


def test_the_fan_out_of_children_through_parent_is_refused_before_it_runs(base, keys, root):
    select = "id,children(id,parent(id,children(id,parent(id,children(id,parent(id,children(id)))))))"
    with rest(base, keys) as client:
        response = client.get("/node", params={"id": f"eq.{root}", "select": select})
    assert_refused(response, 400, "query_too_costly", "select")


def test_embeds_nested_deeper_than_the_plan_allows_are_refused(base, keys, root):
    with rest(base, keys) as client:
        response = client.get("/node", params={"select": nested("id", "parent", DEFAULT_MAX_EMBED_DEPTH + 1)})
        assert_refused(response, 400, "embed_too_deep", "select")
        assert client.get("/node", params={"select": nested("id", "parent", DEFAULT_MAX_EMBED_DEPTH)}).status_code == 200


def test_an_embed_nested_hundreds_deep_is_refused_not_a_recursion_error(base, keys, root):
    with rest(base, keys) as client:
        response = client.get("/node", params={"select": nested("id", "parent", 400)})
    assert_refused(response, 400, "embed_too_deep", "select")


def test_every_array_is_truncated_at_the_plans_max_rows(base, keys, root):
    with rest(base, keys, "twig") as client:
        response = client.get("/node", params={"select": "id,children(id)", "parent_id": "is.null"},
                              headers={"Prefer": "count=exact"})
        assert response.status_code == 200, response.text
        assert len(response.json()[0]["children"]) == 5
        everything = client.get("/node", params={"select": "id"}, headers={"Prefer": "count=exact"})
        assert len(everything.json()) == 5 and everything.headers["Content-Range"] == "0-4/21"
        ranged = client.get("/node", params={"select": "id"}, headers={"Range": "0-99"})
        assert len(ranged.json()) == 5


def test_the_plans_row_budget_counts_each_lists_limit_times_its_parents(base, keys, root):
    with rest(base, keys, "twig") as client:
        fits = client.get("/node", params={"select": "id,children(id)", "limit": "5", "children.limit": "5"})
        assert fits.status_code == 200, fits.text
        response = client.get("/node", params={"select": "id,children(id,children(id,children(id)))", "limit": "1"})
    assert_refused(response, 400, "embed_too_deep", "select")  # the small plan's depth is 2
    with rest(base, keys, "twig") as client:
        costly = client.get("/node", params={"select": "id,children(id,parent(id))", "limit": "5"})
    assert_refused(costly, 400, "query_too_costly", "select")  # 5 + 25 + 25 rows > 40


def test_graphql_cost_counts_the_rows_of_nested_lists(base, keys, root):
    query = "{ node { children { parent { children { parent { children { parent { children { id } } } } } } } } }"
    error = graphql_error(graphql(base, keys, query))
    assert error["extensions"]["code"] == "query-too-costly"


def test_graphql_relations_nested_deeper_than_the_plan_allows_are_refused(base, keys, root):
    query = "{ node " + "{ parent " * (DEFAULT_MAX_EMBED_DEPTH + 1) + "{ id }" + " }" * (DEFAULT_MAX_EMBED_DEPTH + 2)
    error = graphql_error(graphql(base, keys, query))
    assert error["extensions"]["code"] == "query-too-deep"


def test_graphql_lists_are_truncated_at_the_plans_max_rows(base, keys, root):
    response = graphql(base, keys, "{ node(where: {parent_id: {_is_null: true}}) { id children { id } } }", slug="twig")
    assert len(response.json()["data"]["node"][0]["children"]) == 5
    response = graphql(base, keys, "{ node(limit: 100) { id } }", slug="twig")
    assert len(response.json()["data"]["node"]) == 5


def test_graphql_row_budget_refuses_large_limits(base, keys, root):
    query = "{ node(limit: 5) { children(limit: 5) { id } parent { id } } }"  # 5 + 25 + 5 rows fit in 40
    assert "data" in graphql(base, keys, query, slug="twig").json()
    error = graphql_error(graphql(base, keys, "{ a: node(limit: 5) { id } c: node(limit: 5) { id } "
                                              "b: node(limit: 5) { children(limit: 5) { id } parent { id } } }",
                                  slug="twig"))  # 5 + 5 + (5 + 25 + 5) rows > 40
    assert error["extensions"]["code"] == "query-too-costly"


# -- bodies ----------------------------------------------------------------------------------------------


def test_a_bulk_insert_of_more_items_than_the_plan_allows_is_refused_before_validation(base, keys):
    objects = [{"label": f"n{i}", "nope": True} for i in range(DEFAULT_MAX_BODY_ITEMS + 1)]
    with rest(base, keys) as client:
        response = client.post("/node", json=objects)
        assert_refused(response, 413, "too_many_items")
        assert client.get("/node", params={"label": "eq.n0"}).json() == []
    with rest(base, keys, "twig") as client:
        assert_refused(client.post("/node", json=[{"label": "x"}] * 4), 413, "too_many_items")


def test_a_graphql_insert_of_more_items_than_the_plan_allows_is_refused(base, keys):
    mutation = "mutation($o: [node_insert_input!]!) { insert_node(objects: $o) { affected_rows } }"
    error = graphql_error(graphql(base, keys, mutation, {"o": [{"label": "g"}] * 4}, slug="twig"))
    assert error["extensions"]["code"] == "too-many-items"
    nested_items = ('mutation { insert_node_one(object: {label: "p", children: {data: '
                    '[{label: "c1"}, {label: "c2"}, {label: "c3"}]}}) { id } }')
    assert graphql_error(graphql(base, keys, nested_items, slug="twig"))["extensions"]["code"] == "too-many-items"
    assert graphql(base, keys, "{ node(where: {label: {_in: [\"g\", \"p\"]}}) { id } }", slug="twig").json() == \
        {"data": {"node": []}}


async def test_a_large_batch_is_validated_off_the_event_loop_and_a_small_one_on_it(db, keys, monkeypatch):
    threads: list[int] = []
    problems = BodyValidator.problems

    def spy(self, body, prefix=""):
        threads.append(threading.get_ident())
        return problems(self, body, prefix)

    monkeypatch.setattr(BodyValidator, "problems", spy)
    registry = RuntimeRegistry(db)
    runtime = await registry.get("tree")
    api = RestApi(runtime, db, Caller(("service",)))
    loop_thread = threading.get_ident()
    small = orjson.dumps([{"label": "small"}])
    assert (await api.handle("POST", "node", b"", {}, small)).status == 201
    assert set(threads) == {loop_thread}
    threads.clear()
    big = orjson.dumps([{"label": f"big {i}"} for i in range(VALIDATE_IN_THREAD_ABOVE + 1)])
    assert (await api.handle("POST", "node", b"", {}, big)).status == 201
    assert threads and loop_thread not in threads
    await asyncio.sleep(0)


# -- bad input: a 4xx, never a 5xx ------------------------------------------------------------------------


def test_posting_an_empty_object_or_array_of_them_inserts_rows_of_defaults(base, keys):
    with rest(base, keys) as client:
        one = client.post("/bare", json={}, headers={"Prefer": "return=representation"})
        assert one.status_code == 201, one.text
        assert one.json()[0]["count"] == 7 and one.json()[0]["note"] is None
        many = client.post("/bare", json=[{}, {}], headers={"Prefer": "return=representation"})
        assert many.status_code == 201, many.text
        assert [row["count"] for row in many.json()] == [7, 7]
        assert client.post("/bare", json=[{}]).status_code == 201


def test_graphql_insert_one_of_an_empty_object_inserts_a_row_of_defaults(base, keys):
    response = graphql(base, keys, "mutation { insert_bare_one(object: {}) { count note } }")
    assert response.json() == {"data": {"insert_bare_one": {"count": 7, "note": None}}}


def test_a_bulk_upsert_repeating_a_key_is_a_400(base, keys):
    with rest(base, keys) as client:
        response = client.post("/node", params={"on_conflict": "code"},
                               json=[{"code": "dup", "label": "a"}, {"code": "dup", "label": "b"}],
                               headers={"Prefer": "resolution=merge-duplicates"})
    assert_refused(response, 400, "21000")


def test_in_on_an_array_column_is_a_400(base, keys):
    with rest(base, keys) as client:
        response = client.get("/node", params={"tags": "in.(a,b)"})
    assert_refused(response, 400, "PGRST100", "tags")


def test_graphql_in_on_an_array_column_is_a_validation_error(base, keys):
    error = graphql_error(graphql(base, keys, '{ node(where: {tags: {_in: [["a"]]}}) { id } }'))
    assert error["extensions"]["code"] == "validation-failed"


def test_a_select_of_more_items_than_postgres_takes_is_a_400(base, keys):
    select = ",".join(f"a{i}:id" for i in range(1700))
    with rest(base, keys) as client:
        response = client.get("/node", params={"select": select})
    assert_refused(response, 400, "query_too_complex", "select")


def test_conditions_nested_hundreds_deep_are_a_400(base, keys):
    condition = "and(" * 500 + "label.eq.x" + ")" * 500
    with rest(base, keys) as client:
        response = client.get("/node", params={"or": f"({condition})"})
    assert_refused(response, 400, "query_too_complex", "or")


def test_graphql_order_by_a_null_direction_is_ignored(base, keys, root):
    response = graphql(base, keys, "{ node(order_by: [{code: null}], limit: 1) { id } }")
    assert response.status_code == 200 and len(response.json()["data"]["node"]) == 1


def test_a_control_character_in_a_select_alias_is_a_400(base, keys):
    with rest(base, keys) as client:
        response = client.get("/node", params={"select": "a\x01b:id"})
    assert_refused(response, 400, "PGRST100", "select")



def test_a_graphql_query_of_more_root_fields_than_a_sql_function_takes_answers_them_all_in_order(base, keys, root):
    fields = " ".join(f"n{i}: node(limit: 1) {{ id }}" for i in range(60))
    response = graphql(base, keys, "{ " + fields + " }")
    data = response.json()["data"]
    assert list(data) == [f"n{i}" for i in range(60)] and all(len(rows) == 1 for rows in data.values())


def test_a_graphql_aggregate_counts_every_row_and_truncates_the_nodes_it_lists(base, keys, root):
    summary = graphql(base, keys, "{ node_aggregate { aggregate { count } } }", slug="twig").json()["data"]
    assert summary["node_aggregate"]["aggregate"]["count"] == 21
    listed = graphql(base, keys, "{ node_aggregate { aggregate { count } nodes { id } } }", slug="twig").json()["data"]
    assert len(listed["node_aggregate"]["nodes"]) == 5 == listed["node_aggregate"]["aggregate"]["count"]


def test_the_fan_out_through_a_graphql_mutations_returning_is_refused_and_nothing_is_written(base, keys, root):
    fan_out = "children { parent { children { parent { children { parent { children { id } } } } } } }"
    mutation = ('mutation { update_node(where: {label: {_eq: "root"}}, _set: {label: "renamed"}) '
                "{ returning { " + fan_out + " } } }")
    error = graphql_error(graphql(base, keys, mutation))
    assert error["extensions"]["code"] == "query-too-costly"
    assert graphql(base, keys, '{ node(where: {label: {_eq: "renamed"}}) { id } }').json() == {"data": {"node": []}}


def test_deleting_a_row_that_a_restrict_reference_still_holds_is_a_409_on_every_server(base, keys):
    """PostgreSQL 18 reports RESTRICT as 23001 (15 as 23503): both are the client's conflict, never a 500."""
    with rest(base, keys) as client:
        parent = client.post("/node", json={"label": "kept"}, headers={"Prefer": "return=representation"}).json()[0]
        client.post("/node", json={"label": "holds it", "parent_id": parent["id"]})
        refused = client.delete(f"/node?id=eq.{parent['id']}")
        assert refused.status_code == 409 and refused.json()["code"] in ("23001", "23503"), refused.text
    answer = graphql(base, keys, "mutation($id: uuid!) { delete_node_by_pk(id: $id) { id } }", {"id": parent["id"]})
    assert graphql_error(answer)["extensions"]["code"] == "constraint-violation"


async def test_a_plan_with_malformed_graphql_limits_keeps_the_defaults_instead_of_failing_every_query(db, base, keys):
    plans = catalog.platform_tables()["plans"]
    async with db.begin() as conn:
        await conn.execute(plans.insert().values(code="odd", name="Odd", limits={"graphql": {"max_depth": "deep"}}))
    await create_tenant(db, "oddly", source=SCHEMA, plan="odd")
    key = (await create_api_key(db, "oddly", "service", "service")).key
    answer = graphql(base, {"oddly": key}, "{ node { id } }", slug="oddly")
    assert answer.status_code == 200 and answer.json() == {"data": {"node": []}}, answer.text


def test_a_json_path_of_more_steps_than_allowed_is_a_400(base, keys):
    path = "meta" + "->a" * (MAX_JSON_PATH_STEPS + 1)
    with rest(base, keys) as client:
        for params in ({"select": path}, {path: "eq.1"}, {"order": path}):
            assert_refused(client.get("/node", params=params), 400, "query_too_complex", "meta")
        assert client.get("/node", params={"select": "meta" + "->a" * MAX_JSON_PATH_STEPS}).status_code == 200


def test_a_cast_postgres_cannot_make_is_a_400(base, keys, root):
    with rest(base, keys) as client:
        assert_refused(client.get("/node", params={"select": "tags::integer"}), 400, "42846")
        assert_refused(client.get("/node", params={"select": "children(tags::integer)"}), 400, "42846")


def test_a_nul_in_a_tenants_name_or_in_the_query_string_is_a_4xx(base, keys):
    assert httpx.get(f"{base}/api/tenants/%00/rest/v1/node").status_code == 404
    assert httpx.get(f"{base}/api/tenants/tree%00/rest/v1/node", headers={"apikey": keys["tree"]}).status_code == 404
    with rest(base, keys) as client:
        assert_refused(client.get("/node", params={"label": "eq.a\x00b"}), 400, "PGRST100", "query")
