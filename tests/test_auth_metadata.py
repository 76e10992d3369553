"""Supabase Auth's `user_metadata` takes any JSON object, as GoTrue does (issue 13, item 14): the keys that
are the schema's own fields of `users` stay typed and validated columns, every other key is kept as it is
beside them; an update merges keys (null removes one); the built-in columns are never set this way."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from engine.database import Database
from functions.keys import create_api_key
from functions.tenants import create_tenant
from tests.server import running_gateway

SCHEMA = """
name: meta
entities:
  users:
    fields:
      display_name: {type: string, max_length: 40}
"""
PASSWORD = "a long enough passphrase"


@pytest.fixture(scope="module")
async def key(db: Database) -> str:
    await create_tenant(db, "meta", source=SCHEMA)
    return (await create_api_key(db, "meta", "anon", "anon")).key


@pytest.fixture(scope="module")
def auth(key: str, database_url: str) -> Iterator[str]:
    with running_gateway(database_url) as url:
        yield f"{url}/api/tenants/meta/auth/v1"


def signup(auth: str, key: str, email: str, data: dict) -> httpx.Response:
    return httpx.post(f"{auth}/signup", headers={"apikey": key}, json={"email": email, "password": PASSWORD,
                                                                       "data": data})


def test_any_json_object_is_kept_beside_the_declared_fields(auth, key):
    data = {"display_name": "Ann", "theme": {"dark": True, "accent": [1, 2]}, "plan": "pro", "n": 3}
    made = signup(auth, key, "ann@example.com", data)
    assert made.status_code == 200, made.text
    assert made.json()["user"]["user_metadata"] == data
    bearer = {"apikey": key, "Authorization": f"Bearer {made.json()['access_token']}"}
    changed = httpx.put(f"{auth}/user", headers=bearer, json={"data": {"plan": None, "lang": "fr", "display_name": "A"}})
    assert changed.status_code == 200, changed.text
    expected = {"display_name": "A", "theme": {"dark": True, "accent": [1, 2]}, "n": 3, "lang": "fr"}
    assert changed.json()["user_metadata"] == expected
    assert httpx.get(f"{auth}/user", headers=bearer).json()["user_metadata"] == expected


def test_declared_fields_stay_typed_and_built_in_columns_are_refused(auth, key):
    too_long = signup(auth, key, "long@example.com", {"display_name": "x" * 41, "free": 1})
    assert too_long.status_code == 422 and too_long.json()["details"][0]["field"] == "data.display_name"
    for reserved in ("roles", "email", "verified", "user_metadata"):
        refused = signup(auth, key, f"{reserved}@example.com", {reserved: ["admin"]})
        assert refused.status_code == 422 and refused.json()["details"][0]["field"] == f"data.{reserved}"
    not_object = signup(auth, key, "list@example.com", [1, 2])  # type: ignore[arg-type]
    assert not_object.status_code == 422
    huge = signup(auth, key, "huge@example.com", {"blob": "x" * 20_000})
    assert huge.status_code == 422
