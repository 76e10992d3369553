"""Passwords: the policy (at least 10 characters, not the email) and argon2id hashing.

Hashing and verifying take tens of milliseconds of CPU by design, so they run in a worker thread and
never stall the event loop. Verifying an unknown account still costs one verification (against a
throwaway hash) so that response times do not tell which emails have accounts.
"""

from __future__ import annotations

import asyncio

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from engine.errors import Problem

MIN_PASSWORD_LENGTH = 10
hasher = PasswordHasher()
_UNKNOWN_ACCOUNT_HASH = hasher.hash("an account that does not exist")


def password_problems(email: str, password: object) -> list[Problem]:
    if not isinstance(password, str):
        return [Problem("password", "is required")]
    problems = []
    if len(password) < MIN_PASSWORD_LENGTH:
        problems.append(Problem("password", f"must be at least {MIN_PASSWORD_LENGTH} characters"))
    if password.strip().lower() == email.strip().lower():
        problems.append(Problem("password", "must not be the email address"))
    return problems


async def hash_password(password: str) -> str:
    return await asyncio.to_thread(hasher.hash, password)


def _verify(stored: str | None, password: str) -> bool:
    try:
        return hasher.verify(stored or _UNKNOWN_ACCOUNT_HASH, password) and stored is not None
    except (VerificationError, InvalidHashError):
        return False


async def verify_password(stored: str | None, password: str) -> bool:
    """Whether `password` matches `stored` (None: no such account, answered in the same time)."""
    return await asyncio.to_thread(_verify, stored, password)
