"""Platform accounts in the system tenant's `users` entity: creating platform admins."""

from __future__ import annotations

from sqlalchemy.exc import IntegrityError

from engine import catalog
from engine.database import Database
from engine.errors import BackSaasError, InvalidInput, Problem
from engine.identity.passwords import hash_password, password_problems

PLATFORM_ADMIN = "platform_admin"


class UserExists(BackSaasError):
    code = "user_exists"
    status = 409


async def create_platform_admin(db: Database, email: str, password: str) -> str:
    """Create a verified platform account holding the `platform_admin` role; returns its id."""
    email = email.strip().lower()
    problems = [Problem("email", "is not an email address")] if "@" not in email.strip("@") else []
    problems += password_problems(email, password)
    if problems:
        raise InvalidInput("cannot create the admin", details=problems)
    users = catalog.platform_tables()["users"]
    try:
        async with db.begin() as conn:
            row = (await conn.execute(users.insert().values(
                email=email, password_hash=await hash_password(password), roles=[PLATFORM_ADMIN], verified=True,
            ).returning(users.c.id))).one()
    except IntegrityError as exc:
        raise UserExists(f"a platform account with email {email} exists") from exc
    return str(row.id)
