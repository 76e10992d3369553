"""TenantRuntime: everything compiled from one tenant's deployed schema version, and the registry caching them.

A runtime is built once per (tenant, schema version) and never on the hot path again: the registry
keeps the most recently used ones (LRU) and rebuilds only when the tenant's deployed version changes.
Resolving a tenant costs one query (its row and current version together); compiling costs a YAML
parse and table construction, paid once per version.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any

import asyncpg
import sqlalchemy as sa
import structlog
from sqlalchemy.dialects.postgresql import JSONB

from engine import catalog, onboarding
from engine.authz import Authorizer
from engine.changes import CREDENTIALS, ChangeHub, session_key, tell_interest, tenant_key
from engine.channels import CHANGES_CHANNEL, CHANGES_FEED, PLANS_CHANGED, SESSIONS_CHANNEL, SIGNING_KEYS_CHANGED
from engine.database import Database, driver_url
from engine.errors import TenantNotFound, TenantSuspended, outages_as_unavailable
from engine.heap import Heap
from engine.identity.signing import Keyring, load_keyring
from engine.plans import NO_PLAN, Plan
from engine.query.plan import Relation, relations_of
from engine.query.sql import CompiledRead, compile_statement
from engine.schema import Schema, load_schema
from engine.schema.loader import off_loop
from engine.schema.model import Entity, visible_columns
from engine.storage import naming
from engine.storage.tables import build_metadata
from engine.streams import OpenStreams
from engine.validation import BodyValidator
from engine.writes import EntityHooks, compile_hooks

LISTEN_RETRY_SECONDS = 5.0
MAX_CACHED_KEYS = 10_000  # unknown keys are cached too (as None), so the cache is bounded
log = structlog.get_logger("backsaas.registry")


@dataclass(frozen=True)
class TenantRuntime:
    slug: str
    tenant_id: str
    version: int
    checksum: str
    model: Schema
    pg_schema: str
    role: str
    tables: Mapping[str, sa.Table]
    relations: Mapping[str, Mapping[str, Relation]]
    columns: Mapping[str, Mapping[str, str]]  # entity -> the columns clients may read and filter on
    authorizer: Authorizer
    statements: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)  # compiled per request shape
    validators: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)  # per (entity, partial)
    prepared: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)  # prepared requests

    def body_validator(self, entity: Entity, *, partial: bool) -> BodyValidator:
        """The request-body validator of an entity (create or partial update), compiled on first use."""
        validator = self.validators.get((entity.name, partial))
        if validator is None:
            validator = self.validators[(entity.name, partial)] = BodyValidator(entity, partial=partial)
        return validator

    def statement(self, key: Any, build: Callable[[], sa.Executable]) -> CompiledRead:
        """A statement of this runtime, rendered once per shape (rendering costs more than running it)."""
        found = self.statements.get(key)
        if found is None:
            found = self.statements[key] = compile_statement(build())
        return found

    def hooks(self, entity: str, action: str) -> EntityHooks:
        """The hooks that run when `entity` is written by `action` (resolved once per runtime)."""
        key = ("hooks", entity, action)
        found = self.statements.get(key)
        if found is None:
            model_entity = self.model.entity(entity)
            found = self.statements[key] = compile_hooks(model_entity, action) if model_entity else EntityHooks()
        return found

    @classmethod
    def compile(cls, db: Database, slug: str, tenant_id: str, version: catalog.SchemaVersion) -> TenantRuntime:
        model = load_schema(version.source, f"{slug} v{version.version}")
        pg_schema = naming.schema_name(slug)
        tables = {t.name: t for t in build_metadata(model, pg_schema).tables.values()}
        return cls(slug, tenant_id, version.version, version.checksum, model, pg_schema, db.role(slug),
                   MappingProxyType(tables), MappingProxyType(relations_of(model)),
                   MappingProxyType({e.name: MappingProxyType(visible_columns(e)) for e in model.entities}),
                   Authorizer.for_schema(model, slug, platform=slug == naming.SYSTEM_TENANT))


@dataclass(frozen=True)
class ApiKey:
    tenant_id: str
    role: str
    expires_at: datetime | None
    revoked_at: datetime | None
    name: str = ""


@dataclass(frozen=True)
class TenantState:
    tenant_id: str
    status: str
    version: int | None
    limits: Mapping[str, Any] = field(default_factory=dict)  # the tenant's plan's `limits`
    cors_origins: tuple[str, ...] = ("*",)  # settings.cors.allowed_origins; any origin unless named
    plan: Plan = NO_PLAN  # the tenant's plan (engine/plans.py); `limits` is its `limits`


class RuntimeRegistry:
    """Tenant slug -> compiled runtime, and the tenant's status, cached in this process. A cached runtime
    serves only the tenant (by id) it was compiled for: a slug taken again after a purge gets its own.

    It also carries the change feed of tenants' tables (`CHANGES_FEED`) to `changes`, the hub SSE streams
    and GraphQL subscriptions wait on, and what ends their credentials (tenant changes, revoked sessions
    on `SESSIONS_CHANNEL`, signing keys) to the streams' guards; `streams` counts the open ones. The cache is
    trusted only while a LISTEN connection on `CHANGES_CHANNEL` is up: triggers on the
    system tenant's `tenants` and `schema_versions` tables NOTIFY the slug on every change, from any
    process, and the entry is dropped. Without the listener every request asks the database.
    """

    def __init__(self, db: Database, capacity: int = 512, jwt_secret: str | None = None) -> None:
        self.db = db
        self.capacity = capacity
        self.jwt_secret = jwt_secret  # BACKSAAS_JWT_SECRET: signs instead of the stored key when set
        self._keyring: Keyring | None = None
        self.changes = ChangeHub()
        self.changes.interest = self._interest
        self.streams = OpenStreams()
        self._runtimes: OrderedDict[str, TenantRuntime] = OrderedDict()
        self._states: dict[str, TenantState] = {}
        self._keys: dict[tuple[str, str], ApiKey | None] = {}  # (slug, key hash) -> key
        self._members: dict[tuple[str, str, str], str | None] = {}  # (slug, tenant id, user id) -> membership role
        self._generation = 0  # bumped by every notification: a read that raced one is not cached
        self._listener: asyncpg.Connection | None = None
        self._next_attempt = 0.0
        self._called: set[str] = set()  # tenants whose first API call this process has recorded
        self._ids: dict[str, str] = {}  # slug -> the id of the tenant this process last served under it
        self._loads: dict[Any, tuple[int, asyncio.Future[Any]]] = {}  # what is being read now, and since when
        self._background: set[asyncio.Task[None]] = set()
        self.heap = Heap()  # runtimes are frozen out of the garbage collector's full collections

    def note_call(self, runtime: TenantRuntime) -> None:
        """Onboarding's `first_api_call`: once per tenant and process, after the answer, a write that
        matches nothing once the step is marked (so it costs one statement per tenant per process)."""
        if runtime.tenant_id in self._called or runtime.slug == naming.SYSTEM_TENANT:
            return
        self._called.add(runtime.tenant_id)
        task = asyncio.get_running_loop().create_task(self._mark_first_call(runtime.tenant_id))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _mark_first_call(self, tenant_id: str) -> None:
        try:
            async with self.db.begin() as conn:
                await onboarding.mark(conn, "first_api_call", tenant_id=tenant_id)
        except Exception:  # onboarding is informational: a failed mark is logged and tried by the next process
            log.exception("onboarding.mark_failed", tenant_id=tenant_id)
            self._called.discard(tenant_id)

    async def start(self) -> None:
        """Listen for tenant changes (retried later, with caching off meanwhile, if the database is down)."""
        self._next_attempt = time.monotonic() + LISTEN_RETRY_SECONDS
        try:
            listener = await asyncpg.connect(driver_url(self.db.url))
            await listener.add_listener(CHANGES_CHANNEL, self._changed)
            await listener.add_listener(CHANGES_FEED, self._table_changed)
            await listener.add_listener(SESSIONS_CHANNEL, self._sessions_revoked)
        except (OSError, asyncpg.PostgresError) as exc:
            log.warning("registry.listen_failed", error=str(exc))
            return
        listener.add_termination_listener(self._lost)
        self._states.clear()
        self._listener = listener
        for role, table in self.changes.watched():  # the change feed NOTIFYs those tables to this LISTEN now
            try:
                await self._interest(role, table, True)
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("registry.watch_failed", table=table, error=str(exc))
        self.changes.listening = True
        self.changes.changed_all()  # whatever changed while nobody listened

    async def close(self) -> None:
        if self._listener is not None:
            listener, self._listener = self._listener, None
            listener.remove_termination_listener(self._lost)  # a close asked for is no lost listener
            await listener.close()

    def _changed(self, conn: object, pid: int, channel: str, slug: str) -> None:
        self._generation += 1
        if slug == SIGNING_KEYS_CHANGED:
            self._keyring = None
            self.changes.changed(CREDENTIALS)
            return
        if slug == PLANS_CHANGED:
            self._states.clear()
            return
        self._states.pop(slug, None)
        for key in [k for k in self._keys if k[0] == slug]:
            del self._keys[key]
        for member in [k for k in self._members if k[0] == slug]:
            del self._members[member]
        self.changes.changed(tenant_key(slug))  # after the caches are dropped: the streams' guards check again

    async def _interest(self, role: str, table: str, watched: bool) -> None:
        """The hub's `interest`: recorded under this process's LISTEN connection (none: nothing reaches this
        process anyway; `start` records what is watched once it listens again)."""
        listener = self._listener
        if listener is not None:
            await tell_interest(self.db, listener.get_server_pid(), role, table, watched)

    def _sessions_revoked(self, conn: object, pid: int, channel: str, ident: str) -> None:
        self.changes.changed(session_key(ident))

    def _table_changed(self, conn: object, pid: int, channel: str, table: str) -> None:
        self.changes.changed(table)

    def _lost(self, conn: object) -> None:
        log.warning("registry.listener_lost")
        self._listener = None
        self.changes.listening = False
        self.changes.changed(CREDENTIALS)  # the streams' guards check now, then every so often until it is back
        self._states.clear()
        self._keys.clear()
        self._members.clear()
        self._keyring = None

    async def _state(self, slug: str) -> TenantState | None:
        if self._listener is None and time.monotonic() >= self._next_attempt:
            await self.start()
        cached = self._states.get(slug)
        if cached is not None and self._listener is not None:
            return cached
        if len(slug) > naming.MAX_SLUG_LENGTH or not naming.SLUG_PATTERN.match(slug):
            return None  # no tenant can have this name (a NUL, say, which the database would refuse): none asked
        return await self._shared(("state", slug), lambda: self._load_state(slug))

    async def _shared(self, key: Any, load: Callable[[], Awaitable[Any]]) -> Any:
        """`load()`, once for all who ask for `key` at the same time (after a NOTIFY drops an entry, every
        request and open stream of the tenant asks at once), unless a notification came in since that load
        began: it may have changed the answer, so the asker loads afresh."""
        found = self._loads.get(key)
        if found is not None and found[0] == self._generation:
            return await asyncio.shield(found[1])
        loading = asyncio.ensure_future(load())
        self._loads[key] = (self._generation, loading)
        try:
            return await asyncio.shield(loading)
        finally:
            if self._loads.get(key, (0, None))[1] is loading:
                del self._loads[key]

    async def _compile(self, slug: str, tenant_id: str) -> TenantRuntime:
        with outages_as_unavailable():
            async with self.db.engine.connect() as conn:
                version = await catalog.current_version(conn, tenant_id)
        if version is None:  # the tenant was purged between the two reads
            raise TenantNotFound(f"no tenant '{slug}'")
        return await off_loop(TenantRuntime.compile, self.db, slug, tenant_id, version,
                              what=f"the runtime of {slug}")  # CPU-heavy: off the event loop

    async def _load_state(self, slug: str) -> TenantState | None:
        generation = self._generation
        tenants = catalog.platform_tables()["tenants"]
        versions = catalog.platform_tables()["schema_versions"]
        plans = catalog.platform_tables()["plans"]
        latest = (sa.select(sa.func.max(versions.c.version)).where(versions.c.tenant_id == tenants.c.id)
                  .scalar_subquery())
        plan = (sa.select(sa.func.to_jsonb(plans.table_valued(), type_=JSONB)).where(plans.c.code == tenants.c.plan)
                .scalar_subquery())  # the whole row: engine.plans.Plan
        with outages_as_unavailable():
            async with self.db.engine.connect() as conn:
                row = (await conn.execute(sa.select(tenants.c.id, tenants.c.status, latest.label("version"),
                                                    plan.label("plan"),
                                                    tenants.c.settings["cors"]["allowed_origins"].label("origins"))
                                          .where(tenants.c.slug == slug))).first()
        if row is None:
            return None  # unknown slugs are not cached: anyone can ask for any number of them
        tenant_plan = Plan.from_row(row.plan) if isinstance(row.plan, dict) else NO_PLAN
        state = TenantState(str(row.id), row.status, row.version, tenant_plan.limits,
                            tuple(row.origins) if isinstance(row.origins, list) and row.origins else ("*",), tenant_plan)
        self.db.plan_limits(self.db.role(slug), state.limits)  # the statement timeout the requests run with
        if self._ids.setdefault(slug, state.tenant_id) != state.tenant_id:
            await self._slug_reused(slug, state.tenant_id)
        if self._listener is not None and generation == self._generation:
            self._states[slug] = state
        return state

    async def _slug_reused(self, slug: str, tenant_id: str) -> None:
        """The slug now names another tenant (the old one was purged, a new one took its slug): forget all
        this process held for the old one. Its database role was dropped and made again under the same
        name, and pooled connections keep acting as the role they were switched to by name (the dropped
        one), so they are replaced before their next use."""
        log.info("registry.slug_reused", slug=slug, tenant_id=tenant_id)
        self._ids[slug] = tenant_id
        self.heap.dropped(int(self._runtimes.pop(slug, None) is not None))
        for key in [k for k in self._keys if k[0] == slug]:
            del self._keys[key]
        await self.db.expire_connections()

    def knows(self, slug: str) -> bool:
        """Whether `slug` named a tenant in this process before (its state held, or served once): resolving
        it is no probe for names (gateway/probes.py), even when a notification dropped its state."""
        return slug in self._ids or (self._listener is not None and slug in self._states)

    async def cors_origins(self, slug: str) -> tuple[str, ...]:
        """The origins a tenant's browser clients may call from (`("*",)`: any; also for unknown tenants,
        whose requests answer 404 readably)."""
        state = await self._state(slug)
        return state.cors_origins if state is not None else ("*",)

    async def api_key(self, slug: str, hashed: str) -> ApiKey | None:
        """The key with this hash, whichever tenant it belongs to (the caller compares), or None."""
        cache_key = (slug, hashed)
        if self._listener is not None and cache_key in self._keys:
            return self._keys[cache_key]
        return await self._shared(("key", *cache_key), lambda: self._load_key(cache_key))

    async def _load_key(self, cache_key: tuple[str, str]) -> ApiKey | None:
        hashed = cache_key[1]
        generation = self._generation
        keys = catalog.platform_tables()["api_keys"]
        with outages_as_unavailable():
            async with self.db.engine.connect() as conn:
                row = (await conn.execute(sa.select(keys.c.tenant_id, keys.c.role, keys.c.expires_at, keys.c.revoked_at,
                                                    keys.c.name)
                                          .where(keys.c.key_hash == hashed))).first()
        found = ApiKey(str(row.tenant_id), row.role, row.expires_at, row.revoked_at, row.name) if row else None
        if self._listener is not None and generation == self._generation and len(self._keys) < MAX_CACHED_KEYS:
            self._keys[cache_key] = found
        return found

    async def membership_role(self, slug: str, tenant_id: str, user_id: str) -> str | None:
        """The membership role (owner, admin, developer, viewer) platform account `user_id` holds in tenant
        `tenant_id`, or None; cached while the listener is up (a change of the tenant's members NOTIFYs its slug)."""
        cache_key = (slug, tenant_id, user_id)
        if self._listener is not None and cache_key in self._members:
            return self._members[cache_key]
        return await self._shared(("member", *cache_key), lambda: self._load_membership(cache_key))

    async def _load_membership(self, cache_key: tuple[str, str, str]) -> str | None:
        _, tenant_id, user_id = cache_key
        generation = self._generation
        members = catalog.platform_tables()["memberships"]
        try:
            uuid.UUID(user_id)
        except ValueError:
            return None
        with outages_as_unavailable():
            async with self.db.engine.connect() as conn:
                role = await conn.scalar(sa.select(members.c.role).where(members.c.tenant_id == tenant_id,
                                                                         members.c.user_id == user_id))
        if self._listener is not None and generation == self._generation and len(self._members) < MAX_CACHED_KEYS:
            self._members[cache_key] = role
        return role

    async def keyring(self) -> Keyring:
        """The access-token keys, held in memory while the listener is up (reloaded after a rotation)."""
        if self._keyring is not None and self._listener is not None:
            return self._keyring
        generation = self._generation
        with outages_as_unavailable():
            async with self.db.engine.connect() as conn:
                keyring = await load_keyring(conn, self.jwt_secret)
        if self._listener is not None and generation == self._generation:
            self._keyring = keyring
        return keyring

    async def get(self, slug: str) -> TenantRuntime:
        """The runtime of an active tenant; 404 for unknown or deleted, 403 for suspended."""
        return (await self.resolve(slug))[0]

    async def resolve(self, slug: str) -> tuple[TenantRuntime, Mapping[str, Any]]:
        """The runtime of an active tenant and its plan's limits (which change without a deploy)."""
        runtime, plan = await self.resolve_plan(slug)
        return runtime, plan.limits

    async def resolve_plan(self, slug: str) -> tuple[TenantRuntime, Plan]:
        """The runtime of an active tenant and its plan, from memory while the listener is up (the plans
        NOTIFY drops every cached plan, so an edit reaches the next request)."""
        state = await self._state(slug)
        if state is None or state.status in ("deleted", "pending", "failed") or state.version is None:
            raise TenantNotFound(f"no tenant '{slug}'")
        if state.status == "suspended":
            raise TenantSuspended(f"tenant '{slug}' is suspended")
        cached = self._runtimes.get(slug)
        if cached is not None and cached.tenant_id == state.tenant_id and cached.version == state.version:
            self._runtimes.move_to_end(slug)
            return cached, state.plan
        runtime = await self._shared(("runtime", slug, state.tenant_id, state.version),  # once for a cold burst
                                     lambda: self._compile(slug, state.tenant_id))
        previous = self._runtimes.get(slug)
        if previous is not runtime:  # the first of a cold burst's requests installs it
            self._runtimes[slug] = runtime
            dropped = int(previous is not None)
            while len(self._runtimes) > self.capacity:
                self._runtimes.popitem(last=False)
                dropped += 1
            self.heap.settle()  # the runtime stays: out of the full collections that pause every tenant
            self.heap.dropped(dropped)
        return runtime, state.plan
