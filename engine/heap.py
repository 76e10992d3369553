"""Keep the garbage collector's full collections short: what a gateway keeps for its life is frozen.

A full (generation 2) collection walks every tracked object of the process while holding the GIL, so every
tenant's requests wait for it. Most of a gateway's heap is long-lived by design: modules, the platform, and
the compiled runtimes of the tenants it serves (engine/runtime.py keeps up to 512). A full collection of
~170,000 objects took 80-120 ms here, and the heap grows with every tenant a process serves, so one tenant
whose first requests made the process compile (a new runtime, a first platform call) stalled all the others
for that long (bench/noisy_neighbour.py). `gc.freeze()` moves what is alive now into the permanent
generation, which collections skip; later allocations are collected as before.

What is frozen and later dropped in a reference cycle (a runtime replaced by a deploy, or evicted) is not
reclaimed while frozen, so `Heap` counts dropped runtimes and, past `THAW_AFTER_DROPS`, thaws and collects
once: one full collection per that many drops instead of one whenever the heap grows by a quarter.
"""

from __future__ import annotations

import gc

import structlog

log = structlog.get_logger("backsaas.heap")

THAW_AFTER_DROPS = 64


class Heap:
    """The process's frozen heap: `settle()` after loading what stays, `dropped()` for what left."""

    def __init__(self, thaw_after: int = THAW_AFTER_DROPS) -> None:
        self.thaw_after = thaw_after
        self.drops = 0

    def settle(self, *, collect: bool = False) -> None:
        """Freeze what is alive now: long-lived objects leave the collections that pause requests. With
        `collect` (at start, before any request waits), garbage is collected first rather than frozen."""
        if collect:
            gc.collect()
        gc.freeze()

    def dropped(self, count: int) -> None:
        """`count` long-lived things (runtimes) were let go; past the bound, reclaim what they left frozen."""
        if not count:
            return
        self.drops += count
        if self.drops < self.thaw_after:
            return
        self.drops = 0
        gc.unfreeze()
        collected = gc.collect()
        gc.freeze()
        log.info("heap.thawed", collected=collected, frozen=gc.get_freeze_count())
