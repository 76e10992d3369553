"""Platform accounts in the system tenant's `users` entity: creating platform admins."""

from __future__ import annotations

from argon2 import PasswordHasher
from sqlalchemy.exc import IntegrityError

from engine import catalog
from engine.database import Database
from engine.errors import BackSaasError, InvalidInput, Problem

PLATFORM_ADMIN = "platform_admin"
MIN_PASSWORD_LENGTH = 10
hasher = PasswordHasher()


class UserExists(BackSaasError):
    code = "user_exists"
    status = 409


def password_problems(email: str, password: str) -> list[Problem]:
    problems = []
    if len(password) < MIN_PASSWORD_LENGTH:
        problems.append(Problem("password", f"must be at least {MIN_PASSWORD_LENGTH} characters"))
    if password.strip().lower() == email.strip().lower():
        problems.append(Problem("password", "must not be the email address"))
    return problems


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
                email=email, password_hash=hasher.hash(password), roles=[PLATFORM_ADMIN], verified=True,
            ).returning(users.c.id))).one()
    except IntegrityError as exc:
        raise UserExists(f"a platform account with email {email} exists") from exc
    return str(row.id)
