"""GoTrue's mail flows at a tenant's `/auth/v1`: what `supabase.auth` does with an email address alone.

- `POST /recover` (resetPasswordForEmail): a recovery mail to a known address; 200 `{}` whether or not
  the address has an account, so the answer tells no one who has one (the throttle counts both alike);
- `POST /otp` (signInWithOtp): a magic link and a 6-digit code; with `create_user` (the default) an
  unknown address gets a new unconfirmed account and the sign-up confirmation instead, else 422 `otp_disabled`
  as GoTrue answers;
- `POST /verify` (verifyOtp) with `type` signup, invite, recovery, magiclink, email (signup or magic link)
  or email_change, and either `token_hash` (the link's token) or `email` and `token` (the code): a session;
- `GET /verify?token=...&type=...&redirect_to=...` (the link in the mail): 303 to the redirect with the
  session in the URL fragment (`#access_token=...&refresh_token=...&type=recovery`), or with
  `#error=...&error_code=otp_expired&error_description=...` when the token is refused, as GoTrue does;
- `POST /resend` (type signup or email_change): the pending confirmation again, with a fresh token;
- `POST /invite` (the tenant's admins and service key: auth.admin.inviteUserByEmail): an account for the
  address and the `invitation` mail, verified with type invite;
- sign-up when the tenant's `settings.auth.confirm_email` is true: the account is stored unconfirmed, the
  answer is the user without a session, and the `confirm_signup` mail is sent; a password sign-in of an
  unconfirmed account is refused (`email_not_confirmed`);
- `PUT /user` with a new email: the `email_change` mail goes to the new address and, unless the tenant's
  `settings.auth.secure_email_change` is false, to the current one too (GoTrue's secure email change, on by
  default); the new address replaces the old one only once every address mailed has confirmed. The first
  of two confirmations answers as GoTrue does: 200 `{"msg": "Confirmation link accepted. Please proceed to
  confirm link sent to the other email", "code": "200"}` by POST, a 303 to the redirect with that
  `#message=...` by the link; no session. Whoever holds a session alone (a stolen one) cannot move the
  account to an address of theirs. An admin still changes it directly, through `/rest/v1/users`.

Tokens (system table `one_time_tokens`): a 256-bit link token and a 6-digit code, both stored only as
HMAC-SHA-256 under a key derived (HKDF) from the server's token-signing secret (`BACKSAAS_JWT_SECRET`, else
the stored signing key: engine/identity/signing.py, `derived_keys`), never the signing key itself; a code's
digest also binds the tenant and the address it was mailed to. A copy of this table alone gives no code (a
plain digest of a 6-digit code falls to a million guesses); with `BACKSAAS_JWT_SECRET` set, neither does a
copy of the whole database. Codes are compared in constant time. After a key rotation, tokens made under
the previous key keep working until it is retired. Tokens are bound to the tenant (looked up within it:
another tenant's token is not found) and to the user, single use, one hour, and honoured only while the
account still has the address it was mailed to. A newer token of a kind replaces the user's older one (an
email change's two replace both); a password change deletes the user's recovery and magic-link tokens, a
confirmed email change all the others. The first confirmation of an address by a magic link, a
recovery or an invitation replaces a password set before it with an unusable one and ends the account's
other sessions: whoever signed up with someone else's address keeps nothing once its owner confirms it.
Wrong codes count as failed sign-ins (engine/identity/throttle.py), and mails are limited per address and
per client.

`redirect_to` is honoured only on the origin of the tenant's `site_url` or when it matches its
`uri_allow_list` (GoTrue's settings of those names, in the tenant's `settings.auth`); any other is refused
(400 `redirect_to_not_allowed`), never followed. Links are built from `BACKSAAS_PUBLIC_URL` when the tenant
was addressed by path (its Host header is the client's to choose: it is used only when mails go to the log,
in development; with SMTP and no public URL a flow answers 500 `mail_not_configured`), else from the host that
resolved the tenant (one of its own: its subdomain or a verified custom domain).

Mails use the tenant's templates and branding name (functions/branding.py) and leave through the mailer
(engine/mailer.py) after the transaction that issued their token has committed. Every flow is audited.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode, urlsplit

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from engine import audit, catalog, mailer
from engine.answer import Answer
from engine.authz import unrestricted
from engine.errors import AuthFailed, Problem, ValidationFailed
from engine.identity import sessions
from engine.identity.passwords import hash_password
from engine.schema.model import USERS

TOKEN_LIFETIME = timedelta(hours=1)
# An email change's tokens: `email_change` is mailed to the new address, `email_change_current` to the
# current one (GoTrue's email_change_token_new and _current); both carry the new address in `new_email`.
EMAIL_CHANGE_KINDS = ("email_change", "email_change_current")
KINDS_OF_TYPE: dict[str, tuple[str, ...]] = {
    "signup": ("signup",), "invite": ("invite",), "recovery": ("recovery",), "magiclink": ("magiclink",),
    "email": ("signup", "magiclink"), "email_change": EMAIL_CHANGE_KINDS,
}
TEMPLATE_OF_KIND = {"signup": "confirm_signup", "invite": "invitation", "recovery": "recovery",
                    "magiclink": "magic_link", "email_change": "email_change", "email_change_current": "email_change"}
LINK_TYPE_OF_KIND = {"email_change_current": "email_change"}  # else the kind itself
URL_OF_TEMPLATE = {"confirm_signup": "confirm_url", "invitation": "accept_url", "recovery": "reset_url",
                   "magic_link": "link_url", "email_change": "confirm_url"}
INVALID = "Token has expired or is invalid"
# GoTrue's answer to the first of a secure email change's two confirmations (internal/api/verify.go)
SINGLE_CONFIRMATION = "Confirmation link accepted. Please proceed to confirm link sent to the other email"
TOKEN_KEY_PURPOSE = b"backsaas one-time tokens v1"  # the HKDF label of the tokens' digest key (signing.py)
# Tokens whose first confirmation of an address hands the account to the address's owner: a password set
# before (by whoever signed up with an address that was not theirs) stops working, its sessions end.
CLAIMING_KINDS = frozenset({"magiclink", "recovery", "invite"})


@dataclass(frozen=True)
class TenantMail:
    """What the flows need of the tenant's settings: its sender name, its templates, its auth settings."""

    name: str
    settings: dict[str, Any]

    @property
    def auth(self) -> dict[str, Any]:
        return self.settings.get("auth") or {}

    @property
    def confirm_email(self) -> bool:
        return bool(self.auth.get("confirm_email"))

    @property
    def secure_email_change(self) -> bool:
        """GoTrue's MAILER_SECURE_EMAIL_CHANGE_ENABLED, on unless the tenant turns it off: an email change
        is confirmed from the current address as well as the new one."""
        return self.auth.get("secure_email_change", True) is not False


@dataclass(frozen=True)
class MailedToken:
    """A token issued in a transaction, to be mailed to `to` once that transaction has committed."""

    kind: str
    to: str
    token: str
    code: str


def link_digest(key: bytes, tenant_id: str, token: str) -> str:
    """What is stored of a link's token: its HMAC-SHA-256 under the server's token key (see the module)."""
    return hmac.new(key, f"link\x00{tenant_id}\x00{token}".encode(), hashlib.sha256).hexdigest()


def code_digest(key: bytes, tenant_id: str, address: str, code: str) -> str:
    """What is stored of a 6-digit code: its HMAC-SHA-256 with the tenant and the address it was mailed to.
    Keyed, because a million plain digests are tried in a second: a copy of the table alone gives no code."""
    return hmac.new(key, f"code\x00{tenant_id}\x00{address.strip().lower()}\x00{code.strip()}".encode(),
                    hashlib.sha256).hexdigest()


def mailed_to(kind: str, email: str, new_email: str | None) -> str:
    """The address a token of `kind` is mailed to: the new one for an email change's `email_change`."""
    return new_email if kind == "email_change" and new_email else email


# -- redirects --------------------------------------------------------------------------------------------


def _plain_url(url: str) -> bool:
    """`url` is one that every parser reads alike: printable ASCII only (no backslash, which browsers read as
    `/` where Python's urlsplit does not: `https://evil.example\\@site/` is evil.example to a browser), and no
    userinfo (an `@` before the host)."""
    if not url.isascii() or "\\" in url or any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        return False
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - a malformed port raises here
    except ValueError:
        return False
    return "@" not in parts.netloc and parts.username is None and parts.password is None


def _origin(url: str) -> tuple[str, str, int | None] | None:
    """(scheme, host, port) of an http(s) URL read alike by every parser (`_plain_url`), else None."""
    if not _plain_url(url):
        return None
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        return None
    return scheme, parts.hostname.lower(), parts.port or {"http": 80, "https": 443}[scheme]


def redirect_allowed(url: str, auth: dict[str, Any]) -> bool:
    """`url` is on the origin of `site_url`, or equals an entry of `uri_allow_list`, or lies under an entry
    ending in `/**` (same origin, path below it). Nothing else: no wildcard in a host, no userinfo, no
    backslash, control or non-ASCII character (origins are compared parsed, so a URL must parse the same in
    Python as in a browser), and only http(s) on origins; an app's own scheme only as an exact entry."""
    if not _plain_url(url) or "#" in url:
        return False
    origin = _origin(url)
    site = auth.get("site_url")
    if origin is not None and isinstance(site, str) and _origin(site) == origin:
        return True
    for entry in auth.get("uri_allow_list") or ():
        if not isinstance(entry, str) or not _plain_url(entry):
            continue
        if entry.endswith("/**"):
            base = entry[:-3]
            if origin is not None and _origin(base) == origin:
                path, under = urlsplit(url).path.rstrip("/"), urlsplit(base).path.rstrip("/")
                if path == under or path.startswith(under + "/"):
                    return True
        elif url.rstrip("/") == entry.rstrip("/") and (origin is not None or _app_scheme(url)):
            return True
    return False


def _app_scheme(url: str) -> bool:
    """A mobile app's own scheme (`myapp://callback`, listed exactly): never one a browser runs or reads
    locally (javascript:, data:, file:, ...)."""
    scheme = urlsplit(url).scheme.lower()
    return bool(scheme) and scheme not in ("http", "https", "javascript", "data", "vbscript", "file", "blob", "about") \
        and url[len(scheme):].startswith("://")


# -- the flows --------------------------------------------------------------------------------------------


class MailFlows:
    """The mail flows of one request to a tenant's `/auth/v1`; `api` is its `AuthApi` (engine/identity/gotrue.py)."""

    def __init__(self, api: Any) -> None:
        self.api = api
        self.tenant_id: str = api.runtime.tenant_id
        self.slug: str = api.runtime.slug
        self.keys: tuple[bytes, ...] = api.keyring.derived_keys(TOKEN_KEY_PURPOSE)  # the current key first
        self._tenant: TenantMail | None = None

    async def tenant(self) -> TenantMail:
        if self._tenant is None:
            tenants = catalog.platform_tables()["tenants"]
            async with self.api.db.engine.connect() as conn:
                row = (await conn.execute(sa.select(tenants.c.name, tenants.c.settings)
                                          .where(tenants.c.id == self.tenant_id))).one()
            self._tenant = TenantMail(row.name, dict(row.settings or {}))
        return self._tenant

    # -- links --

    def auth_base(self) -> str:
        """This tenant's `/auth/v1` as the mail's reader reaches it (see the module's docstring)."""
        scope = audit.REQUEST.get() or {}
        public = os.environ.get(mailer.PUBLIC_URL_VARIABLE, "").strip().rstrip("/")
        path: str = scope.get("path") or ""
        at = path.rfind("/auth/v1/")
        prefix = path[:at] if at >= 0 else ""
        by_host = at >= 0 and prefix == "" and not scope.get("backsaas.tenant_header")
        host = audit.header(scope, b"host") if scope else None
        if by_host and host:
            return f"{scope.get('scheme', 'http')}://{host}/auth/v1"
        if not prefix:
            prefix = "/api/platform" if self.slug == "system" else f"/api/tenants/{self.slug}"
        if public:
            return f"{public}{prefix}/auth/v1"
        if host and not os.environ.get(mailer.SMTP_URL_VARIABLE, "").strip():  # development: mails go to the log
            return f"{scope.get('scheme', 'http')}://{host}{prefix}/auth/v1"
        raise AuthFailed("mail_not_configured", 500, f"set {mailer.PUBLIC_URL_VARIABLE}: no public URL for mail links "
                         "(the Host header is the client's to choose: links are built from it only when mails go to the log)")

    async def redirect_for(self, requested: str | None, *, mailing: bool = True) -> str:
        """Where a link lands: `requested` when allowed (else refused, 400), else the site URL, else the
        tenant's base URL. With `mailing` (a flow about to mail a link), refused first (500
        `mail_not_configured`) when no link can be built safely, before any token is issued."""
        if mailing:
            self.auth_base()
        auth = (await self.tenant()).auth
        if requested:
            if not redirect_allowed(requested, auth):
                raise AuthFailed("redirect_to_not_allowed", 400,
                                 "redirect_to is not allowed: it must be on the site URL's origin or match the tenant's "
                                 "uri_allow_list (settings.auth)",
                                 details=[Problem("redirect_to", "is not an allowed redirect URL")])
            return requested
        return auth.get("site_url") or self.auth_base().removesuffix("/auth/v1")

    def link(self, token: str, kind: str, redirect_to: str) -> str:
        link_type = LINK_TYPE_OF_KIND.get(kind, kind)
        return f"{self.auth_base()}/verify?" + urlencode({"token": token, "type": link_type, "redirect_to": redirect_to})

    # -- tokens --

    async def issue(self, conn: Any, user_id: str, kind: str, email: str, *, new_email: str | None = None,
                    redirect_to: str | None = None, replacing: tuple[str, ...] | None = None) -> tuple[str, str]:
        """A fresh (link token, code) for the user's `kind`, replacing their older ones of `replacing` (None:
        of `kind`; `()`: none, for the second token of one request), in `conn`'s transaction, as the platform.
        The tenant's tokens a day past their expiry go too: a token row names an address, and is kept no
        longer than it explains a refusal."""
        tokens = catalog.platform_tables()["one_time_tokens"]
        token, code = secrets.token_urlsafe(32), f"{secrets.randbelow(1_000_000):06d}"
        if replacing != ():
            await conn.execute(tokens.delete().where(tokens.c.tenant_id == self.tenant_id, sa.or_(
                sa.and_(tokens.c.user_id == user_id, tokens.c.kind.in_(replacing or (kind,))),
                tokens.c.expires_at < sa.func.now() - sa.text("interval '1 day'"))))
        key = self.keys[0]
        await conn.execute(tokens.insert().values(
            tenant_id=self.tenant_id, user_id=user_id, kind=kind, email=email, new_email=new_email,
            token_hash=link_digest(key, self.tenant_id, token),
            code_hash=code_digest(key, self.tenant_id, mailed_to(kind, email, new_email), code),
            redirect_to=redirect_to, expires_at=datetime.now(UTC) + TOKEN_LIFETIME))
        return token, code

    async def forget_tokens(self, conn: Any, user_id: str, kinds: tuple[str, ...] | None = None,
                            except_id: Any = None) -> None:
        """Delete the user's outstanding tokens (of `kinds`, else all; as the platform, in `conn`'s
        transaction): after a password or an address changes, a link mailed before must not undo it."""
        tokens = catalog.platform_tables()["one_time_tokens"]
        conditions = [tokens.c.tenant_id == self.tenant_id, tokens.c.user_id == user_id]
        if kinds is not None:
            conditions.append(tokens.c.kind.in_(kinds))
        if except_id is not None:
            conditions.append(tokens.c.id != except_id)
        await conn.execute(tokens.delete().where(*conditions))

    async def consume(self, conn: Any, kinds: tuple[str, ...], *, token: str | None = None,
                      email: str | None = None, code: str | None = None) -> Any:
        """The token row, now used; refused (403 `otp_expired`) when unknown in this tenant, of another kind,
        used or expired. A link's token is looked up by its keyed digest (a 256-bit secret: the lookup's
        timing tells nothing of another); a code, among the address's outstanding tokens of `kinds`, by
        comparing digests in constant time. The user's tokens of the found one's group (an email change's
        two, else its kind) are then locked in one order, so that two confirmations of one email change
        take turns and the second sees the first."""
        tokens = catalog.platform_tables()["one_time_tokens"]
        query = sa.select(tokens.c.id, tokens.c.user_id, tokens.c.kind).where(tokens.c.tenant_id == self.tenant_id)
        if token is not None:
            expected = [link_digest(key, self.tenant_id, token) for key in self.keys]
            stored = tokens.c.token_hash
            query = query.where(stored.in_(expected))
        else:
            assert email is not None and code is not None
            expected = [code_digest(key, self.tenant_id, email, code) for key in self.keys]
            stored = tokens.c.code_hash
            query = query.where(sa.or_(tokens.c.email == email, tokens.c.new_email == email), tokens.c.kind.in_(kinds))
        found = None
        query = query.add_columns(stored.label("stored")).order_by(tokens.c.created_at.desc())
        for candidate in (await conn.execute(query)).all():
            matches = [hmac.compare_digest(candidate.stored, digest) for digest in expected]  # every one compared
            if any(matches) and found is None:
                found = candidate
        if found is None or found.kind not in kinds:
            raise AuthFailed("otp_expired", 403, f"{INVALID}: no such token in this tenant")
        group = EMAIL_CHANGE_KINDS if found.kind in EMAIL_CHANGE_KINDS else (found.kind,)
        locked = (await conn.execute(sa.select(tokens).where(
            tokens.c.tenant_id == self.tenant_id, tokens.c.user_id == found.user_id, tokens.c.kind.in_(group))
            .order_by(tokens.c.id).with_for_update())).all()
        row = next((r for r in locked if r.id == found.id), None)
        if row is None:  # replaced by a newer one meanwhile
            raise AuthFailed("otp_expired", 403, f"{INVALID}: no such token in this tenant")
        if row.used_at is not None:
            raise AuthFailed("otp_expired", 403, f"{INVALID}: it has already been used")
        if row.expires_at <= datetime.now(UTC):
            raise AuthFailed("otp_expired", 403, f"{INVALID}: it has expired")
        await conn.execute(tokens.update().where(tokens.c.id == row.id).values(used_at=sa.func.now()))
        return row

    # -- mail --

    async def send(self, template: str, to: str, values: dict[str, str]) -> None:
        """Render the tenant's template of `template` and queue it (callers: after their commit)."""
        from functions.branding import render_mail, sender_name  # the templates' home (a function module)

        tenant = await self.tenant()
        name = sender_name(tenant.name, tenant.settings)
        mail = render_mail(tenant.settings, template, {"tenant_name": name, "email": to, **values})
        mailer.send(mailer.Mail(to, str(mail["subject"]), str(mail["text"]), tenant=self.slug, kind=template,
                                sender_name=name, html=mail["html"]))

    async def send_token_mail(self, kind: str, to: str, token: str, code: str, redirect_to: str,
                              **values: str) -> None:
        template = TEMPLATE_OF_KIND[kind]
        await self.send(template, to, {URL_OF_TEMPLATE[template]: self.link(token, kind, redirect_to), "code": code,
                                       **values})

    # -- helpers on the tenant's users --

    async def user_by_email(self, conn: Any, email: str) -> Any:
        api = self.api
        await api.as_tenant(conn)
        row = (await conn.execute(sa.select(*api.user_columns()).where(api.users.c.email == email))).first()
        await api.as_platform(conn)
        return row

    def email_of(self, body: dict[str, Any], field: str = "email") -> str:
        from engine.identity.gotrue import email_problem

        email = body.get(field)
        problem = email_problem(email)
        if problem:
            raise ValidationFailed("a valid email is required", details=[Problem(field, problem)])
        return str(email).strip().lower()

    async def audit(self, conn: Any, action: str, user_id: str | None, **data: Any) -> None:
        await audit.record(conn, action, tenant_id=self.tenant_id, entity=USERS if user_id else None,
                           record_id=user_id, ip=self.api.ip, data=data)

    # -- routes --

    async def recover(self, body: dict[str, Any], params: dict[str, str]) -> Answer:
        email = self.email_of(body)
        redirect_to = await self.redirect_for(params.get("redirect_to") or body.get("redirect_to"))
        await self.api.throttle.mail(self.tenant_id, email, self.api.ip)
        async with self.api.db.begin() as conn:
            row = await self.user_by_email(conn, email)
            issued = await self.issue(conn, str(row.id), "recovery", email, redirect_to=redirect_to) if row else None
            await self.audit(conn, "auth.recovery_requested", str(row.id) if row else None, email=email,
                             known_account=row is not None)
        if issued:
            await self.send_token_mail("recovery", email, *issued, redirect_to)
        return _empty()

    async def otp(self, body: dict[str, Any], params: dict[str, str]) -> Answer:
        if body.get("phone"):
            raise AuthFailed("phone_provider_disabled", 400, "sign-in by phone is not supported here: use email")
        email = self.email_of(body)
        create = body.get("create_user", True)
        if not isinstance(create, bool):
            raise ValidationFailed("create_user must be a boolean", details=[Problem("create_user", "must be a boolean")])
        redirect_to = await self.redirect_for(params.get("redirect_to") or body.get("redirect_to"))
        data, free = self.api.metadata_values(body.get("data"))
        await self.api.throttle.mail(self.tenant_id, email, self.api.ip)
        async with self.api.db.begin() as conn:
            row = await self.user_by_email(conn, email)
            if row is None and not create:
                raise AuthFailed("otp_disabled", 422, "Signups not allowed for otp")
            if row is None:
                self.api.check_metadata({"email": email, **data}, partial=False)
                row = await self.insert_user(conn, email, data, free)
                kind, action = "signup", "auth.signup"
            else:
                kind, action = "magiclink", "auth.magic_link_requested"
            issued = await self.issue(conn, str(row.id), kind, email, redirect_to=redirect_to)
            await self.audit(conn, action, str(row.id), email=email, by="otp")
        await self.send_token_mail(kind, email, *issued, redirect_to)
        return _empty()

    async def insert_user(self, conn: Any, email: str, data: dict[str, Any], free: dict[str, Any]) -> Any:
        """An unconfirmed account with an unusable random password (GoTrue does the same for OTP sign-ups)."""
        return await self.api.insert_user(conn, email, await hash_password(secrets.token_urlsafe(32)),
                                          verified=False, data=data, free=free)

    async def signup_unconfirmed(self, email: str, hashed: str, data: dict[str, Any], free: dict[str, Any],
                                 params: dict[str, str]) -> Answer:
        """Sign-up in a tenant that confirms addresses: the user, no session, and the confirmation mail."""
        from engine import onboarding

        api = self.api
        redirect_to = await self.redirect_for(params.get("redirect_to"))
        await api.throttle.mail(self.tenant_id, email, api.ip)
        async with api.db.begin() as conn:
            row = await api.insert_user(conn, email, hashed, verified=False, data=data, free=free)
            issued = await self.issue(conn, str(row.id), "signup", email, redirect_to=redirect_to)
            await self.audit(conn, "auth.signup", str(row.id), email=email, confirmation="sent")
            await onboarding.mark(conn, "first_user", tenant_id=self.tenant_id)
        await self.send_token_mail("signup", email, *issued, redirect_to)
        return _answer(200, {**api.user_json(row), "confirmation_sent_at": datetime.now(UTC).isoformat()})

    async def resend(self, body: dict[str, Any], params: dict[str, str]) -> Answer:
        kind = body.get("type")
        if kind not in ("signup", "email_change"):
            raise ValidationFailed("type must be signup or email_change",
                                   details=[Problem("type", "must be signup or email_change")])
        email = self.email_of(body)
        redirect_to = await self.redirect_for(params.get("redirect_to") or body.get("redirect_to"))
        await self.api.throttle.mail(self.tenant_id, email, self.api.ip)
        tokens = catalog.platform_tables()["one_time_tokens"]
        issued = pending = None
        changes: list[MailedToken] = []
        async with self.api.db.begin() as conn:
            if kind == "signup":
                row = await self.user_by_email(conn, email)
                if row is not None and not row.verified:
                    issued = await self.issue(conn, str(row.id), "signup", email, redirect_to=redirect_to)
                user_id = str(row.id) if row is not None and issued else None
            else:  # the pending change to or from this address (GoTrue's resend takes the current one), if any
                pending = (await conn.execute(sa.select(tokens.c.user_id, tokens.c.email, tokens.c.new_email).where(
                    tokens.c.tenant_id == self.tenant_id, tokens.c.kind.in_(EMAIL_CHANGE_KINDS),
                    sa.or_(tokens.c.new_email == email, tokens.c.email == email), tokens.c.used_at.is_(None))
                    .order_by(tokens.c.created_at.desc()).limit(1))).first()
                if pending is not None:  # both tokens again, as GoTrue does: a half-confirmed change starts over
                    changes = await self.issue_email_change(conn, str(pending.user_id), pending.email,
                                                            pending.new_email, redirect_to)
                    if len(changes) > 1:  # the other address gets a mail too
                        other = pending.email if email == pending.new_email else pending.new_email
                        await self.api.throttle.mail(self.tenant_id, other, self.api.ip)
                user_id = str(pending.user_id) if pending is not None else None
            await self.audit(conn, "auth.confirmation_resent", user_id, email=email, type=kind,
                             sent=bool(issued or changes))
        if issued:
            await self.send_token_mail("signup", email, *issued, redirect_to)
        if pending is not None:
            await self.send_email_change(changes, pending.email, pending.new_email, redirect_to)
        return _empty()

    async def invite(self, body: dict[str, Any], params: dict[str, str]) -> Answer:
        """`POST /invite` (admins, service key): a new unconfirmed account and the invitation mail."""
        api = self.api
        if not unrestricted(api.caller):
            raise AuthFailed("not_admin", 403, "only the tenant's admins and its service key invite users")
        email = self.email_of(body)
        redirect_to = await self.redirect_for(params.get("redirect_to") or body.get("redirect_to"))
        data, free = api.metadata_values(body.get("data"))
        api.check_metadata({"email": email, **data}, partial=False)
        await api.throttle.mail(self.tenant_id, email, api.ip)
        async with api.db.begin() as conn:
            row = await self.insert_user(conn, email, data, free)
            issued = await self.issue(conn, str(row.id), "invite", email, redirect_to=redirect_to)
            await audit.record(conn, "auth.user_invited", tenant_id=self.tenant_id, entity=USERS, record_id=str(row.id),
                               ip=api.ip, actor=api.caller.member_id, data={"email": email})
        await self.send_token_mail("invite", email, *issued, redirect_to, role="authenticated",
                                   invited_by=(await self.tenant()).name,
                                   expires_at=(datetime.now(UTC) + TOKEN_LIFETIME).isoformat())
        return _answer(200, {**api.user_json(row), "invited_at": datetime.now(UTC).isoformat()})

    async def request_email_change(self, conn: Any, row: Any, new_email: str, redirect_to: str) -> list[MailedToken]:
        """In `update_user`'s transaction (as the platform): the tokens confirming the change of `row`'s
        address to `new_email`, for `send_email_change` once committed; refused when another account has
        that address. The current address's mails are throttled too when it gets one."""
        api = self.api
        await api.as_tenant(conn)
        taken = await conn.scalar(sa.select(api.users.c.id).where(api.users.c.email == new_email,
                                                                  api.users.c.id != row.id))
        await api.as_platform(conn)
        if taken is not None:
            raise AuthFailed("email_exists", 422, "A user with this email address has already been registered",
                             details=[Problem("email", "is taken")])
        mails = await self.issue_email_change(conn, str(row.id), row.email, new_email, redirect_to)
        if len(mails) > 1:
            await api.throttle.mail(self.tenant_id, row.email, api.ip)
        await self.audit(conn, "auth.email_change_requested", str(row.id), email=row.email,
                         secure=len(mails) > 1)
        return mails

    async def issue_email_change(self, conn: Any, user_id: str, email: str, new_email: str,
                                 redirect_to: str) -> list[MailedToken]:
        """The tokens of an email change from `email` to `new_email`, replacing any pending one: one mailed to
        the new address, and with the tenant's `secure_email_change` (GoTrue's default) one to the current
        address too, both needed before the address changes (`_verify`)."""
        kinds = ["email_change"] + (["email_change_current"] if (await self.tenant()).secure_email_change else [])
        mails = []
        for n, kind in enumerate(kinds):
            token, code = await self.issue(conn, user_id, kind, email, new_email=new_email, redirect_to=redirect_to,
                                           replacing=EMAIL_CHANGE_KINDS if n == 0 else ())
            mails.append(MailedToken(kind, mailed_to(kind, email, new_email), token, code))
        return mails

    async def send_email_change(self, mails: list[MailedToken], email: str, new_email: str, redirect_to: str) -> None:
        """The email change's mails (after the commit): GoTrue's `email_change` template to each address."""
        for mail in mails:
            await self.send_token_mail(mail.kind, mail.to, mail.token, mail.code, redirect_to, email=email,
                                       new_email=new_email)

    # -- verification --

    def verify_params(self, body: dict[str, Any]) -> tuple[tuple[str, ...], str, dict[str, str]]:
        kind = body.get("type")
        if not isinstance(kind, str) or kind not in KINDS_OF_TYPE:  # a list or an object is not hashable
            raise AuthFailed("validation_failed", 400, f"unsupported verification type {kind!r}",
                             details=[Problem("type", f"must be one of {', '.join(KINDS_OF_TYPE)}")])
        token, token_hash = body.get("token"), body.get("token_hash")
        if bool(token) == bool(token_hash):
            raise AuthFailed("validation_failed", 400, "Verify requires either a token or a token hash",
                             details=[Problem("token", "give token (the code, with email) or token_hash (the link's)")])
        if token_hash:
            if not isinstance(token_hash, str):
                raise ValidationFailed("token_hash must be a string", details=[Problem("token_hash", "is not a string")])
            return KINDS_OF_TYPE[kind], kind, {"token": token_hash}
        if not isinstance(token, str):
            raise ValidationFailed("token must be a string", details=[Problem("token", "is not a string")])
        return KINDS_OF_TYPE[kind], kind, {"email": self.email_of(body), "code": token}

    async def verify_post(self, body: dict[str, Any]) -> Answer:
        kinds, kind, found_by = self.verify_params(body)
        verified = await self.verify(kinds, kind, found_by)
        if verified is None:  # GoTrue's answer, word for word (its code is a string there)
            return _answer(200, {"msg": SINGLE_CONFIRMATION, "code": "200"})
        return _answer(200, self.api.session_json(*verified))

    async def verify_get(self, params: dict[str, str]) -> Answer:
        kind, token = params.get("type", ""), params.get("token", "")
        redirect_to = await self.redirect_for(params.get("redirect_to"), mailing=False)  # disallowed: 400, no redirect
        try:
            if kind not in KINDS_OF_TYPE or not token:
                raise AuthFailed("validation_failed", 400, "Verify requires a verification type and a token")
            verified = await self.verify(KINDS_OF_TYPE[kind], kind, {"token": token})
        except AuthFailed as error:
            fragment = {"error": "access_denied" if error.status == 403 else "invalid_request",
                        "error_code": error.code, "error_description": error.message, "sb": ""}
            return Answer(303, [("Location", f"{redirect_to}#{urlencode(fragment)}")], b"")
        if verified is None:  # one of an email change's two links: GoTrue's message, no session
            return Answer(303, [("Location", f"{redirect_to}#{urlencode({'message': SINGLE_CONFIRMATION, 'sb': ''})}")], b"")
        row, session = verified
        answer = self.api.session_json(row, session)
        fragment = {"access_token": answer["access_token"], "expires_at": answer["expires_at"],
                    "expires_in": answer["expires_in"], "refresh_token": answer["refresh_token"],
                    "token_type": "bearer", "type": kind, "sb": ""}
        return Answer(303, [("Location", f"{redirect_to}#{urlencode(fragment)}")], b"")

    async def verify(self, kinds: tuple[str, ...], kind: str, found_by: dict[str, str]
                     ) -> tuple[Any, sessions.Session] | None:
        """Use the token and apply what it proves (the address is the user's; for email_change, the new one
        replaces the old once each of the change's tokens is used), then start a session; None when it was
        the first of a secure email change's two (no session: the other address has yet to confirm). A
        refusal is audited and counted as a failed sign-in when it was a code."""
        if "code" not in found_by:
            return await self._verify(kinds, kind, found_by)
        async with self.api.throttle.attempt(self.tenant_id, found_by["email"], self.api.ip):  # parallel guesses too
            return await self._verify(kinds, kind, found_by)

    async def _verify(self, kinds: tuple[str, ...], kind: str, found_by: dict[str, str]
                      ) -> tuple[Any, sessions.Session] | None:
        api = self.api
        by_code = "code" in found_by
        tokens = catalog.platform_tables()["one_time_tokens"]
        try:
            async with api.db.begin() as conn:
                token = await self.consume(conn, kinds, **found_by)
                # the change's other token, not yet used (consume locked both): the address waits for it
                waiting = token.kind in EMAIL_CHANGE_KINDS and await conn.scalar(sa.select(sa.func.count()).where(
                    tokens.c.tenant_id == self.tenant_id, tokens.c.user_id == token.user_id,
                    tokens.c.kind.in_(EMAIL_CHANGE_KINDS), tokens.c.id != token.id,
                    tokens.c.new_email == token.new_email, tokens.c.used_at.is_(None))) > 0
                await api.as_tenant(conn)
                before = (await conn.execute(sa.select(api.users.c.email, api.users.c.verified).where(
                    api.users.c.id == token.user_id, api.users.c.password_hash.isnot(None)).with_for_update())).first()
                if before is None:  # an erased account (no password at all) stays disabled
                    raise AuthFailed("user_not_found", 404, "the token's user no longer exists or is disabled")
                if before.email != token.email:  # mailed to an address the account no longer has
                    raise AuthFailed("otp_expired", 403, f"{INVALID}: the account's email address has changed since")
                if waiting:
                    await api.as_platform(conn)
                    await self.audit(conn, "auth.verified", str(token.user_id), type=kind, kind=token.kind,
                                     awaiting="the other address's confirmation")
                    return None
                changes: dict[str, Any] = {"verified": True}
                if token.kind in EMAIL_CHANGE_KINDS:
                    changes["email"] = token.new_email
                claimed = not before.verified and token.kind in CLAIMING_KINDS
                if claimed:  # whoever signed up with this address before its owner confirmed it loses its password
                    changes["password_hash"] = await hash_password(secrets.token_urlsafe(32))
                try:
                    async with conn.begin_nested():
                        row = (await conn.execute(api.users.update().where(api.users.c.id == token.user_id)
                                                  .values(**changes).returning(*api.user_columns()))).one()
                except IntegrityError as exc:
                    raise AuthFailed("email_exists", 422, "A user with this email address has already been registered",
                                     details=[Problem("email", "is taken")]) from exc
                await api.as_platform(conn)
                if claimed:
                    await sessions.revoke(conn, self.tenant_id, "address_confirmed", user_id=str(row.id))
                if token.kind in EMAIL_CHANGE_KINDS:  # what was mailed to the old address no longer holds
                    await self.forget_tokens(conn, str(row.id), except_id=token.id)
                session = await sessions.start_session(conn, self.tenant_id, str(row.id), ip=api.ip,
                                                       user_agent=audit.header(audit.REQUEST.get() or {}, b"user-agent"))
                # `address`: the address this mail proved is the user's (engine/gdpr.py ties rows by it)
                await self.audit(conn, "auth.verified", str(row.id), type=kind, kind=token.kind, session=session.id,
                                 address=row.email)
        except AuthFailed as error:
            if by_code:
                await api.throttle.failed(self.tenant_id, found_by["email"], api.ip)
            async with api.db.begin() as conn:
                await self.audit(conn, "auth.verify_failed", None, type=kind, reason=error.code,
                                 **({"email": found_by["email"]} if by_code else {}))
            raise
        return row, session


def _answer(status: int, payload: Any) -> Answer:
    from engine.identity.gotrue import _answer as answer  # gotrue dispatches here: imported when a route runs

    return answer(status, payload)


def _empty() -> Answer:
    return _answer(200, {})
