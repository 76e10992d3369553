"""Who in this process waits for changes to which tables: the hub the NOTIFY feed wakes.

Every statement writing a tenant's table NOTIFYs `schema.table` on `CHANGES_FEED` (a trigger installed at
deploy), from whichever process made the change; the registry's LISTEN connection hands each payload
to `ChangeHub.changed`, which wakes the watchers of that table (GraphQL subscriptions).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from contextlib import contextmanager


class ChangeHub:
    def __init__(self) -> None:
        self._watchers: dict[str, set[asyncio.Event]] = {}

    @contextmanager
    def watch(self, tables: Iterable[str]) -> Iterator[asyncio.Event]:
        """An event set whenever one of `tables` (`schema.table`) changes, for the life of the block."""
        event = asyncio.Event()
        keys = set(tables)
        for key in keys:
            self._watchers.setdefault(key, set()).add(event)
        try:
            yield event
        finally:
            for key in keys:
                watchers = self._watchers.get(key)
                if watchers is not None:
                    watchers.discard(event)
                    if not watchers:
                        del self._watchers[key]

    def changed(self, table: str) -> None:
        for event in self._watchers.get(table, ()):
            event.set()

    def changed_all(self) -> None:
        """Wake everyone (the feed was interrupted: changes may have been missed)."""
        for watchers in self._watchers.values():
            for event in watchers:
                event.set()
