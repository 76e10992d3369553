"""Sessions and their rotating refresh tokens, kept in the system tenant (`auth_sessions`, `refresh_tokens`).

A refresh token is 192 random bits, stored as its SHA-256. Using one marks it used and issues its
successor in the same session; presenting a used one again means it leaked (or a client raced itself),
so the whole session — the token family — is revoked. Tokens are looked up within the tenant that
presents them: another tenant's token is simply not found there.

Revoking sessions NOTIFYs `SESSIONS_CHANNEL` in the revoking transaction (so at its commit), with each
revoked session's id, or the tenant's id when all its sessions end: every process closes the streams
opened with those sessions' access tokens at once.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from engine import catalog
from engine.channels import SESSIONS_CHANNEL
from engine.errors import AuthFailed


@dataclass(frozen=True)
class Session:
    id: str
    user_id: str
    refresh_token: str


@dataclass(frozen=True)
class Reused:
    """A rotated refresh token came back: its session has been revoked (commit, then refuse)."""

    session_id: str
    user_id: str


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def _new_token(conn: AsyncConnection, session_id: str) -> str:
    token = secrets.token_urlsafe(24)
    tokens = catalog.platform_tables()["refresh_tokens"]
    await conn.execute(tokens.insert().values(session_id=session_id, token_hash=token_hash(token)))
    return token


async def start_session(conn: AsyncConnection, tenant_id: str, user_id: str, *, ip: str | None,
                        user_agent: str | None) -> Session:
    sessions = catalog.platform_tables()["auth_sessions"]
    session_id = str(await conn.scalar(sessions.insert().values(
        tenant_id=tenant_id, user_id=user_id, ip=(ip or None) and ip[:45],
        user_agent=(user_agent or None) and user_agent[:500]).returning(sessions.c.id)))
    return Session(session_id, user_id, await _new_token(conn, session_id))


async def rotate(conn: AsyncConnection, tenant_id: str, refresh_token: str) -> Session | Reused:
    """The session's next refresh token, or `Reused` after revoking the session of a reused one."""
    sessions = catalog.platform_tables()["auth_sessions"]
    tokens = catalog.platform_tables()["refresh_tokens"]
    found = (await conn.execute(
        sa.select(tokens.c.id, tokens.c.used_at, sessions.c.id.label("session_id"), sessions.c.user_id,
                  sessions.c.revoked_at, sessions.c.revoked_reason)
        .join(sessions, sessions.c.id == tokens.c.session_id)
        .where(tokens.c.token_hash == token_hash(refresh_token), sessions.c.tenant_id == tenant_id)
        .with_for_update(of=tokens))).first()
    if found is None:
        raise AuthFailed("refresh_token_not_found", 400, "Invalid Refresh Token: Refresh Token Not Found")
    if found.revoked_at is not None:
        raise AuthFailed("session_expired", 400, f"the session has ended ({found.revoked_reason}); sign in again")
    if found.used_at is not None:
        await revoke(conn, tenant_id, "refresh_token_reused", session_id=str(found.session_id))
        return Reused(str(found.session_id), str(found.user_id))
    await conn.execute(tokens.update().where(tokens.c.id == found.id).values(used_at=sa.func.now()))
    await conn.execute(sessions.update().where(sessions.c.id == found.session_id).values(refreshed_at=sa.func.now()))
    return Session(str(found.session_id), str(found.user_id), await _new_token(conn, str(found.session_id)))


async def revoke(conn: AsyncConnection, tenant_id: str, reason: str, *, user_id: str | None = None,
                 session_id: str | None = None, keep_session: str | None = None) -> int:
    """Revoke the tenant's live sessions: all of them, a user's, or one; `keep_session` spares one
    (logout with scope `others`). Returns how many were revoked."""
    sessions = catalog.platform_tables()["auth_sessions"]
    conditions = [sessions.c.tenant_id == tenant_id, sessions.c.revoked_at.is_(None)]
    if user_id is not None:
        conditions.append(sessions.c.user_id == user_id)
    if session_id is not None:
        conditions.append(sessions.c.id == session_id)
    if keep_session is not None:
        conditions.append(sessions.c.id != keep_session)
    revoked = [str(i) for i in (await conn.execute(sessions.update().where(*conditions)
                                                   .values(revoked_at=sa.func.now(), revoked_reason=reason)
                                                   .returning(sessions.c.id))).scalars()]
    if revoked:
        every = user_id is None and session_id is None and keep_session is None
        await conn.execute(sa.text("SELECT pg_notify(:channel, ident) FROM unnest(CAST(:idents AS text[])) AS ident"),
                           {"channel": SESSIONS_CHANNEL, "idents": [str(tenant_id)] if every else revoked})
    return len(revoked)


async def is_live(conn: AsyncConnection, tenant_id: str, session_id: str) -> bool:
    sessions = catalog.platform_tables()["auth_sessions"]
    found = await conn.scalar(sa.select(sessions.c.id).where(
        sessions.c.id == session_id, sessions.c.tenant_id == tenant_id, sessions.c.revoked_at.is_(None)))
    return found is not None
