"""Property-based tests of the REST dialect: random query strings and bodies never get a 5xx, and
schemathesis finds no response that breaks the tenant's own OpenAPI document."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from engine.database import Database
from functions.keys import create_api_key
from functions.tenants import create_tenant
from tests.server import running_gateway

REPO = Path(__file__).resolve().parent.parent
COLUMNS = ["id", "title", "body", "status", "author_id", "tags", "rating", "views", "meta", "published_at",
           "created_at", "nope", "author", "comments", ""]
OPERATORS = ["eq", "neq", "gt", "gte", "lt", "lte", "like", "ilike", "in", "is", "not.eq", "not.in", "zz", ""]
text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
word = st.one_of(st.sampled_from(COLUMNS), text)


@pytest.fixture(scope="module")
async def service_key(db: Database) -> str:
    await create_tenant(db, "blog", source=(REPO / "schemas" / "blog.yaml").read_text())
    return (await create_api_key(db, "blog", "service", "service")).key


@pytest.fixture(scope="module")
def base(service_key: str, database_url: str) -> Iterator[str]:
    with running_gateway(database_url) as url:
        yield url


@pytest.fixture(scope="module")
def http(service_key: str) -> Iterator[httpx.Client]:
    with httpx.Client(headers={"apikey": service_key}) as client:
        yield client


def assert_clean(response: httpx.Response) -> None:
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        body = response.json()
        assert isinstance(body.get("code"), str) and isinstance(body.get("message"), str)


filters = st.builds(lambda c, o, v: (c, f"{o}.{v}" if o else v), word, st.sampled_from(OPERATORS), text)
selects = st.lists(st.one_of(word, st.builds(lambda a, b: f"{a}({b})", word, word),
                             st.builds(lambda a, b: f"{a}:{b}", word, word)), max_size=4).map(",".join)
orders = st.lists(st.builds(lambda c, d: f"{c}{d}", word, st.sampled_from(["", ".asc", ".desc.nullslast", ".x"])),
                  max_size=3).map(",".join)
logic = st.builds(lambda k, items: (k, f"({','.join(items)})"), st.sampled_from(["or", "and", "not.or"]),
                  st.lists(st.builds(lambda c, o, v: f"{c}.{o}.{v}", word, st.sampled_from(OPERATORS), text), max_size=3))
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | text,
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3), max_leaves=8)


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(params=st.lists(st.one_of(filters, logic, st.tuples(st.just("select"), selects),
                                 st.tuples(st.just("order"), orders),
                                 st.tuples(st.sampled_from(["limit", "offset"]), text)), max_size=4))
def test_random_query_strings_never_get_a_server_error(base, http, params):
    assert_clean(http.get(f"{base}/api/tenants/blog/rest/v1/post", params=params))


@settings(max_examples=120, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.one_of(json_values, st.dictionaries(st.sampled_from(COLUMNS), json_values, max_size=5)),
       method=st.sampled_from(["POST", "PATCH"]))
def test_random_bodies_never_get_a_server_error(base, http, body, method):
    url = f"{base}/api/tenants/blog/rest/v1/post" + ("?title=eq.x" if method == "PATCH" else "")
    assert_clean(http.request(method, url, json=body))


@pytest.fixture(scope="module")
def openapi(base: str):
    return schemathesis.openapi.from_url(f"{base}/api/tenants/blog/rest/v1/")


schema = schemathesis.pytest.from_fixture("openapi")


@schema.parametrize()
@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_every_operation_conforms_to_the_openapi_document(case, service_key):
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    case.call_and_validate(headers={"apikey": service_key}, checks=checks)
