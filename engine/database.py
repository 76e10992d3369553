"""The connection to PostgreSQL: the admin engine, the request pool, and the facts about the server we depend on.

The engine never decides where the database is: the gateway or CLI passes a URL (an external server,
or the embedded one from `engine.embedded`). The one exception is `DATABASE_GATEWAY_URL`, the request
pool's own login on a server where the URL's user is no superuser: every process that serves requests
(gateway workers, CLI commands calling platform functions) needs it alike, so it is read where the pool is.

This module holds wall 3 (DESIGN.md, "The walls"): the request pool never logs in as the platform's
user, and every tenant statement runs as the tenant's role under a statement timeout.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import secrets
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from engine.errors import GatewayRoleUnavailable
from engine.storage import naming

STATEMENT_TIMEOUT_MS = 8000  # every tenant statement's limit unless its plan's `statement_timeout_ms` says otherwise
GATEWAY_URL_VARIABLE = "DATABASE_GATEWAY_URL"
GATEWAY_ATTRIBUTES = "LOGIN NOINHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS"
GATEWAY_LOCK = 0x6761_7465  # advisory lock: preparing the gateway role (exclusive) against tenant creation (shared)
ADMIN_OVERFLOW = 10  # the admin engine's connections beyond its pool size


def quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def async_url(url: str) -> str:
    """`postgres://` and `postgresql://` URLs, as SQLAlchemy's asyncpg dialect wants them."""
    parsed = make_url(url.replace("postgres://", "postgresql://", 1) if url.startswith("postgres://") else url)
    return parsed.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)


def driver_url(url: str) -> str:
    """The URL as asyncpg itself takes it."""
    return make_url(async_url(url)).set(drivername="postgresql").render_as_string(hide_password=False)


class RoleConnection(asyncpg.Connection):
    """An asyncpg connection that remembers the role and statement timeout it has been switched to."""

    __slots__ = ("acting_role", "acting_timeout")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.acting_role: str | None = None
        self.acting_timeout: int | None = None

    async def act_as(self, role: str, timeout_ms: int = STATEMENT_TIMEOUT_MS) -> None:
        """Switch the session to `role` with `timeout_ms` as its statement timeout: one round trip, and
        none at all when the connection already acts so (the usual case: a tenant's busy connections)."""
        if self.acting_role != role or self.acting_timeout != timeout_ms:
            self.acting_role = self.acting_timeout = None  # unknown until the server confirms
            await self.execute(f"SET ROLE {quote_identifier(role)}; SET statement_timeout = {int(timeout_ms)}")
            self.acting_role, self.acting_timeout = role, timeout_ms


_ACT_AS_TENANT = sa.text("SELECT set_config('role', :role, true), set_config('statement_timeout', :timeout, true), "
                          "set_config(:audit_setting, :audit, true)")


async def driver_of(conn: AsyncConnection) -> asyncpg.Connection:
    """The asyncpg connection under `conn`, inside `conn`'s transaction when it has one. SQLAlchemy begins
    its transaction on the server at its own first statement: a statement sent to the driver before any
    of SQLAlchemy's ran, and committed, on its own (an advisory xact lock taken so was let go at once)."""
    driver = (await conn.get_raw_connection()).driver_connection
    if conn.in_transaction() and not driver.is_in_transaction():
        await conn.exec_driver_sql("SELECT")
    return driver


async def act_as_tenant(conn: AsyncConnection, role: str, timeout_ms: int = STATEMENT_TIMEOUT_MS) -> None:
    """Switch the transaction open on `conn` (an admin-engine connection: platform functions, identity,
    GDPR) to a tenant's `role`, with `timeout_ms` (its plan's: `Database.statement_timeout_of`) as the
    statement timeout and the request's actor as the audit context, all three `SET LOCAL` in one round trip.

    Why one function: a bare `SET LOCAL ROLE` lets the tenant's statements run without its plan's timeout
    and leaves the audit triggers (engine/audit.py) without the actor, so every path that runs statements
    on a tenant's tables from a platform connection switches here, the way the request pool's `act_as`
    does for requests. Everything ends with the transaction (or with `RESET ROLE`)."""
    from engine import audit  # audit builds on this module (quote_identifier): imported when first needed

    await conn.execute(_ACT_AS_TENANT, {"role": role, "timeout": str(int(timeout_ms)),
                                        "audit_setting": audit.SETTING, "audit": audit.context_text()})


async def keep_role(conn: asyncpg.Connection) -> None:
    """Pool reset: end any transaction left open, keep the session's role (asyncpg's default `RESET ALL`
    would clear it and cost a round trip per request)."""
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


LANE_IDLE_SECONDS = 60.0  # a connection unused this long in a lane goes back to asyncpg's pool (and its idle timeout)


class Lane:
    """The request path's way into one asyncpg pool: a connection given back clean stays checked out, here,
    and goes to the next request without asyncpg's release.

    Why: asyncpg's `Pool.release` resets the connection in a shielded task, two turns of the event loop and
    about 20 us of CPU per request here, as much as a small read's own Python; a connection given back with
    no error, no transaction open and nobody queued in asyncpg for one needs none of it (`keep_role`, the
    pool's reset, would do nothing). Anything else goes through asyncpg's release as before: a use that
    raised (a cancellation mid-query included), a transaction left open, a closed connection, an acquisition
    waiting in asyncpg's queue (it gets the connection), connections of an earlier generation (`expire`).
    The lane holds only connections asyncpg counts as in use, so the pool's `max_size` still bounds them all;
    one unused for `LANE_IDLE_SECONDS` is handed back when the next comes back, and every one on `close`."""

    __slots__ = ("generation", "idle", "pool", "waiting")

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.idle: list[tuple[Any, float]] = []  # (connection, when it came back), most recent last
        self.waiting = 0  # acquisitions queued in asyncpg's pool
        self.generation = 0  # moved on by `expire`: what was checked out before goes back to asyncpg

    async def acquire(self) -> Any:
        """A connection (asyncpg's pool proxy): the one given back last, else asyncpg's."""
        idle = self.idle
        while idle:
            conn = idle.pop()[0]
            try:
                if not conn.is_closed():
                    return conn
            except asyncpg.InterfaceError:  # closed while kept: asyncpg took it back already
                continue
            await self.pool.release(conn)
        self.waiting += 1
        try:
            return await self.pool.acquire()
        finally:
            self.waiting -= 1

    async def release(self, conn: Any, clean: bool, generation: int) -> None:
        """Give `conn` back; `clean`: its use ended without an exception."""
        if clean and not self.waiting and generation == self.generation:
            try:
                reusable = not conn.is_in_transaction() and not conn.is_closed()
            except asyncpg.InterfaceError:  # closed under the request: asyncpg took it back already
                return
            if reusable:
                now = time.monotonic()
                idle = self.idle
                idle.append((conn, now))
                if idle[0][1] < now - LANE_IDLE_SECONDS:
                    await self.pool.release(idle.pop(0)[0])
                return
        await self.pool.release(conn)

    async def give_back(self) -> None:
        """Every kept connection back to asyncpg, and those in use when they come back (expiry, closing)."""
        self.generation += 1
        kept, self.idle = self.idle, []
        for conn, _ in kept:
            await self.pool.release(conn)

    def idle_count(self) -> int:
        return len(self.idle)


class RoleUse:
    """`Database.as_role`'s context manager (a class: the request path enters one per statement)."""

    __slots__ = ("conn", "db", "generation", "lane", "role")

    def __init__(self, db: Database, role: str) -> None:
        self.db, self.role = db, role

    async def __aenter__(self) -> asyncpg.Connection:
        db, role = self.db, self.role
        platform = role == db.platform_role
        lane = (db._platform_lane if platform else db._lane) or await db.lane(platform=platform)
        self.lane, self.generation = lane, lane.generation
        self.conn = conn = await lane.acquire()
        try:
            await conn.act_as(role, db._timeouts.get(role, db.statement_timeout_ms))
        except BaseException:
            await lane.release(conn, False, self.generation)
            raise
        return conn

    async def __aexit__(self, kind: Any, error: Any, trace: Any) -> None:
        await self.lane.release(self.conn, kind is None, self.generation)


def statement_timeout_of(limits: Mapping[str, Any]) -> int:
    """A plan's `statement_timeout_ms` when it is a positive whole number, else the default."""
    given = limits.get("statement_timeout_ms")
    if isinstance(given, int) and not isinstance(given, bool) and given > 0:
        return given
    return STATEMENT_TIMEOUT_MS


def scram_verifier(password: str, iterations: int = 4096) -> str:
    """What PostgreSQL stores for a SCRAM-SHA-256 password (RFC 5803), computed here so that the
    password itself never travels in an `ALTER ROLE` (which a server may log)."""
    salt = secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    b64 = base64.b64encode
    return (f"SCRAM-SHA-256${iterations}:{b64(salt).decode()}$"
            f"{b64(hashlib.sha256(client_key).digest()).decode()}:{b64(server_key).decode()}")


@dataclass
class Database:
    """SQLAlchemy's async engine for the admin path (deploys, catalog) and plain asyncpg pools for the
    request path, where every round trip counts.

    The admin engine logs in as the URL's user (the platform: it creates schemas and roles). Requests run
    on two pools that log in as roles with no privilege of their own: the tenants' pool as `gateway_role`,
    a member of every tenant's role but the system tenant's; the platform's pool (the system tenant's
    requests) as `platform_gateway_role`, a member of the system tenant's role alone. Each use switches to
    one tenant's role: a statement that runs without that switch, or after a `RESET ROLE`, runs as a role
    that PostgreSQL lets read no tenant's schema and no table of `system`, and no tenant's request
    connection can even `SET ROLE` to the platform's.
    """

    engine: AsyncEngine
    name: str  # the database's name: part of every tenant role's name
    url: str = ""
    pool_size: int = 5
    gateway_url: str | None = None  # the request pools' own login; None: BackSaas manages their roles
    statement_timeout_ms: int = STATEMENT_TIMEOUT_MS
    _pool: asyncpg.Pool | None = None  # the tenants' requests
    _platform_pool: asyncpg.Pool | None = None  # the system tenant's requests
    _pool_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _timeouts: dict[str, int] = field(default_factory=dict)  # tenant role -> its plan's statement timeout
    _logins: tuple[str, str] | None = None  # the request pools' login URLs (tenants, platform), once prepared
    _lane: Lane | None = None  # the request path's way into `_pool` (and `_platform_pool`)
    _platform_lane: Lane | None = None
    _platform_role: str | None = None

    @classmethod
    def open(cls, url: str, *, pool_size: int = 5, gateway_url: str | None = None) -> Database:
        """A pool on `url`; connections are made on first use, so a server that is down now is not fatal.

        `gateway_url` (default: the `DATABASE_GATEWAY_URL` variable) names the request pools' login role
        on a server where the URL's user is no superuser and so cannot manage their roles itself.
        """
        parsed = make_url(async_url(url))
        engine = create_async_engine(parsed, pool_size=pool_size, max_overflow=ADMIN_OVERFLOW)
        gateway_url = gateway_url if gateway_url is not None else os.environ.get(GATEWAY_URL_VARIABLE) or None
        return cls(engine, parsed.database or parsed.username or "postgres", url, pool_size, gateway_url)

    @classmethod
    async def connect(cls, url: str, *, pool_size: int = 5, gateway_url: str | None = None) -> Database:
        """`open`, then make sure the server answers (commands want to fail early)."""
        database = cls.open(url, pool_size=pool_size, gateway_url=gateway_url)
        await database.ping()
        return database

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncConnection]:
        """One transaction: committed when the block ends, rolled back entirely when it raises."""
        async with self.engine.begin() as conn:
            yield conn

    @property
    def gateway_role(self) -> str:
        """The role the tenants' request pool logs in as."""
        if self.gateway_url:
            return make_url(async_url(self.gateway_url)).username or ""
        return naming.gateway_role_name(self.name)

    @property
    def platform_gateway_role(self) -> str:
        """The role the platform's request pool logs in as (with `gateway_url`, the same one: the operator's
        single role then serves both, and is a member of the system tenant's role too)."""
        return self.gateway_role if self.gateway_url else naming.platform_gateway_role_name(self.name)

    def login_role_of(self, slug: str) -> str:
        """The login role whose pool runs tenant `slug`'s requests."""
        return self.platform_gateway_role if slug == naming.SYSTEM_TENANT else self.gateway_role

    @property
    def pool_max(self) -> int:
        return self.pool_size * 2

    @property
    def platform_pool_max(self) -> int:
        return max(2, self.pool_size // 2)  # the platform's API is light; connections are the server's to share

    async def pool(self, *, platform: bool = False) -> asyncpg.Pool:
        """A request pool: the tenants' or the platform's. Both are made once per `Database` (so per
        process), together, even when many first requests ask at the same time; each is bounded."""
        if self._pool is None or self._platform_pool is None:
            async with self._pool_lock:
                if self._pool is None or self._platform_pool is None:
                    tenants, platform_login = self._logins = await self.prepare_gateway_roles()
                    options: dict[str, Any] = {"connection_class": RoleConnection, "reset": keep_role}
                    if self._platform_pool is None:  # a pool made before a failure is kept, never made twice
                        self._platform_pool = await asyncpg.create_pool(driver_url(platform_login), min_size=1,
                                                                        max_size=self.platform_pool_max, **options)
                    if self._pool is None:
                        self._pool = await asyncpg.create_pool(driver_url(tenants), min_size=1, max_size=self.pool_max,
                                                               **options)
        return self._platform_pool if platform else self._pool

    async def prepare_gateway_roles(self) -> tuple[str, str]:
        """Make the request pools' login roles ready; returns the URLs they log in with (tenants, platform).

        With `gateway_url`, the operator made the role; otherwise the URL's user must be a superuser and
        the roles are created (or set right again) here, each with a generated password kept where only
        a superuser reads it (`backsaas_private.credentials`), so every process of an installation logs
        in with the same one. Either way no such role may be a superuser (nor bypass row security), and
        each is made a member of its tenants' roles that exist, tenants made before it included.
        """
        async with self.begin() as conn:
            driver = await driver_of(conn)
            await driver.execute(f"SELECT pg_advisory_xact_lock({GATEWAY_LOCK})")  # tenant creation: shared
            if self.gateway_url:
                logins = (self.gateway_url, self.gateway_url)
            elif not await driver.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"):
                raise GatewayRoleUnavailable(
                    f"the request pool needs a role that is a member of tenant roles only; the user of the "
                    f"database URL is no superuser and cannot create one: create a LOGIN NOINHERIT role, "
                    f"name it in {GATEWAY_URL_VARIABLE} (postgresql://role:password@host/{self.name}), and "
                    "let the URL's user grant it the tenant roles (WITH ADMIN OPTION or CREATEROLE)")
            else:
                logins = (await self._managed_login(driver, self.gateway_role),
                          await self._managed_login(driver, self.platform_gateway_role))
            for role in {self.gateway_role, self.platform_gateway_role}:
                powers = await driver.fetchrow("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = $1", role)
                if powers is None:
                    raise GatewayRoleUnavailable(f"the role '{role}' of {GATEWAY_URL_VARIABLE} does not exist")
                if powers["rolsuper"] or powers["rolbypassrls"]:
                    raise GatewayRoleUnavailable(f"the request pool's role '{role}' is a superuser or bypasses "
                                                 "row security: it must be a role that can do nothing but act as tenants")
            await grant_tenant_roles(driver, self)
        return logins

    async def _managed_login(self, driver: asyncpg.Connection, role: str) -> str:
        await driver.execute("CREATE SCHEMA IF NOT EXISTS backsaas_private; "
                             "CREATE TABLE IF NOT EXISTS backsaas_private.credentials "
                             "(role name PRIMARY KEY, password text NOT NULL)")
        await driver.execute("INSERT INTO backsaas_private.credentials VALUES ($1, $2) ON CONFLICT DO NOTHING",
                             role, secrets.token_urlsafe(32))
        password = await driver.fetchval("SELECT password FROM backsaas_private.credentials WHERE role = $1", role)
        quoted = quote_identifier(role)
        if not await driver.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role):
            await driver.execute(f"CREATE ROLE {quoted}")
        await driver.execute(f"ALTER ROLE {quoted} {GATEWAY_ATTRIBUTES} PASSWORD '{scram_verifier(password)}'")
        return make_url(self.url).set(username=role, password=password).render_as_string(hide_password=False)

    def plan_limits(self, role: str, limits: Mapping[str, Any]) -> None:
        """Remember a tenant's plan limits that the database enforces (its statement timeout)."""
        self._timeouts[role] = statement_timeout_of(limits)

    def as_role(self, role: str) -> RoleUse:
        """A request-pool connection acting as `role` (a tenant's role), with its plan's statement timeout
        (`async with db.as_role(role) as conn`).

        The role and timeout are set per session and kept across uses (`SET` only when they differ), so a
        one-statement request costs one round trip; every use sets what it needs before anything runs,
        and the pool's reset never clears it behind our back. Connections come through the pool's `Lane`.
        """
        return RoleUse(self, role)

    @property
    def platform_role(self) -> str:
        """The system tenant's role (the platform pool's), named once."""
        if self._platform_role is None:
            self._platform_role = self.role(naming.SYSTEM_TENANT)
        return self._platform_role

    async def lane(self, *, platform: bool = False) -> Lane:
        """The `Lane` into a request pool (the pools are made on first use)."""
        pool = await self.pool(platform=platform)
        if platform:
            if self._platform_lane is None:
                self._platform_lane = Lane(pool)
            return self._platform_lane
        if self._lane is None:
            self._lane = Lane(pool)
        return self._lane

    async def expire_connections(self) -> None:
        """Replace the tenants' request connections before their next use (asyncpg's `expire_connections`;
        those kept by the lane go back first, and those in use go back to be replaced)."""
        lane = await self.lane()
        await lane.give_back()
        await lane.pool.expire_connections()

    def role(self, slug: str) -> str:
        return naming.role_name(self.name, slug)

    def connection_counts(self) -> dict[str, dict[str, int]]:
        """Connections this process holds, open and at most, per pool (for `/readyz`)."""
        admin = self.engine.pool
        counts = {"admin": {"open": admin.checkedin() + admin.checkedout(),  # type: ignore[attr-defined]
                            "max": self.pool_size + ADMIN_OVERFLOW}}
        for name, pool, lane, most in (("requests", self._pool, self._lane, self.pool_max),
                                       ("platform", self._platform_pool, self._platform_lane, self.platform_pool_max)):
            idle = (pool.get_idle_size() if pool else 0) + (lane.idle_count() if lane else 0)
            counts[name] = {"open": pool.get_size() if pool else 0, "idle": idle, "max": most}
        return counts

    async def probe(self) -> None:
        """Raise unless a request would be served now: a NEW connection of each request pool's login (what a
        pool makes when it grows or replaces a dead connection), switched to a tenant role as every request
        is, runs a statement; so does the admin engine (tenant, key and keyring lookups). A connection held
        since before the server began shutting down would still answer, which is why `/readyz` does not
        rely on one."""
        await self.pool()
        assert self._logins is not None  # set by pool()
        for login, role in ((self._logins[1], self.role(naming.SYSTEM_TENANT)), (self._logins[0], None)):
            conn = await asyncpg.connect(driver_url(login), connection_class=RoleConnection)
            try:
                if role is not None:
                    await conn.act_as(role, self.statement_timeout_ms)
                await conn.fetchval("SELECT 1")
            finally:
                await conn.close(timeout=1)
        await self.ping()

    def statement_timeout_of(self, role: str) -> int:
        """The statement timeout a tenant role's requests run with (its plan's, else the default)."""
        return self._timeouts.get(role, self.statement_timeout_ms)

    async def ping(self) -> bool:
        async with self.engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))
        return True

    async def close(self) -> None:
        for lane in (self._lane, self._platform_lane):
            if lane is not None:
                await lane.give_back()  # asyncpg's close waits for every connection checked out
        for pool in (self._pool, self._platform_pool):
            if pool is not None:
                await pool.close()
        await self.engine.dispose()


async def grant_tenant_roles(driver: asyncpg.Connection, db: Database) -> None:
    """Make each request pool's login role a member of its tenants' roles it is not yet a member of
    (tenants made before it, or before this installation had it): the tenants' login gets every tenant
    role but the system tenant's, the platform's login the system tenant's. A membership it should not
    hold (a tenants' login in the platform's role) is taken back.

    Only roles that are exactly tenant roles qualify: no login, no superuser, named by `naming`."""
    if not await driver.fetchval("SELECT to_regclass('system.tenants') IS NOT NULL"):
        return  # the platform is not deployed yet: `create_tenant_schema` grants each role as it is made
    system = db.role(naming.SYSTEM_TENANT)
    tenants = [db.role(r["slug"]) for r in await driver.fetch("SELECT slug FROM system.tenants WHERE slug <> $1",
                                                              naming.SYSTEM_TENANT)]
    script = []
    for login, names in ((db.gateway_role, tenants), (db.platform_gateway_role, [system])):
        missing = await driver.fetch(
            "SELECT r.rolname FROM pg_roles r WHERE r.rolname = ANY($1::text[]) AND NOT r.rolcanlogin "
            "AND NOT r.rolsuper AND NOT r.rolbypassrls AND NOT pg_has_role($2, r.oid, 'MEMBER')", names, login)
        if missing:
            script.append(f"GRANT {', '.join(quote_identifier(r['rolname']) for r in missing)} "
                          f"TO {quote_identifier(login)}")
    if db.gateway_role != db.platform_gateway_role and await driver.fetchval(
            "SELECT 1 FROM pg_auth_members WHERE roleid = to_regrole($1) AND member = to_regrole($2)",
            system, db.gateway_role):
        script.append(f"REVOKE {quote_identifier(system)} FROM {quote_identifier(db.gateway_role)}")
    if db.gateway_role != db.platform_gateway_role and await driver.fetchval(  # nor any privilege in `system`
            "SELECT has_schema_privilege($1, 'system', 'USAGE') OR EXISTS (SELECT 1 FROM pg_class c, "
            "aclexplode(c.relacl) a WHERE c.relnamespace = 'system'::regnamespace AND a.grantee = to_regrole($1))",
            db.gateway_role):
        script += [f"REVOKE ALL ON SCHEMA system FROM {quote_identifier(db.gateway_role)}",
                   f"REVOKE ALL ON ALL TABLES IN SCHEMA system FROM {quote_identifier(db.gateway_role)}"]
    if script:
        await driver.execute(";\n".join(script))
