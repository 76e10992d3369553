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
      pages:  {type: integer}
      isbn:   {type: string, unique: true}
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


def test_an_empty_set_updates_nothing(service, seeded):
    result = service.execute(gql("mutation { update_writer(where: {}, _set: {}) { affected_rows returning { id } } }"))
    assert result["update_writer"] == {"affected_rows": 0, "returning": []}
