"""PostgREST's dialect as PostgREST answers it (issue 13, REST half): single-object writes, the shaping of
write responses, statuses and headers, bodies, operators, select and rpc, each through PostgREST's own Python
client (`postgrest`) where it can say it, else HTTP; and every new way to reach rows is checked against a
user outside the row scope.

Tenant `dialect`: `person` (owned, each user reads only their own), `doc` (owned, read by its owner only,
two refs to `person`), `shelf` (public: the service key's ground for the dialect itself)."""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from postgrest import SyncPostgrestClient

from engine.database import Database
from engine.hooks import FUNCTIONS_DIR_ENV
from functions.keys import create_api_key
from functions.tenants import create_tenant
from tests.server import running_gateway

SCHEMA = """
name: dialect
rest: {aggregates: true}
entities:
  person:
    owner: true
    fields:
      name: {type: string, required: true}
    permissions:
      read:   {authenticated: own}
      create: {authenticated: all}
      update: {authenticated: own}
  doc:
    owner: true
    fields:
      title:    {type: string, required: true}
      body:     {type: text}
      tags:     {type: array, items: string, default: []}
      meta:     {type: json}
      price:    {type: decimal, precision: 10, scale: 2}
      rank:     {type: integer}
      slug:     {type: string, unique: true}
      writer:   {type: ref, to: person, reverse: written}
      reviewer: {type: ref, to: person, reverse: reviewed}
    permissions:
      read:   {authenticated: own}
      create: {authenticated: all}
      update: {authenticated: own}
      delete: {authenticated: own}
  shelf:
    fields:
      label: {type: string, required: true, unique: true}
      rank:  {type: integer}
      tags:  {type: array, items: string, default: []}
      meta:  {type: json}
      price: {type: decimal, precision: 10, scale: 2}
      body:  {type: text}
    permissions:
      read:   {anon: all, authenticated: all}
      create: {anon: all, authenticated: all}
      update: {anon: all, authenticated: all}
      delete: {anon: all, authenticated: all}
  book:
    fields:
      title: {type: string, required: true}
      shelf: {type: ref, to: shelf, reverse: books, on_delete: cascade}
      pages: {type: integer}
      weight: {type: number, minimum: 0}
    permissions:
      read:   {anon: all, authenticated: all}
      create: {anon: all, authenticated: all}
functions:
  numbers:
    handler: dialect_rpc.numbers
    roles: [anon, authenticated]
    read_only: true
    input: {type: object, properties: {count: {type: integer, minimum: 0, maximum: 100}, word: {type: string},
                                       options: {type: object}}}
  my_docs:
    handler: dialect_rpc.my_docs
    roles: [authenticated]
    read_only: true
  stamp:
    handler: dialect_rpc.stamp
    roles: [anon, authenticated]
    input: {type: object, required: [label], properties: {label: {type: string}}}
"""
RPC_MODULE = '''
from engine.hooks import function


@function
async def numbers(ctx, payload):
    payload = payload or {}
    return [{"n": i, "name": f"{payload.get('word', 'item')} {i}", "even": i % 2 == 0, "half": i / 2,
             "meta": {"tags": [f"t{i}", "x"], "size": {"w": i}}} for i in range(payload.get("count", 5))]


@function
async def my_docs(ctx, payload):
    return await ctx.data.select("doc", {"select": "title"})


@function
async def stamp(ctx, payload):
    return (await ctx.data.insert("shelf", {"label": payload["label"]}))[0]["label"]
'''
PASSWORD = "a long enough passphrase"
OBJECT = "application/vnd.pgrst.object+json"


def key(value: str) -> dict[str, str]:
    return {"apikey": value, "Authorization": f"Bearer {value}"}


@pytest.fixture(scope="module")
def functions_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The operator's functions directory with the functions the schema exposes as RPC."""
    folder = tmp_path_factory.mktemp("dialect_functions")
    (folder / "dialect_rpc.py").write_text(RPC_MODULE)
    before = os.environ.get(FUNCTIONS_DIR_ENV)
    os.environ[FUNCTIONS_DIR_ENV] = str(folder)
    yield
    if before is None:
        del os.environ[FUNCTIONS_DIR_ENV]
    else:
        os.environ[FUNCTIONS_DIR_ENV] = before


@pytest.fixture(scope="module")
async def keys(db: Database, functions_dir: None) -> dict[str, str]:
    await create_tenant(db, "dialect", source=SCHEMA)
    await create_tenant(db, "elsewhere", source=SCHEMA)
    made = {role: (await create_api_key(db, "dialect", role, role)).key for role in ("anon", "service")}
    made["elsewhere"] = (await create_api_key(db, "elsewhere", "service", "service")).key
    await create_tenant(db, "plain", source=SCHEMA.replace("rest: {aggregates: true}\n", "").replace(
        "name: dialect", "name: plain"))
    made["plain"] = (await create_api_key(db, "plain", "service", "service")).key
    return made


@pytest.fixture(scope="module")
def base(keys: dict[str, str], database_url: str) -> Iterator[str]:
    with running_gateway(database_url) as url:
        yield f"{url}/api/tenants/dialect"


@pytest.fixture(scope="module")
def http(base: str, keys: dict[str, str]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"{base}/rest/v1", headers=key(keys["service"])) as client:
        yield client


@pytest.fixture(scope="module")
def client(base: str, keys: dict[str, str]) -> SyncPostgrestClient:
    return SyncPostgrestClient(f"{base}/rest/v1", headers=key(keys["service"]))


@pytest.fixture(scope="module")
def people(base: str, keys: dict[str, str]) -> dict[str, dict[str, Any]]:
    found = {}
    for name in ("ann", "bob"):
        response = httpx.post(f"{base}/auth/v1/signup", headers={"apikey": keys["anon"]},
                              json={"email": f"{name}@example.com", "password": PASSWORD})
        assert response.status_code == 200, response.text
        session = response.json()
        headers = {"apikey": keys["anon"], "Authorization": f"Bearer {session['access_token']}"}
        person = httpx.post(f"{base}/rest/v1/person", headers={**headers, "Prefer": "return=representation"},
                            json={"name": name.title()})
        assert person.status_code == 201, person.text
        found[name] = {"id": session["user"]["id"], "headers": headers, "person": person.json()[0]["id"]}
    return found


@pytest.fixture(scope="module")
def shelves(client: SyncPostgrestClient) -> dict[str, str]:
    rows = client.from_("shelf").insert([
        {"label": "alpha", "rank": 1, "tags": ["red", "blue"], "meta": {"a": {"b": 1}, "k": "x"}, "price": "1.50",
         "body": "the quick brown fox jumps over the lazy dog"},
        {"label": "beta", "rank": 2, "tags": ["blue"], "meta": {"a": {"b": 2}, "k": "y"}, "price": "12.00",
         "body": "a fat cat sat on the mat"},
        {"label": "gamma", "rank": 3, "tags": [], "meta": {"k": "z"}, "price": None, "body": "foxes are quick"},
        {"label": "delta", "rank": None, "tags": ["green"], "meta": None, "price": "3.25", "body": None},
    ]).execute().data
    ids = {r["label"]: r["id"] for r in rows}
    client.from_("book").insert([
        {"title": "A1", "shelf_id": ids["alpha"], "pages": 10}, {"title": "A2", "shelf_id": ids["alpha"], "pages": 30},
        {"title": "A3", "shelf_id": ids["alpha"], "pages": 20}, {"title": "B1", "shelf_id": ids["beta"], "pages": 5},
    ]).execute()
    return ids


def labels(rows: list[dict[str, Any]]) -> list[str]:
    return [r["label"] for r in rows]


# -- 1. one object asked for: 406 and nothing changed, whatever return= says --


def test_patch_asking_for_one_object_without_representation_is_406_and_changes_nothing(http, shelves):
    response = http.patch("/shelf?rank=gte.1", headers={"Accept": OBJECT}, json={"body": "overwritten"})
    assert response.status_code == 406 and response.json()["code"] == "PGRST116", response.text
    assert response.json()["details"] == "The result contains 3 rows" and response.json()["hint"] is None
    assert "overwritten" not in http.get("/shelf?select=body").text


def test_delete_asking_for_one_object_without_representation_is_406_and_deletes_nothing(http, shelves):
    response = http.delete("/shelf?rank=gte.1", headers={"Accept": OBJECT})
    assert response.status_code == 406 and response.json()["code"] == "PGRST116", response.text
    assert len(http.get("/shelf").json()) == 4


def test_multi_object_post_asking_for_one_object_is_406_and_inserts_nothing(http, shelves):
    response = http.post("/shelf", headers={"Accept": OBJECT, "Prefer": "return=minimal"},
                         json=[{"label": "one-of-two"}, {"label": "two-of-two"}])
    assert response.status_code == 406 and response.json()["code"] == "PGRST116", response.text
    assert http.get("/shelf?label=like.*of-two").json() == []


def test_one_object_write_without_representation_goes_through(http, shelves):
    response = http.patch(f"/shelf?id=eq.{shelves['delta']}", headers={"Accept": OBJECT}, json={"body": "kept"})
    assert response.status_code == 204, response.text
    assert http.get(f"/shelf?id=eq.{shelves['delta']}&select=body").json() == [{"body": "kept"}]
    http.patch(f"/shelf?id=eq.{shelves['delta']}", json={"body": None})


# -- 2. write responses take the query's shaping --


def test_post_answer_honours_top_level_order_and_embed_filters_order_and_limit(http, shelves):
    response = http.post("/shelf?select=label,books(title)&order=label.desc&books.order=title.desc&books.limit=1",
                         headers={"Prefer": "return=representation"}, json=[{"label": "p-a"}, {"label": "p-c"},
                                                                            {"label": "p-b"}])
    assert response.status_code == 201, response.text
    assert labels(response.json()) == ["p-c", "p-b", "p-a"]
    book = http.post("/book", json=[{"title": t, "shelf_id": s} for t, s in (("x1", shelves["gamma"]), ("x2", shelves["gamma"]))])
    assert book.status_code == 201
    patched = http.patch(f"/shelf?id=eq.{shelves['gamma']}&select=label,books(title)&books.order=title.desc"
                         "&books.limit=1", headers={"Prefer": "return=representation"}, json={"rank": 3})
    assert patched.json() == [{"label": "gamma", "books": [{"title": "x2"}]}]
    embedded = http.patch(f"/shelf?id=eq.{shelves['gamma']}&select=label,books(title)&books.or=(title.eq.x1)",
                          headers={"Prefer": "return=representation"}, json={"rank": 3})
    assert embedded.json() == [{"label": "gamma", "books": [{"title": "x1"}]}]
    http.delete("/shelf?label=like.p-*")


def test_patch_and_delete_answers_honour_top_level_order(http, shelves):
    http.post("/shelf", json=[{"label": f"o-{c}", "rank": 7} for c in "acb"])
    patched = http.patch("/shelf?rank=eq.7&select=label&order=label.desc", headers={"Prefer": "return=representation"},
                         json={"rank": 8})
    assert labels(patched.json()) == ["o-c", "o-b", "o-a"]
    deleted = http.delete("/shelf?rank=eq.8&select=label&order=label.asc", headers={"Prefer": "return=representation"})
    assert labels(deleted.json()) == ["o-a", "o-b", "o-c"]


def test_write_answers_shaped_by_embeds_stay_within_the_read_scope(base, people):
    ann, bob = people["ann"], people["bob"]
    response = httpx.post(f"{base}/rest/v1/doc?select=title,writer(name),reviewer(name)&order=title.desc",
                          headers={**bob["headers"], "Prefer": "return=representation"},
                          json=[{"title": "b1", "writer_id": bob["person"]}, {"title": "b2", "writer_id": bob["person"]}])
    assert response.status_code == 201, response.text
    assert response.json() == [{"title": "b2", "writer": {"name": "Bob"}, "reviewer": None},
                               {"title": "b1", "writer": {"name": "Bob"}, "reviewer": None}]
    unseen = httpx.post(f"{base}/rest/v1/doc?select=title,writer(name)", headers=bob["headers"],
                        json=[{"title": "b3", "writer_id": ann["person"]}])  # a row bob may not read: not his to name
    assert unseen.status_code == 409 and unseen.json()["code"] == "23503", unseen.text


# -- 8. statuses and headers --


def test_a_counted_partial_read_is_206_with_its_range_and_total(http, shelves):
    response = http.get("/shelf?select=label&order=label&limit=2", headers={"Prefer": "count=exact"})
    assert response.status_code == 206, response.text
    total = len(http.get("/shelf").json())
    assert response.headers["content-range"] == f"0-1/{total}"
    assert response.headers["preference-applied"] == "count=exact"
    whole = http.get("/shelf?select=label", headers={"Prefer": "count=exact"})
    assert whole.status_code == 200 and whole.headers["content-range"] == f"0-{total - 1}/{total}"
    uncounted = http.get("/shelf?select=label&limit=2")
    assert uncounted.status_code == 200 and uncounted.headers["content-range"] == "0-1/*"


def test_a_range_past_the_end_is_416_with_the_total(http, shelves):
    total = len(http.get("/shelf").json())
    response = http.get(f"/shelf?offset={total + 5}", headers={"Prefer": "count=exact"})
    assert response.status_code == 416, response.text
    assert response.headers["content-range"] == f"*/{total}" and response.json()["code"] == "PGRST103"
    assert response.json()["details"] == f"An offset of {total + 5} was requested, but there are only {total} rows."


def test_write_ranges_are_star_unless_counted(http, shelves):
    created = http.post("/shelf", json={"label": "range-1"})
    assert created.status_code == 201 and created.headers["content-range"] == "*/*"
    assert "location" not in created.headers and "preference-applied" not in created.headers
    counted = http.post("/shelf", json=[{"label": "range-2"}, {"label": "range-3"}],
                        headers={"Prefer": "return=minimal, count=exact"})
    assert counted.headers["content-range"] == "*/2"
    assert counted.headers["preference-applied"] == "return=minimal, count=exact"
    patched = http.patch("/shelf?label=like.range-*", json={"rank": 50}, headers={"Prefer": "return=representation"})
    assert patched.status_code == 200 and patched.headers["content-range"] == "0-2/*"
    assert patched.headers["preference-applied"] == "return=representation"
    deleted = http.delete("/shelf?label=like.range-*", headers={"Prefer": "count=exact"})
    assert deleted.status_code == 204 and deleted.headers["content-range"] == "*/3"


def test_location_only_with_headers_only(client, http, shelves):
    response = http.post("/shelf", json={"label": "located"}, headers={"Prefer": "return=headers-only"})
    assert response.status_code == 201 and response.content == b""
    assert response.headers["preference-applied"] == "return=headers-only"
    located = http.get(response.headers["location"]).json()
    assert [r["label"] for r in located] == ["located"]
    shown = http.post("/shelf", json={"label": "shown"}, headers={"Prefer": "return=representation"})
    assert "location" not in shown.headers
    http.delete("/shelf?label=in.(located,shown)")


def test_an_upsert_that_only_updated_is_200_and_one_that_inserted_is_201(client, http, shelves):
    merge = {"Prefer": "resolution=merge-duplicates, return=representation"}
    updated = http.post("/shelf?on_conflict=label", json={"label": "alpha", "rank": 1}, headers=merge)
    assert updated.status_code == 200, updated.text
    assert updated.headers["preference-applied"] == "resolution=merge-duplicates, return=representation"
    mixed = http.post("/shelf?on_conflict=label", json=[{"label": "alpha", "rank": 1}, {"label": "upserted", "rank": None}],
                      headers=merge)
    assert mixed.status_code == 201, mixed.text
    minimal = http.post("/shelf?on_conflict=label", json={"label": "alpha", "rank": 1},
                        headers={"Prefer": "resolution=merge-duplicates"})
    assert minimal.status_code == 200 and minimal.content == b""
    # through the client: upsert() sends the same preference
    assert client.from_("shelf").upsert({"label": "upserted", "rank": 9}, on_conflict="label").execute().data[0][
        "rank"] == 9
    http.delete("/shelf?label=eq.upserted")



def test_a_merging_upsert_whose_body_holds_only_its_conflict_columns_returns_the_rows_it_met(client, http, shelves):
    """PostgREST sets the conflict's own columns then (ON CONFLICT ... DO UPDATE SET label = EXCLUDED.label): the
    existing row is answered, not dropped from the representation as a DO NOTHING would."""
    merge = {"Prefer": "resolution=merge-duplicates, return=representation"}
    met = http.post("/shelf?on_conflict=label&select=label", json={"label": "alpha"}, headers=merge)
    assert (met.status_code, met.json()) == (200, [{"label": "alpha"}]), met.text
    mixed = client.from_("shelf").upsert([{"label": "alpha"}, {"label": "only-label"}], on_conflict="label").execute()
    assert sorted(labels(mixed.data)) == ["alpha", "only-label"]
    http.delete("/shelf?label=eq.only-label")


def test_an_insert_may_name_its_rows_id(http, shelves):
    chosen = str(uuid.uuid4())
    created = http.post("/shelf", json={"id": chosen, "label": "chosen-id"}, headers={"Prefer": "return=representation"})
    assert created.status_code == 201 and created.json()[0]["id"] == chosen, created.text
    bad = http.post("/shelf", json={"id": "not-a-uuid", "label": "bad-id"})
    assert bad.status_code == 422 and bad.json()["details"][0]["field"] == "id", bad.text
    moved = http.patch(f"/shelf?id=eq.{chosen}", json={"id": str(uuid.uuid4())})
    assert moved.status_code == 422 and "read-only" in moved.text
    http.delete(f"/shelf?id=eq.{chosen}")



def test_an_upsert_on_another_column_never_changes_the_rows_id(http, shelves):
    row = http.post("/shelf", json={"label": "keeps-id"}, headers={"Prefer": "return=representation"}).json()[0]
    merged = http.post("/shelf?on_conflict=label", json={"id": str(uuid.uuid4()), "label": "keeps-id", "rank": 3},
                       headers={"Prefer": "resolution=merge-duplicates, return=representation"})
    assert merged.status_code == 200 and merged.json()[0]["id"] == row["id"] and merged.json()[0]["rank"] == 3, merged.text
    http.delete(f"/shelf?id=eq.{row['id']}")

def test_an_upsert_without_on_conflict_merges_on_the_id(client, shelves):
    """supabase-js's and supabase-py's upsert() name no conflict target: PostgREST's is the primary key."""
    chosen = str(uuid.uuid4())
    first = client.from_("shelf").upsert({"id": chosen, "label": "by-id", "rank": 1}).execute()
    assert first.data[0]["id"] == chosen
    again = client.from_("shelf").upsert({"id": chosen, "label": "by-id", "rank": 2}).execute()
    assert again.data == [{**first.data[0], "rank": 2, "updated_at": again.data[0]["updated_at"]}]
    client.from_("shelf").delete().eq("id", chosen).execute()



def test_put_creates_or_replaces_the_row_its_url_names(http, shelves, base, people, keys):
    chosen = str(uuid.uuid4())
    created = http.put(f"/shelf?id=eq.{chosen}", json={"id": chosen, "label": "put-made", "rank": 5})
    assert created.status_code == 204, created.text
    replaced = http.put(f"/shelf?id=eq.{chosen}", json={"id": chosen, "label": "put-made", "rank": 6},
                        headers={"Prefer": "return=representation"})
    assert replaced.status_code == 200 and replaced.json()[0]["rank"] == 6, replaced.text
    mismatch = http.put(f"/shelf?id=eq.{chosen}", json={"id": str(uuid.uuid4()), "label": "x"})
    assert mismatch.status_code == 400 and mismatch.json()["code"] == "PGRST115", mismatch.text
    by_label = http.put("/shelf?label=eq.put-made", json={"id": chosen, "label": "put-made"})
    assert by_label.status_code == 405 and by_label.json()["code"] == "PGRST105", by_label.text
    http.delete(f"/shelf?id=eq.{chosen}")
    ann, bob = people["ann"], people["bob"]
    doc = httpx.post(f"{base}/rest/v1/doc", headers={**ann["headers"], "Prefer": "return=representation"},
                     json={"title": "ann's put"}).json()[0]
    taken = httpx.put(f"{base}/rest/v1/doc?id=eq.{doc['id']}", headers=bob["headers"], json={"id": doc["id"], "title": "bob's"})
    assert taken.status_code == 403, taken.text
    for stranger in (key(keys["anon"]), key(keys["elsewhere"])):  # anon may not create docs; another tenant's key
        refused = httpx.put(f"{base}/rest/v1/doc?id=eq.{doc['id']}", headers=stranger, json={"id": doc["id"], "title": "x"})
        assert refused.status_code in (401, 403), refused.text
    assert httpx.get(f"{base}/rest/v1/doc?id=eq.{doc['id']}", headers=ann["headers"]).json()[0]["title"] == "ann's put"
    httpx.delete(f"{base}/rest/v1/doc?id=eq.{doc['id']}", headers=ann["headers"])

def test_an_upsert_on_the_id_of_a_row_outside_the_callers_update_scope_changes_nothing(base, people, keys):
    ann, bob = people["ann"], people["bob"]
    doc = httpx.post(f"{base}/rest/v1/doc", headers={**ann["headers"], "Prefer": "return=representation"},
                     json={"title": "ann's own"}).json()[0]
    merge = {**bob["headers"], "Prefer": "resolution=merge-duplicates, return=representation"}
    taken = httpx.post(f"{base}/rest/v1/doc", headers=merge, json={"id": doc["id"], "title": "bob was here"})
    assert taken.status_code == 403 and "bob was here" not in taken.text, taken.text
    ignored = httpx.post(f"{base}/rest/v1/doc", json={"id": doc["id"], "title": "bob again"},
                         headers={**bob["headers"], "Prefer": "resolution=ignore-duplicates, return=representation"})
    assert ignored.status_code == 201 and ignored.json() == [], ignored.text
    anonymous = httpx.post(f"{base}/rest/v1/doc", json={"id": doc["id"], "title": "anon"},
                           headers={**key(keys["anon"]), "Prefer": "resolution=merge-duplicates"})
    assert anonymous.status_code in (401, 403), anonymous.text
    elsewhere = httpx.post(f"{base.removesuffix('/dialect')}/elsewhere/rest/v1/doc", json={"id": doc["id"], "title": "x"},
                           headers={**key(keys["elsewhere"]), "Prefer": "resolution=merge-duplicates"})
    assert elsewhere.status_code == 201, elsewhere.text  # another tenant's table: a row of its own, nothing of ann's
    mine = httpx.get(f"{base}/rest/v1/doc?id=eq.{doc['id']}", headers=ann["headers"]).json()
    assert [d["title"] for d in mine] == ["ann's own"] and mine[0]["owner_id"] == ann["id"]
    httpx.delete(f"{base}/rest/v1/doc?id=eq.{doc['id']}", headers=ann["headers"])

def test_options_without_an_origin_answers_the_allowed_methods(http, shelves):
    """PostgREST answers an OPTIONS that is no CORS preflight with `Allow` (a preflight gets CORS headers)."""
    table = http.options("/shelf")
    assert (table.status_code, table.headers["allow"], table.content) == (200, "OPTIONS,GET,HEAD,POST,PUT,PATCH,DELETE", b"")
    assert http.options("/rpc/numbers").headers["allow"] == "OPTIONS,GET,HEAD,POST"  # read_only
    assert http.options("/rpc/stamp").headers["allow"] == "OPTIONS,POST"
    assert http.options("/nosuch").status_code == 404 and http.options("/rpc/nosuch").json()["code"] == "PGRST202"


def test_a_refused_credential_carries_a_bearer_challenge(base, keys):
    """RFC 7235: a 401 names its scheme; a refused bearer token says why (RFC 6750), as PostgREST does."""
    token = httpx.get(f"{base}/rest/v1/shelf", headers={"apikey": keys["anon"], "Authorization": "Bearer abc.def.ghi"})
    assert token.status_code == 401 and token.headers["www-authenticate"].startswith(
        'Bearer error="invalid_token", error_description="'), token.headers
    wrong_key = httpx.get(f"{base}/rest/v1/shelf", headers={"apikey": "not-a-key"})
    assert (wrong_key.status_code, wrong_key.headers["www-authenticate"]) == (401, "Bearer")


def test_an_unsupported_accept_is_406(http, shelves):
    response = http.get("/shelf", headers={"Accept": "application/xml"})
    assert response.status_code == 406 and response.json()["code"] == "PGRST107", response.text
    weighted = http.get("/shelf?select=label&limit=1", headers={"Accept": "application/xml, application/json;q=0.5"})
    assert weighted.status_code == 200 and weighted.headers["content-type"].startswith("application/json")
    written = http.post("/shelf", json={"label": "never"}, headers={"Accept": "text/xml"})
    assert written.status_code == 406
    assert http.get("/shelf?label=eq.never").json() == []



def test_stripped_nulls_leave_null_fields_out_at_every_depth(client, http, shelves):
    rows = client.from_("shelf").select("label,rank,meta,books(title,pages)").eq("label", "delta").strip_nulls().execute()
    assert rows.data == [{"label": "delta", "books": []}]
    one = http.get("/book?select=title,pages,shelf(label,rank)&title=eq.A1",
                   headers={"Accept": "application/vnd.pgrst.object+json;nulls=stripped"})
    assert one.status_code == 200 and one.headers["content-type"].startswith(OBJECT), one.text
    assert "nulls=stripped" in one.headers["content-type"] and one.json() == {
        "title": "A1", "pages": 10, "shelf": {"label": "alpha", "rank": 1}}
    written = http.post("/shelf", json={"label": "stripped-write"}, headers={
        "Accept": "application/vnd.pgrst.array+json;nulls=stripped", "Prefer": "return=representation"})
    assert written.status_code == 201 and "rank" not in written.json()[0] and written.json()[0]["label"] == "stripped-write"
    http.delete("/shelf?label=eq.stripped-write")

# -- 9. bodies: CSV, HTML forms, columns= --


def test_accept_text_csv_reads_csv_built_by_the_database(http, shelves):
    response = http.get("/shelf?select=label,rank,tags&label=in.(alpha,delta)&order=label",
                        headers={"Accept": "text/csv"})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv"), response.text
    assert response.text == 'label,rank,tags\nalpha,1,"{red,blue}"\ndelta,,{green}'
    empty = http.get("/shelf?select=label&label=eq.nothing", headers={"Accept": "text/csv"})
    assert empty.text == "label"


def test_a_csv_body_is_a_bulk_insert_with_typed_fields(http, shelves):
    body = 'label,rank,tags,body\ncsv-1,7,"{x,y}",NULL\n"csv, 2",8,{},""\n'
    response = http.post("/shelf", content=body, headers={"Content-Type": "text/csv",
                                                         "Prefer": "return=representation"})
    assert response.status_code == 201, response.text
    rows = sorted(response.json(), key=lambda r: r["label"])
    assert [(r["label"], r["rank"], r["tags"], r["body"]) for r in rows] == [
        ("csv, 2", 8, [], ""), ("csv-1", 7, ["x", "y"], None)]
    bad = http.post("/shelf", content="label,rank\ncsv-3,seven\n", headers={"Content-Type": "text/csv"})
    assert bad.status_code == 422 and bad.json()["details"][0]["field"] == "[0].rank", bad.text
    ragged = http.post("/shelf", content="label,rank\ncsv-4\n", headers={"Content-Type": "text/csv"})
    assert ragged.status_code == 400 and ragged.json()["code"] == "PGRST102"
    http.delete("/shelf?label=like.csv*")



def test_strings_sent_for_numbers_booleans_and_arrays_are_cast_as_postgres_casts_them(http, shelves):
    made = http.post("/shelf", json={"label": "cast", "rank": "7", "tags": "{a,b}"}, headers={"Prefer": "return=representation"})
    assert made.status_code == 201 and (made.json()[0]["rank"], made.json()[0]["tags"]) == (7, ["a", "b"]), made.text
    patched = http.patch("/shelf?label=eq.cast", json={"rank": "8"}, headers={"Prefer": "return=representation"})
    assert patched.json()[0]["rank"] == 8, patched.text
    refused = http.post("/shelf", json={"label": "cast-bad", "rank": "seven"})
    assert refused.status_code == 422 and refused.json()["details"][0]["field"] == "rank", refused.text
    http.delete("/shelf?label=eq.cast")

def test_number_strings_postgresql_would_not_cast_are_refused_by_name(http, shelves):
    """Python reads `1_000`, `NaN`, `inf` and `1e400` (an infinity) as numbers; PostgreSQL's casts and JSON do
    not: each is a 422 naming its field, never a changed value or a null stored in its place."""
    for field, text in (("pages", "1_000"), ("pages", "\u0663"), ("weight", "1_0"), ("weight", "NaN"), ("weight", "Infinity"),
                        ("weight", "-inf"), ("weight", "1e400")):
        for body, headers in ((orjson.dumps({"title": "numbers", field: text}), {"Content-Type": "application/json"}),
                              (f"title,{field}\nnumbers,{text}\n".encode(), {"Content-Type": "text/csv"})):
            refused = http.post("/book", content=body, headers=headers)
            assert refused.status_code == 422, (field, text, refused.text)
            assert refused.json()["details"][0]["field"] in (field, f"[0].{field}"), refused.text
    assert http.get("/book?title=eq.numbers").json() == []
    made = http.post("/book", json={"title": "numbers", "pages": " 12 ", "weight": "1.5e2"},
                     headers={"Prefer": "return=representation"})
    assert (made.json()[0]["pages"], made.json()[0]["weight"]) == (12, 150.0), made.text
    http.delete("/book?title=eq.numbers")


def test_a_form_body_that_is_not_utf8_is_refused(http, shelves):
    refused = http.post("/shelf", content=b"label=ok%C3%A9%FFx", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert refused.status_code == 400 and refused.json()["code"] == "PGRST102", refused.text
    assert http.get("/shelf?label=like.ok*").json() == []


def test_a_nul_character_in_a_body_is_refused_naming_where(base, http, keys, shelves):
    """No value PostgreSQL keeps holds a NUL: refused with the field's path (the database's own error names none)."""
    for content, media, where in ((b'{"label": "x\\u0000y"}', "application/json", "label"),
                                  (b'[{"label": "ok"}, {"label": "z", "meta": {"k\\u0000": 1}}]', "application/json",
                                   "[1].meta.k\x00"),
                                  (b"label=x%00y", "application/x-www-form-urlencoded", "label")):
        refused = http.post("/shelf", content=content, headers={"Content-Type": media})
        assert refused.status_code == 400 and refused.json()["code"] == "PGRST102", refused.text
        assert refused.json()["details"][0]["path"] == where, refused.text
    signup = httpx.post(f"{base}/auth/v1/signup", headers={"apikey": keys["anon"]},
                        json={"email": "nul\u0000@example.com", "password": PASSWORD})
    assert signup.status_code == 400 and signup.json()["details"][0]["path"] == "email", signup.text
    assert http.get("/shelf?label=in.(ok,z)").json() == []
    literal = http.post("/shelf", json={"label": "a \\u0000 written out"}, headers={"Prefer": "return=representation"})
    assert literal.status_code == 201, literal.text  # a backslash and u0000 as text are no NUL
    http.delete(f"/shelf?id=eq.{literal.json()[0]['id']}")


def test_a_form_body_is_one_object(http, shelves):
    response = http.post("/shelf", content="label=form+one&rank=4", headers={
        "Content-Type": "application/x-www-form-urlencoded", "Prefer": "return=representation"})
    assert response.status_code == 201, response.text
    assert (response.json()[0]["label"], response.json()[0]["rank"]) == ("form one", 4)
    patched = http.patch("/shelf?label=eq.form%20one", content="rank=5",
                         headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert patched.status_code == 204
    assert http.get("/shelf?label=eq.form%20one&select=rank").json() == [{"rank": 5}]
    http.delete("/shelf?label=eq.form%20one")


def test_json_sent_as_a_form_by_curl_is_read_as_json(http, shelves):
    """`curl -d '{...}'` labels any body a form: JSON under that type stays JSON."""
    response = http.post("/shelf", content='{"label": "curl-json", "rank": 6}', headers={
        "Content-Type": "application/x-www-form-urlencoded", "Prefer": "return=representation"})
    assert response.status_code == 201 and response.json()[0]["rank"] == 6, response.text
    http.delete("/shelf?label=eq.curl-json")


def test_an_unreadable_body_type_is_415(http, shelves):
    response = http.post("/shelf", content="<shelf/>", headers={"Content-Type": "application/xml"})
    assert response.status_code == 415 and response.json()["code"] == "PGRST102", response.text


def test_columns_reads_only_the_listed_keys(client, http, shelves):
    response = http.post("/shelf?columns=label,rank", headers={"Prefer": "return=representation"},
                         json=[{"label": "col-1", "rank": 1, "ignored": "x", "body": "also ignored"},
                               {"label": "col-2"}])
    assert response.status_code == 201, response.text
    assert sorted((r["label"], r["rank"], r["body"]) for r in response.json()) == [("col-1", 1, None),
                                                                                  ("col-2", None, None)]
    unknown = http.post("/shelf?columns=label,nope", json={"label": "col-3"})
    assert unknown.status_code == 400 and unknown.json()["code"] == "42703"
    twice = http.post("/shelf?columns=label,label", json={"label": "col-4"})
    assert twice.status_code == 400 and twice.json()["code"] == "PGRST100", twice.text
    http.delete("/shelf?label=like.col-*")


# -- 10. operators --


@pytest.mark.parametrize(("query", "expected"), [
    ("tags=cs.{blue}", ["alpha", "beta"]),
    ("tags=cd.{red,blue,green}", ["alpha", "beta", "delta", "gamma"]),
    ("tags=ov.{red,green}", ["alpha", "delta"]),
    ('meta=cs.{"a":{"b":1}}', ["alpha"]),
    ('meta=cd.{"k":"z","x":1}', ["gamma"]),
    ("body=fts.fox", ["alpha", "gamma"]),  # the database's default configuration (english)
    ("body=fts(english).fox", ["alpha", "gamma"]),
    ("body=plfts(english).quick foxes", ["alpha", "gamma"]),
    ("body=phfts(english).quick brown", ["alpha"]),
    ("body=wfts(english).dog or cat -fat", ["alpha"]),
    ("body=not.wfts(english).cat", ["alpha", "gamma"]),
    ("label=match.^[ab]", ["alpha", "beta"]),
    ("label=imatch.^A.*A$", ["alpha"]),
    ("rank=isdistinct.2", ["alpha", "delta", "gamma"]),
    ("label=like(any).{a*,*ta}", ["alpha", "beta", "delta"]),
    ("label=like(all).{*a,*l*}", ["alpha", "delta"]),
    ("rank=eq(any).{1,3}", ["alpha", "gamma"]),
    ("rank=gt(all).{0,1}", ["beta", "gamma"]),
    ("label=ilike(any).{A*,G*}", ["alpha", "gamma"]),
    ("label=match(any).{^al,^ga}", ["alpha", "gamma"]),
    ("or=(rank.eq(any).{1,2},body.fts(english).foxes)", ["alpha", "beta", "gamma"]),
])
def test_postgrest_operators(http, shelves, query, expected):
    response = http.get(f"/shelf?select=label&label=in.(alpha,beta,gamma,delta)&order=label&{query}")
    assert response.status_code == 200, response.text
    assert labels(response.json()) == sorted(expected)


def test_in_lists_read_quotes_as_postgrest_does(client, http, shelves):
    """A double quote opens a quoted value only at its start, where backslashes escape; inside a bare value
    it is a character (postgrest-py and supabase-js send `q"x` bare, quoting only values with , : ( or ))."""
    made = http.post("/shelf", json=[{"label": 'q"x'}, {"label": 'a,"b'}], headers={"Prefer": "return=representation"})
    assert made.status_code == 201, made.text
    try:
        for query, expected in (('label=in.(q"x,alpha)', ["alpha", 'q"x']), ('label=in.("a,\\"b",alpha)', ['a,"b', "alpha"]),
                                ('or=(label.in.(q"x),label.eq."a,\\"b")', ['a,"b', 'q"x'])):
            found = http.get(f"/shelf?select=label&{query}&order=label")
            assert (found.status_code, labels(found.json())) == (200, expected), (query, found.text)
        assert labels(client.from_("shelf").select("label").in_("label", ['q"x']).execute().data) == ['q"x']
    finally:
        http.delete('/shelf?label=in.(q"x,"a,\\"b")')
        assert http.get('/shelf?label=like.*"*').json() == []


def test_is_unknown_on_a_boolean_path_and_a_column(http, shelves):
    assert labels(http.get("/shelf?select=label&label=in.(alpha,beta,gamma,delta)&rank=is.unknown").json()) == [
        "delta"]


def test_text_search_through_supabase_text_search_arguments(client, shelves):
    found = client.from_("shelf").select("label").text_search("body", "'quick' & 'fox'",
                                                               options={"config": "english"}).order("label").execute()
    assert labels(found.data) == ["alpha", "gamma"]
    plain = client.from_("shelf").select("label").text_search("body", "lazy dog",
                                                               options={"type": "plain", "config": "english"}).execute()
    assert labels(plain.data) == ["alpha"]


@pytest.mark.parametrize(("query", "fragment"), [
    ("label=fts(klingon).x", "text search configuration"),
    ("rank=fts.x", "applies to text"),
    ("rank=like(any).{1}", "applies to text"),
    ("label=cs.{a}", "applies to arrays"),
    ("meta=ov.{a}", "applies to arrays"),
    ("label=eq(some).{a}", "is not an operator"),
    ("label=like(any).a", "list in braces"),
    ("label=sl.(1,2)", "expected operator.value"),
    ("rank=isdistinct.x", "invalid input syntax"),
    ("label=match.(", "regular expression"),
    ("tags=cs.nope", "malformed array literal"),
    ('meta=cs.{"a"', "json"),
    ("body=fts.quick brown", "syntax error in tsquery"),  # PostgreSQL's 42601, as PostgREST: a 400
    ("body=fts(english).'", "syntax error in tsquery"),
])
def test_bad_operator_input_is_a_400_with_a_code(http, shelves, query, fragment):
    response = http.get(f"/shelf?{query}")
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["code"] and fragment.lower() in (body["message"] + str(body.get("hint"))).lower(), body


def test_new_operators_never_reach_rows_outside_the_read_scope(base, people):
    ann, bob = people["ann"], people["bob"]
    created = httpx.post(f"{base}/rest/v1/doc", headers=ann["headers"], json={
        "title": "ann secret", "body": "the hidden treasure map", "tags": ["secret"], "meta": {"k": "ann"}, "rank": 1})
    assert created.status_code == 201, created.text
    for query in ("body=fts(english).treasure", "tags=cs.{secret}", "tags=ov.{secret}", 'meta=cs.{"k":"ann"}',
                  "title=match.secret", "title=like(any).{*secret*}", "rank=isdistinct.5", "meta->>k=eq.ann",
                  "body=wfts.treasure", "body=plfts.treasure map", "body=phfts(english).treasure map",
                  "title=imatch.SECRET", "tags=cd.{secret,x}", "title=ilike(all).{*ANN*,*SECRET}",
                  "select=title::text,meta->>k&title=eq.ann secret"):
        seen = httpx.get(f"{base}/rest/v1/doc?{query}", headers=bob["headers"])
        assert seen.status_code == 200 and "ann" not in seen.text, (query, seen.text)
        own = httpx.get(f"{base}/rest/v1/doc?{query}", headers=ann["headers"])
        assert [d["title"] for d in own.json()] == ["ann secret"], (query, own.text)


# -- 11. select: casts, JSON paths, hints, disambiguation, ordering by an embedded column --


def test_casts_in_select(http, shelves):
    rows = http.get("/shelf?select=label,r:rank::text,price::text,tags::text&label=eq.alpha").json()
    assert rows == [{"label": "alpha", "r": "1", "price": "1.50", "tags": "{red,blue}"}]
    bad = http.get("/shelf?select=label::regclass")
    assert bad.status_code == 400 and bad.json()["code"] == "PGRST100" and "cannot cast" in bad.json()["message"]
    failing = http.get("/shelf?select=label::integer")
    assert failing.status_code == 400 and failing.json()["code"] == "22P02"


def test_json_paths_in_select_filters_and_logic(http, shelves):
    rows = http.get("/shelf?select=label,meta->a->b,k:meta->>k&meta->>k=in.(x,y)&order=label").json()
    assert rows == [{"label": "alpha", "b": 1, "k": "x"}, {"label": "beta", "b": 2, "k": "y"}]
    assert labels(http.get("/shelf?select=label&meta->a->b=gt.1").json()) == ["beta"]
    assert labels(http.get("/shelf?select=label&or=(meta->>k.eq.z,meta->a->>b.eq.1)&order=label").json()) == [
        "alpha", "gamma"]
    not_json = http.get("/shelf?select=label->x")
    assert not_json.status_code == 400 and "json" in not_json.json()["message"]


def test_json_paths_order(http, shelves):
    rows = http.get("/shelf?select=label&label=in.(alpha,beta,gamma,delta)&order=meta->>k.desc.nullslast").json()
    assert labels(rows) == ["gamma", "beta", "alpha", "delta"]
    nested = http.get("/shelf?select=label&label=in.(alpha,beta)&order=meta->a->b.desc").json()
    assert labels(nested) == ["beta", "alpha"]


def test_json_path_order_sees_only_the_callers_rows(base, people):
    rows = httpx.get(f"{base}/rest/v1/doc?select=title&order=meta->>k.desc", headers=people["bob"]["headers"]).json()
    assert all("ann" not in r["title"] for r in rows)


def test_json_paths_through_the_client(client, shelves):
    rows = client.from_("shelf").select("label,meta->>k").eq("meta->>k", "y").execute().data
    assert rows == [{"label": "beta", "k": "y"}]


def test_inner_hint_keeps_only_rows_with_a_matching_embed(http, shelves):
    rows = http.get("/shelf?select=label,books!inner(title)&books.title=eq.B1").json()
    assert rows == [{"label": "beta", "books": [{"title": "B1"}]}]
    left = http.get("/shelf?select=label,books!left(title)&books.title=eq.B1&label=in.(alpha,beta)&order=label").json()
    assert left == [{"label": "alpha", "books": []}, {"label": "beta", "books": [{"title": "B1"}]}]
    to_one = http.get("/book?select=title,shelf!inner(label)&shelf.label=eq.beta").json()
    assert to_one == [{"title": "B1", "shelf": {"label": "beta"}}]


def test_inner_hint_through_the_client(client, shelves):
    rows = client.from_("book").select("title,shelf!inner(label)").eq("shelf.label", "alpha").order("title").execute()
    assert [r["title"] for r in rows.data] == ["A1", "A2", "A3"]


def test_two_refs_to_one_entity_are_told_apart_by_hint(http, people, base):
    ann = people["ann"]
    doc = httpx.post(f"{base}/rest/v1/doc", headers={**ann["headers"], "Prefer": "return=representation"},
                     json={"title": "two refs", "writer_id": ann["person"], "reviewer_id": ann["person"]}).json()[0]
    ambiguous = http.get(f"/doc?select=title,person(name)&id=eq.{doc['id']}")
    assert ambiguous.status_code == 300 and ambiguous.json()["code"] == "PGRST201", ambiguous.text
    hint = ambiguous.json()["hint"]
    assert "'person!doc_reviewer_id_fkey'" in hint and "'person!doc_writer_id_fkey'" in hint
    assert {d["relationship"] for d in ambiguous.json()["details"]} == {
        "doc_writer_id_fkey using doc(writer_id) and person(id)", "doc_reviewer_id_fkey using doc(reviewer_id) and person(id)"}
    assert {d["cardinality"] for d in ambiguous.json()["details"]} == {"many-to-one"}
    for hint in ("writer", "writer_id"):
        rows = http.get(f"/doc?select=title,person!{hint}(name)&id=eq.{doc['id']}").json()
        assert rows == [{"title": "two refs", "person": {"name": "Ann"}}]
    reverse = http.get(f"/person?select=name,doc!reviewer(title)&id=eq.{ann['person']}").json()
    assert reverse == [{"name": "Ann", "doc": [{"title": "two refs"}]}]
    by_fkey = http.get(f"/person?select=name,doc!doc_writer_id_fkey(title)&id=eq.{ann['person']}"
                       "&doc.title=eq.two refs").json()
    assert by_fkey == [{"name": "Ann", "doc": [{"title": "two refs"}]}]
    unknown = http.get("/doc?select=title,person!nothing(name)")
    assert unknown.status_code == 400 and unknown.json()["code"] == "PGRST200"


def test_a_to_one_embed_is_picked_by_its_foreign_keys_name(http, people):
    ann = people["ann"]
    http.post("/doc", json={"title": "fkey to one", "writer_id": ann["person"], "reviewer_id": ann["person"]})
    rows = http.get("/doc?select=title,person!doc_reviewer_id_fkey(name)&title=eq.fkey to one").json()
    assert rows == [{"title": "fkey to one", "person": {"name": "Ann"}}]


def test_a_relation_hint_and_a_join_hint_go_together(http, people):
    ann = people["ann"]
    http.post("/doc", json={"title": "hint and join", "writer_id": ann["person"]})
    for hint in ("writer", "doc_writer_id_fkey"):
        rows = http.get(f"/doc?select=title,person!{hint}!inner(name)&person.name=eq.Ann&title=eq.hint and join").json()
        assert rows == [{"title": "hint and join", "person": {"name": "Ann"}}], hint
        none = http.get(f"/doc?select=title,person!{hint}!inner(name)&person.name=eq.Nobody&title=eq.hint and join")
        assert none.json() == [], hint
    reverse = http.get(f"/person?select=name,doc!writer!inner(title)&doc.title=eq.hint and join&id=eq.{ann['person']}")
    assert reverse.json() == [{"name": "Ann", "doc": [{"title": "hint and join"}]}]
    two = http.get("/doc?select=title,person!writer!reviewer(name)")
    assert two.status_code == 400 and two.json()["code"] == "PGRST100", two.text


def test_an_empty_embed_filters_without_being_shown(http, shelves):
    rows = http.get("/shelf?select=label,books!inner()&books.title=eq.B1").json()
    assert rows == [{"label": "beta"}]
    nested = http.get("/book?select=title,shelf!inner()&shelf.label=eq.beta").json()
    assert nested == [{"title": "B1"}]


def test_an_embed_is_filtered_by_is_null_and_not_is_null(http, shelves):
    having = http.get("/shelf?select=label,books()&books.pages=gt.15&books=not.is.null&order=label"
                      "&label=in.(alpha,beta,gamma,delta)").json()
    assert having == [{"label": "alpha"}]
    lacking = http.get("/shelf?select=label,books(title)&books.pages=gt.15&books=is.null&order=label"
                       "&label=in.(alpha,beta,gamma,delta)").json()
    assert lacking == [{"label": "beta", "books": []}, {"label": "delta", "books": []}, {"label": "gamma", "books": []}]
    bad = http.get("/shelf?select=label,books()&books=eq.1")
    assert bad.status_code == 400 and bad.json()["code"] == "PGRST100", bad.text


def bobs_doc_written_by_ann(base: str, people: dict[str, dict[str, Any]], keys: dict[str, str], title: str
                            ) -> dict[str, str]:
    """A doc of bob's whose writer is ann's person row, which bob may not read: bob's headers. Bob may not name
    that row himself (tests/test_isolation_scopes.py): the service key, which reads every person, points it there."""
    bob = people["bob"]
    created = httpx.post(f"{base}/rest/v1/doc", headers={**bob["headers"], "Prefer": "return=representation"},
                         json={"title": title, "writer_id": bob["person"]})
    assert created.status_code == 201, created.text
    moved = httpx.patch(f"{base}/rest/v1/doc?id=eq.{created.json()[0]['id']}", headers=key(keys["service"]),
                        json={"writer_id": people["ann"]["person"]})
    assert moved.status_code == 204, moved.text
    return bob


def test_an_embed_null_filter_sees_only_rows_the_caller_may_read(base, people, keys):
    """bob's doc whose writer is ann's person row: ann's row is hidden from bob, so for bob it has no writer."""
    bob = bobs_doc_written_by_ann(base, people, keys, "null-scope")
    present = httpx.get(f"{base}/rest/v1/doc?select=title,writer()&writer=not.is.null&title=eq.null-scope",
                        headers=bob["headers"])
    assert present.json() == []
    missing = httpx.get(f"{base}/rest/v1/doc?select=title,writer()&writer=is.null&title=eq.null-scope",
                        headers=bob["headers"])
    assert missing.json() == [{"title": "null-scope"}]
    for stranger in (key(keys["anon"]), key(keys["elsewhere"])):
        seen = httpx.get(f"{base}/rest/v1/doc?select=title,writer()&writer=is.null&title=eq.null-scope", headers=stranger)
        assert seen.status_code in (401, 403) or seen.json() == [], seen.text


def test_the_older_count_of_an_embed_works_without_aggregates(base, keys):
    """PostgREST's `books(count)`, kept for older clients whatever db-aggregates-enabled says."""
    plain = f"{base.removesuffix('/dialect')}/plain/rest/v1"
    service = key(keys["plain"])
    shelves = httpx.post(f"{plain}/shelf", headers={**service, "Prefer": "return=representation"},
                         json=[{"label": "full"}, {"label": "empty"}]).json()
    full = next(s["id"] for s in shelves if s["label"] == "full")
    httpx.post(f"{plain}/book", headers=service, json=[{"title": "x", "shelf_id": full}, {"title": "y", "shelf_id": full}])
    rows = httpx.get(f"{plain}/shelf?select=label,books(count)&label=in.(full,empty)&order=label", headers=service)
    assert rows.json() == [{"label": "empty", "books": [{"count": 0}]}, {"label": "full", "books": [{"count": 2}]}]
    refused = httpx.get(f"{plain}/shelf?select=label,books(count())", headers=service)
    assert refused.status_code == 400 and refused.json()["code"] == "PGRST123", refused.text


def test_a_spread_embed_puts_a_to_one_rows_columns_beside_the_parents(http, shelves, client):
    rows = http.get("/book?select=title,...shelf(shelf_label:label,rank)&title=in.(A1,B1)&order=title").json()
    assert rows == [{"title": "A1", "shelf_label": "alpha", "rank": 1}, {"title": "B1", "shelf_label": "beta", "rank": 2}]
    through_client = client.from_("book").select("title,...shelf(label)").eq("title", "B1").execute().data
    assert through_client == [{"title": "B1", "label": "beta"}]
    as_csv = http.get("/book?select=title,...shelf(label)&title=eq.A1", headers={"Accept": "text/csv"})
    assert as_csv.text == "title,label\nA1,alpha"
    to_many = http.get("/shelf?select=label,...books(title)")
    assert to_many.status_code == 400 and to_many.json()["code"] == "PGRST100", to_many.text


def test_a_spread_that_repeats_a_name_at_its_level_is_a_400(http, shelves):
    for select in ("title,...shelf(title:label)", "title,label:pages,...shelf(label)"):
        answer = http.get("/book", params={"select": select})
        assert answer.status_code == 400 and answer.json()["code"] == "PGRST100", (select, answer.text)


def test_a_spread_embed_shows_nothing_of_a_row_the_caller_may_not_read(base, people, keys):
    bob = bobs_doc_written_by_ann(base, people, keys, "spread-scope")
    spread = "/rest/v1/doc?select=title,...writer(writer_name:name)&title=eq.spread-scope"
    rows = httpx.get(f"{base}{spread}", headers=bob["headers"])
    assert rows.json() == [{"title": "spread-scope", "writer_name": None}], rows.text
    anonymous = httpx.get(f"{base}{spread}", headers=key(keys["anon"]))  # anon reads no doc at all
    assert anonymous.status_code in (401, 403) or anonymous.json() == [], anonymous.text
    elsewhere = httpx.get(f"{base.removesuffix('/dialect')}/elsewhere{spread}", headers=key(keys["elsewhere"]))
    assert elsewhere.json() == [], elsewhere.text  # another tenant's key reaches its own tenant's rows only
    foreign = httpx.get(f"{base}{spread}", headers=key(keys["elsewhere"]))
    assert foreign.status_code == 401, foreign.text


def test_order_by_a_to_one_embedded_column(http, shelves):
    rows = http.get("/book?select=title,shelf(label)&order=shelf(label).desc,title.asc&title=in.(A1,A2,B1)").json()
    assert [r["title"] for r in rows] == ["B1", "A1", "A2"]
    many = http.get("/shelf?order=books(title)")
    assert many.status_code == 400 and "to-one" in many.json()["message"]


def test_order_by_an_embedded_column_sees_only_what_the_caller_may_read(base, people, keys):
    """bob's docs point at ann's person row (which bob may not read) and at his own: ordering by the
    writer's name orders ann's as a missing row, and bob never sees ann's docs through it."""
    bob = bobs_doc_written_by_ann(base, people, keys, "by-ann-person")
    created = httpx.post(f"{base}/rest/v1/doc", headers=bob["headers"], json={"title": "by-bob-person",
                                                                              "writer_id": bob["person"]})
    assert created.status_code == 201, created.text
    rows = httpx.get(f"{base}/rest/v1/doc?select=title,writer(name)&title=like.by-*&order=writer(name).asc.nullsfirst",
                     headers=bob["headers"]).json()
    assert rows == [{"title": "by-ann-person", "writer": None}, {"title": "by-bob-person", "writer": {"name": "Bob"}}]
    seen = httpx.get(f"{base}/rest/v1/doc?order=writer(name).desc", headers=bob["headers"]).text
    assert "ann secret" not in seen and "two refs" not in seen
    inner = httpx.get(f"{base}/rest/v1/doc?select=title,writer!inner(name)&title=like.by-*", headers=bob["headers"])
    assert inner.json() == [{"title": "by-bob-person", "writer": {"name": "Bob"}}]


# -- 12. rpc: the tenant's functions as PostgREST's RPC --


def test_rpc_post_with_json_arguments(http, shelves):
    response = http.post("/rpc/numbers", json={"count": 3, "word": "n"})
    assert response.status_code == 200, response.text
    assert [r["name"] for r in response.json()] == ["n 0", "n 1", "n 2"]
    assert response.headers["content-range"] == "0-2/*"



def test_rpc_counts_its_result_when_asked(http, client, shelves):
    counted = http.post("/rpc/numbers", json={"count": 4, "word": "n"}, headers={"Prefer": "count=exact"})
    assert counted.status_code == 200 and counted.headers["content-range"] == "0-3/4", counted.text
    assert counted.headers["preference-applied"] == "count=exact"
    paged = http.get("/rpc/numbers?count=6&limit=2&offset=1", headers={"Prefer": "count=exact"})
    assert (paged.status_code, paged.headers["content-range"], len(paged.json())) == (206, "1-2/6", 2)  # part: 206
    ranged = http.get("/rpc/numbers?count=6", headers={"Range": "2-3", "Prefer": "count=exact"})
    assert ranged.status_code == 206 and ranged.headers["content-range"] == "2-3/6", ranged.text
    assert [r["n"] for r in ranged.json()] == [2, 3]
    past = http.get("/rpc/numbers?count=6&offset=9", headers={"Prefer": "count=exact"})
    assert (past.status_code, past.headers["content-range"], past.json()["code"]) == (416, "*/6", "PGRST103")
    uncounted = http.get("/rpc/numbers?count=6&limit=2")
    assert (uncounted.status_code, uncounted.headers["content-range"]) == (200, "0-1/*")
    one = http.post("/rpc/stamp", json={"label": "ranged"}, headers={"Range": "0-0"})  # no list: the Range is moot
    assert one.status_code == 200, one.text
    filtered = http.get("/rpc/numbers?count=6&n=in.(0,1,9)", headers={"Prefer": "count=exact"})
    assert filtered.headers["content-range"] == "0-1/2", filtered.text
    through_client = client.rpc("numbers", {"count": 5}, count="exact").execute()
    assert through_client.count == 5 and len(through_client.data) == 5

def test_rpc_get_with_query_arguments_for_a_read_only_function(http, shelves):
    response = http.get("/rpc/numbers?count=4")
    assert response.status_code == 200, response.text
    assert [r["n"] for r in response.json()] == [0, 1, 2, 3]
    refused = http.get("/rpc/stamp?label=x")
    assert refused.status_code == 405 and refused.json()["code"] == "PGRST101", refused.text
    for many in ("many", "1_0", "%D9%A3", "%EF%BC%93"):  # Python's int() reads the last three; PostgreSQL does not
        invalid = http.get(f"/rpc/numbers?count={many}")
        assert invalid.status_code == 422 and invalid.json()["details"][0]["field"] == "count", (many, invalid.text)
    undeclared = http.get("/rpc/my_docs?n=3")  # my_docs declares no input: n=3 is no filter and no argument
    assert undeclared.status_code == 400 and undeclared.json()["code"] == "PGRST100", undeclared.text
    assert "input.properties" in undeclared.json()["hint"] and undeclared.json()["details"][0]["path"] == "n"
    unknown = http.post("/rpc/no_such_function", json={})
    assert unknown.status_code == 404 and unknown.json()["code"] == "PGRST202", unknown.text


def test_rpc_list_results_take_filters_order_limit_and_select(http, shelves):
    response = http.get("/rpc/numbers?count=10&even=eq.true&n=gte.2&order=n.desc&limit=3&select=n,label:name")
    assert response.status_code == 200, response.text
    assert response.json() == [{"n": 8, "label": "item 8"}, {"n": 6, "label": "item 6"}, {"n": 4, "label": "item 4"}]
    posted = http.post("/rpc/numbers?name=like.*1*&order=half.desc", json={"count": 12})
    assert [r["n"] for r in posted.json()] == [11, 10, 1]
    within = http.get("/rpc/numbers?count=6&n=in.(1,3,9)&name=match.^item")
    assert [r["n"] for r in within.json()] == [1, 3]
    bad = http.get("/rpc/numbers?n=fts.x")
    assert bad.status_code == 400 and bad.json()["code"] == "PGRST100"
    paths = http.get("/rpc/numbers?count=4&select=n,meta->tags->0,wide:meta->size->>w&meta->size->w=gte.2"
                     "&meta->>tags=like.*t3*")
    assert paths.json() == [{"n": 3, "0": "t3", "wide": "3"}], paths.text
    too_long = http.get("/rpc/numbers?select=meta" + "->a" * 40)
    assert too_long.status_code == 400 and too_long.json()["code"] == "query_too_complex", too_long.text
    not_a_list = http.post("/rpc/stamp?order=label", json={"label": "never-shaped"})
    assert not_a_list.status_code == 400, not_a_list.text


def test_rpc_through_supabase(base, keys, shelves):
    from supabase import create_client
    supabase = create_client(base, keys["anon"])
    assert [r["n"] for r in supabase.rpc("numbers", {"count": 2}).execute().data] == [0, 1]
    shaped = supabase.rpc("numbers", {"count": 6}).gt("n", 2).order("n", desc=True).limit(2).execute().data
    assert [r["n"] for r in shaped] == [5, 4]
    assert supabase.rpc("numbers", {"count": 3}, get=True).execute().data[2]["name"] == "item 2"
    assert supabase.rpc("stamp", {"label": "stamped"}).execute().data == "stamped"


def test_rpc_runs_with_the_callers_permissions_and_nothing_more(base, keys, people, shelves):
    ann, bob = people["ann"], people["bob"]
    httpx.post(f"{base}/rest/v1/doc", headers=ann["headers"], json={"title": "ann rpc secret"})
    bobs = httpx.get(f"{base}/rest/v1/rpc/my_docs", headers=bob["headers"])
    assert bobs.status_code == 200 and "ann rpc secret" not in bobs.text, bobs.text
    filtered = httpx.get(f"{base}/rest/v1/rpc/my_docs?title=like.ann*", headers=bob["headers"])
    assert filtered.json() == []
    anns = httpx.get(f"{base}/rest/v1/rpc/my_docs?title=eq.ann rpc secret", headers=ann["headers"])
    assert anns.json() == [{"title": "ann rpc secret"}]
    anonymous = httpx.get(f"{base}/rest/v1/rpc/my_docs", headers=key(keys["anon"]))
    assert anonymous.status_code == 403, anonymous.text
    foreign = httpx.get(f"{base}/rest/v1/rpc/numbers", headers=key(keys["elsewhere"]))
    assert foreign.status_code == 401, foreign.text
    missing = httpx.post(f"{base}/rest/v1/rpc/nothing", headers=key(keys["anon"]), json={})
    assert missing.status_code == 404


# -- 11. aggregates (opt-in per tenant, as PostgREST's db-aggregates-enabled) --


def test_aggregates_in_select_group_by_the_other_columns(http, shelves):
    assert http.get("/book?select=count()").json() == [{"count": len(http.get("/book").json())}]
    rows = http.get("/book?select=shelf_id,total:pages.sum(),pages.max(),count()&shelf_id=not.is.null"
                    "&title=in.(A1,A2,A3,B1)&order=shelf_id").json()
    by_shelf = {r["shelf_id"]: r for r in rows}
    assert (by_shelf[shelves["alpha"]]["total"], by_shelf[shelves["alpha"]]["max"],
            by_shelf[shelves["alpha"]]["count"]) == (60, 30, 3)
    assert by_shelf[shelves["beta"]]["total"] == 5
    averaged = http.get("/book?select=pages.avg()::text&title=in.(A1,A2)").json()
    assert averaged == [{"avg": "20.0000000000000000"}]
    embedded = http.get(f"/shelf?select=label,books(pages.sum())&id=eq.{shelves['alpha']}").json()
    assert embedded == [{"label": "alpha", "books": [{"sum": 60}]}]


def test_a_column_cast_before_it_is_aggregated(http, shelves):
    """PostgREST 12's `order_details->tax_amount::numeric.sum()`: the cast applies to the column, then the sum."""
    rows = http.get("/book?select=pages::bigint.sum(),pages::text.max()&title=in.(A1,A2,A3)").json()
    assert rows == [{"sum": 60, "max": "30"}]  # as text, '30' > '20' > '10'
    path = http.get(f"/shelf?select=total:meta->a->b::integer.sum()&id=in.({shelves['alpha']},{shelves['beta']})")
    assert path.json() == [{"total": 3}], path.text
    bad = http.get("/book?select=pages::regclass.sum()")
    assert bad.status_code == 400 and bad.json()["code"] == "PGRST100" and "cannot cast" in bad.json()["message"]


def test_columns_named_in_double_quotes_are_the_columns(http, shelves):
    """PostgREST's quoted names: in select (and its aliases), filters, logic trees and order."""
    rows = http.get('/shelf?select="label","the rank":"rank"&"label"=eq.alpha').json()
    assert rows == [{"label": "alpha", "the rank": 1}]
    ordered = http.get('/shelf?select=label&or=("label".eq.alpha,"label".eq.beta)&order="rank".desc').json()
    assert labels(ordered) == ["beta", "alpha"]
    summed = http.get('/book?select="pages".sum()&title=in.(A1,A2)').json()
    assert summed == [{"sum": 40}]


def test_aggregates_refuse_what_they_cannot_answer(http, shelves):
    for query, code in (("select=title.sum()", "42883"), ("select=sum()", "PGRST100"),
                        ("select=shelf_id,count()&order=title", "PGRST100")):
        response = http.get(f"/book?{query}")
        assert response.status_code == 400 and response.json()["code"] == code, (query, response.text)


def test_aggregates_are_off_unless_the_tenant_turns_them_on(base, keys):
    response = httpx.get(base.replace("/dialect", "/plain") + "/rest/v1/book?select=count()",
                         headers=key(keys["plain"]))
    assert response.status_code == 400 and response.json()["code"] == "PGRST123", response.text
    assert "rest: {aggregates: true}" in response.json()["hint"]


def test_aggregates_count_only_the_rows_the_caller_may_read(base, people):
    ann, bob = people["ann"], people["bob"]
    mine = httpx.get(f"{base}/rest/v1/doc?select=count()", headers=bob["headers"]).json()[0]["count"]
    listed = len(httpx.get(f"{base}/rest/v1/doc", headers=bob["headers"]).json())
    assert mine == listed
    anns = httpx.get(f"{base}/rest/v1/doc?select=count()", headers=ann["headers"]).json()[0]["count"]
    assert anns == len(httpx.get(f"{base}/rest/v1/doc", headers=ann["headers"]).json())
    grouped = httpx.get(f"{base}/rest/v1/doc?select=owner_id,count()", headers=bob["headers"]).json()
    assert [g["owner_id"] for g in grouped] == [bob["id"]]


NODE_STORY = """
// supabase-js's REST client (what supabase.rpc and .from delegate to): supabase-js itself needs Node 22's
// WebSocket for its realtime client, and this machine's Node is 20
const { PostgrestClient } = require(process.env.POSTGREST_JS);
(async () => {
  const key = process.env.KEY;
  const client = new PostgrestClient(process.env.URL + '/rest/v1', {headers: {apikey: key, Authorization: 'Bearer ' + key}});
  const out = {};
  const listed = await client.rpc('numbers', {count: 6}).gt('n', 2).order('n', {ascending: false}).limit(2);
  out.rpc = listed.error ? listed.error.message : listed.data.map(r => r.n);
  const got = await client.rpc('numbers', {count: 3, word: 'get'}, {get: true});
  out.rpc_get = got.error ? got.error.message : got.data.map(r => r.name);
  const one = await client.rpc('stamp', {label: 'from-js'});
  out.rpc_scalar = one.error ? one.error.message : one.data;
  const fts = await client.from('shelf').select('label').textSearch('body', "'quick' & 'fox'", {config: 'english'})
    .order('label');
  out.fts = fts.error ? fts.error.message : fts.data.map(r => r.label);
  const web = await client.from('shelf').select('label').textSearch('body', 'dog or cat -fat',
    {type: 'websearch', config: 'english'});
  out.wfts = web.error ? web.error.message : web.data.map(r => r.label);
  const phrase = await client.from('shelf').select('label').textSearch('body', 'quick brown', {type: 'phrase'});
  out.phfts = phrase.error ? phrase.error.message : phrase.data.map(r => r.label);
  process.stdout.write(JSON.stringify(out));
})();
"""


def test_supabase_js_rest_client_in_node_calls_rpc_and_text_search(base, keys, shelves):
    import json
    import shutil
    import subprocess
    from pathlib import Path

    node = shutil.which("node")
    package = Path(__file__).parent / "browser/node_modules/@supabase/postgrest-js"
    if node is None or not package.exists():
        pytest.fail("Node and supabase-js are needed: run `npm ci --prefix tests/browser`")
    ran = subprocess.run([node, "-e", NODE_STORY], capture_output=True, text=True, timeout=60, env={
        **os.environ, "POSTGREST_JS": str(package), "URL": base, "KEY": keys["anon"]})
    assert ran.returncode == 0, ran.stderr
    out = json.loads(ran.stdout)
    assert out["rpc"] == [5, 4], out
    assert out["rpc_get"] == ["get 0", "get 1", "get 2"], out
    assert out["rpc_scalar"] == "from-js", out
    assert out["fts"] == ["alpha", "gamma"], out
    assert out["wfts"] == ["alpha"], out
    assert out["phfts"] == ["alpha"], out


def test_patch_and_delete_take_limit_and_order_as_postgrest_12(http, shelves):
    http.post("/shelf", json=[{"label": f"lim-{c}", "rank": 70} for c in "abcd"])
    patched = http.patch("/shelf?rank=eq.70&order=label.desc&limit=2&select=label",
                         headers={"Prefer": "return=representation"}, json={"rank": 71})
    assert labels(patched.json()) == ["lim-d", "lim-c"], patched.text
    deleted = http.delete("/shelf?rank=eq.70&order=label&limit=1&offset=1&select=label",
                          headers={"Prefer": "return=representation"})
    assert labels(deleted.json()) == ["lim-b"]
    assert labels(http.get("/shelf?label=like.lim-*&order=label&select=label").json()) == ["lim-a", "lim-c", "lim-d"]
    http.delete("/shelf?label=like.lim-*")


def test_a_limited_patch_reaches_only_rows_in_the_scope(base, people):
    ann, bob = people["ann"], people["bob"]
    httpx.post(f"{base}/rest/v1/doc", headers=ann["headers"], json={"title": "ann limited", "rank": 90})
    response = httpx.patch(f"{base}/rest/v1/doc?rank=eq.90&order=title&limit=5", headers=bob["headers"],
                           json={"title": "bob was here"})
    assert response.status_code == 204 and response.headers["content-range"] == "*/*", response.text
    mine = httpx.get(f"{base}/rest/v1/doc?rank=eq.90&select=title", headers=ann["headers"]).json()
    assert mine == [{"title": "ann limited"}]


def test_the_openapi_document_lists_the_rpc_functions(http, shelves):
    document = http.get("/").json()
    numbers = document["paths"]["/rpc/numbers"]
    assert set(numbers) == {"post", "get"} and numbers["get"]["parameters"][0]["name"] == "count"
    assert set(document["paths"]["/rpc/stamp"]) == {"post"}
    assert document["components"]["schemas"]["shelf"]["properties"]["price"]["anyOf"][0] == {"type": "number"}


def test_strict_handling_refuses_a_preference_not_honoured(http, shelves):
    refused = http.get("/shelf", headers={"Prefer": "handling=strict, tx=rollback"})
    assert refused.status_code == 400 and refused.json()["code"] == "PGRST122", refused.text
    counted = http.get("/shelf?limit=1", headers={"Prefer": "handling=strict, count=exact"})
    assert counted.status_code == 206 and counted.headers["preference-applied"] == "count=exact, handling=strict"
    lenient = http.get("/shelf?limit=1", headers={"Prefer": "tx=rollback"})
    assert lenient.status_code == 200 and "preference-applied" not in lenient.headers


# -- bad input: an answer with a code, never a 500 --

FUZZ_OPS = ["eq", "neq", "gt", "like", "in", "is", "cs", "cd", "ov", "match", "imatch", "fts", "plfts", "wfts",
            "isdistinct", "eq(any)", "like(all)", "fts(english)", "fts(nope)", "match(all)", "cs(any)", "is(any)",
            "sl", "", "eq(", "fts()"]
FUZZ_COLUMNS = ["label", "rank", "tags", "meta", "price", "body", "meta->a", "meta->>k", "meta->a->>b", "rank->x",
                "meta->", "meta->>", "nope", "meta->0", "tags->0"]
FUZZ_VALUES = ["1", "x", "{a,b}", "(1,2)", "{}", "()", "null", "true", '{"a":1}', "{1,", "(", "*", "%25", "\\",
               "'", '"', "[", "(?:a", "2024-01-01", "-1", "1e400", "NaN"]
FUZZ_SELECTS = ["label::text", "rank::int", "meta->a->>b::int", "x:meta->>k", "count()", "rank.sum()",
                "label.avg()", "rank.nope()", "books!inner(title)", "books!nope(title)", "label,count()",
                "*,books(count())", "::text", "label::", "a:b:c", "sum()"]
FUZZ_ORDERS = ["meta->>k.desc", "shelf(label)", "books(title)", "label.nope", "nope(x)", "(", "meta->>"]


def test_malformed_reads_are_answered_never_500(http, shelves):
    chooser = random.Random(13)
    failures = []
    for _ in range(150):
        parts = [f"{chooser.choice(FUZZ_COLUMNS)}={chooser.choice(['', 'not.'])}{chooser.choice(FUZZ_OPS)}."
                 f"{chooser.choice(FUZZ_VALUES)}" for _ in range(chooser.randint(1, 3))]
        if chooser.random() < 0.5:
            parts.append(f"select={chooser.choice(FUZZ_SELECTS)}")
        if chooser.random() < 0.4:
            parts.append(f"order={chooser.choice(FUZZ_ORDERS)}")
        query = "&".join(parts)
        for path in ("/shelf", "/book", "/rpc/numbers"):
            response = http.get(f"{path}?{query}")
            if response.status_code >= 500 or (response.status_code >= 400 and not response.json().get("code")):
                failures.append((path, query, response.status_code, response.text[:200]))
    assert not failures, failures[:10]


def test_malformed_writes_are_answered_never_500(http, shelves):
    cases = [
        ("post", "/shelf", {"Content-Type": "text/csv"}, b""),
        ("post", "/shelf", {"Content-Type": "text/csv"}, b"label\n"),
        ("post", "/shelf", {"Content-Type": "text/csv"}, b"\xff\xfe"),
        ("post", "/shelf", {"Content-Type": "text/csv"}, b'label,rank\n"unclosed,1\n'),
        ("post", "/shelf", {"Content-Type": "text/csv"}, b"nope\nx\n"),
        ("post", "/shelf", {"Content-Type": "text/csv"}, b"label,tags\nfz1,{a,\n"),
        ("post", "/shelf", {"Content-Type": "text/csv"}, b"label,meta\nfz2,{bad json\n"),
        ("post", "/shelf", {"Content-Type": "text/csv"}, b"label,label\nfz3,fz4\n"),
        ("post", "/shelf", {"Content-Type": "application/x-www-form-urlencoded"}, b"=&&="),
        ("post", "/shelf", {"Content-Type": "application/x-www-form-urlencoded"}, b"%ZZ"),
        ("post", "/shelf", {"Content-Type": "application/x-www-form-urlencoded"}, b"label=fz5&rank=1.5"),
        ("post", "/shelf", {"Content-Type": "application/x-www-form-urlencoded"}, b"[1,2"),
        ("post", "/shelf?columns=", {}, b'{"label": "fz6"}'),
        ("post", "/shelf?columns=label,label", {}, b'{"label": "fz7"}'),
        ("post", "/shelf?columns=id", {}, b'{"label": "fz8"}'),
        ("post", "/shelf?columns=label", {}, b"[1]"),
        ("post", "/shelf?on_conflict=nope", {"Prefer": "resolution=merge-duplicates"}, b'{"label": "fz9"}'),
        ("post", "/shelf?select=nope", {"Prefer": "return=representation"}, b'{"label": "fz10"}'),
        ("post", "/shelf", {"Accept": "text/csv", "Prefer": "return=representation"}, b'{"label": "fz11"}'),
        ("patch", "/shelf?label=eq.zz&limit=x", {}, b'{"rank": 1}'),
        ("patch", "/shelf?label=eq.zz&limit=1&order=meta->>k", {}, b'{"rank": 1}'),
        ("patch", "/shelf?label=eq.zz&order=books(title)&limit=1", {}, b'{"rank": 1}'),
        ("delete", "/shelf?label=eq.zz&offset=1", {"Accept": OBJECT}, b""),
        ("post", "/rpc/numbers", {}, b"[1,2]"),
        ("post", "/rpc/numbers", {}, b"{bad"),
        ("post", "/rpc/numbers?select=n(", {}, b"{}"),
        ("post", "/rpc/numbers?order=n.sideways", {}, b"{}"),
        ("post", "/rpc/numbers?limit=-1", {}, b"{}"),
        ("post", "/rpc/numbers?or=(n.eq.1)", {}, b"{}"),
        ("post", "/rpc/numbers?n=in.1", {}, b"{}"),
        ("post", "/rpc/numbers?n=eq", {}, b"{}"),
        ("post", "/rpc/numbers?name=match.(", {}, b"{}"),
        ("post", "/rpc/numbers", {"Accept": OBJECT}, b"{}"),
        ("post", "/rpc/numbers", {"Accept": "text/csv"}, b"{}"),
        ("get", "/rpc/numbers?count=1&count=2", {}, b""),
        ("delete", "/rpc/numbers", {}, b""),
        ("patch", "/rpc/numbers", {}, b"{}"),
        ("head", "/rpc/numbers", {}, b""),
        ("get", "/rpc/", {}, b""),
        ("get", "/rpc", {}, b""),
    ]
    failures = []
    for method, path, headers, body in cases:
        response = http.request(method.upper(), path, headers=headers, content=body)
        if response.status_code >= 500:
            failures.append((method, path, body, response.status_code, response.text[:300]))
    http.delete("/shelf?label=like.fz*")
    assert not failures, failures


def test_missing_default_fills_absent_keys_with_column_defaults(http, shelves):
    body = [{"label": "md-1"}, {"label": "md-2", "rank": 3, "tags": ["t"]}]
    filled = http.post("/shelf?columns=label,rank,tags&select=label,rank,tags&order=label", json=body,
                       headers={"Prefer": "missing=default, return=representation"})
    assert filled.status_code == 201, filled.text
    assert filled.json() == [{"label": "md-1", "rank": None, "tags": []}, {"label": "md-2", "rank": 3, "tags": ["t"]}]
    assert filled.headers["preference-applied"] == "missing=default, return=representation"
    nulls = http.post("/shelf?columns=label,tags&select=label,tags", json=[{"label": "md-3"}],
                      headers={"Prefer": "return=representation"})
    assert nulls.json() == [{"label": "md-3", "tags": None}]  # as PostgREST: NULL unless missing=default
    http.delete("/shelf?label=like.md-*")


def test_rpc_get_arguments_of_json_types(http, shelves):
    assert http.get('/rpc/numbers?count=1&options={"a":1}').status_code == 200
    for bad in ("[", "", "{bad"):
        response = http.get(f"/rpc/numbers?count=1&options={bad}")
        assert response.status_code == 422 and response.json()["details"][0]["field"] == "options", response.text
