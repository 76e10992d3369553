"""The billing sweep, run periodically by every gateway process (and on demand: `backsaas billing sweep`).

Time moves subscriptions too: a grace period runs out, a manual trial or period ends (operations.sweep).
Every process sweeping is safe: each subscription is moved in its own transaction under its row lock,
after checking it is still due, so two processes never move one twice. A failed sweep is logged and
tried again at the next interval; it never stops the gateway.
"""

from __future__ import annotations

import asyncio
import os
import random

import structlog

from engine.billing import operations
from engine.database import Database

INTERVAL_ENV = "BACKSAAS_BILLING_SWEEP_SECONDS"
DEFAULT_INTERVAL = 300.0
log = structlog.get_logger("backsaas.billing")


class BillingSweeper:
    def __init__(self, db: Database, interval: float | None = None) -> None:
        self.db = db
        self.interval = interval if interval is not None else float(os.environ.get(INTERVAL_ENV) or DEFAULT_INTERVAL)
        self.task: asyncio.Task[None] | None = None

    def start(self) -> BillingSweeper:
        self.task = asyncio.create_task(self.run())
        return self

    async def run(self) -> None:
        while True:
            # spread the processes' sweeps over the interval rather than all at once
            await asyncio.sleep(self.interval * random.uniform(0.5, 1.0))
            try:
                done = await operations.sweep(self.db)
            except Exception as exc:  # the database is down, or a subscription refused: next time
                log.warning("billing.sweep_failed", error=f"{type(exc).__name__}: {exc}")
                continue
            if any(done.values()):
                log.info("billing.swept", **done)

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
