"""A tenant's platform members act in that tenant with their platform access token (as the console does):
owners, admins and developers as the tenant's `admin`, viewers as a read-only `viewer`, on every surface
(REST, GraphQL, functions). Nobody else's platform token reaches the tenant: a member of another tenant,
a tenant's own end user, anon. A change of membership takes effect on the next request."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from engine.database import Database
from tests.server import running_gateway
from tests.test_platform import PASSWORD, bearer, call, create_tenant, sign_in, sign_up
from tests.test_stream_revocation import EventStream

SCHEMA = """
name: notes
entities:
  note:
    owner: true
    realtime: true
    fields:
      text: {type: text, required: true}
    permissions:
      read: {authenticated: own}
      create: {authenticated: all}
functions:
  whoami:
    handler: examples.whoami
    roles: [authenticated]
"""
NOTE_QUERY = "{ note { text } }"
NOTE_INSERT = 'mutation { insert_note_one(object: {text: "from graphql"}) { text } }'


@pytest.fixture(scope="module")
async def world(db: Database, database_url: str) -> AsyncIterator[dict[str, Any]]:
    with running_gateway(database_url) as base:
        owner = sign_up(base, "owner@acme.example")
        # "pro": the free plan allows 2 members, this team has 4
        assert create_tenant(base, owner, "acme", initial_schema=SCHEMA, plan="pro")["status"] == "active"
        members = {}
        for role in ("developer", "viewer", "watcher", "viewer_fresh"):
            email = f"{role}@acme.example"
            invited = call(base, "invite_member", owner, tenant="acme", email=email,
                           role="viewer" if role in ("watcher", "viewer_fresh") else role)
            assert invited.status_code == 200, invited.text
            accepted = call(base, "accept_invitation", None, token=invited.json()["token"], password=PASSWORD)
            assert accepted.status_code == 200, accepted.text
            members[role] = sign_in(base, email)
        mallory = sign_up(base, "mallory@evil.example")
        assert create_tenant(base, mallory, "evil", initial_schema=SCHEMA)["status"] == "active"
        end_user = httpx.post(f"{base}/api/tenants/acme/auth/v1/signup",
                              json={"email": "user@acme.example", "password": PASSWORD})
        assert end_user.status_code == 200, end_user.text
        yield {"base": base, "owner": owner, "mallory": mallory, "end_user": end_user.json(), **members}


def tenant(base: str, path: str) -> str:
    return f"{base}/api/tenants/acme/{path}"


def graphql(base: str, session: dict[str, Any] | None, query: str) -> httpx.Response:
    return httpx.post(tenant(base, "graphql/v1"), json={"query": query}, headers=bearer(session) if session else {})


def test_an_owner_acts_as_the_tenants_admin_on_rest_graphql_and_functions(world):
    base, owner = world["base"], world["owner"]
    made = httpx.post(tenant(base, "rest/v1/note"), json={"text": "by the owner"},
                      headers={**bearer(owner), "Prefer": "return=representation"})
    assert made.status_code == 201, made.text
    listed = httpx.get(tenant(base, "rest/v1/note"), headers=bearer(owner))
    assert listed.status_code == 200 and "by the owner" in [r["text"] for r in listed.json()]
    inserted = graphql(base, owner, NOTE_INSERT)
    assert inserted.json() == {"data": {"insert_note_one": {"text": "from graphql"}}}
    who = httpx.post(tenant(base, "functions/v1/whoami"), json={}, headers=bearer(owner))
    assert who.status_code == 200 and who.json()["roles"] == ["admin"], who.text


def test_a_developer_acts_as_the_tenants_admin(world):
    base = world["base"]
    made = httpx.post(tenant(base, "rest/v1/note"), json={"text": "by a developer"}, headers=bearer(world["developer"]))
    assert made.status_code == 201, made.text
    # admin reads every row, not only the rows a signed-in user would own
    texts = [r["text"] for r in httpx.get(tenant(base, "rest/v1/note"), headers=bearer(world["developer"])).json()]
    assert "by the owner" in texts and "by a developer" in texts


def test_a_viewer_reads_every_row_and_changes_nothing(world):
    base, viewer = world["base"], world["viewer"]
    before = httpx.get(tenant(base, "rest/v1/note"), headers=bearer(world["owner"])).json()
    listed = httpx.get(tenant(base, "rest/v1/note"), headers=bearer(viewer))
    assert listed.status_code == 200 and listed.json() == before
    assert graphql(base, viewer, NOTE_QUERY).json()["data"]["note"] == [{"text": r["text"]} for r in before]
    refused = httpx.post(tenant(base, "rest/v1/note"), json={"text": "by a viewer"}, headers=bearer(viewer))
    assert refused.status_code == 403, refused.text
    assert httpx.patch(tenant(base, "rest/v1/note"), params={"text": "eq.by the owner"}, json={"text": "x"},
                       headers=bearer(viewer)).status_code == 403
    assert httpx.delete(tenant(base, "rest/v1/note"), params={"text": "eq.by the owner"},
                        headers=bearer(viewer)).status_code == 403
    assert "errors" in graphql(base, viewer, NOTE_INSERT).json()
    assert httpx.post(tenant(base, "functions/v1/whoami"), json={}, headers=bearer(viewer)).status_code == 403
    assert httpx.get(tenant(base, "rest/v1/note"), headers=bearer(world["owner"])).json() == before


@pytest.mark.parametrize("who", ["mallory", "end_user", "anon"])
def test_nobody_else_reaches_the_tenant_through_a_platform_token(world, who):
    """A member of another tenant and a tenant's own end user get a 401; anon only what anon may (nothing)."""
    base = world["base"]
    session = None if who == "anon" else world[who]
    if who == "end_user":  # acme's own end user: an ordinary authenticated user, only their own rows
        rows = httpx.get(tenant(base, "rest/v1/note"), headers=bearer(session)).json()
        assert rows == []
        assert httpx.post(tenant(base, "functions/v1/whoami"), json={},
                          headers=bearer(session)).json()["roles"] == ["authenticated"]
        return
    read = httpx.get(tenant(base, "rest/v1/note"), headers=bearer(session) if session else {})
    assert read.status_code == (401 if session else 403), read.text
    assert httpx.post(tenant(base, "rest/v1/note"), json={"text": "x"},
                      headers=bearer(session) if session else {}).status_code in (401, 403)
    answer = graphql(base, session, NOTE_QUERY)
    assert answer.status_code in (401, 403) or "errors" in answer.json()
    assert httpx.post(tenant(base, "functions/v1/whoami"), json={},
                      headers=bearer(session) if session else {}).status_code in (401, 403)
    if session:
        assert read.json()["code"] == "tenant_mismatch"


def test_a_membership_change_takes_effect_on_the_next_request(world):
    base, owner, viewer = world["base"], world["owner"], world["viewer"]
    assert httpx.post(tenant(base, "rest/v1/note"), json={"text": "v"}, headers=bearer(viewer)).status_code == 403
    promoted = call(base, "change_member_role", owner, tenant="acme", email="viewer@acme.example", role="developer")
    assert promoted.status_code in (200, 204), promoted.text
    assert httpx.post(tenant(base, "rest/v1/note"), json={"text": "v"}, headers=bearer(viewer)).status_code == 201
    removed = call(base, "remove_member", owner, tenant="acme", email="viewer@acme.example")
    assert removed.status_code in (200, 204), removed.text
    gone = httpx.get(tenant(base, "rest/v1/note"), headers=bearer(viewer))
    assert gone.status_code == 401 and gone.json()["code"] == "tenant_mismatch"


def test_a_members_token_does_not_reach_another_tenant_of_the_platform(world):
    base = world["base"]
    other = httpx.get(f"{base}/api/tenants/evil/rest/v1/note", headers=bearer(world["owner"]))
    assert other.status_code == 401 and other.json()["code"] == "tenant_mismatch"


async def test_a_members_event_stream_ends_when_they_leave_the_tenant(world):
    base = world["base"]
    stream = await asyncio.to_thread(EventStream, tenant(base, "rest/v1/note"), bearer(world["watcher"]))
    assert stream.status == 200
    removed = call(base, "remove_member", world["owner"], tenant="acme", email="watcher@acme.example")
    assert removed.status_code in (200, 204), removed.text
    assert (await asyncio.to_thread(stream.error))["code"] == "tenant_mismatch"
    stream.close()


def test_a_tenant_admin_ends_a_users_sessions_and_nobody_else_may(world):
    base, user = world["base"], world["end_user"]
    url = tenant(base, f"auth/v1/admin/users/{user['user']['id']}/logout")
    for stranger, status in ((world["mallory"], 401), (user, 403), (world["viewer_fresh"], 403), (None, 403)):
        refused = httpx.post(url, headers=bearer(stranger) if stranger else {})
        assert refused.status_code == status, refused.text
    assert httpx.get(tenant(base, "auth/v1/user"), headers=bearer(user)).status_code == 200
    assert httpx.post(tenant(base, "auth/v1/admin/users/nope/logout"), headers=bearer(world["owner"])).status_code == 400
    done = httpx.post(url, headers=bearer(world["owner"]))
    assert done.status_code == 204, done.text
    assert httpx.get(tenant(base, "auth/v1/user"), headers=bearer(user)).status_code == 403
    renewed = httpx.post(tenant(base, "auth/v1/token"), params={"grant_type": "refresh_token"},
                         json={"refresh_token": user["refresh_token"]})
    assert renewed.status_code in (400, 401), renewed.text
