"""Properties of the GraphQL dialect: for random filters, GraphQL and REST give the same rows (the two
dialects agree), and random documents, valid or not, get answers or errors, never a server error."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.database import Database
from functions.keys import create_api_key
from functions.tenants import create_tenant
from tests.server import running_gateway

REPO = Path(__file__).resolve().parent.parent
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
async def key(db: Database) -> str:
    await create_tenant(db, "props", source=(REPO / "schemas" / "blog.yaml").read_text())
    return (await create_api_key(db, "props", "service", "service")).key


@pytest.fixture(scope="module")
def base(key: str, database_url: str) -> Iterator[str]:
    with running_gateway(database_url) as url:
        rows = [{"title": f"{w} {i}", "status": "published" if i % 3 else "draft", "views": i * 7 % 11,
                 "rating": None if i % 4 == 0 else i % 5} for i, w in enumerate(["alpha", "beta", "gamma", "delta"] * 5)]
        httpx.post(f"{url}/api/tenants/props/rest/v1/post", json=rows, headers={"apikey": key}).raise_for_status()
        yield url


word = st.sampled_from(["alpha", "beta", "gamma", "delta", "alpha 1", "beta 5", "zeta"])
numbers = st.integers(min_value=-1, max_value=12)
comparisons = st.one_of(
    st.tuples(st.just("title"), st.sampled_from(["_eq", "_neq", "_gt", "_lt"]), word),
    st.tuples(st.just("title"), st.sampled_from(["_like", "_ilike"]), word.map(lambda w: f"%{w[:3]}%")),
    st.tuples(st.just("status"), st.sampled_from(["_eq", "_neq"]), st.sampled_from(["draft", "published"])),
    st.tuples(st.sampled_from(["views", "rating"]), st.sampled_from(["_eq", "_neq", "_gt", "_gte", "_lt", "_lte"]),
              numbers),
    st.tuples(st.sampled_from(["views", "rating"]), st.sampled_from(["_in", "_nin"]), st.lists(numbers, min_size=1,
                                                                                              max_size=3)),
    st.tuples(st.just("rating"), st.just("_is_null"), st.booleans()),
)
expressions = st.recursive(comparisons, lambda inner: st.tuples(st.sampled_from(["_and", "_or", "_not"]),
                                                                st.lists(inner, min_size=1, max_size=3)), max_leaves=6)
REST_OPS = {"_eq": "eq", "_neq": "neq", "_gt": "gt", "_gte": "gte", "_lt": "lt", "_lte": "lte", "_like": "like",
            "_ilike": "ilike"}


def graphql_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(graphql_value(v) for v in value) + "]"
    return f'"{value}"' if isinstance(value, str) else str(value)


def as_graphql(expression: tuple) -> str:
    if expression[0] in ("_and", "_or", "_not"):
        kind, items = expression
        if kind == "_not":
            return "{_not: {_and: [" + ", ".join(as_graphql(i) for i in items) + "]}}"
        return "{" + kind + ": [" + ", ".join(as_graphql(i) for i in items) + "]}"
    column, op, value = expression
    literal = value if column == "status" else graphql_value(value)  # an enum field: its values are enum names
    return "{" + column + ": {" + op + ": " + literal + "}}"


def rest_value(value: object) -> str:
    return f'"{value}"' if isinstance(value, str) else str(value).lower()


def as_rest(expression: tuple) -> str:
    """The same condition in PostgREST's `and=(...)` syntax."""
    if expression[0] in ("_and", "_or", "_not"):
        kind, items = expression
        inner = ",".join(as_rest(i) for i in items)
        return {"_and": f"and({inner})", "_or": f"or({inner})", "_not": f"not.and({inner})"}[kind]
    column, op, value = expression
    if op == "_is_null":
        return f"{column}.{'is' if value else 'not.is'}.null"
    if op in ("_in", "_nin"):
        return f"{column}.{'not.' if op == '_nin' else ''}in.({','.join(str(v) for v in value)})"
    if op in ("_like", "_ilike"):
        return f"{column}.{REST_OPS[op]}.{str(value).replace('%', '*')}"
    return f"{column}.{REST_OPS[op]}.{rest_value(value)}"


@SETTINGS
@given(expression=expressions)
def test_graphql_and_rest_agree_on_random_filters(base, key, expression):
    query = f"{{ post(where: {as_graphql(expression)}, order_by: {{title: asc}}) {{ title }} }}"
    graphql = httpx.post(f"{base}/api/tenants/props/graphql/v1", json={"query": query}, headers={"apikey": key})
    rest = httpx.get(f"{base}/api/tenants/props/rest/v1/post", headers={"apikey": key},
                     params={"select": "title", "order": "title.asc", "and": f"({as_rest(expression)})"})
    assert rest.status_code == 200, (rest.text, as_rest(expression))
    assert graphql.json() == {"data": {"post": rest.json()}}, query


fields = st.sampled_from(["post", "author", "comment", "users", "post_aggregate", "nope", "__typename", "__schema"])
tokens = st.sampled_from(["{", "}", "(", ")", ":", "id", "title", "where", "limit", "1", '"x"', "$v", "...", "on",
                          "query", "mutation", "subscription", "fragment", "_eq", "[", "]", "@skip", "!", "=", ","])
documents = st.one_of(
    st.lists(tokens, max_size=25).map(" ".join),
    st.builds(lambda f, g, n: f"{{ {f}(limit: {n}) {{ {g} }} }}", fields, st.sampled_from(["id", "title", "x", "nodes {"
                                                                                            " id }"]),
              st.integers(min_value=-5, max_value=10**12)),
)


@SETTINGS
@given(document=documents, variables=st.dictionaries(st.sampled_from(["v", "w"]), st.integers() | st.text(max_size=3)))
def test_random_documents_never_get_a_server_error(base, key, document, variables):
    response = httpx.post(f"{base}/api/tenants/props/graphql/v1", json={"query": document, "variables": variables},
                          headers={"apikey": key})
    assert response.status_code < 500, response.text
    body = response.json()
    assert "data" in body or "errors" in body or "code" in body
