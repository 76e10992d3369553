"""White-label: a tenant's branding and email templates, checked where they are written and rendered where served.

Both live in the tenant's settings (`settings.branding`, `settings.email_templates`), whose JSON Schema in
platform.yaml checks their shape. What a JSON Schema cannot say is checked here, by a `before_create` and
`before_update` hook on the platform's `tenants` entity, so that every path that writes settings (the
`update_tenant` function, a platform admin's PATCH) passes it:

- branding needs the plan feature `custom_branding` (402 `plan_feature_required` otherwise);
- `custom_css` must be plain CSS (engine/css.py: parsed, and refused with its line otherwise);
- a template's subject and body may name only the placeholders of its kind (`{{ accept_url }}` in an
  invitation); an unknown one is refused with the field named, and so is a secret one (`{{code}}`, a
  `*_url` link) in a subject, which mail servers, phone notifications and logs show.

`branding_of` and `branding_css` build what the gateway serves at `{tenant}/branding` and `/branding.css`
(gateway/branding.py); `render_email` fills a template (the tenant's own, else the platform's default), and
`render_mail` builds the mail the platform sends with it (engine/identity/mailflows.py, members' invitations).
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping
from typing import Any

import re2

from engine.css import CssError, check_css
from engine.errors import Problem, ValidationFailed
from engine.hooks import Change, HookContext, platform_function, platform_hook
from engine.plans import Plan, require_feature
from functions.access import DEVELOPERS, authorize, in_platform

FEATURE = "custom_branding"
PLACEHOLDER = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
COMMON = ("tenant_name", "email")
PLACEHOLDERS: dict[str, tuple[str, ...]] = {
    "invitation": (*COMMON, "role", "accept_url", "invited_by", "expires_at"),
    "confirm_signup": (*COMMON, "confirm_url", "code"),
    "recovery": (*COMMON, "reset_url", "code"),
    "email_change": (*COMMON, "new_email", "confirm_url", "code"),
    "magic_link": (*COMMON, "link_url", "code"),
}
DEFAULT_TEMPLATES: dict[str, dict[str, str]] = {
    "invitation": {"subject": "You are invited to {{tenant_name}}",
                   "body": "You have been invited to {{tenant_name}} as {{role}}. Accept: {{accept_url}}"},
    "confirm_signup": {"subject": "Confirm your address for {{tenant_name}}",
                       "body": "Confirm {{email}}: {{confirm_url}}\nOr enter the code {{code}}"},
    "recovery": {"subject": "Reset your {{tenant_name}} password",
                 "body": "Reset it here: {{reset_url}}\nOr enter the code {{code}}"},
    "email_change": {"subject": "Confirm your new address for {{tenant_name}}",
                     "body": "Confirm the change from {{email}} to {{new_email}}: {{confirm_url}}\nOr enter the code {{code}}"},
    "magic_link": {"subject": "Your {{tenant_name}} sign-in link", "body": "Sign in: {{link_url}}\nOr enter the code {{code}}"},
}
# On a tenant's template (up to 100 KB): RE2, linear time (DESIGN.md, wall 5)
HTML_TAG = re2.compile(r"</?[a-zA-Z][^<>]*>")
ANCHOR = re2.compile(r"""(?i)<a\s[^<>]*?href\s*=\s*["']([^"'<>]*)["'][^<>]*>([^<>]*)</a\s*>""")
LINE_BREAK = re2.compile(r"(?i)<br\s*/?>|</(?:p|div|h[1-6]|li|tr)\s*>")


def template_problems(templates: Mapping[str, Any]) -> list[Problem]:
    """Every unknown placeholder (or unknown kind) of `settings.email_templates`, with its field."""
    problems = []
    for kind, template in templates.items():
        allowed = PLACEHOLDERS.get(kind)
        if allowed is None:
            problems.append(Problem(f"settings.email_templates.{kind}", "is not a kind of email"))
            continue
        for part in ("subject", "body"):
            text = template.get(part) if isinstance(template, Mapping) else None
            for name in PLACEHOLDER.findall(text if isinstance(text, str) else ""):
                if name not in allowed:
                    problems.append(Problem(f"settings.email_templates.{kind}.{part}",
                                            f"unknown placeholder {{{{{name}}}}}; known: {', '.join(allowed)}"))
                elif part == "subject" and secret_placeholder(name):
                    problems.append(Problem(f"settings.email_templates.{kind}.subject",
                                            f"{{{{{name}}}}} is a secret (a sign-in code or link): it belongs in the body, "
                                            "not in the subject, which mail servers, notifications and logs show"))
    return problems


def secret_placeholder(name: str) -> bool:
    """A placeholder whose value signs its reader in: the code, and every link (`*_url`)."""
    return name == "code" or name.endswith("_url")


def settings_problems(settings: Mapping[str, Any]) -> list[Problem]:
    """What the settings' JSON Schema cannot check: the custom CSS and the templates' placeholders."""
    problems = []
    for name, value in ((settings.get("branding") or {}).get("fonts") or {}).items():
        try:  # a font list is a custom property's value: its quotes must pair up
            check_css(f":root {{ --font: {value}; }}")
        except CssError:
            problems.append(Problem(f"settings.branding.fonts.{name}", "is not a font list (unpaired quotes?)"))
    css = (settings.get("branding") or {}).get("custom_css")
    if isinstance(css, str):
        try:
            check_css(css)
        except CssError as error:
            problems.append(Problem("settings.branding.custom_css", str(error)))
    templates = settings.get("email_templates")
    if isinstance(templates, Mapping):
        problems += template_problems(templates)
    return problems


@platform_hook
async def check_tenant_settings(ctx: HookContext, change: Change) -> None:
    """before_create / before_update of `tenants`: the custom CSS, the templates, and the plan's feature
    when the branding changes."""
    in_platform(ctx)
    record, old = change.record or {}, change.old or {}
    if "settings" not in record or not isinstance(record["settings"], Mapping):
        return
    settings, before = record["settings"], old.get("settings") or {}
    problems = settings_problems(settings)
    if problems:
        raise ValidationFailed(f"{len(problems)} problem(s) with the tenant's settings", details=problems)
    if settings.get("branding") and settings.get("branding") != before.get("branding"):
        code = record.get("plan") or old.get("plan")
        rows = await ctx.data.elevated().select("plans", {"code": f"eq.{code}"}) if code else []
        require_feature(Plan.from_row(rows[0]) if rows else Plan(str(code or "")), FEATURE)


def render(text: str, values: Mapping[str, str], *, escape: bool) -> str:
    return PLACEHOLDER.sub(lambda m: html.escape(values.get(m.group(1), "")) if escape
                           else values.get(m.group(1), ""), text)


def render_email(settings: Mapping[str, Any], kind: str, values: Mapping[str, str]) -> dict[str, str]:
    """The subject and (HTML-escaped values in the) body of a mail of `kind`, from the tenant's template of
    that kind when it has one, else the platform's default."""
    template = (settings.get("email_templates") or {}).get(kind) or DEFAULT_TEMPLATES[kind]
    return {"subject": render(template["subject"], values, escape=False),
            "body": render(template["body"], values, escape=True)}


def render_mail(settings: Mapping[str, Any], kind: str, values: Mapping[str, str]) -> dict[str, str | None]:
    """The mail as it is sent: subject, the plain-text body (values as they are, so a link keeps its `&`), and
    an HTML body (values escaped) when the template's body is HTML (it holds a tag)."""
    template = (settings.get("email_templates") or {}).get(kind) or DEFAULT_TEMPLATES[kind]
    body = template["body"]
    html_body = render(body, values, escape=True) if HTML_TAG.search(body) else None
    if html_body is not None:  # the plain-text part: each link written out after its words, then no tags
        body = HTML_TAG.sub("", LINE_BREAK.sub("\n", ANCHOR.sub(lambda m: f"{m.group(2)} ({m.group(1)})", body)))
    text = render(body, values, escape=False)
    return {"subject": " ".join(render(template["subject"], values, escape=False).split()), "text": text,
            "html": html_body}


def sender_name(name: str, settings: Mapping[str, Any]) -> str:
    """Whom a tenant's mails come from: its display name when its settings give one, else its name."""
    return ((settings.get("general") or {}).get("display_name") or name).strip()


@platform_function
async def preview_email(ctx: HookContext, payload: dict[str, Any]) -> dict[str, Any]:
    """preview_email: a template of the tenant's rendered with sample values, to see it before it is sent."""
    await authorize(ctx, payload["tenant"], DEVELOPERS)
    rows = await ctx.data.elevated().select("tenants", {"slug": f"eq.{payload['tenant']}", "select": "name,settings"})
    if not rows:
        raise ValidationFailed("no such tenant", details=[Problem("tenant", "not found")])
    sample = {name: f"<{name}>" for name in PLACEHOLDERS[payload["kind"]]}
    sample["tenant_name"] = rows[0]["name"]
    return {"kind": payload["kind"], **render_email(rows[0]["settings"] or {}, payload["kind"], sample)}


def branding_of(slug: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    """The branding JSON a tenant's apps read (absent parts are absent, not invented)."""
    branding = settings.get("branding") or {}
    return {"tenant": slug, **{k: branding[k] for k in ("colors", "logo_url", "favicon_url", "fonts", "custom_css")
                               if k in branding}}


def branding_css(settings: Mapping[str, Any]) -> str:
    """The branding as CSS custom properties on `:root` (`--brand-color-primary`, `--brand-font-body`,
    `--brand-logo-url`), then the tenant's custom CSS. Every value was checked against its pattern or
    parsed (engine/css.py) when written."""
    branding = settings.get("branding") or {}
    lines = [f"  --brand-color-{name}: {value};" for name, value in sorted((branding.get("colors") or {}).items())]
    lines += [f"  --brand-font-{name}: {value};" for name, value in sorted((branding.get("fonts") or {}).items())]
    lines += [f'  --brand-{key.replace("_url", "")}-url: url("{branding[key]}");'
              for key in ("logo_url", "favicon_url") if branding.get(key)]
    css = ":root {\n" + "\n".join(lines) + "\n}\n"
    if branding.get("custom_css"):
        css += "\n" + branding["custom_css"].rstrip() + "\n"
    return css
