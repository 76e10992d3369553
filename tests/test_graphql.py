"""The generated GraphQL API (Hasura's naming), driven by the `gql` client against a running gateway."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from gql import Client, GraphQLRequest, gql
from gql.transport.exceptions import TransportQueryError
from gql.transport.httpx import HTTPXTransport

from engine import catalog
from engine.database import Database
from functions.keys import create_api_key
from functions.tenants import create_tenant
from functions.users import create_platform_admin
from tests.server import running_gateway

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
async def keys(db: Database) -> dict[str, str]:
    made = {}
    for slug in ("blog", "other"):
        await create_tenant(db, slug, source=(REPO / "schemas" / "blog.yaml").read_text())
        for role in ("anon", "service"):
            made[f"{slug}_{role}"] = (await create_api_key(db, slug, role, role)).key
    await create_tenant(db, "private", source="name: private\nentities:\n  secret:\n    fields:\n      v: {type: text}\n")
    made["private_anon"] = (await create_api_key(db, "private", "anon", "anon")).key
    return made


@pytest.fixture(scope="module")
def base(keys: dict[str, str], database_url: str) -> Iterator[str]:
    with running_gateway(database_url) as url:
        yield url


def client(base: str, key: str, slug: str = "blog") -> Client:
    transport = HTTPXTransport(url=f"{base}/api/tenants/{slug}/graphql/v1", headers={"apikey": key})
    return Client(transport=transport, fetch_schema_from_transport=False)


@pytest.fixture(scope="module")
def service(base: str, keys: dict[str, str]) -> Client:
    return client(base, keys["blog_service"])


@pytest.fixture(scope="module")
def seeded(service: Client) -> dict[str, str]:
    result = service.execute(gql("""
        mutation {
          ann: insert_author_one(object: {name: "Ann", email: "ann@example.com", posts: {data: [
              {title: "First", status: published, rating: 4.5, views: 10, tags: ["a", "b"]},
              {title: "Second", status: draft, rating: 2, views: 5}]}}) { id }
          bob: insert_author_one(object: {name: "Bob", posts: {data: [
              {title: "Third", status: published, views: 1}]}}) { id }
        }"""))
    posts = service.execute(gql("{ post(order_by: {title: asc}) { id title } }"))["post"]
    comments = [{"post_id": posts[0]["id"], "body": f"comment {i}", "score": i} for i in range(3)]
    service.execute(GraphQLRequest("mutation($c: [comment_insert_input!]!) { insert_comment(objects: $c) { affected_rows } }",
                                   variable_values={"c": comments}))
    return {"ann": result["ann"]["id"], "bob": result["bob"]["id"], **{p["title"]: p["id"] for p in posts}}


def test_list_with_where_order_limit_and_offset(service, seeded):
    result = service.execute(gql("""{ post(where: {status: {_eq: published}}, order_by: [{views: desc}],
                                        limit: 1, offset: 1) { title views } }"""))
    assert result == {"post": [{"title": "Third", "views": 1}]}


@pytest.mark.parametrize(("where", "titles"), [
    ('{views: {_gt: 1}}', ["First", "Second"]), ('{views: {_gte: 5}}', ["First", "Second"]),
    ('{views: {_lt: 5}}', ["Third"]), ('{views: {_lte: 5}}', ["Second", "Third"]),
    ('{title: {_neq: "First"}}', ["Second", "Third"]), ('{title: {_in: ["First", "Third"]}}', ["First", "Third"]),
    ('{title: {_nin: ["First", "Third"]}}', ["Second"]), ('{title: {_like: "%ir%"}}', ["First", "Third"]),
    ('{title: {_ilike: "s%"}}', ["Second"]), ('{rating: {_is_null: true}}', ["Third"]),
    ('{rating: {_is_null: false}}', ["First", "Second"]),
    ('{_or: [{title: {_eq: "First"}}, {views: {_eq: 1}}]}', ["First", "Third"]),
    ('{_and: [{status: {_eq: published}}, {views: {_gt: 5}}]}', ["First"]),
    ('{_not: {status: {_eq: published}}}', ["Second"]),
    ('{author: {name: {_eq: "Bob"}}}', ["Third"]),
    ('{comments: {body: {_eq: "comment 2"}}}', ["First"]),
    ("{}", ["First", "Second", "Third"]),
])
def test_every_bool_exp_operator_including_through_relations(service, seeded, where, titles):
    result = service.execute(gql(f"{{ post(where: {where}, order_by: {{title: asc}}) {{ title }} }}"))
    assert [p["title"] for p in result["post"]] == titles


def test_relations_both_ways_with_their_own_arguments(service, seeded):
    result = service.execute(gql("""{
        author(order_by: {name: asc}) {
          name
          posts(where: {status: {_eq: published}}, order_by: {title: desc}) { title author { name } }
        } }"""))
    assert result["author"] == [
        {"name": "Ann", "posts": [{"title": "First", "author": {"name": "Ann"}}]},
        {"name": "Bob", "posts": [{"title": "Third", "author": {"name": "Bob"}}]}]


def test_by_pk_returns_the_row_or_null(service, seeded):
    found = service.execute(GraphQLRequest("query($id: uuid!) { post_by_pk(id: $id) { title author_id } }",
                                           variable_values={"id": seeded["First"]}))
    assert found["post_by_pk"] == {"title": "First", "author_id": seeded["ann"]}
    missing = service.execute(gql('{ post_by_pk(id: "00000000-0000-0000-0000-000000000000") { title } }'))
    assert missing == {"post_by_pk": None}


def test_aggregates_at_the_root_and_on_array_relations(service, seeded):
    result = service.execute(gql("""{
        post_aggregate(where: {status: {_eq: published}}) {
          aggregate { count sum { views } avg { views } min { title } max { views } }
          nodes { title }
        }
        author(where: {name: {_eq: "Ann"}}) { posts_aggregate { aggregate { n: count } } }
      }"""))
    aggregate = result["post_aggregate"]["aggregate"]
    assert aggregate["count"] == 2 and aggregate["sum"] == {"views": 11} and aggregate["avg"] == {"views": 5.5}
    assert aggregate["min"] == {"title": "First"} and aggregate["max"] == {"views": 10}
    assert sorted(n["title"] for n in result["post_aggregate"]["nodes"]) == ["First", "Third"]
    assert result["author"] == [{"posts_aggregate": {"aggregate": {"n": 2}}}]


def test_an_aggregate_of_nodes_alone_lists_them(service, seeded):
    """`x_aggregate { nodes }` without `aggregate`: the rows, whatever their number (not one row per node)."""
    result = service.execute(gql("{ post_aggregate(order_by: {title: asc}) { nodes { title } } "
                                 "author(where: {name: {_eq: \"Ann\"}}) { posts_aggregate { nodes { title } } } }"))
    assert result["post_aggregate"] == {"nodes": [{"title": "First"}, {"title": "Second"}, {"title": "Third"}]}
    assert sorted(n["title"] for n in result["author"][0]["posts_aggregate"]["nodes"]) == ["First", "Second"]


def test_order_by_an_object_relation_and_distinct_on(service, seeded):
    ordered = service.execute(gql("{ post(order_by: [{author: {name: desc}}, {title: asc}]) { title } }"))
    assert [p["title"] for p in ordered["post"]] == ["Third", "First", "Second"]
    distinct = service.execute(gql("{ post(distinct_on: [status], order_by: [{status: asc}, {views: desc}]) "
                                   "{ status title } }"))
    assert distinct["post"] == [{"status": "draft", "title": "Second"}, {"status": "published", "title": "First"}]
    unordered = service.execute(gql("{ post(distinct_on: [status]) { status } }"))  # ordered by its columns
    assert unordered["post"] == [{"status": "draft"}, {"status": "published"}]


def test_distinct_on_columns_that_do_not_lead_the_order_by_are_refused_as_hasura_refuses_them(service, seeded):
    with pytest.raises(TransportQueryError) as refused:
        service.execute(gql("{ post(distinct_on: [status], order_by: [{views: desc}, {status: asc}]) { title } }"))
    error = refused.value.errors[0]
    assert error["extensions"]["code"] == "validation-failed" and "distinct_on" in error["message"], error


def test_variables_fragments_aliases_and_directives(service, seeded):
    query = """
        query Posts($status: post_status_enum!, $withAuthor: Boolean!) {
          published: post(where: {status: {_eq: $status}}, order_by: {title: asc}) { ...fields }
        }
        fragment fields on post { name: title author @include(if: $withAuthor) { name } }"""
    with_author = service.execute(GraphQLRequest(query, variable_values={"status": "published", "withAuthor": True}))
    assert with_author["published"][0] == {"name": "First", "author": {"name": "Ann"}}
    without = service.execute(GraphQLRequest(query, variable_values={"status": "draft", "withAuthor": False}))
    assert without["published"] == [{"name": "Second"}]


def test_variables_inside_an_order_or_a_list_take_each_requests_values(service, seeded):
    ordered = "query($d: order_by) { post(where: {title: {_in: [\"First\", \"Second\"]}}, order_by: {title: $d}) { title } }"
    assert [[p["title"] for p in service.execute(GraphQLRequest(ordered, variable_values={"d": d}))["post"]]
            for d in ("asc", "desc")] == [["First", "Second"], ["Second", "First"]]
    listed = 'query($a: String!) { post(where: {title: {_in: [$a, "Third"]}}, order_by: {title: asc}) { title } }'
    assert [[p["title"] for p in service.execute(GraphQLRequest(listed, variable_values={"a": a}))["post"]]
            for a in ("First", "Second")] == [["First", "Third"], ["Second", "Third"]]


def test_insert_update_and_delete_return_affected_rows_and_returning(service, seeded):
    inserted = service.execute(gql("""mutation { insert_post(objects: [{title: "Tmp 1", views: 1}, {title: "Tmp 2"}])
                                      { affected_rows returning { title views } } }"""))
    assert inserted["insert_post"] == {"affected_rows": 2, "returning": [{"title": "Tmp 1", "views": 1},
                                                                       {"title": "Tmp 2", "views": 0}]}
    updated = service.execute(gql("""mutation { update_post(where: {title: {_like: "Tmp%"}}, _set: {status: published},
                                      _inc: {views: 10}) { affected_rows returning { views } } }"""))
    assert updated["update_post"]["affected_rows"] == 2
    assert sorted(r["views"] for r in updated["update_post"]["returning"]) == [10, 11]
    deleted = service.execute(gql('mutation { delete_post(where: {title: {_like: "Tmp%"}}) { affected_rows } }'))
    assert deleted["delete_post"] == {"affected_rows": 2}


def test_by_pk_mutations_and_update_many(service, seeded):
    made = service.execute(gql('mutation { insert_post_one(object: {title: "Pk"}) { id title } }'))["insert_post_one"]
    changed = service.execute(GraphQLRequest("mutation($id: uuid!) { update_post_by_pk(pk_columns: {id: $id}, "
                                             "_set: {title: \"Pk 2\"}) { title } }", variable_values={"id": made["id"]}))
    assert changed["update_post_by_pk"] == {"title": "Pk 2"}
    many = service.execute(gql("""mutation { update_post_many(updates: [
        {where: {title: {_eq: "Pk 2"}}, _set: {body: "x"}}, {where: {title: {_eq: "nothing"}}, _set: {body: "y"}}])
        { affected_rows } }"""))
    assert many["update_post_many"] == [{"affected_rows": 1}, {"affected_rows": 0}]
    gone = service.execute(GraphQLRequest("mutation($id: uuid!) { delete_post_by_pk(id: $id) { title } }",
                                          variable_values={"id": made["id"]}))
    assert gone["delete_post_by_pk"] == {"title": "Pk 2"}


def test_one_insert_document_takes_each_requests_objects_however_they_differ(service, seeded):
    by_variable = "mutation($o: post_insert_input!) { insert_post_one(object: $o) { title views author { name } } }"
    answers = [service.execute(GraphQLRequest(by_variable, variable_values={"o": o}))["insert_post_one"] for o in (
        {"title": "Again 1"}, {"title": "Again 2", "views": 7}, {"title": "Again 3", "author": {"data": {"name": "Di"}}},
        {"title": "Again 4"})]
    assert answers == [{"title": "Again 1", "views": 0, "author": None}, {"title": "Again 2", "views": 7, "author": None},
                       {"title": "Again 3", "views": 0, "author": {"name": "Di"}},
                       {"title": "Again 4", "views": 0, "author": None}]
    in_document = "mutation($t: String!) { insert_post(objects: [{title: $t}]) { returning { title } } }"
    titles = [service.execute(GraphQLRequest(in_document, variable_values={"t": t}))["insert_post"]["returning"]
              for t in ("Again 5", "Again 6")]
    assert titles == [[{"title": "Again 5"}], [{"title": "Again 6"}]]
    with pytest.raises(TransportQueryError) as refused:
        service.execute(GraphQLRequest(by_variable, variable_values={"o": {"title": "Again 7", "rating": 9}}))
    assert refused.value.errors[0]["extensions"]["code"] == "validation-failed"
    service.execute(gql('mutation { delete_post(where: {title: {_like: "Again%"}}) { affected_rows } '
                        'delete_author(where: {name: {_eq: "Di"}}) { affected_rows } }'))


def test_one_update_document_writes_what_each_requests_variables_name(service, seeded):
    service.execute(gql('mutation { insert_post(objects: [{title: "Same 1"}, {title: "Same 2"}]) { affected_rows } }'))
    update = """mutation($w: post_bool_exp!, $s: post_set_input, $i: post_inc_input) {
        update_post(where: $w, _set: $s, _inc: $i) { affected_rows returning { title body views } } }"""
    answers = [service.execute(GraphQLRequest(update, variable_values=v))["update_post"] for v in (
        {"w": {"title": {"_eq": "Same 1"}}, "s": {"body": "one"}},
        {"w": {"title": {"_eq": "Same 2"}}, "s": {"views": 3}},
        {"w": {"title": {"_like": "Same%"}}, "i": {"views": 2}},
        {"w": {"title": {"_eq": "Same 1"}}, "s": {"body": "uno"}})]
    assert [sorted((r["title"], r["body"], r["views"]) for r in a["returning"]) for a in answers] == [
        [("Same 1", "one", 0)], [("Same 2", None, 3)], [("Same 1", "one", 2), ("Same 2", None, 5)], [("Same 1", "uno", 2)]]
    by_key = ("mutation($pk: post_pk_columns_input!, $t: String!) "
              "{ update_post_by_pk(pk_columns: $pk, _set: {title: $t}) { title } }")
    ids = {p["title"]: p["id"] for p in service.execute(gql('{ post(where: {title: {_like: "Same%"}}) { id title } }'))["post"]}
    renamed = [service.execute(GraphQLRequest(by_key, variable_values={"pk": {"id": ids[t]}, "t": f"{t}!"}))
               for t in ("Same 1", "Same 2")]
    assert [r["update_post_by_pk"]["title"] for r in renamed] == ["Same 1!", "Same 2!"]
    service.execute(gql('mutation { delete_post(where: {title: {_like: "Same%"}}) { affected_rows } }'))


def test_an_omitted_variable_leaves_its_input_field_out(service, seeded):
    made = service.execute(GraphQLRequest(
        "mutation($t: String!, $b: String) { insert_post_one(object: {title: $t, body: $b}) { id body } }",
        variable_values={"t": "Omitted"}))["insert_post_one"]
    assert made["body"] is None
    changed = service.execute(GraphQLRequest(
        "mutation($id: uuid!, $v: bigint, $t: String) { update_post_by_pk(pk_columns: {id: $id}, "
        "_set: {views: $v, title: $t}) { title views } }", variable_values={"id": made["id"], "v": 3}))
    assert changed["update_post_by_pk"] == {"title": "Omitted", "views": 3}
    service.execute(GraphQLRequest("mutation($id: uuid!) { delete_post_by_pk(id: $id) { id } }",
                                   variable_values={"id": made["id"]}))


def test_operations_of_one_document_giving_one_alias_to_different_fields_each_run_their_own(service, seeded):
    author = service.execute(gql('mutation { insert_author_one(object: {name: "Ops"}) { id } }'))["insert_author_one"]
    post = service.execute(gql('mutation { insert_post_one(object: {title: "Ops"}) { id } }'))["insert_post_one"]
    document = """mutation A($id: uuid!) { x: delete_post_by_pk(id: $id) { id } }
                  mutation B($id: uuid!) { x: delete_author_by_pk(id: $id) { id } }"""
    first = service.execute(GraphQLRequest(document, variable_values={"id": post["id"]}, operation_name="A"))
    second = service.execute(GraphQLRequest(document, variable_values={"id": author["id"]}, operation_name="B"))
    assert first == {"x": {"id": post["id"]}} and second == {"x": {"id": author["id"]}}


def test_upsert_with_on_conflict(service, seeded):
    upsert = """mutation($name: String!) { insert_author_one(object: {name: $name, email: "ann@example.com"},
                    on_conflict: {constraint: author_email_key, update_columns: [name]}) { id name } }"""
    result = service.execute(GraphQLRequest(upsert, variable_values={"name": "Ann B."}))
    assert result["insert_author_one"] == {"id": seeded["ann"], "name": "Ann B."}
    service.execute(GraphQLRequest(upsert, variable_values={"name": "Ann"}))


def test_a_failing_field_rolls_back_the_whole_mutation(service, seeded):
    with pytest.raises(TransportQueryError) as failed:
        service.execute(gql("""mutation {
            ok: insert_post_one(object: {title: "Rolled back"}) { id }
            bad: insert_post_one(object: {title: "First", author_id: "00000000-0000-0000-0000-000000000000"}) { id }
        }"""))
    assert failed.value.errors[0]["extensions"]["code"] == "constraint-violation"
    assert service.execute(gql('{ post(where: {title: {_eq: "Rolled back"}}) { id } }')) == {"post": []}


def test_validation_errors_list_each_field(service, seeded):
    with pytest.raises(TransportQueryError) as failed:
        service.execute(gql('mutation { insert_post_one(object: {title: "", rating: 9}) { id } }'))
    error = failed.value.errors[0]
    assert error["extensions"]["code"] == "validation-failed"
    assert {d["field"] for d in error["extensions"]["details"]} >= {"rating"}


@pytest.mark.parametrize(("document", "code"), [
    ("{ post { id ", "parse-failed"),
    ("{ post { nope } }", "validation-failed"),
    ("{ nope }", "validation-failed"),
    ('{ post_by_pk(id: "not-a-uuid") { id } }', "data-exception"),
    ("{ author { posts { author { posts { author { posts { author { posts { author { posts { author { posts "
     "{ author { name } } } } } } } } } } } } } }", "query-too-deep"),
])
def test_each_error_class_has_its_code_every_time(base, keys, document, code):
    answers = [httpx.post(f"{base}/api/tenants/blog/graphql/v1", json={"query": document},
                          headers={"apikey": keys["blog_service"]}) for _ in range(2)]  # the second: a kept refusal
    assert [(a.status_code, a.json()["errors"][0]["extensions"]["code"]) for a in answers] == [(200, code)] * 2
    assert answers[0].json() == answers[1].json()


def test_introspection_shows_only_what_the_role_may_use(base, keys):
    names = "{ __schema { queryType { fields { name } } mutationType { fields { name } } } }"

    def fields(key: str, slug: str = "blog") -> tuple[set[str], set[str]]:
        schema = httpx.post(f"{base}/api/tenants/{slug}/graphql/v1", json={"query": names},
                            headers={"apikey": key}).json()["data"]["__schema"]
        return ({f["name"] for f in schema["queryType"]["fields"]},
                {f["name"] for f in (schema["mutationType"] or {}).get("fields") or ()})

    anon_queries, anon_mutations = fields(keys["blog_anon"])
    service_queries, service_mutations = fields(keys["blog_service"])
    assert {"post", "author", "comment"} <= anon_queries and "users" not in anon_queries
    assert anon_mutations == set() and {"insert_post", "delete_users"} <= service_mutations
    assert "users" in service_queries
    assert fields(keys["private_anon"], "private") == ({"_empty"}, set())


def test_anonymous_writes_are_not_in_the_schema(base, keys, seeded):
    response = httpx.post(f"{base}/api/tenants/blog/graphql/v1", headers={"apikey": keys["blog_anon"]},
                          json={"query": 'mutation { delete_post(where: {}) { affected_rows } }'})
    assert response.json()["errors"][0]["extensions"]["code"] == "validation-failed"


def test_graphiql_on_a_browser_get(base):
    page = httpx.get(f"{base}/api/tenants/blog/graphql/v1", headers={"Accept": "text/html"})
    assert page.status_code == 200 and "graphiql" in page.text.lower()


def test_get_requests_carry_the_query_in_the_url(base, keys, seeded):
    response = httpx.get(f"{base}/api/tenants/blog/graphql/v1", params={"query": "{ author(order_by: {name: asc}) "
                                                                                 "{ name } }"},
                         headers={"apikey": keys["blog_anon"]})
    assert response.json() == {"data": {"author": [{"name": "Ann"}, {"name": "Bob"}]}}


def test_a_mutation_sent_with_get_is_405_and_writes_nothing(base, keys, seeded, service):
    """GraphQL over HTTP: a GET is safe (a link, a prefetch may send one), so it never runs a mutation."""
    response = httpx.get(f"{base}/api/tenants/blog/graphql/v1", headers={"apikey": keys["blog_service"]},
                         params={"query": 'mutation { insert_author_one(object: {name: "By GET"}) { id } }'})
    assert response.status_code == 405 and response.headers["allow"] == "POST", response.text
    assert response.json()["errors"][0]["extensions"]["code"] == "validation-failed"
    assert service.execute(gql('{ author(where: {name: {_eq: "By GET"}}) { id } }')) == {"author": []}


def test_another_tenants_key_is_refused_and_sees_nothing(base, keys, seeded):
    response = httpx.post(f"{base}/api/tenants/blog/graphql/v1", json={"query": "{ post { title } }"},
                          headers={"apikey": keys["other_service"]})
    assert response.status_code == 200 and response.json()["errors"][0]["extensions"]["reason"] == "tenant_mismatch"
    assert "First" not in response.text
    other = httpx.post(f"{base}/api/tenants/other/graphql/v1", json={"query": "{ post { title } }"},
                       headers={"apikey": keys["other_service"]})
    assert other.json() == {"data": {"post": []}}


def test_a_subscription_sent_over_http_is_refused_as_hasura_refuses_it(base, keys, seeded):
    response = httpx.post(f"{base}/api/tenants/blog/graphql/v1", json={"query": "subscription { post { title } }"},
                          headers={"apikey": keys["blog_service"]})
    [error] = response.json()["errors"]
    assert "data" not in response.json() and error["extensions"]["code"] == "unexpected-payload", response.text
    assert "websocket" in error["message"]


def test_a_nul_character_in_a_documents_string_is_refused(base, keys):
    response = httpx.post(f"{base}/api/tenants/blog/graphql/v1", headers={"apikey": keys["blog_service"]},
                          json={"query": 'mutation { insert_author_one(object: {name: "a\\u0000b"}) { id } }'})
    [error] = response.json()["errors"]
    assert error["extensions"]["code"] == "validation-failed" and "NUL" in error["message"], response.text


def test_malformed_http_requests_are_400_in_graphqls_error_shape(base, keys):
    for body, code, where in ((b"{nope", "invalid-json", "$"), (b'{"variables": {}}', "parse-failed", "$"),
                              (b'{"query": "{ post { id } }", "variables": [1]}', "parse-failed", "$.variables"),
                              (b'{"query": "{ post { id } }", "variables": "x"}', "parse-failed", "$.variables"),
                              (b'{"query": "{ post { id } }", "variables": {"a": "\\u0000"}}', "parse-failed",
                               "$.variables.a"),
                              (b"[]", "validation-failed", "$")):
        response = httpx.post(f"{base}/api/tenants/blog/graphql/v1", content=body,
                              headers={"apikey": keys["blog_service"], "Content-Type": "application/json"})
        assert response.status_code == 400, (body, response.text)
        [error] = response.json()["errors"]
        assert error["extensions"] == {"code": code, "path": where} and error["message"], (body, error)


@pytest.fixture(scope="module")
async def tiny_plan(db: Database, keys: dict[str, str]) -> str:
    plans, tenants = catalog.platform_tables()["plans"], catalog.platform_tables()["tenants"]
    async with db.begin() as conn:
        await conn.execute(plans.insert().values(code="tiny", name="Tiny",
                                                 limits={"graphql": {"max_depth": 2, "max_cost": 4}}))
        await conn.execute(tenants.update().where(tenants.c.slug == "other").values(plan="tiny"))
    return "tiny"


@pytest.mark.parametrize(("document", "code"), [
    ("{ post { author { posts { title } } } }", "query-too-deep"),
    ("{ post { id title body status views } }", "query-too-costly"),
])
def test_the_plans_depth_and_cost_limits_refuse_before_the_database(base, keys, tiny_plan, document, code):
    def answer() -> dict:
        return httpx.post(f"{base}/api/tenants/other/graphql/v1", json={"query": document},
                          headers={"apikey": keys["other_service"]}).json()

    deadline = time.monotonic() + 15  # the plan reaches the server by NOTIFY
    while "errors" not in (result := answer()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert result["errors"][0]["extensions"]["code"] == code
    small = httpx.post(f"{base}/api/tenants/other/graphql/v1", json={"query": "{ post { id } }"},
                       headers={"apikey": keys["other_service"]})
    assert "data" in small.json()


async def test_platform_admins_manage_tenants_through_the_system_tenants_graphql(base, keys, db):
    await create_platform_admin(db, "root@example.com", "a long passphrase")
    token = httpx.post(f"{base}/api/platform/auth/v1/token?grant_type=password",
                       json={"email": "root@example.com", "password": "a long passphrase"}).json()["access_token"]
    platform = Client(transport=HTTPXTransport(url=f"{base}/api/platform/graphql/v1",
                                               headers={"Authorization": f"Bearer {token}"}))
    slugs = {t["slug"] for t in platform.execute(gql("{ tenants { slug status } }"))["tenants"]}
    assert {"system", "blog", "other", "private"} <= slugs
    renamed = platform.execute(gql('mutation { update_tenants(where: {slug: {_eq: "private"}}, '
                                   '_set: {name: "Private Ltd"}) { returning { name } } }'))
    assert renamed["update_tenants"]["returning"] == [{"name": "Private Ltd"}]
    anonymous = httpx.post(f"{base}/api/platform/graphql/v1", json={"query": "{ tenants { slug } }"})
    assert anonymous.json()["errors"][0]["extensions"]["code"] == "validation-failed"


def test_nested_insert_of_an_object_relation_and_typename(service, seeded):
    made = service.execute(gql("""mutation { insert_post_one(object: {title: "Nested", author: {data: {name: "Cy"}}})
                                   { __typename title author { __typename name } } }"""))
    assert made["insert_post_one"] == {"__typename": "post", "title": "Nested",
                                       "author": {"__typename": "author", "name": "Cy"}}
    service.execute(gql('mutation { delete_post(where: {title: {_eq: "Nested"}}) { affected_rows } '
                        'delete_author(where: {name: {_eq: "Cy"}}) { affected_rows } }'))


async def test_an_own_scope_without_a_user_is_a_permission_error(base, keys, db):
    member = (await create_api_key(db, "blog", "member-key", "member")).key
    response = httpx.post(f"{base}/api/tenants/blog/graphql/v1", headers={"apikey": member},
                          json={"query": 'mutation { update_author(where: {}, _set: {bio: "x"}) { affected_rows } }'})
    assert response.json()["errors"][0]["extensions"]["code"] == "permission-error"
