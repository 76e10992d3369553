"""`GET /api/platform/audit/v1/export`: a tenant's audit trail streamed as CSV or JSON, filtered.

The platform's route (not a tenant's): the caller is a platform account, authorized as the platform's
functions are (functions/audit.py: a platform admin, or an owner or admin of the tenant named by
`?tenant=`). Filters are `audit_entries`' (`actor`, `entity`, `record_id`, `action`, `since`, `until`);
rows come from a server-side cursor and leave as they are read, so an export of millions of entries
holds one batch in memory, never the table.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from typing import Any

import orjson
import structlog
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from engine import audit_trail
from engine.data import DataApi
from engine.errors import InvalidInput, Problem, UnknownEntity
from engine.hooks import HookContext
from engine.runtime import TenantRuntime
from engine.storage.naming import SYSTEM_TENANT
from functions.audit import trail_tenant

FORMATS = {"csv": "text/csv; charset=utf-8", "json": "application/json"}
EXPORT_PATH = "/audit/v1/export"


async def csv_lines(entries: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(audit_trail.COLUMNS)
    async for entry in entries:
        writer.writerow([orjson.dumps(entry[c]).decode() if c in ("changes", "data") else
                         ("" if entry[c] is None else entry[c]) for c in audit_trail.COLUMNS])
        if buffer.tell() > 65536:
            yield buffer.getvalue().encode()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue().encode()


async def json_array(entries: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    yield b"["
    first = True
    async for entry in entries:
        yield (b"" if first else b",") + orjson.dumps(entry)
        first = False
    yield b"]"


async def audit_export(request: Request, runtime: TenantRuntime) -> Response:
    if runtime.slug != SYSTEM_TENANT:
        raise UnknownEntity("the audit trail is read at /api/platform/audit/v1/export")
    params = dict(request.query_params)
    fmt = params.pop("format", "json")
    if fmt not in FORMATS:
        raise InvalidInput("format must be csv or json", details=[Problem("format", f"'{fmt}' is not csv or json")])
    caller = request.scope["backsaas.caller"]
    db = request.app.state.db
    ctx = HookContext(SYSTEM_TENANT, caller, "function:audit_export", DataApi(runtime, db, caller, None),  # type: ignore[arg-type]
                      structlog.get_logger("backsaas.audit"))
    tenant_id = await trail_tenant(ctx, params.pop("tenant", None) or None)
    query = audit_trail.Query.parse(tenant_id, params)
    entries = audit_trail.entries(db, query)
    body = csv_lines(entries) if fmt == "csv" else json_array(entries)
    return StreamingResponse(body, media_type=FORMATS[fmt],
                             headers={"Content-Disposition": f'attachment; filename="audit.{fmt}"'})
