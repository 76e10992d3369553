"""PostgREST's dialect as PostgREST answers it (issue 13, REST half): single-object writes, the shaping of
write responses, statuses and headers, bodies, operators, select and rpc, each through PostgREST's own Python
client (`postgrest`) where it can say it, else HTTP; and every new way to reach rows is checked against a
user outside the row scope.

Tenant `dialect`: `person` (owned, each user reads only their own), `doc` (owned, read by its owner only,
two refs to `person`), `shelf` (public: the service key's ground for the dialect itself)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from postgrest import SyncPostgrestClient

from engine.database import Database
from functions.keys import create_api_key
from functions.tenants import create_tenant
from tests.server import running_gateway

SCHEMA = """
name: dialect
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
    permissions:
      read:   {anon: all, authenticated: all}
      create: {anon: all, authenticated: all}
"""
PASSWORD = "a long enough passphrase"
OBJECT = "application/vnd.pgrst.object+json"


def key(value: str) -> dict[str, str]:
    return {"apikey": value, "Authorization": f"Bearer {value}"}


@pytest.fixture(scope="module")
async def keys(db: Database) -> dict[str, str]:
    await create_tenant(db, "dialect", source=SCHEMA)
    await create_tenant(db, "elsewhere", source=SCHEMA)
    made = {role: (await create_api_key(db, "dialect", role, role)).key for role in ("anon", "service")}
    made["elsewhere"] = (await create_api_key(db, "elsewhere", "service", "service")).key
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
    assert "3 rows" in response.text
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
    response = httpx.post(f"{base}/rest/v1/doc?select=title,writer(name)&order=title.desc",
                          headers={**bob["headers"], "Prefer": "return=representation"},
                          json=[{"title": "b1", "writer_id": ann["person"]}, {"title": "b2", "writer_id": bob["person"]}])
    assert response.status_code == 201, response.text
    assert response.json() == [{"title": "b2", "writer": {"name": "Bob"}}, {"title": "b1", "writer": None}]


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


def test_an_unsupported_accept_is_406(http, shelves):
    response = http.get("/shelf", headers={"Accept": "application/xml"})
    assert response.status_code == 406 and response.json()["code"] == "PGRST107", response.text
    weighted = http.get("/shelf?select=label&limit=1", headers={"Accept": "application/xml, application/json;q=0.5"})
    assert weighted.status_code == 200 and weighted.headers["content-type"].startswith("application/json")
    written = http.post("/shelf", json={"label": "never"}, headers={"Accept": "text/xml"})
    assert written.status_code == 406
    assert http.get("/shelf?label=eq.never").json() == []


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
    http.delete("/shelf?label=like.col-*")
