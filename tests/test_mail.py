"""The mails the platform sends, end to end: a tenant's `/auth/v1` mail flows (GoTrue's recover, otp, verify,
resend, invite, sign-up confirmation, email change) and members' invitations, read from a local SMTP sink
(aiosmtpd) and followed by their link or code, as the mail's reader would.

Also: tokens refused when expired, reused or another tenant's; `redirect_to` refused off the allow list;
`/recover` telling nothing about who has an account; mails throttled per address; an SMTP server that is
down neither failing nor stalling the request (the mail is retried and arrives once it is up); and the
log transport when no SMTP server is configured."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest
import sqlalchemy as sa
import structlog
from structlog.testing import capture_logs

from engine import audit_trail, catalog, mailer
from engine.database import Database
from engine.identity.mailflows import TOKEN_KEY_PURPOSE, code_digest, link_digest
from engine.identity.signing import derive_key, rotate_signing_key
from engine.identity.throttle import LoginThrottle
from functions.keys import create_api_key
from functions.tenants import create_tenant
from functions.users import create_platform_admin
from tests.mail_sink import Sink, body_of, code_in, fragment_of, link_in
from tests.server import free_port, running_gateway

PASSWORD = "correct horse battery"
ADMIN_PASSWORD = "a long enough passphrase"
SITE = "https://app.shop.example"
SETTINGS = {
    "general": {"display_name": "Shop Co"},
    "auth": {"site_url": SITE, "uri_allow_list": ["https://admin.shop.example/auth/**", "myapp://callback"]},
    "email_templates": {"recovery": {"subject": "{{tenant_name}}: reset your password",
                                     "body": "Hello {{email}}, reset it at {{reset_url}} or type {{code}}."}},
}
http = httpx.Client(timeout=60)  # the machine may be loaded: a sign-in hashes with argon2


@pytest.fixture(scope="module")
async def keys(db: Database) -> dict[str, str]:
    made = {}
    await create_platform_admin(db, "root@platform.example", ADMIN_PASSWORD)
    for slug in ("shop", "other", "strict", "loose"):
        await create_tenant(db, slug, name=slug.title())
        for role in ("anon", "service"):
            made[f"{slug}_{role}"] = (await create_api_key(db, slug, role, role)).key
    return made


@pytest.fixture(scope="module")
def base(keys: dict[str, str], database_url: str, mail_env: None) -> Iterator[str]:
    with running_gateway(database_url) as url:
        admin = platform_admin(url)
        for slug, settings in (("shop", SETTINGS), ("other", {"auth": {"site_url": "https://other.example"}}),
                               ("strict", {"auth": {"site_url": "https://strict.example", "confirm_email": True}}),
                               ("loose", {"auth": {"site_url": "https://loose.example", "secure_email_change": False}})):
            done = http.post(f"{url}/api/platform/functions/v1/update_tenant", headers=admin,
                              json={"tenant": slug, "settings": settings})
            assert done.status_code == 200, done.text
        os.environ["BACKSAAS_PUBLIC_URL"] = url  # read per mail; mail_env restores it afterwards
        yield url


def platform_admin(base: str) -> dict[str, str]:
    session = http.post(f"{base}/api/platform/auth/v1/token", params={"grant_type": "password"},
                         json={"email": "root@platform.example", "password": ADMIN_PASSWORD})
    assert session.status_code == 200, session.text
    return {"Authorization": f"Bearer {session.json()['access_token']}"}


def auth(base: str, slug: str = "shop") -> str:
    return f"{base}/api/tenants/{slug}/auth/v1"


def anon(keys: dict[str, str], slug: str = "shop") -> dict[str, str]:
    return {"apikey": keys[f"{slug}_anon"], "Authorization": f"Bearer {keys[f'{slug}_anon']}"}


def bearer(keys: dict[str, str], session: dict, slug: str = "shop") -> dict[str, str]:
    return {"apikey": keys[f"{slug}_anon"], "Authorization": f"Bearer {session['access_token']}"}


def sign_up(base: str, keys: dict[str, str], address: str, slug: str = "shop") -> dict:
    made = http.post(f"{auth(base, slug)}/signup", headers=anon(keys, slug), json={"email": address, "password": PASSWORD})
    assert made.status_code == 200, made.text
    return made.json()


def sign_in(base: str, keys: dict[str, str], address: str, password: str = PASSWORD, slug: str = "shop") -> httpx.Response:
    return http.post(f"{auth(base, slug)}/token", params={"grant_type": "password"}, headers=anon(keys, slug),
                      json={"email": address, "password": password})


def recover(base: str, keys: dict[str, str], address: str, slug: str = "shop", **params: str) -> httpx.Response:
    return http.post(f"{auth(base, slug)}/recover", params=params, headers=anon(keys, slug), json={"email": address})


def verify(base: str, keys: dict[str, str], slug: str = "shop", **body: str) -> httpx.Response:
    return http.post(f"{auth(base, slug)}/verify", headers=anon(keys, slug), json=body)


async def audit_actions(db: Database, slug: str) -> list[str]:
    tenants, log = catalog.platform_tables()["tenants"], catalog.platform_tables()["audit_log"]
    await audit_trail.seal(db)
    async with db.engine.connect() as conn:
        return list((await conn.execute(sa.select(log.c.action).join(tenants, tenants.c.id == log.c.tenant_id)
                                        .where(tenants.c.slug == slug).order_by(log.c.seq))).scalars())


# -- recovery --


def test_recovery_mail_link_lands_on_the_redirect_with_a_session_that_sets_a_new_password(base, keys, sink):
    sign_up(base, keys, "rita@example.com")
    asked = recover(base, keys, "rita@example.com", redirect_to=f"{SITE}/reset")
    assert asked.status_code == 200 and asked.json() == {}

    mail = sink.to("rita@example.com")
    assert mail["Subject"] == "Shop Co: reset your password"  # the tenant's template and branding name
    assert mail["From"] == "Shop Co <mail@platform.example>"
    assert body_of(mail).startswith("Hello rita@example.com, reset it at http")
    link = link_in(mail)
    assert link.startswith(f"{auth(base)}/verify?") and "type=recovery" in link

    landed = http.get(link, follow_redirects=False)
    assert landed.status_code == 303, landed.text
    location = landed.headers["location"]
    assert location.startswith(f"{SITE}/reset#")
    session = fragment_of(location)
    assert session["type"] == "recovery" and session["token_type"] == "bearer" and session["refresh_token"]

    changed = http.put(f"{auth(base)}/user", headers=bearer(keys, session), json={"password": "a brand new passphrase"})
    assert changed.status_code == 200, changed.text
    assert sign_in(base, keys, "rita@example.com", "a brand new passphrase").status_code == 200
    assert sign_in(base, keys, "rita@example.com").status_code == 400


def test_recovery_code_verifies_once_by_post(base, keys, sink):
    sign_up(base, keys, "cody@example.com")
    assert recover(base, keys, "cody@example.com").status_code == 200
    code = code_in(sink.to("cody@example.com"))
    verified = verify(base, keys, type="recovery", email="cody@example.com", token=code)
    assert verified.status_code == 200, verified.text
    assert verified.json()["user"]["email"] == "cody@example.com" and verified.json()["access_token"]

    again = verify(base, keys, type="recovery", email="cody@example.com", token=code)
    assert again.status_code == 403 and again.json()["code"] == "otp_expired"
    assert "already been used" in again.json()["message"]


def test_a_used_link_is_refused_and_redirects_with_the_error(base, keys, sink):
    sign_up(base, keys, "lena@example.com")
    recover(base, keys, "lena@example.com")
    link = link_in(sink.to("lena@example.com"))
    assert http.get(link, follow_redirects=False).status_code == 303
    second = http.get(link, follow_redirects=False)
    assert second.status_code == 303
    assert second.headers["location"].startswith(f"{SITE}#")  # the site URL: no redirect_to was asked for
    error = fragment_of(second.headers["location"])
    assert error["error"] == "access_denied" and error["error_code"] == "otp_expired" and "access_token" not in error


async def test_an_expired_token_is_refused(base, keys, sink, db):
    sign_up(base, keys, "old@example.com")
    recover(base, keys, "old@example.com")
    mail = sink.to("old@example.com")
    tokens = catalog.platform_tables()["one_time_tokens"]
    async with db.begin() as conn:  # an hour goes by
        await conn.execute(tokens.update().where(tokens.c.email == "old@example.com")
                           .values(expires_at=sa.func.now() - sa.text("interval '1 second'")))
    refused = verify(base, keys, type="recovery", email="old@example.com", token=code_in(mail))
    assert refused.status_code == 403 and refused.json()["code"] == "otp_expired"
    assert "expired" in refused.json()["message"]
    token = parse_qs(urlsplit(link_in(mail)).query)["token"][0]
    assert verify(base, keys, type="recovery", token_hash=token).status_code == 403


async def test_a_copy_of_the_tokens_table_gives_no_code(base, keys, sink, db):
    """Codes and link tokens are stored as HMAC-SHA-256 under a key derived from the server's signing secret
    (not the secret itself): a million plain SHA-256 guesses no longer find a code."""
    sign_up(base, keys, "dump@example.com")
    recover(base, keys, "dump@example.com")
    mail = sink.to("dump@example.com")
    code, token = code_in(mail), parse_qs(urlsplit(link_in(mail)).query)["token"][0]
    tables = catalog.platform_tables()
    tokens, tenants, signing = tables["one_time_tokens"], tables["tenants"], tables["signing_keys"]
    async with db.engine.connect() as conn:
        tenant_id = str(await conn.scalar(sa.select(tenants.c.id).where(tenants.c.slug == "shop")))
        row = (await conn.execute(sa.select(tokens.c.code_hash, tokens.c.token_hash)
                                  .where(tokens.c.email == "dump@example.com"))).one()
        secret = await conn.scalar(sa.select(signing.c.secret).where(signing.c.retired_at.is_(None))
                                   .order_by(signing.c.created_at.desc()).limit(1))
    plain = hashlib.sha256(f"{tenant_id}:dump@example.com:{code}".encode()).hexdigest()
    assert row.code_hash != plain and row.token_hash != hashlib.sha256(token.encode()).hexdigest()
    key = derive_key(secret, TOKEN_KEY_PURPOSE)
    assert row.code_hash == code_digest(key, tenant_id, "dump@example.com", code)
    assert row.token_hash == link_digest(key, tenant_id, token)
    assert row.code_hash != code_digest(secret.encode(), tenant_id, "dump@example.com", code)  # a key of its own
    guesses = {hashlib.sha256(f"{tenant_id}:dump@example.com:{n:06d}".encode()).hexdigest() for n in range(1_000_000)}
    assert row.code_hash not in guesses
    assert verify(base, keys, type="recovery", email="dump@example.com", token=code).status_code == 200


async def test_a_code_mailed_before_a_signing_key_rotation_still_verifies(base, keys, sink, db):
    sign_up(base, keys, "rotated@example.com", slug="other")
    recover(base, keys, "rotated@example.com", slug="other")
    code = code_in(sink.to("rotated@example.com"))
    kid = await rotate_signing_key(db)
    deadline = time.monotonic() + 20
    while jwt.get_unverified_header(sign_in(base, keys, "rotated@example.com", slug="other").json()["access_token"]
                                    )["kid"] != kid:  # the gateway reloads its keys on the rotation's NOTIFY
        assert time.monotonic() < deadline, "the gateway never signed with the new key"
        time.sleep(0.2)
    answered = verify(base, keys, slug="other", type="recovery", email="rotated@example.com", token=code)
    assert answered.status_code == 200, answered.text
    recover(base, keys, "rotated@example.com", slug="other")  # made under the new key
    fresh = code_in(sink.to("rotated@example.com", 2))
    assert verify(base, keys, slug="other", type="recovery", email="rotated@example.com", token=fresh).status_code == 200


def test_a_token_of_one_tenant_is_refused_by_another(base, keys, sink):
    sign_up(base, keys, "twin@example.com")
    sign_up(base, keys, "twin@example.com", slug="other")
    recover(base, keys, "twin@example.com")
    mail = sink.to("twin@example.com")
    token = parse_qs(urlsplit(link_in(mail)).query)["token"][0]
    elsewhere = verify(base, keys, slug="other", type="recovery", token_hash=token)
    assert elsewhere.status_code == 403 and elsewhere.json()["code"] == "otp_expired"
    by_code = verify(base, keys, slug="other", type="recovery", email="twin@example.com", token=code_in(mail))
    assert by_code.status_code == 403
    assert verify(base, keys, type="recovery", token_hash=token).status_code == 200  # still good at home


def test_recover_tells_nothing_about_who_has_an_account(base, keys, sink):
    sign_up(base, keys, "known@example.com")
    unknown = recover(base, keys, "nobody-here@example.com")
    known = recover(base, keys, "known@example.com")
    assert (unknown.status_code, unknown.content) == (known.status_code, known.content) == (200, b"{}")
    sink.to("known@example.com")
    assert sink.count("nobody-here@example.com") == 0


# -- redirects --


def test_a_redirect_off_the_allow_list_is_refused(base, keys):
    sign_up(base, keys, "red@example.com")
    for evil in ("https://evil.example/steal", "https://app.shop.example.evil.example/x", "https://app.shop.example@evil.example/",
                 "https://admin.shop.example/other", "//evil.example", "javascript:alert(1)"):
        refused = recover(base, keys, "red@example.com", redirect_to=evil)
        assert refused.status_code == 400, (evil, refused.text)
        assert refused.json()["code"] == "redirect_to_not_allowed"
    for allowed in (f"{SITE}/any/path", "https://admin.shop.example/auth/callback", "myapp://callback"):
        assert recover(base, keys, "red@example.com", redirect_to=allowed).status_code == 200, allowed


def test_a_redirect_a_browser_reads_differently_is_refused(base, keys, sink):
    """Backslashes, userinfo, control and non-ASCII characters: Python's urlsplit and a browser disagree on
    the host (`https://evil.example\\@app.shop.example/` is evil.example to a browser)."""
    sign_up(base, keys, "slash@example.com")
    for evil in ("https://evil.example\\@app.shop.example/", "https:/\\evil.example", "https://evil.example%5c@app.shop.example/",
                 "https://u:p@app.shop.example/", "https://app.shop.example\t/x", "https://app.shop.exämple/",
                 "https://admin.shop.example/auth/..\\..\\x", "javascript://app.shop.example/%0aalert(1)"):
        refused = recover(base, keys, "slash@example.com", redirect_to=evil)
        assert refused.status_code == 400 and refused.json()["code"] == "redirect_to_not_allowed", (evil, refused.text)
    assert sink.count("slash@example.com") == 0
    recover(base, keys, "slash@example.com")
    backslashed = "redirect_to=https%3A%2F%2Fevil.example%5C%40app.shop.example%2F&x="
    link = link_in(sink.to("slash@example.com")).replace("redirect_to=", backslashed)
    answered = http.get(link, follow_redirects=False)
    assert answered.status_code == 400 and "location" not in answered.headers


def test_the_link_refuses_a_redirect_off_the_allow_list_instead_of_following_it(base, keys, sink):
    sign_up(base, keys, "hook@example.com")
    recover(base, keys, "hook@example.com")
    link = link_in(sink.to("hook@example.com")).replace("redirect_to=", "redirect_to=https%3A%2F%2Fevil.example%2F&x=")
    answered = http.get(link, follow_redirects=False)
    assert answered.status_code == 400 and answered.json()["code"] == "redirect_to_not_allowed"
    assert "location" not in answered.headers


# -- magic links and codes --


def test_a_magic_link_signs_an_existing_user_in(base, keys, sink):
    sign_up(base, keys, "magic@example.com")
    asked = http.post(f"{auth(base)}/otp", headers=anon(keys), json={"email": "magic@example.com", "create_user": False})
    assert asked.status_code == 200 and asked.json() == {}
    mail = sink.to("magic@example.com")
    assert mail["Subject"] == "Your Shop Co sign-in link"
    landed = http.get(link_in(mail), follow_redirects=False)
    session = fragment_of(landed.headers["location"])
    assert session["type"] == "magiclink"
    me = http.get(f"{auth(base)}/user", headers=bearer(keys, session))
    assert me.status_code == 200 and me.json()["email"] == "magic@example.com"


def test_an_otp_code_signs_up_a_new_address_confirmed(base, keys, sink):
    asked = http.post(f"{auth(base)}/otp", headers=anon(keys), json={"email": "fresh@example.com", "data": {"plan": "x"}})
    assert asked.status_code == 200
    mail = sink.to("fresh@example.com")
    assert mail["Subject"] == "Confirm your address for Shop Co"
    verified = verify(base, keys, type="email", email="fresh@example.com", token=code_in(mail))
    assert verified.status_code == 200, verified.text
    user = verified.json()["user"]
    assert user["email_confirmed_at"] is not None and user["verified"] is True and user["user_metadata"] == {"plan": "x"}


def test_otp_without_create_user_refuses_an_unknown_address(base, keys, sink):
    refused = http.post(f"{auth(base)}/otp", headers=anon(keys), json={"email": "ghost@example.com", "create_user": False})
    assert refused.status_code == 422 and refused.json()["code"] == "otp_disabled"
    assert sink.count("ghost@example.com") == 0


def test_wrong_codes_are_throttled_like_failed_sign_ins(base, keys, sink):
    sign_up(base, keys, "guess@example.com")
    recover(base, keys, "guess@example.com")
    right = code_in(sink.to("guess@example.com"))
    wrong = f"{(int(right) + 1) % 1_000_000:06d}"
    statuses = [verify(base, keys, type="recovery", email="guess@example.com", token=wrong).status_code for _ in range(6)]
    assert statuses[:5] == [403] * 5 and statuses[5] == 429
    assert verify(base, keys, type="recovery", email="guess@example.com", token=right).status_code == 429  # locked out


def test_concurrent_wrong_codes_and_passwords_are_counted_before_they_are_compared(base, keys, sink):
    sign_up(base, keys, "swarm@example.com", slug="other")
    recover(base, keys, "swarm@example.com", slug="other")
    right = code_in(sink.to("swarm@example.com"))
    guesses = [f"{(int(right) + 1 + i) % 1_000_000:06d}" for i in range(30)]
    with ThreadPoolExecutor(30) as pool:
        statuses = list(pool.map(lambda code: verify(base, keys, slug="other", type="recovery", email="swarm@example.com",
                                                     token=code).status_code, guesses))
    assert statuses.count(403) <= 5 and statuses.count(429) >= 20, statuses  # at most the account's 5 were compared

    sign_up(base, keys, "swarm2@example.com", slug="other")
    with ThreadPoolExecutor(20) as pool:
        statuses = list(pool.map(lambda n: sign_in(base, keys, "swarm2@example.com", f"wrong guess {n}", slug="other")
                                 .status_code, range(20)))
    assert statuses.count(400) <= 5 and statuses.count(429) >= 10, statuses


def test_right_codes_and_passwords_are_never_counted_as_attempts(base, keys, sink):
    sign_up(base, keys, "slip@example.com", slug="other")
    recover(base, keys, "slip@example.com", slug="other")
    right = code_in(sink.to("slip@example.com"))
    wrong = f"{(int(right) + 1) % 1_000_000:06d}"
    for _ in range(4):
        assert verify(base, keys, slug="other", type="recovery", email="slip@example.com", token=wrong).status_code == 403
    assert verify(base, keys, slug="other", type="recovery", email="slip@example.com", token=right).status_code == 200
    assert [sign_in(base, keys, "slip@example.com", slug="other").status_code for _ in range(6)] == [200] * 6


def test_mails_to_one_address_are_throttled_alike_for_known_and_unknown_addresses(base, keys, sink):
    sign_up(base, keys, "flood@example.com", slug="other")
    for address in ("flood@example.com", "flood-nobody@example.com"):
        statuses = [recover(base, keys, address, slug="other").status_code for _ in range(6)]
        assert statuses == [200] * 5 + [429], (address, statuses)
        limited = recover(base, keys, address, slug="other")
        assert limited.json()["code"] == "over_email_send_rate_limit" and int(limited.headers["retry-after"]) > 0
    sink.to("flood@example.com", 5)
    assert sink.count("flood@example.com") == 5


REDIS_URL = os.environ.get("BACKSAAS_TEST_REDIS_URL", "redis://127.0.0.1:6379")


def redis_answers(url: str) -> bool:
    import socket

    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), timeout=1):
            return True
    except OSError:
        return False


async def concurrent_guesses(throttles: list[LoginThrottle], guesses: int) -> tuple[int, list[str]]:
    """`guesses` attempts on one account held open at once, spread over `throttles` (one per gateway process):
    how many were let in to be evaluated, and what each got."""
    import asyncio
    import uuid

    tenant, inside, release = str(uuid.uuid4()), [0], asyncio.Event()

    async def guess(throttle: LoginThrottle) -> str:
        try:
            async with throttle.attempt(tenant, "target@example.com", None):
                inside[0] += 1
                await release.wait()
        except Exception as exc:  # the answer is what the test looks at
            return getattr(exc, "code", type(exc).__name__)
        return "evaluated"

    running = [asyncio.ensure_future(guess(throttles[n % len(throttles)])) for n in range(guesses)]
    await asyncio.sleep(1)
    let_in = inside[0]
    release.set()
    return let_in, list(await asyncio.gather(*running))


@pytest.mark.skipif(not redis_answers(REDIS_URL), reason=f"needs a Redis at {REDIS_URL} (BACKSAAS_TEST_REDIS_URL)")
async def test_concurrent_guesses_are_bounded_across_gateway_processes_sharing_redis():
    processes = [LoginThrottle(REDIS_URL), LoginThrottle(REDIS_URL), LoginThrottle(REDIS_URL)]
    let_in, answers = await concurrent_guesses(processes, 30)
    assert let_in == 5 and answers.count("evaluated") == 5, answers  # the account's 5, not 5 per process
    assert set(answers) == {"evaluated", "over_request_rate_limit"}, answers
    let_in, _ = await concurrent_guesses(processes, 3)  # every attempt that ended gave its place back
    assert let_in == 3


async def test_the_throttle_counts_in_memory_while_redis_is_down():
    with capture_logs() as logs:
        down = LoginThrottle(f"redis://127.0.0.1:{free_port()}")  # nothing listens there
        let_in, answers = await concurrent_guesses([down], 12)
        await down.failed("t", "someone@example.com", "192.0.2.1")
        await down.mail("t", "someone@example.com", "192.0.2.1")
    assert let_in == 5 and answers.count("evaluated") == 5, answers  # bounded in this process, no error
    assert any(e["event"] == "throttle.redis_unavailable" for e in logs)


# -- sign-up confirmation --


def test_a_tenant_that_confirms_emails_signs_up_without_a_session_until_the_mail_is_followed(base, keys, sink):
    made = http.post(f"{auth(base, 'strict')}/signup", headers=anon(keys, "strict"),
                      json={"email": "conf@example.com", "password": PASSWORD})
    assert made.status_code == 200, made.text
    assert "access_token" not in made.json() and made.json()["email_confirmed_at"] is None
    assert made.json()["confirmation_sent_at"]
    refused = sign_in(base, keys, "conf@example.com", slug="strict")
    assert refused.status_code == 400 and refused.json()["code"] == "email_not_confirmed"

    first = sink.to("conf@example.com")
    assert first["Subject"] == "Confirm your address for Strict"
    resent = http.post(f"{auth(base, 'strict')}/resend", headers=anon(keys, "strict"),
                        json={"type": "signup", "email": "conf@example.com"})
    assert resent.status_code == 200
    second = sink.to("conf@example.com", 2)
    stale = http.get(link_in(first), follow_redirects=False)  # replaced by the resent one
    assert fragment_of(stale.headers["location"])["error_code"] == "otp_expired"
    landed = http.get(link_in(second), follow_redirects=False)
    assert landed.headers["location"].startswith("https://strict.example#access_token=")
    assert fragment_of(landed.headers["location"])["type"] == "signup"
    assert sign_in(base, keys, "conf@example.com", slug="strict").status_code == 200


def test_a_password_set_by_whoever_signed_up_with_the_address_stops_working_once_its_owner_confirms_it(base, keys, sink):
    made = http.post(f"{auth(base, 'strict')}/signup", headers=anon(keys, "strict"),
                     json={"email": "owner@example.com", "password": "the squatter's passphrase"})
    assert made.status_code == 200, made.text
    asked = http.post(f"{auth(base, 'strict')}/otp", headers=anon(keys, "strict"), json={"email": "owner@example.com"})
    assert asked.status_code == 200
    landed = http.get(link_in(sink.to("owner@example.com", 2)), follow_redirects=False)
    session = fragment_of(landed.headers["location"])
    assert session["type"] == "magiclink" and session["access_token"]
    squatter = sign_in(base, keys, "owner@example.com", "the squatter's passphrase", slug="strict")
    assert squatter.status_code == 400 and squatter.json()["code"] == "invalid_credentials"
    me = http.get(f"{auth(base, 'strict')}/user", headers=bearer(keys, session, "strict"))
    assert me.status_code == 200 and me.json()["verified"] is True


def test_a_signup_confirmation_keeps_the_password_it_was_signed_up_with(base, keys, sink):
    http.post(f"{auth(base, 'strict')}/signup", headers=anon(keys, "strict"),
              json={"email": "keeper@example.com", "password": PASSWORD})
    landed = http.get(link_in(sink.to("keeper@example.com")), follow_redirects=False)
    assert fragment_of(landed.headers["location"])["type"] == "signup"
    assert sign_in(base, keys, "keeper@example.com", slug="strict").status_code == 200


# -- email change --


def test_a_new_email_replaces_the_old_only_once_both_addresses_have_confirmed(base, keys, sink):
    """GoTrue's secure email change (its default): a session alone (a stolen one) cannot move the account to
    an address of its holder's; the current address must confirm too."""
    session = sign_up(base, keys, "before@example.com")
    asked = http.put(f"{auth(base)}/user", headers=bearer(keys, session), json={"email": "After@Example.com"})
    assert asked.status_code == 200, asked.text
    assert asked.json()["email"] == "before@example.com" and asked.json()["new_email"] == "after@example.com"

    to_new, to_current = sink.to("after@example.com"), sink.to("before@example.com")
    for mail in (to_new, to_current):
        assert "from before@example.com to after@example.com" in body_of(mail)
    token = parse_qs(urlsplit(link_in(to_new)).query)["token"][0]
    first = verify(base, keys, type="email_change", token_hash=token)
    assert first.status_code == 200, first.text
    assert first.json() == {"msg": "Confirmation link accepted. Please proceed to confirm link sent to the other email",
                            "code": "200"}
    assert http.get(f"{auth(base)}/user", headers=bearer(keys, session)).json()["email"] == "before@example.com"
    assert sign_in(base, keys, "before@example.com").status_code == 200

    again = verify(base, keys, type="email_change", token_hash=token)  # the same confirmation twice is not two
    assert again.status_code == 403 and again.json()["code"] == "otp_expired"
    done = verify(base, keys, type="email_change", email="before@example.com", token=code_in(to_current))
    assert done.status_code == 200, done.text
    assert done.json()["user"]["email"] == "after@example.com" and done.json()["user"]["verified"] is True
    assert sign_in(base, keys, "after@example.com").status_code == 200
    assert sign_in(base, keys, "before@example.com").status_code == 400


def test_the_first_email_change_link_lands_with_gotrues_message_and_no_session(base, keys, sink):
    session = sign_up(base, keys, "linkfirst@example.com")
    asked = http.put(f"{auth(base)}/user", params={"redirect_to": f"{SITE}/account"}, headers=bearer(keys, session),
                     json={"email": "linksecond@example.com"})
    assert asked.status_code == 200, asked.text
    to_current, to_new = sink.to("linkfirst@example.com"), sink.to("linksecond@example.com")
    landed = http.get(link_in(to_current), follow_redirects=False)
    assert landed.status_code == 303 and landed.headers["location"].startswith(f"{SITE}/account#")
    assert fragment_of(landed.headers["location"]) == {
        "message": "Confirmation link accepted. Please proceed to confirm link sent to the other email", "sb": ""}
    wrong_address = verify(base, keys, type="email_change", email="linkfirst@example.com", token=code_in(to_new))
    assert wrong_address.status_code == 403  # the new address's code, given with the current address
    done = fragment_of(http.get(link_in(to_new), follow_redirects=False).headers["location"])
    assert done["type"] == "email_change" and done["access_token"]
    me = http.get(f"{auth(base)}/user", headers={"apikey": keys["shop_anon"], "Authorization": f"Bearer {done['access_token']}"})
    assert me.json()["email"] == "linksecond@example.com"


def test_a_tenant_that_turns_secure_email_change_off_confirms_from_the_new_address_alone(base, keys, sink):
    session = sign_up(base, keys, "solo@example.com", slug="loose")
    asked = http.put(f"{auth(base, 'loose')}/user", headers=bearer(keys, session, "loose"), json={"email": "solo2@example.com"})
    assert asked.status_code == 200, asked.text
    done = verify(base, keys, slug="loose", type="email_change", email="solo2@example.com",
                  token=code_in(sink.to("solo2@example.com")))
    assert done.status_code == 200 and done.json()["user"]["email"] == "solo2@example.com", done.text
    assert sink.count("solo@example.com") == 0


def test_secure_email_change_must_be_a_boolean(base):
    refused = http.post(f"{base}/api/platform/functions/v1/update_tenant", headers=platform_admin(base), json={
        "tenant": "loose", "settings": {"auth": {"site_url": "https://loose.example", "secure_email_change": "no"}}})
    assert 400 <= refused.status_code < 500 and refused.json()["code"], refused.text
    assert "secure_email_change" in refused.text


def test_a_pending_email_change_is_resent_with_fresh_tokens_to_both_addresses(base, keys, sink):
    session = sign_up(base, keys, "mover@example.com")
    http.put(f"{auth(base)}/user", headers=bearer(keys, session), json={"email": "moved@example.com"})
    first_new, first_current = sink.to("moved@example.com"), sink.to("mover@example.com")
    assert verify(base, keys, type="email_change", email="mover@example.com",  # half confirmed: starts over
                  token=code_in(first_current)).status_code == 200
    resent = http.post(f"{auth(base)}/resend", headers=anon(keys), json={"type": "email_change", "email": "moved@example.com"})
    assert resent.status_code == 200 and resent.json() == {}
    second_new, second_current = sink.to("moved@example.com", 2), sink.to("mover@example.com", 2)
    assert "from mover@example.com to moved@example.com" in body_of(second_new)
    assert verify(base, keys, type="email_change", email="moved@example.com", token=code_in(first_new)).status_code == 403
    half = verify(base, keys, type="email_change", email="moved@example.com", token=code_in(second_new))
    assert half.status_code == 200 and "msg" in half.json(), half.text
    done = verify(base, keys, type="email_change", email="mover@example.com", token=code_in(second_current))
    assert done.status_code == 200 and done.json()["user"]["email"] == "moved@example.com"


def test_malformed_verifications_are_refused_with_a_code_never_a_500(base, keys):
    for body in ({"type": "email_change", "token_hash": ["x"]}, {"type": "email_change", "email": "a@b.example", "token": 123},
                 {"type": "email_change", "email": "not an address", "token": "123456"}, {"type": "email_change"},
                 {"type": "email_change", "token_hash": "x" * 5000}, {"type": "email_change_current", "token_hash": "x"},
                 {"type": "email_change", "email": "a@b.example", "token": "12345\u0000"}):
        refused = http.post(f"{auth(base)}/verify", headers=anon(keys), json=body)
        assert 400 <= refused.status_code < 500 and refused.json()["code"] and refused.json()["message"], (body, refused.text)
    for body in ({"type": "email_change", "email": 5}, {"type": "email_change"},
                 {"type": "phone_change", "email": "a@b.example"}):
        refused = http.post(f"{auth(base)}/resend", headers=anon(keys), json=body)
        assert 400 <= refused.status_code < 500 and refused.json()["code"], (body, refused.text)


def test_email_change_mails_are_throttled_per_address(base, keys, sink):
    session = sign_up(base, keys, "pusher@example.com", slug="other")
    asked = [http.put(f"{auth(base, 'other')}/user", headers=bearer(keys, session, "other"),
                      json={"email": "inbox@example.com"}) for _ in range(6)]
    assert [a.status_code for a in asked] == [200] * 5 + [429], [a.text for a in asked]
    assert asked[5].json()["code"] == "over_email_send_rate_limit"
    sink.to("inbox@example.com", 5)
    assert sink.count("inbox@example.com") == 5


def test_invitation_mails_are_throttled_per_address(base, keys, sink):
    service = {"apikey": keys["strict_service"], "Authorization": f"Bearer {keys['strict_service']}"}
    statuses = []
    for _ in range(6):  # each invitation makes the account: it is removed before the next one
        statuses.append(http.post(f"{auth(base, 'strict')}/invite", headers=service,
                                  json={"email": "invitee@example.com"}).status_code)
        if statuses[-1] == 200:
            removed = http.delete(f"{base}/api/tenants/strict/rest/v1/users", params={"email": "eq.invitee@example.com"},
                                  headers=service)
            assert removed.status_code in (200, 204), removed.text
    assert statuses == [200] * 5 + [429], statuses


def test_a_token_mailed_to_the_old_address_is_refused_after_the_email_changed(base, keys, sink):
    session = sign_up(base, keys, "stale@example.com")
    recover(base, keys, "stale@example.com")
    old_link = link_in(sink.to("stale@example.com"))
    asked = http.put(f"{auth(base)}/user", headers=bearer(keys, session), json={"email": "fresh-stale@example.com"})
    assert asked.status_code == 200, asked.text
    http.get(link_in(sink.to("stale@example.com", 2)), follow_redirects=False)  # the current address confirms
    confirmed = http.get(link_in(sink.to("fresh-stale@example.com")), follow_redirects=False)
    assert "access_token" in fragment_of(confirmed.headers["location"])
    refused = fragment_of(http.get(old_link, follow_redirects=False).headers["location"])
    assert refused["error_code"] == "otp_expired" and "access_token" not in refused


async def test_a_token_whose_account_changed_address_is_refused(base, keys, sink, db):
    """The token's address is checked against the account's at verification, whatever deleted the token or not."""
    sign_up(base, keys, "moved-away@example.com", slug="other")
    recover(base, keys, "moved-away@example.com", slug="other")
    code = code_in(sink.to("moved-away@example.com"))
    service = {"apikey": keys["other_service"], "Authorization": f"Bearer {keys['other_service']}"}
    changed = http.patch(f"{base}/api/tenants/other/rest/v1/users", params={"email": "eq.moved-away@example.com"},
                         headers=service, json={"email": "moved-here@example.com"})
    assert changed.status_code in (200, 204), changed.text
    refused = verify(base, keys, slug="other", type="recovery", email="moved-away@example.com", token=code)
    assert refused.status_code == 403 and refused.json()["code"] == "otp_expired"
    assert "changed" in refused.json()["message"]


def test_a_password_change_voids_the_recovery_and_magic_links_mailed_before(base, keys, sink):
    session = sign_up(base, keys, "changer@example.com")
    recover(base, keys, "changer@example.com")
    recovery = link_in(sink.to("changer@example.com"))
    http.post(f"{auth(base)}/otp", headers=anon(keys), json={"email": "changer@example.com"})
    magic = link_in(sink.to("changer@example.com", 2))
    changed = http.put(f"{auth(base)}/user", headers=bearer(keys, session), json={"password": "a changed passphrase"})
    assert changed.status_code == 200, changed.text
    for link in (recovery, magic):
        landed = fragment_of(http.get(link, follow_redirects=False).headers["location"])
        assert landed["error_code"] == "otp_expired" and "access_token" not in landed


def test_a_platform_account_recovers_its_password_at_the_platforms_auth(base, keys, sink):
    asked = http.post(f"{base}/api/platform/auth/v1/recover", json={"email": "root@platform.example"})
    assert asked.status_code == 200
    mail = sink.to("root@platform.example")
    assert link_in(mail).startswith(f"{base}/api/platform/auth/v1/verify?")
    verified = http.post(f"{base}/api/platform/auth/v1/verify",
                         json={"type": "recovery", "email": "root@platform.example", "token": code_in(mail)})
    assert verified.status_code == 200 and verified.json()["user"]["email"] == "root@platform.example"


def test_with_smtp_and_no_public_url_a_mail_flow_refuses_instead_of_linking_to_the_host_header(base, keys, sink, monkeypatch):
    sign_up(base, keys, "hosted@example.com")
    monkeypatch.delenv("BACKSAAS_PUBLIC_URL")
    for asked in (http.post(f"{auth(base)}/recover", headers={**anon(keys), "Host": "evil.example"},
                            json={"email": "hosted@example.com"}),
                  http.post(f"{base}/api/platform/auth/v1/recover", headers={"Host": "evil.example"},
                            json={"email": "root@platform.example"}),
                  http.post(f"{auth(base)}/otp", headers={**anon(keys), "Host": "evil.example"},
                            json={"email": "hosted@example.com"})):
        assert asked.status_code == 500 and asked.json()["code"] == "mail_not_configured", asked.text
    monkeypatch.setenv("BACKSAAS_PUBLIC_URL", base)
    assert recover(base, keys, "hosted@example.com").status_code == 200
    assert link_in(sink.to("hosted@example.com")).startswith(f"{auth(base)}/verify?")  # the first mail: none went out before


def test_serve_refuses_an_smtp_url_without_a_public_url():
    from engine import mailer

    with pytest.raises(mailer.MailMisconfigured) as refused:
        mailer.MailSettings.from_env({"BACKSAAS_SMTP_URL": "smtp://mail.example:587"})
    assert refused.value.details[0].path == "BACKSAAS_PUBLIC_URL"
    assert mailer.MailSettings.from_env({}).smtp is None  # the log transport needs none


def test_an_email_change_to_a_taken_address_is_refused(base, keys, sink):
    sign_up(base, keys, "taken@example.com")
    session = sign_up(base, keys, "wants@example.com")
    refused = http.put(f"{auth(base)}/user", headers=bearer(keys, session), json={"email": "taken@example.com"})
    assert refused.status_code == 422 and refused.json()["code"] == "email_exists"


# -- invitations --


def test_a_tenant_admin_invites_an_end_user_who_accepts_by_the_link(base, keys, sink):
    service = {"apikey": keys["shop_service"], "Authorization": f"Bearer {keys['shop_service']}"}
    assert http.post(f"{auth(base)}/invite", headers=anon(keys), json={"email": "inv@example.com"}).status_code == 403
    invited = http.post(f"{auth(base)}/invite", headers=service, json={"email": "inv@example.com"})
    assert invited.status_code == 200, invited.text
    assert invited.json()["email"] == "inv@example.com" and invited.json()["email_confirmed_at"] is None
    mail = sink.to("inv@example.com")
    assert mail["Subject"] == "You are invited to Shop Co"
    session = fragment_of(http.get(link_in(mail), follow_redirects=False).headers["location"])
    assert session["type"] == "invite"
    set_password = http.put(f"{auth(base)}/user", headers=bearer(keys, session), json={"password": "my own passphrase"})
    assert set_password.status_code == 200 and set_password.json()["verified"] is True
    assert sign_in(base, keys, "inv@example.com", "my own passphrase").status_code == 200


def test_a_member_invitation_is_mailed_with_the_accept_link(base, keys, sink):
    invited = http.post(f"{base}/api/platform/functions/v1/invite_member", headers=platform_admin(base),
                         json={"tenant": "shop", "email": "dev@example.com", "role": "developer"})
    assert invited.status_code == 200, invited.text
    mail = sink.to("dev@example.com")
    assert mail["Subject"] == "You are invited to Shop Co" and "as developer" in body_of(mail)
    accept = re.search(r"http\S+/admin/accept\?token=\S+", body_of(mail))
    assert accept and accept.group(0) == f"{base}/admin/accept?token={invited.json()['token']}"
    joined = http.post(f"{base}/api/platform/functions/v1/accept_invitation",
                        json={"token": invited.json()["token"], "password": "the developer's passphrase"})
    assert joined.status_code == 200 and joined.json()["tenant"] == "shop"


def test_a_member_invitation_from_the_cli_is_mailed_before_the_command_returns(base, keys, sink, database_url):
    env = {**os.environ, "DATABASE_URL": database_url, "BACKSAAS_SMTP_URL": f"smtp://127.0.0.1:{sink.port}",
           "BACKSAAS_PUBLIC_URL": "https://console.platform.example"}
    run = subprocess.run([sys.executable, "-m", "gateway.cli", "member", "invite", "--tenant", "shop", "--email",
                          "cli@example.com", "--role", "viewer", "--json"], env=env, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    token = json.loads(run.stdout)["token"]
    assert sink.count("cli@example.com") == 1  # already there: the command waited for it
    assert f"https://console.platform.example/admin/accept?token={token}" in body_of(sink.to("cli@example.com"))


# -- templates --


def test_an_html_template_goes_out_with_a_plain_text_part_whose_link_works(base, keys, sink):
    html_body = '<p>Hello {{email}},</p><p><a href="{{link_url}}">Sign in to {{tenant_name}}</a></p><p>Code: <b>{{code}}</b></p>'
    settings = {"auth": {"site_url": "https://other.example"},
                "email_templates": {"magic_link": {"subject": "Sign in to {{tenant_name}}", "body": html_body}}}
    done = http.post(f"{base}/api/platform/functions/v1/update_tenant", headers=platform_admin(base),
                     json={"tenant": "other", "settings": settings})
    assert done.status_code == 200, done.text
    sign_up(base, keys, "html@example.com", slug="other")
    assert http.post(f"{auth(base, 'other')}/otp", headers=anon(keys, "other"),
                     json={"email": "html@example.com"}).status_code == 200
    mail = sink.to("html@example.com")
    html_part = mail.get_body(("html",))
    assert html_part is not None and "&amp;type=magiclink" in html_part.get_content()  # escaped in HTML
    text = body_of(mail).replace("\r\n", "\n")
    assert text.startswith("Hello html@example.com,\nSign in to Other (http") and "<" not in text
    landed = http.get(link_in(mail), follow_redirects=False)
    assert fragment_of(landed.headers["location"])["type"] == "magiclink"
    assert verify(base, keys, slug="other", type="magiclink", email="html@example.com",
                  token=code_in(mail)).status_code == 403  # the link used the token: its code too


def test_an_erased_account_does_not_come_back_by_a_token_mailed_before_its_erasure(base, keys, sink):
    done = http.post(f"{base}/api/platform/functions/v1/update_tenant", headers=platform_admin(base),
                     json={"tenant": "strict", "settings": {"auth": {"site_url": "https://strict.example"},
                                                             "privacy": {"auto_process": True}}})
    assert done.status_code == 200, done.text
    session = sign_up(base, keys, "gone@example.com", slug="strict")
    assert recover(base, keys, "gone@example.com", slug="strict").status_code == 200
    token = parse_qs(urlsplit(link_in(sink.to("gone@example.com"))).query)["token"][0]
    erased = http.post(f"{auth(base, 'strict')}/privacy/requests", headers=bearer(keys, session, "strict"),
                       json={"type": "erasure"})
    assert erased.status_code == 201 and erased.json()["status"] == "completed", erased.text
    refused = verify(base, keys, slug="strict", type="recovery", token_hash=token)  # erasure deleted its tokens
    assert refused.status_code == 403 and refused.json()["code"] == "otp_expired"


# -- the audit trail --


async def test_every_mail_flow_is_audited(base, keys, sink, db):
    sign_up(base, keys, "trail@example.com", slug="other")
    recover(base, keys, "trail@example.com", slug="other")
    code = code_in(sink.to("trail@example.com"))
    assert verify(base, keys, slug="other", type="recovery", email="trail@example.com", token="000000"
                  if code != "000000" else "111111").status_code == 403
    assert verify(base, keys, slug="other", type="recovery", email="trail@example.com", token=code).status_code == 200
    actions = await audit_actions(db, "other")
    for action in ("auth.recovery_requested", "auth.verify_failed", "auth.verified"):
        assert action in actions, actions


# -- delivery --


def test_a_down_smtp_server_neither_fails_nor_stalls_the_request_and_the_mail_arrives_once_it_is_up(
        keys, database_url, mail_env, monkeypatch):
    port = free_port()
    monkeypatch.setenv("BACKSAAS_SMTP_URL", f"smtp://127.0.0.1:{port}")  # nothing listens there yet
    with capture_logs() as logs, running_gateway(database_url) as url:
        sign_up(url, keys, "patient@example.com", slug="other")
        asked = recover(url, keys, "patient@example.com", slug="other")
        assert asked.status_code == 200 and asked.json() == {}
        deadline = time.monotonic() + 20
        while not any(e["event"] == "mail.retry" for e in logs) and time.monotonic() < deadline:
            time.sleep(0.05)
        retry = next(e for e in logs if e["event"] == "mail.retry")
        assert retry["attempt"] == 1 and retry["kind"] == "recovery" and retry["to_domain"] == "example.com"
        assert retry["to_sha256"] == hashlib.sha256(b"patient@example.com").hexdigest()
        queued = [e for e in logs if e["event"] in ("mail.queued", "mail.retry")]
        assert queued and not any("subject" in e or "to" in e or "body" in e for e in queued), queued
        late = Sink(port).start()
        try:
            mail = late.to("patient@example.com")
            assert "reset" in mail["Subject"].lower()
        finally:
            late.stop()


def test_without_an_smtp_url_mails_are_written_to_the_log(keys, database_url, mail_env, monkeypatch):
    monkeypatch.delenv("BACKSAAS_SMTP_URL")
    with capture_logs() as logs, running_gateway(database_url) as url:
        sign_up(url, keys, "logged@example.com", slug="other")
        assert recover(url, keys, "logged@example.com", slug="other").status_code == 200
        deadline = time.monotonic() + 20
        while not any(e["event"] == "mail.not_sent" for e in logs) and time.monotonic() < deadline:
            time.sleep(0.05)
    entry = next(e for e in logs if e["event"] == "mail.not_sent")
    assert entry["to"] == "logged@example.com" and entry["subject"] == "Reset your Other password"
    assert "/verify?token=" in entry["body"] and entry["log_level"] == "warning"


def test_a_secret_placeholder_in_a_subject_is_refused(base):
    for placeholder in ("code", "reset_url"):
        refused = http.post(f"{base}/api/platform/functions/v1/update_tenant", headers=platform_admin(base), json={
            "tenant": "other", "settings": {"auth": {"site_url": "https://other.example"}, "email_templates": {
                "recovery": {"subject": f"Your code: {{{{{placeholder}}}}}", "body": "{{reset_url}} {{code}}"}}}})
        assert 400 <= refused.status_code < 500, refused.text
        problem = refused.json()["details"][0]
        assert problem["field"] == "settings.email_templates.recovery.subject" and placeholder in problem["message"]


async def test_mail_workers_do_not_log_as_the_request_that_started_them():
    seen: list[dict[str, Any]] = []

    class Recording:
        async def deliver(self, mail: mailer.Mail) -> None:
            seen.append(structlog.contextvars.get_contextvars())

    sending = mailer.Mailer(mailer.MailSettings(None), transport=Recording())
    structlog.contextvars.bind_contextvars(request_id="the-first-request", tenant="shop")
    try:
        sending.send(mailer.Mail("a@example.com", "subject", "body", tenant="shop", kind="recovery"))
        assert await sending.drain(10)
    finally:
        structlog.contextvars.unbind_contextvars("request_id", "tenant")
        for task in sending.tasks:
            task.cancel()
    assert seen == [{}]


async def test_a_tenant_flooding_the_mail_queue_does_not_hold_back_another_tenants_mail():
    import asyncio

    release, other_sent = asyncio.Event(), asyncio.Event()
    sent: list[str] = []

    class Hanging:  # the flooding tenant's mails hang on the server until released
        async def deliver(self, mail: mailer.Mail) -> None:
            if mail.tenant == "flood":
                await release.wait()
            sent.append(mail.tenant or "")
            if mail.tenant == "calm":
                other_sent.set()

    sending = mailer.Mailer(mailer.MailSettings(None), transport=Hanging(), workers=4)
    try:
        for n in range(50):
            sending.send(mailer.Mail(f"user{n}@example.com", "s", "b", tenant="flood", kind="recovery"))
        sending.send(mailer.Mail("calm@example.com", "s", "b", tenant="calm", kind="recovery"))
        await asyncio.wait_for(other_sent.wait(), 20)  # never, if the flood held every worker
        assert sent == ["calm"]
        release.set()
        assert await sending.drain(20)
        assert sent.count("flood") == 50
    finally:
        release.set()
        for task in sending.tasks:
            task.cancel()


def test_the_configuration_is_logged_at_start_and_a_malformed_url_refused():
    from engine import mailer

    with capture_logs() as logs:
        assert mailer.log_configuration({}) == {"transport": "log"}
        assert mailer.log_configuration({"BACKSAAS_SMTP_URL": "smtps://u:p%40ss@mail.example:2465",
                                         "BACKSAAS_PUBLIC_URL": "https://api.example.com"}) == {
            "transport": "smtp", "host": "mail.example", "port": 2465}
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["mail.not_configured"]
    assert mailer.smtp_settings("smtp://u:p%40ss@h:587?starttls=true").password == "p@ss"
    with pytest.raises(mailer.MailMisconfigured):
        mailer.log_configuration({"BACKSAAS_SMTP_URL": "http://mail.example"})
