"""Tamper evidence of the audit trail: each tenant's entries are one hash chain that `backsaas audit verify`
(and the platform function `verify_audit`) walks; an edited, a deleted and a reordered entry are each
found at the right link; four concurrent writers of one tenant leave one valid chain; pruning from the
start leaves the rest verifiable; the daily heads are what an auditor keeps."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from engine import audit, audit_trail
from engine.database import Database
from engine.storage.deploy import deploy_platform
from functions import audit as audit_functions
from functions.tenants import create_tenant, delete_tenant, purge_tenants
from functions.users import create_platform_admin
from gateway.cli import main
from gateway.logs import configure_logging
from tests.conftest import driver_url
from tests.server import running_gateway

PASSWORD = "a long enough passphrase"
SCHEMA = """
name: chained
entities:
  item:
    fields:
      n: {type: integer}
    permissions:
      read: {anon: all}
      create: {anon: all}
"""


async def new_tenant(db: Database, slug: str, rows: int = 5) -> str:
    """A tenant whose chain holds its provisioning and `rows` writes, sealed (as the gateway's sealer would
    have within a second); returns its id."""
    await create_tenant(db, slug, source=SCHEMA)
    async with db.as_role(db.role(slug)) as conn:
        for n in range(rows):
            await conn.execute(f"INSERT INTO t_{slug.replace('-', '_')}.item (n) VALUES ($1)", n)
    tenant_id = await audit_functions.tenant_id_of(db, slug)
    await audit_trail.seal(db, tenant_id)
    return tenant_id


async def tamper(database_url: str, *statements: str) -> None:
    """What someone with the database's superuser could do behind the platform's back."""
    conn = await asyncpg.connect(driver_url(database_url))
    try:
        async with conn.transaction():
            await conn.execute("SET LOCAL session_replication_role = replica")  # past the log's guard trigger
            for statement in statements:
                await conn.execute(statement)
    finally:
        await conn.close()


def cli(database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str
        ) -> tuple[int, Any]:
    monkeypatch.setenv("DATABASE_URL", database_url)
    try:
        code = main(["audit", *args, "--json"])
    finally:  # main() points logging at this test's captured stdout: back to the process's stderr
        configure_logging("warning", stream=sys.__stderr__)
    return code, json.loads(capsys.readouterr().out)


TRICKY = ["plain", "quote \" and backslash \\", "tab\tnew line\n\u0001 bell\u0007", "é ü 漢字 🙂", "</script>",
          "'single'", "", "{\"not\": \"json\"}", "\u2028 line separator"]


async def test_the_canonical_form_is_the_text_of_the_entrys_jsonb_object(db, database_url):
    """An entry's hash covers its canonical form, written as one concat (engine/audit.py `canonical`): it
    must stay byte for byte the text of jsonb_build_object(...), which the chains sealed before it hashed,
    whatever the entry holds (escapes, control characters, non-ASCII, numbers, nested changes, nulls)."""
    tenant_id = await new_tenant(db, "canonical", rows=1)
    entries = [{"tenant_id": tenant_id, "action": f"test.{n}", "entity": text or None, "record_id": None,
                "user_id": None, "key_name": text, "roles": text, "request_id": text, "ip": text[:45],
                "user_agent": text, "changes": {text: {"old": None, "new": [1, 1.5, -0.0, 1e30, True, text]}},
                "data": {"n": n, "nested": {"empty": {}, "list": [], "text": text}, "null": None}}
               for n, text in enumerate(TRICKY)]
    conn = await asyncpg.connect(driver_url(database_url))
    try:
        async with conn.transaction():
            await conn.execute("SELECT set_config('backsaas.audit_writer', 'on', true)")
            await conn.execute("SELECT backsaas_audit.append($1::jsonb)", json.dumps(entries))
        await audit_trail.seal(db, tenant_id)
        rows = await conn.fetch(
            f"SELECT a.action, {audit.canonical('a')} AS written, jsonb_build_object("
            "'seq', a.seq, 'chain', a.chain, 'at', (extract(epoch FROM a.created_at) * 1000000)::bigint, "
            "'action', a.action, 'entity', a.entity, 'record_id', a.record_id, 'user_id', a.user_id, "
            "'key_name', a.key_name, 'roles', a.roles, 'request_id', a.request_id, 'ip', a.ip, "
            "'user_agent', a.user_agent, 'changes', a.changes, 'data', a.data)::text AS printed "
            "FROM system.audit_log a WHERE a.chain = $1::uuid", tenant_id)
    finally:
        await conn.close()
    assert len(rows) > len(TRICKY)
    for row in rows:
        assert row["written"] == row["printed"], row["action"]
    assert (await audit_trail.verify(db, tenant_id)).ok


async def test_a_chain_as_written_verifies(db, database_url):
    tenant_id = await new_tenant(db, "intact")
    found = await audit_trail.verify(db, tenant_id)
    assert found.ok and found.first_seq == 1 and found.entries == found.last_seq >= 6, found.as_dict()


async def test_an_edited_entry_is_found(db, database_url):
    tenant_id = await new_tenant(db, "edited")
    await tamper(database_url, "UPDATE system.audit_log SET data = '{\"edited\": true}' "
                               f"WHERE chain = '{tenant_id}' AND seq = 3")
    found = await audit_trail.verify(db, tenant_id)
    assert not found.ok and found.broken_at == 3 and "altered" in found.problem


async def test_an_edited_entry_with_its_hash_recomputed_is_found_at_the_next_link(db, database_url):
    tenant_id = await new_tenant(db, "rehashed")
    await tamper(database_url, f"UPDATE system.audit_log SET action = 'innocent' WHERE chain = '{tenant_id}' AND seq = 2",
                 "UPDATE system.audit_log a SET hash = backsaas_audit.digest(a) "
                 f"WHERE chain = '{tenant_id}' AND seq = 2")
    found = await audit_trail.verify(db, tenant_id)
    assert not found.ok and found.broken_at == 3 and "does not follow" in found.problem


async def test_a_deleted_entry_is_found(db, database_url):
    tenant_id = await new_tenant(db, "holed")
    await tamper(database_url, f"DELETE FROM system.audit_log WHERE chain = '{tenant_id}' AND seq = 4")
    found = await audit_trail.verify(db, tenant_id)
    assert not found.ok and found.broken_at == 4 and "missing" in found.problem


async def test_entries_deleted_from_the_end_are_found(db, database_url):
    tenant_id = await new_tenant(db, "truncated")
    await tamper(database_url, f"DELETE FROM system.audit_log WHERE chain = '{tenant_id}' AND seq = (SELECT max(seq) "
                               f"FROM system.audit_log WHERE chain = '{tenant_id}')")
    found = await audit_trail.verify(db, tenant_id)
    assert not found.ok and "deleted from the end" in found.problem


async def test_reordered_entries_are_found(db, database_url):
    tenant_id = await new_tenant(db, "reordered")
    where = f"chain = '{tenant_id}'"
    await tamper(database_url, f"UPDATE system.audit_log SET seq = -1 WHERE {where} AND seq = 3",
                 f"UPDATE system.audit_log SET seq = 3 WHERE {where} AND seq = 4",
                 f"UPDATE system.audit_log SET seq = 4 WHERE {where} AND seq = -1")
    found = await audit_trail.verify(db, tenant_id)
    assert not found.ok and found.broken_at == 3 and "does not follow" in found.problem


async def test_four_concurrent_writers_of_one_tenant_leave_one_valid_chain(db, database_url):
    tenant_id = await new_tenant(db, "busy", rows=0)

    async def writer(w: int) -> None:
        for n in range(25):
            async with db.as_role(db.role("busy")) as conn, conn.transaction():
                await conn.execute("INSERT INTO t_busy.item (n) VALUES ($1)", w * 100 + n)
                await asyncio.sleep(0)  # another writer's turn between the write and its commit

    await asyncio.gather(*(writer(w) for w in range(4)))
    found = await audit_trail.verify(db, tenant_id)
    assert found.ok, found.as_dict()
    conn = await asyncpg.connect(driver_url(database_url))
    try:
        written = await conn.fetch("SELECT seq, (changes -> 'n' ->> 'new')::int AS n FROM system.audit_log "
                                   "WHERE chain = $1::uuid AND entity = 'item' ORDER BY seq", tenant_id)
    finally:
        await conn.close()
    assert sorted(r["n"] for r in written) == sorted(w * 100 + n for w in range(4) for n in range(25))
    assert found.last_seq == found.entries  # no gap, no duplicate: one chain


async def test_pruning_from_the_start_keeps_the_rest_verifiable(db, database_url):
    tenant_id = await new_tenant(db, "pruned", rows=3)
    await asyncio.sleep(0.05)
    middle = datetime.now(UTC)
    async with db.as_role(db.role("pruned")) as conn:
        for n in range(3):
            await conn.execute("INSERT INTO t_pruned.item (n) VALUES ($1)", 10 + n)
    before = await audit_trail.verify(db, tenant_id)
    done = await audit_trail.prune(db, tenant_id, 1, now=middle + timedelta(days=1))
    assert done["pruned"] > 0 and done["anchor_seq"] == before.last_seq - 3
    after = await audit_trail.verify(db, tenant_id)
    assert after.ok and after.first_seq == done["anchor_seq"] + 1 and after.last_seq == before.last_seq
    assert after.anchor["seq"] == done["anchor_seq"]
    async with db.as_role(db.role("pruned")) as conn:  # the chain goes on from what remains
        await conn.execute("INSERT INTO t_pruned.item (n) VALUES (99)")
    assert (await audit_trail.verify(db, tenant_id)).ok
    await tamper(database_url, f"DELETE FROM system.audit_log WHERE chain = '{tenant_id}' AND seq = {after.first_seq}")
    broken = await audit_trail.verify(db, tenant_id)
    assert not broken.ok and broken.broken_at == after.first_seq  # a deletion after the anchor is still found


async def test_a_plans_retention_is_what_prune_applies(db, database_url):
    await new_tenant(db, "kept", rows=1)
    pruned = {t["tenant"]: t for t in await audit_functions.prune_all(db)}
    assert pruned["kept"]["retention_days"] == 7 and pruned["kept"]["pruned"] == 0  # free: 7 days, nothing older


def test_cli_verify_heads_and_prune(db, database_url, monkeypatch, capsys):
    asyncio.run(_provision(database_url, "cli-chain"))
    code, found = cli(database_url, monkeypatch, capsys, "verify", "--tenant", "cli-chain")
    assert code == 0 and found["ok"] and found["entries"] >= 6
    code, heads = cli(database_url, monkeypatch, capsys, "heads", "--tenant", "cli-chain")
    assert code == 0 and heads[-1]["day"] == datetime.now(UTC).date().isoformat()
    assert heads[-1]["seq"] == found["last_seq"] and heads[-1]["hash"] == found["head_hash"]
    code, pruned = cli(database_url, monkeypatch, capsys, "prune", "--tenant", "cli-chain")
    assert code == 0 and pruned == [{"tenant": "cli-chain", "retention_days": 7, "tenant_id": found["tenant_id"],
                                     "pruned": 0, "anchor_seq": None}]
    asyncio.run(tamper(database_url, "UPDATE system.audit_log SET action = 'edited' WHERE seq = 2 AND chain = "
                                     f"'{found['tenant_id']}'"))
    code, broken = cli(database_url, monkeypatch, capsys, "verify", "--tenant", "cli-chain")
    assert code == 1 and broken["broken_at"] == 2


async def _provision(database_url: str, slug: str) -> None:
    db = await Database.connect(database_url)
    try:
        await new_tenant(db, slug)
    finally:
        await db.close()


@pytest.fixture(scope="module")
def base(db: Database, database_url: str) -> Iterator[str]:
    with running_gateway(database_url) as url:
        yield url


async def test_verify_audit_and_audit_heads_as_platform_functions(db, base, database_url):
    tenant_id = await new_tenant(db, "remote")
    await create_platform_admin(db, "root@example.com", PASSWORD)
    async with httpx.AsyncClient(base_url=f"{base}/api/platform") as client:
        token = (await client.post("/auth/v1/token", params={"grant_type": "password"},
                                   json={"email": "root@example.com", "password": PASSWORD})).json()["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        ok = await client.post("/functions/v1/verify_audit", json={"tenant": "remote"}, headers=headers)
        assert ok.status_code == 200 and ok.json()["ok"], ok.text
        heads = await client.post("/functions/v1/audit_heads", json={"tenant": "remote"}, headers=headers)
        assert heads.json()["heads"][-1]["seq"] == ok.json()["last_seq"]
        await tamper(database_url, f"DELETE FROM system.audit_log WHERE chain = '{tenant_id}' AND seq = 2")
        broken = await client.post("/functions/v1/verify_audit", json={"tenant": "remote"}, headers=headers)
        assert broken.status_code == 200 and not broken.json()["ok"] and broken.json()["broken_at"] == 2
        anonymous = await client.post("/functions/v1/verify_audit", json={"tenant": "remote"})
        assert anonymous.status_code in (401, 403)


async def test_tenants_made_before_the_audit_trail_get_it_on_the_next_platform_deploy(db, database_url):
    """An installation upgraded to the audit trail: its tenants' tables get their triggers when the platform
    deploys the audit's functions for the first time, and a chain whose head row is gone goes on from its end."""
    tenant_id = await new_tenant(db, "older", rows=1)
    before = await audit_trail.verify(db, tenant_id)
    conn = await asyncpg.connect(driver_url(database_url))
    try:
        await conn.execute("DROP SCHEMA backsaas_audit CASCADE")  # as before the audit trail: no functions, triggers
    finally:
        await conn.close()
    await deploy_platform(db)
    async with db.as_role(db.role("older")) as tenant:
        await tenant.execute("INSERT INTO t_older.item (n) VALUES (42)")
    after = await audit_trail.verify(db, tenant_id)
    assert after.ok and after.last_seq == before.last_seq + 1, after.as_dict()


async def test_a_purged_tenants_trail_stays_verifiable(db, database_url):
    """Purging deletes the tenant's row and its platform rows in the transaction that audits it: the
    entries keep their chain (their reference to the tenant is cleared) and still verify."""
    tenant_id = await new_tenant(db, "gone", rows=1)
    await delete_tenant(db, "gone")
    assert "gone" in await purge_tenants(db, timedelta(0))
    found = await audit_trail.verify(db, tenant_id)
    assert found.ok and found.entries > 2, found.as_dict()
    conn = await asyncpg.connect(driver_url(database_url))
    try:
        entries = [(r["entity"], r["action"]) for r in await conn.fetch(
            "SELECT action, entity FROM system.audit_log WHERE chain = $1::uuid ORDER BY seq", tenant_id)]
    finally:
        await conn.close()
    assert ("tenants", "delete") in entries and ("api_keys", "delete") in entries  # the purge, audited
