"""Webhooks as an attacker would aim them (issue 11, finding 7): at internal addresses, at the server's own
environment for a signing secret, and at a slow receiver to stall other tenants' deliveries.

No test here sends a packet anywhere but loopback: names resolve through an injected resolver (a table: no
DNS query leaves the process), which is how a name comes to resolve to a private or link-local address,
and the transport behind the guard fails the test if it is ever asked to connect anywhere but 127.0.0.1.
The only real receivers listen on loopback (127.0.0.1, which the gateway's operator allows, and 127.0.0.2,
which it does not).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import orjson
import pytest
import sqlalchemy as sa

from engine import catalog, vault
from engine.database import Database
from engine.outbox import SIGNATURE_HEADER, DestinationRefused, GuardedTransport, verify_signature
from functions.keys import create_api_key
from functions.secrets import store_webhook_secret
from functions.tenants import create_tenant
from functions.users import create_platform_admin
from tests.server import free_port, running_gateway
from tests.test_webhooks import wait_until

REFUSED = "refused: destination not allowed"
PASSWORD = "a long enough passphrase"
ADMIN_EMAIL = "root@guard.example"


class Receiver:
    """A loopback receiver that keeps what it was sent; `hold` keeps each request open until `release`."""

    def __init__(self, host: str = "127.0.0.1", hold: bool = False) -> None:
        self.host, self.port = host, free_port()
        self.received: list[dict[str, Any]] = []
        self.held = 0  # requests open right now
        self.most_held = 0
        self.released = threading.Event()
        if not hold:
            self.released.set()
        self.lock = threading.Lock()
        self.on_request: Any = None
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    receiver.held += 1
                    receiver.most_held = max(receiver.most_held, receiver.held)
                    if receiver.on_request is not None:
                        receiver.on_request()
                receiver.released.wait(120)
                with receiver.lock:
                    receiver.held -= 1
                    receiver.received.append({"body": body, "host": self.headers.get("Host"),
                                              "signature": self.headers.get(SIGNATURE_HEADER, "")})
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer((host, self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/hook"

    def stop(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


def schema(name: str, url: str, secret: str | None = None) -> str:
    signed = f", secret: {secret}" if secret else ""
    return f"""
name: {name}
entities:
  item:
    fields:
      ref: {{type: string, required: true}}
    permissions:
      read: {{anon: all}}
      create: {{anon: all}}
    hooks:
      after_create: [{{webhook: "{url}"{signed}}}]
"""


class LoopbackOnly(httpx.AsyncBaseTransport):
    """The network behind the gateway's guard, except that it fails the test when asked to connect
    anywhere but 127.0.0.1."""

    def __init__(self) -> None:
        self.elsewhere: list[str] = []
        self.real = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.host != "127.0.0.1":
            self.elsewhere.append(str(request.url))
            raise AssertionError(f"a connection to {request.url} was attempted")
        return await self.real.handle_async_request(request)


NAMES = {"metadata.internal.test": ["169.254.169.254"]}  # what the gateway's resolver answers


async def no_dns(host: str, port: int) -> list[str]:
    """The gateway's resolver: NAMES, and an address literal as itself; no query leaves the process."""
    if host in NAMES:
        return NAMES[host]
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        raise socket.gaierror(socket.EAI_NONAME, "unknown name") from None


@pytest.fixture(scope="module")
def network() -> LoopbackOnly:
    return LoopbackOnly()


@pytest.fixture(scope="module")
async def base(db: Database, database_url: str, network: LoopbackOnly) -> Iterator[str]:
    """The module's one gateway (so no other dispatcher takes its events): its operator allows 127.0.0.1
    only, its resolver and network are the ones above, and deliveries are given a minute, so that only
    the tests decide when a held request ends."""
    await create_platform_admin(db, ADMIN_EMAIL, PASSWORD)
    before = os.environ.get("BACKSAAS_WEBHOOK_ALLOW_HOSTS")
    os.environ["BACKSAAS_WEBHOOK_ALLOW_HOSTS"] = "127.0.0.1"
    outbox = {"base_delay": 0.05, "max_attempts": 2, "timeout": 60, "resolver": no_dns, "transport": network}
    try:
        with running_gateway(database_url, outbox=outbox) as url:
            yield url
    finally:
        if before is None:
            os.environ.pop("BACKSAAS_WEBHOOK_ALLOW_HOSTS", None)
        else:
            os.environ["BACKSAAS_WEBHOOK_ALLOW_HOSTS"] = before
    assert network.elsewhere == []


async def tenant_with_webhook(db: Database, slug: str, url: str, secret: str | None = None) -> dict[str, str]:
    """A tenant (made by the operator) whose `item` posts to `url`; its anon and service keys."""
    await create_tenant(db, slug, source=schema(slug, url, secret))
    return {role: (await create_api_key(db, slug, role, role)).key for role in ("anon", "service")}


def write(base: str, slug: str, keys: dict[str, str], *refs: str) -> None:
    made = httpx.post(f"{base}/api/tenants/{slug}/rest/v1/item", json=[{"ref": r} for r in refs],
                      headers={"apikey": keys["anon"]})
    assert made.status_code == 201, made.text


def events(base: str, slug: str, keys: dict[str, str]) -> list[dict[str, Any]]:
    return httpx.get(f"{base}/api/tenants/{slug}/events/v1", headers={"apikey": keys["service"]}).json()


def settled(base: str, slug: str, keys: dict[str, str], count: int = 1) -> list[dict[str, Any]]:
    """The tenant's events once all `count` are delivered or dead."""
    assert wait_until(lambda: len(found := events(base, slug, keys)) == count
                      and all(e["status"] in ("delivered", "dead") for e in found))
    return events(base, slug, keys)


def deliveries(base: str, slug: str, keys: dict[str, str], event_id: str) -> list[dict[str, Any]]:
    return httpx.get(f"{base}/api/tenants/{slug}/events/v1/{event_id}/deliveries",
                     headers={"apikey": keys["service"]}).json()


# -- platform accounts, over HTTP --

def platform(base: str, path: str) -> str:
    return f"{base}/api/platform/{path}"


def sign_in(base: str, email: str) -> dict[str, str]:
    session = httpx.post(platform(base, "auth/v1/token"), params={"grant_type": "password"},
                         json={"email": email, "password": PASSWORD})
    assert session.status_code == 200, session.text
    return {"Authorization": f"Bearer {session.json()['access_token']}"}


def sign_up(base: str, email: str) -> dict[str, str]:
    made = httpx.post(platform(base, "auth/v1/signup"), json={"email": email, "password": PASSWORD})
    assert made.status_code == 200, made.text
    return sign_in(base, email)


def call(base: str, function: str, auth: dict[str, str] | None, /, **payload: Any) -> httpx.Response:
    return httpx.post(platform(base, f"functions/v1/{function}"), json=payload, headers=auth or {}, timeout=60)


def own_tenant(base: str, owner: dict[str, str], slug: str, source: str) -> dict[str, str]:
    """A tenant created by a platform account (its owner) over HTTP; its provisioned keys."""
    made = httpx.post(platform(base, "rest/v1/tenants"), json={"slug": slug, "name": slug, "initial_schema": source},
                      headers=owner)
    assert made.status_code == 201, made.text
    assert wait_until(lambda: httpx.get(platform(base, "rest/v1/tenants"), params={"slug": f"eq.{slug}"},
                                        headers=owner).json()[0]["status"] == "active")
    keys = call(base, "reveal_keys", owner, tenant=slug)
    assert keys.status_code == 200, keys.text
    return keys.json()["keys"]


# -- the destination guard, alone: an injected resolver, a transport that must never be reached --

class Tripwire(httpx.AsyncBaseTransport):
    """Stands where the network would be: records what it was asked to send and answers 200 itself,
    so no packet leaves the process."""

    def __init__(self) -> None:
        self.sent: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(request)
        return httpx.Response(200)


def resolver_of(answers: dict[str, list[str]], calls: list[str] | None = None) -> Any:
    async def resolve(host: str, port: int) -> list[str]:
        if calls is not None:
            calls.append(host)
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "unknown name")
        return answers[host]
    return resolve


async def guarded_post(url: str, answers: dict[str, list[str]], allow: tuple[str, ...] = ()) -> Tripwire:
    tripwire = Tripwire()
    async with httpx.AsyncClient(transport=GuardedTransport(tripwire, resolver_of(answers), allow)) as client:
        await client.post(url, content=b"{}")
    return tripwire


@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.1.2.3", "10.1.2.3", "172.16.5.4", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0",
    "224.0.0.1", "239.255.255.250", "255.255.255.255", "198.18.0.1", "192.0.0.8", "::1", "::", "fe80::1",
    "fd00::1", "fec0::1", "ff02::1", "::ffff:127.0.0.1", "::ffff:169.254.169.254", "::127.0.0.1",
    "64:ff9b::a9fe:a9fe", "2002:7f00:1::1", "2001:db8::1"])
async def test_a_name_resolving_to_a_non_global_address_is_refused_before_any_connection(address):
    with pytest.raises(DestinationRefused):
        await guarded_post("https://hooks.example.test/in", {"hooks.example.test": [address]})


@pytest.mark.parametrize("url", ["http://169.254.169.254/latest/meta-data", "http://[::1]:8080/", "http://0.0.0.0/",
                                 "http://[fe80::1]/", "http://2130706433/"])
async def test_a_literal_internal_address_is_refused_before_any_connection(url):
    literal = {"169.254.169.254": ["169.254.169.254"], "::1": ["::1"], "0.0.0.0": ["0.0.0.0"], "fe80::1": ["fe80::1"],
               "2130706433": ["127.0.0.1"]}  # what the system's resolver answers for each
    with pytest.raises(DestinationRefused):
        await guarded_post(url, literal)


async def test_a_name_with_one_private_address_among_public_ones_is_refused():
    with pytest.raises(DestinationRefused):
        await guarded_post("https://hooks.example.test/", {"hooks.example.test": ["93.184.216.34", "10.0.0.7"]})


async def test_the_request_goes_to_the_checked_address_with_the_name_as_host_and_tls_server_name():
    calls: list[str] = []
    answers = iter([["93.184.216.34"], ["127.0.0.1"]])  # a rebinding resolver: a second answer would be loopback

    async def rebinding(host: str, port: int) -> list[str]:
        calls.append(host)
        return next(answers)

    tripwire = Tripwire()
    async with httpx.AsyncClient(transport=GuardedTransport(tripwire, rebinding)) as client:
        response = await client.post("https://hooks.example.test:8443/in", content=b"{}")
    assert response.status_code == 200 and calls == ["hooks.example.test"]
    [sent] = tripwire.sent
    assert sent.url.host == "93.184.216.34" and sent.url.port == 8443 and sent.url.path == "/in"
    assert sent.headers["Host"] == "hooks.example.test:8443"
    assert sent.extensions["sni_hostname"] == "hooks.example.test"


async def test_an_allowed_host_skips_the_address_check_only_for_itself():
    allowed = await guarded_post("http://localhost:9/", {"localhost": ["127.0.0.1"]}, allow=("LOCALHOST",))
    assert [r.url.host for r in allowed.sent] == ["127.0.0.1"]
    with pytest.raises(DestinationRefused):
        await guarded_post("http://other.test:9/", {"other.test": ["127.0.0.1"]}, allow=("localhost",))


def self_signed(name: str, directory: Any) -> tuple[str, str]:
    """A certificate for `name` (and its key), as PEM files in `directory`."""
    from datetime import UTC, datetime, timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    certificate = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=1))
                   .not_valid_after(now + timedelta(hours=1))
                   .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                   .sign(key, hashes.SHA256()))
    cert_file, key_file = directory / f"{name}.pem", directory / f"{name}.key"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_file), str(key_file)


async def test_https_to_a_pinned_address_verifies_the_names_certificate(tmp_path):
    import ssl

    cert, key = self_signed("receiver.test", tmp_path)
    server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_side.load_cert_chain(cert, key)
    names: list[str | None] = []
    server_side.sni_callback = lambda sock, name, context: names.append(name)
    receiver = Receiver()
    receiver.server.socket = server_side.wrap_socket(receiver.server.socket, server_side=True)
    trusting = ssl.create_default_context(cafile=cert)  # the receiver's certificate, for receiver.test only
    transport = GuardedTransport(httpx.AsyncHTTPTransport(verify=trusting),
                                 resolver_of({"receiver.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]}),
                                 allow_hosts=("receiver.test", "other.test"))
    try:
        async with httpx.AsyncClient(transport=transport) as client:
            sent = await client.post(f"https://receiver.test:{receiver.port}/hook", content=b"{}")
            assert sent.status_code == 200  # verified as receiver.test, though connected to 127.0.0.1
            with pytest.raises(httpx.ConnectError):  # the same address under another name: not its certificate
                await client.post(f"https://other.test:{receiver.port}/hook", content=b"{}")
        assert names[0] == "receiver.test" and receiver.received[0]["host"] == f"receiver.test:{receiver.port}"
    finally:
        receiver.stop()


# -- through the gateway --

async def test_a_webhook_to_a_loopback_address_the_operator_does_not_allow_is_refused(base, db):
    receiver = Receiver(host="127.0.0.2")  # loopback, but only 127.0.0.1 is allowed
    try:
        keys = await tenant_with_webhook(db, "probe", receiver.url)
        write(base, "probe", keys, "a")
        [event] = settled(base, "probe", keys)
        assert receiver.received == [] and event["status"] == "dead" and event["last_error"] == REFUSED
        log = deliveries(base, "probe", keys, event["id"])
        assert [(d["status_code"], d["error"]) for d in log] == [(None, REFUSED), (None, REFUSED)]
    finally:
        receiver.stop()


async def test_a_webhook_to_a_name_resolving_to_link_local_is_refused_without_a_connection(base, db, network):
    keys = await tenant_with_webhook(db, "meta", "http://metadata.internal.test/latest/meta-data")
    write(base, "meta", keys, "a")
    [event] = settled(base, "meta", keys)
    assert network.elsewhere == []
    assert event["status"] == "dead" and event["last_error"] == REFUSED


async def test_a_failed_delivery_shows_the_tenant_no_internal_detail(base, db):
    closed = free_port()  # an allowed address where nothing listens
    keys = await tenant_with_webhook(db, "closed", f"http://127.0.0.1:{closed}/hook")
    write(base, "closed", keys, "a")
    [event] = settled(base, "closed", keys)
    assert event["last_error"] == "could not connect"
    assert {d["error"] for d in deliveries(base, "closed", keys, event["id"])} == {"could not connect"}


async def test_a_webhook_secret_cannot_name_a_server_environment_variable(base, db, monkeypatch):
    monkeypatch.setenv("SERVER_SIGNING_KEY", "the server's own secret value")
    receiver = Receiver()
    try:
        keys = await tenant_with_webhook(db, "envsecret", receiver.url, secret="SERVER_SIGNING_KEY")
        write(base, "envsecret", keys, "a")
        [event] = settled(base, "envsecret", keys)
        assert receiver.received == []
        assert event["status"] == "dead" and event["last_error"].startswith("secret SERVER_SIGNING_KEY is not set")
    finally:
        receiver.stop()


async def test_deliveries_are_signed_with_the_tenants_own_secret_set_through_the_platform(base, db):
    receivers = {slug: Receiver() for slug in ("alpha", "beta")}
    values = {"alpha": "alpha's signing secret, 32+ chars", "beta": "beta's signing secret, also long"}
    try:
        for slug, receiver in receivers.items():
            owner = sign_up(base, f"owner@{slug}.example")
            keys = own_tenant(base, owner, slug, schema(slug, receiver.url, secret="HOOK_SECRET"))
            made = call(base, "set_webhook_secret", owner, tenant=slug, name="HOOK_SECRET", value=values[slug])
            assert made.status_code == 200 and made.json() == {"tenant": slug, "name": "HOOK_SECRET", "replaced": False}
            write(base, slug, keys, slug)
        assert wait_until(lambda: all(len(r.received) == 1 for r in receivers.values()))
        for slug, receiver in receivers.items():
            [got] = receiver.received
            assert orjson.loads(got["body"])["record"]["ref"] == slug
            assert verify_signature(values[slug], got["signature"], got["body"])
            other = values["beta" if slug == "alpha" else "alpha"]
            assert not verify_signature(other, got["signature"], got["body"])
        stored = catalog.platform_tables()["webhook_secrets"]
        async with db.engine.connect() as conn:
            rows = (await conn.execute(sa.select(stored.c.ciphertext))).scalars().all()
        assert len(rows) == 2 and not any(v.split(",")[0] in row for row in rows for v in values.values())
    finally:
        for receiver in receivers.values():
            receiver.stop()


async def test_a_stored_secret_moved_to_another_tenant_or_name_does_not_open(db):
    for slug in ("owning", "other"):
        await create_tenant(db, slug, source=schema(slug, "http://127.0.0.1:9/hook", secret="MOVED_SECRET"))
    await store_webhook_secret(db, "owning", "MOVED_SECRET", "a secret that belongs to owning")
    stored = catalog.platform_tables()["webhook_secrets"]
    async with db.begin() as conn:
        probe = await catalog.find_tenant(conn, "owning")
        other = await catalog.find_tenant(conn, "other")
        assert await vault.reveal(conn, probe.id, "MOVED_SECRET") == "a secret that belongs to owning"
        await conn.execute(stored.update().where(stored.c.name == "MOVED_SECRET").values(tenant_id=other.id))
        with pytest.raises(vault.SecretUnreadable):
            await vault.reveal(conn, other.id, "MOVED_SECRET")
        await conn.execute(stored.update().where(stored.c.name == "MOVED_SECRET")
                           .values(tenant_id=probe.id, name="RENAMED_SECRET"))
        with pytest.raises(vault.SecretUnreadable):
            await vault.reveal(conn, probe.id, "RENAMED_SECRET")


async def test_only_the_tenants_owners_and_admins_set_its_webhook_secrets(base):
    owner = sign_up(base, "owner@gamma.example")
    own_tenant(base, owner, "gamma", schema("gamma", "http://127.0.0.1:9/hook"))
    invited = call(base, "invite_member", owner, tenant="gamma", email="dev@gamma.example", role="developer")
    assert call(base, "accept_invitation", None, token=invited.json()["token"], password=PASSWORD).status_code == 200
    developer = sign_in(base, "dev@gamma.example")
    stranger = sign_up(base, "owner@delta.example")
    own_tenant(base, stranger, "delta", schema("delta", "http://127.0.0.1:9/hook"))
    attempt = {"tenant": "gamma", "name": "HOOK_SECRET", "value": "an attacker's chosen secret"}
    assert call(base, "set_webhook_secret", None, **attempt).status_code in (401, 403)
    assert call(base, "set_webhook_secret", developer, **attempt).status_code == 403
    assert call(base, "set_webhook_secret", stranger, **attempt).status_code == 403
    assert call(base, "set_webhook_secret", stranger, **{**attempt, "tenant": "nosuch"}).status_code == 403
    admin = sign_in(base, ADMIN_EMAIL)
    assert call(base, "set_webhook_secret", admin, **attempt).status_code == 200
    assert call(base, "set_webhook_secret", owner, **attempt).json()["replaced"] is True
    short = call(base, "set_webhook_secret", owner, **{**attempt, "value": "short"})
    assert short.status_code == 422 and short.json()["details"][0]["field"] == "value"


async def test_webhook_secret_names_are_listed_but_never_read_back(base):
    owner = sign_up(base, "owner@epsilon.example")
    own_tenant(base, owner, "epsilon", schema("epsilon", "http://127.0.0.1:9/hook"))
    for name in ("FIRST_SECRET", "SECOND_SECRET"):
        assert call(base, "set_webhook_secret", owner, tenant="epsilon", name=name,
                    value=f"value of {name.lower()} here").status_code == 200
    listed = httpx.get(platform(base, "rest/v1/webhook_secrets"), params={"order": "name"}, headers=owner).json()
    assert [row["name"] for row in listed] == ["FIRST_SECRET", "SECOND_SECRET"]
    assert not any(key in row for row in listed for key in ("ciphertext", "kid", "value"))
    asked = httpx.get(platform(base, "rest/v1/webhook_secrets"), params={"select": "name,ciphertext"}, headers=owner)
    assert asked.status_code == 400
    stranger = sign_up(base, "nosy@zeta.example")
    assert httpx.get(platform(base, "rest/v1/webhook_secrets"), headers=stranger).json() == []
    deleted = call(base, "delete_webhook_secret", owner, tenant="epsilon", name="FIRST_SECRET")
    assert deleted.status_code == 200
    assert [r["name"] for r in httpx.get(platform(base, "rest/v1/webhook_secrets"), headers=owner).json()] == [
        "SECOND_SECRET"]


async def test_a_slow_receiver_of_one_tenant_does_not_delay_another_tenants_webhook(base, db):
    slow, prompt = Receiver(hold=True), Receiver()
    try:
        slow_keys = await tenant_with_webhook(db, "slowpoke", slow.url)
        prompt_keys = await tenant_with_webhook(db, "prompt", prompt.url)
        write(base, "slowpoke", slow_keys, *(f"s{i}" for i in range(40)))
        assert wait_until(lambda: slow.held >= 1)
        seen_while: list[tuple[int, int]] = []  # (held, completed) at the slow receiver when the prompt one is hit
        prompt.on_request = lambda: seen_while.append((slow.held, len(slow.received)))
        write(base, "prompt", prompt_keys, "p")
        assert wait_until(lambda: len(prompt.received) == 1), "the other tenant's webhook waited for the slow one"
        assert seen_while[0][0] >= 1 and seen_while[0][1] == 0  # delivered while the slow tenant's were all held
        assert slow.most_held <= 4  # the slow tenant used its own slots only
        slow.released.set()
        assert wait_until(lambda: len(slow.received) == 40)
        assert slow.most_held <= 4
    finally:
        slow.stop()
        prompt.stop()
