"""`backsaas audit verify | heads | prune | export | seal`: the audit trail from the command line (the
server's own authority, as every CLI command: it runs where the database URL is).

`verify` exits 1 when the chain is broken and names the first broken link; `heads` prints the daily
chain heads to hand to an auditor; `prune` applies each tenant's plan retention
(`features.audit_retention_days`); `export` streams a tenant's entries as CSV or JSON lines; `seal`
chains the committed pending entries of every chain (or one tenant's) now, as each gateway process does
every second (engine/audit_trail.py), for an installation that writes with no gateway running (verify,
heads, prune and export seal first anyway).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from typing import Any

import orjson

from engine import audit_trail
from engine.database import Database
from functions import audit as audit_functions


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from gateway.cli import out, with_database

    async def work(db: Database) -> dict[str, Any]:
        return (await audit_trail.verify(db, await audit_functions.tenant_id_of(db, args.tenant))).as_dict()

    found = with_database(work)
    if args.json:
        out.print_json(json.dumps(found))
    elif found["ok"]:
        out.print(f"The audit chain of {args.tenant} verifies: {found['entries']} entries "
                  f"({found['first_seq']}-{found['last_seq']}), head {found['head_hash'] or '-'}.", markup=False)
    else:
        out.print(f"The audit chain of {args.tenant} is broken at entry {found['broken_at']}: {found['problem']}.",
                  markup=False)
    return 0 if found["ok"] else 1


def cmd_audit_heads(args: argparse.Namespace) -> int:
    from gateway.cli import out, with_database

    async def work(db: Database) -> list[dict[str, Any]]:
        return await audit_trail.heads(db, await audit_functions.tenant_id_of(db, args.tenant))

    found = with_database(work)
    if args.json:
        out.print_json(json.dumps(found))
    else:
        for head in found:
            out.print(f"{head['day']}  {head['seq']:>10}  {head['hash']}", markup=False)
    return 0


def cmd_audit_prune(args: argparse.Namespace) -> int:
    from gateway.cli import out, with_database

    done = with_database(lambda db: audit_functions.prune_all(db, args.tenant))
    if args.json:
        out.print_json(json.dumps(done))
    else:
        for tenant in done:
            kept = "kept forever" if tenant["retention_days"] < 0 else f"{tenant['retention_days']} days"
            out.print(f"{tenant['tenant']}: pruned {tenant['pruned']} ({kept})", markup=False)
    return 0


def cmd_audit_seal(args: argparse.Namespace) -> int:
    from gateway.cli import out, with_database

    async def work(db: Database) -> int:
        tenant_id = await audit_functions.tenant_id_of(db, args.tenant) if args.tenant else None
        return await audit_trail.seal(db, tenant_id)

    sealed = with_database(work)
    if args.json:
        out.print_json(json.dumps({"sealed": sealed}))
    else:
        out.print(f"sealed {sealed} entries", markup=False)
    return 0


def cmd_audit_export(args: argparse.Namespace) -> int:
    from gateway.cli import with_database

    filters = {k: v for k, v in vars(args).items() if k in audit_trail.FILTERS and v is not None}

    async def work(db: Database) -> int:
        query = audit_trail.Query.parse(await audit_functions.tenant_id_of(db, args.tenant), filters)
        count = 0
        writer = csv.writer(sys.stdout) if args.format == "csv" else None
        if writer is not None:
            writer.writerow(audit_trail.COLUMNS)
        async for entry in audit_trail.entries(db, query):
            if writer is not None:
                writer.writerow([orjson.dumps(entry[c]).decode() if c in ("changes", "data") else
                                 ("" if entry[c] is None else entry[c]) for c in audit_trail.COLUMNS])
            else:
                sys.stdout.write(orjson.dumps(entry).decode() + "\n")
            count += 1
        return count

    with_database(work)
    return 0


def add_audit_commands(commands: Any) -> None:
    """The `audit` command group (gateway/cli.py's parser calls this)."""
    group = commands.add_parser("audit", help="the audit trail: verify, heads, prune, export, seal").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    verify = group.add_parser("verify", help="verify a tenant's hash chain; exit 1 at the first broken link")
    verify.add_argument("--tenant", required=True, help="a tenant's slug (system: the platform's own chain)")
    verify.add_argument("--json", action="store_true", help="machine-readable output")
    verify.set_defaults(run=cmd_audit_verify)
    heads = group.add_parser("heads", help="a tenant's chain head at the end of each day (for an auditor)")
    heads.add_argument("--tenant", required=True)
    heads.add_argument("--json", action="store_true", help="machine-readable output")
    heads.set_defaults(run=cmd_audit_heads)
    prune = group.add_parser("prune", help="delete entries older than each tenant's plan retention "
                                           "(the rest still verifies)")
    prune.add_argument("--tenant", help="one tenant (default: every tenant)")
    prune.add_argument("--json", action="store_true", help="machine-readable output")
    prune.set_defaults(run=cmd_audit_prune)
    export = group.add_parser("export", help="a tenant's entries, oldest first, as CSV or JSON lines")
    export.add_argument("--tenant", required=True)
    export.add_argument("--format", choices=("csv", "json"), default="json")
    for name in audit_trail.FILTERS:
        export.add_argument(f"--{name.replace('_', '-')}", dest=name)
    export.set_defaults(run=cmd_audit_export)
    seal = group.add_parser("seal", help="chain the committed pending entries now (each gateway does every second)")
    seal.add_argument("--tenant", help="one tenant (default: every chain)")
    seal.add_argument("--json", action="store_true", help="machine-readable output")
    seal.set_defaults(run=cmd_audit_seal)
