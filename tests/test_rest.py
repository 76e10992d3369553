"""The REST dialect, driven by PostgREST's own Python client (`postgrest`) against a running gateway."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from postgrest import APIError, CountMethod, SyncPostgrestClient

from engine.database import Database
from functions.keys import create_api_key
from functions.tenants import create_tenant
from tests.server import running_gateway

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
async def blog(db: Database) -> Database:
    await create_tenant(db, "blog", source=(REPO / "schemas" / "blog.yaml").read_text())
    await create_tenant(db, "other", source=(REPO / "schemas" / "blog.yaml").read_text())
    return db


@pytest.fixture(scope="module")
async def keys(blog: Database) -> dict[str, str]:
    made = {}
    for slug in ("blog", "other"):
        for role in ("service", "anon"):
            made[f"{slug}_{role}"] = (await create_api_key(blog, slug, role, role)).key
    return made


def key_headers(key: str) -> dict[str, str]:
    """What Supabase's clients send: the key as `apikey` and as the bearer."""
    return {"apikey": key, "Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def base(blog: Database, database_url: str) -> Iterator[str]:
    with running_gateway(database_url) as url:
        yield url


@pytest.fixture(scope="module")
def http(base: str, keys: dict[str, str]) -> Iterator[httpx.Client]:
    with httpx.Client(headers=key_headers(keys["blog_service"])) as client:
        yield client


@pytest.fixture(scope="module")
def client(base: str, keys: dict[str, str]) -> SyncPostgrestClient:
    return SyncPostgrestClient(f"{base}/api/tenants/blog/rest/v1", headers=key_headers(keys["blog_service"]))


@pytest.fixture(scope="module")
def seeded(client: SyncPostgrestClient) -> dict[str, str]:
    authors = client.from_("author").insert([{"name": "Ann", "email": "ann@example.com"},
                                             {"name": "Bob", "email": "bob@example.com"}]).execute().data
    ids = {a["name"]: a["id"] for a in authors}
    posts = [
        {"title": "First", "status": "published", "author_id": ids["Ann"], "rating": 4.5, "tags": ["a", "b"]},
        {"title": "Second", "status": "draft", "author_id": ids["Ann"], "rating": 2.0, "tags": []},
        {"title": "Third", "status": "published", "author_id": ids["Bob"], "rating": None, "tags": ["c"]},
        {"title": "Fourth, with a comma", "status": "published", "author_id": ids["Bob"], "rating": 5.0, "tags": []},
    ]
    created = client.from_("post").insert(posts).execute().data
    first = next(p["id"] for p in created if p["title"] == "First")
    client.from_("comment").insert([{"post_id": first, "body": f"comment {i}"} for i in range(5)]).execute()
    return {**ids, "first": first}


def titles(response) -> list[str]:
    return [row["title"] for row in response.data]


@pytest.mark.parametrize(("method", "args", "expected"), [
    ("eq", ("status", "draft"), ["Second"]),
    ("neq", ("status", "draft"), ["First", "Fourth, with a comma", "Third"]),
    ("gt", ("rating", 4.5), ["Fourth, with a comma"]),
    ("gte", ("rating", 4.5), ["First", "Fourth, with a comma"]),
    ("lt", ("rating", 4.5), ["Second"]),
    ("lte", ("rating", 2), ["Second"]),
    ("like", ("title", "*ir*"), ["First", "Third"]),
    ("ilike", ("title", "f*"), ["First", "Fourth, with a comma"]),
    ("in_", ("title", ["First", "Fourth, with a comma"]), ["First", "Fourth, with a comma"]),
    ("is_", ("rating", "null"), ["Third"]),
])
def test_every_filter_operator(client, seeded, method, args, expected):
    query = getattr(client.from_("post").select("title"), method)(*args).order("title")
    assert titles(query.execute()) == expected


def test_reads_of_one_shape_answer_each_with_their_own_values(http, base, seeded):
    """Reads that differ only in their comparisons' operands share one preparation (engine/rest/shapes.py)."""
    url = f"{base}/api/tenants/blog/rest/v1/post"
    answers = {(status, title): [row["title"] for row in http.get(url, params={
        "select": "title", "status": f"eq.{status}", "title": f"not.eq.{title}", "order": "title"}).json()]
        for status in ("published", "draft", "nothing") for title in ("First", '"Third"', "Second")}
    assert answers == {
        ("published", "First"): ["Fourth, with a comma", "Third"], ("published", '"Third"'): ["First", "Fourth, with a comma"],
        ("published", "Second"): ["First", "Fourth, with a comma", "Third"], ("draft", "First"): ["Second"],
        ("draft", '"Third"'): ["Second"], ("draft", "Second"): [], ("nothing", "First"): [], ("nothing", '"Third"'): [],
        ("nothing", "Second"): []}
    one = [http.get(url, params={"select": "title", "id": f"eq.{seeded['first']}"}).json(),
           http.get(url, params={"select": "title", "id": "eq.not-a-uuid"})]
    assert one[0] == [{"title": "First"}] and one[1].status_code == 400, one[1].text


def test_not_negates_a_filter(client, seeded):
    assert titles(client.from_("post").select("title").not_.eq("status", "published").execute()) == ["Second"]
    assert titles(client.from_("post").select("title").not_.is_("rating", "null").order("title").execute()) == [
        "First", "Fourth, with a comma", "Second"]


def test_or_and_nested_and(client, seeded):
    response = client.from_("post").select("title").or_("status.eq.draft,and(rating.gte.5,status.eq.published)") \
        .order("title").execute()
    assert titles(response) == ["Fourth, with a comma", "Second"]


def test_embed_many_to_one_and_one_to_many_with_their_own_order_and_limit(client, seeded):
    post = client.from_("post").select("title,author(name),comments(body)").eq("id", seeded["first"]) \
        .order("body", foreign_table="comments", desc=True).limit(2, foreign_table="comments").execute().data[0]
    assert post["author"] == {"name": "Ann"}
    assert [c["body"] for c in post["comments"]] == ["comment 4", "comment 3"]
    authors = client.from_("author").select("name,posts(title)").order("name").execute().data
    assert [(a["name"], sorted(p["title"] for p in a["posts"])) for a in authors] == [
        ("Ann", ["First", "Second"]), ("Bob", ["Fourth, with a comma", "Third"])]


def test_embeds_nest_to_any_depth_with_renames(client, seeded):
    authors = client.from_("author").select("who:name,posts(headline:title,comments(body))").eq("name", "Ann") \
        .execute().data
    assert authors[0]["who"] == "Ann"
    first = next(p for p in authors[0]["posts"] if p["headline"] == "First")
    assert len(first["comments"]) == 5


def test_order_with_nulls_first_and_last(client, seeded):
    last = client.from_("post").select("title").order("rating", desc=True, nullsfirst=False).execute()
    assert titles(last)[-1] == "Third"
    first = client.from_("post").select("title").order("rating", nullsfirst=True).execute()
    assert titles(first)[0] == "Third"


def test_limit_offset_and_range_with_exact_count(client, seeded):
    response = client.from_("post").select("title", count=CountMethod.exact).order("title").range(1, 2).execute()
    assert titles(response) == ["Fourth, with a comma", "Second"] and response.count == 4
    page = client.from_("post").select("title").order("title").limit(1).offset(3).execute()
    assert titles(page) == ["Third"]


def test_content_range_header(http, base, seeded):
    response = http.get(f"{base}/api/tenants/blog/rest/v1/post?select=title&limit=2", headers={"Prefer": "count=exact"})
    assert response.headers["content-range"] == "0-1/4"


def test_single_object_or_406(client, seeded):
    one = client.from_("post").select("title").eq("title", "First").single().execute()
    assert one.data == {"title": "First"}
    with pytest.raises(APIError) as many:
        client.from_("post").select("title").single().execute()
    assert many.value.code == "PGRST116"


def test_head_returns_headers_only(http, base, seeded):
    response = http.head(f"{base}/api/tenants/blog/rest/v1/post", headers={"Prefer": "count=exact"})
    assert response.status_code == 200 and response.content == b"" and response.headers["content-range"].endswith("/4")


def test_insert_one_returns_location_and_representation(http, base, client, seeded):
    response = http.post(f"{base}/api/tenants/blog/rest/v1/author", json={"name": "Cy"},
                          headers={"Prefer": "return=representation"})
    assert response.status_code == 201 and "location" not in response.headers  # as PostgREST: headers-only
    created = response.json()[0]
    only = http.post(f"{base}/api/tenants/blog/rest/v1/author", json={"name": "Cy2"},
                     headers={"Prefer": "return=headers-only"})
    assert only.status_code == 201 and only.content == b"" and only.headers["location"].startswith("/author?id=eq.")
    assert only.headers["location"] != f"/author?id=eq.{created['id']}"
    minimal = http.post(f"{base}/api/tenants/blog/rest/v1/author", json={"name": "Di"})
    assert minimal.status_code == 201 and minimal.content == b"" and "location" not in minimal.headers


def test_bulk_insert_is_all_or_nothing(client, seeded):
    with pytest.raises(APIError) as failed:
        client.from_("author").insert([{"name": "Ok", "email": "ok@example.com"},
                                       {"name": "Dup", "email": "ann@example.com"}]).execute()
    assert failed.value.code == "23505"
    assert client.from_("author").select("name").eq("name", "Ok").execute().data == []


def test_upsert_merge_and_ignore_duplicates(client, seeded):
    merged = client.from_("author").upsert({"email": "ann@example.com", "name": "Ann B."}, on_conflict="email").execute()
    assert merged.data[0]["name"] == "Ann B." and merged.data[0]["id"] == seeded["Ann"]
    ignored = client.from_("author").upsert({"email": "ann@example.com", "name": "Nope"}, on_conflict="email",
                                            ignore_duplicates=True).execute()
    assert ignored.data == []
    assert client.from_("author").select("name").eq("id", seeded["Ann"]).execute().data == [{"name": "Ann B."}]
    client.from_("author").update({"name": "Ann"}).eq("id", seeded["Ann"]).execute()


def test_update_returns_changed_rows(client, seeded):
    changed = client.from_("post").update({"rating": 3}).eq("title", "Second").execute()
    assert [(p["title"], p["rating"]) for p in changed.data] == [("Second", 3)]
    client.from_("post").update({"rating": 2}).eq("title", "Second").execute()


def test_delete_returns_deleted_rows(client, seeded):
    client.from_("author").insert({"name": "Temp"}).execute()
    deleted = client.from_("author").delete().eq("name", "Temp").execute()
    assert [a["name"] for a in deleted.data] == ["Temp"]


@pytest.mark.parametrize("method", ["patch", "delete"])
def test_unfiltered_update_or_delete_is_refused(http, base, method):
    response = http.request(method.upper(), f"{base}/api/tenants/blog/rest/v1/post", json={"rating": 1})
    assert response.status_code == 400 and response.json()["code"] == "21000"


@pytest.mark.parametrize(("path", "status", "code"), [
    ("nowhere", 404, "42P01"),
    ("post?nope=eq.1", 400, "42703"),
    ("post?select=nope", 400, "42703"),
    ("post?title=zz.1", 400, "PGRST100"),
    ("post?title=eq", 400, "PGRST100"),
    ("post?rating=gt.high", 400, "22P02"),
    ("post?id=eq.not-a-uuid", 400, "22P02"),
    ("post?published_at=gt.someday", 400, "22007"),
    ("post?select=*,nothing(*)", 400, "PGRST200"),
    ("post?order=title.sideways", 400, "PGRST100"),
    ("post?limit=-1", 400, "PGRST100"),
    ("post?limit=%C2%B2", 400, "PGRST100"),
    ("post?or=(title.eq.a", 400, "PGRST100"),
])
def test_read_errors_have_postgrest_shape_and_status(http, base, path, status, code):
    response = http.get(f"{base}/api/tenants/blog/rest/v1/{path}")
    body = response.json()
    assert response.status_code == status and body["code"] == code, body
    assert set(body) == {"code", "message", "details", "hint", "request_id"}  # PostgREST's four, and the trace id
    assert body["request_id"] == response.headers["x-request-id"]


@pytest.mark.parametrize(("entity", "body", "status", "code"), [
    ("post", b"{not json", 400, "PGRST102"),
    ("post", b"[1, 2]", 400, "PGRST102"),
    ("post", b'[{"title": "a"}, {"body": "b"}]', 400, "PGRST102"),
    ("post", b'{"title": "x", "author_id": "00000000-0000-0000-0000-000000000000"}', 409, "23503"),
    ("author", b'{"email": "a@b.c"}', 422, "validation_failed"),
])
def test_write_errors_have_their_status(http, base, entity, body, status, code):
    response = http.post(f"{base}/api/tenants/blog/rest/v1/{entity}", content=body,
                          headers={"Content-Type": "application/json"})
    assert response.status_code == status and response.json()["code"] == code, response.json()


def test_validation_lists_every_field_error(http, base):
    response = http.post(f"{base}/api/tenants/blog/rest/v1/post",
                          json={"rating": 5.5, "status": "gone", "id": "x", "created_at": "x", "extra": 1, "tags": "no"})
    assert response.status_code == 422
    details = {d["field"]: d["message"] for d in response.json()["details"]}
    assert details == {
        "title": "is required", "rating": "5.5 is greater than the maximum of 5",
        "status": "'gone' is not one of ['draft', 'published']", "id": "'x' is not a 'uuid'", "created_at": "is read-only",
        "extra": "is not a field of this entity", "tags": "'no' is not of type 'array', 'null'"}


def test_a_null_for_a_required_field_is_named_in_jsons_words(http, base):
    response = http.post(f"{base}/api/tenants/blog/rest/v1/post", json={"title": None})
    assert response.status_code == 422 and response.json()["details"] == [
        {"field": "title", "message": "null is not of type 'string'"}], response.text


def test_formats_are_checked(http, base):
    response = http.post(f"{base}/api/tenants/blog/rest/v1/author", json={"name": "E", "email": "not-an-email"})
    assert response.status_code == 422 and response.json()["details"][0]["field"] == "email"


def test_internal_fields_are_neither_readable_nor_writable(http, base):
    read = http.get(f"{base}/api/tenants/blog/rest/v1/users?select=password_hash")
    assert read.status_code == 400
    written = http.post(f"{base}/api/tenants/blog/rest/v1/users", json={"email": "u@example.com", "password_hash": "x"})
    assert written.status_code == 422


def test_a_user_is_given_only_roles_the_tenant_has(http, base):
    """A role name the schema does not declare would be dropped from the user's token without a word: refused."""
    users = f"{base}/api/tenants/blog/rest/v1/users"
    for roles in (["nosuchrole"], ["member", "platform_admin"], ["anon"], [""]):
        refused = http.post(users, json={"email": "roles@example.com", "roles": roles})
        assert refused.status_code == 422 and refused.json()["details"][0]["field"] == "roles", (roles, refused.text)
    made = http.post(users, json={"email": "roles@example.com", "roles": ["member", "editor"]},
                     headers={"Prefer": "return=representation"})
    assert made.status_code == 201 and made.json()[0]["roles"] == ["member", "editor"], made.text
    patched = http.patch(f"{users}?email=eq.roles@example.com", json={"roles": ["editor", "x"]})
    assert patched.status_code == 422 and http.get(f"{users}?email=eq.roles@example.com&select=roles").json() == [
        {"roles": ["member", "editor"]}]
    http.delete(f"{users}?email=eq.roles@example.com")


def test_another_tenants_rows_are_not_visible_through_this_tenants_url(base, client, seeded, keys):
    other = SyncPostgrestClient(f"{base}/api/tenants/other/rest/v1", headers=key_headers(keys["other_service"]))
    assert other.from_("post").select("title").execute().data == []
    other.from_("author").insert({"name": "Other"}).execute()
    assert client.from_("author").select("name").eq("name", "Other").execute().data == []


def test_supabase_profile_headers_are_accepted_and_others_refused(http, base, seeded):
    ok = http.get(f"{base}/api/tenants/blog/rest/v1/post?select=title", headers={"Accept-Profile": "public"})
    assert ok.status_code == 200
    refused = http.get(f"{base}/api/tenants/blog/rest/v1/post", headers={"Accept-Profile": "t_other"})
    assert refused.status_code == 406 and refused.json()["code"] == "PGRST106"


def test_json_types_timestamps_with_offset_and_uuids_as_strings(client, seeded):
    post = client.from_("post").select("id,created_at,tags,meta").eq("id", seeded["first"]).single().execute().data
    assert post["created_at"].endswith("+00:00") and isinstance(post["id"], str) and post["tags"] == ["a", "b"]


def test_openapi_document_is_valid_openapi_3_1_and_lists_every_entity(http, base, seeded):
    from openapi_spec_validator import validate

    response = http.get(f"{base}/api/tenants/blog/rest/v1/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("application/openapi+json")
    document = response.json()
    validate(document)
    assert document["openapi"] == "3.1.0"
    assert set(document["paths"]) == {"/author", "/post", "/comment", "/users", "/rpc/whoami"}
    assert set(document["paths"]["/post"]) == {"get", "head", "post", "patch", "delete"}
    assert document["components"]["schemas"]["post_create"]["required"] == ["title"]
    assert document["servers"][0]["url"] == f"{base}/api/tenants/blog/rest/v1"


def test_openapi_describes_a_ref_column_as_postgrest_does_naming_its_target(http, base):
    schemas = http.get(f"{base}/api/tenants/blog/rest/v1/").json()["components"]["schemas"]
    note = "Note:\nThis is a Foreign Key to `author.id`.<fk table='author' column='id'/>"
    assert schemas["post"]["properties"]["author_id"]["description"] == note
    assert schemas["post_create"]["properties"]["author_id"]["description"] == note
    assert "description" not in schemas["post_create"]["properties"]["title"]


def test_supabase_sdk_reads_embeds_and_writes(base, seeded, keys):
    from supabase import create_client

    client = create_client(f"{base}/api/tenants/blog", keys["blog_service"])
    posts = client.table("post").select("title,author(name)").eq("title", "First").execute().data
    assert posts == [{"title": "First", "author": {"name": "Ann"}}]
    created = client.table("author").insert({"name": "Via SDK"}).execute().data
    assert created[0]["name"] == "Via SDK"
    assert client.table("author").delete().eq("id", created[0]["id"]).execute().data[0]["name"] == "Via SDK"


def test_oversized_bodies_and_unsupported_methods_are_refused(http, base):
    too_big = http.post(f"{base}/api/tenants/blog/rest/v1/post", content=b"[" + b" " * (11 * 1024 * 1024) + b"]",
                         headers={"Content-Type": "application/json"})
    assert too_big.status_code == 413 and too_big.json()["code"] == "body_too_large"
    traced = http.request("TRACE", f"{base}/api/tenants/blog/rest/v1/post")
    assert traced.status_code == 405 and "PATCH" in traced.headers["allow"] and "PUT" in traced.headers["allow"]
    put = http.put(f"{base}/api/tenants/blog/rest/v1/post", json={})  # PUT names one row by its id
    assert put.status_code == 405 and put.json()["code"] == "PGRST105"


def test_filters_on_an_embed_filter_the_embedded_rows_only(client, seeded):
    posts = client.from_("post").select("title,comments(body)").eq("id", seeded["first"]) \
        .eq("comments.body", "comment 2").execute().data
    assert posts == [{"title": "First", "comments": [{"body": "comment 2"}]}]


@pytest.fixture(scope="module")
async def shop(db: Database) -> httpx.Client:
    await create_tenant(db, "shop", source="name: shop\nentities:\n  item:\n    fields:\n"
                                           "      price: {type: decimal, precision: 8, scale: 2}\n"
                                           "      launch: {type: date}\n      big: {type: bigint}\n")
    return httpx.Client(headers=key_headers((await create_api_key(db, "shop", "service", "service")).key))


def test_decimals_are_numbers_and_dates_iso(base, shop):
    """As PostgREST sends numeric: a JSON number, written exactly as the database holds it (`12.30`)."""
    http = shop
    rest = f"{base}/api/tenants/shop/rest/v1/item"
    response = http.post(rest, json={"price": "12.30", "launch": "2024-02-29", "big": 9007199254740993},
                         headers={"Prefer": "return=representation"})
    assert b'"price":12.30' in response.content
    created = response.json()[0]
    assert created["price"] == 12.3 and created["launch"] == "2024-02-29" and created["big"] == 9007199254740993
    assert http.get(rest, params={"price": "gte.12.3", "select": "price"}).json() == [{"price": 12.3}]
    assert http.get(rest, params={"select": "price::text"}).json() == [{"price": "12.30"}]  # a string when asked
    too_precise = http.post(rest, json={"price": 1234567.891})
    assert too_precise.status_code == 422 and too_precise.json()["details"][0]["field"] == "price"


def test_a_timestamp_sent_for_a_date_is_its_date_as_postgres_casts_it(base, shop):
    """What `new Date().toISOString()` sends from a browser."""
    made = shop.post(f"{base}/api/tenants/shop/rest/v1/item", json={"launch": "2024-03-01T23:30:00.000Z", "big": "7"},
                     headers={"Prefer": "return=representation"})
    assert made.status_code == 201 and (made.json()[0]["launch"], made.json()[0]["big"]) == ("2024-03-01", 7), made.text


def test_requests_without_a_key_act_as_anon(base, seeded):
    read = httpx.get(f"{base}/api/tenants/blog/rest/v1/post?select=title&limit=1")
    assert read.status_code == 200 and len(read.json()) == 1  # blog.yaml lets anon read posts
    write = httpx.post(f"{base}/api/tenants/blog/rest/v1/post", json={"title": "anonymous"})
    assert write.status_code == 403 and write.json()["code"] == "permission_denied"


def test_the_anon_key_is_the_anon_role(base, keys, seeded):
    headers = key_headers(keys["blog_anon"])
    assert httpx.get(f"{base}/api/tenants/blog/rest/v1/post?select=title", headers=headers).status_code == 200
    assert httpx.delete(f"{base}/api/tenants/blog/rest/v1/post?id=eq.{seeded['first']}", headers=headers).status_code == 403


@pytest.mark.parametrize(("headers", "code"), [
    ({"apikey": "bsk_not-a-real-key"}, "invalid_api_key"),
    ({"apikey": "plainly wrong"}, "invalid_api_key"),
    ({"Authorization": "Bearer eyJhbGciOiJub25lIn0.eyJyb2xlIjoic2VydmljZSJ9."}, "invalid_token"),
])
def test_unknown_keys_and_tokens_are_401(base, headers, code):
    response = httpx.get(f"{base}/api/tenants/blog/rest/v1/post", headers=headers)
    assert response.status_code == 401 and response.json()["code"] == code


def test_another_tenants_key_is_401_tenant_mismatch_and_reveals_nothing(base, keys, seeded):
    for method in ("GET", "POST", "PATCH", "DELETE"):
        response = httpx.request(method, f"{base}/api/tenants/blog/rest/v1/post?id=eq.{seeded['first']}",
                                 headers=key_headers(keys["other_service"]), json={"title": "x"})
        assert response.status_code == 401 and response.json()["code"] == "tenant_mismatch"
        assert "First" not in response.text


def test_the_bearer_decides_the_role_and_the_apikey_beside_it_must_hold(base, keys):
    url = f"{base}/api/tenants/blog/rest/v1/post?id=eq.00000000-0000-0000-0000-000000000000"
    as_service = httpx.delete(url, headers={"apikey": keys["blog_anon"], "Authorization": f"Bearer {keys['blog_service']}"})
    assert as_service.status_code == 204  # anon may not delete posts; the service key as the bearer may
    bad_key = httpx.get(url, headers={"apikey": "bsk_forged", "Authorization": f"Bearer {keys['blog_service']}"})
    assert bad_key.status_code == 401 and bad_key.json()["code"] == "invalid_api_key"


async def test_a_revoked_key_is_refused_at_once(base, blog):
    import asyncio

    from functions.keys import revoke_api_key

    key = (await create_api_key(blog, "blog", "short-lived", "service")).key
    url = f"{base}/api/tenants/blog/rest/v1/post?select=title&limit=1"
    async with httpx.AsyncClient(headers=key_headers(key)) as http:
        assert (await http.get(url)).status_code == 200  # now cached by the gateway
        await revoke_api_key(blog, "blog", "short-lived")
        for _ in range(50):  # the NOTIFY reaches the gateway within milliseconds
            if (await http.get(url)).status_code == 401:
                break
            await asyncio.sleep(0.02)
        assert (await http.get(url)).json()["code"] == "key_revoked"


async def test_an_expired_key_is_refused(base, blog):
    from datetime import UTC, datetime, timedelta

    key = (await create_api_key(blog, "blog", "expired", "service", datetime.now(UTC) - timedelta(seconds=1))).key
    response = httpx.get(f"{base}/api/tenants/blog/rest/v1/post", headers=key_headers(key))
    assert response.status_code == 401 and response.json()["code"] == "key_expired"


def test_a_range_with_non_ascii_digits_is_400(http, base):
    response = http.get(f"{base}/api/tenants/blog/rest/v1/post", headers={"Range": "0-\u00b2".encode("latin-1")})
    assert response.status_code == 400 and response.json()["code"] == "PGRST100"


def test_an_embed_is_authorized_like_a_read_of_its_own(base, seeded):
    # anon may read comments (blog.yaml) but not users: embedding them is refused, not a way around it
    embedded = httpx.get(f"{base}/api/tenants/blog/rest/v1/comment?select=body,owner(email)")
    assert embedded.status_code == 403 and embedded.json()["code"] == "permission_denied"
    assert "@" not in embedded.text
    assert httpx.get(f"{base}/api/tenants/blog/rest/v1/comment?select=body").status_code == 200


def test_a_single_object_write_that_touches_several_rows_is_406_and_changes_nothing(http, base, seeded):
    headers = {"Accept": "application/vnd.pgrst.object+json", "Prefer": "return=representation"}
    response = http.patch(f"{base}/api/tenants/blog/rest/v1/post?status=eq.published", json={"views": 99},
                          headers=headers)
    assert response.status_code == 406 and response.json()["code"] == "PGRST116"
    views = http.get(f"{base}/api/tenants/blog/rest/v1/post?select=views&status=eq.published").json()
    assert all(v["views"] != 99 for v in views)
