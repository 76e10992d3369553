"""Tenants' stored secrets (webhook signing secrets), encrypted at rest in the system tenant.

A tenant's webhook names its signing secret (`secret: NAME`); the value is the tenant's own, set through
the platform (`set_webhook_secret`) and looked up by (tenant id, name): never a server environment
variable, so no schema can make the server sign with a secret that is not its tenant's.

Each value is sealed with AES-256-GCM under a key derived (HKDF-SHA256) from a server secret kept in the
system tenant's `secret_keys` (internal: no API serves it), generated on first use. The tenant's id and
the secret's name are the associated data, so a sealed value copied to another row (another tenant, or
another name) fails to open instead of signing for the wrong tenant. Values never leave this module
except to sign a delivery: nothing reads one back to a caller.

This module never decides who may set a secret: the platform's function does (functions/secrets.py).
"""

from __future__ import annotations

import base64
import secrets as random_bytes
from dataclasses import dataclass

import sqlalchemy as sa
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection

from engine import catalog
from engine.errors import BackSaasError

KEY_LOCK = 0x6B_65_79_73_65_63  # advisory lock: two processes never both create the first key
PURPOSE = b"backsaas webhook secrets v1"
NONCE_BYTES = 12


class SecretUnreadable(BackSaasError):
    """A stored value that does not open with its key (tampered with, moved, or its key lost)."""

    code = "secret_unreadable"
    status = 500


@dataclass(frozen=True)
class SealedSecret:
    kid: str
    ciphertext: str  # urlsafe base64 of nonce || AES-GCM ciphertext and tag


def _cipher(server_secret: str) -> AESGCM:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=PURPOSE).derive(server_secret.encode())
    return AESGCM(key)


def _associated(tenant_id: str, name: str) -> bytes:
    return f"{tenant_id}\x00{name}".encode()


def seal(server_secret: str, kid: str, tenant_id: str, name: str, value: str) -> SealedSecret:
    nonce = random_bytes.token_bytes(NONCE_BYTES)
    sealed = _cipher(server_secret).encrypt(nonce, value.encode(), _associated(tenant_id, name))
    return SealedSecret(kid, base64.urlsafe_b64encode(nonce + sealed).decode())


def unseal(server_secret: str, tenant_id: str, name: str, ciphertext: str) -> str:
    raw = base64.urlsafe_b64decode(ciphertext.encode())
    try:
        return _cipher(server_secret).decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], _associated(tenant_id, name)).decode()
    except InvalidTag as exc:
        raise SecretUnreadable(f"the stored secret {name} does not open with its key") from exc


async def _current_key(conn: AsyncConnection) -> tuple[str, str]:
    """The newest server key (kid, secret), created on first use."""
    keys = catalog.platform_tables()["secret_keys"]
    newest = sa.select(keys.c.kid, keys.c.secret).order_by(keys.c.created_at.desc()).limit(1)
    row = (await conn.execute(newest)).first()
    if row is None:
        await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(KEY_LOCK)))
        row = (await conn.execute(newest)).first()
        if row is None:
            await conn.execute(keys.insert().values(kid=random_bytes.token_hex(8), secret=random_bytes.token_urlsafe(48)))
            row = (await conn.execute(newest)).one()
    return row.kid, row.secret


async def store(conn: AsyncConnection, tenant_id: str, name: str, value: str) -> bool:
    """Set (or replace) tenant `tenant_id`'s secret `name`; True when it replaced one."""
    table = catalog.platform_tables()["webhook_secrets"]
    kid, server_secret = await _current_key(conn)
    sealed = seal(server_secret, kid, tenant_id, name, value)
    statement = postgresql.insert(table).values(tenant_id=tenant_id, name=name, kid=sealed.kid,
                                                ciphertext=sealed.ciphertext)
    statement = statement.on_conflict_do_update(
        index_elements=[table.c.tenant_id, table.c.name],
        set_={"kid": sealed.kid, "ciphertext": sealed.ciphertext, "updated_at": sa.func.now()})
    inserted = await conn.scalar(statement.returning(sa.literal_column("xmax = 0")))
    return not inserted


async def remove(conn: AsyncConnection, tenant_id: str, name: str) -> bool:
    table = catalog.platform_tables()["webhook_secrets"]
    result = await conn.execute(table.delete().where(table.c.tenant_id == tenant_id, table.c.name == name))
    return result.rowcount == 1


async def reveal(conn: AsyncConnection, tenant_id: str, name: str) -> str | None:
    """The value of tenant `tenant_id`'s secret `name`, to sign with (None when it has none)."""
    table = catalog.platform_tables()["webhook_secrets"]
    keys = catalog.platform_tables()["secret_keys"]
    row = (await conn.execute(sa.select(table.c.ciphertext, keys.c.secret)
                              .select_from(table.outerjoin(keys, keys.c.kid == table.c.kid))
                              .where(table.c.tenant_id == tenant_id, table.c.name == name))).first()
    if row is None:
        return None
    if row.secret is None:
        raise SecretUnreadable(f"the key of the stored secret {name} is gone; set the secret again")
    return unseal(row.secret, tenant_id, name, row.ciphertext)
