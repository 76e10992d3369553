"""The admin console in a real browser (Debian's chromium under Playwright) against a live gateway: the
stories of a tenant developer, an invited member and a platform admin, end to end, through the console's
pages only, with the API checked behind them. Every request the browser makes must go to the gateway
(nothing from a CDN), and each main view is saved as a screenshot (`BACKSAAS_SCREENSHOTS`, default a
temporary folder).

The tests of this module are one story in order (pytest keeps a module's order, and `--dist loadfile`
keeps it on one worker): the owner's tenant is the member's and the admin's. Run them alone with
`python3 -m pytest tests/test_console.py` after `.ci/run`'s installs (chromium, playwright).
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from engine.database import Database
from functions.users import create_platform_admin
from tests.server import running_gateway
from tests.test_browser import BROWSER_ARGS, CHROMIUM

PASSWORD = "a long enough passphrase"
EXPECT_TIMEOUT_MS = 30_000  # a loaded CI machine hashes passwords and provisions slowly; never a speed check
ADMIN = "root@console.example"
OWNER = "owner@console.example"
MEMBER = "member@console.example"
BROKEN = """name: shop
entities:
  product:
    fields:
      title: {type: string, required: true}
      price: {type: decimel}
    permissions:
      read: {anon: all}
"""
FIXED = BROKEN.replace("decimel", "number") + """  review:
    fields:
      product: {type: ref, to: product, required: true, reverse: reviews}
      stars: {type: integer, minimum: 1, maximum: 5}
"""
SECOND = FIXED.replace("      price: {type: number}\n", "      price: {type: number}\n      stock: {type: integer}\n")


@pytest.fixture(scope="module")
async def gateway(db: Database, database_url: str) -> AsyncIterator[str]:
    await create_platform_admin(db, ADMIN, PASSWORD)
    with running_gateway(database_url) as base:
        yield base


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(os.environ.get("BACKSAAS_SCREENSHOTS") or tmp_path_factory.mktemp("console-screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
async def browser(gateway: str) -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright, expect

    expect.set_options(timeout=EXPECT_TIMEOUT_MS)

    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


class Elsewhere:
    """Every request a context makes to a host other than the gateway's, aborted and recorded."""

    def __init__(self, gateway: str) -> None:
        self.netloc = urlsplit(gateway).netloc
        self.requests: list[str] = []

    async def route(self, route: Any) -> None:
        if urlsplit(route.request.url).netloc == self.netloc:
            await route.continue_()
        else:
            self.requests.append(route.request.url)
            await route.abort()


@pytest.fixture(scope="module")
def elsewhere(gateway: str) -> Elsewhere:
    return Elsewhere(gateway)


async def context_of(browser: Any, elsewhere: Elsewhere, **options: Any) -> Any:
    context = await browser.new_context(viewport={"width": 1280, "height": 800}, **options)
    await context.route("**/*", elsewhere.route)
    return context


async def sign_in(page: Any, gateway: str, email: str, *, sign_up: bool = False) -> None:
    await page.goto(f"{gateway}/admin/")
    if sign_up:
        await page.get_by_role("button", name="No account yet? Sign up").click()
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign up" if sign_up else "Sign in").click()
    await page.get_by_test_id("signed-in-as").wait_for()


story: dict[str, Any] = {}


async def test_a_developer_signs_up_creates_a_tenant_deploys_a_schema_and_adds_rows(gateway, browser, elsewhere, shots):
    from playwright.async_api import expect

    context = await context_of(browser, elsewhere)
    page = await context.new_page()
    await sign_in(page, gateway, OWNER, sign_up=True)
    await page.screenshot(path=shots / "tenants-empty.png")

    await page.get_by_role("button", name="New tenant").click()
    await page.get_by_label("Slug").fill("Shop!")
    await expect(page.get_by_text("lowercase letters, digits and '-', starting with a letter")).to_be_visible()
    await page.get_by_label("Slug").fill("shop")
    await page.get_by_role("button", name="Create").click()
    await expect(page.locator("[data-status=active]").first).to_be_visible(timeout=30_000)

    await page.get_by_role("button", name="Reveal the first keys").click()
    revealed = page.get_by_test_id("revealed-keys")
    await expect(revealed).to_contain_text("service")
    service_key = re.search(r"service: (bsk_\S+)", await revealed.inner_text())[1]
    await expect(page.get_by_test_id("keys")).to_contain_text("service")
    await page.get_by_label("New key's name").fill("ci")
    await page.get_by_role("button", name="Create key").click()
    await expect(revealed).to_contain_text("ci: bsk_")
    ci_key = re.search(r"ci: (bsk_\S+)", await revealed.inner_text())[1]
    ci_row = page.get_by_test_id("keys").locator("tr", has_text="ci")
    await ci_row.get_by_role("button", name="Revoke").click()
    await expect(ci_row).to_contain_text("revoked")
    refused = httpx.get(f"{gateway}/api/tenants/shop/rest/v1/", headers={"apikey": ci_key})
    assert refused.status_code == 401 and refused.json()["code"] == "key_revoked"
    await page.screenshot(path=shots / "tenant-overview.png")

    await page.get_by_role("tab", name="Schema").click()
    editor = page.locator(".cm-content")
    await editor.click()
    await page.keyboard.press("Control+A")
    await page.keyboard.insert_text(BROKEN)
    error = page.locator(".cm-line", has=page.locator(".cm-lintRange-error"))
    await expect(error).to_have_count(1, timeout=15_000)
    lines = await page.locator(".cm-line").all_inner_texts()
    assert lines.index(await error.inner_text()) == BROKEN.splitlines().index("      price: {type: decimel}")
    await page.screenshot(path=shots / "schema-error.png")
    await page.keyboard.press("Control+End")
    await page.keyboard.type("vers")  # completion from the format's published JSON Schema (engine/schema/schema.json)
    await expect(page.locator(".cm-tooltip-autocomplete")).to_contain_text("version")
    await page.keyboard.press("Escape")

    await editor.click()
    await page.keyboard.press("Control+A")
    await page.keyboard.insert_text(FIXED)
    await expect(page.get_by_test_id("plan-steps")).to_contain_text("product", timeout=15_000)
    await expect(page.locator(".cm-lintRange-error")).to_have_count(0)
    await page.screenshot(path=shots / "schema-plan.png")
    await page.get_by_role("button", name="Deploy").click()
    await expect(page.get_by_text("Deployed v2.")).to_be_visible(timeout=30_000)

    await page.get_by_role("tab", name="Data").click()
    await page.get_by_role("button", name="Insert row").click()
    await page.get_by_label("title *").fill("Teapot")
    await page.get_by_label("price").fill("12.5")
    await page.get_by_role("button", name="Save").click()
    await expect(page.get_by_test_id("rows")).to_contain_text("Teapot")
    await expect(page.get_by_test_id("row-count")).to_have_text("1 rows")
    await page.screenshot(path=shots / "data-editor.png")

    await page.get_by_role("navigation", name="Entities").get_by_role("button", name="review").click()
    await page.get_by_role("button", name="Insert row").click()
    await page.get_by_label("Search product").fill("tea")
    picker = page.get_by_label("Pick a product")
    await expect(picker.locator("option", has_text="Teapot")).to_have_count(1)
    await picker.select_option(label=await picker.locator("option", has_text="Teapot").inner_text())
    await page.get_by_label("stars").fill("9")
    await page.get_by_role("button", name="Save").click()
    await expect(page.get_by_role("dialog")).to_contain_text("stars9 is greater than the maximum of 5")  # at its field
    await page.get_by_label("stars").fill("5")
    await page.get_by_role("button", name="Save").click()
    await expect(page.get_by_test_id("rows")).to_contain_text("5")

    service = {"apikey": service_key, "Authorization": f"Bearer {service_key}"}
    rows = httpx.get(f"{gateway}/api/tenants/shop/rest/v1/product", params={"select": "title,price,reviews(stars)"},
                     headers=service)
    assert rows.json() == [{"title": "Teapot", "price": 12.5, "reviews": [{"stars": 5}]}], rows.text

    await page.get_by_role("tab", name="Members").click()
    await page.get_by_label("Invitee's email").fill(MEMBER)
    await page.get_by_label("Invitee's role").select_option("developer")
    await page.get_by_role("button", name="Invite").click()
    link = page.get_by_test_id("invitation-link")
    await expect(link).to_contain_text("/admin/accept?token=")
    story["invitation"] = re.search(r"(http\S+/admin/accept\?token=\S+)", await link.inner_text())[1]
    await page.screenshot(path=shots / "members.png")
    await context.close()


async def test_an_invited_member_joins_deploys_a_version_and_rolls_it_back(gateway, browser, elsewhere, shots):
    from playwright.async_api import expect

    context = await context_of(browser, elsewhere)  # a second browser: nobody signed in
    page = await context.new_page()
    await page.goto(story["invitation"])
    await page.get_by_label("Choose a password (or your current one)").fill(PASSWORD)
    await page.get_by_role("button", name="Accept the invitation").click()
    await expect(page.get_by_test_id("signed-in-as")).to_have_text(MEMBER)
    await expect(page.get_by_role("heading", name="Shop")).to_be_visible()

    await page.get_by_role("tab", name="Schema").click()
    editor = page.locator(".cm-content")
    await editor.click()
    await page.keyboard.press("Control+A")
    await page.keyboard.insert_text(SECOND)
    await expect(page.get_by_test_id("plan-steps")).to_contain_text("stock", timeout=15_000)
    await page.get_by_role("button", name="Deploy").click()
    await expect(page.get_by_text("Deployed v3.")).to_be_visible(timeout=30_000)
    history = page.get_by_test_id("schema-history")
    await history.get_by_role("button", name="v3").click()
    await expect(history).to_contain_text("+      stock: {type: integer}")
    await page.screenshot(path=shots / "schema-history.png")

    await history.get_by_role("button", name="Roll back to v2").click()
    await expect(history.get_by_role("button", name="v4")).to_be_visible(timeout=30_000)
    openapi = httpx.get(f"{gateway}/api/tenants/shop/rest/v1/", headers={"Accept": "application/openapi+json"}).json()
    assert "stock" not in openapi["components"]["schemas"]["product"]["properties"]
    assert "review" in openapi["components"]["schemas"]
    await context.close()


async def test_an_owner_manages_the_tenants_users_and_previews_a_plan_change(gateway, browser, elsewhere, shots):
    from playwright.async_api import expect

    user = httpx.post(f"{gateway}/api/tenants/shop/auth/v1/signup", json={"email": "buyer@shop.example", "password": PASSWORD})
    assert user.status_code == 200, user.text
    context = await context_of(browser, elsewhere)
    page = await context.new_page()
    await sign_in(page, gateway, OWNER)
    await page.goto(f"{gateway}/admin/t/shop/users")
    users = page.get_by_test_id("users")
    await expect(users).to_contain_text("buyer@shop.example")
    await page.get_by_label("buyer@shop.example is verified").click()  # the server answers; the box follows
    await expect(page.get_by_label("buyer@shop.example is verified")).not_to_be_checked()
    await users.get_by_role("button", name="End sessions").click()
    await expect(page.get_by_text("Their sessions have ended.")).to_be_visible()
    await page.screenshot(path=shots / "users.png")
    renewed = httpx.post(f"{gateway}/api/tenants/shop/auth/v1/token", params={"grant_type": "refresh_token"},
                         json={"refresh_token": user.json()["refresh_token"]})
    assert renewed.status_code in (400, 401), renewed.text

    await page.get_by_role("tab", name="Settings").click()
    await page.get_by_label("Domain").fill("api.shop.example")
    await page.get_by_role("button", name="Add domain").click()
    await expect(page.get_by_role("alert")).to_contain_text("does not include custom domain")  # a free plan
    await page.get_by_role("tab", name="Billing").click()
    await page.get_by_label("New plan").select_option("starter")
    await page.get_by_role("button", name="Preview").click()
    await expect(page.get_by_test_id("proration")).to_contain_text("Due now")
    await page.screenshot(path=shots / "billing.png")
    await context.close()


async def test_a_platform_admin_suspends_the_tenant_and_the_console_shows_it(gateway, browser, elsewhere, shots):
    from playwright.async_api import expect

    context = await context_of(browser, elsewhere)
    page = await context.new_page()
    await sign_in(page, gateway, ADMIN)
    await page.get_by_role("link", name="Platform", exact=True).click()
    await expect(page.get_by_test_id("dashboard")).to_be_visible()
    plans = page.get_by_test_id("plans")
    await plans.locator("tr", has_text="starter").get_by_role("button", name="Edit").click()
    await page.get_by_label("Limits (JSON; -1 is unlimited)").fill('{"requests_per_minute": "lots"}')
    await page.get_by_role("button", name="Save plan").click()
    await expect(page.get_by_role("dialog").get_by_role("alert")).to_contain_text("requests_per_minute")
    await page.keyboard.press("Escape")
    row = page.get_by_test_id("all-tenants").locator("[data-tenant=shop]")
    await row.get_by_role("button", name="Suspend").click()
    await page.get_by_label("Reason (shown to the tenant's members)").fill("unpaid invoice")
    await page.get_by_role("dialog").get_by_role("button", name="Suspend").click()
    await expect(row.locator("[data-status=suspended]")).to_be_visible()
    await page.screenshot(path=shots / "platform.png")
    await row.get_by_role("link", name="shop").click()
    await expect(page.get_by_text("unpaid invoice")).to_be_visible()
    assert httpx.get(f"{gateway}/api/tenants/shop/rest/v1/product").json()["code"] == "tenant_suspended"
    await context.close()


async def test_the_console_fits_a_phone_sized_window(gateway, browser, elsewhere, shots):
    from playwright.async_api import expect

    context = await context_of(browser, elsewhere)
    page = await context.new_page()
    await page.set_viewport_size({"width": 390, "height": 844})
    await sign_in(page, gateway, OWNER)
    await expect(page.locator("[data-tenant=shop]")).to_be_visible()
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page scrolls sideways: {width}px"
    await page.screenshot(path=shots / "phone.png")
    await context.close()


def test_the_console_loaded_nothing_from_any_host_but_the_gateway(elsewhere):
    assert elsewhere.requests == []


def test_the_consoles_assets_are_cached_for_good_and_its_pages_fall_back_to_the_app(gateway):
    index = httpx.get(f"{gateway}/admin/t/shop/schema")
    assert index.status_code == 200 and '<div id="root">' in index.text
    assert index.headers["cache-control"] == "no-cache"
    asset = re.search(r'src="(/admin/assets/[^"]+\.js)"', index.text)[1]
    cached = httpx.get(f"{gateway}{asset}")
    assert cached.status_code == 200 and "immutable" in cached.headers["cache-control"]
    assert httpx.get(f"{gateway}/admin", follow_redirects=False).headers["location"] == "/admin/"
    assert httpx.get(f"{gateway}/admin/assets/nothing.js").status_code == 404
