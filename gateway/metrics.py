"""`GET /metrics`: the gateway's figures in Prometheus' text format (`prometheus-client`).

Why: an operator watches error rates, latency and backlogs per tenant from Prometheus, across every
gateway process. What is exported:

- `backsaas_requests_total{tenant, surface, method, status}` and `backsaas_request_duration_seconds{tenant,
  surface}` (a histogram): every HTTP request that reached a known tenant (`tenant` is its slug, never a
  name taken from an unknown URL, so nobody can grow the label set; requests outside a tenant count under
  `tenant=""`, surface `other`);
- `backsaas_rate_limited_total{tenant, window}`: refusals of gateway/ratelimit.py;
- `backsaas_db_pool_connections{pool, state}`: each process's connection pools (open, idle, max), summed
  over live processes;
- `backsaas_outbox_events{tenant, status}` (the queue depth: pending and delivering, plus dead) and
  `backsaas_outbox_delivery_failures_total{tenant}` (failed delivery attempts), read from the outbox tables
  when scraped: they are the database's figures, the same whichever process answers.

Multi-process: with `backsaas serve --workers N` the CLI points `PROMETHEUS_MULTIPROC_DIR` at a fresh
directory before the workers start; each worker writes its counters there and whichever worker answers a
scrape adds them all up (`MultiProcessCollector`). Metrics name tenants, so the endpoint is not public: it
answers a bearer token equal to `BACKSAAS_METRICS_TOKEN`, or a platform admin's access token.
"""

from __future__ import annotations

import asyncio
import hmac
import os
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
import structlog
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Scope

from engine import catalog
from engine.database import Database
from engine.errors import BackSaasError, Unauthorized
from engine.runtime import RuntimeRegistry
from engine.storage.naming import SYSTEM_TENANT
from gateway.auth import PLATFORM_ADMIN, bearer_of, token_caller

METRICS_PATH = "/metrics"
TOKEN_VARIABLE = "BACKSAAS_METRICS_TOKEN"
POOL_SECONDS = 5.0  # how often each process records its pools' connections
MAX_LABEL_SETS = 10_000  # label sets whose counters a process keeps at hand
SURFACES = (("/rest/v1", "rest"), ("/graphql/v1", "graphql"), ("/auth/v1", "auth"), ("/functions/v1", "functions"),
            ("/events/v1", "events"))
log = structlog.get_logger("backsaas.metrics")

REQUESTS = Counter("backsaas_requests", "HTTP requests answered, by tenant, surface, method and status",
                   ["tenant", "surface", "method", "status"])
LATENCY = Histogram("backsaas_request_duration_seconds", "time to answer an HTTP request, by tenant and surface",
                    ["tenant", "surface"],
                    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))
RATE_LIMITED = Counter("backsaas_rate_limited", "requests refused by a rate-limit window", ["tenant", "window"])
POOL = Gauge("backsaas_db_pool_connections", "database connections of the gateway processes' pools",
             ["pool", "state"], multiprocess_mode="livesum")


_refusals: dict[tuple[str, str], Any] = {}  # (tenant, window) -> its counter: `labels()` takes a lock


def rate_limited(tenant: str, window: str) -> None:
    """gateway/ratelimit.py's `on_refused` (a client hammering through its 429s calls it for each)."""
    counter = _refusals.get((tenant, window))
    if counter is None:
        if len(_refusals) >= MAX_LABEL_SETS:
            _refusals.clear()
        counter = _refusals[(tenant, window)] = RATE_LIMITED.labels(tenant, window)
    counter.inc()


def surface_of(path: str) -> str:
    for prefix, name in SURFACES:
        if path.startswith(prefix):
            return name
    return "other"


class RequestMetrics:
    """Each HTTP request's count and time, observed once its answer has ended (by the gateway's one
    observing layer, gateway/access.py). A few label lookups and additions: no I/O (the multi-process mode
    writes to memory-mapped files)."""

    def __init__(self) -> None:
        self.children: dict[tuple[str, str, str, int], tuple[Any, Any]] = {}

    def observe(self, scope: Scope, status: int, seconds: float) -> None:
        tenant = scope.get("backsaas.tenant") or ""  # set only once the tenant is resolved
        surface = surface_of(scope["path"][len(scope.get("root_path", "")):]) if tenant else "other"
        key = (tenant, surface, scope["method"], status)
        children = self.children.get(key)
        if children is None:  # `labels()` takes a lock and builds the label tuple: once per label set
            if len(self.children) >= MAX_LABEL_SETS:
                self.children.clear()
            children = self.children[key] = (REQUESTS.labels(tenant, surface, key[2], str(status)),
                                              LATENCY.labels(tenant, surface))
        children[0].inc()
        children[1].observe(seconds)


def record_pools(db: Database) -> None:
    for pool, counts in db.connection_counts().items():
        for state, value in counts.items():
            POOL.labels(pool, state).set(value)


async def pool_recorder(db: Database) -> None:
    """Record this process's pools every `POOL_SECONDS` (each process its own; the scrape adds them)."""
    while True:
        try:
            record_pools(db)
        except Exception as exc:  # a figure missed is logged; the next turn tries again
            log.warning("metrics.pools_failed", error=f"{type(exc).__name__}: {exc}")
        await asyncio.sleep(POOL_SECONDS)


def process_ended() -> None:
    """On shutdown: a dead worker's live gauges leave the sums (multi-process mode)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(os.getpid())


class OutboxCollector(Collector):
    """The outbox's figures as read just before a scrape (`collect` cannot await, so `refresh` reads them)."""

    def __init__(self) -> None:
        self.depth: list[tuple[str, str, int]] = []
        self.failures: list[tuple[str, int]] = []

    async def refresh(self, db: Database) -> None:
        t = catalog.platform_tables()
        events, deliveries, tenants = t["events"], t["deliveries"], t["tenants"]
        async with db.engine.connect() as conn:
            depth = await conn.execute(
                sa.select(tenants.c.slug, events.c.status, sa.func.count())
                .select_from(events.join(tenants, tenants.c.id == events.c.tenant_id))
                .where(events.c.status.in_(("pending", "delivering", "dead")))
                .group_by(tenants.c.slug, events.c.status))
            failures = await conn.execute(
                sa.select(tenants.c.slug, sa.func.count())
                .select_from(deliveries.join(tenants, tenants.c.id == deliveries.c.tenant_id))
                .where(sa.not_(deliveries.c.succeeded)).group_by(tenants.c.slug))
            self.depth = [(slug, status, count) for slug, status, count in depth]
            self.failures = [(slug, count) for slug, count in failures]

    def collect(self) -> Iterator[Any]:
        depth = GaugeMetricFamily("backsaas_outbox_events", "outbox events waiting (pending, delivering) or dead",
                                  labels=["tenant", "status"])
        for slug, status, count in self.depth:
            depth.add_metric([slug, status], count)
        failed = CounterMetricFamily("backsaas_outbox_delivery_failures", "failed webhook and hook delivery attempts",
                                     labels=["tenant"])
        for slug, count in self.failures:
            failed.add_metric([slug], count)
        yield depth
        yield failed


class MetricsToken(BackSaasError):
    code = "metrics_unauthorized"
    status = 401


async def check_scraper(registry: RuntimeRegistry, headers: dict[str, str]) -> None:
    """Let through a bearer equal to `BACKSAAS_METRICS_TOKEN`, or a platform admin's access token; 401
    otherwise (metrics name tenants)."""
    bearer = bearer_of(headers)
    if not bearer:
        raise MetricsToken("/metrics needs a bearer token: BACKSAAS_METRICS_TOKEN or a platform admin's")
    expected = os.environ.get(TOKEN_VARIABLE)
    if expected and hmac.compare_digest(bearer.encode(), expected.encode()):
        return
    try:
        caller = await token_caller(registry, await registry.get(SYSTEM_TENANT), bearer)
    except Unauthorized:
        caller = None
    if caller is None or PLATFORM_ADMIN not in caller.roles:
        raise MetricsToken("this token may not read /metrics")


def exposition(outbox: OutboxCollector) -> bytes:
    """Every process's figures (multi-process mode) or this one's, plus the outbox's."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = CollectorRegistry()
        registry.register(_Default())
    registry.register(outbox)
    return generate_latest(registry)


class _Default(Collector):
    """The process's own registry, as one collector of the scrape's registry."""

    def collect(self) -> Iterator[Any]:
        yield from REGISTRY.collect()


async def metrics_response(registry: RuntimeRegistry, db: Database, outbox: OutboxCollector,
                           headers: dict[str, str]) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """(status, headers, body) of `GET /metrics`."""
    await check_scraper(registry, headers)
    record_pools(db)
    await outbox.refresh(db)
    return 200, [(b"content-type", CONTENT_TYPE_LATEST.encode())], exposition(outbox)


async def metrics_endpoint(request: Request) -> Response:
    """The Starlette route of `GET /metrics` (outside every tenant)."""
    state = request.app.state
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.scope["headers"]}
    try:
        status, extra, body = await metrics_response(state.registry, state.db, state.outbox_metrics, headers)
    except BackSaasError as error:
        return JSONResponse(error.as_dict(), status_code=error.status, headers={"WWW-Authenticate": "Bearer"})
    return Response(body, status_code=status, headers={k.decode(): v.decode() for k, v in extra})
