"""Access tokens: HS256 JWTs signed with the platform's current key and verified with it or the one before.

The key comes from `BACKSAAS_JWT_SECRET` when set, else it is generated once and kept in the system
tenant's `signing_keys` (internal: never served by its APIs). Rotating adds a new key, keeps the previous
one verifying (tokens issued before the rotation stay valid until they expire) and retires the older
ones. Every process holds the keyring in memory and reloads it when the keys' NOTIFY arrives, so
verifying a token never reads the database.

The same keys also key other server-side digests (`derived_keys`: the mailed one-time codes' HMAC), each
through a key derived for its purpose (HKDF-SHA256), never the signing key itself: a digest key that
leaked would not sign a token, and no digest is a MAC of anything a token signs.
"""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt
import sqlalchemy as sa
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy.ext.asyncio import AsyncConnection

from engine import catalog
from engine.database import Database
from engine.errors import Unauthorized

ALGORITHM = "HS256"
ISSUER = "backsaas"
AUDIENCE = "authenticated"
ACCESS_TOKEN_SECONDS = 15 * 60
REQUIRED_CLAIMS = ("sub", "tenant", "roles", "iat", "exp", "iss", "jti")
VERIFIED_CACHE_SIZE = 10_000
KEY_LOCK = 0x6B65_7973  # advisory lock: one process creates the first key


@dataclass(frozen=True)
class Keyring:
    """The key that signs (kid, secret) and every key that verifies, by kid."""

    kid: str
    secret: str
    verifying: Mapping[str, str]
    verified: dict[str, dict[str, Any]] = field(default_factory=dict, compare=False, repr=False)
    derived: dict[bytes, tuple[bytes, ...]] = field(default_factory=dict, compare=False, repr=False)

    def derived_keys(self, purpose: bytes) -> tuple[bytes, ...]:
        """Keys for `purpose` (e.g. b"backsaas one-time tokens v1"), derived with HKDF-SHA256 from the signing
        key first, then from each other verifying key: a digest made under the key before a rotation still
        matches until that key is retired. Cached per keyring (a rotation builds a new one)."""
        keys = self.derived.get(purpose)
        if keys is None:
            secrets_in_order = [self.secret, *(s for k, s in sorted(self.verifying.items()) if k != self.kid)]
            keys = self.derived[purpose] = tuple(derive_key(s, purpose) for s in secrets_in_order)
        return keys

    def issue(self, claims: Mapping[str, Any], lifetime: int = ACCESS_TOKEN_SECONDS) -> tuple[str, int]:
        """A signed access token with `claims` plus iat, exp, iss, aud and jti; returns it and its exp."""
        now = int(time.time())
        payload = {**claims, "iat": now, "exp": now + lifetime, "iss": ISSUER, "aud": AUDIENCE,
                   "jti": str(uuid.uuid4())}
        return jwt.encode(payload, self.secret, algorithm=ALGORITHM, headers={"kid": self.kid}), now + lifetime

    def verify(self, token: str) -> dict[str, Any]:
        """The claims of a token this platform signed and that has not expired; `Unauthorized` otherwise.
        Only HS256 is accepted (never `none`), the kid must be a verifying key, every claim must be there.

        A client sends the same token for its whole lifetime, and checking the signature and claims costs
        more than the rest of authorization (~100 us here), so the claims of tokens verified by this
        keyring are kept by the exact token text (a new keyring, after a rotation, starts empty); only
        the expiry is checked again."""
        claims = self.verified.get(token)
        if claims is not None:
            if claims["exp"] <= time.time():
                raise Unauthorized("token_expired", "the access token has expired; refresh the session")
            return claims
        claims = self._decode(token)
        if len(self.verified) >= VERIFIED_CACHE_SIZE:
            del self.verified[next(iter(self.verified))]
        self.verified[token] = claims
        return claims

    def _decode(self, token: str) -> dict[str, Any]:
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            secret = self.verifying.get(kid) if isinstance(kid, str) else None
            if secret is None:
                raise Unauthorized("invalid_token", "the access token is not signed by a key of this platform")
            return jwt.decode(token, secret, algorithms=[ALGORITHM], audience=AUDIENCE, issuer=ISSUER,
                              options={"require": list(REQUIRED_CLAIMS)})
        except jwt.ExpiredSignatureError as exc:
            raise Unauthorized("token_expired", "the access token has expired; refresh the session") from exc
        except jwt.PyJWTError as exc:
            raise Unauthorized("invalid_token", f"invalid access token: {exc}") from exc


def derive_key(secret: str, purpose: bytes) -> bytes:
    """A 256-bit key for `purpose` from a server secret (HKDF-SHA256, the purpose as its info)."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(secret.encode())


def _env_kid(secret: str) -> str:
    return "env-" + hashlib.sha256(secret.encode()).hexdigest()[:12]


async def load_keyring(conn: AsyncConnection, env_secret: str | None = None) -> Keyring:
    """The keyring from the system tenant (and `env_secret`, which then signs)."""
    keys = catalog.platform_tables()["signing_keys"]
    rows = (await conn.execute(sa.select(keys.c.kid, keys.c.secret).where(keys.c.retired_at.is_(None))
                               .order_by(keys.c.created_at.desc(), keys.c.kid))).all()
    verifying = {row.kid: row.secret for row in rows}
    if env_secret:
        kid = _env_kid(env_secret)
        return Keyring(kid, env_secret, {**verifying, kid: env_secret})
    if not rows:
        raise Unauthorized("no_signing_key", "the platform has no token signing key yet")
    return Keyring(rows[0].kid, rows[0].secret, verifying)


async def ensure_signing_key(conn: AsyncConnection) -> None:
    """Generate the first signing key if there is none (safe when many processes start at once)."""
    keys = catalog.platform_tables()["signing_keys"]
    await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(KEY_LOCK)))
    if await conn.scalar(sa.select(sa.func.count()).select_from(keys).where(keys.c.retired_at.is_(None))) == 0:
        await conn.execute(keys.insert().values(kid=secrets.token_hex(8), secret=secrets.token_urlsafe(48)))


async def rotate_signing_key(db: Database) -> str:
    """Add a new signing key; the previous one keeps verifying, any older one is retired. Returns the new kid."""
    keys = catalog.platform_tables()["signing_keys"]
    kid = secrets.token_hex(8)
    async with db.begin() as conn:
        await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(KEY_LOCK)))
        newest = await conn.scalar(sa.select(keys.c.id).where(keys.c.retired_at.is_(None))
                                   .order_by(keys.c.created_at.desc()).limit(1))
        await conn.execute(keys.update().where(keys.c.retired_at.is_(None), keys.c.id != newest)
                           .values(retired_at=sa.func.now()))
        await conn.execute(keys.insert().values(kid=kid, secret=secrets.token_urlsafe(48),
                                                created_at=sa.func.clock_timestamp()))
    return kid
