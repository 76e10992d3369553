"""Reading the audit trail (engine/audit.py writes it): filtered pages and streamed exports, sealing and
verification of a tenant's hash chain, its daily heads, and pruning by the tenant's plan's retention.

Entries are written pending, in the transaction of the change they record (no lock, no wait: a write
pays for one INSERT into a table without indexes); `seal` moves the committed ones of a tenant into the
log, chained (seq, prev_hash, hash), under the chain head's lock. The gateway's `AuditSealer` seals every
chain each `BACKSAAS_AUDIT_SEAL_SECONDS` (1 s), and every reader here seals the chains it reads first,
so no one reads or verifies an entry before it is sealed.

All of it runs on the platform's own connection (the admin engine): `system.audit_log` is out of every
tenant role's reach. Who may ask for which tenant is the caller's business (functions/audit.py,
gateway/audit.py); here a tenant is its id, and `None` means every tenant (platform admins only).
Long reads go through a server-side cursor in batches, so an export never holds the table in memory.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import os
import random
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import structlog

from engine.audit import PENDING, SCHEMA, WRITER
from engine.database import Database, driver_of
from engine.errors import InvalidInput, Problem
from engine.storage.naming import SYSTEM_TENANT

BATCH = 500  # rows a cursor fetches at a time
SEAL_BATCH = 10000  # entries one seal transaction chains at most (the head stays locked that long)
SEAL_INTERVAL_ENV = "BACKSAAS_AUDIT_SEAL_SECONDS"
DEFAULT_SEAL_INTERVAL = 1.0
log = structlog.get_logger("backsaas.audit")
MAX_PAGE = 1000
COLUMNS = ("id", "seq", "created_at", "tenant_id", "action", "entity", "record_id", "user_id", "key_name", "roles",
           "request_id", "ip", "user_agent", "changes", "data", "prev_hash", "hash")
FILTERS = ("actor", "entity", "record_id", "action", "since", "until")


@dataclass(frozen=True)
class Query:
    """What to read: a tenant's entries (or everyone's), filtered; `after` is a page's cursor."""

    tenant_id: str | None
    actor: str | None = None  # a user id or an API key's name
    entity: str | None = None
    record_id: str | None = None
    action: str | None = None  # exact, or a prefix ending in `.` / `*` (e.g. `auth.`)
    since: datetime | None = None
    until: datetime | None = None
    after: tuple[datetime, str] | None = None

    @classmethod
    def parse(cls, tenant_id: str | None, params: Mapping[str, str]) -> Query:
        """The filters as a query string or a function's input gives them; a bad one is a 400 naming it."""
        def when(name: str) -> datetime | None:
            text = params.get(name)
            if not text:
                return None
            try:
                found = datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError:
                raise InvalidInput(f"{name} is not an ISO 8601 time",
                                   details=[Problem(name, f"'{text}' is not a time")]) from None
            return found if found.tzinfo else found.replace(tzinfo=UTC)

        record_id = params.get("record_id") or params.get("row") or None
        if record_id is not None:
            _uuid(record_id, "record_id")
        return cls(tenant_id, params.get("actor") or None, params.get("entity") or None, record_id,
                   params.get("action") or None, when("since"), when("until"), decode_cursor(params.get("cursor")))

    def where(self) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        values: list[Any] = []

        def add(sql: str, value: Any) -> None:
            values.append(value)
            clauses.append(sql.replace("?", f"${len(values)}"))

        if self.tenant_id is not None:
            add("chain = ?::uuid", str(self.tenant_id))
        if self.actor is not None:
            values.append(self.actor)
            clauses.append(f"(user_id::text = ${len(values)} OR key_name = ${len(values)})")
        if self.entity is not None:
            add("entity = ?", self.entity)
        if self.record_id is not None:
            add("record_id = ?::uuid", self.record_id)
        if self.action is not None:
            if self.action.endswith(("*", ".")):
                add("starts_with(action, ?)", self.action.rstrip("*"))
            else:
                add("action = ?", self.action)
        if self.since is not None:
            add("created_at >= ?", self.since)
        if self.until is not None:
            add("created_at < ?", self.until)
        if self.after is not None:
            values += [self.after[0], self.after[1]]
            clauses.append(f"(created_at, id) > (${len(values) - 1}, ${len(values)}::uuid)")
        return (" AND ".join(clauses) or "true"), values


def _uuid(text: str, name: str) -> str:
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise InvalidInput(f"{name} is not a UUID", details=[Problem(name, f"'{text}' is not a UUID")]) from None


def encode_cursor(at: datetime, entry_id: Any) -> str:
    return base64.urlsafe_b64encode(f"{at.isoformat()}|{entry_id}".encode()).decode().rstrip("=")


def decode_cursor(text: str | None) -> tuple[datetime, str] | None:
    if not text:
        return None
    try:
        at, _, entry_id = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode().partition("|")
        return datetime.fromisoformat(at), _uuid(entry_id, "cursor")
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidInput("not a cursor of this trail", details=[Problem("cursor", "is not a cursor")]) from None


def entry_of(record: Mapping[str, Any]) -> dict[str, Any]:
    found = {c: record[c] for c in COLUMNS}
    for name in ("id", "tenant_id", "record_id", "user_id"):
        found[name] = str(found[name]) if found[name] is not None else None
    found["created_at"] = found["created_at"].isoformat()
    for name in ("changes", "data"):
        found[name] = orjson.loads(found[name]) if isinstance(found[name], str) else found[name]
    return found


async def entries(db: Database, query: Query) -> AsyncIterator[dict[str, Any]]:
    """Every entry `query` selects, oldest first, read through a server-side cursor in batches."""
    await seal(db, query.tenant_id)
    where, values = query.where()
    sql = f"SELECT {', '.join(COLUMNS)} FROM system.audit_log WHERE {where} ORDER BY created_at, id"
    async with db.engine.connect() as conn:
        driver = await driver_of(conn)
        async with driver.transaction(readonly=True):
            async for record in driver.cursor(sql, *values, prefetch=BATCH):
                yield entry_of(record)


async def page(db: Database, query: Query, limit: int = 100) -> dict[str, Any]:
    """One page of `query` and the cursor of the next (None at the end)."""
    limit = max(1, min(limit, MAX_PAGE))
    await seal(db, query.tenant_id)
    where, values = query.where()
    async with db.engine.connect() as conn:
        driver = await driver_of(conn)
        rows = await driver.fetch(f"SELECT {', '.join(COLUMNS)} FROM system.audit_log WHERE {where} "
                                  f"ORDER BY created_at, id LIMIT {limit + 1}", *values)
    more = len(rows) > limit
    rows = rows[:limit]
    cursor = encode_cursor(rows[-1]["created_at"], rows[-1]["id"]) if more else None
    return {"entries": [entry_of(r) for r in rows], "next_cursor": cursor}


# -- sealing --------------------------------------------------------------------------------------------


async def seal(db: Database, tenant_id: str | None = None) -> int:
    """Move the committed pending entries of `tenant_id`'s chain (of every chain when None) into the log,
    chained, in transactions of SEAL_BATCH entries at most; returns how many were sealed. Safe from any
    number of processes at once: sealers queue on the heads of the chains they seal, in one order, and
    each sees what the one before it moved. After a round that sealed something, `pending` is vacuumed
    (unless another sealer is at it): each sealed entry left a dead row there, which the next round's
    scan would read again and again until autovacuum came by (a minute apart by default)."""
    chain = str(tenant_id) if tenant_id is not None else None
    sealed = 0
    async with db.engine.connect() as conn:
        driver = await driver_of(conn)
        while True:
            done = await driver.fetchval(f"SELECT {SCHEMA}.seal($1::uuid, $2)", chain, SEAL_BATCH)  # autocommit
            sealed += done
            if done < SEAL_BATCH:
                break
        if sealed:
            await driver.execute(f"VACUUM (SKIP_LOCKED) {PENDING}")
    return sealed


class AuditSealer:
    """Seals every chain each `interval` seconds in the gateway process (see the module): how long an
    entry may stay unsealed, and so open to an edit that `verify` would not see, when nobody reads it."""

    def __init__(self, db: Database, interval: float | None = None) -> None:
        self.db = db
        self.interval = interval if interval is not None else float(
            os.environ.get(SEAL_INTERVAL_ENV) or DEFAULT_SEAL_INTERVAL)
        self.task: asyncio.Task[None] | None = None

    def start(self) -> AuditSealer:
        self.task = asyncio.create_task(self.run())
        return self

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval * random.uniform(0.75, 1.0))  # several processes: spread out
            try:
                await seal(self.db)
            except Exception as exc:  # the database is down: the next round seals what this one did not
                log.warning("audit.seal_failed", error=f"{type(exc).__name__}: {exc}")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


# -- the chain ------------------------------------------------------------------------------------------


@dataclass
class Verification:
    """What `verify` found: the chain checked from its anchor to its head, and the first broken link."""

    tenant_id: str
    entries: int = 0
    first_seq: int = 0
    last_seq: int = 0
    head_hash: str = ""
    broken_at: int | None = None  # the seq of the first entry that does not verify
    problem: str | None = None
    anchor: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.broken_at is None

    def as_dict(self) -> dict[str, Any]:
        return {"tenant_id": self.tenant_id, "ok": self.ok, "entries": self.entries, "first_seq": self.first_seq,
                "last_seq": self.last_seq, "head_hash": self.head_hash, "broken_at": self.broken_at,
                "problem": self.problem, "anchor": self.anchor}


async def verify(db: Database, tenant_id: str) -> Verification:
    """Walk tenant `tenant_id`'s chain in `seq` order from its anchor (what pruning left) and report the
    first broken link: a missing entry (deleted), an entry whose `prev_hash` is not its predecessor's
    hash (reordered or replaced), one whose content no longer gives its hash (edited), or a chain that
    ends before its head says (entries deleted from the end)."""
    result = Verification(str(tenant_id))
    await seal(db, tenant_id)  # what committed up to now is verified; an entry unsealed since is not yet
    sql = (f"SELECT a.seq, a.prev_hash, a.hash, {SCHEMA}.digest(a) AS computed, a.tenant_id, a.chain "
           "FROM system.audit_log a WHERE a.chain = $1::uuid AND a.seq IS NOT NULL ORDER BY a.seq")
    async with db.engine.connect() as conn:
        driver = await driver_of(conn)
        async with driver.transaction(isolation="repeatable_read", readonly=True):
            head = await driver.fetchrow(f"SELECT seq, hash, anchor_seq, anchor_hash FROM {SCHEMA}.heads "
                                         "WHERE chain = $1::uuid", str(tenant_id))
            anchor_seq, previous = (head["anchor_seq"], head["anchor_hash"]) if head else (0, "")
            result.anchor = {"seq": anchor_seq, "hash": previous}
            expected = anchor_seq + 1
            async for row in driver.cursor(sql, str(tenant_id), prefetch=BATCH):
                problem = None
                if row["seq"] != expected:
                    problem = (f"entry {expected} is missing (deleted)" if row["seq"] > expected
                               else f"entry {row['seq']} comes before the chain's anchor {anchor_seq}")
                elif row["prev_hash"] != previous:
                    problem = (f"entry {row['seq']} does not follow entry {row['seq'] - 1}: its prev_hash is not "
                               "that entry's hash (entries reordered or replaced)")
                elif row["computed"] != row["hash"]:
                    problem = f"entry {row['seq']} was altered: its content no longer gives its hash"
                elif row["tenant_id"] is not None and row["tenant_id"] != row["chain"]:
                    problem = f"entry {row['seq']} was moved: its tenant is not its chain's"
                if problem is not None:
                    result.broken_at, result.problem = expected if row["seq"] > expected else row["seq"], problem
                    return result
                result.entries += 1
                result.first_seq = result.first_seq or row["seq"]
                result.last_seq, previous, expected = row["seq"], row["hash"], row["seq"] + 1
            result.head_hash = previous
            if head is not None and (head["seq"] != result.last_seq or head["hash"] != previous) \
                    and not (result.entries == 0 and head["seq"] == anchor_seq):
                result.broken_at = result.last_seq + 1
                result.problem = (f"the chain ends at entry {result.last_seq} but its head is entry {head['seq']}: "
                                  "entries were deleted from the end")
    return result


async def heads(db: Database, tenant_id: str) -> list[dict[str, Any]]:
    """The chain's head at the end of each day (UTC): the last entry's seq and hash. An auditor who keeps
    these can hold the platform to them: `verify` recomputes every hash, and a day's head that differs
    later means the chain was rewritten."""
    await seal(db, tenant_id)
    async with db.engine.connect() as conn:
        driver = await driver_of(conn)
        rows = await driver.fetch(
            "SELECT DISTINCT ON (day) day, seq, hash FROM (SELECT (created_at AT TIME ZONE 'UTC')::date AS day, "
            "seq, hash FROM system.audit_log WHERE chain = $1::uuid AND seq IS NOT NULL) d ORDER BY day, seq DESC",
            str(tenant_id))
    return [{"day": r["day"].isoformat(), "seq": r["seq"], "hash": r["hash"]} for r in rows]


async def prune(db: Database, tenant_id: str, retention_days: int, now: datetime | None = None) -> dict[str, Any]:
    """Delete tenant `tenant_id`'s entries older than `retention_days` (-1: keep forever) from the start of
    its chain, and keep the hash of the last one deleted as the chain's anchor, so what remains still
    verifies. Entries are removed only up to the last old one, in `seq` order: the chain is never holed."""
    if retention_days < 0:
        return {"tenant_id": str(tenant_id), "pruned": 0, "anchor_seq": None}
    cutoff = (now or datetime.now(UTC)) - timedelta(days=retention_days)
    async with db.begin() as conn:
        await conn.exec_driver_sql(f"SELECT set_config('{WRITER}', 'on', true)")  # the log's guard lets it delete
        driver = await driver_of(conn)
        await driver.fetchval(f"SELECT {SCHEMA}.seal($1::uuid, $2)", str(tenant_id), SEAL_BATCH)  # old ones too
        head = await driver.fetchrow(f"SELECT seq FROM {SCHEMA}.heads WHERE chain = $1::uuid FOR UPDATE",
                                     str(tenant_id))
        if head is None:
            return {"tenant_id": str(tenant_id), "pruned": 0, "anchor_seq": None}
        last = await driver.fetchrow("SELECT seq, hash FROM system.audit_log WHERE chain = $1::uuid "
                                     "AND seq IS NOT NULL AND created_at < $2 ORDER BY seq DESC LIMIT 1",
                                     str(tenant_id), cutoff)
        if last is None:
            return {"tenant_id": str(tenant_id), "pruned": 0, "anchor_seq": None}
        status = await driver.execute("DELETE FROM system.audit_log WHERE chain = $1::uuid AND seq <= $2",
                                      str(tenant_id), last["seq"])
        await driver.execute(f"UPDATE {SCHEMA}.heads SET anchor_seq = $2, anchor_hash = $3 WHERE chain = $1::uuid",
                             str(tenant_id), last["seq"], last["hash"])
    return {"tenant_id": str(tenant_id), "pruned": int(status.split()[-1]), "anchor_seq": last["seq"]}


async def retention_days(db: Database) -> dict[str, tuple[str, int]]:
    """Each tenant's audit retention from its plan's `features.audit_retention_days`: {id: (slug, days)};
    -1 (or no such feature) keeps everything, and so does the platform's own chain."""
    async with db.engine.connect() as conn:
        driver = await driver_of(conn)
        rows = await driver.fetch(
            "SELECT t.id, t.slug, CASE WHEN t.slug = $1 THEN -1 "  # the platform's own chain: kept
            "ELSE coalesce((p.features ->> 'audit_retention_days')::int, -1) END AS days "
            "FROM system.tenants t LEFT JOIN system.plans p ON p.code = t.plan", SYSTEM_TENANT)
    return {str(r["id"]): (r["slug"], r["days"]) for r in rows}
