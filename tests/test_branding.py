"""White-label over HTTP: a tenant's owner sets branding and email templates through update_tenant (checked:
plain CSS only, known placeholders only, the plan's custom_branding feature), and the tenant serves them at
{tenant}/branding and {tenant}/branding.css with an ETag (304 when the client holds it)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from engine.database import Database
from functions.keys import create_api_key
from functions.tenants import create_tenant
from functions.users import create_platform_admin
from tests.server import running_gateway

PASSWORD = "a long enough passphrase"
BRANDING = {
    "colors": {"primary": "#1a2b3c", "background": "#fff"},
    "logo_url": "https://cdn.shop.example/logo.svg",
    "favicon_url": "https://cdn.shop.example/favicon.ico",
    "fonts": {"body": "'Inter', sans-serif"},
    "custom_css": ".login h1 { color: var(--brand-color-primary); }\n@media (max-width: 600px) { .login { padding: 0 } }",
}


@pytest.fixture(scope="module")
async def keys(db: Database) -> dict[str, str]:
    made = {}
    for slug, plan in (("shop", "starter"), ("cheap", "free")):
        await create_tenant(db, slug, plan=plan)
        made[f"{slug}_service"] = (await create_api_key(db, slug, "service", "service")).key
    await create_platform_admin(db, "root@platform.example", PASSWORD)
    return made


@pytest.fixture(scope="module")
def base(keys: dict[str, str], database_url: str) -> Iterator[str]:
    with running_gateway(database_url) as url:
        yield url


def admin(base: str) -> dict[str, str]:
    session = httpx.post(f"{base}/api/platform/auth/v1/token", params={"grant_type": "password"},
                         json={"email": "root@platform.example", "password": PASSWORD}).json()
    return {"Authorization": f"Bearer {session['access_token']}"}


def update(base: str, slug: str, settings: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{base}/api/platform/functions/v1/update_tenant", json={"tenant": slug, "settings": settings},
                      headers=admin(base))


def test_branding_is_served_as_json_and_css_with_an_etag(base):
    assert update(base, "shop", {"branding": BRANDING}).status_code == 200
    served = httpx.get(f"{base}/api/tenants/shop/branding")
    assert served.status_code == 200, served.text
    assert served.json() == {"tenant": "shop", **BRANDING}
    etag = served.headers["etag"]
    assert "public" in served.headers["cache-control"]
    again = httpx.get(f"{base}/api/tenants/shop/branding", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag

    css = httpx.get(f"{base}/api/tenants/shop/branding.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert "--brand-color-primary: #1a2b3c;" in css.text and "--brand-font-body: 'Inter', sans-serif;" in css.text
    assert '--brand-logo-url: url("https://cdn.shop.example/logo.svg");' in css.text
    assert css.text.rstrip().endswith(".login { padding: 0 } }")
    assert httpx.get(f"{base}/api/tenants/shop/branding.css",
                     headers={"If-None-Match": css.headers["etag"]}).status_code == 304

    changed = {**BRANDING, "colors": {"primary": "#000000"}}
    assert update(base, "shop", {"branding": changed}).status_code == 200
    fresh = httpx.get(f"{base}/api/tenants/shop/branding.css", headers={"If-None-Match": css.headers["etag"]})
    assert fresh.status_code == 200 and "--brand-color-primary: #000000;" in fresh.text
    assert fresh.headers["etag"] != css.headers["etag"]


@pytest.mark.parametrize("css", [
    "</style><script>alert(1)</script>",
    "@import url(https://evil.example/x.css);",
    "a { background: url(javascript:alert(1)) }",
    "a { color: red",
    "a { width: expression(alert(1)) }",
])
def test_custom_css_that_is_not_plain_css_is_refused_with_its_field(base, css):
    refused = update(base, "shop", {"branding": {"custom_css": css}})
    assert refused.status_code == 422, refused.text
    assert [d["field"] for d in refused.json()["details"]] == ["settings.branding.custom_css"]


def test_email_templates_with_unknown_placeholders_are_refused_with_the_field_named(base):
    refused = update(base, "shop", {"email_templates": {"invitation": {
        "subject": "Join {{tenant_name}}", "body": "Hi {{first_name}}, accept at {{accept_url}}"}}})
    assert refused.status_code == 422, refused.text
    [problem] = refused.json()["details"]
    assert problem["field"] == "settings.email_templates.invitation.body" and "first_name" in problem["message"]

    template = {"subject": "Join {{ tenant_name }}", "body": "<p>Accept as {{role}}: {{accept_url}}</p>"}
    assert update(base, "shop", {"branding": BRANDING, "email_templates": {"invitation": template}}).status_code == 200
    preview = httpx.post(f"{base}/api/platform/functions/v1/preview_email", json={"tenant": "shop", "kind": "invitation"},
                         headers=admin(base))
    assert preview.status_code == 200, preview.text
    assert preview.json()["subject"] == "Join Shop" or preview.json()["subject"] == "Join shop"
    assert preview.json()["body"] == "<p>Accept as &lt;role&gt;: &lt;accept_url&gt;</p>"


async def test_a_plan_without_custom_branding_gets_402(base, db):
    refused = update(base, "cheap", {"branding": BRANDING})
    assert refused.status_code == 402 and refused.json()["code"] == "plan_feature_required"
    assert httpx.get(f"{base}/api/tenants/cheap/branding").status_code == 402
    async with db.begin() as conn:  # a downgrade: the branding stays stored, but is not served
        await conn.execute(sa.text("UPDATE system.tenants SET plan = 'free' WHERE slug = 'shop'"))
    try:
        gone = httpx.get(f"{base}/api/tenants/shop/branding.css")
        assert gone.status_code == 402 and gone.json()["code"] == "plan_feature_required"
    finally:
        async with db.begin() as conn:
            await conn.execute(sa.text("UPDATE system.tenants SET plan = 'starter' WHERE slug = 'shop'"))


def test_other_tenants_credentials_get_nothing_and_members_of_others_cannot_set_it(base, keys):
    for path in ("branding", "branding.css"):
        foreign = httpx.get(f"{base}/api/tenants/shop/{path}", headers={"apikey": keys["cheap_service"]})
        assert foreign.status_code == 401 and "1a2b3c" not in foreign.text and "000000" not in foreign.text
    stranger = httpx.post(f"{base}/api/platform/auth/v1/signup",
                          json={"email": "stranger@example.com", "password": PASSWORD}).json()
    hijack = httpx.post(f"{base}/api/platform/functions/v1/update_tenant",
                        json={"tenant": "shop", "settings": {"branding": {"colors": {"primary": "#ff0000"}}}},
                        headers={"Authorization": f"Bearer {stranger['access_token']}"})
    assert hijack.status_code == 403
    preview = httpx.post(f"{base}/api/platform/functions/v1/preview_email", json={"tenant": "shop", "kind": "invitation"},
                         headers={"Authorization": f"Bearer {stranger['access_token']}"})
    assert preview.status_code == 403
    anonymous = httpx.post(f"{base}/api/platform/functions/v1/preview_email", json={"tenant": "shop", "kind": "invitation"})
    assert anonymous.status_code in (401, 403)
