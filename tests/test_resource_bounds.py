"""No tenant-supplied input may freeze the gateway (DESIGN.md, wall 5), and bad schema input is a schema error.

Patterns run in RE2 (linear time) and are compiled when the schema is checked; the email check is linear and
bounded; tenant YAML has no anchors or aliases, a size and a depth limit; schema checks run off the event
loop with a time limit; and the database itself enforces a field's bounds (CHECK constraints), so that even a
write that skips the body validator (`_inc`) cannot store a value past them.
"""

from __future__ import annotations

import textwrap
import threading
from collections.abc import Iterator
from typing import Any

import asyncpg
import httpx
import pytest

from engine.database import Database
from engine.errors import SchemaCheckTimeout, SchemaInvalid, database_error
from engine.schema import load_schema, load_schema_async, loader
from engine.schema.loader import MAX_SCHEMA_BYTES
from functions.keys import create_api_key
from functions.tenants import create_tenant
from functions.users import create_platform_admin
from tests.conftest import driver_url
from tests.server import running_gateway

GAME = """
name: game
entities:
  score:
    fields:
      points: {type: integer, minimum: 0, maximum: 10}
      ratio:  {type: decimal, precision: 6, scale: 2, minimum: -1.5}
      note:   {type: text, max_length: 5, min_length: 2}
      code:   {type: string, pattern: "^(a+)+$"}
      blob:   {type: json, schema: {type: object, properties: {tag: {type: string, pattern: "^(b+)+$"}}}}
    permissions:
      read: {anon: all}
      create: {anon: all}
"""
ALIAS_BOMB = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
"""
ADMIN_EMAIL, PASSWORD = "bounds-admin@example.com", "correct horse battery staple"


def problems_of(text: str) -> list[tuple[int | None, str, str]]:
    with pytest.raises(SchemaInvalid) as caught:
        load_schema(textwrap.dedent(text))
    return [(p.line, p.path, p.message) for p in caught.value.details]


@pytest.fixture(scope="module")
async def keys(db: Database) -> dict[str, str]:
    await create_tenant(db, "game", source=GAME)
    await create_platform_admin(db, ADMIN_EMAIL, PASSWORD)
    return {"service": (await create_api_key(db, "game", "service", "service")).key}


@pytest.fixture(scope="module")
def base(keys: dict[str, str], database_url: str) -> Iterator[str]:
    with running_gateway(database_url) as url:
        yield url


def rest(base: str, path: str) -> str:
    return f"{base}/api/tenants/game/rest/v1/{path}"


def graphql(base: str, key: str, query: str) -> dict[str, Any]:
    answer = httpx.post(f"{base}/api/tenants/game/graphql/v1", json={"query": query}, headers={"apikey": key}, timeout=60)
    assert answer.status_code == 200, answer.text
    return answer.json()


def admin_session(base: str) -> dict[str, str]:
    session = httpx.post(f"{base}/api/platform/auth/v1/token", params={"grant_type": "password"},
                         json={"email": ADMIN_EMAIL, "password": PASSWORD})
    assert session.status_code == 200, session.text
    return {"Authorization": f"Bearer {session.json()['access_token']}"}


# -- patterns run in RE2 -------------------------------------------------------------------------


def test_a_nested_quantifier_pattern_is_accepted_and_a_long_mismatch_answers_422(base):
    """`^(a+)+$` backtracks exponentially in Python's re (10 s per POST at 30 characters); RE2 is linear."""
    answer = httpx.post(rest(base, "score"), json={"code": "a" * 5000 + "!"}, timeout=60)
    assert answer.status_code == 422, answer.text
    assert [d["field"] for d in answer.json()["details"]] == ["code"]
    assert httpx.post(rest(base, "score"), json={"code": "aaaa"}, timeout=60).status_code == 201


def test_a_pattern_inside_a_json_fields_schema_runs_in_linear_time(base):
    answer = httpx.post(rest(base, "score"), json={"blob": {"tag": "b" * 5000 + "!"}}, timeout=60)
    assert answer.status_code == 422, answer.text
    assert [d["field"] for d in answer.json()["details"]] == ["blob.tag"]


def test_a_pattern_re2_cannot_compile_is_a_schema_error_with_its_line():
    found = problems_of("""
        name: x
        entities:
          e:
            fields:
              f: {type: string, pattern: "^(a)\\\\1$"}
    """)
    assert [(line, path) for line, path, _ in found] == [(6, "entities.e.fields.f.pattern")]
    assert "backreference" in found[0][2] or "invalid" in found[0][2]


def test_a_backreference_in_a_json_fields_schema_is_a_schema_error():
    found = problems_of("""
        name: x
        entities:
          e:
            fields:
              f: {type: json, schema: {type: object, patternProperties: {"^(x)\\\\1$": {type: string}}}}
    """)
    assert [(line, path) for line, path, _ in found] == [(6, "entities.e.fields.f.schema")]


# -- email ---------------------------------------------------------------------------------------


def test_sign_in_with_an_email_longer_than_320_characters_is_refused_before_any_work(base):
    """The shape that made the old regex quadratic (7.6 s for 40 KB) is refused by its length, in linear time."""
    email = "a@" + "a." * 20_000 + "\tb"
    answer = httpx.post(f"{base}/api/tenants/game/auth/v1/token", params={"grant_type": "password"},
                        json={"email": email, "password": PASSWORD}, timeout=60)
    assert answer.status_code == 422, answer.text
    assert answer.json()["code"] == "validation_failed"
    assert answer.json()["details"] == [{"field": "email", "message": "is longer than 320 characters"}]


def test_sign_up_refuses_an_email_without_a_dot_in_its_domain(base):
    answer = httpx.post(f"{base}/api/tenants/game/auth/v1/signup", json={"email": "ann@localhost", "password": PASSWORD})
    assert answer.status_code == 422, answer.text
    assert answer.json()["details"] == [{"field": "email", "message": "is not an email address"}]


# -- YAML ----------------------------------------------------------------------------------------


def test_a_yaml_alias_bomb_is_refused_with_a_schema_error():
    assert len(ALIAS_BOMB) < 400
    with pytest.raises(SchemaInvalid) as caught:
        load_schema(ALIAS_BOMB)
    assert caught.value.code == "schema_invalid"
    assert [(p.line, p.message) for p in caught.value.details] == [
        (1, "YAML anchors and aliases (&name, *name) are not allowed in a schema")]


def test_a_self_referencing_yaml_alias_is_a_schema_error_not_a_crash():
    with pytest.raises(SchemaInvalid) as caught:
        load_schema("name: x\na: &a [*a]\n")
    assert [(p.line, p.message) for p in caught.value.details] == [
        (2, "YAML anchors and aliases (&name, *name) are not allowed in a schema")]


def test_a_schema_larger_than_the_limit_is_refused():
    text = "name: x\nentities: {}\n" + "#" * MAX_SCHEMA_BYTES + "\n"
    with pytest.raises(SchemaInvalid) as caught:
        load_schema(text)
    assert [p.message for p in caught.value.details] == [
        f"the schema is {len(text.encode())} bytes; at most {MAX_SCHEMA_BYTES} are accepted"]


def test_yaml_nested_deeper_than_the_limit_is_refused():
    with pytest.raises(SchemaInvalid) as caught:
        load_schema("name: x\nentities: " + "[" * 50_000 + "]" * 50_000 + "\n")
    assert [p.line for p in caught.value.details] == [2]
    # ours ("nested deeper than 64 levels"), or PyYAML's own guard from 6.0.4 ("exceeded maximum nesting depth")
    assert "nested deeper than" in caught.value.details[0].message or "nesting depth" in caught.value.details[0].message


def test_a_tenant_created_with_an_alias_bomb_as_initial_schema_is_refused_with_422(base):
    answer = httpx.post(f"{base}/api/platform/rest/v1/tenants", json={"slug": "bomb", "name": "Bomb",
                                                                     "initial_schema": ALIAS_BOMB},
                        headers=admin_session(base), timeout=60)
    assert answer.status_code == 422, answer.text
    assert answer.json()["code"] == "schema_invalid"
    assert "anchors and aliases" in answer.json()["details"][0]["message"]


def test_plan_schema_refuses_an_alias_bomb_with_422(base):
    answer = httpx.post(f"{base}/api/platform/functions/v1/plan_schema", json={"tenant": "game", "source": ALIAS_BOMB},
                        headers=admin_session(base), timeout=60)
    assert answer.status_code == 422, answer.text
    assert answer.json()["code"] == "schema_invalid"


# -- off the event loop, with a time limit --------------------------------------------------------


async def test_a_schema_check_past_its_time_limit_is_a_503_with_a_code():
    """Checks run on a few worker threads: while slow checks hold them all, the next request waits at most its
    limit (queueing included) and is refused, and the event loop was never blocked."""
    release = threading.Event()
    busy = [loader._checkers.submit(release.wait) for _ in range(loader.SCHEMA_CHECKERS)]
    try:
        with pytest.raises(SchemaCheckTimeout) as caught:
            await load_schema_async(GAME, "game", timeout=0.05)
    finally:
        release.set()
    assert (caught.value.status, caught.value.code) == (503, "schema_check_timeout")
    assert all(f.result() for f in busy)
    assert (await load_schema_async(GAME, "game")).entity("score") is not None


# -- the database enforces bounds ------------------------------------------------------------------


def test_inc_past_a_fields_maximum_is_refused_and_nothing_is_stored(base, keys):
    made = httpx.post(rest(base, "score"), json={"points": 3}, headers={"Prefer": "return=representation"})
    assert made.status_code == 201, made.text
    row = made.json()[0]["id"]
    result = graphql(base, keys["service"], f'mutation {{ update_score(where: {{id: {{_eq: "{row}"}}}}, '
                                            '_inc: {points: 1000}) { affected_rows } }')
    assert result["errors"][0]["extensions"]["code"] == "constraint-violation"
    assert "points" in result["errors"][0]["message"]
    assert httpx.get(rest(base, "score"), params={"id": f"eq.{row}", "select": "points"}).json() == [{"points": 3}]


async def test_sql_run_as_the_tenants_role_cannot_store_values_past_a_fields_bounds(keys, db, database_url):
    conn = await asyncpg.connect(driver_url(database_url))
    try:
        await conn.execute(f'SET ROLE "{db.role("game")}"')
        for column, value in (("points", "11"), ("points", "-1"), ("ratio", "-2"), ("note", "'toolong'"),
                              ("note", "'x'")):
            with pytest.raises(asyncpg.CheckViolationError):
                await conn.execute(f"INSERT INTO t_game.score ({column}) VALUES ({value})")
        await conn.execute("INSERT INTO t_game.score (points, ratio, note) VALUES (10, -1.5, 'ok')")
    finally:
        await conn.close()


def test_a_check_violation_answers_422_naming_the_field():
    error = database_error("23514", 'new row for relation "score" violates check constraint "points_bounds"')
    assert (error.status, error.code) == (422, "23514")
    assert error.as_dict()["details"] == [{"field": "points", "message": "is outside the field's bounds"}]


def test_a_refused_write_never_shows_the_failing_row(base, keys):
    """PostgreSQL's detail lists every column of the row, those the caller may not read included."""
    made = httpx.post(rest(base, "score"), json={"points": 3, "note": "shh"}, headers={"Prefer": "return=representation"})
    row = made.json()[0]["id"]
    result = graphql(base, keys["service"], f'mutation {{ update_score(where: {{id: {{_eq: "{row}"}}}}, '
                                            '_inc: {points: 1000}) { affected_rows } }')
    message = result["errors"][0]["message"]
    assert "points" in message and "shh" not in message and "Failing row" not in message
    error = database_error("23502", 'null value in column "a" violates not-null constraint',
                           "Failing row contains (1, hidden).")
    assert error.as_dict()["details"] is None
