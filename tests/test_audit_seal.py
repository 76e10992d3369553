"""Sealing the audit trail: entries are written pending in the transaction of their change (no chain lock
on the write path) and moved into the log, chained, once committed by `backsaas_audit.seal`
(engine/audit_trail.py), from the gateway's sealer or from any reader; an older installation's unsealed
entries in the log itself are chained too. A write that commits late is chained after what was sealed before
it; sealers and writers at once still leave one chain; a tenant's role cannot seal; `backsaas audit seal`
seals without a gateway. Each table's capture function (made by its deploy) records the writes of the
deploy's own migration, goes with its table, covers an entity of many fields, and replaces the one
capture function that an older installation's tables shared."""

from __future__ import annotations

import asyncio
import json
import sys

import asyncpg
import pytest

from engine import audit_trail
from engine.database import Database
from engine.storage.deploy import METADATA_UPGRADE, deploy, deploy_platform
from functions import audit as audit_functions
from functions.tenants import create_tenant
from gateway.cli import main
from gateway.logs import configure_logging
from tests.conftest import driver_url

SCHEMA = """
name: sealed
entities:
  item:
    fields:
      n: {type: integer}
    permissions:
      read: {anon: all}
      create: {anon: all}
"""


async def new_tenant(db: Database, slug: str) -> str:
    await create_tenant(db, slug, source=SCHEMA)
    return await audit_functions.tenant_id_of(db, slug)


async def items(database_url: str, tenant_id: str) -> list[dict[str, object]]:
    """The tenant's item entries as stored, sealed (in the log) or pending (seq and hash None): n written, seq, hash."""
    conn = await asyncpg.connect(driver_url(database_url))
    try:
        return [dict(r) for r in await conn.fetch(
            "SELECT (changes -> 'n' ->> 'new')::int AS n, seq, hash FROM (SELECT chain, entity, changes, seq, hash "
            "FROM system.audit_log UNION ALL SELECT chain, entity, changes, NULL, NULL FROM backsaas_audit.pending) e "
            "WHERE chain = $1::uuid AND entity = 'item' ORDER BY seq NULLS LAST, n", tenant_id)]
    finally:
        await conn.close()


async def test_an_entry_waits_pending_until_seal_chains_it_into_the_log(db, database_url):
    tenant_id = await new_tenant(db, "unsealed")
    async with db.as_role(db.role("unsealed")) as conn:
        await conn.execute("INSERT INTO t_unsealed.item (n) VALUES (1)")
    assert [(e["n"], e["seq"], e["hash"]) for e in await items(database_url, tenant_id)] == [(1, None, None)]
    assert await audit_trail.seal(db, tenant_id) > 0
    [entry] = await items(database_url, tenant_id)
    found = await audit_trail.verify(db, tenant_id)
    assert found.ok and entry["seq"] == found.last_seq and entry["hash"] == found.head_hash


async def test_a_write_that_commits_late_is_chained_after_what_was_sealed_before(db, database_url):
    """A transaction that wrote first but commits last: its entry is invisible to the sealer until it
    commits (so never chained, and never lost), then chained after the later write's."""
    tenant_id = await new_tenant(db, "latecomer")
    slow = await asyncpg.connect(driver_url(database_url))
    try:
        await slow.execute("BEGIN")
        await slow.execute(f'SET LOCAL ROLE "{db.role("latecomer")}"')
        await slow.execute("INSERT INTO t_latecomer.item (n) VALUES (1)")
        async with db.as_role(db.role("latecomer")) as conn:
            await conn.execute("INSERT INTO t_latecomer.item (n) VALUES (2)")
        await audit_trail.seal(db, tenant_id)
        assert [(e["n"], e["seq"] is not None) for e in await items(database_url, tenant_id)] == [(2, True)]
        await slow.execute("COMMIT")
    finally:
        await slow.close()
    await audit_trail.seal(db, tenant_id)
    written = await items(database_url, tenant_id)
    assert [e["n"] for e in written] == [2, 1] and written[1]["seq"] == written[0]["seq"] + 1
    assert (await audit_trail.verify(db, tenant_id)).ok


async def test_sealers_and_writers_at_once_leave_one_chain(db, database_url):
    tenant_id = await new_tenant(db, "crowded")
    writing = True

    async def writer(w: int) -> None:
        for n in range(25):
            async with db.as_role(db.role("crowded")) as conn, conn.transaction():
                await conn.execute("INSERT INTO t_crowded.item (n) VALUES ($1)", w * 100 + n)
                await asyncio.sleep(0)

    async def sealer() -> None:
        while writing:
            await audit_trail.seal(db, tenant_id)
            await asyncio.sleep(0)

    sealers = [asyncio.create_task(sealer()) for _ in range(3)]
    try:
        await asyncio.gather(*(writer(w) for w in range(4)))
    finally:
        writing = False
        await asyncio.gather(*sealers)
    found = await audit_trail.verify(db, tenant_id)
    assert found.ok and found.last_seq == found.entries, found.as_dict()
    written = await items(database_url, tenant_id)
    assert sorted(e["n"] for e in written) == sorted(w * 100 + n for w in range(4) for n in range(25))
    assert len({e["seq"] for e in written}) == len(written) and None not in {e["seq"] for e in written}


async def test_sealers_of_every_chain_and_of_one_at_once_leave_each_chain_whole(db, database_url):
    """The gateway's sealer takes every chain with pending entries (their heads locked in one order) while
    readers seal the one they read: nobody deadlocks, each entry is sealed once, each chain verifies."""
    tenants = {slug: await new_tenant(db, slug) for slug in ("every-a", "every-b")}
    writing = True

    async def writer(slug: str, w: int) -> None:
        table = f"t_{slug.replace('-', '_')}.item"
        for n in range(20):
            async with db.as_role(db.role(slug)) as conn:
                await conn.execute(f"INSERT INTO {table} (n) VALUES ($1)", w * 100 + n)
            await asyncio.sleep(0)

    async def sealer(tenant_id: str | None) -> None:
        while writing:
            await audit_trail.seal(db, tenant_id)
            await asyncio.sleep(0)

    sealers = [asyncio.create_task(sealer(t)) for t in (None, None, *tenants.values())]
    try:
        await asyncio.gather(*(writer(slug, w) for slug in tenants for w in range(2)))
    finally:
        writing = False
        await asyncio.gather(*sealers)
    await audit_trail.seal(db)
    for tenant_id in tenants.values():
        found = await audit_trail.verify(db, tenant_id)
        assert found.ok and found.last_seq == found.entries, found.as_dict()
        written = await items(database_url, tenant_id)
        assert sorted(e["n"] for e in written) == sorted(w * 100 + n for w in range(2) for n in range(20))
        assert None not in {e["seq"] for e in written}


async def test_a_seal_of_fewer_entries_than_wait_chains_each_chain_in_order_across_its_calls(db, database_url):
    """`seal(NULL, most)` takes the first `most` pending entries of the chains in their order, so a call can
    end inside a chain or between two: the next goes on from each chain's head (the entries' forms are made
    in one statement, numbered from their chain's head), and every chain verifies in the end."""
    tenants = {slug: await new_tenant(db, slug) for slug in ("batch-a", "batch-b")}
    for slug in tenants:
        async with db.as_role(db.role(slug)) as conn:
            for n in range(1, 5):  # one entry per statement, in order
                await conn.execute(f"INSERT INTO t_{slug.replace('-', '_')}.item (n) VALUES ($1)", n)
    conn = await asyncpg.connect(driver_url(database_url))
    try:
        sealed = []
        while done := await conn.fetchval("SELECT backsaas_audit.seal(NULL, 3)"):
            sealed.append(done)
    finally:
        await conn.close()
    assert sum(sealed) >= 8 and set(sealed[:-1]) == {3}, sealed  # (`verify` seals first: checked after)
    for tenant_id in tenants.values():
        found = await audit_trail.verify(db, tenant_id)
        assert found.ok and found.last_seq == found.entries, found.as_dict()
        written = [e for e in await items(database_url, tenant_id) if e["n"] is not None]
        assert [e["n"] for e in written] == [1, 2, 3, 4]
        assert [e["seq"] for e in written] == sorted(e["seq"] for e in written)


async def test_the_gateways_sealer_seals_with_no_reader(db, database_url):
    tenant_id = await new_tenant(db, "background")
    sealer = audit_trail.AuditSealer(db, 0.1).start()
    try:
        async with db.as_role(db.role("background")) as conn:
            await conn.execute("INSERT INTO t_background.item (n) VALUES (7)")
        for _ in range(200):  # the sealer's next rounds; no reader here seals
            if all(e["seq"] is not None for e in await items(database_url, tenant_id)):
                break
            await asyncio.sleep(0.05)
    finally:
        await sealer.stop()
    assert [(e["n"], e["seq"] is not None) for e in await items(database_url, tenant_id)] == [(7, True)]


async def test_a_tenant_role_cannot_seal(db, database_url):
    tenant_id = await new_tenant(db, "sealer-wannabe")
    conn = await asyncpg.connect(driver_url(database_url))
    try:
        async with conn.transaction():
            await conn.execute(f'SET LOCAL ROLE "{db.role("sealer-wannabe")}"')
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute("SELECT backsaas_audit.seal($1::uuid)", tenant_id)
    finally:
        await conn.close()


async def test_an_older_installations_unsealed_entries_are_chained_after_the_platform_deploy(db, database_url):
    """An engine before `pending` wrote entries unsealed into the log itself (seq NULL) from its capture
    functions: the platform deploy moves those entries to `pending` and makes the captures again."""
    tenant_id = await new_tenant(db, "upgraded")
    async with db.as_role(db.role("upgraded")) as conn:
        await conn.execute("INSERT INTO t_upgraded.item (n) VALUES (1)")
    await audit_trail.seal(db, tenant_id)
    admin = await asyncpg.connect(driver_url(database_url))
    try:  # as the older engine left it: captures writing into the log, no `pending`, an entry unsealed
        await admin.execute("""DO $$ DECLARE f oid; BEGIN
          FOR f IN SELECT oid FROM pg_proc WHERE pronamespace = 'backsaas_audit'::regnamespace
                                            AND starts_with(proname, 'capture.') LOOP
            EXECUTE replace(pg_get_functiondef(f), 'backsaas_audit.pending', 'system.audit_log');
          END LOOP; END $$""")
        await admin.execute("DROP TABLE backsaas_audit.pending")
        async with db.as_role(db.role("upgraded")) as conn:
            await conn.execute("INSERT INTO t_upgraded.item (n) VALUES (2)")
        assert await admin.fetchval("SELECT count(*) FROM system.audit_log WHERE chain = $1 AND seq IS NULL",
                                    tenant_id) == 1
        await deploy_platform(db)
        async with db.as_role(db.role("upgraded")) as conn:  # the capture made again: into `pending`
            await conn.execute("INSERT INTO t_upgraded.item (n) VALUES (3)")
        assert await admin.fetchval("SELECT count(*) FROM system.audit_log WHERE seq IS NULL") == 0
    finally:
        await admin.close()
    await audit_trail.seal(db, tenant_id)
    written = await items(database_url, tenant_id)
    assert [e["n"] for e in written] == [1, 2, 3] and None not in {e["seq"] for e in written}
    assert (await audit_trail.verify(db, tenant_id)).ok


def test_cli_seal_chains_what_a_gateway_would_have(db, database_url, monkeypatch, capsys):
    async def write() -> str:
        local = await Database.connect(database_url)
        try:
            tenant_id = await new_tenant(local, "cli-sealed")
            async with local.as_role(local.role("cli-sealed")) as conn:
                await conn.execute("INSERT INTO t_cli_sealed.item (n) VALUES (5)")
            return tenant_id
        finally:
            await local.close()

    tenant_id = asyncio.run(write())
    monkeypatch.setenv("DATABASE_URL", database_url)
    try:
        code = main(["audit", "seal", "--tenant", "cli-sealed", "--json"])
    finally:  # main() points logging at this test's captured stdout: back to the process's stderr
        configure_logging("warning", stream=sys.__stderr__)
    assert code == 0 and json.loads(capsys.readouterr().out)["sealed"] >= 2  # provisioning's and the write's
    assert [(e["n"], e["seq"] is not None) for e in asyncio.run(items(database_url, tenant_id))] == [(5, True)]


# -- each table's capture function ------------------------------------------------------------------------


async def entries_of(database_url: str, tenant_id: str, entity: str) -> list[dict[str, object]]:
    conn = await asyncpg.connect(driver_url(database_url))
    try:
        await conn.execute("SELECT backsaas_audit.seal($1::uuid)", tenant_id)
        return [{"action": r["action"], "changes": json.loads(r["changes"])} for r in await conn.fetch(
            "SELECT action, changes FROM system.audit_log WHERE chain = $1::uuid AND entity = $2 "
            "ORDER BY created_at, id", tenant_id, entity)]
    finally:
        await conn.close()


async def capture_functions(database_url: str, slug: str) -> list[str]:
    conn = await asyncpg.connect(driver_url(database_url))
    try:
        return sorted(r["proname"] for r in await conn.fetch(
            "SELECT proname FROM pg_proc WHERE pronamespace = 'backsaas_audit'::regnamespace "
            "AND starts_with(proname, $1)", f"capture.t_{slug}."))
    finally:
        await conn.close()


RENAMED = """
name: renamed
entities:
  item:
    fields:
      title: {type: string}
      score: {type: integer}
    permissions:
      read: {anon: all}
"""


async def test_a_backfill_of_a_field_renamed_in_the_same_deploy_is_audited_with_its_new_name(db, database_url):
    """The deploy makes a table's capture function again after its migration: the migration's own writes
    meet the function made for the columns before it, and the row's keys are read instead."""
    await create_tenant(db, "renamed", source=RENAMED)
    tenant_id = await audit_functions.tenant_id_of(db, "renamed")
    async with db.as_role(db.role("renamed")) as conn:
        await conn.execute("INSERT INTO t_renamed.item (title) VALUES ('first')")
    await deploy(db, "renamed", RENAMED.replace("score: {type: integer}",
                                                "points: {type: integer, required: true, default: 5, renamed_from: score}"))
    backfill = (await entries_of(database_url, tenant_id, "item"))[-1]
    assert backfill == {"action": "update", "changes": {"points": {"old": None, "new": 5}}}
    async with db.as_role(db.role("renamed")) as conn:  # the function made after the deploy knows `points`
        await conn.execute("UPDATE t_renamed.item SET points = 6, title = 'second'")
    assert (await entries_of(database_url, tenant_id, "item"))[-1]["changes"] == {
        "points": {"old": 5, "new": 6}, "title": {"old": "first", "new": "second"}}


async def test_an_entity_removed_takes_its_capture_function_with_it(db, database_url):
    source = RENAMED.replace("name: renamed", "name: removed") + "  gone:\n    fields:\n      n: {type: integer}\n"
    await create_tenant(db, "removed", source=source)
    assert await capture_functions(database_url, "removed") == ["capture.t_removed.gone", "capture.t_removed.item",
                                                                "capture.t_removed.users"]
    await deploy(db, "removed", source.split("  gone:")[0], allow_destructive=True)
    assert await capture_functions(database_url, "removed") == ["capture.t_removed.item", "capture.t_removed.users"]


async def test_an_entity_of_many_fields_is_captured_whole(db, database_url):
    fields = "".join(f"      f{i}: {{type: integer}}\n" for i in range(60))
    await create_tenant(db, "wide", source=f"name: wide\nentities:\n  item:\n    fields:\n{fields}")
    tenant_id = await audit_functions.tenant_id_of(db, "wide")
    async with db.as_role(db.role("wide")) as conn:
        await conn.execute(f"INSERT INTO t_wide.item ({', '.join(f'f{i}' for i in range(60))}) "
                           f"VALUES ({', '.join(str(i) for i in range(60))})")
        await conn.execute("UPDATE t_wide.item SET f59 = 0")
    create, update = await entries_of(database_url, tenant_id, "item")
    assert {f"f{i}": {"old": None, "new": i} for i in range(60)}.items() <= create["changes"].items()
    assert update["changes"] == {"f59": {"old": 59, "new": 0}}


async def test_tables_of_the_one_shared_capture_function_get_their_own_at_the_platform_deploy(db, database_url):
    """An installation whose tables' triggers all called `backsaas_audit.capture()` (before each table had its own)."""
    tenant_id = await new_tenant(db, "legacy")
    conn = await asyncpg.connect(driver_url(database_url))
    try:
        await conn.execute("CREATE FUNCTION backsaas_audit.capture() RETURNS trigger LANGUAGE plpgsql AS "
                           "'BEGIN RETURN NULL; END'")
        await conn.execute("CREATE OR REPLACE TRIGGER backsaas_audit_insert AFTER INSERT ON t_legacy.item "
                           "REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION backsaas_audit.capture()")
        await deploy_platform(db)
        assert await conn.fetchval("SELECT to_regprocedure('backsaas_audit.capture()')") is None
        assert await conn.fetchval("SELECT tgfoid::regproc::text FROM pg_trigger WHERE tgname = 'backsaas_audit_insert' "
                                   "AND tgrelid = 't_legacy.item'::regclass") == 'backsaas_audit."capture.t_legacy.item"'
        assert await conn.fetchval("SELECT count(*) FROM pg_trigger WHERE tgname = 'backsaas_audit_insert' "
                                   "AND tgrelid = 'system.tenants'::regclass") == 1
    finally:
        await conn.close()
    async with db.as_role(db.role("legacy")) as tenant:
        await tenant.execute("INSERT INTO t_legacy.item (n) VALUES (7)")
    assert [e["n"] for e in await items(database_url, tenant_id)] == [7]


async def test_the_user_metadata_upgrade_audits_the_column_it_adds(db, database_url):
    """An installation whose `users` tables predate `user_metadata` gets the column from the platform
    deploy's one-time upgrade; the tables' capture functions, made for the columns before it, are made
    again, so a change of the metadata is in its entry."""
    tenant_id = await new_tenant(db, "olden")
    admin = await asyncpg.connect(driver_url(database_url))
    try:
        await admin.execute("ALTER TABLE t_olden.users DROP COLUMN user_metadata")
        await deploy(db, "olden", SCHEMA.replace("n: {type: integer}", "n: {type: integer}\n      m: {type: integer}"))
        await admin.execute("DELETE FROM backsaas_private.upgrades WHERE name = $1", METADATA_UPGRADE)
    finally:
        await admin.close()
    await deploy_platform(db)
    async with db.as_role(db.role("olden")) as conn:
        await conn.execute("INSERT INTO t_olden.users (email) VALUES ('old@example.com')")
        await conn.execute("""UPDATE t_olden.users SET user_metadata = '{"theme": "dark"}'""")
    assert (await entries_of(database_url, tenant_id, "users"))[-1]["changes"] == {
        "user_metadata": {"old": None, "new": "[redacted]"}}  # personal data: its change shown, not its value
