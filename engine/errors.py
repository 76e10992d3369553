"""The one catalogue of errors the engine raises.

Every error is a value with a machine-readable `code`, the HTTP `status` it maps to, a human `message`
and optional `details` (a list of {field|path, line, message}). It is raised once, where the problem is
found, and rendered at the edge (HTTP, GraphQL, CLI); nobody compares message strings later.
"""

from __future__ import annotations

import errno
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg
from sqlalchemy.exc import DBAPIError


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
    retry_after: int | None = None  # seconds, sent as `Retry-After` (a 429's window, a 503's pause)

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


class SchemaCheckTimeout(BackSaasError):
    """Checking a schema took longer than its time limit (or waited that long for a free checker)."""

    code = "schema_check_timeout"
    status = 503


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


OUTAGE_RETRY_SECONDS = 2  # the `Retry-After` of a database outage: a restart takes seconds, a failover tens


class DatabaseUnavailable(BackSaasError):
    """The database cannot answer now (down, starting, shutting down, out of connections): a 503 that a
    load balancer or a client retries, never a 500 (see `is_outage`)."""

    code = "database_unavailable"
    status = 503
    retry_after = OUTAGE_RETRY_SECONDS

    def __init__(self, message: str = "the database is unavailable; try again shortly", **kwargs: Any) -> None:
        super().__init__(message, **kwargs)


class GatewayRoleUnavailable(BackSaasError):
    """The request pool has no role to log in as that is a member of tenant roles only (wall 3)."""

    code = "gateway_role_unavailable"
    status = 503


class InvalidInput(BackSaasError):
    code = "invalid_input"
    status = 400


# The codes of an `Unauthorized` that refused a bearer access token (one a refresh may mend): GraphQL answers
# them `invalid-jwt`, HTTP with RFC 6750's `error="invalid_token"`
TOKEN_REFUSALS = frozenset(("invalid_token", "token_expired", "session_ended", "credentials_changed", "no_signing_key"))


class Unauthorized(BackSaasError):
    """Credentials that do not hold: an unknown, revoked or expired key, a bad or expired token, or a
    token of another tenant (`tenant_mismatch`); the code says which."""

    status = 401

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code

    @property
    def challenge(self) -> str:
        """The `WWW-Authenticate` a 401 carries (RFC 7235), as PostgREST sends it: RFC 6750's
        `error="invalid_token"` with the reason when a bearer token was refused."""
        if self.code not in TOKEN_REFUSALS:
            return "Bearer"
        reason = "".join(c for c in self.message if " " <= c <= "~" and c not in '"\\')
        return f'Bearer error="invalid_token", error_description="{reason}"'


class TooManyAttempts(BackSaasError):
    """Too many failed sign-ins for an account or from an address; `retry_after` is in seconds."""

    code = "over_request_rate_limit"
    status = 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message, hint=f"retry after {retry_after} s")
        self.retry_after = retry_after


class RateLimited(TooManyAttempts):
    """A tenant (or an anonymous client address) past a rate-limit window of its plan; `retry_after` is the
    seconds until that window resets (gateway/ratelimit.py)."""

    code = "rate_limited"


class TooManyConcurrentRequests(TooManyAttempts):
    """A tenant with as many requests in progress in this gateway process as its plan allows
    (`concurrent_requests`), and this one waited its turn longer than the gateway queues (gateway/fairness.py)."""

    code = "too_many_concurrent_requests"


class PlanFeatureRequired(BackSaasError):
    """An operation needs a feature the tenant's plan does not include (engine/plans.py `require_feature`)."""

    code = "plan_feature_required"
    status = 402


class AuthFailed(BackSaasError):
    """A refused identity operation in GoTrue's own codes (`invalid_credentials`, `refresh_token_not_found`,
    `refresh_token_already_used`, `session_not_found`, `user_already_exists`, `weak_password`, ...)."""

    def __init__(self, code: str, status: int, message: str, *, details: list[Problem] | None = None) -> None:
        super().__init__(message, details=details)
        self.code = code
        self.status = status

    def as_dict(self) -> dict[str, Any]:
        body = super().as_dict()
        if self.code == "weak_password":  # what Supabase's SDKs read the reasons from
            body["weak_password"] = {"reasons": [p.message for p in self.details]}
        return body


# -- the REST dialect's errors, with PostgREST's codes so that its clients recognise them ------------


class QueryParseError(BackSaasError):
    """A malformed select, filter, order or range (PostgREST's PGRST100)."""

    code = "PGRST100"
    status = 400


class UnknownColumn(BackSaasError):
    code = "42703"
    status = 400


class UnknownRelation(BackSaasError):
    code = "PGRST200"
    status = 400


class UnknownEntity(BackSaasError):
    code = "42P01"
    status = 404


class PostgrestDetailed(BackSaasError):
    """A PostgREST error whose `details` is one sentence of text, as PostgREST sends it (clients show it)."""

    def __init__(self, message: str, detail: str) -> None:
        super().__init__(message)
        self.detail = detail

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "details": self.detail, "hint": None}


class NotAcceptable(PostgrestDetailed):
    """`Accept: application/vnd.pgrst.object+json` and the result is not exactly one row."""

    code = "PGRST116"
    status = 406


class RangeNotSatisfiable(PostgrestDetailed):
    code = "PGRST103"
    status = 416


class InvalidBody(BackSaasError):
    """A body that is not JSON, or objects with different keys in one bulk insert."""

    code = "PGRST102"
    status = 400


class UnfilteredWrite(BackSaasError):
    code = "21000"  # what PostgREST's pg-safeupdate answers to an UPDATE or DELETE without WHERE
    status = 400


class ValidationFailed(BackSaasError):
    code = "validation_failed"
    status = 422

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "hint": self.hint,
                "details": [{"field": p.path, "message": p.message} for p in self.details]}


class Forbidden(BackSaasError):
    code = "permission_denied"
    status = 403


class ProcessingRestricted(Forbidden):
    """A user whose processing is restricted (a GDPR request, engine/gdpr.py) tried to write: their data is
    read-only until the restriction is lifted."""

    code = "processing_restricted"


class SchemaNotExposed(BackSaasError):
    code = "PGRST106"
    status = 406


# -- a request beyond the bounds of the tenant's plan (engine.limits), refused before any SQL runs ---------


class EmbedTooDeep(BackSaasError):
    code = "embed_too_deep"
    status = 400


class QueryTooCostly(BackSaasError):
    """More rows than the plan allows, estimated from each list's limit times its parent's rows."""

    code = "query_too_costly"
    status = 400


class QueryTooComplex(BackSaasError):
    """More select items, or conditions nested deeper, than one statement may hold."""

    code = "query_too_complex"
    status = 400


class TooManyItems(BackSaasError):
    """A body with more objects than the plan allows in one write."""

    code = "too_many_items"
    status = 413


class TooManyRows(BackSaasError):
    """An update or a delete reaching more rows than the plan allows one write to change."""

    code = "too_many_rows"
    status = 400


class DatabaseError(BackSaasError):
    """An error the database raised for a request, mapped to its status; `code` is the SQLSTATE."""

    def __init__(self, sqlstate: str, status: int, message: str, detail: str | None = None,
                 hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.code = sqlstate
        self.status = status
        self.detail = detail
        if status == 503:  # what a retry may fix: an outage, a serialization failure, a deadlock
            self.retry_after = OUTAGE_RETRY_SECONDS if sqlstate == DatabaseUnavailable.code else 1

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "details": self.detail, "hint": self.hint}


class CheckViolation(DatabaseError):
    """A row the database refused by a CHECK constraint (SQLSTATE 23514): a 422, naming the field when the
    constraint is a field's bounds (`{column}_bounds`, see engine.storage.tables)."""

    def __init__(self, message: str, detail: str | None, field: str | None) -> None:
        super().__init__("23514", 422, message, detail)
        self.field = field

    def as_dict(self) -> dict[str, Any]:
        problem = "is outside the field's bounds" if self.field else self.message
        return {"code": self.code, "message": self.message, "hint": self.hint,
                "details": [{"field": self.field, "message": problem}]}


# PostgreSQL's message for a CHECK violation; the constraint's name is the only place it carries it.
_CHECK_MESSAGE = re.compile(r'violates check constraint "([a-z0-9_]{1,63})"')
BOUNDS_SUFFIX = "_bounds"

# Classes of SQLSTATE that name the request's own mistake, as PostgREST answers them (400): bad values (22:
# invalid text, out of range, bad date) and syntax or access rule violations (42: a text search query
# `to_tsquery` cannot parse is a 42601), unless SQLSTATE_STATUS names the code.
CLIENT_CLASSES = ("22", "42")
SQLSTATE_STATUS = {"23505": 409, "23503": 409, "23001": 409, "23502": 400, "23514": 422, "42501": 403, "42P10": 400,
                   "42883": 400, "42804": 400, "42846": 400, "54000": 400, "57014": 504, "40001": 503, "40P01": 503,
                   # a batch that meets one row twice (ON CONFLICT DO UPDATE), and a statement past PostgreSQL's
                   # program limits (target list, stack depth): the request's shape, not the server
                   "21000": 400, "54001": 400, "54011": 400, "54023": 400}


# SQLSTATEs of a server that cannot answer now, whatever the statement: connection exceptions (class 08),
# insufficient resources (53: too many connections, out of memory or disk), and operator intervention's
# shutdowns (57P01 admin shutdown, 57P02 crash shutdown, 57P03 cannot connect now: starting or stopping)
OUTAGE_CLASSES = ("08", "53")
OUTAGE_STATES = frozenset({"57P01", "57P02", "57P03"})
# what a connection attempt to a server that is not there raises (besides ConnectionError and timeouts)
_NETWORK_ERRNOS = frozenset({errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.EHOSTUNREACH,
                             errno.ENETUNREACH, errno.EPIPE, errno.ETIMEDOUT})
# asyncpg's protocol found consuming an error, failed or terminating when a statement starts: the connection
# was ended under it (states PROTOCOL_FAILED 1, PROTOCOL_ERROR_CONSUME 2, PROTOCOL_TERMINATING 4)
_BROKEN_PROTOCOL = re.compile(r"cannot switch to state \d+; another operation \([124]\) is in progress")


def is_outage_state(sqlstate: str | None) -> bool:
    return bool(sqlstate) and (sqlstate in OUTAGE_STATES or sqlstate.startswith(OUTAGE_CLASSES))  # type: ignore[union-attr]


def is_outage(exc: BaseException) -> bool:
    """Whether an exception says the database cannot answer now, rather than that the request or the code
    is wrong: a refused or broken connection, a closed one, a server starting, shutting down or out of
    connections. Looks through what raised it (`__cause__`) and through SQLAlchemy's wrappers (`.orig`,
    whose `sqlstate` asyncpg's adapted errors carry): the asyncpg dialect raises the generic `DBAPIError`
    for CannotConnectNowError and AdminShutdownError."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        error = pending.pop()
        if error is None or id(error) in seen:
            continue
        seen.add(id(error))
        if isinstance(error, DatabaseUnavailable):
            return True
        if isinstance(error, DatabaseError):
            return is_outage_state(error.code) or error.code == DatabaseUnavailable.code
        if isinstance(error, (ConnectionError, TimeoutError, socket.gaierror)):
            return True
        if isinstance(error, OSError) and (error.errno in _NETWORK_ERRNOS
                                           or (error.errno is None and str(error).startswith("Multiple exceptions"))):
            return True  # asyncio's connect to every address of a host failed
        sqlstate = getattr(error, "sqlstate", None)
        if isinstance(sqlstate, str) and is_outage_state(sqlstate):
            return True
        if getattr(error, "connection_invalidated", False):  # SQLAlchemy saw the connection die under it
            return True
        if isinstance(error, asyncpg.InterfaceError) and "closed" in str(error):  # "connection is closed"
            return True
        if isinstance(error, asyncpg.exceptions.InternalClientError) and _BROKEN_PROTOCOL.search(str(error)):
            return True  # the server ended the idle connection (its FATAL 57P01 is being consumed) as it was used
        pending += [getattr(error, "orig", None), error.__cause__]
    return False


@contextmanager
def outages_as_unavailable() -> Iterator[None]:
    """Around a database call: an outage (`is_outage`, or any OSError: here it can only be the connection's,
    such as a missing unix socket) leaves as `DatabaseUnavailable` (503 with `Retry-After`); anything else
    leaves as it came."""
    try:
        yield
    except DatabaseUnavailable:
        raise
    except Exception as exc:
        if isinstance(exc, OSError) or is_outage(exc):
            raise DatabaseUnavailable() from exc
        raise


def database_error_of(exc: BaseException) -> DatabaseError:
    """`database_error` of an exception asyncpg raised, or of SQLAlchemy's wrapper of one (`.orig`): its
    SQLSTATE, message, detail and hint. The one conversion of a database's refusal into the catalogue."""
    source: Any = exc
    if getattr(exc, "orig", None) is not None:  # SQLAlchemy's DBAPIError: the adapted error, then asyncpg's own
        source = exc.orig.__cause__ if isinstance(getattr(exc.orig, "__cause__", None), asyncpg.PostgresError) \
            else exc.orig
    sqlstate = getattr(source, "sqlstate", None) or ("08006" if is_outage(exc) else "XX000")
    message = source.args[0] if getattr(source, "args", None) else str(source)
    return database_error(sqlstate, str(message), getattr(source, "detail", None), getattr(source, "hint", None))


def input_refusal(exc: BaseException) -> DatabaseError | None:
    """The catalogue's 4xx when the database refused a request's input (a NUL, a duplicate, a bad value)
    under code that is no request handler's (a hook, a function, its checks), else None: a failure of that
    code stays its own error, without the database's words."""
    if not isinstance(exc, asyncpg.PostgresError | DBAPIError):
        return None
    refusal = database_error_of(exc)
    return refusal if refusal.status < 500 else None


def database_error(sqlstate: str, message: str, detail: str | None = None, hint: str | None = None) -> DatabaseError:
    """The response to an error PostgreSQL raised for a request: 409 for conflicts, 400 for bad values and
    bad syntax (CLIENT_CLASSES), 503 `database_unavailable` for an outage (classes 08
    and 53, and 57P01-57P03: shutting down, crashed, starting), 503 for what a retry may fix. PostgreSQL's
    "Failing row contains (...)" detail is dropped: it lists the whole row, columns the caller may not read
    included."""
    if detail and detail.startswith("Failing row contains"):
        detail = None
    if sqlstate == "23514":
        return check_violation(message, detail)
    if is_outage_state(sqlstate):
        return DatabaseError(DatabaseUnavailable.code, 503, "the database is unavailable; try again shortly",
                             f"SQLSTATE {sqlstate}: {message}", hint or "retry after the Retry-After seconds")
    status = SQLSTATE_STATUS.get(sqlstate) or (400 if sqlstate.startswith(CLIENT_CLASSES) else 500)
    if sqlstate == "57014":  # the statement ran past its statement_timeout (the plan's limit)
        return DatabaseError("statement_timeout", status, "the query ran longer than this tenant's plan allows and "
                             "was canceled", detail or message, hint or "ask for fewer rows or try again later")
    return DatabaseError(sqlstate, status, message, detail, hint)


def check_violation(message: str, detail: str | None = None) -> CheckViolation:
    """A 23514 as a 422: a field's bounds constraint (`{column}_bounds`) names its field."""
    found = _CHECK_MESSAGE.search(message[:1000])
    constraint = found.group(1) if found else ""
    field = constraint[: -len(BOUNDS_SUFFIX)] if constraint.endswith(BOUNDS_SUFFIX) else None
    text = f"{field}: the value is outside the field's bounds" if field else message
    return CheckViolation(text, detail, field)
