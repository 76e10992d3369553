"""Row scopes hold for every operation kind (issue 11, findings 2-4): an upsert is an update of the row it
meets (update permission, the update's row scope, owner_id untouched), ordering through a relation sees only
the related rows the caller may read, and whatever a write returns passes through the read scope.

Two users of one tenant, ann and bob; each test attacks ann's rows as bob (or as anon) through REST and
GraphQL, then checks with the service key that nothing changed that should not have."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from engine.database import Database
from functions.keys import create_api_key
from functions.tenants import create_tenant
from tests.server import running_gateway

SCHEMA = """
name: scoped
entities:
  post:                       # private to its owner; anyone may create one
    owner: true
    fields:
      title: {type: string, required: true}
      slug:  {type: string, unique: true}
    permissions:
      read:   {authenticated: own}
      create: {anon: all, authenticated: all}
      update: {authenticated: own}
      delete: {authenticated: own}
  comment:                    # public, pointing at private posts
    owner: true
    fields:
      body: {type: text, required: true}
      post: {type: ref, to: post, reverse: comments}
    permissions:
      read:   {authenticated: all}
      create: {authenticated: all}
  reply:                      # a user's own reply to a post: it may name only a post its writer may read
    owner: true
    fields:
      text: {type: text}
      post: {type: ref, to: post, reverse: replies}
      parent: {type: ref, to: reply, reverse: answers}
    permissions:
      read:   {authenticated: own}
      create: {authenticated: all}
      update: {authenticated: own}
      delete: {authenticated: own}
  users:                      # a user's favourite post, set through /auth/v1's metadata
    fields:
      favorite: {type: ref, to: post}
  box:                        # a drop box: anyone signed in may write any box, but reads only their own
    owner: true
    fields:
      label: {type: string, unique: true, required: true}
      note:  {type: text}
    permissions:
      read:   {authenticated: own}
      create: {authenticated: all}
      update: {authenticated: all}
      delete: {authenticated: all}
  locker:                     # the drop box again, written row by row through its hooks
    owner: true
    fields:
      note: {type: text}
    permissions:
      read:   {authenticated: own}
      create: {authenticated: all}
      update: {authenticated: all}
      delete: {authenticated: all}
    hooks:
      before_update: [examples.noop]
      before_delete: [examples.noop]
  diary:                      # private to its owner, written through after hooks alone: one statement a write
    owner: true
    fields:
      note: {type: text}
    permissions:
      read:   {authenticated: own}
      create: {authenticated: all}
      update: {authenticated: own}
    hooks:
      after_create: [examples.noop]
      after_update: [examples.noop]
  guestbook:                  # anon may read and sign, never change a line
    fields:
      line: {type: string, unique: true, required: true}
    permissions:
      read:   {anon: all}
      create: {anon: all}
"""
PASSWORD = "a long enough passphrase"


@pytest.fixture(scope="module")
async def keys(db: Database) -> dict[str, str]:
    await create_tenant(db, "scoped", source=SCHEMA)
    return {role: (await create_api_key(db, "scoped", role, role)).key for role in ("anon", "service")}


@pytest.fixture(scope="module")
async def stranger(db: Database) -> dict[str, str]:
    """The service key of another tenant, as both headers."""
    await create_tenant(db, "stranger", source="name: stranger\nentities:\n  thing:\n    fields:\n      x: {type: text}\n")
    return key((await create_api_key(db, "stranger", "service", "service")).key)


@pytest.fixture(scope="module")
def base(keys: dict[str, str], database_url: str) -> Iterator[str]:
    with running_gateway(database_url) as url:
        yield f"{url}/api/tenants/scoped"


def key(value: str) -> dict[str, str]:
    return {"apikey": value, "Authorization": f"Bearer {value}"}


@pytest.fixture(scope="module")
def people(base: str, keys: dict[str, str]) -> dict[str, dict[str, Any]]:
    found = {}
    for name in ("ann", "bob"):
        response = httpx.post(f"{base}/auth/v1/signup", headers={"apikey": keys["anon"]},
                              json={"email": f"{name}@example.com", "password": PASSWORD})
        assert response.status_code == 200, response.text
        session = response.json()
        found[name] = {"id": session["user"]["id"], "headers": {"Authorization": f"Bearer {session['access_token']}"}}
    return found


def create(base: str, who: dict[str, str], entity: str, body: dict[str, Any]) -> dict[str, Any]:
    response = httpx.post(f"{base}/rest/v1/{entity}", headers={**who, "Prefer": "return=representation"}, json=body)
    assert response.status_code == 201, response.text
    return response.json()[0]


def stored(base: str, keys: dict[str, str], entity: str, row_id: str) -> dict[str, Any] | None:
    rows = httpx.get(f"{base}/rest/v1/{entity}?id=eq.{row_id}", headers=key(keys["service"])).json()
    return rows[0] if rows else None


def graphql(base: str, who: dict[str, str], query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    response = httpx.post(f"{base}/graphql/v1", headers=who, json={"query": query, "variables": variables or {}})
    assert response.status_code == 200, response.text
    return response.json()


MERGE = {"Prefer": "resolution=merge-duplicates,return=representation"}


# -- finding 2: an upsert is an update of the row it meets --


def test_rest_upsert_over_another_users_row_is_refused_and_changes_nothing(base, keys, people):
    ann, bob = people["ann"], people["bob"]
    post = create(base, ann["headers"], "post", {"title": "ann's draft", "slug": "ann-rest-1"})
    by_slug = httpx.post(f"{base}/rest/v1/post?on_conflict=slug", headers={**bob["headers"], **MERGE},
                         json={"title": "bob was here", "slug": "ann-rest-1"})
    assert by_slug.status_code == 403 and by_slug.json()["code"] == "permission_denied", by_slug.text
    assert "ann's draft" not in by_slug.text
    after = stored(base, keys, "post", post["id"])
    assert after is not None and after["title"] == "ann's draft" and after["owner_id"] == ann["id"]


def test_rest_bulk_upsert_with_one_foreign_row_writes_nothing(base, keys, people):
    ann, bob = people["ann"], people["bob"]
    post = create(base, ann["headers"], "post", {"title": "ann's", "slug": "ann-bulk"})
    response = httpx.post(f"{base}/rest/v1/post?on_conflict=slug", headers={**bob["headers"], **MERGE},
                          json=[{"title": "bob's new", "slug": "bob-bulk"}, {"title": "taken", "slug": "ann-bulk"}])
    assert response.status_code == 403, response.text
    assert stored(base, keys, "post", post["id"])["title"] == "ann's"
    assert httpx.get(f"{base}/rest/v1/post?slug=eq.bob-bulk", headers=key(keys["service"])).json() == []


def test_rest_upsert_of_ones_own_row_updates_it(base, keys, people):
    ann = people["ann"]
    post = create(base, ann["headers"], "post", {"title": "first", "slug": "ann-own-upsert"})
    response = httpx.post(f"{base}/rest/v1/post?on_conflict=slug", headers={**ann["headers"], **MERGE},
                          json={"title": "second", "slug": "ann-own-upsert"})
    assert response.status_code == 200, response.text  # PostgREST: an upsert that only updated is 200
    assert [(r["id"], r["title"]) for r in response.json()] == [(post["id"], "second")]


def test_a_create_only_role_cannot_merge_duplicates(base, keys, people):
    post = create(base, people["ann"]["headers"], "post", {"title": "kept", "slug": "anon-target"})
    response = httpx.post(f"{base}/rest/v1/post?on_conflict=slug", headers={**key(keys["anon"]), **MERGE},
                          json={"title": "overwritten", "slug": "anon-target"})
    assert response.status_code == 403 and response.json()["code"] == "permission_denied", response.text
    line = httpx.post(f"{base}/rest/v1/guestbook", headers=key(keys["anon"]), json={"line": "hello"})
    assert line.status_code == 201
    again = httpx.post(f"{base}/rest/v1/guestbook?on_conflict=line", headers={**key(keys["anon"]), **MERGE},
                       json={"line": "hello"})
    assert again.status_code == 403
    assert stored(base, keys, "post", post["id"])["title"] == "kept"


def test_an_upsert_never_moves_the_owner_and_never_shows_an_unreadable_row(base, keys, people):
    ann, bob = people["ann"], people["bob"]
    box = create(base, ann["headers"], "box", {"label": "ann-box-rest", "note": "ann's note"})
    response = httpx.post(f"{base}/rest/v1/box?on_conflict=label", headers={**bob["headers"], **MERGE},
                          json={"label": "ann-box-rest", "note": "bob's note"})
    assert response.status_code == 200, response.text  # updated, not created
    assert response.json() == []  # written (update: all) but not shown (read: own)
    after = stored(base, keys, "box", box["id"])
    assert after["note"] == "bob's note" and after["owner_id"] == ann["id"]


def test_graphql_on_conflict_over_another_users_row_is_refused_and_changes_nothing(base, keys, people):
    ann, bob = people["ann"], people["bob"]
    post = create(base, ann["headers"], "post", {"title": "ann's graph", "slug": "ann-graph-1"})
    answer = graphql(base, bob["headers"], """mutation {
        insert_post_one(object: {title: "bob was here", slug: "ann-graph-1"},
                        on_conflict: {constraint: post_slug_key, update_columns: [title]}) { id title owner_id } }""")
    assert answer["errors"][0]["extensions"]["code"] == "permission-error", answer
    assert "ann's graph" not in str(answer)
    bulk = graphql(base, bob["headers"], """mutation {
        insert_post(objects: [{title: "x", slug: "ann-graph-1"}],
                    on_conflict: {constraint: post_slug_key, update_columns: [title]}) { affected_rows } }""")
    assert bulk["errors"][0]["extensions"]["code"] == "permission-error", bulk
    after = stored(base, keys, "post", post["id"])
    assert after["title"] == "ann's graph" and after["owner_id"] == ann["id"]


def test_graphql_upsert_returning_hides_a_row_the_caller_may_not_read(base, keys, people):
    ann, bob = people["ann"], people["bob"]
    box = create(base, ann["headers"], "box", {"label": "ann-box-graph", "note": "ann's"})
    answer = graphql(base, bob["headers"], """mutation {
        insert_box(objects: [{label: "ann-box-graph", note: "bob's"}],
                   on_conflict: {constraint: box_label_key, update_columns: [note]}) {
          affected_rows returning { id note owner_id } } }""")
    assert "errors" not in answer, answer
    assert answer["data"]["insert_box"]["returning"] == []
    after = stored(base, keys, "box", box["id"])
    assert after["note"] == "bob's" and after["owner_id"] == ann["id"]


def test_graphql_offers_on_conflict_only_to_roles_that_may_update(base, keys, people):
    query = '{ __type(name: "mutation_root") { fields { name args { name } } } }'
    def arguments(who: dict[str, str]) -> dict[str, set[str]]:
        fields = graphql(base, who, query)["data"]["__type"]["fields"]
        return {f["name"]: {a["name"] for a in f["args"]} for f in fields}

    anon = arguments(key(keys["anon"]))
    assert "on_conflict" not in anon["insert_guestbook"] and "on_conflict" not in anon["insert_guestbook_one"]
    signed_in = arguments(people["bob"]["headers"])
    assert "on_conflict" in signed_in["insert_box"] and "on_conflict" in signed_in["insert_post_one"]
    refused = graphql(base, key(keys["anon"]), """mutation {
        insert_guestbook_one(object: {line: "hi"}, on_conflict: {constraint: guestbook_line_key, update_columns: []})
        { id } }""")
    assert refused["errors"], refused


# -- a reference names only a row its writer may read (review of stop 31) --


def test_a_write_cannot_name_a_row_its_writer_may_not_read_nor_tell_it_from_a_missing_one(base, keys, people, stranger):
    """Bob may not point his reply at ann's private post: refused exactly as a post that does not exist
    (no existence oracle), through every write path; so he cannot pin her post either (her delete holds)."""
    ann, bob = people["ann"], people["bob"]
    secret = create(base, ann["headers"], "post", {"title": "ann's unseen post"})
    mine = create(base, bob["headers"], "post", {"title": "bob's own post"})
    reply = create(base, bob["headers"], "reply", {"text": "on my own post", "post_id": mine["id"]})
    missing = "00000000-0000-4000-8000-000000000000"
    answers = {}
    for target in (secret["id"], missing):
        attempts = {
            "POST": httpx.post(f"{base}/rest/v1/reply", headers=bob["headers"], json={"text": "x", "post_id": target}),
            "POST many": httpx.post(f"{base}/rest/v1/reply", headers=bob["headers"],
                                    json=[{"text": "a", "post_id": mine["id"]}, {"text": "b", "post_id": target}]),
            "PATCH": httpx.patch(f"{base}/rest/v1/reply?id=eq.{reply['id']}", headers=bob["headers"],
                                 json={"post_id": target}),
            "upsert": httpx.post(f"{base}/rest/v1/reply", json={"id": reply["id"], "text": "x", "post_id": target},
                                 headers={**bob["headers"], "Prefer": "resolution=merge-duplicates"}),
        }
        for name, response in attempts.items():
            assert response.status_code == 409 and response.json()["code"] == "23503", (name, response.text)
        answers[target] = {name: (r.json()["message"], r.json()["details"].replace(target, "<id>"))
                           for name, r in attempts.items()}
        for query, variables in (
                ("mutation($p: uuid) { insert_reply_one(object: {text: \"g\", post_id: $p}) { id } }", {"p": target}),
                ("mutation($id: uuid!, $p: uuid) { update_reply_by_pk(pk_columns: {id: $id}, _set: {post_id: $p}) "
                 "{ id } }", {"id": reply["id"], "p": target}),
                ("mutation($id: uuid!, $p: uuid) { update_reply(where: {id: {_eq: $id}}, _set: {post_id: $p}) "
                 "{ affected_rows } }", {"id": reply["id"], "p": target}),
                ("mutation($p: uuid) { insert_reply(objects: [{text: \"a\"}, {text: \"b\", post_id: $p}]) "
                 "{ affected_rows } }", {"p": target})):
            refused = graphql(base, bob["headers"], query, variables)
            assert refused.get("errors") and refused["errors"][0]["extensions"]["code"] == "constraint-violation", \
                (query, refused)
        auth = f"{base}/auth/v1"
        favorite = httpx.put(f"{auth}/user", headers={"apikey": keys["anon"], **bob["headers"]},
                             json={"data": {"favorite_id": target}})
        assert favorite.status_code == 409 and favorite.json()["code"] == "23503", favorite.text
        signup = httpx.post(f"{auth}/signup", headers={"apikey": keys["anon"]},
                            json={"email": f"fan-{target[:8]}@example.com", "password": PASSWORD,
                                  "data": {"favorite_id": target}})
        assert signup.status_code == 409 and signup.json()["code"] == "23503", signup.text
    for outsider, refused in ((key(keys["anon"]), 403), (stranger, 401)):  # anon, and another tenant's service key
        for attempt in (httpx.post(f"{base}/rest/v1/reply", headers=outsider, json={"post_id": secret["id"]}),
                        httpx.post(f"{base}/graphql/v1", headers=outsider, json={
                            "query": "mutation($p: uuid) { insert_reply_one(object: {post_id: $p}) { id } }",
                            "variables": {"p": secret["id"]}})):
            assert attempt.status_code == refused or "errors" in attempt.json(), attempt.text
            assert secret["id"] not in attempt.text, attempt.text
    assert answers[secret["id"]] == answers[missing]  # ann's post and no post: the same words
    own = httpx.put(f"{base}/auth/v1/user", headers={"apikey": keys["anon"], **bob["headers"]},
                    json={"data": {"favorite_id": mine["id"]}})
    assert own.status_code == 200 and own.json()["user_metadata"]["favorite_id"] == mine["id"], own.text
    root, leaf = str(uuid.uuid4()), str(uuid.uuid4())  # a tree in one body names its own rows
    tree = httpx.post(f"{base}/rest/v1/reply", headers=bob["headers"],
                      json=[{"id": root, "text": "root", "parent_id": None}, {"id": leaf, "text": "leaf", "parent_id": root}])
    assert tree.status_code == 201, tree.text
    foreign = create(base, ann["headers"], "reply", {"text": "ann's reply"})
    under = httpx.post(f"{base}/rest/v1/reply", headers=bob["headers"], json={"text": "x", "parent_id": foreign["id"]})
    assert under.status_code == 409 and under.json()["code"] == "23503", under.text
    assert stored(base, keys, "reply", reply["id"])["post_id"] == mine["id"]
    assert len(httpx.get(f"{base}/rest/v1/reply", headers=bob["headers"]).json()) == 3  # his, and the tree
    served = httpx.post(f"{base}/rest/v1/reply", headers=key(keys["service"]), json={"post_id": secret["id"]})
    assert served.status_code == 201, served.text  # the service key reads every post: it may name any
    httpx.delete(f"{base}/rest/v1/reply?post_id=eq.{secret['id']}", headers=key(keys["service"]))
    deleted = httpx.delete(f"{base}/rest/v1/post?id=eq.{secret['id']}", headers=ann["headers"])
    assert deleted.status_code == 204 and stored(base, keys, "post", secret["id"]) is None, deleted.text


# -- finding 3: ordering through a relation sees only readable related rows --


def test_graphql_order_by_a_related_field_ignores_rows_the_caller_may_not_read(base, keys, people):
    ann, bob = people["ann"], people["bob"]
    secret = create(base, ann["headers"], "post", {"title": "aaa ann's secret"})
    mine = create(base, bob["headers"], "post", {"title": "mmm bob's"})
    on_secret = create(base, key(keys["service"]), "comment", {"body": "order-probe on ann's", "post_id": secret["id"]})
    on_mine = create(base, bob["headers"], "comment", {"body": "order-probe on bob's", "post_id": mine["id"]})
    answer = graphql(base, bob["headers"], """{
        comment(where: {body: {_like: "order-probe%"}}, order_by: [{post: {title: asc}}]) { id } }""")
    # ann's post is invisible to bob: its title sorts as null (last, ascending), not as "aaa..." (first)
    assert [c["id"] for c in answer["data"]["comment"]] == [on_mine["id"], on_secret["id"]], answer


# -- finding 4: what a write returns passes through the read scope --


def test_rest_patch_and_delete_return_only_rows_the_caller_may_read(base, keys, people):
    ann, bob = people["ann"], people["bob"]
    box = create(base, ann["headers"], "box", {"label": "ann-box-patch", "note": "ann's"})
    representation = {**bob["headers"], "Prefer": "return=representation"}
    patched = httpx.patch(f"{base}/rest/v1/box?id=eq.{box['id']}", headers=representation, json={"note": "bob's"})
    assert patched.status_code == 200 and patched.json() == [], patched.text
    assert stored(base, keys, "box", box["id"])["note"] == "bob's"
    deleted = httpx.delete(f"{base}/rest/v1/box?id=eq.{box['id']}", headers=representation)
    assert deleted.status_code == 200 and deleted.json() == [], deleted.text
    assert stored(base, keys, "box", box["id"]) is None


def test_graphql_update_and_delete_return_only_rows_the_caller_may_read(base, keys, people):
    ann, bob = people["ann"], people["bob"]
    box = create(base, ann["headers"], "box", {"label": "ann-box-gql", "note": "ann's"})
    updated = graphql(base, bob["headers"], """mutation($id: uuid!) {
        update_box(where: {id: {_eq: $id}}, _set: {note: "one"}) { affected_rows returning { id note } }
        update_box_by_pk(pk_columns: {id: $id}, _set: {note: "two"}) { id note } }""", {"id": box["id"]})
    assert "errors" not in updated, updated
    assert updated["data"]["update_box"] == {"affected_rows": 1, "returning": []}
    assert updated["data"]["update_box_by_pk"] is None
    assert stored(base, keys, "box", box["id"])["note"] == "two"
    deleted = graphql(base, bob["headers"], "mutation($id: uuid!) { delete_box_by_pk(id: $id) { id note } }",
                      {"id": box["id"]})
    assert "errors" not in deleted and deleted["data"]["delete_box_by_pk"] is None, deleted
    assert stored(base, keys, "box", box["id"]) is None


def test_one_graphql_write_document_reaches_only_each_callers_rows(base, keys, people, stranger):
    """Update and delete statements are compiled once per document: the next caller's scope still holds."""
    ann, bob = people["ann"], people["bob"]
    post = create(base, ann["headers"], "post", {"title": "ann's, kept"})
    update = """mutation($id: uuid!, $t: String!) {
        update_post(where: {id: {_eq: $id}}, _set: {title: $t}) { affected_rows returning { title } } }"""
    delete = "mutation($ids: [uuid!]!) { delete_post(where: {id: {_in: $ids}}) { affected_rows } }"
    mine = graphql(base, ann["headers"], update, {"id": post["id"], "t": "ann's, renamed"})
    assert mine["data"]["update_post"] == {"affected_rows": 1, "returning": [{"title": "ann's, renamed"}]}, mine
    theirs = graphql(base, bob["headers"], update, {"id": post["id"], "t": "bob was here"})
    assert theirs["data"]["update_post"] == {"affected_rows": 0, "returning": []}, theirs
    assert graphql(base, bob["headers"], delete, {"ids": [post["id"]]})["data"]["delete_post"] == {"affected_rows": 0}
    anon = graphql(base, {"apikey": keys["anon"]}, delete, {"ids": [post["id"]]})
    assert "data" not in anon and anon["errors"][0]["extensions"]["code"] == "validation-failed", anon
    foreign = httpx.post(f"{base}/graphql/v1", headers=stranger, json={"query": delete, "variables": {"ids": [post["id"]]}})
    assert foreign.status_code == 200 and "data" not in foreign.json(), foreign.text  # Hasura's shape for a refusal
    assert foreign.json()["errors"][0]["extensions"]["reason"] == "tenant_mismatch"
    assert stored(base, keys, "post", post["id"])["title"] == "ann's, renamed"
    assert graphql(base, ann["headers"], delete, {"ids": [post["id"]]})["data"]["delete_post"] == {"affected_rows": 1}
    assert stored(base, keys, "post", post["id"]) is None
    insert = "mutation($o: post_insert_input!) { insert_post_one(object: $o) { title } }"  # one statement, kept
    made = {who: graphql(base, people[who]["headers"], insert, {"o": {"title": f"{who}'s, by one document"}})
            for who in ("ann", "bob")}
    assert {who: answer["data"]["insert_post_one"]["title"] for who, answer in made.items()} == {
        "ann": "ann's, by one document", "bob": "bob's, by one document"}
    owners = httpx.get(f"{base}/rest/v1/post", params={"title": "like.*by one document", "select": "title,owner_id"},
                       headers=key(keys["service"])).json()
    assert sorted((row["title"], row["owner_id"]) for row in owners) == [
        ("ann's, by one document", ann["id"]), ("bob's, by one document", bob["id"])]


def test_rest_requests_of_one_shape_reach_only_each_callers_rows(base, keys, people, stranger):
    """GET, PATCH and DELETE by `id=eq.<id>` are prepared once per shape and caller (engine/rest/shapes.py)."""
    ann, bob = people["ann"], people["bob"]
    posts = {who: [create(base, people[who]["headers"], "post", {"title": f"{who}'s {i}"})["id"] for i in range(2)]
             for who in ("ann", "bob")}
    url = f"{base}/rest/v1/post"
    prefer = {"Prefer": "return=representation"}

    def patch(who: dict[str, Any], row: str, title: str) -> list[Any]:
        response = httpx.patch(url, params={"id": f"eq.{row}"}, headers={**who["headers"], **prefer}, json={"title": title})
        assert response.status_code == 200, response.text
        return response.json()

    assert [patch(ann, row, "ann renamed") for row in posts["ann"]] == [[{**r, "title": "ann renamed"}] for r in [
        stored(base, keys, "post", row) for row in posts["ann"]]]
    assert [patch(bob, row, "bob was here") for row in posts["ann"]] == [[], []]
    read = {who: [httpx.get(url, params={"id": f"eq.{row}", "select": "title"}, headers=people[who]["headers"]).json()
                  for row in posts["ann"]] for who in ("ann", "bob")}
    assert read == {"ann": [[{"title": "ann renamed"}]] * 2, "bob": [[], []]}
    for outsider in ({"apikey": keys["anon"]}, stranger):
        for method in ("GET", "PATCH", "DELETE"):
            answer = httpx.request(method, url, params={"id": f"eq.{posts['ann'][0]}"}, headers=outsider,
                                   json={"title": "outsider"} if method == "PATCH" else None)
            assert answer.status_code in (401, 403), (method, answer.status_code, answer.text)
    assert [patch(bob, row, "bob renamed")[0]["title"] for row in posts["bob"]] == ["bob renamed"] * 2
    for row in posts["ann"]:
        gone = httpx.delete(url, params={"id": f"eq.{row}"}, headers={**bob["headers"], **prefer})
        assert gone.status_code == 200 and gone.json() == [], gone.text
    assert [stored(base, keys, "post", row)["title"] for row in posts["ann"]] == ["ann renamed"] * 2
    for row in posts["ann"]:
        assert httpx.delete(url, params={"id": f"eq.{row}"}, headers=ann["headers"]).status_code == 204
    assert [stored(base, keys, "post", row) for row in posts["ann"]] == [None, None]


def test_a_write_the_caller_may_not_make_is_refused_before_its_body_is_read(base, keys, people, stranger):
    """A refused caller learns nothing of the entity's fields: not which are required, not their rules (the
    permission is asked before the body is validated, as PostgREST's 42501 comes before any check)."""
    bad = {"body": 42, "nosuch": True}  # comment: body is required text, nosuch no field
    writes = (("POST", "comment", bad, None), ("POST", "comment", [bad, {}], None),
              ("PATCH", "guestbook", {"line": ["not", "a", "string"]}, {"id": "eq.x"}),
              ("DELETE", "guestbook", None, {"nosuch": "eq.x", "line": "in.(unclosed"}))
    for outsider in ({"apikey": keys["anon"]}, stranger, people["ann"]["headers"]):
        for method, entity, body, params in writes:
            if outsider is people["ann"]["headers"] and entity == "comment":
                continue  # a user may comment: the guestbook is what no user may change
            answer = httpx.request(method, f"{base}/rest/v1/{entity}", params=params, headers=outsider, json=body)
            assert answer.status_code in (401, 403), (method, entity, answer.status_code, answer.text)
            assert "nosuch" not in answer.text and "line" not in answer.text and not answer.json().get("details")


def test_writes_through_hooks_return_only_rows_the_caller_may_read(base, keys, people):
    ann, bob = people["ann"], people["bob"]
    locker = create(base, ann["headers"], "locker", {"note": "ann's"})
    representation = {**bob["headers"], "Prefer": "return=representation"}
    patched = httpx.patch(f"{base}/rest/v1/locker?id=eq.{locker['id']}", headers=representation, json={"note": "b"})
    assert patched.status_code == 200 and patched.json() == [], patched.text
    updated = graphql(base, bob["headers"], """mutation($id: uuid!) {
        update_locker(where: {id: {_eq: $id}}, _set: {note: "c"}) { affected_rows returning { id note } } }""",
                      {"id": locker["id"]})
    assert updated["data"]["update_locker"] == {"affected_rows": 1, "returning": []}, updated
    assert stored(base, keys, "locker", locker["id"])["note"] == "c"
    deleted = httpx.delete(f"{base}/rest/v1/locker?id=eq.{locker['id']}", headers=representation)
    assert deleted.status_code == 200 and deleted.json() == [], deleted.text
    assert stored(base, keys, "locker", locker["id"]) is None


def diary_of(base: str, keys: dict[str, str]) -> dict[str, tuple[str, str]]:
    rows = httpx.get(f"{base}/rest/v1/diary?select=id,note,owner_id", headers=key(keys["service"])).json()
    return {r["id"]: (r["note"], r["owner_id"]) for r in rows}


def test_a_bulk_update_through_after_hooks_alone_reaches_only_the_callers_rows(base, keys, people, stranger):
    ann, bob = people["ann"], people["bob"]
    for who, notes in ((ann, ["ann 1", "ann 2"]), (bob, ["bob 1"])):
        response = httpx.post(f"{base}/rest/v1/diary", headers=who["headers"], json=[{"note": n} for n in notes])
        assert response.status_code == 201, response.text
    before = diary_of(base, keys)
    patched = httpx.patch(f"{base}/rest/v1/diary?note=like.*", json={"note": "bob wrote"},
                          headers={**bob["headers"], "Prefer": "return=representation"})
    assert patched.status_code == 200 and [r["owner_id"] for r in patched.json()] == [bob["id"]], patched.text
    updated = graphql(base, bob["headers"], """mutation {
        update_diary(where: {}, _set: {note: "bob again"}) { affected_rows returning { owner_id } } }""")
    assert updated["data"]["update_diary"] == {"affected_rows": 1, "returning": [{"owner_id": bob["id"]}]}, updated
    after = diary_of(base, keys)
    assert {i: v for i, v in after.items() if v[1] == ann["id"]} == {i: v for i, v in before.items() if v[1] == ann["id"]}
    for who, code in ((key(keys["anon"]), 403), (stranger, 401)):
        refused = httpx.patch(f"{base}/rest/v1/diary?note=like.*", json={"note": "x"}, headers=who)
        assert refused.status_code == code, refused.text
    assert diary_of(base, keys) == after


def test_a_bulk_create_through_after_hooks_alone_owns_every_row_for_the_caller(base, keys, people, stranger):
    ann, bob = people["ann"], people["bob"]
    created = httpx.post(f"{base}/rest/v1/diary", headers=bob["headers"],
                         json=[{"note": "bob's a"}, {"note": "bob's b", "owner_id": ann["id"]}])
    made = graphql(base, bob["headers"], 'mutation { insert_diary(objects: [{note: "bob\'s c"}, {note: "bob\'s d"}]) '
                                         '{ affected_rows } }')
    assert made["data"]["insert_diary"] == {"affected_rows": 2}, made
    notes = {note: owner for note, owner in diary_of(base, keys).values() if note.startswith("bob's")}
    assert set(notes.values()) == {bob["id"]} and {"bob's c", "bob's d"} <= set(notes)
    assert created.status_code != 201 or set(notes) == {"bob's a", "bob's b", "bob's c", "bob's d"}, created.text
    before = diary_of(base, keys)
    for who in (key(keys["anon"]), stranger):
        refused = httpx.post(f"{base}/rest/v1/diary", headers=who, json=[{"note": "intruder"}, {"note": "again"}])
        assert refused.status_code in (401, 403), refused.text
        answer = httpx.post(f"{base}/graphql/v1", headers=who,
                            json={"query": 'mutation { insert_diary(objects: [{note: "intruder"}]) { affected_rows } }'})
        assert answer.status_code == 401 or "errors" in answer.json(), answer.text
    assert diary_of(base, keys) == before


def test_a_write_returns_the_callers_own_rows_as_before(base, keys, people):
    bob = people["bob"]
    box = create(base, bob["headers"], "box", {"label": "bob-box", "note": "mine"})
    answer = graphql(base, bob["headers"], """mutation($id: uuid!) {
        update_box_by_pk(pk_columns: {id: $id}, _set: {note: "still mine"}) { note } }""", {"id": box["id"]})
    assert answer["data"]["update_box_by_pk"] == {"note": "still mine"}
    patched = httpx.patch(f"{base}/rest/v1/box?id=eq.{box['id']}", json={"note": "again"},
                          headers={**bob["headers"], "Prefer": "return=representation"})
    assert [r["note"] for r in patched.json()] == ["again"]


# -- a row moved out of the caller's scope while its write waited for it --


async def moved_while_waiting(db: Database, post_id: str, owner: str, send: Callable[[], httpx.Response]
                              ) -> httpx.Response:
    """`send`'s answer when another transaction gives post `post_id` to `owner` while `send`'s write waits
    for the row's lock: PostgreSQL rereads the row once the lock is released, and the write must find it
    outside the caller's scope then (its condition is checked again, not only its ids taken before)."""
    async with db.begin() as conn:
        await conn.execute(sa.text("UPDATE t_scoped.post SET owner_id = :owner WHERE id = :id"),
                           {"owner": owner, "id": post_id})
        answer = asyncio.create_task(asyncio.to_thread(send))
        deadline = time.monotonic() + 20
        async with db.engine.connect() as watcher:
            while not await watcher.scalar(sa.text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock' AND query ILIKE '%post%'")):
                assert time.monotonic() < deadline and not answer.done(), "the write never waited for the row"
                await asyncio.sleep(0.05)
    return await answer


async def test_a_write_waiting_on_a_row_that_leaves_the_callers_scope_meanwhile_leaves_it_alone(db, base, keys, people):
    ann, bob = people["ann"], people["bob"]
    edit = 'mutation($id: uuid!) { update_post(where: {id: {_eq: $id}}, _set: {title: "edited"}) { affected_rows } }'
    for surface in ("rest", "graphql"):
        post = create(base, ann["headers"], "post", {"title": f"before {surface}"})
        send = partial(httpx.patch, f"{base}/rest/v1/post?title=eq.before%20rest", json={"title": "edited"},
                       headers={**ann["headers"], "Prefer": "return=representation"}, timeout=30) \
            if surface == "rest" else \
            partial(httpx.post, f"{base}/graphql/v1", json={"query": edit, "variables": {"id": post["id"]}},
                    headers=ann["headers"], timeout=30)
        answer = await moved_while_waiting(db, post["id"], bob["id"], send)
        assert answer.status_code == 200, answer.text
        assert answer.json() in ([], {"data": {"update_post": {"affected_rows": 0}}}), answer.text
        row = stored(base, keys, "post", post["id"])
        assert row is not None and (row["title"], row["owner_id"]) == (f"before {surface}", bob["id"])
