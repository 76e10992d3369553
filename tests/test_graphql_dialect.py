"""Hasura's dialect as its clients send it (issue 13): field collection, mutation corner cases, the
coercions GraphQL's spec asks for, and the operators, types and shapes Hasura's own cases use. Driven by
`gql` against a running gateway, as a Hasura client would."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from gql import Client, GraphQLRequest, gql
from gql.transport.exceptions import TransportQueryError
from gql.transport.httpx import HTTPXTransport

from engine.database import Database
from functions.keys import create_api_key
from functions.tenants import create_tenant
from tests.server import running_gateway

SCHEMA = """
name: library
entities:
  writer:
    owner: true
    fields:
      name:  {type: string, required: true}
      n:     {type: integer, default: 0}
    permissions:
      read:   {anon: all, authenticated: all}
      create: {authenticated: all}
      update: {authenticated: own}
      delete: {authenticated: own}
  book:
    owner: true
    fields:
      title:  {type: string, required: true}
      genre:  {type: enum, values: [novel, poetry, essay]}
      shelf:  {type: enum, values: [top-shelf, bottom]}
      writer: {type: ref, to: writer, on_delete: cascade, reverse: books}
      tags:   {type: array, items: string}
      meta:   {type: json}
      prefs:  {type: json, schema: {type: object, properties: {size: {type: integer}}}}
      pages:  {type: integer}
      isbn:   {type: string, unique: true}
      price:  {type: decimal, precision: 10, scale: 2}
      published: {type: date}
    permissions:
      read:   {anon: all, authenticated: own}
      create: {authenticated: all}
      update: {authenticated: own}
      delete: {authenticated: own}
"""
PASSWORD = "a long enough passphrase"


@pytest.fixture(scope="module")
async def keys(db: Database) -> dict[str, str]:
    await create_tenant(db, "library", source=SCHEMA)
    await create_tenant(db, "elsewhere", source=SCHEMA)
    made = {role: (await create_api_key(db, "library", role, role)).key for role in ("anon", "service")}
    made["elsewhere"] = (await create_api_key(db, "elsewhere", "service", "service")).key
    return made


@pytest.fixture(scope="module")
def base(keys: dict[str, str], database_url: str) -> Iterator[str]:
    with running_gateway(database_url) as url:
        yield url


def client(base: str, headers: dict[str, str], slug: str = "library") -> Client:
    transport = HTTPXTransport(url=f"{base}/api/tenants/{slug}/graphql/v1", headers=headers)
    return Client(transport=transport, fetch_schema_from_transport=False)


@pytest.fixture(scope="module")
def service(base: str, keys: dict[str, str]) -> Client:
    return client(base, {"apikey": keys["service"]})


@pytest.fixture(scope="module")
def people(base: str, keys: dict[str, str]) -> dict[str, dict[str, Any]]:
    found = {}
    for name in ("ann", "bob"):
        response = httpx.post(f"{base}/api/tenants/library/auth/v1/signup", headers={"apikey": keys["anon"]},
                              json={"email": f"{name}@example.com", "password": PASSWORD})
        assert response.status_code == 200, response.text
        session = response.json()
        headers = {"apikey": keys["anon"], "Authorization": f"Bearer {session['access_token']}"}
        found[name] = {"id": session["user"]["id"], "headers": headers, "client": client(base, headers)}
    return found


def post(base: str, key: str, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    response = httpx.post(f"{base}/api/tenants/library/graphql/v1", headers={"apikey": key},
                          json={"query": query, "variables": variables or {}})
    assert response.status_code == 200, response.text
    return response.json()


def error_of(service: Client, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    with pytest.raises(TransportQueryError) as failed:
        service.execute(GraphQLRequest(query, variable_values=variables))
    return failed.value.errors[0]


@pytest.fixture(scope="module")
def seeded(service: Client) -> dict[str, Any]:
    made = service.execute(gql("""mutation {
        insert_writer(objects: [{name: "Ann", n: 1, books: {data: [
            {title: "A1", pages: 100, isbn: "a1", tags: ["x", "y"], meta: {k: 1, o: {p: true}}},
            {title: "A2", pages: 300, isbn: "a2", tags: ["y"], meta: {k: 2}}]}},
          {name: "Bob", n: 2, books: {data: [{title: "B1", pages: 200, isbn: "b1", tags: [], meta: {j: 3}}]}}])
        { affected_rows returning { id name } } }"""))
    return {"insert": made["insert_writer"], **{w["name"]: w["id"] for w in made["insert_writer"]["returning"]}}


# -- wrong answers (items 3-7) --


def test_a_response_key_selected_twice_is_one_key_with_both_selections(base, keys, seeded):
    raw = httpx.post(f"{base}/api/tenants/library/graphql/v1", headers={"apikey": keys["service"]}, json={
        "query": """{ writer(order_by: {name: asc}) { name books(order_by: {title: asc}) { title } }
                      writer(order_by: {name: asc}) { n books(order_by: {title: asc}) { pages } name } }"""})
    assert raw.text.count('"writer"') == 1 and raw.text.count('"books"') == 2
    assert raw.json()["data"]["writer"][0] == {"name": "Ann", "books": [{"title": "A1", "pages": 100},
                                                                        {"title": "A2", "pages": 300}], "n": 1}


def test_duplicate_keys_merge_through_fragments_and_aliases(service, seeded):
    result = service.execute(gql("""{ w: writer(where: {name: {_eq: "Bob"}}) { ...f name }
                                      w: writer(where: {name: {_eq: "Bob"}}) { x: n books { isbn } } }
                                    fragment f on writer { books { title } }"""))
    assert result == {"w": [{"books": [{"title": "B1", "isbn": "b1"}], "name": "Bob", "x": 2}]}


def test_set_and_inc_on_the_same_column_are_refused(service, seeded):
    error = error_of(service, 'mutation { update_writer(where: {}, _set: {n: 5}, _inc: {n: 1}) { affected_rows } }')
    assert error["extensions"]["code"] == "validation-failed" and "multiple operators" in error["message"]
    assert "n" in error["message"]
    assert error["extensions"]["path"] == "$.selectionSet.update_writer"  # where, as Hasura says it


def test_affected_rows_counts_nested_inserts(seeded):
    assert seeded["insert"]["affected_rows"] == 5  # 2 writers and 3 books, as Hasura counts


def test_affected_rows_counts_an_object_relation_parent(service, seeded):
    made = service.execute(gql("""mutation { insert_book(objects: [{title: "N1", writer: {data: {name: "Nested"}}}])
                                    { affected_rows } }"""))
    assert made["insert_book"]["affected_rows"] == 2
    service.execute(gql('mutation { delete_writer(where: {name: {_eq: "Nested"}}) { affected_rows } }'))


def test_a_null_order_by_entry_is_ignored(service, seeded):
    result = service.execute(gql("{ writer(order_by: [{n: null}, {name: desc}]) { name } }"))
    assert [w["name"] for w in result["writer"]] == ["Bob", "Ann"]
    same = service.execute(gql("{ writer(order_by: {n: null, name: asc}) { name } }"))
    assert [w["name"] for w in same["writer"]] == ["Ann", "Bob"]


def test_single_values_are_coerced_to_one_item_lists(service, seeded):
    distinct = service.execute(gql("{ book(distinct_on: writer_id, order_by: {writer_id: asc}) { writer_id } }"))
    assert len(distinct["book"]) == 2
    counted = service.execute(gql("{ book_aggregate { aggregate { count(columns: writer_id, distinct: true) } } }"))
    assert counted["book_aggregate"]["aggregate"]["count"] == 2
    inside = service.execute(gql('{ book(where: {title: {_in: "A1"}}) { title } }'))
    assert inside == {"book": [{"title": "A1"}]}
    outside = service.execute(gql('{ book(where: {title: {_nin: "A1"}}, order_by: {title: asc}) { title } }'))
    assert [b["title"] for b in outside["book"]] == ["A2", "B1"]
    inserted = service.execute(gql('mutation { insert_writer(objects: {name: "Single"}) { affected_rows } }'))
    assert inserted["insert_writer"]["affected_rows"] == 1
    updated = service.execute(gql('mutation { update_writer_many(updates: {where: {name: {_eq: "Single"}}, '
                                  '_set: {n: 9}}) { affected_rows } }'))
    assert updated["update_writer_many"] == [{"affected_rows": 1}]
    service.execute(gql('mutation { delete_writer(where: {name: {_eq: "Single"}}) { affected_rows } }'))


def test_single_values_as_variables_are_coerced_too(service, seeded):
    result = service.execute(GraphQLRequest("query($t: [String!]) { book(where: {title: {_in: $t}}) { title } }",
                                            variable_values={"t": "B1"}))
    assert result == {"book": [{"title": "B1"}]}


def test_a_date_takes_a_timestamps_date_as_postgresql_casts_it(service, seeded):
    """Hasura hands the value to PostgreSQL, whose cast of a timestamp to a date keeps its date as written."""
    made = service.execute(gql('mutation { insert_book_one(object: {title: "Dated", published: "2020-01-01T23:59:59-10:00"}) '
                               "{ id published } }"))["insert_book_one"]
    assert made["published"] == "2020-01-01"
    moved = service.execute(GraphQLRequest("mutation($id: uuid!, $d: date) { update_book_by_pk(pk_columns: {id: $id}, "
                                           "_set: {published: $d}) { published } }",
                                           variable_values={"id": made["id"], "d": "2021-06-30 08:00:00+02"}))
    assert moved["update_book_by_pk"] == {"published": "2021-06-30"}
    found = service.execute(gql('{ book(where: {published: {_eq: "2021-06-30T00:00:00Z"}}) { title } }'))
    assert found["book"] == [{"title": "Dated"}]
    service.execute(GraphQLRequest("mutation($id: uuid!) { delete_book_by_pk(id: $id) { id } }",
                                   variable_values={"id": made["id"]}))


def test_a_json_field_takes_hasuras_path_argument(service, seeded):
    made = service.execute(gql('mutation { insert_book_one(object: {title: "Pathed", meta: {a: {b: [10, 20]}, k: "x"}}) '
                               "{ id at: meta(path: \"$.a.b[1]\") } }"))["insert_book_one"]
    assert made["at"] == 20  # in a mutation's answer too
    found = service.execute(GraphQLRequest(
        'query($p: String) { book(where: {title: {_eq: "Pathed"}}) { meta(path: "a.b") k: meta(path: "$[\\"k\\"]") '
        'none: meta(path: "$.zz.y") whole: meta byVariable: meta(path: $p) } }', variable_values={"p": "$.a.b[0]"}))
    assert found["book"] == [{"meta": [10, 20], "k": "x", "none": None, "whole": {"a": {"b": [10, 20]}, "k": "x"},
                              "byVariable": 10}]
    bad = error_of(service, '{ book { meta(path: "$..a") } }')
    assert bad["extensions"]["code"] == "validation-failed" and "json path" in bad["message"]
    service.execute(GraphQLRequest("mutation($id: uuid!) { delete_book_by_pk(id: $id) { id } }",
                                   variable_values={"id": made["id"]}))


def test_a_nested_insert_takes_on_conflict_as_hasura_does(service, seeded, people):
    first = service.execute(gql('mutation { insert_writer_one(object: {name: "Nesty", books: {data: [{title: "N1", '
                                'isbn: "nest-1"}]}}) { id } }'))["insert_writer_one"]
    moved = service.execute(gql('mutation { insert_writer(objects: [{name: "Nesty 2", books: {data: [{title: "N1 again", '
                                'isbn: "nest-1"}], on_conflict: {constraint: book_isbn_key, update_columns: [title, '
                                "writer_id]}}}]) { affected_rows returning { id name books { title isbn } } } }"))
    assert moved["insert_writer"]["affected_rows"] == 2  # the writer inserted, the book it met updated
    assert moved["insert_writer"]["returning"][0]["books"] == [{"title": "N1 again", "isbn": "nest-1"}]
    ignored = service.execute(gql('mutation { insert_writer(objects: [{name: "Nesty 3", books: {data: [{title: "N1 lost", '
                                  'isbn: "nest-1"}], on_conflict: {constraint: book_isbn_key, update_columns: []}}}]) '
                                  "{ affected_rows } }"))
    assert ignored["insert_writer"]["affected_rows"] == 1  # the writer only: the book it met is left alone
    assert service.execute(gql('{ book(where: {isbn: {_eq: "nest-1"}}) { title } }'))["book"] == [{"title": "N1 again"}]
    types = {t["name"]: t for t in service.execute(gql(
        "{ __schema { types { name inputFields { name } } } }"))["__schema"]["types"]}
    assert {f["name"] for f in types["writer_obj_rel_insert_input"]["inputFields"]} == {"data", "on_conflict"}
    ann = people["ann"]["client"].execute(gql("{ __schema { types { name inputFields { name } } } }"))
    offered = {t["name"]: t for t in ann["__schema"]["types"]}  # ann may update her own rows: on_conflict is hers
    assert "on_conflict" in {f["name"] for f in offered["book_arr_rel_insert_input"]["inputFields"]}
    for name in ("Nesty", "Nesty 2", "Nesty 3"):
        service.execute(gql(f'mutation {{ delete_writer(where: {{name: {{_eq: "{name}"}}}}) {{ affected_rows }} }}'))
    assert first["id"]


def test_an_empty_set_updates_nothing(service, seeded):
    result = service.execute(gql("mutation { update_writer(where: {}, _set: {}) { affected_rows returning { id } } }"))
    assert result["update_writer"] == {"affected_rows": 0, "returning": []}


# -- missing dialect (item 13) --


def test_enum_fields_are_graphql_enum_types_in_inputs_outputs_filters_and_introspection(service, seeded):
    introspected = service.execute(gql("""{ genre: __type(name: "book_genre_enum") { kind enumValues { name } }
        book: __type(name: "book") { fields { name type { name kind } } }
        insert: __type(name: "book_insert_input") { inputFields { name type { name } } } }"""))
    assert introspected["genre"] == {"kind": "ENUM", "enumValues": [{"name": "novel"}, {"name": "poetry"},
                                                                   {"name": "essay"}]}
    types = {f["name"]: f["type"] for f in introspected["book"]["fields"]}
    assert types["genre"] == {"name": "book_genre_enum", "kind": "ENUM"}
    assert types["shelf"] == {"name": "String", "kind": "SCALAR"}  # `top-shelf` is not a GraphQL name
    assert {f["name"]: f["type"]["name"] for f in introspected["insert"]["inputFields"]}["genre"] == "book_genre_enum"
    service.execute(gql('mutation { update_book(where: {title: {_eq: "A1"}}, _set: {genre: poetry, shelf: "top-shelf"}) '
                        '{ affected_rows } }'))
    found = service.execute(GraphQLRequest("query($g: book_genre_enum!) { book(where: {genre: {_eq: $g}}) "
                                           "{ title genre shelf } }", variable_values={"g": "poetry"}))
    assert found == {"book": [{"title": "A1", "genre": "poetry", "shelf": "top-shelf"}]}
    assert service.execute(gql("{ book(where: {genre: {_in: [novel, poetry]}}) { title } }")) == {"book": [{"title": "A1"}]}
    assert error_of(service, '{ book(where: {genre: {_eq: "poetry"}}) { title } }')["extensions"]["code"] == \
        "validation-failed"
    unknown = error_of(service, "query($g: book_genre_enum) { book(where: {genre: {_eq: $g}}) { title } }",
                       {"g": "thriller"})
    assert unknown["extensions"]["code"] == "validation-failed"


@pytest.mark.parametrize(("comparison", "titles"), [
    ('{_nlike: "A%"}', ["B1"]), ('{_nilike: "a%"}', ["B1"]), ('{_similar: "(A|B)1"}', ["A1", "B1"]),
    ('{_nsimilar: "A%"}', ["B1"]), ('{_regex: "^A[0-9]$"}', ["A1", "A2"]), ('{_iregex: "^a2"}', ["A2"]),
    ('{_nregex: "1$"}', ["A2"]), ('{_niregex: "^a"}', ["B1"]),
])
def test_text_pattern_operators(service, seeded, comparison, titles):
    result = service.execute(gql(f'{{ book(where: {{title: {comparison}, isbn: {{_is_null: false}}}}, '
                                 f'order_by: {{title: asc}}) {{ title }} }}'))
    assert [b["title"] for b in result["book"]] == titles


def test_a_pattern_the_database_would_backtrack_on_is_refused(service, seeded):
    error = error_of(service, "query($p: String!) { book(where: {title: {_regex: $p}}) { title } }",
                     {"p": "^(a+)+\\1$"})
    assert error["extensions"]["code"] == "validation-failed" and "pattern" in error["message"]


@pytest.mark.parametrize(("comparison", "titles"), [
    ("{_contains: {k: 1}}", ["A1"]), ("{_contained_in: {k: 2, z: 1}}", ["A2"]), ('{_has_key: "j"}', ["B1"]),
    ('{_has_keys_any: ["j", "k"]}', ["A1", "A2", "B1"]), ('{_has_keys_all: ["k", "o"]}', ["A1"]),
    ("{_eq: {j: 3}}", ["B1"]),
])
def test_json_operators(service, seeded, comparison, titles):
    result = service.execute(gql(f"{{ book(where: {{meta: {comparison}}}, order_by: {{title: asc}}) {{ title }} }}"))
    assert [b["title"] for b in result["book"]] == titles


@pytest.mark.parametrize(("comparison", "titles"), [
    ('{_contains: ["y"]}', ["A1", "A2"]), ('{_contained_in: ["y"]}', ["A2", "B1"]), ('{_eq: ["x", "y"]}', ["A1"]),
    ('{_neq: ["y"]}', ["A1", "B1"]), ("{_eq: []}", ["B1"]),
])
def test_array_comparison_operators(service, seeded, comparison, titles):
    result = service.execute(gql(f"{{ book(where: {{tags: {comparison}}}, order_by: {{title: asc}}) {{ title }} }}"))
    assert [b["title"] for b in result["book"]] == titles


def test_stddev_and_variance_aggregates(service, seeded):
    result = service.execute(gql("""{ book_aggregate(where: {isbn: {_in: ["a1", "a2", "b1"]}}) { aggregate {
        stddev { pages } variance { pages } stddev_pop { pages } stddev_samp { pages } var_pop { pages }
        var_samp { pages } } } }"""))["book_aggregate"]["aggregate"]
    assert result["stddev"]["pages"] == pytest.approx(100) and result["variance"]["pages"] == pytest.approx(10000)
    assert result["stddev_samp"]["pages"] == pytest.approx(100) and result["var_samp"]["pages"] == pytest.approx(10000)
    assert result["stddev_pop"]["pages"] == pytest.approx(81.6497, rel=1e-4)
    assert result["var_pop"]["pages"] == pytest.approx(6666.667, rel=1e-4)


def test_order_by_an_array_relations_aggregate(service, seeded):
    names = ["Ann", "Bob"]
    by_count = service.execute(GraphQLRequest("query($n: [String!]) { writer(where: {name: {_in: $n}}, "
                                              "order_by: {books_aggregate: {count: desc}}) { name } }",
                                              variable_values={"n": names}))
    assert [w["name"] for w in by_count["writer"]] == ["Ann", "Bob"]
    by_max = service.execute(GraphQLRequest("query($n: [String!]) { writer(where: {name: {_in: $n}}, "
                                            "order_by: [{books_aggregate: {max: {pages: asc}}}]) { name } }",
                                            variable_values={"n": names}))
    assert [w["name"] for w in by_max["writer"]] == ["Bob", "Ann"]  # 200 before 300


def test_order_by_an_aggregate_counts_only_rows_the_caller_may_read(people):
    ann, bob = people["ann"]["client"], people["bob"]["client"]
    made = ann.execute(gql("""mutation { wa: insert_writer_one(object: {name: "WA", books: {data: [{title: "wa1"}]}}) { id }
                                        wb: insert_writer_one(object: {name: "WB", books: {data: [{title: "wb1"},
                                                                                                  {title: "wb2"}]}}) { id } }"""))
    bob.execute(GraphQLRequest("mutation($w: uuid!) { insert_book(objects: [{title: \"x1\", writer_id: $w}, "
                               "{title: \"x2\", writer_id: $w}, {title: \"x3\", writer_id: $w}]) { affected_rows } }",
                               variable_values={"w": made["wa"]["id"]}))
    query = gql('{ writer(where: {name: {_in: ["WA", "WB"]}}, order_by: {books_aggregate: {count: desc}}) '
                '{ name books_aggregate { aggregate { count } } } }')
    seen_by_ann = ann.execute(query)["writer"]  # WA holds 1 of ann's books and 3 of bob's, which ann may not read
    assert seen_by_ann == [{"name": "WB", "books_aggregate": {"aggregate": {"count": 2}}},
                           {"name": "WA", "books_aggregate": {"aggregate": {"count": 1}}}]
    assert [w["name"] for w in bob.execute(query)["writer"]] == ["WA", "WB"]


def test_new_operators_never_reach_rows_outside_the_callers_scope(people, seeded):
    bob = people["bob"]["client"]
    for comparison in ('title: {_regex: ".*"}', 'title: {_nlike: "zzz"}', 'meta: {_has_keys_any: ["j", "k"]}',
                       'tags: {_contained_in: ["x", "y"]}', 'title: {_similar: "%"}'):
        titles = {b["title"] for b in bob.execute(gql(f"{{ book(where: {{{comparison}}}) {{ title }} }}"))["book"]}
        assert titles <= {"x1", "x2", "x3"}, comparison  # bob's own books only, never A1, A2, B1 or ann's


def test_on_conflict_where_updates_only_the_rows_it_matches(service, seeded):
    upsert = """mutation($w: book_bool_exp) { insert_book(objects: [{title: "A1 again", isbn: "a1"}],
        on_conflict: {constraint: book_isbn_key, update_columns: [title], where: $w}) { affected_rows returning { title } } }"""
    untouched = service.execute(GraphQLRequest(upsert, variable_values={"w": {"pages": {"_gt": 1000}}}))
    assert untouched["insert_book"] == {"affected_rows": 0, "returning": []}
    changed = service.execute(GraphQLRequest(upsert, variable_values={"w": {"pages": {"_eq": 100}}}))
    assert changed["insert_book"] == {"affected_rows": 1, "returning": [{"title": "A1 again"}]}
    service.execute(gql('mutation { update_book(where: {isbn: {_eq: "a1"}}, _set: {title: "A1"}) { affected_rows } }'))


def test_on_conflict_where_through_a_relation_looks_at_that_rows_relation_only(service, seeded):
    """The related row is the conflicting row's own writer (a correlated, schema-qualified subquery), not
    any writer: Bob's book b1 is not updated by a `where` that names Ann."""
    upsert = """mutation($i: String!, $w: book_bool_exp) { insert_book(objects: [{title: "again", isbn: $i}],
        on_conflict: {constraint: book_isbn_key, update_columns: [title], where: $w}) { affected_rows returning { title } } }"""
    ann = {"writer": {"name": {"_eq": "Ann"}}}
    untouched = service.execute(GraphQLRequest(upsert, variable_values={"i": "b1", "w": ann}))
    assert untouched["insert_book"] == {"affected_rows": 0, "returning": []}
    changed = service.execute(GraphQLRequest(upsert, variable_values={"i": "a2", "w": ann}))
    assert changed["insert_book"] == {"affected_rows": 1, "returning": [{"title": "again"}]}
    service.execute(gql('mutation { update_book(where: {isbn: {_eq: "a2"}}, _set: {title: "A2"}) { affected_rows } }'))


def test_a_batch_of_operations_is_answered_with_an_array(base, keys, seeded):
    batch = [{"query": '{ writer(where: {name: {_eq: "Ann"}}) { name } }'},
             {"query": "query($i: String!) { book(where: {isbn: {_eq: $i}}) { title } }", "variables": {"i": "b1"}},
             {"query": "{ nope }"}]
    response = httpx.post(f"{base}/api/tenants/library/graphql/v1", headers={"apikey": keys["service"]}, json=batch)
    assert response.status_code == 200
    answers = response.json()
    assert answers[:2] == [{"data": {"writer": [{"name": "Ann"}]}}, {"data": {"book": [{"title": "B1"}]}}]
    assert answers[2]["errors"][0]["extensions"]["code"] == "validation-failed"
    other = httpx.post(f"{base}/api/tenants/library/graphql/v1", headers={"apikey": keys["elsewhere"]}, json=batch)
    assert other.status_code == 200 and other.json()["errors"][0]["extensions"]["code"] == "access-denied"
    assert "Ann" not in other.text
    anonymous = httpx.post(f"{base}/api/tenants/library/graphql/v1", json=[
        {"query": '{ book(where: {isbn: {_eq: "b1"}}) { title } }'},
        {"query": 'mutation { delete_book(where: {}) { affected_rows } }'}])  # anon may read books, never delete
    assert anonymous.json()[0] == {"data": {"book": [{"title": "B1"}]}}
    assert anonymous.json()[1]["errors"][0]["extensions"]["code"] == "validation-failed"
    assert httpx.post(f"{base}/api/tenants/library/graphql/v1", headers={"apikey": keys["service"]},
                      json=[]).status_code == 400


def test_the_standard_introspection_query_of_tools_is_accepted(base, keys, seeded):
    from graphql import build_client_schema, get_introspection_query

    query = get_introspection_query(descriptions=True, specified_by_url=True, directive_is_repeatable=True,
                                    schema_description=True, input_value_deprecation=True)
    for key in (keys["service"], keys["anon"]):
        result = post(base, key, query)
        assert "errors" not in result, result["errors"]
        assert build_client_schema(result["data"]).get_type("book") is not None
    fetched = Client(transport=HTTPXTransport(url=f"{base}/api/tenants/library/graphql/v1",
                                              headers={"apikey": keys["service"]}), fetch_schema_from_transport=True)
    assert fetched.execute(gql("{ book(where: {genre: {_eq: novel}}) { title } }")) == {"book": []}


# -- writes as fast as reads (item 15): flat objects in one statement --


def test_flat_objects_are_inserted_together_with_defaults_owner_and_order(people, seeded):
    ann, bob = people["ann"]["client"], people["bob"]["client"]
    made = ann.execute(gql("""mutation { insert_writer(objects: [{name: "F1"}, {name: "F2"}, {name: "F3"}])
                              { affected_rows returning { name n owner_id } } }"""))["insert_writer"]
    assert made["affected_rows"] == 3
    assert made["returning"] == [{"name": f"F{i}", "n": 0, "owner_id": people["ann"]["id"]} for i in (1, 2, 3)]
    one = bob.execute(gql('mutation { insert_book_one(object: {title: "flat", genre: essay}) { title genre owner_id } }'))
    assert one["insert_book_one"] == {"title": "flat", "genre": "essay", "owner_id": people["bob"]["id"]}
    assert ann.execute(gql('{ book(where: {title: {_eq: "flat"}}) { title } }')) == {"book": []}  # bob's, not ann's


def test_a_flat_insert_is_all_or_nothing(service, seeded):
    error = error_of(service, 'mutation { insert_book(objects: [{title: "ok 1", isbn: "dup"}, {title: "ok 2", isbn: "dup"}]) '
                              '{ affected_rows } }')
    assert error["extensions"]["code"] == "constraint-violation"
    assert error["message"].count("already exists") == 1 and "DETAIL" not in error["message"], error["message"]
    assert service.execute(gql('{ book(where: {isbn: {_eq: "dup"}}) { title } }')) == {"book": []}
    skipped = service.execute(gql("""mutation { insert_book(objects: [{title: "new", isbn: "n1"}, {title: "again", isbn: "a1"}],
        on_conflict: {constraint: book_isbn_key, update_columns: []}) { affected_rows returning { title } } }"""))
    assert skipped["insert_book"] == {"affected_rows": 1, "returning": [{"title": "new"}]}


def test_decimals_are_json_numbers_as_rest_sends_them(base, keys, seeded):
    made = post(base, keys["service"], 'mutation { insert_book_one(object: {title: "priced", price: "12.50"}) { id price } }')
    assert made["data"]["insert_book_one"]["price"] == 12.5
    raw = httpx.post(f"{base}/api/tenants/library/graphql/v1", headers={"apikey": keys["service"]},
                     json={"query": '{ book(where: {title: {_eq: "priced"}}) { price } }'})
    assert raw.json() == {"data": {"book": [{"price": 12.5}]}} and '"price":12.50' in raw.text  # as the database writes it
    rest = httpx.get(f"{base}/api/tenants/library/rest/v1/book", params={"select": "price", "title": "eq.priced"},
                     headers={"apikey": keys["service"]})
    assert rest.json() == [{"price": 12.5}]


def test_refused_credentials_are_a_graphql_error_as_hasura_words_it(base, keys, people):
    """Apollo's and urql's token-refresh links look for `invalid-jwt` in a 200's errors."""
    expired_like = {"apikey": keys["anon"], "Authorization": "Bearer not.a.jwt"}
    error = error_of(client(base, expired_like), "{ book { id } }")
    assert error["extensions"]["code"] == "invalid-jwt" and error["extensions"]["path"] == "$", error
    other_tenants = client(base, {"apikey": keys["elsewhere"], "Authorization": people["ann"]["headers"]["Authorization"]},
                           slug="elsewhere")
    assert error_of(other_tenants, "{ book { id } }")["extensions"] == {"code": "access-denied", "path": "$",
                                                                       "reason": "tenant_mismatch"}
    unknown_key = error_of(client(base, {"apikey": "bsk_nothing"}), "{ book { id } }")
    assert unknown_key["extensions"]["code"] == "access-denied" and "data" not in unknown_key
    rest = httpx.get(f"{base}/api/tenants/library/rest/v1/book", headers=expired_like)
    assert rest.status_code == 401  # REST keeps PostgREST's status


def test_a_required_field_is_a_non_null_type_as_generated_clients_read_it(base, keys):
    type_query = '{ __type(name: "book") { fields { name type { kind name ofType { name } } } } }'
    fields = {f["name"]: f["type"] for f in post(base, keys["anon"], type_query)["data"]["__type"]["fields"]}
    assert fields["title"] == {"kind": "NON_NULL", "name": None, "ofType": {"name": "String"}}
    assert fields["id"]["kind"] == "NON_NULL" and fields["pages"] == {"kind": "SCALAR", "name": "Int", "ofType": None}
    assert fields["writer"]["kind"] == "OBJECT"  # a relation may be hidden by its target's row scope: nullable


def test_jsonb_update_operators_change_a_json_field_in_place(service, seeded):
    made = service.execute(gql('mutation { insert_book_one(object: {title: "J", meta: {a: 1, n: {x: 1, y: 2}}}) { id } }'))
    book = made["insert_book_one"]["id"]

    def update(arguments: str, declared: str = "") -> str:
        return (f"mutation($id: uuid!{declared}) {{ update_book_by_pk(pk_columns: {{id: $id}}, {arguments}) "
                "{ meta } }")

    def run(arguments: str, declared: str = "", **variables: Any) -> Any:
        request = GraphQLRequest(update(arguments, declared), variable_values={"id": book, **variables})
        return service.execute(request)["update_book_by_pk"]["meta"]

    assert run("_append: {meta: $v}", ", $v: jsonb", v={"b": 2}) == {"a": 1, "b": 2, "n": {"x": 1, "y": 2}}
    assert run('_prepend: {meta: {a: 0, c: 3}}') == {"a": 1, "b": 2, "c": 3, "n": {"x": 1, "y": 2}}
    assert run("_delete_key: {meta: $k}", ", $k: String", k="c") == {"a": 1, "b": 2, "n": {"x": 1, "y": 2}}
    assert run("_delete_at_path: {meta: $p}", ", $p: [String!]", p=["n", "x"]) == {"a": 1, "b": 2, "n": {"y": 2}}
    assert run("_set: {meta: [1, 2, 3]}") == [1, 2, 3]
    assert run("_delete_elem: {meta: 0}") == [2, 3]
    both = error_of(service, update("_set: {meta: $v}, _append: {meta: $v}", ", $v: jsonb"), {"id": book, "v": {"z": 1}})
    assert both["extensions"]["code"] == "validation-failed" and "multiple operators" in both["message"]
    assert run("_append: {meta: [4]}") == [2, 3, 4]
    too_long = error_of(service, update("_delete_at_path: {meta: $p}", ", $p: [String!]"), {"id": book, "p": ["k"] * 33})
    assert too_long["extensions"]["code"] == "validation-failed", too_long
    schemed = error_of(service, update('_append: {prefs: {size: "big"}}'), {"id": book})
    assert schemed["extensions"]["code"] == "validation-failed" and "_set" in str(schemed), schemed


def test_jsonb_update_operators_reach_only_rows_the_caller_may_update(people, seeded):
    ann, bob = people["ann"]["client"], people["bob"]["client"]
    made = ann.execute(gql('mutation { insert_book_one(object: {title: "ann json", meta: {mine: true}}) { id } }'))
    book = made["insert_book_one"]["id"]
    tried = bob.execute(GraphQLRequest('mutation($id: uuid!) { update_book(where: {id: {_eq: $id}}, '
                                       '_append: {meta: {bob: true}}) { affected_rows } }', variable_values={"id": book}))
    assert tried == {"update_book": {"affected_rows": 0}}
    mine = ann.execute(GraphQLRequest('query($id: uuid!) { book_by_pk(id: $id) { meta } }', variable_values={"id": book}))
    assert mine == {"book_by_pk": {"meta": {"mine": True}}}


def test_x_hasura_role_narrows_the_caller_and_never_widens_it(base, keys, people, seeded):
    url = f"{base}/api/tenants/library/graphql/v1"
    ann = people["ann"]
    made = ann["client"].execute(gql('mutation { insert_book_one(object: {title: "ann role"}) { id } }'))
    as_anon = httpx.post(url, headers={"apikey": keys["service"], "x-hasura-role": "anon"},
                         json={"query": 'mutation { insert_book_one(object: {title: "x"}) { id } }'}).json()
    assert as_anon["errors"][0]["extensions"]["code"] == "validation-failed"  # anon's schema has no insert
    as_ann = httpx.post(url, headers={"apikey": keys["service"], "x-hasura-role": "authenticated",
                                      "x-hasura-user-id": ann["id"]},
                        json={"query": '{ book(where: {title: {_eq: "ann role"}}) { id } }'}).json()
    assert as_ann == {"data": {"book": [{"id": made["insert_book_one"]["id"]}]}}
    own_role = httpx.post(url, headers={**ann["headers"], "x-hasura-role": "authenticated"},
                          json={"query": "{ book { title owner_id } }"}).json()
    assert "ann role" in [b["title"] for b in own_role["data"]["book"]]
    assert {b["owner_id"] for b in own_role["data"]["book"]} == {ann["id"]}  # her own rows, as her role reads them
    for headers in ({**ann["headers"], "x-hasura-role": "service"}, {"apikey": keys["anon"], "x-hasura-role": "admin"},
                    {"apikey": keys["service"], "x-hasura-role": "nobody"}):
        refused = httpx.post(url, headers=headers, json={"query": "{ book { title } }"})
        assert refused.status_code == 200 and "data" not in refused.json(), refused.text
        assert refused.json()["errors"][0]["extensions"]["code"] == "access-denied"


def test_an_aggregate_predicate_filters_by_the_count_of_related_rows(service, seeded):
    many = service.execute(gql('{ writer(where: {books_aggregate: {count: {predicate: {_gte: 2}}}}, order_by: {name: asc}) '
                               '{ name } }'))
    assert {"name": "Ann"} in many["writer"] and {"name": "Bob"} not in many["writer"]
    long_ones = service.execute(gql('{ writer(where: {books_aggregate: {count: {predicate: {_eq: 1}, '
                                    'filter: {pages: {_gt: 250}}}}}) { name } }'))
    assert {"name": "Ann"} in long_ones["writer"]  # A2 alone has more than 250 pages
    assert {"name": "Bob"} not in long_ones["writer"]  # B1 has 200
    distinct = service.execute(gql('{ writer(where: {name: {_eq: "Ann"}, books_aggregate: {count: {arguments: [writer_id], '
                                   'distinct: true, predicate: {_eq: 1}}}}) { name } }'))
    assert distinct == {"writer": [{"name": "Ann"}]}


def test_an_aggregate_predicate_counts_only_rows_the_caller_may_read(people, seeded, base, keys):
    """bob's writer row, read by ann: the books of it that ann may read are none of bob's (`own`)."""
    ann = people["ann"]["client"]
    seen = ann.execute(gql('{ writer(where: {name: {_eq: "Bob"}, books_aggregate: {count: {predicate: {_gt: 0}}}}) '
                           '{ name } }'))
    assert seen == {"writer": []}
    counted = '{ writer(where: {name: {_eq: "Bob"}, books_aggregate: {count: {predicate: {_gt: 0}}}}) { name } }'
    foreign = post(base, keys["elsewhere"], counted)  # another tenant's key at this tenant: nothing
    assert "data" not in foreign and foreign["errors"][0]["extensions"]["code"] == "access-denied", foreign
    anonymous = post(base, keys["anon"], counted)  # anon reads every book (`anon: all`): it counts bob's
    assert anonymous == {"data": {"writer": [{"name": "Bob"}]}}, anonymous
