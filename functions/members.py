"""A tenant's members and invitations, as the system tenant's functions (and the CLI's).

Invitations go by email with a role: the `invitation` mail (the tenant's template and branding name) carries
the console's accept link, `{public URL}/admin/accept?token=...`, and leaves once the invitation is committed;
the token is also shown once to the inviter (the CLI prints it), stored as its SHA-256 hash, valid 7 days,
usable once. The public URL is `BACKSAAS_PUBLIC_URL`, else the origin the inviting request came to; an
invitation made outside a request (the CLI) without it is logged as not mailed, and with it is sent before
the command returns (one attempt: the process ends). Accepting links the signed-in platform account with
that email, or creates the account (the token proves the address). Owners and admins manage members; only
an owner makes or unmakes owners, and no one removes or demotes a tenant's last owner. Every change is
audited.
Who acts is an explicit `Actor` (functions/access.py): each platform function asks `authorize` for it,
the CLI passes `SYSTEM`; a caller without a user id is never an owner.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import sqlalchemy as sa
import structlog
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection

from engine import audit, catalog, mailer, quotas
from engine.database import Database
from engine.errors import BackSaasError, Forbidden, InvalidInput, Problem
from engine.hooks import HookContext, platform_function
from engine.identity.passwords import hash_password, password_problems
from functions.access import MANAGERS, MEMBERS, Actor, authorize, in_platform
from functions.access import SYSTEM as SYSTEM  # the server's own actor, for the CLI: `actor=members.SYSTEM`

INVITATION_TTL = timedelta(days=7)
ROLES = ("owner", "admin", "developer", "viewer")
log = structlog.get_logger("backsaas.mail")


class InvitationGone(BackSaasError):
    code = "invitation_invalid"
    status = 410


class MemberConflict(BackSaasError):
    code = "member_conflict"
    status = 409


class LastOwner(BackSaasError):
    code = "last_owner"
    status = 409


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def tables() -> tuple[sa.Table, sa.Table, sa.Table, sa.Table]:
    t = catalog.platform_tables()
    return t["tenants"], t["memberships"], t["invitations"], t["users"]


async def _acting_role(conn: AsyncConnection, slug: str, tenant_id: str, actor: Actor) -> str:
    """The actor's say in the tenant: `owner` for the platform-wide actors (platform admins, the server),
    else their membership role as it stands in this transaction (none without a user id)."""
    actor.check_tenant(slug)
    if actor.platform_wide:
        return "owner"
    if actor.user_id is None:
        return ""
    _, memberships, _, _users = tables()
    role = await conn.scalar(sa.select(memberships.c.role).where(memberships.c.tenant_id == tenant_id,
                                                                  memberships.c.user_id == actor.user_id))
    return role or ""


def _may_touch(acting: str, *roles: str) -> None:
    if "owner" in roles and acting != "owner":
        raise Forbidden("only an owner makes, unmakes or removes owners")


async def _member(conn: AsyncConnection, tenant_id: str, email: str) -> Any:
    _, memberships, _, users = tables()
    found = (await conn.execute(sa.select(memberships.c.id, memberships.c.role, users.c.id.label("user_id"))
                                .join(users, users.c.id == memberships.c.user_id)
                                .where(memberships.c.tenant_id == tenant_id, users.c.email == email.strip().lower())
                                .with_for_update(of=memberships))).first()
    if found is None:
        raise InvalidInput(f"{email} is not a member", details=[Problem("email", "is not a member of this tenant")])
    return found


async def _keep_an_owner(conn: AsyncConnection, tenant_id: str, member: Any) -> None:
    _, memberships, _, _ = tables()
    if member.role != "owner":
        return
    owners = (await conn.execute(sa.select(memberships.c.id).where(memberships.c.tenant_id == tenant_id,
                                                                    memberships.c.role == "owner")
                                 .with_for_update())).all()
    if len(owners) <= 1:
        raise LastOwner("a tenant keeps at least one owner: make another owner first")


async def invite(db: Database, slug: str, email: str, role: str, *, actor: Actor) -> dict[str, Any]:
    """A new invitation; its token is in the answer, and nowhere else, ever."""
    email = email.strip().lower()
    _tenants, memberships, invitations, users = tables()
    token = secrets.token_urlsafe(32)
    async with db.begin() as conn:
        tenant_id = await catalog.active_tenant_id(conn, slug)
        _may_touch(await _acting_role(conn, slug, tenant_id, actor), role)
        already = await conn.scalar(sa.select(memberships.c.id).join(users, users.c.id == memberships.c.user_id)
                                    .where(memberships.c.tenant_id == tenant_id, users.c.email == email))
        if already is not None:
            raise MemberConflict(f"{email} is already a member of '{slug}'")
        await quotas.check_members(conn, tenant_id)  # members and open invitations within the plan's `members`
        row = (await conn.execute(invitations.insert().values(
            tenant_id=tenant_id, email=email, role=role, token_hash=token_hash(token), invited_by_id=actor.user_id,
            expires_at=datetime.now(UTC) + INVITATION_TTL).returning(invitations.c.id, invitations.c.expires_at))).one()
        await audit.record(conn, "member.invited", tenant_id=tenant_id, actor=actor.user_id, entity="invitations",
                           record_id=str(row.id), data={"email": email, "role": role})
    await mail_invitation(db, tenant_id, slug, email, role, token, row.expires_at, actor)
    return {"id": str(row.id), "tenant": slug, "email": email, "role": role, "token": token,
            "expires_at": row.expires_at.isoformat()}


def public_origin() -> str | None:
    """Where the console is reached: `BACKSAAS_PUBLIC_URL`, else, only when mails go to the log (development),
    the origin of the request being served: its Host header is the client's to choose, and a link built from it
    in a real mail would carry the invitation's token to whoever chose it."""
    public = os.environ.get(mailer.PUBLIC_URL_VARIABLE, "").strip().rstrip("/")
    if public:
        return public
    if os.environ.get(mailer.SMTP_URL_VARIABLE, "").strip():
        return None
    scope = audit.REQUEST.get()
    host = audit.header(scope, b"host") if scope else None
    return f"{scope.get('scheme', 'http')}://{host}" if scope and host else None


async def mail_invitation(db: Database, tenant_id: str, slug: str, email: str, role: str, token: str,
                          expires_at: datetime, actor: Actor) -> None:
    """Queue the invitation mail (after the invitation's commit), in the tenant's template and name."""
    from functions.branding import render_mail, sender_name

    tenants, _, _, users = tables()
    async with db.engine.connect() as conn:
        tenant = (await conn.execute(sa.select(tenants.c.name, tenants.c.settings).where(tenants.c.id == tenant_id))).one()
        inviter = await conn.scalar(sa.select(users.c.email).where(users.c.id == actor.user_id)) if actor.user_id else None
    origin = public_origin()
    if origin is None:
        log.warning("mail.not_sent", to=email, kind="invitation", tenant=slug,
                    reason=f"no public URL for the accept link: set {mailer.PUBLIC_URL_VARIABLE}")
        return
    name = sender_name(tenant.name, tenant.settings or {})
    mail = render_mail(tenant.settings or {}, "invitation", {
        "tenant_name": name, "email": email, "role": role, "accept_url": f"{origin}/admin/accept?{urlencode({'token': token})}",
        "invited_by": inviter or name, "expires_at": expires_at.isoformat()})
    mailer.send(mailer.Mail(email, str(mail["subject"]), str(mail["text"]), tenant=slug, kind="invitation",
                            sender_name=name, html=mail["html"]))
    if audit.REQUEST.get() is None:  # the CLI: its process ends with this command, so the mail is tried now
        await mailer.current().drain(mailer.current().settings.timeout + 1)


async def accept(db: Database, token: str, *, user_id: str | None = None, password: str | None = None
                 ) -> dict[str, Any]:
    """Join the invitation's tenant with its role: as the signed-in account (whose email must be the
    invited one) or, signed out, as a new account with `password`."""
    tenants, memberships, invitations, users = tables()
    async with db.begin() as conn:
        invitation = (await conn.execute(sa.select(invitations).where(invitations.c.token_hash == token_hash(token))
                                         .with_for_update())).first()
        if invitation is None or invitation.accepted_at or invitation.revoked_at:
            raise InvitationGone("this invitation does not exist, was used or was revoked")
        if invitation.expires_at < datetime.now(UTC):
            raise InvitationGone("this invitation has expired: ask for a new one")
        if user_id is not None:
            email = await conn.scalar(sa.select(users.c.email).where(users.c.id == user_id))
            if email != invitation.email:
                raise Forbidden(f"this invitation is for {invitation.email}: sign in with that account")
        else:
            if await conn.scalar(sa.select(users.c.id).where(users.c.email == invitation.email)) is not None:
                raise MemberConflict(f"an account for {invitation.email} exists: sign in, then accept")
            problems = password_problems(invitation.email, password)
            if problems:
                raise InvalidInput("choose a password for the new account", details=problems)
            user_id = str(await conn.scalar(users.insert().values(
                email=invitation.email, password_hash=await hash_password(str(password)), verified=True)
                .returning(users.c.id)))
        await conn.execute(postgresql.insert(memberships).values(user_id=user_id, tenant_id=invitation.tenant_id,
                                                                 role=invitation.role)
                           .on_conflict_do_update(index_elements=["user_id", "tenant_id"],
                                                  set_={"role": invitation.role}))
        await conn.execute(invitations.update().where(invitations.c.id == invitation.id)
                           .values(accepted_at=sa.func.now()))
        slug = await conn.scalar(sa.select(tenants.c.slug).where(tenants.c.id == invitation.tenant_id))
        await audit.record(conn, "member.joined", tenant_id=str(invitation.tenant_id), actor=user_id,
                           entity="memberships", data={"email": invitation.email, "role": invitation.role})
    return {"tenant": slug, "role": invitation.role, "user_id": str(user_id), "email": invitation.email}


async def revoke_invitation(db: Database, slug: str, invitation_id: str, *, actor: Actor) -> None:
    _, _, invitations, _ = tables()
    actor.check_tenant(slug)
    async with db.begin() as conn:
        tenant_id = await catalog.active_tenant_id(conn, slug)
        done = await conn.execute(invitations.update().where(
            invitations.c.id == invitation_id, invitations.c.tenant_id == tenant_id,
            invitations.c.accepted_at.is_(None), invitations.c.revoked_at.is_(None)).values(revoked_at=sa.func.now()))
        if done.rowcount == 0:
            raise InvitationGone(f"'{slug}' has no open invitation {invitation_id}")
        await audit.record(conn, "member.invitation_revoked", tenant_id=tenant_id, actor=actor.user_id,
                           entity="invitations", record_id=invitation_id)


async def change_role(db: Database, slug: str, email: str, role: str, *, actor: Actor) -> dict[str, Any]:
    _, memberships, _, _ = tables()
    async with db.begin() as conn:
        tenant_id = await catalog.active_tenant_id(conn, slug)
        member = await _member(conn, tenant_id, email)
        _may_touch(await _acting_role(conn, slug, tenant_id, actor), role, member.role)
        if role != "owner":
            await _keep_an_owner(conn, tenant_id, member)
        await conn.execute(memberships.update().where(memberships.c.id == member.id).values(role=role))
        await audit.record(conn, "member.role_changed", tenant_id=tenant_id, actor=actor.user_id, entity="memberships",
                           record_id=str(member.id), data={"email": email, "from": member.role, "to": role})
    return {"tenant": slug, "email": email, "role": role}


async def remove(db: Database, slug: str, email: str, *, actor: Actor) -> None:
    _, memberships, _, _ = tables()
    async with db.begin() as conn:
        tenant_id = await catalog.active_tenant_id(conn, slug)
        member = await _member(conn, tenant_id, email)
        acting = await _acting_role(conn, slug, tenant_id, actor)
        if actor.user_id is None or str(member.user_id) != actor.user_id:  # leaving is one's own call
            _may_touch(acting, member.role)
        await _keep_an_owner(conn, tenant_id, member)
        await conn.execute(memberships.delete().where(memberships.c.id == member.id))
        await audit.record(conn, "member.removed", tenant_id=tenant_id, actor=actor.user_id, entity="memberships",
                           record_id=str(member.id), data={"email": email, "role": member.role})


async def list_members(db: Database, slug: str) -> list[dict[str, Any]]:
    _, memberships, _, users = tables()
    async with db.begin() as conn:
        tenant_id = await catalog.active_tenant_id(conn, slug)
        rows = await conn.execute(sa.select(users.c.email, memberships.c.role, memberships.c.created_at)
                                  .join(users, users.c.id == memberships.c.user_id)
                                  .where(memberships.c.tenant_id == tenant_id).order_by(users.c.email))
        return [{"email": r.email, "role": r.role, "since": r.created_at.isoformat()} for r in rows]


# -- as the system tenant's functions (who may call which: platform.yaml, and each one's `authorize`) --


@platform_function
async def invite_member(ctx: HookContext, payload: dict[str, Any]) -> dict[str, Any]:
    actor = await authorize(ctx, payload["tenant"], MANAGERS)
    return await invite(ctx.data.db, payload["tenant"], payload["email"], payload.get("role", "developer"), actor=actor)


@platform_function
async def accept_invitation(ctx: HookContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Open to anyone at the platform's route: the invitation's token is the authority (and a signed-in
    account must be the invited email's)."""
    in_platform(ctx)
    return await accept(ctx.data.db, payload["token"], user_id=ctx.caller.user_id, password=payload.get("password"))


@platform_function
async def cancel_invitation(ctx: HookContext, payload: dict[str, Any]) -> None:
    actor = await authorize(ctx, payload["tenant"], MANAGERS)
    await revoke_invitation(ctx.data.db, payload["tenant"], payload["invitation"], actor=actor)


@platform_function
async def change_member_role(ctx: HookContext, payload: dict[str, Any]) -> dict[str, Any]:
    actor = await authorize(ctx, payload["tenant"], MANAGERS)
    return await change_role(ctx.data.db, payload["tenant"], payload["email"], payload["role"], actor=actor)


@platform_function
async def remove_member(ctx: HookContext, payload: dict[str, Any]) -> None:
    actor = await authorize(ctx, payload["tenant"], MANAGERS)
    await remove(ctx.data.db, payload["tenant"], payload["email"], actor=actor)


@platform_function
async def members(ctx: HookContext, payload: dict[str, Any]) -> list[dict[str, Any]]:
    await authorize(ctx, payload["tenant"], MEMBERS)
    return await list_members(ctx.data.db, payload["tenant"])
