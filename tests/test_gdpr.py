"""GDPR rights over HTTP: requests filed by users at /auth/v1/privacy, processed by the tenant's admins at
/privacy/v1 (or at once, when the tenant says so); the export holds exactly the user's data; an erasure
leaves no value of the user's `pii` fields anywhere in the tenant's schema while other users' rows that
referenced theirs still read; consents keep their history; a restricted user's writes are refused."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
import sqlalchemy as sa

from engine import audit_trail, catalog
from engine.database import Database
from engine.storage import naming
from functions.keys import create_api_key
from functions.tenants import create_tenant
from functions.users import create_platform_admin
from tests.conftest import driver_url
from tests.mail_sink import Sink, code_in
from tests.server import running_gateway

SCHEMA = """
name: crm
entities:
  users:
    fields:
      full_name: {type: string, max_length: 120, pii: true}
  profile:
    owner: true
    fields:
      nickname: {type: string, required: true, max_length: 60, pii: true}
      phone:    {type: string, max_length: 40, pii: true}
      prefs:    {type: json, pii: true}
      tier:     {type: enum, values: [basic, gold], required: true, pii: true}
      born:     {type: integer, minimum: 1900, required: true, pii: true}
      bio:      {type: text}
    permissions:
      read:   {authenticated: all}
      create: {authenticated: all}
      update: {authenticated: own}
  contact:
    fields:
      email: {type: string, format: email, pii: true}
      label: {type: string, max_length: 80}
    permissions:
      read:   {authenticated: all}
      create: {authenticated: all}
  note:
    owner: true
    fields:
      profile: {type: ref, to: profile, required: true, on_delete: restrict}
      text:    {type: text}
    permissions:
      read:   {authenticated: all}
      create: {authenticated: all}
  secret:
    owner: true
    fields:
      text: {type: text}
      note: {type: string, pii: true}
    permissions:
      read:   {authenticated: own}
      create: {authenticated: all}
"""
PASSWORD = "a long enough passphrase"
CAT = {"email": "cat.stevens@example.com", "full_name": "Catherine Stevens", "nickname": "Catnip-7781",
       "phone": "+44 7700 900123", "diet": "vegan-cat-diet"}


@pytest.fixture(scope="module")
async def keys(db: Database) -> dict[str, str]:
    made = {}
    for slug in ("crm", "other"):
        await create_tenant(db, slug, source=SCHEMA)
        for role in ("anon", "service"):
            made[f"{slug}_{role}"] = (await create_api_key(db, slug, role, role)).key
    await create_platform_admin(db, "root@platform.example", PASSWORD)
    return made


@pytest.fixture(scope="module")
def base(keys: dict[str, str], database_url: str, mail_env: None) -> Iterator[str]:
    with running_gateway(database_url) as url:
        yield url


def api(base: str, slug: str = "crm") -> str:
    return f"{base}/api/tenants/{slug}"


def bearer(session: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {session['access_token']}"}


def sign_up(base: str, keys: dict[str, str], email: str, slug: str = "crm", **data: Any) -> dict[str, Any]:
    made = httpx.post(f"{api(base, slug)}/auth/v1/signup", headers={"apikey": keys[f"{slug}_anon"]},
                      json={"email": email, "password": PASSWORD, "data": data})
    assert made.status_code == 200, made.text
    return made.json()


def prove(base: str, keys: dict[str, str], sink: Sink, email: str, slug: str = "crm") -> None:
    """The address proved its user's, as its owner proves it: the code of a sign-in mail sent to it."""
    before = sink.count(email)
    asked = httpx.post(f"{api(base, slug)}/auth/v1/otp", headers={"apikey": keys[f"{slug}_anon"]},
                       json={"email": email, "create_user": False})
    assert asked.status_code == 200, asked.text
    verified = httpx.post(f"{api(base, slug)}/auth/v1/verify", headers={"apikey": keys[f"{slug}_anon"]},
                          json={"type": "email", "email": email, "token": code_in(sink.to(email, before + 1))})
    assert verified.status_code == 200, verified.text


def post(base: str, session: dict[str, Any], entity: str, row: dict[str, Any]) -> dict[str, Any]:
    made = httpx.post(f"{api(base)}/rest/v1/{entity}", json=row,
                      headers={**bearer(session), "Prefer": "return=representation"})
    assert made.status_code == 201, made.text
    return made.json()[0]


def file_request(base: str, session: dict[str, Any], kind: str) -> dict[str, Any]:
    filed = httpx.post(f"{api(base)}/auth/v1/privacy/requests", json={"type": kind}, headers=bearer(session))
    assert filed.status_code == 201, filed.text
    return filed.json()


def complete(base: str, keys: dict[str, str], request: dict[str, Any]) -> dict[str, Any]:
    done = httpx.post(f"{api(base)}/privacy/v1/requests/{request['id']}/complete",
                      headers={"apikey": keys["crm_service"]})
    assert done.status_code == 200, done.text
    return done.json()


@pytest.fixture(scope="module")
def people(base: str, keys: dict[str, str], sink: Sink) -> dict[str, Any]:
    """Cat and Dan, each with a profile; Dan keeps a contact row with Cat's email and a note on her profile.
    Cat's address is proved hers by a mail (an address is theirs who signed up with it only once proved)."""
    cat = sign_up(base, keys, CAT["email"], full_name=CAT["full_name"])
    prove(base, keys, sink, CAT["email"])
    dan = sign_up(base, keys, "dan@example.com", full_name="Daniel Other")
    cat_profile = post(base, cat, "profile", {"nickname": CAT["nickname"], "phone": CAT["phone"],
                                              "prefs": {"diet": CAT["diet"]}, "bio": "plays guitar",
                                              "tier": "gold", "born": 1987})
    dan_profile = post(base, dan, "profile", {"nickname": "Danno", "phone": "+1 555 0100", "tier": "gold",
                                              "born": 1990})
    contact = post(base, dan, "contact", {"email": CAT["email"], "label": "met at the conference"})
    dan_contact = post(base, dan, "contact", {"email": "dan@example.com", "label": "me"})
    note = post(base, dan, "note", {"profile_id": cat_profile["id"], "text": "ask about the tour"})
    return {"cat": cat, "dan": dan, "cat_profile": cat_profile, "dan_profile": dan_profile, "contact": contact,
            "dan_contact": dan_contact, "note": note}


def test_an_access_request_exports_exactly_the_users_data(base, keys, people):
    cat = people["cat"]
    consent = httpx.post(f"{api(base)}/auth/v1/privacy/consents", headers=bearer(cat),
                         json={"type": "marketing_email", "granted": True, "policy_version": "2026-01"})
    assert consent.status_code == 201, consent.text
    request = file_request(base, cat, "access")
    assert request["status"] == "pending" and request["due_at"] > request["created_at"]
    early = httpx.get(f"{api(base)}/auth/v1/privacy/requests/{request['id']}/export", headers=bearer(cat))
    assert early.status_code == 409 and early.json()["code"] == "privacy_request_closed"
    assert complete(base, keys, request)["status"] == "completed"

    exported = httpx.get(f"{api(base)}/auth/v1/privacy/requests/{request['id']}/export", headers=bearer(cat))
    assert exported.status_code == 200, exported.text
    export = exported.json()
    data = export["data"]
    assert [u["id"] for u in data["users"]] == [cat["user"]["id"]]
    assert "password_hash" not in data["users"][0] and data["users"][0]["full_name"] == CAT["full_name"]
    assert [p["id"] for p in data["profile"]] == [people["cat_profile"]["id"]]
    assert data["contact"] == [{"email": CAT["email"]}]  # Dan's row names her: only that field is hers
    assert "note" not in data  # Dan's note about her profile is Dan's
    assert export["consents"]["current"]["marketing_email"]["granted"] is True
    assert [r["id"] for r in export["privacy_requests"]] == [request["id"]]
    text = exported.text
    for foreign in (people["dan"]["user"]["id"], people["dan_profile"]["id"], people["dan_contact"]["id"],
                    people["note"]["id"], "dan@example.com", "Daniel Other", "Danno", "met at the conference"):
        assert foreign not in text

    admin_view = httpx.get(f"{api(base)}/privacy/v1/users/{cat['user']['id']}/export",
                           headers={"apikey": keys["crm_service"]})
    assert admin_view.status_code == 200 and admin_view.json()["data"] == data


async def leftovers(db: Database, slug: str, values: list[str]) -> list[tuple[str, str, str]]:
    """(table, column, value) for every text, varchar, json, array or enum column of the tenant's schema that holds
    one of `values` anywhere inside it."""
    schema = naming.schema_name(slug)
    found = []
    async with db.engine.connect() as conn:
        columns = (await conn.execute(sa.text(
            "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = :schema"
            " AND data_type IN ('text', 'character varying', 'json', 'jsonb', 'ARRAY', 'USER-DEFINED')"),
            {"schema": schema})).all()
        assert len(columns) >= 8
        for table, column in columns:
            for value in values:
                hit = await conn.scalar(sa.text(
                    f'SELECT count(*) FROM "{schema}"."{table}" WHERE "{column}"::text ILIKE :pattern'),
                    {"pattern": f"%{value}%"})
                if hit:
                    found.append((table, column, value))
    return found


async def test_an_erasure_leaves_no_personal_value_and_keeps_referencing_rows_readable(base, keys, people, db):
    cat, dan = people["cat"], people["dan"]
    values = [CAT["email"], CAT["full_name"], CAT["nickname"], CAT["phone"], CAT["diet"]]
    assert await leftovers(db, "crm", values)  # the probe finds them before
    request = file_request(base, cat, "erasure")
    done = complete(base, keys, request)
    assert done["status"] == "completed" and done["result"]["sessions_revoked"] >= 1

    assert await leftovers(db, "crm", values) == []
    note = httpx.get(f"{api(base)}/rest/v1/note", params={"select": "id,text,profile(id,nickname,bio,tier,born,phone,prefs)"},
                     headers=bearer(dan))
    assert note.status_code == 200, note.text
    [row] = note.json()
    assert row["text"] == "ask about the tour" and row["profile"]["id"] == people["cat_profile"]["id"]
    assert row["profile"]["bio"] == "plays guitar" and row["profile"]["nickname"].startswith("erased-")
    assert (row["profile"]["tier"], row["profile"]["born"], row["profile"]["phone"], row["profile"]["prefs"]) == \
        ("basic", 1900, None, None)  # required fields get a fixed value, optional ones NULL
    dans = httpx.get(f"{api(base)}/rest/v1/profile", params={"id": f"eq.{people['dan_profile']['id']}"},
                     headers=bearer(dan)).json()
    assert dans[0]["nickname"] == "Danno" and dans[0]["phone"] == "+1 555 0100"  # nobody else's data changed

    signin = httpx.post(f"{api(base)}/auth/v1/token", params={"grant_type": "password"},
                        headers={"apikey": keys["crm_anon"]}, json={"email": CAT["email"], "password": PASSWORD})
    assert signin.status_code == 400
    refresh = httpx.post(f"{api(base)}/auth/v1/token", params={"grant_type": "refresh_token"},
                         headers={"apikey": keys["crm_anon"]}, json={"refresh_token": cat["refresh_token"]})
    assert refresh.status_code == 400
    assert httpx.get(f"{api(base)}/auth/v1/user", headers=bearer(cat)).status_code == 403

    await audit_trail.seal(db)
    async with db.engine.connect() as conn:
        entries = (await conn.execute(sa.text(
            "SELECT action, data FROM system.audit_log WHERE action LIKE 'privacy.%' AND record_id = :id"),
            {"id": request["id"]})).all()
    assert {e.action for e in entries} == {"privacy.request_filed", "privacy.request_completed"}
    assert all(CAT["email"] not in orjson.dumps(e.data).decode() for e in entries)
    assert all(e.data["user_id"] == cat["user"]["id"] for e in entries)


def test_consents_keep_their_history_and_the_current_state(base, keys, people):
    dan = people["dan"]
    for granted, version in ((True, "v1"), (False, "v2")):
        made = httpx.post(f"{api(base)}/auth/v1/privacy/consents", headers=bearer(dan),
                          json={"type": "analytics", "granted": granted, "policy_version": version, "source": "settings"})
        assert made.status_code == 201, made.text
    mine = httpx.get(f"{api(base)}/auth/v1/privacy/consents", headers=bearer(dan)).json()
    assert [(h["granted"], h["policy_version"]) for h in mine["history"]] == [(True, "v1"), (False, "v2")]
    assert mine["current"]["analytics"]["granted"] is False and mine["current"]["analytics"]["source"] == "settings"
    assert set(mine["current"]) == {"analytics"}  # not Cat's
    admin = httpx.get(f"{api(base)}/privacy/v1/users/{dan['user']['id']}/consents", headers={"apikey": keys["crm_service"]})
    assert admin.status_code == 200 and admin.json() == mine
    bad = httpx.post(f"{api(base)}/auth/v1/privacy/consents", headers=bearer(dan),
                     json={"type": "Bad Type", "granted": "yes", "owner": "x"})
    assert bad.status_code == 422
    assert {d["field"] for d in bad.json()["details"]} >= {"type", "granted", "policy_version", "owner"}


def test_a_restricted_users_writes_are_refused_until_lifted(base, keys, people):
    dan = people["dan"]
    complete(base, keys, file_request(base, dan, "restriction"))
    refused = httpx.post(f"{api(base)}/rest/v1/contact", json={"label": "x"}, headers=bearer(dan))
    assert refused.status_code == 403 and refused.json()["code"] == "processing_restricted"
    graphql = httpx.post(f"{api(base)}/graphql/v1", headers=bearer(dan),
                         json={"query": 'mutation { insert_contact_one(object: {label: "y"}) { id } }'})
    assert "processing_restricted" in graphql.text
    account = httpx.put(f"{api(base)}/auth/v1/user", json={"data": {"full_name": "D"}}, headers=bearer(dan))
    assert account.status_code == 403 and account.json()["code"] == "processing_restricted"
    assert httpx.get(f"{api(base)}/rest/v1/contact", headers=bearer(dan)).status_code == 200  # reads go on
    complete(base, keys, file_request(base, dan, "lift_restriction"))
    assert httpx.post(f"{api(base)}/rest/v1/contact", json={"label": "x"}, headers=bearer(dan)).status_code == 201



async def test_writes_sent_together_just_after_a_restriction_are_all_refused(base, keys):
    """The first request after the notice reads the restricted users again; those arriving meanwhile wait
    for that read, not answer from the set the notice made stale."""
    ivan = sign_up(base, keys, "ivan.concurrent@example.com")
    httpx.get(f"{api(base)}/rest/v1/contact", headers=bearer(ivan))  # the tenant's set is held by now
    complete(base, keys, file_request(base, ivan, "restriction"))
    time.sleep(0.3)  # the NOTIFY reaches the server
    async with httpx.AsyncClient(headers=bearer(ivan), timeout=30) as client:
        answers = await asyncio.gather(*(client.post(f"{api(base)}/rest/v1/contact", json={"label": f"c{i}"})
                                         for i in range(8)))
    assert [a.status_code for a in answers] == [403] * 8, [a.text for a in answers]
    assert httpx.get(f"{api(base)}/rest/v1/contact?label=like.c*", headers=bearer(ivan)).json() == []

def test_a_platform_admin_processes_requests_from_the_platform_and_strangers_cannot(base, keys):
    fay = sign_up(base, keys, "fay@example.com")
    request = file_request(base, fay, "objection")
    root = httpx.post(f"{base}/api/platform/auth/v1/token", params={"grant_type": "password"},
                      json={"email": "root@platform.example", "password": PASSWORD}).json()
    stranger = httpx.post(f"{base}/api/platform/auth/v1/signup",
                          json={"email": "sid@platform.example", "password": PASSWORD}).json()
    payload = {"tenant": "crm", "request": request["id"], "decision": "complete"}
    for session, status in ((stranger, 403), (None, 403)):
        refused = httpx.post(f"{base}/api/platform/functions/v1/process_privacy_request", json=payload,
                             headers=bearer(session) if session else {})
        assert refused.status_code in (status, 401), refused.text
    no_reason = httpx.post(f"{base}/api/platform/functions/v1/process_privacy_request",
                           json={**payload, "decision": "reject"}, headers=bearer(root))
    assert no_reason.status_code == 422 and no_reason.json()["details"][0]["field"] == "reason"
    done = httpx.post(f"{base}/api/platform/functions/v1/process_privacy_request", json=payload, headers=bearer(root))
    assert done.status_code == 200 and done.json()["status"] == "completed", done.text
    assert done.json()["result"] == {"objected": True}
    listed = httpx.get(f"{base}/api/platform/rest/v1/privacy_requests", params={"id": f"eq.{request['id']}"},
                       headers=bearer(root)).json()
    assert listed[0]["status"] == "completed"
    assert httpx.get(f"{base}/api/platform/rest/v1/privacy_requests", headers=bearer(stranger)).json() == []


async def test_an_objection_is_recorded_and_requests_are_processed_at_once_when_the_tenant_says_so(base, keys, people, db):
    eve = sign_up(base, keys, "eve@example.com")
    objection = file_request(base, eve, "objection")
    assert objection["status"] == "pending"
    rejected = httpx.post(f"{api(base)}/privacy/v1/requests/{objection['id']}/reject", json={"reason": "duplicate"},
                          headers={"apikey": keys["crm_service"]})
    assert rejected.status_code == 200 and rejected.json()["status"] == "rejected"
    again = httpx.post(f"{api(base)}/privacy/v1/requests/{objection['id']}/complete",
                       headers={"apikey": keys["crm_service"]})
    assert again.status_code == 409
    with httpx.Client() as client:
        pending = client.get(f"{api(base)}/privacy/v1/requests", params={"status": "rejected"},
                             headers={"apikey": keys["crm_service"]}).json()
    assert [r["id"] for r in pending] == [objection["id"]]

    async with db.begin() as conn:
        await conn.execute(sa.text("UPDATE system.tenants SET settings = settings || "
                                   "'{\"privacy\": {\"auto_process\": true}}'::jsonb WHERE slug = 'crm'"))
    auto = file_request(base, eve, "objection")
    assert auto["status"] == "completed" and auto["processed_by"] == "auto"
    listed = httpx.get(f"{api(base)}/auth/v1/privacy/requests", headers=bearer(eve)).json()
    assert [r["status"] for r in listed] == ["rejected", "completed"]
    export = httpx.get(f"{api(base)}/privacy/v1/users/{eve['user']['id']}/export",
                       headers={"apikey": keys["crm_service"]}).json()
    assert export["privacy_flags"]["objected"] is True and export["privacy_flags"]["restricted"] is False


def test_a_platform_account_has_the_same_rights(base, keys):
    made = httpx.post(f"{base}/api/platform/auth/v1/signup", json={"email": "pat@platform.example", "password": PASSWORD})
    assert made.status_code == 200, made.text
    session = made.json()
    consent = httpx.post(f"{base}/api/platform/auth/v1/privacy/consents", headers=bearer(session),
                         json={"type": "terms", "granted": True, "policy_version": "1"})
    assert consent.status_code == 201, consent.text
    filed = httpx.post(f"{base}/api/platform/auth/v1/privacy/requests", json={"type": "access"}, headers=bearer(session))
    assert filed.status_code == 201 and filed.json()["status"] == "pending"


def test_nobody_else_reaches_the_privacy_endpoints(base, keys, people):
    dan, cat_id = people["dan"], people["cat"]["user"]["id"]
    outsider = sign_up(base, keys, "olga@example.com", slug="other")
    cat_request = httpx.get(f"{api(base)}/privacy/v1/requests", headers={"apikey": keys["crm_service"]}).json()[0]
    desk = [("GET", "/privacy/v1/requests"), ("POST", f"/privacy/v1/requests/{cat_request['id']}/complete"),
            ("GET", f"/privacy/v1/users/{cat_id}/export"), ("GET", f"/privacy/v1/users/{cat_id}/consents")]
    for method, path in desk:
        for headers, status in (({"apikey": keys["other_service"]}, 401), (bearer(outsider), 401),
                                (bearer(dan), 403), ({}, 403), ({"apikey": keys["crm_anon"]}, 403)):
            answer = httpx.request(method, f"{api(base)}{path}", headers=headers)
            assert answer.status_code == status, (method, path, headers, answer.text)
            assert cat_id not in answer.text
    own = [("GET", "/auth/v1/privacy/requests"), ("GET", "/auth/v1/privacy/consents"),
           ("POST", "/auth/v1/privacy/requests"), ("GET", f"/auth/v1/privacy/requests/{cat_request['id']}/export")]
    for method, path in own:
        for headers in ({"apikey": keys["other_service"]}, bearer(outsider), {}, {"apikey": keys["crm_service"]}):
            answer = httpx.request(method, f"{api(base)}{path}", headers=headers, json={"type": "access"})
            assert answer.status_code == 401, (method, path, answer.text)
    theirs = httpx.get(f"{api(base)}/auth/v1/privacy/requests/{cat_request['id']}/export", headers=bearer(dan))
    assert theirs.status_code == 404 and cat_id not in theirs.text


async def auto_processing(db: Database) -> None:
    async with db.begin() as conn:
        await conn.execute(sa.text("UPDATE system.tenants SET settings = settings || "
                                   "'{\"privacy\": {\"auto_process\": true}}'::jsonb WHERE slug = 'crm'"))


def mine(base: str, session: dict[str, Any], entity: str) -> list[dict[str, Any]]:
    found = httpx.get(f"{api(base)}/rest/v1/{entity}", headers=bearer(session))
    assert found.status_code == 200, found.text
    return found.json()


async def test_an_email_changed_to_someone_elses_neither_exports_nor_erases_their_rows(base, keys, db):
    await auto_processing(db)
    bob = sign_up(base, keys, "bob.secret@example.com")
    bobs = post(base, bob, "secret", {"text": "BOB PRIVATE PLANS", "note": "target@victim.com"})
    eve = sign_up(base, keys, "eve.attacker@example.com")
    changed = httpx.put(f"{api(base)}/auth/v1/user", json={"email": "target@victim.com"}, headers=bearer(eve))
    assert changed.status_code == 200, changed.text
    # the new address replaces the old only once confirmed from it (a mail to it): until then it is not hers
    assert changed.json()["email"] == "eve.attacker@example.com" and changed.json()["new_email"] == "target@victim.com"

    access = file_request(base, eve, "access")
    assert access["status"] == "completed"
    exported = httpx.get(f"{api(base)}/auth/v1/privacy/requests/{access['id']}/export", headers=bearer(eve))
    assert exported.status_code == 200, exported.text
    assert "secret" not in exported.json()["data"]
    assert "BOB PRIVATE PLANS" not in exported.text and bobs["id"] not in exported.text

    erasure = file_request(base, eve, "erasure")
    assert erasure["status"] == "completed" and "secret" not in erasure["result"]["rows_anonymised"]
    assert mine(base, bob, "secret") == [bobs]  # nothing of Bob's changed



async def test_a_sign_up_with_someone_elses_address_never_proved_neither_exports_nor_erases_their_rows(base, keys, db):
    """The tenant confirms no address by mail (the default): the sign-up is `verified` at once, yet nothing
    proved the address the signer's, so it ties no row naming it."""
    await auto_processing(db)
    kim = sign_up(base, keys, "kim.keeper@example.com")
    kims = post(base, kim, "secret", {"text": "KIM ABOUT LEO", "note": "leo.victim@example.com"})
    mallory = sign_up(base, keys, "leo.victim@example.com")
    assert mallory["user"]["verified"] is True
    access = file_request(base, mallory, "access")
    exported = httpx.get(f"{api(base)}/auth/v1/privacy/requests/{access['id']}/export", headers=bearer(mallory))
    assert exported.status_code == 200 and "secret" not in exported.json()["data"], exported.text
    assert "KIM ABOUT LEO" not in exported.text and kims["id"] not in exported.text
    erasure = file_request(base, mallory, "erasure")
    assert erasure["status"] == "completed" and "secret" not in erasure["result"]["rows_anonymised"]
    assert mine(base, kim, "secret") == [kims]  # nothing of Kim's changed

async def test_a_confirmed_email_exports_and_erases_only_the_fields_naming_it_in_others_rows(base, keys, db, sink):
    await auto_processing(db)
    gil = sign_up(base, keys, "gil.legit@example.com")
    prove(base, keys, sink, "gil.legit@example.com")
    hal = sign_up(base, keys, "hal.keeper@example.com")
    hals = post(base, hal, "secret", {"text": "HAL ABOUT GIL", "note": "Gil.Legit@example.com"})
    gils = post(base, gil, "secret", {"text": "GIL OWN TEXT", "note": "gil's own note"})

    access = file_request(base, gil, "access")
    export = httpx.get(f"{api(base)}/auth/v1/privacy/requests/{access['id']}/export", headers=bearer(gil))
    assert export.status_code == 200, export.text
    rows = export.json()["data"]["secret"]
    assert rows[0]["id"] == gils["id"] and rows[0]["text"] == "GIL OWN TEXT"  # her own row, whole
    assert rows[1:] == [{"note": "Gil.Legit@example.com"}]  # of Hal's row, only the field naming her
    assert "HAL ABOUT GIL" not in export.text and hals["id"] not in export.text

    erasure = file_request(base, gil, "erasure")
    assert erasure["status"] == "completed" and erasure["result"]["rows_anonymised"]["secret"] == 2
    assert mine(base, hal, "secret") == [{**hals, "note": None, "updated_at": mine(base, hal, "secret")[0]["updated_at"]}]
    async with db.engine.connect() as conn:
        own = (await conn.execute(sa.text(f'SELECT text, note FROM "{naming.schema_name("crm")}".secret WHERE id = :id'),
                                  {"id": gils["id"]})).one()
    assert tuple(own) == ("GIL OWN TEXT", None)  # her own row: every pii field erased, the rest kept


# -- the tenant's role, its plan's statement timeout and the actor, as every other request of the tenant ------

QUICK_MS = 400  # the statement timeout of the quick_gdpr plan


@pytest.fixture(scope="module")
async def quick(db: Database) -> dict[str, str]:
    """A tenant whose plan cancels a statement after QUICK_MS, with its keys."""
    plans = catalog.platform_tables()["plans"]
    async with db.begin() as conn:
        await conn.execute(plans.insert().values(code="quick_gdpr", name="Quick GDPR",
                                                 limits={"statement_timeout_ms": QUICK_MS}))
    await create_tenant(db, "quickcrm", source=SCHEMA, plan="quick_gdpr")
    return {f"quickcrm_{role}": (await create_api_key(db, "quickcrm", role, role)).key for role in ("anon", "service")}


async def behind_a_lock(database_url: str, table: str, request: Any) -> httpx.Response:
    """The answer to `request` (an async function of a client) while quickcrm's `table` is locked: a statement
    on it waits until the plan's timeout cancels it (without one it would wait for as long as the lock lasts)."""
    locker = await asyncpg.connect(driver_url(database_url))
    try:
        async with locker.transaction():
            await locker.execute(f'LOCK TABLE "{naming.schema_name("quickcrm")}".{table} IN ACCESS EXCLUSIVE MODE')
            async with httpx.AsyncClient(timeout=60) as client:
                return await request(client)
    finally:
        await locker.close()


async def test_an_erasure_runs_under_the_plans_statement_timeout_and_stops_cleanly(base, quick, database_url):
    eve = sign_up(base, quick, "eve@example.com", slug="quickcrm", full_name="Eve Quick")
    filed = httpx.post(f"{api(base, 'quickcrm')}/auth/v1/privacy/requests", json={"type": "erasure"}, headers=bearer(eve))
    assert filed.status_code == 201, filed.text
    url = f"{api(base, 'quickcrm')}/privacy/v1/requests/{filed.json()['id']}/complete"

    async def complete_it(client: httpx.AsyncClient) -> httpx.Response:
        return await client.post(url, headers={"apikey": quick["quickcrm_service"]})

    stuck = await behind_a_lock(database_url, "profile", complete_it)
    assert stuck.status_code == 504 and stuck.json()["code"] == "statement_timeout", stuck.text
    listed = httpx.get(f"{api(base, 'quickcrm')}/privacy/v1/requests", headers={"apikey": quick["quickcrm_service"]})
    assert [r["status"] for r in listed.json()] == ["pending"]  # nothing of it happened: one transaction
    async with httpx.AsyncClient(timeout=60) as client:  # the lock gone, the same erasure goes through
        assert (await complete_it(client)).json()["status"] == "completed"


async def test_an_export_runs_under_the_plans_statement_timeout_and_stops_cleanly(base, quick, database_url, sink):
    fay = sign_up(base, quick, "fay@example.com", slug="quickcrm")
    prove(base, quick, sink, "fay@example.com", slug="quickcrm")
    filed = httpx.post(f"{api(base, 'quickcrm')}/auth/v1/privacy/requests", json={"type": "access"}, headers=bearer(fay))
    done = httpx.post(f"{api(base, 'quickcrm')}/privacy/v1/requests/{filed.json()['id']}/complete",
                      headers={"apikey": quick["quickcrm_service"]})
    assert done.status_code == 200, done.text

    async def export(client: httpx.AsyncClient) -> httpx.Response:
        return await client.get(f"{api(base, 'quickcrm')}/auth/v1/privacy/requests/{filed.json()['id']}/export",
                                headers=bearer(fay))

    stuck = await behind_a_lock(database_url, "contact", export)
    assert stuck.status_code == 504 and stuck.json()["code"] == "statement_timeout", stuck.text


async def test_an_erasures_changes_are_audited_with_the_admin_who_carried_it_out(base, keys, database_url):
    """In the tenant `other` (whose requests wait for its admins: `crm` may process them at once by now)."""
    other = api(base, "other")
    ivy = sign_up(base, keys, "ivy@example.com", slug="other", full_name="Ivy Audit")
    made = httpx.post(f"{other}/rest/v1/profile", json={"nickname": "Ivy-42", "tier": "basic", "born": 1999},
                      headers={**bearer(ivy), "Prefer": "return=representation"})
    assert made.status_code == 201, made.text
    filed = httpx.post(f"{other}/auth/v1/privacy/requests", json={"type": "erasure"}, headers=bearer(ivy))
    assert filed.status_code == 201 and filed.json()["status"] == "pending", filed.text
    done = httpx.post(f"{other}/privacy/v1/requests/{filed.json()['id']}/complete",
                      headers={"apikey": keys["other_service"]})  # the tenant's service key, named "service"
    assert done.status_code == 200 and done.json()["status"] == "completed", done.text
    conn = await asyncpg.connect(driver_url(database_url))
    try:
        await conn.execute("SELECT backsaas_audit.seal(NULL)")
        entries = await conn.fetch("SELECT action, key_name FROM system.audit_log WHERE entity = 'profile' "
                                   "AND record_id = $1::uuid ORDER BY created_at, id", made.json()[0]["id"])
    finally:
        await conn.close()
    assert [e["action"] for e in entries] == ["create", "update"]
    assert entries[1]["key_name"] == "service"  # who erased it, not nobody
