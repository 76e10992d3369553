"""An audited bulk update costs what its rows cost, whatever the connection did before: the capture function
pairs old and new rows by a hash join even when its plan was made for single-row updates (engine/audit.py
`capture_sql`). Before, that plan was a nested loop over the transition tables, quadratic in the rows: 5,000
rows took 4.5 s on a connection that had updated single rows, 0.17 s on a fresh one, and a bulk PATCH of
tens of thousands of rows met the plan's statement timeout."""

from __future__ import annotations

import asyncpg

from engine.database import Database, driver_url
from functions.tenants import create_tenant

SCHEMA = """
name: ledger
entities:
  entry:
    fields:
      n: {type: integer}
"""
ROWS = 20_000


async def test_a_bulk_update_after_single_row_updates_on_one_connection_stays_within_the_timeout(db: Database,
                                                                                                 database_url: str):
    await create_tenant(db, "ledger", source=SCHEMA)
    conn = await asyncpg.connect(driver_url(database_url))
    try:
        await conn.execute(f'SET ROLE "{db.role("ledger")}"; SET statement_timeout = 8000')  # the default plan's
        await conn.execute("INSERT INTO t_ledger.entry (n) SELECT g FROM generate_series(1, $1) g", ROWS)
        ids = [r["id"] for r in await conn.fetch("SELECT id FROM t_ledger.entry LIMIT 20")]
        for row_id in ids:  # the capture's plan is made now, for one row
            await conn.execute("UPDATE t_ledger.entry SET n = n + 1 WHERE id = $1", row_id)
        assert await conn.execute("UPDATE t_ledger.entry SET n = n + 1") == f"UPDATE {ROWS}"
        await conn.execute("RESET ROLE")
        entries = await conn.fetchval("SELECT count(*) FROM (SELECT entity, action FROM system.audit_log UNION ALL "
                                      "SELECT entity, action FROM backsaas_audit.pending) e "
                                      "WHERE entity = 'entry' AND action = 'update'")  # sealed or not yet
    finally:
        await conn.close()
    assert entries == ROWS + len(ids)
