"""`backsaas`: the command line. Every command is a thin shell over engine and platform functions.

The database is `DATABASE_URL` when set, else the embedded PostgreSQL in `./.backsaas/pgdata`
(started here, or joined when `serve` runs it already; stopped when the last process using it exits:
SIGTERM included, which is turned into a normal exit). Only `serve` creates that data directory: any
other command run where there is none stops and says so, instead of initialising an empty database in
the wrong directory. Files the installed package needs (`platform.yaml`, the example schemas) are read
as package resources, so a wheel install runs from any directory.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import inspect
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from importlib import metadata, resources
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

import engine
import functions
import gateway
from engine import catalog, mailer
from engine.billing import operations as billing
from engine.database import Database
from engine.embedded import DATABASE, EmbeddedPostgres, data_directory, ensure_database
from engine.errors import BackSaasError, InvalidInput, MigrationRefused, Problem, SchemaInvalid, TenantNotFound
from engine.hooks import use_functions_dir
from engine.identity.signing import rotate_signing_key
from engine.outbox import settings_from_env as outbox_settings_from_env
from engine.schema import load_schema, load_schema_file, read_schema_text
from engine.storage.deploy import Deployment, PlannedDeploy, deploy_platform, plan_deploy
from engine.storage.deploy import Progress as StepProgress
from engine.storage.planner import MigrationPlan
from functions import deploys, members
from functions.keys import create_api_key, list_api_keys, platform_public_key, revoke_api_key
from functions.tenants import (
    activate_tenant,
    create_tenant,
    delete_tenant,
    purge_tenants,
    restore_tenant,
    reveal_initial_keys,
    suspend_tenant,
)
from functions.users import UserExists, create_platform_admin
from gateway.fairness import queue_seconds_from_env

PACKAGE_DIRS = [str(Path(package.__file__).resolve().parent) for package in (engine, gateway, functions)]
DEMO_SCHEMA = resources.files("gateway") / "schemas" / "blog.yaml"  # the repository's schemas/, shipped in the package
DEMO_TENANT = "demo"
PLATFORM_PATH = "/api/platform"
DEMO_ADMIN = "admin@backsaas.local"

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
T = TypeVar("T")
ACTOR = f"cli:{getpass.getuser()}"


def terminate_normally(signum: int, frame: Any) -> None:
    """SIGTERM -> SystemExit, so exit handlers (the embedded server's stop) run."""
    raise SystemExit(128 + signum)


class DatabaseNotFound(BackSaasError):
    code = "database_not_found"
    status = 404


class PortInUse(BackSaasError):
    code = "port_in_use"
    status = 409


def database_url(*, create: bool = False) -> str:
    """`DATABASE_URL`, else the embedded server of the current directory, started (or joined) now.
    Only `create` (serve) initialises a data directory that does not exist yet."""
    url = os.environ.get("DATABASE_URL")
    if url:
        return url
    pgdata = data_directory(Path.cwd())
    first = not (pgdata / "PG_VERSION").exists()
    if first and not create:
        raise DatabaseNotFound(
            f"no database for {Path.cwd()}: DATABASE_URL is not set and there is no embedded database in {pgdata}",
            hint="run this command in the directory where you ran `backsaas serve` (which creates the embedded "
                 "database), or run `backsaas serve` here first, or set DATABASE_URL to your PostgreSQL server")
    with err.status(f"{'Initialising' if first else 'Starting'} embedded PostgreSQL in {pgdata} ..."):
        server = EmbeddedPostgres.start(pgdata)
        asyncio.run(ensure_database(server.url("postgres"), DATABASE))
    return server.url(DATABASE)


def with_database(work: Callable[[Database], Awaitable[T]], url: str | None = None,
                  platform_progress: StepProgress | None = None) -> T:
    """Run `work` against the platform database, the system tenant deployed first."""
    url = url or database_url()  # before the event loop: starting the embedded server runs one of its own

    async def run() -> T:
        db = await Database.connect(url)
        try:
            await deploy_platform(db, platform_progress, actor=ACTOR)
            return await work(db)
        finally:
            await db.close()

    return asyncio.run(run())


def step_progress(label: str) -> tuple[Progress, StepProgress]:
    bar = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
                   console=err, transient=True)
    task = bar.add_task("", total=None)

    def advance(number: int, total: int, step: Any) -> None:
        bar.update(task, completed=number, total=total, description=step.description)

    return bar, advance


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    return f"{count} {noun if count == 1 else nouns or noun + 's'}"


def print_plan(plan: MigrationPlan, problems: list[Problem]) -> None:
    if not plan.steps:
        out.print("No changes.")
    for number, step in enumerate(plan.steps, start=1):
        flag = " [red](destructive)[/red]" if step.destructive else ""
        out.print(f"[bold]{number}. {step.description}[/bold]{flag}")
        for statement in step.sql:
            out.print(f"   {statement};", highlight=False, markup=False)
    for problem in problems:
        err.print(f"[red]refused:[/red] {problem.path}: {problem.message}", highlight=False)


def read_schema(file: str) -> str:
    """The file's text, checked first: its errors name the file (the engine, given only the text, names the
    tenant), and a bad file is refused before any database is started."""
    source = read_schema_text(file)
    load_schema(source, file)
    return source


@contextmanager
def errors_named_by(file: str | None, slug: str) -> Iterator[None]:
    """Schema errors the engine found in `file`'s text (e.g. a hook that is not installed) name the file."""
    try:
        yield
    except SchemaInvalid as error:
        if file is None or error.source != slug:
            raise
        raise SchemaInvalid(error.details, file) from None


@dataclass(frozen=True)
class CheckedPlan:
    """A plan made with destructive steps allowed, so that the engine's `blockers` are only those no flag
    lifts, and the destructive steps `refused` here in the CLI's words (its flag, not the API's field)."""

    planned: PlannedDeploy
    refused: list[Problem]

    @property
    def problems(self) -> list[Problem]:
        return [*self.planned.plan.blockers, *self.refused]

    def raise_if_refused(self) -> None:
        if self.problems:
            raise MigrationRefused(
                f"the deploy of '{self.planned.slug}' was refused: {plural(len(self.problems), 'problem')}",
                details=self.problems,
                hint="pass --allow-destructive to run the destructive steps" if self.refused else None)


async def check_plan(db: Database, slug: str, source: str, allow_destructive: bool) -> CheckedPlan:
    planned = await plan_deploy(db, slug, source, allow_destructive=True)
    return CheckedPlan(planned, [] if allow_destructive else [
        Problem(step.target, f"{step.description}: destructive, refused without --allow-destructive")
        for step in planned.plan.steps if step.destructive])


# -- commands ---------------------------------------------------------------------------------------


def schema_files(target: Path) -> list[Path]:
    if not target.is_dir():
        return [target]
    files = sorted(p for p in target.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
    if not files:
        raise FileNotFoundError(2, "no .yaml or .yml schema file in this directory", str(target))
    return files


def cmd_schema_check(args: argparse.Namespace) -> int:
    """Check a file, or every schema file of a directory (each reported; exit 1 if any is bad)."""
    bad = 0
    for path in schema_files(Path(args.file)):
        try:
            model = load_schema_file(path, tenant=not args.platform)
        except SchemaInvalid as error:
            err.print(error.report(), highlight=False, markup=False)
            bad += 1
            continue
        names = ", ".join(e.name for e in model.entities)
        out.print(f"{path}: ok ({plural(len(model.entities), 'entity', 'entities')}: {names})")
    return 1 if bad else 0


def cmd_schema_plan(args: argparse.Namespace) -> int:
    source = read_schema(args.file)
    with errors_named_by(args.file, args.tenant):
        checked = with_database(lambda db: check_plan(db, args.tenant, source, args.allow_destructive))
    problems = checked.problems
    if args.json:
        shown = deploys.planned_json(checked.planned)
        out.print_json(json.dumps({**shown, "ok": not problems, "blockers": [p.as_dict() for p in problems]}))
    else:
        out.print(f"Plan for tenant {checked.planned.slug} from version {checked.planned.base_version}:")
        print_plan(checked.planned.plan, problems)
    return 1 if problems else 0


def print_deployment(deployment: Deployment, as_json: bool) -> None:
    if as_json:
        out.print_json(json.dumps(deploys.deployment_json(deployment)))
    elif deployment.changed:
        out.print(f"Tenant {deployment.slug} is at version {deployment.version} "
                  f"({plural(len(deployment.plan.steps), 'step')}).")
    else:
        out.print(f"Tenant {deployment.slug} already runs this schema (version {deployment.version}).")


def cmd_schema_deploy(args: argparse.Namespace) -> int:
    """Plan, then deploy guarded by the plan's base checksum (or `--expect`'s): a deploy made by someone
    else in between makes this one fail with version_conflict instead of clobbering theirs."""
    source = read_schema(args.file)

    async def work(db: Database) -> Deployment:
        checked = await check_plan(db, args.tenant, source, args.allow_destructive)
        checked.raise_if_refused()
        expected = checked.planned.base_checksum if args.expect is None else args.expect
        return await deploys.deploy_version(db, args.tenant, source, expected_checksum=expected,
                                            allow_destructive=args.allow_destructive, actor=ACTOR)

    with errors_named_by(args.file, args.tenant):
        print_deployment(with_database(work), args.json)
    return 0


async def provision(db: Database, slug: str, name: str | None, source: str | None, plan: str | None,
                    progress: StepProgress | None = None) -> tuple[Deployment, dict[str, str]]:
    """A tenant provisioned as the platform's API provisions one, and its two starting keys (shown once):
    `anon` for public clients, `service` for servers."""
    deployment = await create_tenant(db, slug, name=name, source=source, plan=plan, actor=ACTOR, progress=progress)
    return deployment, await reveal_initial_keys(db, slug)


def cmd_tenant_create(args: argparse.Namespace) -> int:
    source = read_schema(args.schema) if args.schema else None
    url = database_url()
    bar, advance = step_progress("Provisioning")
    with bar, errors_named_by(args.schema, args.slug):
        deployment, keys = with_database(lambda db: provision(db, args.slug, args.name, source, args.plan, advance), url)
    if args.json:
        out.print_json(json.dumps({"tenant": deployment.slug, "version": deployment.version, "keys": keys}))
        return 0
    print_deployment(deployment, False)
    for role, key in keys.items():
        out.print(f"  {role} key (shown once): {key}", highlight=False)
    return 0


def cmd_key_create(args: argparse.Namespace) -> int:
    expires = datetime.fromisoformat(args.expires) if args.expires else None
    key = with_database(lambda db: create_api_key(db, args.tenant, args.name, args.role, expires))
    if args.json:
        out.print_json(json.dumps({"name": key.name, "role": key.role, "key": key.key}))
    else:
        out.print(f"Key {key.name} ({key.role}) for {args.tenant}, shown once: {key.key}", highlight=False)
    return 0


def cmd_key_list(args: argparse.Namespace) -> int:
    keys = with_database(lambda db: list_api_keys(db, args.tenant))
    if args.json:
        out.print_json(json.dumps(keys, default=str))
        return 0
    table = Table("name", "role", "prefix", "expires", "revoked")
    for k in keys:
        table.add_row(str(k["name"]), str(k["role"]), str(k["prefix"]), str(k["expires_at"] or ""),
                      str(k["revoked_at"] or ""))
    out.print(table)
    return 0


def cmd_key_revoke(args: argparse.Namespace) -> int:
    with_database(lambda db: revoke_api_key(db, args.tenant, args.name))
    out.print(f"Key {args.name} of {args.tenant} revoked.")
    return 0


def cmd_tenant_list(args: argparse.Namespace) -> int:
    async def work(db: Database) -> list[catalog.TenantRow]:
        async with db.begin() as conn:
            return await catalog.list_tenants(conn)

    tenants = with_database(work)
    if args.json:
        out.print_json(json.dumps([{"id": t.id, "slug": t.slug, "name": t.name, "status": t.status, "plan": t.plan,
                                    "created_at": t.created_at.isoformat()} for t in tenants]))
        return 0
    table = Table("slug", "name", "status", "plan", "created")
    for t in tenants:
        table.add_row(t.slug, t.name, t.status, t.plan, t.created_at.strftime("%Y-%m-%d %H:%M"))
    out.print(table)
    return 0


def cmd_tenant_suspend(args: argparse.Namespace) -> int:
    with_database(lambda db: suspend_tenant(db, args.slug, args.reason))
    out.print(f"Tenant {args.slug} suspended; its sessions are revoked.")
    return 0


def cmd_tenant_activate(args: argparse.Namespace) -> int:
    with_database(lambda db: activate_tenant(db, args.slug))
    out.print(f"Tenant {args.slug} is active again.")
    return 0


def cmd_tenant_delete(args: argparse.Namespace) -> int:
    with_database(lambda db: delete_tenant(db, args.slug))
    out.print(f"Tenant {args.slug} deleted: its APIs answer 404; its data is kept until `backsaas tenant purge`.")
    return 0


def cmd_tenant_restore(args: argparse.Namespace) -> int:
    with_database(lambda db: restore_tenant(db, args.slug))
    out.print(f"Tenant {args.slug} restored.")
    return 0


def cmd_tenant_purge(args: argparse.Namespace) -> int:
    purged = with_database(lambda db: purge_tenants(db, timedelta(days=args.older_than_days)))
    if args.json:
        out.print_json(json.dumps({"purged": purged}))
    else:
        out.print(f"Purged {len(purged)} tenant(s){': ' + ', '.join(purged) if purged else ''}.")
    return 0


def cmd_tenant_show(args: argparse.Namespace) -> int:
    async def work(db: Database) -> dict[str, Any]:
        async with db.begin() as conn:
            tenant = await catalog.find_tenant(conn, args.slug)
            if tenant is None:
                raise TenantNotFound(f"no tenant '{args.slug}'")
            history = await catalog.version_history(conn, tenant.id)
        current = history[-1] if history else None
        return {"id": tenant.id, "slug": tenant.slug, "name": tenant.name, "status": tenant.status,
                "plan": tenant.plan, "created_at": tenant.created_at.isoformat(),
                "version": current.version if current else None, "checksum": current.checksum if current else None,
                "keys": [k["name"] for k in await list_api_keys(db, args.slug) if k["revoked_at"] is None]}

    shown = with_database(work)
    if args.json:
        out.print_json(json.dumps(shown))
        return 0
    table = Table("field", "value", show_header=False)
    for key, value in shown.items():
        table.add_row(key, ", ".join(value) if isinstance(value, list) else str(value))
    out.print(table)
    return 0


def cmd_schema_history(args: argparse.Namespace) -> int:
    history = with_database(lambda db: deploys.history(db, args.tenant))
    if args.json:
        out.print_json(json.dumps(history))
        return 0
    table = Table("version", "checksum", "by", "deployed", "changes")
    for v in history:
        diff = v["diff"].splitlines()
        changes = f"+{sum(1 for line in diff if line.startswith('+') and not line.startswith('+++'))} " \
                  f"-{sum(1 for line in diff if line.startswith('-') and not line.startswith('---'))}"
        table.add_row(str(v["version"]), v["checksum"][:12], v["actor"] or "", v["created_at"][:16], changes)
    out.print(table)
    if args.diff:
        for v in history:
            out.print(v["diff"], highlight=False, markup=False)
    return 0


def cmd_schema_rollback(args: argparse.Namespace) -> int:
    """Deploy an earlier version's source again: planned and checked like any deploy, recorded as a new version."""
    async def work(db: Database) -> Deployment:
        async with db.begin() as conn:
            tenant = await catalog.find_tenant(conn, args.tenant)
            if tenant is None:
                raise TenantNotFound(f"no tenant '{args.tenant}'")
            history = await catalog.version_history(conn, tenant.id)
        current = history[-1] if history else None
        earlier = next((v for v in history if v.version == args.to), None)
        if earlier is not None:  # an unknown version is refused by the rollback itself
            (await check_plan(db, args.tenant, earlier.source, args.allow_destructive)).raise_if_refused()
        return await deploys.rollback(db, args.tenant, args.to, expected_checksum=current.checksum if current else None,
                                      allow_destructive=args.allow_destructive, actor=ACTOR)

    print_deployment(with_database(work), args.json)
    return 0


def cmd_member_invite(args: argparse.Namespace) -> int:
    invitation = with_database(lambda db: members.invite(db, args.tenant, args.email, args.role, actor=members.SYSTEM))
    if args.json:
        out.print_json(json.dumps(invitation))
    else:
        out.print(f"Invited {invitation['email']} to {args.tenant} as {invitation['role']} (until "
                  f"{invitation['expires_at'][:16]}). Token (shown once): {invitation['token']}", highlight=False)
    return 0


def cmd_member_list(args: argparse.Namespace) -> int:
    listed = with_database(lambda db: members.list_members(db, args.tenant))
    if args.json:
        out.print_json(json.dumps(listed))
        return 0
    table = Table("email", "role", "since")
    for member in listed:
        table.add_row(member["email"], member["role"], member["since"][:16])
    out.print(table)
    return 0


def cmd_member_remove(args: argparse.Namespace) -> int:
    with_database(lambda db: members.remove(db, args.tenant, args.email, actor=members.SYSTEM))
    out.print(f"Removed {args.email} from {args.tenant}.")
    return 0


def cmd_billing_sweep(args: argparse.Namespace) -> int:
    done = with_database(lambda db: billing.sweep(db))
    if args.json:
        out.print_json(json.dumps(done))
    else:
        for step, slugs in done.items():
            out.print(f"{step}: {', '.join(slugs) if slugs else '-'}")
    return 0


def cmd_billing_comp(args: argparse.Namespace) -> int:
    shown = with_database(lambda db: billing.comp(db, args.slug, args.plan))
    if args.json:
        out.print_json(json.dumps(shown))
    else:
        out.print(f"Tenant {args.slug} is on {args.plan} without charge.")
    return 0


def cmd_billing_report_usage(args: argparse.Namespace) -> int:
    try:
        through = datetime.fromisoformat(args.through).date() if args.through else None
    except ValueError:
        raise InvalidInput(f"--through must be a date (YYYY-MM-DD), not '{args.through}'",
                           details=[Problem("through", "not a date")]) from None
    reports = with_database(lambda db: billing.report_usage(db, args.tenant, through=through))
    if args.json:
        out.print_json(json.dumps(reports))
    else:
        for report in reports:
            out.print(f"{report['tenant']}: {report['from']} to {report['through']}, "
                      f"{report['amount_cents']} cents ({report['backend']})")
        out.print(f"Reported {plural(len(reports), 'tenant')}.")
    return 0


def cmd_auth_rotate_key(args: argparse.Namespace) -> int:
    kid = with_database(rotate_signing_key)
    out.print(f"New signing key {kid}; tokens signed with the previous key stay valid until they expire.")
    return 0


def cmd_admin_create(args: argparse.Namespace) -> int:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Repeat: ") != password:
            err.print("The passwords differ.")
            return 1
    async def work(db: Database) -> tuple[str, str]:
        return await create_platform_admin(db, args.email, password), await platform_public_key(db)

    user_id, public_key = with_database(work)
    out.print(f"Platform admin {args.email} created (id {user_id}).")
    out.print(f"The platform's anon key (public; Supabase's SDKs take it with {PLATFORM_PATH}): {public_key}",
              highlight=False)
    return 0


def prepare_demo(db: Database) -> Awaitable[dict[str, str]]:
    """The demo tenant (schemas/blog.yaml) and a platform admin whose password is kept in .backsaas/."""
    async def work() -> dict[str, str]:
        login = Path.cwd() / ".backsaas" / "demo-login.json"
        async with db.begin() as conn:
            exists = await catalog.find_tenant(conn, DEMO_TENANT)
        if exists is None or not login.exists():
            if exists is None:
                _, keys = await provision(db, DEMO_TENANT, "Demo blog", DEMO_SCHEMA.read_text(encoding="utf-8"), None)
            else:  # the saved login is gone: issue fresh keys under new names
                suffix = secrets.token_hex(3)
                keys = {role: (await create_api_key(db, DEMO_TENANT, f"{role}-{suffix}", role)).key
                        for role in ("anon", "service")}
            password = secrets.token_urlsafe(12)
            try:
                await create_platform_admin(db, DEMO_ADMIN, password)
            except UserExists:
                password = "(set before this data directory lost its demo-login.json)"
            login.parent.mkdir(parents=True, exist_ok=True)
            login.write_text(json.dumps({"email": DEMO_ADMIN, "password": password,
                                         **{f"{role}_key": key for role, key in keys.items()}}))
            login.chmod(0o600)
        return json.loads(login.read_text())

    return work()


def ensure_port_free(host: str, port: int) -> None:
    """Bind the address as the server will (SO_REUSEADDR), then let go: a port in use stops `serve` before it
    starts a database, deploys or prints a banner for a server that would never listen."""
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise PortInUse(f"cannot listen on {host}:{port}: {exc.strerror}", hint="check --host") from exc
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                raise PortInUse(f"cannot listen on {host}:{port}: {exc.strerror}",
                                hint="stop what is listening there, or choose another port with --port") from exc


TRUSTED_PROXIES_ENV = "BACKSAAS_TRUSTED_PROXIES"


def trusted_proxies(setting: str | None) -> list[str]:
    """The proxies whose `X-Forwarded-For` and `X-Forwarded-Proto` name the client, from a comma list of
    addresses and CIDR networks (`*`: any peer). Why explicit: the client address is what the anonymous
    per-address rate limit counts and what the audit trail records, so a header any peer could send must not
    set it. Empty (the default): no proxy is trusted, and the peer's address is the client's (uvicorn alone
    would trust 127.0.0.1, so that any local process could claim any address)."""
    entries = [entry.strip() for entry in (setting or "").split(",") if entry.strip()]
    bad = []
    for entry in entries:
        if entry == "*":
            continue
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            bad.append(Problem(TRUSTED_PROXIES_ENV, f"'{entry}' is not an address or a network (CIDR)"))
    if bad:
        raise InvalidInput("the trusted proxies are addresses or networks, separated by commas", details=bad,
                           hint="e.g. 10.0.0.0/8,127.0.0.1 (--trusted-proxies or BACKSAAS_TRUSTED_PROXIES)")
    return entries


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    ensure_port_free(args.host, args.port)
    proxies = trusted_proxies(args.trusted_proxies if args.trusted_proxies is not None
                              else os.environ.get(TRUSTED_PROXIES_ENV))
    outbox_settings_from_env()  # a misconfigured outbox (a lease a delivery outlasts) stops it before anything starts
    mailer.MailSettings.from_env()  # so does a malformed BACKSAAS_SMTP_URL or BACKSAAS_PUBLIC_URL
    queue_seconds_from_env()  # and a BACKSAAS_TENANT_QUEUE_SECONDS that is no positive number
    if args.functions_dir:  # in the environment, so that every worker process loads the same directory
        use_functions_dir(args.functions_dir)
    url = database_url(create=True)

    async def bootstrap(db: Database) -> tuple[dict[str, str] | None, str]:
        return (await prepare_demo(db) if args.demo else None), await platform_public_key(db)

    bar, advance = step_progress("Deploying platform.yaml")
    with bar:
        login, public_key = with_database(bootstrap, url, advance)
    base = f"http://{args.host}:{args.port}"
    out.print(f"BackSaas on {base}  (health: {base}/healthz)")
    out.print(f"  platform API: {base}{PLATFORM_PATH}/")
    out.print(f"  platform anon key (public, also at {base}{PLATFORM_PATH}/): {public_key}", highlight=False)
    if login:
        out.print(f"  demo tenant:  {base}/api/tenants/{DEMO_TENANT}/  or  http://{DEMO_TENANT}.localhost:{args.port}/")
        out.print(f"  platform admin login: {login['email']} / {login['password']}")
        out.print(f"  demo anon key:    {login['anon_key']}", highlight=False)
        out.print(f"  demo service key: {login['service_key']}", highlight=False)
        out.print(f"  try: curl -H 'apikey: {login['anon_key']}' {base}/api/tenants/{DEMO_TENANT}/rest/v1/post",
                  highlight=False)
    os.environ["BACKSAAS_DATABASE_URL"] = url
    metrics_dir = metrics_directory(args.workers)
    # uvicorn kills a worker that does not answer its supervisor's ping in time (5 s by default), which a
    # worker still importing on a busy machine does not: it was killed and started again, forever
    patience = ({"timeout_worker_healthcheck": WORKER_PING_SECONDS}
                if "timeout_worker_healthcheck" in inspect.signature(uvicorn.Config).parameters else {})
    try:
        uvicorn.run("gateway.app:app_from_env", factory=True, host=args.host, port=args.port, workers=args.workers,
                    reload=args.reload, reload_dirs=PACKAGE_DIRS if args.reload else None, access_log=False,
                    log_level="warning", timeout_graceful_shutdown=10, proxy_headers=bool(proxies),
                    forwarded_allow_ips=proxies or None, **patience)
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


WORKER_PING_SECONDS = 60


def metrics_directory(workers: int) -> str | None:
    """With several workers, `/metrics` adds up every worker's figures from files in `PROMETHEUS_MULTIPROC_DIR`
    (gateway/metrics.py): a fresh directory of this run's (removed at the end) unless the operator named one,
    set before any worker starts."""
    if workers <= 1 or os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return None
    directory = tempfile.mkdtemp(prefix="backsaas-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    return directory


# -- parser -----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="backsaas", description="BackSaas: schema-driven backend-as-a-service.")
    parser.add_argument("--version", action="version", version=f"backsaas {metadata.version('backsaas')}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the HTTP gateway (deploys platform.yaml first)")
    serve.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    serve.add_argument("--reload", action="store_true", help="restart when the code changes (development)")
    serve.add_argument("--functions-dir", metavar="DIR", help="the operator's hooks and functions that tenant schemas "
                       "may name (default: $BACKSAAS_FUNCTIONS_DIR, else ./functions when it exists)")
    serve.add_argument("--demo", action="store_true", help="also create the demo tenant (schemas/blog.yaml) and an admin")
    serve.add_argument("--trusted-proxies", metavar="LIST", help="addresses or CIDR networks (comma-separated) of the "
                       "reverse proxies whose X-Forwarded-For names the client (default: $BACKSAAS_TRUSTED_PROXIES, "
                       "else none: the peer's address is the client's)")
    serve.set_defaults(run=cmd_serve)

    schema = commands.add_parser("schema", help="check, plan and apply tenant schemas").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    check = schema.add_parser("check", help="check a schema file; exit 1 and list every error if it is bad")
    check.add_argument("file")
    check.add_argument("--platform", action="store_true",
                       help="check as the system tenant's schema (platform.yaml), which may declare the platform's roles")
    check.set_defaults(run=cmd_schema_check)
    for name, run, text, aliases in (
            ("plan", cmd_schema_plan, "show the steps and SQL a deploy would run (changes nothing)", []),
            ("deploy", cmd_schema_deploy, "deploy a schema to a tenant in one transaction", ["apply"])):
        sub = schema.add_parser(name, help=text, aliases=aliases)
        if name == "deploy":
            sub.add_argument("--expect", help="the deployed version's checksum from `schema plan` (default: plan now)")
        sub.add_argument("--tenant", required=True, help="tenant slug")
        sub.add_argument("file")
        sub.add_argument("--allow-destructive", action="store_true", help="allow drops and narrowing changes")
        sub.add_argument("--json", action="store_true", help="machine-readable output")
        sub.set_defaults(run=run)
    history = schema.add_parser("history", help="a tenant's deployed versions")
    history.add_argument("--tenant", required=True, help="tenant slug")
    history.add_argument("--diff", action="store_true", help="also print each version's diff from the one before")
    history.add_argument("--json", action="store_true", help="machine-readable output (diffs included)")
    history.set_defaults(run=cmd_schema_history)
    rollback = schema.add_parser("rollback", help="deploy an earlier version again (planned like any deploy)")
    rollback.add_argument("--tenant", required=True, help="tenant slug")
    rollback.add_argument("--to", type=int, required=True, help="the version to go back to")
    rollback.add_argument("--allow-destructive", action="store_true", help="allow drops and narrowing changes")
    rollback.add_argument("--json", action="store_true", help="machine-readable output")
    rollback.set_defaults(run=cmd_schema_rollback)

    tenant = commands.add_parser("tenant", help="tenants: create, list, show and their lifecycle").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    create = tenant.add_parser("create", help="provision a tenant: schema, role, first version, keys, plan")
    create.add_argument("slug")
    create.add_argument("--name", help="display name (default: the slug)")
    create.add_argument("--schema", help="schema file to deploy (default: an empty schema)")
    create.add_argument("--plan", help="plan code (default: free)")
    create.add_argument("--json", action="store_true", help="machine-readable output")
    create.set_defaults(run=cmd_tenant_create)
    listing = tenant.add_parser("list", help="list tenants")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(run=cmd_tenant_list)
    suspend = tenant.add_parser("suspend", help="suspend a tenant: its APIs answer 403, its sessions are revoked")
    suspend.add_argument("slug")
    suspend.add_argument("--reason", required=True)
    suspend.set_defaults(run=cmd_tenant_suspend)
    activate = tenant.add_parser("activate", help="reactivate a suspended tenant")
    activate.add_argument("slug")
    activate.set_defaults(run=cmd_tenant_activate)
    show = tenant.add_parser("show", help="a tenant's status, deployed version and keys")
    show.add_argument("slug")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(run=cmd_tenant_show)
    delete = tenant.add_parser("delete", help="soft-delete a tenant (APIs answer 404; data kept until purged)")
    delete.add_argument("slug")
    delete.set_defaults(run=cmd_tenant_delete)
    restore = tenant.add_parser("restore", help="undo a soft delete")
    restore.add_argument("slug")
    restore.set_defaults(run=cmd_tenant_restore)
    purge = tenant.add_parser("purge", help="destroy tenants deleted longer ago than the retention period")
    purge.add_argument("--older-than-days", type=float, default=30.0, help="retention in days (default 30)")
    purge.add_argument("--json", action="store_true", help="machine-readable output")
    purge.set_defaults(run=cmd_tenant_purge)

    auth = commands.add_parser("auth", help="end-user identity").add_subparsers(dest="action", required=True,
                                                                               metavar="ACTION")
    rotate = auth.add_parser("rotate-key", help="new access-token signing key (the previous one still verifies)")
    rotate.set_defaults(run=cmd_auth_rotate_key)

    key = commands.add_parser("key", help="API keys of a tenant").add_subparsers(dest="action", required=True,
                                                                                 metavar="ACTION")
    key_create = key.add_parser("create", help="create an API key (shown once)")
    key_create.add_argument("--tenant", required=True)
    key_create.add_argument("--name", required=True)
    key_create.add_argument("--role", required=True, help="anon, service, or a role of the tenant's schema")
    key_create.add_argument("--expires", help="expiry, ISO 8601 (e.g. 2027-01-01T00:00:00+00:00)")
    key_create.add_argument("--json", action="store_true", help="machine-readable output")
    key_create.set_defaults(run=cmd_key_create)
    key_list = key.add_parser("list", help="list a tenant's keys (never the keys themselves)")
    key_list.add_argument("--tenant", required=True)
    key_list.add_argument("--json", action="store_true", help="machine-readable output")
    key_list.set_defaults(run=cmd_key_list)
    key_revoke = key.add_parser("revoke", help="revoke a key, at once on every server process")
    key_revoke.add_argument("--tenant", required=True)
    key_revoke.add_argument("--name", required=True)
    key_revoke.set_defaults(run=cmd_key_revoke)

    member = commands.add_parser("member", help="a tenant's members: invite, list, remove").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    invite = member.add_parser("invite", help="invite by email (the token is printed once; valid 7 days)")
    invite.add_argument("--tenant", required=True)
    invite.add_argument("--email", required=True)
    invite.add_argument("--role", default="developer", choices=members.ROLES)
    invite.add_argument("--json", action="store_true", help="machine-readable output")
    invite.set_defaults(run=cmd_member_invite)
    member_list = member.add_parser("list", help="a tenant's members and their roles")
    member_list.add_argument("--tenant", required=True)
    member_list.add_argument("--json", action="store_true", help="machine-readable output")
    member_list.set_defaults(run=cmd_member_list)
    member_remove = member.add_parser("remove", help="remove a member (never the last owner)")
    member_remove.add_argument("--tenant", required=True)
    member_remove.add_argument("--email", required=True)
    member_remove.set_defaults(run=cmd_member_remove)

    billing_commands = commands.add_parser("billing", help="billing: the sweep, comps, metered usage").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    sweep = billing_commands.add_parser("sweep", help="suspend tenants past their grace period; end manual trials, "
                                                      "renew or end manual periods")
    sweep.add_argument("--json", action="store_true", help="machine-readable output")
    sweep.set_defaults(run=cmd_billing_sweep)
    comp = billing_commands.add_parser("comp", help="give a tenant a plan without charge")
    comp.add_argument("slug")
    comp.add_argument("--plan", required=True, help="plan code")
    comp.add_argument("--json", action="store_true", help="machine-readable output")
    comp.set_defaults(run=cmd_billing_comp)
    usage = billing_commands.add_parser("report-usage", help="bill metered usage (plans with usage_prices)")
    usage.add_argument("--tenant", help="one tenant (default: every tenant on a metered plan)")
    usage.add_argument("--through", help="the last day to bill, YYYY-MM-DD (default: yesterday)")
    usage.add_argument("--json", action="store_true", help="machine-readable output")
    usage.set_defaults(run=cmd_billing_report_usage)

    from gateway.audit_cli import add_audit_commands  # after gateway.cli is whole: it imports its helpers

    add_audit_commands(commands)

    admin = commands.add_parser("admin", help="platform administrators").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    admin_create = admin.add_parser("create", help="create a platform admin (password prompted)")
    admin_create.add_argument("--email", required=True)
    admin_create.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    admin_create.set_defaults(run=cmd_admin_create)
    return parser


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, terminate_normally)
    from gateway.logs import configure_logging

    configure_logging()
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except BackSaasError as error:
        if getattr(args, "json", False):  # machine-readable: a script reading stdout gets the refusal, not nothing
            out.print_json(json.dumps({"ok": False, "error": error.as_dict()}, default=str))
        if isinstance(error, SchemaInvalid):
            err.print(error.report(), highlight=False, markup=False)
            return 1
        err.print(f"error ({error.code}): {error.message}", highlight=False, markup=False)
        for problem in error.details:
            err.print(f"  {problem}", highlight=False, markup=False)
        if error.hint:
            err.print(f"  hint: {error.hint}", highlight=False, markup=False)
        return 1
    except OSError as error:
        if error.filename is None:
            raise
        # a file named on the command line: missing, a directory, unreadable
        err.print(f"error: {error.strerror}: {error.filename}", highlight=False, markup=False)
        return 1


if __name__ == "__main__":
    sys.exit(main())
