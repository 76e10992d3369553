"""The one catalogue of errors the engine raises.

Every error is a value with a machine-readable `code`, the HTTP `status` it maps to, a human `message`
and optional `details` (a list of {field|path, line, message}). It is raised once, where the problem is
found, and rendered at the edge (HTTP, GraphQL, CLI); nobody compares message strings later.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an input, located: a dotted path and, for files, a 1-based line."""

    path: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line else ""
        return f"{where}{self.path}: {self.message}" if self.path else f"{where}{self.message}"

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "line": self.line, "message": self.message}


class BackSaasError(Exception):
    code = "internal_error"
    status = 500

    def __init__(self, message: str, *, details: list[Problem] | None = None, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []
        self.hint = hint

    def as_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "message": self.message,
            "details": [d.as_dict() for d in self.details] or None,
            "hint": self.hint,
        }


class SchemaInvalid(BackSaasError):
    """A schema file was refused whole; `details` lists every problem found."""

    code = "schema_invalid"
    status = 422

    def __init__(self, problems: list[Problem], source: str = "<schema>") -> None:
        self.source = source
        count = len(problems)
        super().__init__(f"{source}: {count} error{'s' if count != 1 else ''} in schema", details=problems)

    def report(self) -> str:
        lines = [self.message]
        for p in self.details:
            where = f"{self.source}:{p.line}" if p.line else self.source
            lines.append(f"  {where}: {p.path}: {p.message}" if p.path else f"  {where}: {p.message}")
        return "\n".join(lines)


class MigrationRefused(BackSaasError):
    """A plan holds steps that cannot or may not run; `details` says which and why."""

    code = "migration_refused"
    status = 409


class MigrationFailed(BackSaasError):
    """The database refused a step while applying; the transaction was rolled back, nothing changed."""

    code = "migration_failed"
    status = 409


class VersionConflict(BackSaasError):
    """The deployed version changed between planning and applying."""

    code = "version_conflict"
    status = 409


class TenantNotFound(BackSaasError):
    code = "tenant_not_found"
    status = 404


class TenantSuspended(BackSaasError):
    code = "tenant_suspended"
    status = 403


class TenantExists(BackSaasError):
    code = "tenant_exists"
    status = 409


class DatabaseUnavailable(BackSaasError):
    code = "database_unavailable"
    status = 503


class InvalidInput(BackSaasError):
    code = "invalid_input"
    status = 400
