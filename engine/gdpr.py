"""GDPR rights of a tenant's users (the system tenant's users are the platform's accounts): access and
portability (an export), erasure, restriction and objection, as requests with a due date.

What is personal is what the schema says: fields marked `pii: true`, and always the account's email. A
user's data is every row they own (`owner_id`), their `users` row, and, once a mail to their email proved
it theirs (`tying_email`), the `pii` text fields of other rows that hold it (a contact row someone else typed in about
them): of such a row of someone else's, only those fields are theirs, never its other columns. An
unconfirmed email ties nothing: anyone can type any address into their account (`PUT /auth/v1/user`
makes it unverified), and it must not read or erase rows about the address's owner. Nothing else is
touched or shown: other users' rows that reference theirs keep the reference (an id), and the referenced
row stays, with its personal fields anonymised.

- `export_user`: their own rows (internal columns such as password hashes left out) and the matching
  fields of rows naming them, the user's consent history, privacy requests and flags, and the audit
  entries about them.
- `erase_user`: every `pii` field of their own rows, and the matching fields of rows naming them,
  anonymised in place (NULL when the column allows it, else a value derived from the row's id, never
  from the old value), the account disabled (its email
  replaced, password removed, roles emptied, unverified), every session and refresh token revoked, and the
  erasure flagged. Rows are never deleted, so whatever referenced them still reads.
- Requests (`privacy_requests`): filed by the user, due in 30 days, completed or rejected by the tenant's
  admins, or at once when the tenant's settings say `privacy.auto_process`. Filing and processing are
  audited with ids only (the audit trail must not become a copy of what an erasure removed).
- Flags (`privacy_flags`): `restricted` makes the user's data read-only (the gateway marks their caller and
  `engine.authz.authorize` refuses their writes, 403 `processing_restricted`); `objected` is recorded for
  the tenant's own processing to honour. A change NOTIFYs the tenant's slug so every process drops its
  cached set at once (`RestrictedUsers`).

Each operation is one transaction; tenant tables are read and written as the tenant's own role.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, ParamSpec, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from engine import audit, catalog
from engine.changes import tenant_key
from engine.channels import CHANGES_CHANNEL
from engine.database import STATEMENT_TIMEOUT_MS, Database, act_as_tenant
from engine.errors import BackSaasError, Problem, ValidationFailed, database_error_of
from engine.identity import sessions
from engine.schema.model import OWNER_COLUMN, USERS, Entity, Field

DUE_DAYS = 30
REQUEST_TYPES = ("access", "portability", "erasure", "restriction", "lift_restriction", "objection",
                 "withdraw_objection")
EXPORTS = ("access", "portability")
FLAG_CHANGES = {"restriction": ("restricted", True), "lift_restriction": ("restricted", False),
                "objection": ("objected", True), "withdraw_objection": ("objected", False)}
ERASED_DOMAIN = "erased.invalid"


class PrivacyRequestNotFound(BackSaasError):
    code = "privacy_request_not_found"
    status = 404


class PrivacyRequestClosed(BackSaasError):
    code = "privacy_request_closed"
    status = 409


class UserNotFound(BackSaasError):
    code = "user_not_found"
    status = 404


def personal_fields(entity: Entity) -> tuple[Field, ...]:
    """The fields an export ties and an erasure anonymises: `pii: true`, and the account's email."""
    return tuple(f for f in entity.fields if f.pii or (entity.name == USERS and f.name == "email"))


def owned(entity: Entity, table: sa.Table, user_id: str) -> sa.ColumnElement[bool] | None:
    """The rows of `entity` that are the user's own: their `users` row, the rows they own (`owner_id`)."""
    conditions: list[sa.ColumnElement[bool]] = []
    if entity.name == USERS:
        conditions.append(table.c.id == user_id)
    if entity.owner:
        conditions.append(table.c[OWNER_COLUMN] == user_id)
    return sa.or_(*conditions) if conditions else None


def mentions(entity: Entity, table: sa.Table, email: str | None) -> list[tuple[Field, sa.ColumnElement[bool]]]:
    """Each `pii` text field of `entity` with the condition "it holds this email". None for an email the
    user has not confirmed: an address anyone can type into their account ties nothing (else changing
    one's email to a victim's would read and erase rows about the victim)."""
    if email is None or entity.name == USERS:
        return []
    return [(f, sa.func.lower(table.c[f.column]) == email.lower()) for f in personal_fields(entity)
            if f.type in ("string", "text")]


def tie(entity: Entity, table: sa.Table, user_id: str, email: str | None) -> sa.ColumnElement[bool] | None:
    """The rows of `entity` that hold the user's data: theirs, or naming their (confirmed) email in a `pii`
    text field."""
    conditions = [c for c in (owned(entity, table, user_id),) if c is not None]
    conditions += [condition for _, condition in mentions(entity, table, email)]
    return sa.or_(*conditions) if conditions else None


def not_owned(entity: Entity, table: sa.Table, user_id: str) -> sa.ColumnElement[bool]:
    """Someone else's rows (a NULL owner is nobody's, so not the user's)."""
    mine = owned(entity, table, user_id)
    return sa.true() if mine is None else sa.not_(sa.func.coalesce(mine, sa.false()))


def anonymous(field: Field, table: sa.Table) -> sa.ColumnElement[Any] | None:
    """What a personal field becomes: NULL if it may be, else a value made from the row's id (unique, and
    holding nothing of the old value); None for a field that stays (a required reference is an id)."""
    if field.type == "ref":
        return None if field.required else sa.null()
    if not field.required:
        return sa.null()
    token = sa.func.replace(sa.cast(table.c.id, sa.Text), "-", "")
    column_type = table.c[field.column].type
    if field.type in ("string", "text"):
        value = (sa.literal("erased-") + token + f"@{ERASED_DOMAIN}" if field.format == "email" or field.name == "email"
                 else sa.literal("erased-") + token)
        if field.min_length:  # the database checks it
            value = sa.func.rpad(value, field.min_length, "0")
        return sa.func.left(value, field.max_length) if field.max_length else value
    if field.has_default and not isinstance(field.default, (dict, list, tuple)) and field.default != "now":
        return sa.literal(field.default, type_=column_type)
    lowest = field.minimum if field.minimum is not None else (
        0 if field.maximum is None or field.maximum >= 0 else field.maximum)
    fixed: dict[str, Any] = {
        "integer": int(lowest), "bigint": int(lowest), "number": lowest, "decimal": lowest, "boolean": False,
        "date": sa.text("DATE '1970-01-01'"), "datetime": sa.text("TIMESTAMPTZ '1970-01-01Z'"),
        "uuid": sa.text("'00000000-0000-0000-0000-000000000000'::uuid"),
        "json": sa.text("'{}'::jsonb"), "array": sa.text("'{}'"), "enum": field.values[0] if field.values else None,
    }
    value = fixed.get(field.type)
    if value is None:
        return None
    return value if isinstance(value, sa.TextClause) else sa.literal(value, type_=column_type)


P = ParamSpec("P")
R = TypeVar("R")


def database_errors(operation: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """The operation with the database's refusals raised as the catalogue's errors (a statement past the
    tenant's plan's timeout is 504 `statement_timeout`, an outage 503), as REST and /auth/v1 answer them,
    never a 500."""
    @functools.wraps(operation)
    async def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await operation(*args, **kwargs)
        except DBAPIError as exc:
            raise database_error_of(exc) from exc
    return guarded


async def as_tenant(conn: AsyncConnection, runtime: Any, db: Database | None) -> None:
    """The tenant's role for the statements on its tables, under its plan's statement timeout (`db` knows
    it; without one, the default) and with the actor in the audit context (engine.database.act_as_tenant)."""
    await act_as_tenant(conn, runtime.role, db.statement_timeout_of(runtime.role) if db is not None
                        else STATEMENT_TIMEOUT_MS)


async def as_platform(conn: AsyncConnection) -> None:
    await conn.execute(sa.text("RESET ROLE"))


@database_errors
async def account(conn: AsyncConnection, runtime: Any, user_id: str, db: Database | None = None) -> tuple[str, bool]:
    """The user's email and whether it is confirmed (as the tenant's role); UserNotFound when the tenant
    has no such user. `db`, here and below: whose plan timeouts the tenant's statements run under."""
    users = runtime.tables[USERS]
    await as_tenant(conn, runtime, db)
    row = (await conn.execute(sa.select(users.c.email, users.c.verified).where(users.c.id == user_id))).first()
    await as_platform(conn)
    if row is None:
        raise UserNotFound(f"tenant '{runtime.slug}' has no user {user_id}")
    return str(row.email), bool(row.verified)


async def account_email(conn: AsyncConnection, runtime: Any, user_id: str, db: Database | None = None) -> str:
    """The user's email (as the tenant's role); UserNotFound when the tenant has no such user."""
    return (await account(conn, runtime, user_id, db))[0]


async def tying_email(conn: AsyncConnection, runtime: Any, user_id: str, db: Database | None = None) -> str | None:
    """The email that ties other users' rows to this user: theirs once a mail to it proved it theirs (a
    sign-up confirmation, a magic link or code, an invitation, a recovery, an email change: the audit
    trail's `auth.verified` naming the address), else None. `verified` alone proves nothing: a tenant that
    confirms no address by mail (the default, Supabase's autoconfirm) marks every sign-up verified, so
    anyone could sign up with another's address and read or erase the rows naming it."""
    email, verified = await account(conn, runtime, user_id, db)
    if not verified:
        return None
    log = catalog.platform_tables()["audit_log"]
    await conn.execute(sa.text(f"SELECT {audit.SCHEMA}.seal(:chain)"), {"chain": runtime.tenant_id})  # pending too
    proven = await conn.scalar(sa.select(sa.exists().where(
        log.c.chain == runtime.tenant_id, log.c.record_id == user_id, log.c.action == "auth.verified",
        log.c.data["address"].astext == email)))
    return email if proven else None


def _rows_json(alias: Any, where: sa.ColumnElement[bool], hidden: list[str],
               row: sa.ColumnElement[Any] | None = None) -> sa.Select[Any]:
    """One statement whose value is the matching rows of `alias` (named `r`) as a JSON array (the database
    builds it), without the `hidden` columns; `row`, when given, is what each row contributes instead."""
    if row is None:
        row = sa.func.to_jsonb(sa.literal_column("r"))
        if hidden:
            row = row.op("-")(sa.cast(postgresql.array(hidden), postgresql.ARRAY(sa.Text)))
    aggregate = sa.func.jsonb_agg(postgresql.aggregate_order_by(row, alias.c.created_at))
    return sa.select(sa.func.coalesce(aggregate, sa.text("'[]'::jsonb"))).select_from(alias).where(where)


def _mentioned_fields(found: list[tuple[Field, sa.ColumnElement[bool]]], alias: Any) -> sa.ColumnElement[Any]:
    """What a row of someone else's that names the user contributes: only its fields holding their email."""
    empty = sa.text("'{}'::jsonb")
    parts = [sa.case((condition, sa.func.jsonb_build_object(f.column, alias.c[f.column])), else_=empty)
             for f, condition in found]
    row = parts[0]
    for part in parts[1:]:
        row = row.op("||")(part)
    return row


@database_errors
async def export_user(conn: AsyncConnection, runtime: Any, user_id: str, db: Database | None = None) -> dict[str, Any]:
    """Everything the tenant holds about the user, as JSON (see the module's docstring): their own rows
    whole, and of other users' rows only the fields that hold their confirmed email."""
    email = await tying_email(conn, runtime, user_id, db)
    await as_tenant(conn, runtime, db)
    data: dict[str, list[Any]] = {}
    for entity in runtime.model.entities:
        alias = runtime.tables[entity.name].alias("r")
        rows: list[Any] = []
        mine = owned(entity, alias, user_id)
        if mine is not None:
            hidden = [f.column for f in entity.fields if f.internal]
            rows += await conn.scalar(_rows_json(alias, mine, hidden)) or []
        found = mentions(entity, alias, email)
        if found:
            where = sa.and_(not_owned(entity, alias, user_id), sa.or_(*(c for _, c in found)))
            rows += await conn.scalar(_rows_json(alias, where, [], _mentioned_fields(found, alias))) or []
        if rows:
            data[entity.name] = rows
    await as_platform(conn)
    return {"tenant": runtime.slug, "user_id": user_id, "exported_at": datetime.now(UTC).isoformat(),
            "data": data, **await platform_records(conn, runtime.tenant_id, user_id)}


async def platform_records(conn: AsyncConnection, tenant_id: str, user_id: str) -> dict[str, Any]:
    """What the platform keeps about a tenant's user: consents, requests, flags and audit entries."""
    from engine.consents import consent_state  # consents build on this module's request plumbing

    tables = catalog.platform_tables()
    requests, flags, audit_log = tables["privacy_requests"], tables["privacy_flags"], tables["audit_log"]

    async def rows(table: sa.Table, where: Any) -> list[Any]:
        alias = table.alias("r")
        return list(await conn.scalar(_rows_json(alias, sa.and_(*where(alias.c)), [])) or [])

    flag_rows = await rows(flags, lambda c: (c.tenant_id == tenant_id, c.user_id == user_id))
    await conn.execute(sa.text(f"SELECT {audit.SCHEMA}.seal(:chain)"), {"chain": tenant_id})  # entries pending too
    return {
        "consents": await consent_state(conn, tenant_id, user_id),
        "privacy_requests": await rows(requests, lambda c: (c.tenant_id == tenant_id, c.user_id == user_id)),
        "privacy_flags": flag_rows[0] if flag_rows else {"restricted": False, "objected": False},
        "audit": await rows(audit_log, lambda c: (c.tenant_id == tenant_id, sa.or_(
            c.record_id == user_id, c.actor_id == user_id, *([c.user_id == user_id] if "user_id" in c else [])))),
    }


@database_errors
async def erase_user(conn: AsyncConnection, runtime: Any, user_id: str, db: Database | None = None) -> dict[str, Any]:
    """Anonymise the user's personal data, disable the account, end its sessions (see the module): every
    personal field of their own rows, and in other users' rows only the fields holding their confirmed email."""
    email = await tying_email(conn, runtime, user_id, db)
    await as_tenant(conn, runtime, db)
    anonymised: dict[str, int] = {}
    for entity in sorted(runtime.model.entities, key=lambda e: e.name == USERS):  # users last: ties need the email
        table = runtime.tables[entity.name]
        count = 0
        mine = owned(entity, table, user_id)
        values = {f.column: v for f in personal_fields(entity) if (v := anonymous(f, table)) is not None}
        if entity.name == USERS:
            values.update(password_hash=sa.null(), roles=sa.text("'{}'"), verified=False)
        if mine is not None and values:
            count += (await conn.execute(table.update().where(mine).values(values))).rowcount
        found = [(f, c, v) for f, c in mentions(entity, table, email) if (v := anonymous(f, table)) is not None]
        if found:
            result = await conn.execute(table.update().where(
                not_owned(entity, table, user_id), sa.or_(*(c for _, c, _ in found))).values(
                {f.column: sa.case((c, v), else_=table.c[f.column]) for f, c, v in found}))
            count += result.rowcount
        if count:
            anonymised[entity.name] = count
    await as_platform(conn)
    revoked = await sessions.revoke(conn, runtime.tenant_id, "erased", user_id=user_id)
    tokens = catalog.platform_tables()["one_time_tokens"]  # mailed links and codes: they hold the address
    await conn.execute(tokens.delete().where(tokens.c.tenant_id == runtime.tenant_id, tokens.c.user_id == user_id))
    await set_flags(conn, runtime, user_id, erased_at=sa.func.now())
    return {"rows_anonymised": anonymised, "sessions_revoked": revoked}


async def set_flags(conn: AsyncConnection, runtime: Any, user_id: str, **values: Any) -> None:
    """Upsert the user's privacy flags and tell every process (NOTIFY of the tenant's slug)."""
    flags = catalog.platform_tables()["privacy_flags"]
    statement = postgresql.insert(flags).values(tenant_id=runtime.tenant_id, user_id=user_id, **values)
    await conn.execute(statement.on_conflict_do_update(index_elements=[flags.c.tenant_id, flags.c.user_id],
                                                       set_=values))
    await conn.execute(sa.select(sa.func.pg_notify(CHANGES_CHANNEL, runtime.slug)))


async def auto_process(conn: AsyncConnection, tenant_id: str) -> bool:
    tenants = catalog.platform_tables()["tenants"]
    found = await conn.scalar(sa.select(tenants.c.settings["privacy"]["auto_process"].as_boolean())
                              .where(tenants.c.id == tenant_id))
    return bool(found)


def request_json(row: Any) -> dict[str, Any]:
    return {"id": str(row.id), "user_id": str(row.user_id), "type": row.type, "status": row.status,
            "reason": row.reason, "due_at": row.due_at.isoformat(), "created_at": row.created_at.isoformat(),
            "processed_at": row.processed_at.isoformat() if row.processed_at else None,
            "processed_by": row.processed_by, "result": row.result}


def _request_columns() -> list[sa.Column[Any]]:
    requests = catalog.platform_tables()["privacy_requests"]
    return [requests.c[c] for c in ("id", "user_id", "type", "status", "reason", "due_at", "created_at",
                                    "processed_at", "processed_by", "result")]


@database_errors
async def file_request(db: Database, runtime: Any, user_id: str, kind: Any, reason: Any = None) -> dict[str, Any]:
    """A user's request, due in 30 days; processed at once when the tenant has enabled auto_process."""
    if kind not in REQUEST_TYPES:
        raise ValidationFailed("unknown request type", details=[Problem("type", f"must be one of {', '.join(REQUEST_TYPES)}")])
    if reason is not None and (not isinstance(reason, str) or len(reason) > 2000):
        raise ValidationFailed("reason must be text", details=[Problem("reason", "is text of at most 2000 characters")])
    requests = catalog.platform_tables()["privacy_requests"]
    async with db.begin() as conn:
        await account_email(conn, runtime, user_id, db)
        row = (await conn.execute(requests.insert().values(
            tenant_id=runtime.tenant_id, user_id=user_id, type=kind, reason=reason,
            due_at=datetime.now(UTC) + timedelta(days=DUE_DAYS)).returning(*_request_columns()))).one()
        await audit.record(conn, "privacy.request_filed", tenant_id=runtime.tenant_id, entity="privacy_requests",
                           record_id=str(row.id), data={"type": kind, "user_id": user_id})
        if await auto_process(conn, runtime.tenant_id):
            return await _process(conn, runtime, str(row.id), "auto", "complete", None, db)
    return request_json(row)


@database_errors
async def process_request(db: Database, runtime: Any, request_id: str, actor: str, decision: str,
                          reason: str | None = None) -> dict[str, Any]:
    """Complete (carry out) or reject a pending request of the tenant, as `actor` (who, for the record)."""
    async with db.begin() as conn:
        return await _process(conn, runtime, request_id, actor, decision, reason, db)


async def _process(conn: AsyncConnection, runtime: Any, request_id: str, actor: str, decision: str,
                   reason: str | None, db: Database) -> dict[str, Any]:
    requests = catalog.platform_tables()["privacy_requests"]
    row = (await conn.execute(sa.select(*_request_columns()).where(
        requests.c.id == request_id, requests.c.tenant_id == runtime.tenant_id).with_for_update())).first()
    if row is None:
        raise PrivacyRequestNotFound(f"tenant '{runtime.slug}' has no privacy request {request_id}")
    if row.status != "pending":
        raise PrivacyRequestClosed(f"the request is already {row.status}")
    user_id = str(row.user_id)
    result: dict[str, Any] = {}
    if decision == "reject":
        result = {"rejected": reason or ""}
    elif row.type == "erasure":
        result = await erase_user(conn, runtime, user_id, db)
    elif row.type in EXPORTS:
        await account_email(conn, runtime, user_id, db)
        result = {"export": f"/auth/v1/privacy/requests/{request_id}/export"}
    else:
        flag, value = FLAG_CHANGES[row.type]
        await set_flags(conn, runtime, user_id, **{flag: value})
        result = {flag: value}
    status = "rejected" if decision == "reject" else "completed"
    done = (await conn.execute(requests.update().where(requests.c.id == request_id).values(
        status=status, processed_at=sa.func.now(), processed_by=actor[:200], result=result)
        .returning(*_request_columns()))).one()
    await audit.record(conn, f"privacy.request_{status}", tenant_id=runtime.tenant_id, entity="privacy_requests",
                       record_id=request_id, data={"type": row.type, "user_id": user_id, "by": actor[:200]})
    return request_json(done)


async def list_requests(db: Database, runtime: Any, *, user_id: str | None = None,
                        status: str | None = None) -> list[dict[str, Any]]:
    requests = catalog.platform_tables()["privacy_requests"]
    conditions = [requests.c.tenant_id == runtime.tenant_id]
    if user_id is not None:
        conditions.append(requests.c.user_id == user_id)
    if status is not None:
        conditions.append(requests.c.status == status)
    async with db.engine.connect() as conn:
        rows = await conn.execute(sa.select(*_request_columns()).where(*conditions).order_by(requests.c.created_at))
    return [request_json(r) for r in rows]


@database_errors
async def request_export(db: Database, runtime: Any, user_id: str, request_id: str) -> dict[str, Any]:
    """The export a completed access or portability request of the user's gives them."""
    requests = catalog.platform_tables()["privacy_requests"]
    async with db.begin() as conn:
        row = (await conn.execute(sa.select(requests.c.type, requests.c.status).where(
            requests.c.id == request_id, requests.c.tenant_id == runtime.tenant_id,
            requests.c.user_id == user_id))).first()
        if row is None or row.type not in EXPORTS:
            raise PrivacyRequestNotFound(f"you have no access or portability request {request_id}")
        if row.status != "completed":
            raise PrivacyRequestClosed(f"the request is {row.status}, not completed")
        exported = await export_user(conn, runtime, user_id, db)
        await audit.record(conn, "privacy.exported", tenant_id=runtime.tenant_id, entity="privacy_requests",
                           record_id=request_id, data={"user_id": user_id})
    return exported


class RestrictedUsers:
    """Which users of a tenant are restricted, held per process and tenant: one query per tenant, then a
    set lookup per request. Trusted while the registry's LISTEN is up; the tenant's NOTIFY (a flag change,
    or any change of the tenant) drops it on every process."""

    def __init__(self, registry: Any) -> None:
        self.registry = registry
        self._sets: dict[str, tuple[asyncio.Event, str, frozenset[str]]] = {}
        self._loads: dict[str, asyncio.Future[frozenset[str]]] = {}  # a tenant's set being read again

    async def restricted(self, runtime: Any, user_id: str) -> bool:
        """Whether the user's processing is restricted. While a tenant's set is read again (after its NOTIFY),
        every request waits for that read: none answers from the set the notice made stale."""
        hub = self.registry.changes
        found = self._sets.get(runtime.slug)
        loading = self._loads.get(runtime.slug)
        if loading is None and found is not None and hub.listening and not found[0].is_set() \
                and found[1] == runtime.tenant_id:
            return user_id in found[2]
        if loading is None:
            event = found[0] if found is not None else asyncio.Event()
            if found is None:
                hub.add([tenant_key(runtime.slug)], event)
            event.clear()  # before the read: a notice during it makes the next request read again
            loading = self._loads[runtime.slug] = asyncio.ensure_future(self._load(runtime, event))
        return user_id in await asyncio.shield(loading)

    async def _load(self, runtime: Any, event: asyncio.Event) -> frozenset[str]:
        flags = catalog.platform_tables()["privacy_flags"]
        try:
            async with self.registry.db.engine.connect() as conn:
                ids = frozenset(str(i) for i in (await conn.execute(sa.select(flags.c.user_id).where(
                    flags.c.tenant_id == runtime.tenant_id, flags.c.restricted.is_(True)))).scalars())
            self._sets[runtime.slug] = (event, runtime.tenant_id, ids)
            return ids
        except BaseException:
            event.set()  # not read: the next request reads again rather than trust the stale set
            raise
        finally:
            self._loads.pop(runtime.slug, None)
