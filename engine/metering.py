"""Usage metering: what each tenant used, counted in memory per request and written in batches.

Every tenant request adds to counters held by this process's `Meter` (DESIGN.md, request flow step 7): one
tally per (tenant, surface, status class, latency bucket) holding the requests, bytes, rows and function
milliseconds, expanded into the counters of (tenant id, day, metric) when flushed, so a request costs one
dict lookup and a few additions, never a database round trip. A flusher writes
them to the system tenant's `usage_daily` every few seconds (`BACKSAAS_METER_FLUSH_SECONDS`) and at
shutdown, in ONE statement for all keys (`value = usage_daily.value + EXCLUDED.value`), so any number
of gateway processes add up, and a crash loses at most one interval. A flush that fails puts its counts
back for the next one. Gauges (`rows`, `storage_bytes`, `end_users`: measurements, engine/quotas.py)
replace the day's value instead of adding to it.

The rows a request writes are reported from the write core (REST, GraphQL, `ctx.data`) into the
request's `RequestUsage`, found through a context variable the gateway sets, and counted only when
the request succeeded: a write that was rolled back wrote nothing.

This module never decides a quota (engine/quotas.py does) and never imports the gateway.
"""

from __future__ import annotations

import asyncio
import os
import time
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.dialects import postgresql

from engine import catalog

log = structlog.get_logger("backsaas.metering")

FLUSH_SECONDS_VARIABLE = "BACKSAAS_METER_FLUSH_SECONDS"
SWITCH_VARIABLE = "BACKSAAS_METERING"
DEFAULT_FLUSH_SECONDS = 5.0

SURFACE_METRICS = ("rest_calls", "graphql_calls", "auth_calls", "function_calls")  # together: the requests
COUNTERS = (*SURFACE_METRICS, "function_ms", "rows_written", "egress_bytes", "webhook_deliveries",
            "errors_5xx", "errors_4xx")
LATENCY_BOUNDS = (5, 10, 25, 50, 100, 250, 500, 1000, 2500)  # ms; each bucket counts its own requests only
LATENCY_METRICS = (*(f"latency_ms_le_{b}" for b in LATENCY_BOUNDS), "latency_ms_le_inf")
GAUGES = ("rows", "storage_bytes", "end_users")  # the day's latest measurement
METRICS = (*COUNTERS, *LATENCY_METRICS, *GAUGES)


def metering_enabled() -> bool:
    """`BACKSAAS_METERING=off` turns the meter (and the quotas that read it) off, for the benchmark's baseline."""
    return os.environ.get(SWITCH_VARIABLE, "on").strip().lower() not in ("off", "0", "false", "no")


def flush_seconds_from_env() -> float:
    return float(os.environ.get(FLUSH_SECONDS_VARIABLE) or DEFAULT_FLUSH_SECONDS)


def latency_metric(ms: float) -> str:
    """The latency bucket a request of `ms` milliseconds falls in (the first bound at or above it)."""
    return LATENCY_METRICS[bisect_left(LATENCY_BOUNDS, ms)]


def today() -> date:
    return datetime.now(UTC).date()


class Today:
    """The UTC day, read from the clock only when the day it holds has ended (the meter asks per request)."""

    def __init__(self) -> None:
        self.refresh()

    def refresh(self) -> None:
        self.day: date = today()
        self.ends: float = datetime(self.day.year, self.day.month, self.day.day, tzinfo=UTC).timestamp() + 86400

    def __call__(self) -> date:
        if time.time() >= self.ends:
            self.refresh()
        return self.day


class Meter:
    """This process's counters and gauges, and their flusher (`run`, cancelled by `close`)."""

    def __init__(self, db: Any, flush_seconds: float | None = None) -> None:
        self.db = db
        self.flush_seconds = flush_seconds if flush_seconds is not None else flush_seconds_from_env()
        self.counts: defaultdict[tuple[str, date, str], int] = defaultdict(int)
        self.gauges: dict[tuple[str, date, str], int] = {}
        # (tenant, surface metric or None, errors_4xx/errors_5xx or None, latency metric) -> [requests, egress
        # bytes, rows written, function ms] of the day `requests_day`, expanded into `counts` by `fold`
        self.requests: dict[tuple[str, str | None, str | None, str], list[int]] = {}
        self.requests_day = today()
        # (tenant, metric): unflushed, of the metrics quotas read (function_ms, and whatever `add` counts but
        # the surfaces' calls, which `calls` holds)
        self.recent: defaultdict[tuple[str, str], int] = defaultdict(int)
        # tenant -> unflushed requests of the surfaces together (what requests_per_month is measured by): the
        # quotas read it per request, one lookup where the four surface metrics took eight
        self.calls: dict[str, int] = {}
        # written by the last flush, counted as pending until the quotas read the totals that hold them
        self.flushed: dict[tuple[str, str], int] = {}
        self.flushed_calls: dict[str, int] = {}
        self.after_flush: list[Any] = []  # coroutines functions run after each flush (the quotas' refresh)
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.today = Today()
        self.day_ends = self.today.ends  # when `requests_day` ends: count_request reads the clock against it

    # -- counting (the hot path: dict additions only) --

    def add(self, tenant_id: str, metric: str, amount: int = 1) -> None:
        if amount:
            self.counts[(tenant_id, today(), metric)] += amount
            if metric in SURFACE_METRICS:
                self.calls[tenant_id] = self.calls.get(tenant_id, 0) + amount
            else:
                self.recent[(tenant_id, metric)] += amount

    def count_request(self, tenant_id: str, surface: str | None, status: int, ms: float, sent: int,
                      rows_written: int) -> None:
        """One answered request of a tenant: `surface` is its metric in SURFACE_METRICS (None outside them),
        `sent` its body bytes; its rows count only when it succeeded, its milliseconds (at least 1) only for
        a function call."""
        if time.time() >= self.day_ends:
            self.new_day()
        outcome = None if status < 400 else "errors_4xx" if status < 500 else "errors_5xx"
        key = (tenant_id, surface, outcome, LATENCY_METRICS[bisect_left(LATENCY_BOUNDS, ms)])
        tally = self.requests.get(key)
        if tally is None:
            tally = self.requests[key] = [0, 0, 0, 0]
        tally[0] += 1
        tally[1] += sent
        if outcome is None:
            tally[2] += rows_written
        if surface is not None:
            calls = self.calls
            calls[tenant_id] = calls.get(tenant_id, 0) + 1
            if surface == "function_calls":
                spent = max(1, round(ms))
                tally[3] += spent
                self.recent[(tenant_id, "function_ms")] += spent

    def new_day(self) -> None:
        """The clock passed `day_ends`: the tallies of the day before go to its counters."""
        day = self.today()
        self.day_ends = self.today.ends
        if day != self.requests_day:
            self.fold()
            self.requests_day = day

    def fold(self) -> None:
        """The request tallies into the counters of their day."""
        day, counts = self.requests_day, self.counts
        for (tenant_id, surface, outcome, latency), (requests, sent, rows, spent) in self.requests.items():
            counts[(tenant_id, day, latency)] += requests
            if surface is not None:
                counts[(tenant_id, day, surface)] += requests
            if outcome is not None:
                counts[(tenant_id, day, outcome)] += requests
            for metric, amount in (("egress_bytes", sent), ("rows_written", rows), ("function_ms", spent)):
                if amount:
                    counts[(tenant_id, day, metric)] += amount
        self.requests = {}

    def gauge(self, tenant_id: str, metric: str, value: int) -> None:
        self.gauges[(tenant_id, today(), metric)] = int(value)

    def pending(self, tenant_id: str, metric: str) -> int:
        """What this process counted for `tenant_id` in `metric` and has not flushed yet (one dict lookup), for
        the metrics `recent` keeps: not the surfaces' calls, which `pending_calls` gives together."""
        key = (tenant_id, metric)
        return self.recent.get(key, 0) + self.flushed.get(key, 0)

    def pending_calls(self, tenant_id: str) -> int:
        """The requests of every surface (SURFACE_METRICS together) this process counted for `tenant_id` and
        has not flushed yet, or flushed but not yet read back by the quotas."""
        return self.calls.get(tenant_id, 0) + self.flushed_calls.get(tenant_id, 0)

    def flushed_read(self) -> None:
        """The quotas read the totals holding the last flush: its counts are no longer pending."""
        self.flushed, self.flushed_calls = {}, {}

    # -- flushing --

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.run())

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.flush_seconds)
            await self.flush()
            for hook in self.after_flush:
                try:
                    await hook()
                except Exception as exc:  # e.g. the database is down: logged, and tried again after the next flush
                    log.warning("metering.after_flush_failed", error=f"{type(exc).__name__}: {exc}")

    async def close(self) -> None:
        """Stop the flusher and flush what is left (a graceful shutdown loses nothing)."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        await self.flush()

    async def flush(self) -> int:
        """Write every pending count and gauge in one statement; the number of keys written. On failure the
        counts are kept for the next flush (and logged), so a database outage delays them, loses nothing."""
        async with self._lock:
            self.fold()
            counts, self.counts = self.counts, defaultdict(int)
            gauges, self.gauges = self.gauges, {}
            recent, self.recent = self.recent, defaultdict(int)
            calls, self.calls = self.calls, {}
            self.flushed = dict(recent) if self.after_flush else {}
            self.flushed_calls = dict(calls) if self.after_flush else {}
            rows = [(t, d, m, v, False) for (t, d, m), v in counts.items() if v] + \
                   [(t, d, m, v, True) for (t, d, m), v in gauges.items()]
            if not rows:
                return 0
            try:
                async with self.db.begin() as conn:
                    await conn.execute(upsert_statement(), upsert_parameters(rows))
            except Exception as exc:  # the database is unreachable or refused: keep the counts, try again
                log.warning("metering.flush_failed", keys=len(rows), error=f"{type(exc).__name__}: {exc}")
                for key, value in counts.items():
                    self.counts[key] += value
                for key, value in gauges.items():
                    self.gauges.setdefault(key, value)
                for key, value in recent.items():
                    self.recent[key] += value
                for tenant_id, value in calls.items():
                    self.calls[tenant_id] = self.calls.get(tenant_id, 0) + value
                self.flushed, self.flushed_calls = {}, {}
                return 0
            return len(rows)


def upsert_parameters(rows: list[tuple[str, date, str, int, bool]]) -> dict[str, list[Any]]:
    return {"tenants": [r[0] for r in rows], "days": [r[1] for r in rows], "metrics": [r[2] for r in rows],
            "values": [r[3] for r in rows], "gauges": [r[4] for r in rows]}


def upsert_statement() -> sa.TextClause:
    """All keys of a flush in one INSERT ... ON CONFLICT: counters add to the stored value, gauges replace it."""
    table = catalog.platform_tables()["usage_daily"]
    name = f'"{table.schema}"."{table.name}"'
    return sa.text(
        f"INSERT INTO {name} (tenant_id, day, metric, value) "
        "SELECT t, d, m, v FROM unnest(CAST(:tenants AS uuid[]), CAST(:days AS date[]), CAST(:metrics AS text[]), "
        "CAST(:values AS bigint[]), CAST(:gauges AS boolean[])) AS u(t, d, m, v, g) "
        "ON CONFLICT (tenant_id, day, metric) DO UPDATE SET "
        f"value = CASE WHEN EXCLUDED.metric IN ({', '.join(repr(g) for g in GAUGES)}) THEN EXCLUDED.value "
        f"ELSE {name}.value + EXCLUDED.value END"
    ).bindparams(sa.bindparam("tenants", type_=postgresql.ARRAY(sa.Text())),
                 sa.bindparam("days", type_=postgresql.ARRAY(sa.Date())),
                 sa.bindparam("metrics", type_=postgresql.ARRAY(sa.Text())),
                 sa.bindparam("values", type_=postgresql.ARRAY(sa.BigInteger())),
                 sa.bindparam("gauges", type_=postgresql.ARRAY(sa.Boolean())))


# -- the request's own tally, reported into by the write core --


@dataclass(slots=True)
class RequestUsage:
    """What one request used beyond what the gateway sees itself; `quota` is the tenant's quota state
    the write core consults before a write that grows a metric (engine/quotas.py)."""

    tenant_id: str | None = None
    rows_written: int = 0
    quota: Any = None


CURRENT: ContextVar[RequestUsage | None] = ContextVar("backsaas_request_usage", default=None)


def wrote(rows: int) -> None:
    """The write core wrote `rows` rows for the current request (counted if the request succeeds)."""
    usage = CURRENT.get()
    if usage is not None and rows:
        usage.rows_written += rows


@contextmanager
def rows_kept_on_success() -> Iterator[None]:
    """Rows reported inside the block are forgotten if it raises (its transaction was rolled back): for a
    surface that answers a failure with a success status (GraphQL's errors)."""
    usage = CURRENT.get()
    before = usage.rows_written if usage is not None else 0
    try:
        yield
    except BaseException:
        if usage is not None:
            usage.rows_written = before
        raise
