"""A browser app on another origin, as a newcomer builds one: `@supabase/supabase-js` (from npm, served by
the page's own origin, never a CDN) in real headless Chromium, driven by Playwright, against a tenant.

It signs up, signs in, reads with an embed, inserts as the user, invokes a function and signs out. Every
call crosses origins (the page is on `localhost`, the gateway on `127.0.0.1`), so each one passes only if
the gateway's CORS answers are right. Needs Debian's `chromium`, Playwright for Python and
`npm ci --prefix tests/browser` (`.ci/run` installs all three).
"""

from __future__ import annotations

import functools
import http.server
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.database import Database
from functions.keys import create_api_key
from functions.tenants import create_tenant
from tests.server import free_port, running_gateway

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
BROWSER_DIR = Path(__file__).parent / "browser"
SUPABASE_UMD = BROWSER_DIR / "node_modules/@supabase/supabase-js/dist/umd/supabase.js"
SCHEMA = """
name: notes
entities:
  author:
    owner: true
    fields:
      name: {type: string, required: true}
    permissions:
      read:   {anon: all, authenticated: all}
      create: {authenticated: all}
  note:
    owner: true
    fields:
      title:  {type: string, required: true}
      author: {type: ref, to: author, reverse: notes}
    permissions:
      read:   {anon: all, authenticated: all}
      create: {authenticated: all}
functions:
  whoami:
    handler: examples.whoami
    roles: [authenticated]
"""
PAGE = "<!doctype html><title>app</title><script src='/supabase.js'></script>"
# The app's story, run in the page: every step returns what the test checks.
STORY = """
async ([url, key]) => {
  const client = supabase.createClient(url, key);
  const out = {};
  const up = await client.auth.signUp({email: 'ann@example.com', password: 'a long enough passphrase'});
  out.signup = up.error ? up.error.message : up.data.user.email;
  await client.auth.signOut();
  const signin = await client.auth.signInWithPassword({email: 'ann@example.com', password: 'a long enough passphrase'});
  out.signin = signin.error ? signin.error.message : signin.data.session.user.email;
  const author = await client.from('author').insert({name: 'Ann'}).select().single();
  out.author = author.error ? author.error.message : author.data.name;
  const note = await client.from('note').insert({title: 'Hello', author_id: author.data && author.data.id}).select();
  out.note = note.error ? note.error.message : note.data[0].title;
  const page = await client.from('author').select('name, notes(title)', {count: 'exact'}).eq('name', 'Ann');
  out.embed = page.error ? page.error.message : page.data;
  out.count = page.count;
  const called = await client.functions.invoke('whoami', {body: {hello: 'world'}});
  out.invoke = called.error ? String(called.error) : called.data;
  const bye = await client.auth.signOut();
  out.signout = bye.error ? bye.error.message : 'ok';
  const after = await client.functions.invoke('whoami', {body: {}});
  out.after_signout = after.error ? after.error.context.status : 'allowed';
  return out;
}
"""


@pytest.fixture(scope="module")
async def anon_key(db: Database) -> str:
    await create_tenant(db, "notes", source=SCHEMA)
    return (await create_api_key(db, "notes", "browser", "anon")).key


@pytest.fixture(scope="module")
def gateway(anon_key: str, database_url: str) -> Iterator[str]:
    with running_gateway(database_url) as url:
        yield url


@pytest.fixture(scope="module")
def page_origin() -> Iterator[str]:
    """The app's own origin: a static server for its page and supabase-js, on another host name and port."""
    if not SUPABASE_UMD.exists():
        pytest.fail("supabase-js is not installed: run `npm ci --prefix tests/browser`")
    root = BROWSER_DIR / "site"
    root.mkdir(exist_ok=True)
    (root / "index.html").write_text(PAGE)
    shutil.copyfile(SUPABASE_UMD, root / "supabase.js")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None  # type: ignore[method-assign]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://localhost:{server.server_address[1]}"
    finally:
        server.shutdown()


BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync"]


async def test_supabase_js_in_a_browser_on_another_origin_runs_a_whole_app(gateway: str, page_origin: str,
                                                                             anon_key: str):
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        try:
            page = await browser.new_page()
            failures: list[str] = []
            page.on("console", lambda message: failures.append(message.text) if message.type == "error" else None)
            await page.goto(f"{page_origin}/index.html")
            result = await page.evaluate(STORY, [f"{gateway}/api/tenants/notes", anon_key])
        finally:
            await browser.close()
    assert result["signup"] == "ann@example.com", result
    assert result["signin"] == "ann@example.com", result
    assert result["author"] == "Ann" and result["note"] == "Hello", result
    assert result["embed"] == [{"name": "Ann", "notes": [{"title": "Hello"}]}], result
    assert result["count"] == 1, result  # Content-Range was readable across origins
    assert result["invoke"]["payload"] == {"hello": "world"}, result
    assert "authenticated" in result["invoke"]["roles"] and result["invoke"]["user_id"], result
    assert result["signout"] == "ok", result
    assert result["after_signout"] in (401, 403), result
    assert not [f for f in failures if "CORS" in f], failures


async def offline_page(gateway: str, path: str, ready: str, action: str | None = None, result: str | None = None
                       ) -> tuple[str, list[str]]:
    """Open a page of the gateway with every request to another host refused; the text of `result` (or
    `ready`) once shown, and the URLs the page tried to fetch elsewhere."""
    from playwright.async_api import Route, async_playwright

    elsewhere: list[str] = []

    async def only_the_gateway(route: Route) -> None:
        if route.request.url.startswith(gateway):
            await route.continue_()
        else:
            elsewhere.append(route.request.url)
            await route.abort()

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        try:
            context = await browser.new_context()
            await context.route("**/*", only_the_gateway)
            page = await context.new_page()
            await page.goto(gateway + path)
            await page.wait_for_selector(ready, timeout=20_000)
            if action:
                await page.click(action)
            shown = page.locator(result or ready).first
            if result:
                await page.wait_for_function("([s]) => document.querySelector(s)?.innerText.includes('query_root')",
                                             arg=[result], timeout=20_000)
            text = await shown.inner_text()
        finally:
            await browser.close()
    return text, elsewhere


async def test_graphiql_works_with_the_network_cut_to_the_gateway(gateway: str):
    text, elsewhere = await offline_page(gateway, "/api/tenants/notes/graphql/v1", ".graphiql-container",
                                         action=".graphiql-execute-button", result=".graphiql-response")
    assert "query_root" in text
    assert elsewhere == []


async def test_the_rest_api_documentation_works_with_the_network_cut_to_the_gateway(gateway: str):
    text, elsewhere = await offline_page(gateway, "/api/tenants/notes/rest/v1/", ".opblock-tag-section")
    assert "author" in text
    assert elsewhere == []
