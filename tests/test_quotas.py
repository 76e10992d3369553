"""Quotas from the tenant's plan: a warning past the soft limit (a header and ONE quota.warning event),
402 `quota_exceeded` past the hard one (writes refused, reads working), and the `usage` function.

Over HTTP against a real gateway whose meter flushes and whose quotas measure every fraction of a second.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from engine import catalog
from engine.database import Database
from engine.quotas import QuotaExceeded
from functions import members
from functions.keys import create_api_key
from functions.tenants import create_tenant
from functions.users import create_platform_admin
from tests.server import running_gateway

http = httpx.Client(timeout=60)  # generous: the test machine may be loaded
PASSWORD = "a long enough passphrase"
ADMIN = "root@quotas.example"


def schema(receiver: str) -> str:
    return f"""
name: quota
entities:
  note:
    fields:
      body: {{type: text}}
    permissions:
      read: {{anon: all}}
  alert:
    fields:
      text: {{type: text}}
    hooks:
      after_create: [{{webhook: "{receiver}"}}]
"""


class Receiver:
    """A webhook receiver on loopback that keeps every body it is sent."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        received = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


PLANS = {"q-soft": {"rows": 10}, "q-hard": {"rows": 3}, "q-requests": {"requests_per_month": 5},
         "q-users": {"end_users": 1}, "q-members": {"members": 1}, "q-open": {},
         "q-half": {"rows": 10, "quota_soft_percent": 50}, "q-hooks": {"webhook_deliveries_per_month": 2}}


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    made = Receiver()
    yield made
    made.server.shutdown()


@pytest.fixture(scope="module")
async def keys(db: Database, receiver: Receiver) -> dict[str, dict[str, str]]:
    plans = catalog.platform_tables()["plans"]
    async with db.begin() as conn:
        for code, limits in PLANS.items():
            await conn.execute(plans.insert().values(code=code, name=code, limits=limits))
    made = {}
    for slug, plan in (("soft", "q-soft"), ("hard", "q-hard"), ("busy", "q-requests"), ("users", "q-users"),
                       ("team", "q-members"), ("other", "q-open"), ("half", "q-half"), ("hooks", "q-hooks")):
        await create_tenant(db, slug, source=schema(receiver.url), plan=plan)
        made[slug] = {role: (await create_api_key(db, slug, role, role)).key for role in ("anon", "service")}
    await create_platform_admin(db, ADMIN, PASSWORD)
    return made


@pytest.fixture(scope="module")
def base(keys: dict[str, dict[str, str]], database_url: str) -> Iterator[str]:
    with running_gateway(database_url, metering={"flush_seconds": 0.1, "measure_seconds": 0.1},
                         outbox={"base_delay": 0.05, "allow_hosts": ["127.0.0.1"], "hold": 0.3}) as url:
        yield url


def wait_for(check: Callable[[], Any], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError("timed out")


def rest(base: str, slug: str) -> str:
    return f"{base}/api/tenants/{slug}/rest/v1"


def test_past_the_soft_limit_responses_warn_and_the_tenant_gets_one_quota_warning(base, keys, receiver):
    service = {"apikey": keys["soft"]["service"]}
    for i in range(8):  # 80% of 10 rows
        assert http.post(f"{rest(base, 'soft')}/note", json={"body": f"n{i}"}, headers=service).status_code == 201
    warned = wait_for(lambda: (r := http.get(f"{rest(base, 'soft')}/note", headers=service)).headers.get(
        "X-Quota-Warning") and r)
    assert warned.status_code == 200 and warned.headers["X-Quota-Warning"] == "rows=80%"
    assert http.post(f"{rest(base, 'soft')}/note", json={"body": "n9"}, headers=service).status_code == 201
    events = wait_for(lambda: [b for b in receiver.bodies if b.get("event") == "quota.warning" and b["tenant"] == "soft"])
    time.sleep(1)  # refreshes go on: no second event for the same metric and month
    events = [b for b in receiver.bodies if b.get("event") == "quota.warning" and b["tenant"] == "soft"]
    assert len(events) == 1
    assert {k: events[0][k] for k in ("metric", "limit")} == {"metric": "rows", "limit": 10}
    assert events[0]["percent"] >= 80 and events[0]["period"] == time.strftime("%Y-%m", time.gmtime())
    listed = http.get(f"{base}/api/tenants/soft/events/v1", headers=service).json()
    assert [(e["entity"], e["action"]) for e in listed if e["entity"] == "quota.warning"] == [("quota.warning", "event")]
    other = http.get(f"{rest(base, 'other')}/note", headers={"apikey": keys["other"]["service"]})
    assert "X-Quota-Warning" not in other.headers


async def test_past_the_monthly_webhook_deliveries_webhooks_are_held_until_the_plan_allows_more(db, base, keys, receiver):
    service = {"apikey": keys["hooks"]["service"]}

    def alerts() -> list[dict[str, Any]]:
        return [b for b in receiver.bodies if b.get("tenant") == "hooks" and b.get("entity") == "alert"]

    for i in range(4):
        assert http.post(f"{rest(base, 'hooks')}/alert", json={"text": f"a{i}"}, headers=service).status_code == 201
    wait_for(lambda: len(alerts()) == 2)
    held = wait_for(lambda: [e for e in http.get(f"{base}/api/tenants/hooks/events/v1", headers=service).json()
                             if e["entity"] == "alert" and (e.get("last_error") or "").startswith("held:")])
    time.sleep(1)  # looked at again every 0.3 s: still held, and no attempt counted
    assert len(alerts()) == 2
    assert all(e["status"] == "pending" and e["attempts"] == 0 for e in held)
    plans = catalog.platform_tables()["plans"]
    async with db.begin() as conn:  # the operator grows the plan: the held webhooks go out
        await conn.execute(plans.update().where(plans.c.code == "q-hooks")
                           .values(limits={"webhook_deliveries_per_month": 100}))
    wait_for(lambda: len(alerts()) == 4)
    assert sorted(b["record"]["text"] for b in alerts()) == ["a0", "a1", "a2", "a3"]


def test_a_plan_sets_its_own_soft_percentage(base, keys):
    service = {"apikey": keys["half"]["service"]}
    assert http.post(f"{rest(base, 'half')}/note", json=[{"body": str(i)} for i in range(5)],
                     headers=service).status_code == 201
    warned = wait_for(lambda: http.get(f"{rest(base, 'half')}/note", headers=service).headers.get("X-Quota-Warning"))
    assert warned == "rows=50%"


def test_past_the_hard_limit_writes_that_grow_rows_are_402_while_reads_work(base, keys):
    service = {"apikey": keys["hard"]["service"]}
    api = rest(base, "hard")
    for i in range(3):
        assert http.post(f"{api}/note", json={"body": f"n{i}"}, headers=service).status_code == 201
    refused = wait_for(lambda: (r := http.post(f"{api}/note", json={"body": "more"}, headers=service))
                       .status_code == 402 and r)
    body = refused.json()
    assert body["code"] == "quota_exceeded" and body["metric"] == "rows" and body["limit"] == 3
    assert "rows" in body["message"] and "3" in body["message"]
    assert refused.headers["X-Quota-Warning"].startswith("rows=")
    assert int(refused.headers["X-Quota-Warning"][5:-1]) >= 100
    assert len(http.get(f"{api}/note", headers=service).json()) >= 3  # 3, or a few more inserted while measuring
    assert http.patch(f"{api}/note?body=eq.n0", json={"body": "changed"}, headers=service).status_code == 204
    mutation = wait_for(lambda: "errors" in (m := http.post(f"{base}/api/tenants/hard/graphql/v1", headers=service, json={
        "query": 'mutation { insert_note_one(object: {body: "g"}) { id } }'}).json()) and m)  # statistics may lag
    assert mutation["errors"][0]["extensions"]["code"] == "quota_exceeded"
    stored = len(http.get(f"{api}/note", headers=service).json())
    assert http.delete(f"{api}/note?body=eq.n1", headers=service).status_code == 204
    assert len(http.get(f"{api}/note", headers=service).json()) == stored - 1



async def test_past_the_hard_limit_a_mutation_over_a_socket_is_refused_while_queries_work(base, keys):
    import websockets

    service = {"apikey": keys["hard"]["service"]}
    api = rest(base, "hard")
    while len(http.get(f"{api}/note", headers=service).json()) < 3:
        assert http.post(f"{api}/note", json={"body": "filler"}, headers=service).status_code in (201, 402)
    wait_for(lambda: http.post(f"{api}/note", json={"body": "more"}, headers=service).status_code == 402)
    url = base.replace("http://", "ws://") + "/api/tenants/hard/graphql/v1"
    async with websockets.connect(url, subprotocols=["graphql-transport-ws"]) as socket:  # type: ignore[list-item]
        await socket.send(json.dumps({"type": "connection_init", "payload": service}))
        assert json.loads(await socket.recv())["type"] == "connection_ack"
        await socket.send(json.dumps({"id": "1", "type": "subscribe", "payload": {
            "query": 'mutation { insert_note_one(object: {body: "by socket"}) { id } }'}}))
        refused = json.loads(await socket.recv())
        assert refused["type"] == "error" and refused["payload"][0]["extensions"]["code"] == "quota_exceeded", refused
        await socket.send(json.dumps({"id": "2", "type": "subscribe", "payload": {"query": "{ note { body } }"}}))
        read = json.loads(await socket.recv())
        assert read["type"] == "next" and len(read["payload"]["data"]["note"]) >= 3, read
    assert "by socket" not in http.get(f"{api}/note", headers=service).text

def test_past_the_monthly_requests_every_request_is_402(base, keys):
    anon = {"apikey": keys["busy"]["anon"]}
    answers = [http.get(f"{rest(base, 'busy')}/note", headers=anon).status_code for _ in range(7)]
    assert answers == [200] * 5 + [402] * 2
    refused = http.get(f"{rest(base, 'busy')}/note", headers=anon).json()
    assert refused["code"] == "quota_exceeded" and refused["metric"] == "requests_per_month" and refused["limit"] == 5
    assert http.get(f"{rest(base, 'other')}/note", headers={"apikey": keys["other"]["anon"]}).status_code == 200


def test_sign_ups_past_the_end_users_limit_are_402(base, keys):
    signup = f"{base}/api/tenants/users/auth/v1/signup"
    anon = {"apikey": keys["users"]["anon"]}
    assert http.post(signup, headers=anon, json={"email": "one@example.com", "password": PASSWORD}).status_code == 200
    refused = http.post(signup, headers=anon, json={"email": "two@example.com", "password": PASSWORD})
    assert refused.status_code == 402 and refused.json()["metric"] == "end_users"


async def test_invitations_past_the_members_limit_are_402(db, keys):
    await members.invite(db, "team", "first@example.com", "developer", actor=members.SYSTEM)
    with pytest.raises(QuotaExceeded) as refused:
        await members.invite(db, "team", "second@example.com", "developer", actor=members.SYSTEM)
    assert refused.value.status == 402 and refused.value.limit == "members" and refused.value.allowed == 1


# -- reading usage: the `usage` function and usage_daily --


def platform(base: str, path: str) -> str:
    return f"{base}/api/platform/{path}"


def account(base: str, email: str) -> dict[str, str]:
    http.post(platform(base, "auth/v1/signup"), json={"email": email, "password": PASSWORD})
    token = http.post(platform(base, "auth/v1/token"), params={"grant_type": "password"},
                       json={"email": email, "password": PASSWORD}).json()["access_token"]
    return {"Authorization": f"Bearer {token}"}


async def join(db: Database, email: str, slug: str, role: str) -> None:
    t = catalog.platform_tables()
    async with db.begin() as conn:
        user = await conn.scalar(sa.select(t["users"].c.id).where(t["users"].c.email == email))
        tenant = await conn.scalar(sa.select(t["tenants"].c.id).where(t["tenants"].c.slug == slug))
        await conn.execute(t["memberships"].insert().values(user_id=user, tenant_id=tenant, role=role))


@pytest.fixture(scope="module")
async def readers(base: str, db: Database) -> dict[str, dict[str, str]]:
    made = {"viewer": account(base, "viewer@hard.example"), "outsider": account(base, "owner@other.example")}
    await join(db, "viewer@hard.example", "hard", "viewer")
    await join(db, "owner@other.example", "other", "owner")
    return made


def usage(base: str, headers: dict[str, str], slug: str) -> httpx.Response:
    return http.post(platform(base, "functions/v1/usage"), json={"tenant": slug}, headers=headers)


def test_a_member_reads_the_tenants_usage_against_its_plan(base, keys, readers):
    def flushed() -> dict[str, Any] | None:
        found = usage(base, readers["viewer"], "hard").json()
        return found if found["totals"].get("rest_calls", 0) >= 3 else None

    found = wait_for(flushed)
    assert found["tenant"] == "hard" and found["plan"] == "q-hard"
    assert found["period"]["start"] == time.strftime("%Y-%m-01", time.gmtime())
    assert found["quotas"]["rows"]["limit"] == 3 and found["quotas"]["requests_per_month"]["limit"] is None
    assert found["totals"]["rows_written"] >= 3
    assert {d["metric"] for d in found["daily"]} >= {"rest_calls", "rows_written"}
    rows = http.get(platform(base, "rest/v1/usage_daily"), headers=readers["viewer"]).json()
    assert rows and {r["tenant_id"] for r in rows} == {found_tenant_id(base, readers["viewer"], "hard")}


def found_tenant_id(base: str, headers: dict[str, str], slug: str) -> str:
    return http.get(platform(base, "rest/v1/tenants"), params={"slug": f"eq.{slug}"}, headers=headers).json()[0]["id"]


def test_a_member_of_another_tenant_an_end_user_and_anon_get_no_usage(base, keys, readers):
    assert usage(base, readers["outsider"], "hard").status_code == 403
    hard = found_tenant_id(base, readers["viewer"], "hard")
    assert http.get(platform(base, "rest/v1/usage_daily"), params={"tenant_id": f"eq.{hard}"},
                     headers=readers["outsider"]).json() == []
    end_user = http.post(f"{base}/api/tenants/hard/auth/v1/signup", headers={"apikey": keys["hard"]["anon"]},
                          json={"email": "end@example.com", "password": PASSWORD})
    assert end_user.status_code == 200, end_user.text
    refused = usage(base, {"Authorization": f"Bearer {end_user.json()['access_token']}"}, "hard")
    assert refused.status_code == 401 and refused.json()["code"] == "tenant_mismatch"
    anonymous = usage(base, {}, "hard")
    assert anonymous.status_code == 403 and anonymous.json()["code"] == "permission_denied"
    assert http.get(platform(base, "rest/v1/usage_daily")).status_code == 403


def test_a_platform_admin_reads_every_tenants_usage(base, keys, readers):
    admin = account(base, ADMIN)
    for slug in ("hard", "soft", "other"):
        answer = usage(base, admin, slug)
        assert answer.status_code == 200 and answer.json()["tenant"] == slug
