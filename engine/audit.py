"""The audit trail: one hash-chained entry per write, authentication event, platform operation and denial.

Every entry is written in the transaction of the change it records: an entry is never written for a
change that rolled back, and a change never commits without its entry. It is written to
`backsaas_audit.pending`, a table without an index, a guard or a foreign key, and moved into the system
tenant's `audit_log`, chained, once committed (below): the log takes each entry once, whole, in batches.
(Entries written unsealed into the log and updated there by the sealer were inserted into each of its
five indexes twice and left a dead row behind, which the log's vacuum then had to find in every index.)

- Writes to a tenant's tables are captured by statement-level triggers (with transition tables) that
  the deploy puts on every entity not marked `audit: false`. So every surface is covered alike (REST,
  GraphQL, hooks' and functions' `ctx.data`, the auth API, migrations' backfills), old and new values
  come from the database itself, and a write costs one trigger call and one set-based INSERT, whatever
  its row count. Each table has a capture function of its own (`backsaas_audit."capture.<schema>.<table>"`,
  made by the table's deploy for its columns): an entry's fields are expressions planned once per session,
  where one function for every table made a pass over each row's keys (an aggregate over `jsonb_each`).
  Fields marked `sensitive: true`, `pii: true` or internal (password hashes, secrets) are redacted by
  the trigger. Events (`record`) go through `backsaas_audit.append`.
- Who did it (user, API key, roles), the request id, client address and user agent travel in the
  transaction-local setting `backsaas.audit`, which the write statement sets itself: `audited()` adds a
  CTE to the statement, so the context costs no round trip.
- The tenants' request roles have no privilege on `system` (wall 3): the capture functions and `append`
  run as the platform's role (SECURITY DEFINER), and no tenant role may execute them directly or build
  a trigger on them (EXECUTE is revoked from PUBLIC). A tenant can neither forge, edit nor delete an
  entry; `backsaas_audit.note` lets a tenant's own connection add an event to its own chain only.
- Tamper evidence: each tenant's entries form a chain (`seq` 1, 2, ...; `hash` = SHA-256 of the
  previous hash and the entry's canonical form, `backsaas_audit.digest`). `backsaas_audit.seal(chain)`
  moves the chain's committed pending entries (by `created_at`, then id) into the log under the chain's
  head row (`backsaas_audit.heads`, FOR UPDATE; every chain's, in one order, when chain is NULL), in a
  transaction of its own: writers never wait on a head (a
  chain head locked from a write to its commit serialized every writer of a tenant, commit included),
  and concurrent sealers still produce one chain. engine/audit_trail.py seals: the gateway's sealer each
  second, and every reader, `verify`, `heads` and `prune` first. An entry is open to an undetected edit
  only until then.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any

import asyncpg
import orjson
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from engine import catalog
from engine.database import driver_of
from engine.database import quote_identifier as quote
from engine.query.sql import CompiledRead
from engine.schema import load_schema
from engine.schema.model import USERS, Entity, Schema
from engine.storage import naming

SCHEMA = "backsaas_audit"
SETTING = "backsaas.audit"  # the transaction's actor and request, as JSON (set by `audited` statements)
WRITER = "backsaas.audit_writer"  # on while `append` or `prune` writes the log: nothing else may (its guard)
REDACTED = "[redacted]"
TRIGGER_EVENTS = (("insert", "INSERT", "NEW TABLE AS new_rows"),
                  ("update", "UPDATE", "OLD TABLE AS old_rows NEW TABLE AS new_rows"),
                  ("delete", "DELETE", "OLD TABLE AS old_rows"))

# The ASGI scope of the request being served (the gateway's RequestObserver sets it): who, from where.
REQUEST: ContextVar[Mapping[str, Any] | None] = ContextVar("backsaas_audit_request", default=None)


# -- the request's context ------------------------------------------------------------------------------


def header(scope: Mapping[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers") or ():
        if key == name:
            return value.decode("latin-1")[:500]
    return None


def context(scope: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The actor and request of the current request (empty outside one): what every entry carries."""
    scope = scope if scope is not None else REQUEST.get()
    if scope is None:
        return {}
    caller = scope.get("backsaas.caller")
    client = scope.get("client")
    found = {"request_id": scope.get("backsaas.request_id"), "ip": client[0][:45] if client else None,
             "user_agent": header(scope, b"user-agent")}
    if caller is not None:
        found |= {"user_id": caller.user_id, "key_name": caller.key_name, "roles": ",".join(caller.roles)}
    return {k: v for k, v in found.items() if v is not None}


def context_text() -> str:
    return orjson.dumps(context()).decode()


class AuditedStatement(CompiledRead):
    """A write statement that also sets `backsaas.audit` to the request's context (its last parameter),
    through a CTE that inserts nothing: data-modifying CTEs always run, and they finish before the
    statement's AFTER triggers (the audit's) fire."""

    def arguments(self, values: list[Any]) -> list[Any]:
        return [*super().arguments(values), context_text()]


def audited(compiled: CompiledRead) -> CompiledRead:
    """`compiled` (an INSERT, UPDATE or DELETE, or a WITH ... around them) carrying the request's context."""
    if isinstance(compiled, AuditedStatement):
        return compiled
    number = len(compiled.slots) + 1
    cte = (f"backsaas_audit_context AS (INSERT INTO {SCHEMA}.context SELECT "
           f"WHERE set_config('{SETTING}', ${number}::text, true) IS NULL)")
    sql = compiled.sql
    if sql.startswith("WITH RECURSIVE "):
        sql = f"WITH RECURSIVE {cte}, {sql[len('WITH RECURSIVE '):]}"
    elif sql.startswith("WITH "):
        sql = f"WITH {cte}, {sql[len('WITH '):]}"
    else:
        sql = f"WITH {cte} {sql}"
    return AuditedStatement(sql, compiled.slots, compiled.constants)  # `arguments` adds the context


def audited_if_write(compiled: CompiledRead) -> CompiledRead:
    """`audited` for the statements that write (every one of ours has RETURNING or starts with its verb),
    the statement itself for reads. `engine.query.sql.compile_statement` applies it to every statement it
    renders, so REST, GraphQL and the write core's statements carry the context alike."""
    if compiled.sql.startswith(("INSERT ", "UPDATE ", "DELETE ")) or " RETURNING " in compiled.sql:
        return audited(compiled)
    return compiled


# -- appending ------------------------------------------------------------------------------------------


def entry(action: str, *, tenant_id: str | None, data: Mapping[str, Any] | None = None, actor: str | None = None,
          entity: str | None = None, record_id: str | None = None, ip: str | None = None,
          changes: Mapping[str, Any] | None = None, request: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One entry as `append` takes it: the request's context, then what the caller says."""
    found: dict[str, Any] = {**context(request), "action": action, "tenant_id": tenant_id, "entity": entity,
                             "record_id": record_id, "data": pseudonymised(data or {}), "changes": dict(changes or {})}
    if actor is not None:
        found["actor_id"] = found["user_id"] = str(actor)
    if ip:
        found["ip"] = ip[:45]
    return found


async def record(conn: AsyncConnection | asyncpg.Connection, action: str, *, tenant_id: str | None,
                 data: Mapping[str, Any] | None = None, actor: str | None = None, entity: str | None = None,
                 record_id: str | None = None, ip: str | None = None, changes: Mapping[str, Any] | None = None,
                 request: Mapping[str, Any] | None = None) -> None:
    """Add one entry to `tenant_id`'s chain (the platform's own when None) inside `conn`'s transaction.

    `action` is `area.verb` (`auth.login_failed`, `tenant.suspended`, `gdpr.erasure_requested`); `actor` a
    platform account when there is one (else the request's user is the actor); `data` what the event
    needs to be understood, never a secret. `conn` is the platform's connection (SQLAlchemy, `db.begin()`),
    or a tenant's own request connection (asyncpg, acting as the tenant's role), which can only append to
    its own tenant's chain. Either way one statement, in the caller's transaction.
    """
    body = orjson.dumps([entry(action, tenant_id=tenant_id, data=data, actor=actor, entity=entity,
                               record_id=record_id, ip=ip, changes=changes, request=request)], default=str).decode()
    if isinstance(conn, AsyncConnection):  # through SQLAlchemy: it opens the caller's transaction if not yet
        await conn.execute(sa.text(f"SELECT {SCHEMA}.append(CAST(:body AS jsonb))"), {"body": body})
    else:
        await conn.execute(f"SELECT {SCHEMA}.note($1::jsonb)", body)


async def denied(db: Any, tenant_id: str | None, message: str, scope: Mapping[str, Any]) -> None:
    """A permission denial (403), in a transaction of its own (the request itself changed nothing)."""
    async with db.begin() as conn:
        await record(conn, "access.denied", tenant_id=tenant_id, request=scope,
                     data={"method": scope.get("method"), "path": scope.get("path"), "message": message[:500]})


# -- what the deploy installs ---------------------------------------------------------------------------


def redacted_fields(entity: Entity) -> list[str]:
    """The columns whose values never reach the trail: `sensitive: true`, engine-internal fields, and personal
    data (`pii: true`, a user's email). A hash chain cannot be edited afterwards, so what a GDPR erasure
    must remove may never enter it; an entry keeps the row's id, which still names whose row changed."""
    return sorted(entity.column_of(f.name) for f in entity.fields
                  if getattr(f, "sensitive", False) or getattr(f, "pii", False) or f.internal
                  or f.name.endswith("password_hash") or (entity.name == USERS and f.name == "email"))


PERSONAL_KEYS = ("email",)  # what an event's `data` may name a person by


def pseudonymised(data: Mapping[str, Any]) -> dict[str, Any]:
    """An event's data with each personal value replaced by its SHA-256 (`email` -> `email_sha256`, of the
    lower-cased address): whoever already knows an address can still find its failed sign-ins, and nothing
    readable is left in the chain once the person is erased."""
    found = dict(data)
    for key in PERSONAL_KEYS:
        if isinstance(found.get(key), str):
            found[f"{key}_sha256"] = hashlib.sha256(found.pop(key).strip().lower().encode()).hexdigest()
    return found


def audits(entity: Entity) -> bool:
    return bool(getattr(entity, "audit", True))


def capture_function(pg_schema: str, table: str) -> str:
    """The name of table `pg_schema.table`'s capture function (in SCHEMA)."""
    return naming.fit(f"capture.{pg_schema}.{table}")


def triggers_sql(pg_schema: str, tenant_id: str, model: Schema, columns: Mapping[str, Mapping[str, str]],
                 generic: bool = False) -> tuple[str, str]:
    """The audit triggers of every entity of `model` that is audited (and none on those that opt out), and
    the capture function of each, made for its table's `columns` (name: type, as the database has them).
    On the platform's tables a row that belongs to a tenant (its `tenant_id`, or a `tenants` row itself)
    is filed in that tenant's chain: its admins see their keys, members and plan change there.

    Returns the script that makes the functions (to run as the platform's role, their owner) and the
    one that puts the triggers on (as the deploy's own role, which may create triggers on the table)."""
    routed = pg_schema == naming.SYSTEM_TENANT
    functions, triggers = [], []
    for entity in model.entities:
        table = f"{quote(pg_schema)}.{quote(entity.name)}"
        function = f"{SCHEMA}.{quote(capture_function(pg_schema, entity.name))}"
        if audits(entity) and columns.get(entity.name):
            functions.append(capture_sql(function, pg_schema, entity.name, tenant_id,
                                         None if generic else columns[entity.name], redacted_fields(entity), routed))
        for name, event, referencing in TRIGGER_EVENTS:
            trigger = quote(f"backsaas_audit_{name}")
            if audits(entity) and columns.get(entity.name):
                triggers.append(f"CREATE OR REPLACE TRIGGER {trigger} AFTER {event} ON {table} REFERENCING {referencing}"
                                f" FOR EACH STATEMENT EXECUTE FUNCTION {function}()")
            else:
                triggers.append(f"DROP TRIGGER IF EXISTS {trigger} ON {table}")
    return ";\n".join(functions), ";\n".join(triggers)


# The capture functions of tables that are gone (a tenant purged, an entity removed or renamed): no
# trigger calls them any more.
DROP_UNUSED_CAPTURES = f"""DO $$
DECLARE
  f regprocedure;
BEGIN
  FOR f IN SELECT p.oid::regprocedure FROM pg_proc p
            WHERE p.pronamespace = '{SCHEMA}'::regnamespace AND starts_with(p.proname, 'capture.')
              AND NOT EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgfoid = p.oid) LOOP
    EXECUTE 'DROP FUNCTION ' || f;
  END LOOP;
END $$"""


async def install_triggers(conn: AsyncConnection, slug: str, tenant_id: str, model: Schema, *,
                           generic: bool = False) -> None:
    """Put the audit triggers on a tenant's tables, and make their capture functions, as the platform (a
    tenant's role may not: EXECUTE on a capture function is the platform's alone), in the deploy's
    transaction, after its migration (the functions are made for the tables' columns as they are now).

    `generic`: only the functions of the tables there are, each reading a row's fields by its keys, which
    any columns have; the deploy makes them so before a migration (of the model before it), whose
    backfills meet them, and for their columns again after it."""
    pg_schema = naming.schema_name(slug)
    driver = await driver_of(conn)
    rows = await driver.fetch(
        "SELECT c.relname, array_agg(a.attname::text ORDER BY a.attnum) AS columns, "
        "array_agg(format_type(a.atttypid, NULL) ORDER BY a.attnum) AS types FROM pg_class c "
        "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped "
        "WHERE c.relnamespace = to_regnamespace($1) AND c.relkind IN ('r', 'p') GROUP BY c.relname", pg_schema)
    columns = {r["relname"]: dict(zip(r["columns"], r["types"], strict=True)) for r in rows}
    functions, triggers = triggers_sql(pg_schema, str(tenant_id), model, columns,
                                       generic=generic)
    owner = await driver.fetchval(f"SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = '{SCHEMA}'")
    script = [f"SET LOCAL ROLE {owner};\n{functions};\nRESET ROLE"] if functions else []
    if generic:  # the functions alone (none on an installation whose audit schema is not made yet)
        script = script if owner is not None else []
    else:
        script += [triggers] if triggers else []
        if slug == naming.SYSTEM_TENANT:  # the log itself is no change feed: a NOTIFY per entry is all cost,
            # and an entry is never edited (`seal` inserts it whole): it keeps no updated_at of its own
            script += ["DROP TRIGGER IF EXISTS audit_log_notify_change ON system.audit_log",
                       f"DROP TRIGGER IF EXISTS {quote(naming.trigger_name('audit_log'))} ON system.audit_log"]
        script.append(DROP_UNUSED_CAPTURES)
    if script:
        await driver.execute(";\n".join(script))


def literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


# The fields of an entry's canonical form, in the order a jsonb object keeps its keys (shorter first, then
# by bytes), each with how its value is written: `json` by to_json (strings: escaped and quoted), `uuid` quoted
# as it prints (what to_json writes for a uuid, which never needs escaping, without to_json's lookups of the
# type's category and output function at every call), `text` as it prints (numbers, jsonb). Every value is
# text before concat (a cast's output function is found once per plan; concat finds a non-text argument's
# at every call).
CANONICAL = (("at", "at"), ("ip", "json"), ("seq", "text"), ("data", "text"), ("chain", "uuid"), ("roles", "json"),
             ("action", "json"), ("entity", "json"), ("changes", "text"), ("user_id", "uuid"), ("key_name", "json"),
             ("record_id", "uuid"), ("request_id", "json"), ("user_agent", "json"))


def canonical(e: str, seq: str | None = None) -> str:
    """Entry `e`'s canonical form: the text of the jsonb object {seq, chain, at (microseconds since the epoch),
    action, entity, record_id, user_id, key_name, roles, request_id, ip, user_agent, changes, data}, byte
    for byte what `jsonb_build_object(...)::text` prints (tests/test_audit_chain.py holds it to that),
    written as one concat: building the jsonb object to print it was half of what sealing an entry cost.
    `seq`, when given, is the expression of the entry's seq (`seal`'s, before it is stored)."""
    args = []
    for number, (key, kind) in enumerate(CANONICAL):
        args.append(literal(("{" if number == 0 else ", ") + f'"{key}": '))
        args.append(f"((extract(epoch FROM {e}.created_at) * 1000000)::bigint)::text" if kind == "at"
                    else f"coalesce(to_json({e}.{key})::text, 'null')" if kind == "json"
                    else f"coalesce('\"' || {e}.{key}::text || '\"', 'null')" if kind == "uuid"
                    else f"coalesce({seq}::text, 'null')" if key == "seq" and seq is not None
                    else f"coalesce({e}.{key}::text, 'null')")
    return f"concat({', '.join(args)}, '}}')"


def hashed(e: str, seq: str | None = None, prev_hash: str | None = None) -> str:
    """An entry's hash, of record `e` (a `system.audit_log` row): SHA-256 of its previous hash and its
    canonical form. `digest` (what `verify` recomputes) and `seal` both use this one expression; `seal`
    gives the seq and previous hash it is about to store as expressions of its own (`seq`, `prev_hash`)."""
    previous = f"{e}.prev_hash" if prev_hash is None else prev_hash
    return f"encode(sha256(convert_to(coalesce({previous}, '') || {canonical(e, seq)}, 'UTF8')), 'hex')"


COLUMNS = ("tenant_id, chain, action, entity, record_id, changes, data, user_id, key_name, roles, request_id, ip, "
           "user_agent")
PENDING = f"{SCHEMA}.pending"  # where entries wait for `seal` (see the module)
# An entry's columns as `seal` moves it into the log (its seq, prev_hash and hash apart)
MOVED = f"id, created_at, actor_id, {COLUMNS}"
MOVED_COLUMNS = ", ".join(f"e.{c.strip()}" for c in COLUMNS.split(","))
# An entry's actor and request, from the capture's one variable `ctx` (the transaction's `backsaas.audit`)
CONTEXT = ("(ctx ->> 'user_id')::uuid, ctx ->> 'key_name', ctx ->> 'roles', ctx ->> 'request_id', ctx ->> 'ip', "
           "ctx ->> 'user_agent'")
FIELDS_PER_CALL = 30  # a call takes at most 100 arguments: an entry's fields in jsonb_build_object calls of 30


# The column types (as format_type names them, arrays of them too) that `IS DISTINCT FROM` compares as they
# are: the types the engine makes columns of (engine/storage/tables.py) and their narrower or wider kin. A
# column of any other type (one without `=`, such as json) is compared by its JSON.
COMPARABLE = frozenset({"uuid", "text", "character varying", "integer", "bigint", "smallint", "double precision",
                        "real", "numeric", "boolean", "date", "timestamp with time zone",
                        "timestamp without time zone", "jsonb"})


def value_of(row: str, column: str, hidden: bool) -> str:
    """Column `column` of transition row `row` as an entry shows it (an argument of jsonb_build_object, which
    writes the column's value as to_jsonb does): `[redacted]` for a hidden field's non-null one."""
    value = f"{row}.{quote(column)}"
    return f"CASE WHEN {value} IS NULL THEN 'null'::jsonb ELSE '\"{REDACTED}\"'::jsonb END" if hidden else value


def changes(action: str, columns: Mapping[str, str], hidden: list[str]) -> str:
    """The changed fields {field: {old, new}} of one row of the transition tables (`o` old, `n` new), for a
    table of `columns` (name: type), built as jsonb from the typed columns: no jsonb of the whole row made
    and read back by key, no text parsed (a single-row update of one field of the blog's `post` took about
    135 µs of database CPU with the jsonb capture, 112 µs with this one, 60 µs with a trigger doing nothing).
    An update names the fields whose value differs, compared as their type compares (`updated_at` is no
    change of its own)."""
    fields = [c for c in columns if c != "updated_at"]
    if not fields:
        return "'{}'::jsonb"

    def pair(c: str) -> str:
        old = "NULL" if action == "create" else value_of("o", c, c in hidden)
        new = "NULL" if action == "delete" else value_of("n", c, c in hidden)
        return f"jsonb_build_object('old', {old}, 'new', {new})"

    if action == "update":
        def distinct(c: str) -> str:
            old, new = f"o.{quote(c)}", f"n.{quote(c)}"
            if columns[c].removesuffix("[]") not in COMPARABLE:
                old, new = f"to_jsonb({old})", f"to_jsonb({new})"
            return f"{old} IS DISTINCT FROM {new}"
        return "(" + " || ".join(f"CASE WHEN {distinct(c)} THEN jsonb_build_object({literal(c)}, {pair(c)}) "
                                 "ELSE '{}'::jsonb END" for c in fields) + ")"
    chunks = [", ".join(f"{literal(c)}, {pair(c)}" for c in fields[i:i + FIELDS_PER_CALL])
              for i in range(0, len(fields), FIELDS_PER_CALL)]  # a call takes at most 100 arguments
    return "(" + " || ".join(f"jsonb_build_object({chunk})" for chunk in chunks) + ")"


def captured(action: str, entity: str, tenant_id: str, columns: Mapping[str, str] | None, hidden: list[str],
             routed: bool) -> str:
    """A capture function's statement for `action`: a pending entry per row of the transition table(s),
    with the changed fields and the transaction's context. The fields are read from the rows' columns, for
    the table's `columns`; with None (a deploy's migration is about to add, drop or rename some:
    `install_triggers`' `generic`), from each row's jsonb by `diff`'s pass over its keys."""
    chain = f"'{tenant_id}'::uuid"
    if columns is None:
        rows = {"create": "SELECT n.id, NULL::jsonb AS o, to_jsonb(n.*) AS n FROM new_rows n",
                "update": "SELECT n.id, to_jsonb(o.*) AS o, to_jsonb(n.*) AS n FROM new_rows n "
                          "JOIN old_rows o ON o.id = n.id",
                "delete": "SELECT o.id, to_jsonb(o.*) AS o, NULL::jsonb AS n FROM old_rows o"}[action]
        row, record = "x.n" if action != "delete" else "x.o", "x.id"
        owner = f"({row} ->> 'tenant_id')::uuid"
        source = f"({rows} OFFSET 0) x"
        fields = f"{SCHEMA}.diff(x.o, x.n, {literal(orjson.dumps(hidden).decode())}::jsonb)"
    else:
        row = "o" if action == "delete" else "n"
        record, owner = f"{row}.id", f"{row}.tenant_id"
        source = {"create": "new_rows n", "update": "new_rows n JOIN old_rows o ON o.id = n.id",
                  "delete": "old_rows o"}[action]
        fields = changes(action, columns, hidden)
    if routed:  # a platform row of a tenant: its `tenant_id`, or a `tenants` row's own id
        owners = [owner] if columns is None or "tenant_id" in columns else []
        owners += [record] if entity == "tenants" else []
        chain = f"coalesce({', '.join([*owners, chain])})"
    return (f"INSERT INTO {PENDING} ({COLUMNS})\n    SELECT {chain}, {chain}, '{action}', {literal(entity)}, {record}, "
            f"{fields}, '{{}}'::jsonb, {CONTEXT}\n      FROM {source};")


# A capture function's options and its one variable, the transaction's context (bench/audit.py --parts times
# them apart). One variable: each plpgsql assignment is an expression evaluated apart, its plan checked.
CAPTURE_OPTIONS = "SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET enable_nestloop = off"
CAPTURE_DECLARE = (f"DECLARE\n  ctx jsonb := nullif(current_setting('{SETTING}', true), '')::jsonb;"
                   "  -- none: NULL, and so is each ->>")


def capture_sql(function: str, pg_schema: str, entity: str, tenant_id: str, columns: Mapping[str, str] | None,
                hidden: list[str], routed: bool) -> str:
    """The capture function of one table: one set-based INSERT per statement, whatever its row count, of
    its entries, pending (`seal` chains them). Made for the table (its columns, its redacted fields, its
    chain), so an entry's fields are expressions planned once per session, not a pass over each row's keys.

    Planned once per session means planned for the transition tables' size at the first call: after
    single-row updates, an update's old and new rows were paired by a nested loop, so a 5,000-row update on
    that connection took 4.5 s instead of 0.17 s (quadratic: a bulk PATCH of tens of thousands of rows met
    the statement timeout). `enable_nestloop = off` for the function keeps the pairing a hash join whatever
    the first call's size."""
    insert, update, delete = (captured(a, entity, tenant_id, columns, hidden, routed) for a in ("create", "update", "delete"))
    return f"""CREATE OR REPLACE FUNCTION {function}() RETURNS trigger
LANGUAGE plpgsql {CAPTURE_OPTIONS} AS $$
{CAPTURE_DECLARE}
BEGIN
  IF TG_OP = 'INSERT' THEN
    {insert}
  ELSIF TG_OP = 'UPDATE' THEN
    {update}
  ELSE
    {delete}
  END IF;
  RETURN NULL;
END $$;
REVOKE EXECUTE ON FUNCTION {function}() FROM PUBLIC;
COMMENT ON FUNCTION {function}() IS {literal(f"the audit capture of {pg_schema}.{entity} (engine/audit.py)")}"""


def functions_sql(platform_role: str, system_id: str) -> str:
    """The audit's database objects, owned by the platform's role: the chain heads, the canonical form and
    its digest, `append`, `seal`, the log's guard, the tenants' `note`, the capture functions' `diff` and
    the context CTE's target (each table's capture function is made by its deploy: `install_triggers`)."""
    role = quote(platform_role)
    system = naming.SYSTEM_TENANT
    return f"""
CREATE SCHEMA IF NOT EXISTS {SCHEMA} AUTHORIZATION {role};
GRANT USAGE ON SCHEMA {SCHEMA} TO PUBLIC;
SET LOCAL ROLE {role};
CREATE TABLE IF NOT EXISTS {SCHEMA}.heads (
  chain uuid PRIMARY KEY,
  seq bigint NOT NULL DEFAULT 0,
  hash text NOT NULL DEFAULT '',
  anchor_seq bigint NOT NULL DEFAULT 0,
  anchor_hash text NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS {SCHEMA}.context (CONSTRAINT context_is_never_written CHECK (false));
REVOKE ALL ON {SCHEMA}.heads FROM PUBLIC;
GRANT INSERT ON {SCHEMA}.context TO PUBLIC;

-- An entry's id: its first 48 bits the time in milliseconds, then random (UUID version 7), so entries are
-- added at the right edge of the log's primary key, not on a random page of it each (gen_random_uuid).
-- A SQL function of one expression, inlined into the INSERTs that use it (every name qualified: it is
-- parsed where it is inlined). The uuid is made from text and back by casts, not by calls of uuid_in,
-- textout, textin and uuid_out: an executor's cast finds its I/O functions without the privilege check and
-- plan node of a function call (3.7k instructions less per audited insert, callgrind).
CREATE OR REPLACE FUNCTION {SCHEMA}.entry_id() RETURNS uuid LANGUAGE sql VOLATILE PARALLEL SAFE AS $$
  SELECT (pg_catalog.lpad(pg_catalog.to_hex(pg_catalog.int8(pg_catalog.date_part('epoch', pg_catalog.clock_timestamp())
                                                           OPERATOR(pg_catalog.*) 1000)), 12, '0')
          OPERATOR(pg_catalog.||) '7'
          OPERATOR(pg_catalog.||) pg_catalog.substr(pg_catalog.gen_random_uuid()::pg_catalog.text, 16))::pg_catalog.uuid
$$;
ALTER TABLE system.audit_log ALTER COLUMN id SET DEFAULT {SCHEMA}.entry_id();

-- Entries wait in `pending` from the transaction they record until `seal` moves them into the log with their
-- seq and hashes: a write adds one row to a table without an index, a guard or a foreign key, and the log
-- takes each entry once, whole, in batches (an entry written into the log and updated by the sealer was
-- inserted into each of its indexes twice, and left a dead row behind). No role but this one reaches it.
DO $pending$
BEGIN
  IF to_regclass('{PENDING}') IS NULL THEN
    CREATE TABLE {PENDING} (LIKE system.audit_log INCLUDING DEFAULTS INCLUDING CONSTRAINTS);
    ALTER TABLE {PENDING} DROP COLUMN seq, DROP COLUMN prev_hash, DROP COLUMN hash,
                          DROP COLUMN IF EXISTS updated_at, ALTER COLUMN chain SET NOT NULL;
    PERFORM set_config('{WRITER}', 'on', true);  -- an older engine's unsealed entries, in the log: they wait here
    WITH unsealed AS (DELETE FROM system.audit_log a WHERE a.seq IS NULL RETURNING a.*)
    INSERT INTO {PENDING} ({MOVED}) SELECT {MOVED} FROM unsealed;
    PERFORM set_config('{WRITER}', '', true);
  END IF;
END $pending$;
-- Before its catalog row is edited (the REVOKE): a sealer's VACUUM of the table, which holds this lock, then
-- waits for the transaction that edited the row when it records the table's statistics there, and this
-- transaction's ALTER below waited for its lock: a deadlock, seen when a platform deploy met a sealer.
LOCK TABLE {PENDING} IN SHARE UPDATE EXCLUSIVE MODE;
REVOKE ALL ON {PENDING} FROM PUBLIC;
-- Each entry leaves a dead row once sealed; the sealer vacuums (engine/audit_trail.py seal), and nothing
-- is given back to the disk at the end of the table, which would take the lock every writer needs.
ALTER TABLE {PENDING} SET (vacuum_truncate = false);

CREATE OR REPLACE FUNCTION {SCHEMA}.digest(e system.audit_log) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN  -- plpgsql, not sql: its plan is kept for the session (a SQL function's is made again at every call)
  RETURN {hashed("e")};
END $$;

CREATE OR REPLACE FUNCTION {SCHEMA}.append(entries jsonb) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN  -- pending: `seal` chains them once committed, so no writer waits on a head
  INSERT INTO {PENDING} (tenant_id, actor_id, chain, action, entity, record_id, changes, data, user_id, key_name,
                         roles, request_id, ip, user_agent)
  SELECT e.tenant_id, (SELECT u.id FROM system.users u WHERE u.id = e.actor_id),  -- an end user is no platform
         coalesce(e.tenant_id, '{system_id}'::uuid), e.action, e.entity, e.record_id,  -- account (user_id names them)
         coalesce(e.changes, '{{}}'), coalesce(e.data, '{{}}'), e.user_id, e.key_name, e.roles,
         e.request_id, e.ip, e.user_agent
    FROM jsonb_populate_recordset(NULL::system.audit_log, entries) e;
END $$;
REVOKE EXECUTE ON FUNCTION {SCHEMA}.append(jsonb) FROM PUBLIC;

CREATE OR REPLACE FUNCTION {SCHEMA}.seal(chain_id uuid, most integer DEFAULT 10000) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE  -- moves the committed pending entries of chain_id (of every chain when NULL) into the log, each chain's
  -- after its head, under the heads' locks: one sealer at a time per chain, whichever chains it seals
  chains uuid[];
  c uuid;
  r {PENDING};
  open_chain uuid;
  head_seq bigint;
  head_hash text;
  ids uuid[] := '{{}}';  -- per entry, in the chains' order: its id, seq, previous hash and hash
  seqs bigint[] := '{{}}';
  prevs text[] := '{{}}';
  hashes text[] := '{{}}';
  heads uuid[] := '{{}}';  -- per chain sealed: the chain, and the seq and hash of its last entry
  head_seqs bigint[] := '{{}}';
  head_hashes text[] := '{{}}';
BEGIN
  chains := CASE WHEN chain_id IS NULL THEN ARRAY(SELECT DISTINCT p.chain FROM {PENDING} p ORDER BY 1)
                 ELSE ARRAY[chain_id] END;
  FOREACH c IN ARRAY chains LOOP  -- in one order, so that two sealers of several chains never wait on each other
    PERFORM FROM {SCHEMA}.heads h WHERE h.chain = c FOR UPDATE;
    IF NOT FOUND THEN
      INSERT INTO {SCHEMA}.heads (chain, seq, hash)  -- a chain's first seal, or its head row lost: from its end
      SELECT c, coalesce(max(a.seq), 0), coalesce((array_agg(a.hash ORDER BY a.seq DESC))[1], '')
        FROM system.audit_log a WHERE a.chain = c
      ON CONFLICT DO NOTHING;
      PERFORM FROM {SCHEMA}.heads h WHERE h.chain = c FOR UPDATE;
    END IF;
  END LOOP;
  -- a statement after the locks: it sees what a sealer that held them before us moved (read committed).
  -- Per entry its seq, previous hash and hash are worked out here; `moved` then moves every chain's entries
  -- with one statement (a statement per chain scanned `pending` once per chain: a seal of 2,000 entries
  -- spread over a thousand chains cost 7 to 26 times as much per entry as over one, bench/audit.py --parts).
  FOR r IN SELECT p.* FROM {PENDING} p WHERE p.chain IN (SELECT unnest(chains))  -- hashed: chains may be many
            ORDER BY p.chain, p.created_at, p.id LIMIT most LOOP
    IF r.chain IS DISTINCT FROM open_chain THEN
      IF open_chain IS NOT NULL THEN
        head_seqs := head_seqs || head_seq;
        head_hashes := head_hashes || head_hash;
      END IF;
      SELECT h.seq, h.hash INTO head_seq, head_hash FROM {SCHEMA}.heads h WHERE h.chain = r.chain;
      open_chain := r.chain;
      heads := heads || open_chain;
    END IF;
    prevs := prevs || head_hash;
    head_seq := head_seq + 1;
    head_hash := {hashed("r", seq="head_seq", prev_hash="head_hash")};  -- `digest`'s expression, no call per entry
    ids := ids || r.id;
    seqs := seqs || head_seq;
    hashes := hashes || head_hash;
  END LOOP;
  IF open_chain IS NULL THEN
    RETURN 0;
  END IF;
  RETURN {SCHEMA}.moved(ids, seqs, prevs, hashes, heads, head_seqs || head_seq, head_hashes || head_hash);
END $$;
REVOKE EXECUTE ON FUNCTION {SCHEMA}.seal(uuid, integer) FROM PUBLIC;

CREATE OR REPLACE FUNCTION {SCHEMA}.moved(ids uuid[], seqs bigint[], prevs text[], hashes text[], heads uuid[],
                                          head_seqs bigint[], head_hashes text[])
RETURNS integer LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN  -- `seal`'s: pending entries `ids` into the log with their seqs and hashes, and the heads of their chains on
  PERFORM set_config('{WRITER}', 'on', true);
  WITH sealed AS (
    DELETE FROM {PENDING} p
     USING unnest(ids, seqs, prevs, hashes) AS s(id, seq, prev_hash, hash)
     WHERE p.id = s.id
    RETURNING p.*, s.seq, s.prev_hash, s.hash)
  INSERT INTO system.audit_log ({MOVED}, seq, prev_hash, hash)
  SELECT e.id, e.created_at, (SELECT u.id FROM system.users u WHERE u.id = e.actor_id),  -- deleted since: none
         {MOVED_COLUMNS}, e.seq, e.prev_hash, e.hash
    FROM sealed e;
  PERFORM set_config('{WRITER}', '', true);
  UPDATE {SCHEMA}.heads h SET seq = x.seq, hash = x.hash
    FROM unnest(heads, head_seqs, head_hashes) AS x(chain, seq, hash)
   WHERE h.chain = x.chain;
  RETURN cardinality(ids);
END $$;
REVOKE EXECUTE ON FUNCTION {SCHEMA}.moved(uuid[], bigint[], text[], text[], uuid[], bigint[], text[]) FROM PUBLIC;
DROP FUNCTION IF EXISTS {SCHEMA}.moved(uuid, bigint, text, uuid[], text[]);  -- a chain at a time (before)

-- The log names its tenant without a foreign key: a key's check locks the tenant's row FOR KEY SHARE at
-- every entry (one hot row that all of a tenant's writers share: multixacts), and its SET NULL edited the
-- entries of a purged tenant. The entries of a tenant purged keep its id, as their chain does.
ALTER TABLE system.audit_log DROP CONSTRAINT IF EXISTS audit_log_tenant_id_fkey;

CREATE OR REPLACE FUNCTION {SCHEMA}.guard() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN  -- a statement on the log outside any trigger: only `append`, `seal` and `prune`, which say they write
  IF current_setting('{WRITER}', true) IS DISTINCT FROM 'on' THEN
    RAISE EXCEPTION 'the audit log is appended to by backsaas_audit.append alone'
      USING ERRCODE = 'insufficient_privilege';
  END IF;
  RETURN NULL;
END $$;
-- A trigger's write (the capture's insert, a purged tenant's set null) is ours: the WHEN lets it by. The WHEN
-- is parsed again at every statement on the log, the capture's included: so it is the smallest one that
-- tells a trigger's write, and the writer's setting is checked in the function.
CREATE OR REPLACE TRIGGER audit_log_guard BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON system.audit_log
  FOR EACH STATEMENT WHEN (pg_trigger_depth() < 1) EXECUTE FUNCTION {SCHEMA}.guard();
-- Every index of the log is paid by every entry. A platform account's is looked up (a deleted account's
-- entries set null) but only `append` names one: its index holds the entries that name one.
DROP INDEX IF EXISTS system.ix_audit_log_actor_id;
CREATE INDEX IF NOT EXISTS audit_log_actor_id_named ON system.audit_log (actor_id) WHERE actor_id IS NOT NULL;

CREATE OR REPLACE FUNCTION {SCHEMA}.note(entries jsonb) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  tenant uuid;
BEGIN
  SELECT t.id INTO tenant FROM system.tenants t
    JOIN pg_namespace n ON n.nspname = CASE WHEN t.slug = '{system}' THEN '{system}'
                                            ELSE 't_' || replace(t.slug, '-', '_') END
    JOIN pg_roles r ON r.oid = n.nspowner
   WHERE r.rolname = current_setting('role') AND NOT r.rolcanlogin AND NOT r.rolsuper;
  IF tenant IS NULL THEN
    RAISE EXCEPTION 'only a tenant''s role may note an audit event' USING ERRCODE = 'insufficient_privilege';
  END IF;
  PERFORM {SCHEMA}.append((SELECT jsonb_agg(x - 'chain' - 'seq' - 'hash' - 'prev_hash'
                                            || jsonb_build_object('tenant_id', tenant))
                             FROM jsonb_array_elements(entries) x));
END $$;

DROP FUNCTION IF EXISTS {SCHEMA}.change(jsonb, uuid, text, text, jsonb, jsonb, jsonb);
DROP FUNCTION IF EXISTS {SCHEMA}.route(boolean, text, jsonb);

-- The changed fields of a row whose columns are not those its table's capture function was made for (a
-- migration's backfill, before the deploy makes the function again): a pass over the row's keys.
CREATE OR REPLACE FUNCTION {SCHEMA}.diff(o jsonb, n jsonb, hidden jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
  SELECT coalesce(jsonb_object_agg(k, jsonb_build_object(
           'old', CASE WHEN hidden ? k AND (o -> k) <> 'null' THEN '"{REDACTED}"'::jsonb ELSE o -> k END,
           'new', CASE WHEN hidden ? k AND (n -> k) <> 'null' THEN '"{REDACTED}"'::jsonb ELSE n -> k END)), '{{}}'::jsonb)
    FROM jsonb_object_keys(coalesce(n, o)) k
   WHERE k <> 'updated_at' AND (o IS NULL OR n IS NULL OR (o -> k) IS DISTINCT FROM (n -> k))
$$;
RESET ROLE"""


# Capture functions of an older engine (before they kept a hash join, `capture_sql`, while they checked
# every row's keys, while they wrote into the log itself, or while they read fields from the row's jsonb,
# `captured`): made again, once, by `install`.
STALE_CAPTURES = f"""SELECT EXISTS (SELECT FROM pg_proc p WHERE p.pronamespace = to_regnamespace('{SCHEMA}')
                     AND starts_with(p.proname, 'capture.')
                     AND (NOT coalesce('enable_nestloop=off' = ANY (p.proconfig), false)
                          OR strpos(p.prosrc, ' ?& ARRAY[') > 0 OR strpos(p.prosrc, 'INTO system.audit_log') > 0
                          OR strpos(p.prosrc, '(x.n -> ''') > 0 OR strpos(p.prosrc, '(x.o -> ''') > 0))"""


async def install(conn: AsyncConnection, platform_role: str, system_id: str) -> None:
    """Create or update the audit's functions (the platform deploy, after `audit_log` exists). The first
    time, on an installation whose tenants were made before the audit trail existed, their tables get
    their audit triggers too (later deploys keep them, `deploy_in`); so they do on one whose tables shared
    one capture function (`capture()`, before each table had its own), which then goes (its triggers on
    the platform's tables with it: the platform deploy puts them back next, in this transaction)."""
    driver = await driver_of(conn)
    first, shared = await driver.fetchrow(f"SELECT to_regnamespace('{SCHEMA}') IS NULL, "
                                          f"to_regprocedure('{SCHEMA}.capture()') IS NOT NULL")
    await driver.execute(functions_sql(platform_role, str(system_id)))
    if first or shared or await driver.fetchval(STALE_CAPTURES):
        await install_for_existing_tenants(conn)
    if shared:
        await driver.execute(f"DROP FUNCTION {SCHEMA}.capture() CASCADE")


async def install_for_existing_tenants(conn: AsyncConnection) -> None:
    tenants = catalog.platform_tables()["tenants"]
    for tenant in (await conn.execute(sa.select(tenants.c.id, tenants.c.slug)
                                      .where(tenants.c.slug != naming.SYSTEM_TENANT))).all():
        version = await catalog.current_version(conn, tenant.id)
        if version is not None:
            await install_triggers(conn, tenant.slug, str(tenant.id), load_schema(version.source, tenant.slug))

