"""The mail flows through Supabase's own JavaScript SDK in Node, as an app calls them: `resetPasswordForEmail`,
then `verifyOtp` with the code from the mail and `updateUser` with the new password; `signInWithOtp`, then
`verifyOtp` with the mail's code (type `email`) and with its link's token (`token_hash`); `updateUser` with a
new email, then `verifyOtp` (type `email_change`) with the code mailed to each address (GoTrue's secure email
change: the first answers no session and no error). The mails are read from a local SMTP sink. Needs Node
and `npm ci --prefix tests/browser` (the pinned @supabase/supabase-js)."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from engine.database import Database
from functions.keys import create_api_key
from functions.tenants import create_tenant
from tests.mail_sink import Sink, code_in, link_in
from tests.server import running_gateway

NODE = shutil.which("node")
SUPABASE_JS = Path(__file__).parent / "browser/node_modules/@supabase/supabase-js"
pytestmark = pytest.mark.skipif(NODE is None or not SUPABASE_JS.exists(),
                                reason="needs node and `npm ci --prefix tests/browser`")
# One step of the app per run: argv is [url, key, step as JSON]; prints what the step answered.
SCRIPT = """
const { createClient } = require(process.env.SUPABASE_JS);
const [url, key, raw] = process.argv.slice(1);
const step = JSON.parse(raw);
// Node 20 has no WebSocket of its own: realtime (unused here) gets a stand-in so the client can be built
const client = createClient(url, key, { auth: { persistSession: false, autoRefreshToken: false },
                                        realtime: { transport: class {} } });
const show = (error, data) => ({
  error: error ? { message: error.message, status: error.status, code: error.code } : null, ...data });
(async () => {
  let out;
  if (step.do === 'reset') {
    const { data, error } = await client.auth.resetPasswordForEmail(step.email);
    out = show(error, { data });
  } else if (step.do === 'verify') {
    const { data, error } = await client.auth.verifyOtp(step.params);
    out = show(error, { email: data.user && data.user.email, session: !!data.session });
    if (!error && step.password) {
      const updated = await client.auth.updateUser({ password: step.password });
      out.updated = updated.error ? updated.error.message : 'ok';
    }
  } else if (step.do === 'otp') {
    const { data, error } = await client.auth.signInWithOtp({ email: step.email, options: step.options || {} });
    out = show(error, { data });
  } else if (step.do === 'change_email') {
    const signed = await client.auth.signUp({ email: step.email, password: step.password });
    if (signed.error) { out = show(signed.error, {}); } else {
      const { data, error } = await client.auth.updateUser({ email: step.new_email });
      out = show(error, { email: data.user && data.user.email, new_email: data.user && data.user.new_email });
    }
  } else if (step.do === 'password') {
    const { data, error } = await client.auth.signInWithPassword({ email: step.email, password: step.password });
    out = show(error, { email: data.user && data.user.email });
  }
  console.log(JSON.stringify(out));
})().catch((e) => { console.log(JSON.stringify({ crashed: String(e) })); });
"""


@pytest.fixture(scope="module")
async def anon_key(db: Database) -> str:
    await create_tenant(db, "jsapp", name="JS App")
    return (await create_api_key(db, "jsapp", "anon", "anon")).key


@pytest.fixture(scope="module")
def base(anon_key: str, database_url: str, sink: Sink) -> Iterator[str]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BACKSAAS_SMTP_URL", f"smtp://127.0.0.1:{sink.port}")
        patch.setenv("BACKSAAS_PUBLIC_URL", "http://127.0.0.1")  # links in mails: the server's public origin
        patch.setenv("BACKSAAS_MAIL_RETRY_SECONDS", "0.2")
        with running_gateway(database_url) as url:
            yield f"{url}/api/tenants/jsapp"


def app(base: str, key: str, **step: object) -> dict:
    run = subprocess.run([str(NODE), "-e", SCRIPT, base, key, json.dumps(step)], capture_output=True, text=True,
                         timeout=60, env={"SUPABASE_JS": str(SUPABASE_JS), "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert "crashed" not in out, out
    return out


def test_supabase_js_resets_a_password_with_the_mailed_code(base, anon_key, sink):
    signed_up = app(base, anon_key, do="otp", email="js-reset@example.com")  # a new account, by code
    assert signed_up["error"] is None, signed_up
    first = app(base, anon_key, do="verify", params={"email": "js-reset@example.com", "token": code_in(
        sink.to("js-reset@example.com")), "type": "email"})
    assert first["error"] is None and first["session"] is True, first

    asked = app(base, anon_key, do="reset", email="js-reset@example.com")
    assert asked["error"] is None, asked
    code = code_in(sink.to("js-reset@example.com", 2))
    reset = app(base, anon_key, do="verify", params={"email": "js-reset@example.com", "token": code, "type": "recovery"},
                password="a fresh passphrase from js")
    assert reset["error"] is None and reset["email"] == "js-reset@example.com" and reset["updated"] == "ok", reset
    signed_in = app(base, anon_key, do="password", email="js-reset@example.com", password="a fresh passphrase from js")
    assert signed_in["error"] is None and signed_in["email"] == "js-reset@example.com"

    reused = app(base, anon_key, do="verify", params={"email": "js-reset@example.com", "token": code, "type": "recovery"})
    assert reused["error"]["status"] == 403 and reused["error"]["message"].startswith("Token has expired or is invalid")


def test_supabase_js_signs_in_with_otp_by_code_and_by_the_links_token(base, anon_key, sink):
    refused = app(base, anon_key, do="otp", email="js-otp@example.com", options={"shouldCreateUser": False})
    assert refused["error"]["status"] == 422 and refused["error"]["message"] == "Signups not allowed for otp"

    assert app(base, anon_key, do="otp", email="js-otp@example.com")["error"] is None
    by_code = app(base, anon_key, do="verify", params={"email": "js-otp@example.com", "token": code_in(
        sink.to("js-otp@example.com")), "type": "email"})
    assert by_code["error"] is None and by_code["session"] is True and by_code["email"] == "js-otp@example.com"

    assert app(base, anon_key, do="otp", email="js-otp@example.com")["error"] is None
    token = parse_qs(urlsplit(link_in(sink.to("js-otp@example.com", 2))).query)["token"][0]
    by_link = app(base, anon_key, do="verify", params={"token_hash": token, "type": "magiclink"})
    assert by_link["error"] is None and by_link["session"] is True and by_link["email"] == "js-otp@example.com"


def test_supabase_js_changes_an_email_once_both_addresses_confirm(base, anon_key, sink):
    asked = app(base, anon_key, do="change_email", email="js-old@example.com", password="a js passphrase here",
                new_email="js-new@example.com")
    assert asked["error"] is None and asked["email"] == "js-old@example.com" and asked["new_email"] == "js-new@example.com"
    first = app(base, anon_key, do="verify", params={"email": "js-old@example.com", "token": code_in(
        sink.to("js-old@example.com")), "type": "email_change"})
    assert first == {"error": None, "email": None, "session": False}, first  # accepted, the other address to go
    still = app(base, anon_key, do="password", email="js-old@example.com", password="a js passphrase here")
    assert still["error"] is None and still["email"] == "js-old@example.com"
    second = app(base, anon_key, do="verify", params={"email": "js-new@example.com", "token": code_in(
        sink.to("js-new@example.com")), "type": "email_change"})
    assert second["error"] is None and second["session"] is True and second["email"] == "js-new@example.com", second
    moved = app(base, anon_key, do="password", email="js-new@example.com", password="a js passphrase here")
    assert moved["error"] is None and moved["email"] == "js-new@example.com"
