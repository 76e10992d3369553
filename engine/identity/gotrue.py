"""`/auth/v1` of a tenant, in the protocol of Supabase Auth (GoTrue), so Supabase's SDKs sign in unchanged.

Routes: `POST /signup`, `POST /token?grant_type=password|refresh_token`, `POST /logout?scope=global|local|
others`, `GET /user`, `PUT /user`, and for the tenant's admins `POST /admin/users/{id}/logout`; the mail flows
(`POST /recover`, `/otp`, `/verify`, `/resend`, `/invite`, `GET /verify`) are engine/identity/mailflows.py's. Users are
rows of the tenant's own `users` entity, read and written as the tenant's database role; sessions, refresh
tokens and audit events are the system tenant's, written in the same transaction. `user_metadata` is the
tenant's own extension fields of `users` (validated like any body), `app_metadata` carries the provider and
roles.

Sign-up confirms the address at once, as Supabase's "autoconfirm" does, unless the tenant's
`settings.auth.confirm_email` is true: then the account is stored unverified, gets the confirmation mail,
and cannot sign in with its password until it is confirmed. `email_confirmed_at` reports `verified` (the
sign-up time, or null while unconfirmed), so the two never disagree. A new email given to `PUT /user` is
mailed a confirmation, and so is the current one unless the tenant turns `secure_email_change` off; the new
address replaces the old once confirmed (from both).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from importlib.metadata import version
from typing import Any
from urllib.parse import parse_qsl

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql import visitors

from engine import audit, errors, onboarding
from engine.answer import Answer
from engine.authz import Caller, assignable_roles, unrestricted
from engine.authz.permissions import Permissions
from engine.database import Database, act_as_tenant
from engine.errors import AuthFailed, InvalidBody, Problem, ProcessingRestricted, Unauthorized, ValidationFailed
from engine.identity import privacy, sessions
from engine.identity.mailflows import MailFlows
from engine.identity.passwords import hash_password, password_problems, verify_password
from engine.identity.signing import ACCESS_TOKEN_SECONDS, AUDIENCE, Keyring
from engine.identity.throttle import LoginThrottle
from engine.query.sql import referenced
from engine.runtime import TenantRuntime
from engine.schema.model import OWNER_COLUMN, USERS
from engine.validation import READ_ONLY

BUILTIN_USER_COLUMNS = ("id", "email", "password_hash", "roles", "verified", "created_at", "updated_at")
FREE_METADATA = "user_metadata"  # the json column of user_metadata's keys beyond the schema's fields of users
MAX_FREE_METADATA = 16_384  # bytes of those keys, as JSON
JSON = [("Content-Type", "application/json"), ("X-Supabase-Api-Version", "2024-01-01")]
MAX_EMAIL_LENGTH = 320  # RFC 3696's limit, and the built-in users.email column's
VERSION = version("backsaas")
MAIL_ROUTES = frozenset({("POST", "recover"), ("POST", "otp"), ("POST", "verify"), ("GET", "verify"),
                         ("POST", "resend"), ("POST", "invite")})


def email_problem(email: Any) -> str | None:
    """Why `email` (stripped) is not an address, or None: bounded in length and checked in linear time (a
    regex here took 7.6 s on a 40 KB email, blocking every tenant). One `@`, no whitespace, and a dot inside the
    domain, as `^[^@\\s]+@[^@\\s]+\\.[^@\\s]+$` says."""
    if not isinstance(email, str):
        return "is not an email address"
    email = email.strip()
    if len(email) > MAX_EMAIL_LENGTH:
        return f"is longer than {MAX_EMAIL_LENGTH} characters"
    local, _, domain = email.partition("@")
    if not local or "@" in domain or len(email.split()) != 1 or "." not in domain[1:-1]:
        return "is not an email address"
    return None




def _answer(status: int, payload: Any = None) -> Answer:
    return Answer(status, JSON, b"" if payload is None else orjson.dumps(payload))


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


class AuthApi:
    """One tenant's identity endpoints; `caller` is what the gateway authenticated (a user's access
    token for /logout and /user)."""

    def __init__(self, runtime: TenantRuntime, db: Database, keyring: Keyring, throttle: LoginThrottle,
                 caller: Caller, client_ip: str | None) -> None:
        self.runtime, self.db, self.keyring, self.throttle = runtime, db, keyring, throttle
        self.caller, self.ip = caller, client_ip
        self.users = runtime.tables[USERS]
        entity = runtime.model.entity(USERS)
        assert entity is not None  # every schema has the built-in users entity
        self.entity = entity
        self.metadata_fields = tuple(f.column for f in entity.fields
                                     if not f.internal and f.column not in BUILTIN_USER_COLUMNS
                                     and f.column not in READ_ONLY)

    async def handle(self, method: str, path: str, query: bytes, headers: Mapping[str, str],
                     body: bytes) -> Answer:
        """Answer one request; the database's refusals leave as the catalogue's errors, as REST's do (a
        statement past the plan's timeout is a 504, an outage a 503)."""
        try:
            return await self.route(method, path, query, headers, body)
        except DBAPIError as exc:
            raise errors.database_error_of(exc) from exc

    async def route(self, method: str, path: str, query: bytes, headers: Mapping[str, str], body: bytes) -> Answer:
        params = dict(parse_qsl(query.decode("utf-8", "replace")))
        route = (method, path.strip("/"))
        if route == ("POST", "signup"):
            return await self.signup(self.json(body), headers, params)
        if route == ("GET", "health"):
            return _answer(200, {"name": "GoTrue", "version": VERSION,
                                 "description": "BackSaas's Supabase Auth (GoTrue) protocol"})
        if route == ("GET", "settings"):
            return _answer(200, await self.settings())
        if route == ("POST", "token"):
            grant = params.get("grant_type")
            if grant == "password":
                return await self.password_grant(self.json(body), headers)
            if grant == "refresh_token":
                return await self.refresh_grant(self.json(body))
            raise AuthFailed("unsupported_grant_type", 400, f"grant_type must be password or refresh_token, not {grant!r}")
        if route == ("POST", "logout"):
            return await self.logout(params.get("scope", "global"))
        if route == ("GET", "user"):
            return _answer(200, await self.current_user())
        if route == ("PUT", "user"):
            return _answer(200, await self.update_user(self.json(body), params))
        if route in MAIL_ROUTES:  # GoTrue's mail flows
            flows = MailFlows(self)
            if method == "GET":
                return await flows.verify_get(params)
            payload = self.json(body)
            return await (flows.verify_post(payload) if route[1] == "verify" else
                          getattr(flows, route[1])(payload, params))
        if method == "POST" and route[1].startswith("admin/users/") and route[1].endswith("/logout"):
            return await self.admin_logout(route[1].removeprefix("admin/users/").removesuffix("/logout"))
        if route[1].startswith("privacy/"):  # the user's own GDPR requests and consents
            return await privacy.handle(self, method, route[1].removeprefix("privacy/"), body)
        raise AuthFailed("not_found", 404, f"no auth route {method} /auth/v1/{path.strip('/')}")

    # -- plumbing --

    @staticmethod
    def json(body: bytes) -> dict[str, Any]:
        try:
            payload = orjson.loads(body or b"{}")
        except orjson.JSONDecodeError as exc:
            raise InvalidBody(f"the body is not valid JSON: {exc}") from exc
        if not isinstance(payload, dict):
            raise InvalidBody("expected a JSON object")
        return payload

    async def as_tenant(self, conn: AsyncConnection) -> None:
        """Each operation is one transaction (`db.begin()`); its statements on the tenant's tables run
        between `as_tenant` and `as_platform`, under the tenant's own database role and with the statement
        timeout of its plan and the request's actor for the audit, as every other request of the tenant does
        (engine.database.act_as_tenant: one round trip)."""
        await act_as_tenant(conn, self.runtime.role, self.db.statement_timeout_of(self.runtime.role))

    @staticmethod
    async def as_platform(conn: AsyncConnection) -> None:
        await conn.execute(sa.text("RESET ROLE"))

    def signed_in(self) -> Caller:
        if self.caller.user_id is None or self.caller.session_id is None:
            raise Unauthorized("no_authorization", "this endpoint needs a user's access token as the bearer")
        return self.caller

    def user_json(self, row: Any) -> dict[str, Any]:
        confirmed = _iso(row.created_at) if row.verified else None
        return {
            "id": str(row.id), "aud": AUDIENCE, "role": "authenticated", "email": row.email, "phone": "",
            "email_confirmed_at": confirmed, "confirmed_at": confirmed,
            "app_metadata": {"provider": "email", "providers": ["email"], "roles": list(row.roles or []),
                             "tenant": self.runtime.slug},
            "user_metadata": {**(row.user_metadata or {}), **{c: _plain(getattr(row, c)) for c in self.metadata_fields}},
            "identities": [], "is_anonymous": False, "verified": row.verified,
            "created_at": _iso(row.created_at), "updated_at": _iso(row.updated_at),
        }

    def user_columns(self) -> list[sa.ColumnElement[Any]]:
        return [self.users.c[c] for c in (*BUILTIN_USER_COLUMNS, FREE_METADATA, *self.metadata_fields)]

    def token_roles(self, row: Any) -> list[str]:
        known = assignable_roles(self.runtime.model)
        return ["authenticated", *(r for r in row.roles or () if r in known and r != "authenticated")]

    def session_json(self, row: Any, session: sessions.Session) -> dict[str, Any]:
        claims = {"sub": str(row.id), "tenant": self.runtime.tenant_id, "roles": self.token_roles(row),
                  "role": "authenticated", "email": row.email, "session_id": session.id}
        token, expires_at = self.keyring.issue(claims)
        return {"access_token": token, "token_type": "bearer", "expires_in": ACCESS_TOKEN_SECONDS,
                "expires_at": expires_at, "refresh_token": session.refresh_token, "user": self.user_json(row)}

    def metadata_values(self, data: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """`data` / user_metadata, any JSON object as GoTrue takes it: (the keys that are the tenant's own
        fields of users, typed and validated like a body; every other key, kept as it is in the
        `user_metadata` json column). The built-in columns (email, roles, ...) are never set this way."""
        if data is None:
            return {}, {}
        if not isinstance(data, dict):
            raise ValidationFailed("data must be an object", details=[Problem("data", "must be an object")])
        reserved = [k for k in data if k in BUILTIN_USER_COLUMNS or k in (FREE_METADATA, OWNER_COLUMN)]
        if reserved:
            raise ValidationFailed("reserved user metadata", details=[
                Problem(f"data.{k}", "cannot be set through user metadata") for k in reserved])
        free = {k: v for k, v in data.items() if k not in self.metadata_fields}
        if len(orjson.dumps(free)) > MAX_FREE_METADATA:
            raise ValidationFailed("user metadata too large", details=[
                Problem("data", f"the keys beyond the schema's fields take at most {MAX_FREE_METADATA} bytes")])
        return {k: v for k, v in data.items() if k in self.metadata_fields}, free

    def check_metadata(self, values: dict[str, Any], *, partial: bool) -> None:
        problems = self.runtime.body_validator(self.entity, partial=partial).problems(values)
        if problems:
            raise ValidationFailed(f"{len(problems)} invalid field(s)",
                                   details=[Problem(p.path if p.path == "email" else f"data.{p.path}", p.message)
                                            for p in problems])

    def credentials(self, body: dict[str, Any]) -> tuple[str, str]:
        email, password = body.get("email"), body.get("password")
        problem = email_problem(email)
        if problem:
            raise ValidationFailed("a valid email is required", details=[Problem("email", problem)])
        if not isinstance(password, str) or not password:
            raise ValidationFailed("a password is required", details=[Problem("password", "is required")])
        return email.strip().lower(), password

    # -- routes --

    async def settings(self) -> dict[str, Any]:
        """GoTrue's `GET /settings`, which SDKs and sign-in UIs read to show what they may offer: email and
        password only (no external provider, phone, SAML or anonymous sign-in), sign-up open, and
        confirmation by mail when the tenant's `settings.auth.confirm_email` says so."""
        providers = ("anonymous_users", "apple", "azure", "bitbucket", "discord", "facebook", "figma", "github",
                     "gitlab", "google", "keycloak", "kakao", "linkedin_oidc", "notion", "phone", "slack_oidc",
                     "spotify", "twitch", "twitter", "workos", "zoom")
        return {"external": {"email": True, **dict.fromkeys(providers, False)}, "disable_signup": False,
                "mailer_autoconfirm": not (await MailFlows(self).tenant()).confirm_email,
                "phone_autoconfirm": False, "sms_provider": "", "saml_enabled": False}

    async def signup(self, body: dict[str, Any], headers: Mapping[str, str], params: Mapping[str, str]) -> Answer:
        if not body.get("email") and not body.get("phone") and not body.get("password"):
            # supabase-js's signInAnonymously(): GoTrue's answer when anonymous sign-ins are off
            raise AuthFailed("anonymous_provider_disabled", 422, "Anonymous sign-ins are disabled")
        email, password = self.credentials(body)
        problems = password_problems(email, password)
        if problems:
            raise AuthFailed("weak_password", 422, "the password is too weak", details=problems)
        data, free = self.metadata_values(body.get("data"))
        self.check_metadata({"email": email, **data}, partial=False)
        hashed = await hash_password(password)
        flows = MailFlows(self)
        if (await flows.tenant()).confirm_email:  # the address is confirmed by mail before any session
            return await flows.signup_unconfirmed(email, hashed, data, free, dict(params))
        async with self.db.begin() as conn:
            row = await self.insert_user(conn, email, hashed, verified=True, data=data, free=free)
            session = await sessions.start_session(conn, self.runtime.tenant_id, str(row.id), ip=self.ip,
                                                   user_agent=headers.get("user-agent"))
            await audit.record(conn, "auth.signup", tenant_id=self.runtime.tenant_id, entity=USERS,
                               record_id=str(row.id), ip=self.ip, data={"email": email})
            await onboarding.mark(conn, "first_user", tenant_id=self.runtime.tenant_id)
        return _answer(200, self.session_json(row, session))

    def referenced(self, values: Mapping[str, Any], caller: Caller) -> dict[str, Any]:
        """`values` of a users row an auth endpoint writes, each ref among them (a field the tenant added to
        `users`) held to name a row `caller` may read, as every write path's are (Permissions.references,
        sql.referenced), the caller's id bound in."""
        params: dict[str, Any] = {}

        def caller_param() -> int:
            params[f"v{len(params)}"] = None if caller.user_id is None else str(caller.user_id)
            return len(params) - 1

        def bound(parameter: sa.BindParameter[Any]) -> None:  # what `params()` did, which DML does not take
            if parameter.key in params:
                parameter.value, parameter.required = params[parameter.key], False

        permissions = Permissions(self.runtime.authorizer, caller, self.runtime.columns)
        references = permissions.references(USERS, self.runtime.relations[USERS],
                                            [k for k, v in values.items() if v is not None], caller_param)
        guarded = dict(values)
        for reference in references:
            value = sa.cast(sa.literal(str(values[reference.column])), sa.Uuid())
            guarded[reference.column] = visitors.cloned_traverse(
                referenced(value, reference, self.runtime.tables), {}, {"bindparam": bound})
        return guarded

    async def insert_user(self, conn: AsyncConnection, email: str, password_hash: str, *, verified: bool,
                          data: Mapping[str, Any], free: Mapping[str, Any]) -> Any:
        """A new account of the tenant (every sign-up path: password, unconfirmed, OTP, invitation), inserted
        as the tenant's role in a savepoint; its address taken is 422 `user_already_exists`. The connection
        acts as the platform again afterwards."""
        await self.as_tenant(conn)
        try:
            async with conn.begin_nested():
                row = (await conn.execute(self.users.insert().values(
                    email=email, password_hash=password_hash, verified=verified, user_metadata=dict(free),
                    **self.referenced(data, self.caller)).returning(*self.user_columns()))).one()
        except IntegrityError as exc:
            if _unique_violation(exc):
                raise AuthFailed("user_already_exists", 422, "User already registered",
                                 details=[Problem("email", "is taken")]) from exc
            raise
        await self.as_platform(conn)
        return row

    async def password_grant(self, body: dict[str, Any], headers: Mapping[str, str]) -> Answer:
        email, password = self.credentials(body)
        async with self.throttle.attempt(self.runtime.tenant_id, email, self.ip):  # concurrent guesses bounded too
            async with self.db.begin() as conn:
                await self.as_tenant(conn)
                row = (await conn.execute(sa.select(*self.user_columns()).where(self.users.c.email == email))).first()
            if not await verify_password(row.password_hash if row else None, password):
                await self.throttle.failed(self.runtime.tenant_id, email, self.ip)
                async with self.db.begin() as conn:
                    await audit.record(conn, "auth.login_failed", tenant_id=self.runtime.tenant_id, ip=self.ip,
                                       data={"email": email, "known_account": row is not None})
                raise AuthFailed("invalid_credentials", 400, "Invalid login credentials")
        if not row.verified and (await MailFlows(self).tenant()).confirm_email:
            raise AuthFailed("email_not_confirmed", 400, "Email not confirmed")
        async with self.db.begin() as conn:
            session = await sessions.start_session(conn, self.runtime.tenant_id, str(row.id), ip=self.ip,
                                                   user_agent=headers.get("user-agent"))
            await audit.record(conn, "auth.login", tenant_id=self.runtime.tenant_id, entity=USERS,
                               record_id=str(row.id), ip=self.ip, data={"session": session.id})
        return _answer(200, self.session_json(row, session))

    async def refresh_grant(self, body: dict[str, Any]) -> Answer:
        token = body.get("refresh_token")
        if not isinstance(token, str) or not token:
            raise ValidationFailed("refresh_token is required", details=[Problem("refresh_token", "is required")])
        async with self.db.begin() as conn:
            rotated = await sessions.rotate(conn, self.runtime.tenant_id, token)
            if isinstance(rotated, sessions.Reused):
                await audit.record(conn, "auth.refresh_token_reused", tenant_id=self.runtime.tenant_id, ip=self.ip,
                                   entity=USERS, record_id=rotated.user_id, data={"session": rotated.session_id})
            else:
                await self.as_tenant(conn)
                row = (await conn.execute(sa.select(*self.user_columns())
                                          .where(self.users.c.id == rotated.user_id))).first()
                if row is None:
                    raise AuthFailed("user_not_found", 400, "the session's user no longer exists")
        if isinstance(rotated, sessions.Reused):  # the revocation is committed; now refuse
            raise AuthFailed("refresh_token_already_used", 400,
                             "Invalid Refresh Token: Already Used (the session has been revoked)")
        return _answer(200, self.session_json(row, rotated))

    async def logout(self, scope: str) -> Answer:
        caller = self.signed_in()
        if scope not in ("global", "local", "others"):
            raise AuthFailed("validation_failed", 400, "scope must be global, local or others")
        async with self.db.begin() as conn:
            await sessions.revoke(conn, self.runtime.tenant_id, "logout", user_id=caller.user_id,
                                  session_id=caller.session_id if scope == "local" else None,
                                  keep_session=caller.session_id if scope == "others" else None)
            await audit.record(conn, "auth.logout", tenant_id=self.runtime.tenant_id, entity=USERS,
                               record_id=caller.user_id, ip=self.ip, data={"scope": scope})
        return _answer(204)

    async def admin_logout(self, user_id: str) -> Answer:
        """`POST /admin/users/{id}/logout`: end every session of one of the tenant's users, for the tenant's
        admins and its service key (GoTrue's admin routes are the service role's); their streams end too."""
        if not unrestricted(self.caller):
            raise AuthFailed("not_admin", 403, "only the tenant's admins may end another user's sessions")
        if not _is_uuid(user_id):
            raise AuthFailed("validation_failed", 400, f"'{user_id}' is not a user id")
        async with self.db.begin() as conn:
            await self.as_tenant(conn)
            if await conn.scalar(sa.select(self.users.c.id).where(self.users.c.id == user_id)) is None:
                raise AuthFailed("user_not_found", 404, f"no user {user_id}")
            await self.as_platform(conn)
            await sessions.revoke(conn, self.runtime.tenant_id, "admin_logout", user_id=user_id)
            await audit.record(conn, "auth.sessions_revoked", tenant_id=self.runtime.tenant_id, entity=USERS,
                               record_id=user_id, ip=self.ip, actor=self.caller.member_id)
        return _answer(204)

    async def live_user(self, conn: AsyncConnection, caller: Caller) -> Any:
        """The signed-in user's row, if their session is still live (a token of an ended session is refused)."""
        if not _is_uuid(caller.session_id) or not await sessions.is_live(conn, self.runtime.tenant_id,
                                                                         str(caller.session_id)):
            raise AuthFailed("session_not_found", 403, "Session from session_id claim in JWT does not exist")
        await self.as_tenant(conn)
        row = (await conn.execute(sa.select(*self.user_columns()).where(self.users.c.id == caller.user_id))).first()
        if row is None:
            raise AuthFailed("user_not_found", 404, "User from sub claim in JWT does not exist")
        return row

    async def current_user(self) -> dict[str, Any]:
        caller = self.signed_in()
        async with self.db.begin() as conn:
            return self.user_json(await self.live_user(conn, caller))

    async def update_user(self, body: dict[str, Any], params: Mapping[str, str]) -> dict[str, Any]:
        caller = self.signed_in()
        if caller.restricted:  # GDPR restriction (engine/gdpr.py): their data is read-only, the account too
            raise ProcessingRestricted("the processing of this user's data is restricted: it is read-only")
        typed, free = self.metadata_values(body.get("data"))
        changes: dict[str, Any] = dict(typed)
        if "email" in body:
            email = body["email"]
            problem = email_problem(email)
            if problem:
                raise ValidationFailed("not an email address", details=[Problem("email", problem)])
            changes["email"] = email.strip().lower()
        self.check_metadata(changes, partial=True)
        new_email = changes.pop("email", None)  # replaces the address once confirmed from it (mailflows)
        flows = MailFlows(self)
        redirect_to = await flows.redirect_for(params.get("redirect_to")) if new_email else ""
        issued = None
        if "password" in body:
            async with self.db.begin() as conn:
                current = await self.live_user(conn, caller)
            problems = password_problems(new_email or current.email, body["password"])
            if problems:
                raise AuthFailed("weak_password", 422, "the password is too weak", details=problems)
            changes["password_hash"] = await hash_password(body["password"])
        try:
            async with self.db.begin() as conn:
                row = await self.live_user(conn, caller)
                if free:  # merged into what is kept, as GoTrue does; a null value removes its key
                    kept = sa.func.coalesce(self.users.c[FREE_METADATA], sa.cast(sa.literal("{}"), JSONB))
                    gone = [k for k, v in free.items() if v is None]
                    changes[FREE_METADATA] = kept.op("||")(sa.cast(sa.literal(orjson.dumps(free).decode()), JSONB)) \
                        .op("-")(sa.cast(sa.literal(gone, ARRAY(sa.Text())), ARRAY(sa.Text())))
                if changes:
                    row = (await conn.execute(self.users.update().where(self.users.c.id == caller.user_id)
                                              .values(**self.referenced(changes, caller))
                                              .returning(*self.user_columns()))).one()
                await self.as_platform(conn)
                if "password_hash" in changes:  # a link mailed before the change must not undo it
                    await flows.forget_tokens(conn, str(caller.user_id), ("recovery", "magiclink"))
                if new_email is not None and new_email != row.email:
                    await self.throttle.mail(self.runtime.tenant_id, new_email, self.ip)  # a mail to any address
                    issued = await flows.request_email_change(conn, row, new_email, redirect_to)
                if changes or issued is None:
                    await audit.record(conn, "auth.user_updated", tenant_id=self.runtime.tenant_id, entity=USERS,
                                       record_id=caller.user_id, ip=self.ip,
                                       data={"fields": sorted(k if k != "password_hash" else "password" for k in changes)})
        except IntegrityError as exc:
            if _unique_violation(exc):
                raise AuthFailed("email_exists", 422, "A user with this email address has already been registered",
                                 details=[Problem("email", "is taken")]) from exc
            raise
        if issued is None:
            return self.user_json(row)
        await flows.send_email_change(issued, row.email, str(new_email), redirect_to)
        return {**self.user_json(row), "new_email": new_email, "email_change_sent_at": datetime.now(UTC).isoformat()}


def _unique_violation(exc: IntegrityError) -> bool:
    return getattr(exc.orig, "sqlstate", None) == "23505"


def _is_uuid(value: str | None) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return True


def _plain(value: Any) -> Any:
    """A column value as JSON can carry it (dates and decimals as text)."""
    if isinstance(value, (str, int, float, bool, list, dict)) or value is None:
        return value
    return str(value)
