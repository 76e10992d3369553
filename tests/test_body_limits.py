"""A body larger than the tenant's plan allows (`limits.max_body_bytes`, default 10 MiB) is refused with 413
`body_too_large` before it is read whole or parsed, on every surface that reads a JSON body (REST, GraphQL,
functions, auth): at once by its `Content-Length`, else as soon as a chunked body passes the limit. So is a
body of more items (`max_body_items`) or JSON values (`MAX_BODY_VALUES`) than parsing may cost, as soon as
the part of it that passes the bound arrives."""

from __future__ import annotations

import random
import socket
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from engine import catalog
from engine.database import Database
from engine.errors import BackSaasError
from engine.limits import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_BODY_ITEMS
from functions.keys import create_api_key
from functions.tenants import create_tenant
from gateway.bodies import MAX_BODY_DEPTH, MAX_BODY_VALUES, BodyShape
from tests.server import running_gateway

SCHEMA = """
name: notes
entities:
  note:
    fields:
      text: {type: text}
    permissions:
      read: {anon: all}
      create: {anon: all}
functions:
  whoami:
    handler: examples.whoami
    roles: [anon]
"""
LIMIT = 2000  # the small plan's max_body_bytes


@pytest.fixture(scope="module")
async def keys(db: Database) -> dict[str, str]:
    plans = catalog.platform_tables()["plans"]
    async with db.begin() as conn:
        await conn.execute(plans.insert().values(code="tiny_bodies", name="Tiny bodies",
                                                 limits={"max_body_bytes": LIMIT}))
    await create_tenant(db, "roomy", source=SCHEMA)
    await create_tenant(db, "tiny", source=SCHEMA, plan="tiny_bodies")
    return {slug: (await create_api_key(db, slug, "anon", "anon")).key for slug in ("roomy", "tiny")}


@pytest.fixture(scope="module")
def base(keys: dict[str, str], database_url: str) -> Iterator[str]:
    with running_gateway(database_url) as url:
        yield url


def notes(n: int) -> bytes:
    """A JSON array of n notes of 100 characters: about 113 bytes each."""
    return b"[" + b",".join(b'{"text": "' + b"x" * 100 + b'"}' for _ in range(n)) + b"]"


def chunks(body: bytes, size: int = 500) -> Iterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start:start + size]


def test_a_body_within_the_plans_limit_is_written(base, keys):
    body = notes(15)
    assert len(body) < LIMIT
    answer = httpx.post(f"{base}/api/tenants/tiny/rest/v1/note", content=body,
                        headers={"apikey": keys["tiny"], "Content-Type": "application/json"})
    assert answer.status_code == 201


@pytest.mark.parametrize("surface", ["rest/v1/note", "graphql/v1", "functions/v1/whoami", "auth/v1/signup"])
def test_a_body_over_the_plans_limit_is_413_on_every_surface(base, keys, surface):
    answer = httpx.post(f"{base}/api/tenants/tiny/{surface}", content=notes(40),
                        headers={"apikey": keys["tiny"], "Content-Type": "application/json"})
    assert answer.status_code == 413
    assert answer.json()["code"] == "body_too_large" and answer.json()["details"][0]["path"] == "body"


def test_a_chunked_body_is_refused_once_it_passes_the_limit(base, keys):
    answer = httpx.post(f"{base}/api/tenants/tiny/rest/v1/note", content=chunks(notes(40)),
                        headers={"apikey": keys["tiny"], "Content-Type": "application/json"})
    assert answer.status_code == 413 and answer.json()["code"] == "body_too_large"
    count = httpx.get(f"{base}/api/tenants/tiny/rest/v1/note", headers={"apikey": keys["tiny"], "Prefer": "count=exact"})
    assert count.headers["content-range"].endswith("/15")  # only the first test's notes: nothing half-written


def test_a_declared_length_over_the_limit_is_refused_before_the_body_is_sent(base, keys):
    """The server answers 413 after the headers alone: it never waits for (or reads) the 5 GB declared."""
    address = urlsplit(base)
    with socket.create_connection((address.hostname, address.port), timeout=30) as connection:
        connection.sendall(f"POST /api/tenants/roomy/rest/v1/note HTTP/1.1\r\nHost: {address.netloc}\r\n"
                           f"apikey: {keys['roomy']}\r\nContent-Type: application/json\r\n"
                           f"Content-Length: {5 * 1024 ** 3}\r\n\r\n[".encode())
        response = b""
        while b"\r\n\r\n" not in response:
            response += connection.recv(65536)
    assert response.startswith(b"HTTP/1.1 413")


def test_the_default_limit_is_10_mib_and_other_plans_keep_it(base, keys):
    assert DEFAULT_MAX_BODY_BYTES == 10 * 1024 * 1024
    fits_roomy = httpx.post(f"{base}/api/tenants/roomy/rest/v1/note", content=notes(40),
                            headers={"apikey": keys["roomy"], "Content-Type": "application/json"})
    assert fits_roomy.status_code == 201  # the tiny plan's limit is the tiny plan's alone
    too_big = httpx.post(f"{base}/api/tenants/roomy/rest/v1/note", content=b"[" + b" " * DEFAULT_MAX_BODY_BYTES + b"]",
                         headers={"apikey": keys["roomy"], "Content-Type": "application/json"})
    assert too_big.status_code == 413 and too_big.json()["code"] == "body_too_large"


def first_answer(base: str, path: str, key: str, declared: int, head: bytes) -> bytes:
    """The status line and headers the server sends after `head`, the first bytes of a body declared
    `declared` bytes long, the rest never sent: an answer proves the server refused without the rest."""
    address = urlsplit(base)
    with socket.create_connection((address.hostname, address.port), timeout=30) as connection:
        connection.sendall(f"POST {path} HTTP/1.1\r\nHost: {address.netloc}\r\napikey: {key}\r\n"
                           f"Content-Type: application/json\r\nContent-Length: {declared}\r\n\r\n".encode() + head)
        response = b""
        while b"\r\n\r\n" not in response:
            received = connection.recv(65536)
            if not received:
                break
            response += received
        if b"content-length:" in response.lower():
            length = int(response.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            while len(response.split(b"\r\n\r\n", 1)[1]) < length:
                response += connection.recv(65536)
    return response


def test_a_bulk_body_of_more_items_than_the_plan_allows_is_refused_before_the_rest_arrives(base, keys):
    """A 200,000-object bulk insert (6 MB, under the 10 MiB byte limit) was read whole and parsed before its
    item count was looked at; its first thousand-odd items now suffice to refuse it."""
    head = notes(DEFAULT_MAX_BODY_ITEMS + 50)[:-1] + b","  # the array goes on: 6 MB more were declared
    answer = first_answer(base, "/api/tenants/roomy/rest/v1/note", keys["roomy"], 6_000_000, head)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"code":"too_many_items"' in answer and b'"path":"body"' in answer


def test_a_refused_large_body_closes_the_connection_so_the_rest_is_never_read(base, keys):
    """Kept alive, the connection would make the server receive and parse the 6 MB it refused."""
    address = urlsplit(base)
    head = notes(DEFAULT_MAX_BODY_ITEMS + 50)[:-1] + b","
    with socket.create_connection((address.hostname, address.port), timeout=30) as connection:
        connection.sendall(f"POST /api/tenants/roomy/rest/v1/note HTTP/1.1\r\nHost: {address.netloc}\r\n"
                           f"apikey: {keys['roomy']}\r\nContent-Type: application/json\r\n"
                           f"Content-Length: 6000000\r\n\r\n".encode() + head)
        response = b""
        while received := connection.recv(65536):  # until the server closes its end
            response += received
    assert response.startswith(b"HTTP/1.1 413")
    assert b"\r\nconnection: close\r\n" in response.lower()


def test_a_refused_small_body_keeps_the_connection_alive(base, keys):
    answer = httpx.post(f"{base}/api/tenants/tiny/rest/v1/note", content=notes(40),
                        headers={"apikey": keys["tiny"], "Content-Type": "application/json"})
    assert answer.status_code == 413
    assert answer.headers.get("connection") != "close"


def test_a_body_of_more_json_values_than_parsing_may_cost_is_refused_before_the_rest_arrives(base, keys):
    """One object holding 10 MiB of empty arrays took seconds to parse: whatever the plan, a body holds at
    most MAX_BODY_VALUES values."""
    head = b'{"text": [' + b"[]," * (MAX_BODY_VALUES + 10)
    answer = first_answer(base, "/api/tenants/roomy/rest/v1/note", keys["roomy"], 9_000_000, head)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"code":"body_too_complex"' in answer


def test_commas_and_brackets_inside_strings_are_not_values(base, keys):
    text = '[{"a": 1}, ' * (MAX_BODY_VALUES // 2) + '\\" \\\\'
    answer = httpx.post(f"{base}/api/tenants/roomy/rest/v1/note", json={"text": text},
                        headers={"apikey": keys["roomy"], "Prefer": "return=representation"})
    assert answer.status_code == 201, answer.text[:300]
    assert answer.json()[0]["text"] == text


def test_a_csv_body_of_more_rows_than_the_plan_allows_is_refused(base, keys):
    body = b"text\n" + b"a note\n" * (DEFAULT_MAX_BODY_ITEMS + 5)
    answer = httpx.post(f"{base}/api/tenants/roomy/rest/v1/note", content=body,
                        headers={"apikey": keys["roomy"], "Content-Type": "text/csv"})
    assert answer.status_code == 413 and answer.json()["code"] == "too_many_items"


def test_the_count_is_the_same_wherever_the_body_is_cut_into_chunks():
    """Chunks end anywhere: inside a string, after an escaping backslash, between a backslash and the quote
    it escapes. Every cut gives the count of the body read whole."""
    body = (b'[{"a\\"b,": "x\\\\", "c": ["\\\\\\"", {"d": [1, 2]}]}, "q,\\\\", 3, '
            b'{"e": "\\"[{,:"}]')
    whole = BodyShape(10**6)
    whole.feed(body)
    assert (whole.values, whole.commas) == (16, 3)  # , : [ { outside strings; 3 commas between the 4 items
    rng = random.Random(11)
    for first in range(len(body) + 1):
        cuts = sorted({first, rng.randint(first, len(body)), rng.randint(first, len(body))})
        shape = BodyShape(10**6)
        for start, end in zip([0, *cuts], [*cuts, len(body)], strict=True):
            shape.feed(body[start:end])
        assert (shape.values, shape.commas, shape.in_string) == (whole.values, whole.commas, False), cuts


@pytest.mark.parametrize("surface", ["rest/v1/note", "functions/v1/whoami", "graphql/v1", "auth/v1/signup"])
def test_a_body_nested_deeper_than_can_be_written_again_is_413_on_every_surface(base, keys, surface):
    """orjson reads 1,024 levels and writes 254: a body is written again (SQL parameters, hooks, functions)."""
    deep = b"[" * (MAX_BODY_DEPTH + 1) + b"]" * (MAX_BODY_DEPTH + 1)
    for body in (b'{"text": ' + deep + b"}", b"[" + b'{"text": ' + deep + b"}" + b"]"):
        answer = httpx.post(f"{base}/api/tenants/roomy/{surface}", content=body,
                            headers={"apikey": keys["roomy"], "Content-Type": "application/json"})
        assert answer.status_code == 413 and answer.json()["code"] == "body_too_complex", answer.text[:300]


def test_a_body_nested_as_deep_as_allowed_is_read(base, keys):
    deep = "[" * (MAX_BODY_DEPTH - 2) + "]" * (MAX_BODY_DEPTH - 2)
    answer = httpx.post(f"{base}/api/tenants/roomy/functions/v1/whoami", content=f'{{"a": {deep}}}'.encode(),
                        headers={"apikey": keys["roomy"], "Content-Type": "application/json"})
    assert answer.status_code == 200, answer.text[:300]


def test_the_depth_is_the_same_wherever_the_body_is_cut_into_chunks():
    deep = b'{"a": "[[[", "b": ' + b"[" * (MAX_BODY_DEPTH - 1) + b"]" * (MAX_BODY_DEPTH - 1) + b"}"
    for size in (1, 7, 64, len(deep)):
        shape = BodyShape(10**6)
        for piece in chunks(deep, size):
            shape.feed(piece)
        assert shape.depth == 0
    deeper = deep.replace(b'"b": ', b'"b": [', 1) + b"]"
    for size in (1, 7, 64, len(deeper)):
        shape = BodyShape(10**6)
        with pytest.raises(BackSaasError):
            for piece in chunks(deeper, size):
                shape.feed(piece)
