"""Who in this process waits for what to change: the hub the NOTIFY feeds wake.

Every statement writing a tenant's table NOTIFYs `schema.table` on `CHANGES_FEED` (a trigger installed at
deploy), from whichever process made the change; the registry's LISTEN connection hands each payload
to `ChangeHub.changed`, which wakes the watchers of that table (SSE streams, GraphQL subscriptions).

Open streams also watch what their credential depends on (`tenant_key`, `session_key`, `CREDENTIALS`): the
registry wakes those when a tenant's row, keys or members change, when sessions are revoked and when the
token signing keys change, so that a stream whose credential ended is closed at once, on every process.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

CREDENTIALS = "#credentials"  # woken when any credential may have ended (the signing keys changed)


def tenant_key(slug: str) -> str:
    """What a stream of tenant `slug` watches: its row, its API keys or its members changed."""
    return f"#tenant:{slug}"


def session_key(ident: str) -> str:
    """What a stream of a signed-in user watches: their session (by its id), or every session of their
    tenant (by the tenant's id), was revoked."""
    return f"#session:{ident}"


class ChangeHub:
    def __init__(self) -> None:
        self._watchers: dict[str, set[asyncio.Event]] = {}
        self.listening = False  # whether the NOTIFY feeds reach this hub now (the registry's LISTEN is up)

    def add(self, keys: Iterable[str], event: asyncio.Event) -> None:
        """Set `event` whenever one of `keys` changes, until `discard`."""
        for key in keys:
            self._watchers.setdefault(key, set()).add(event)

    def discard(self, keys: Iterable[str], event: asyncio.Event) -> None:
        for key in keys:
            watchers = self._watchers.get(key)
            if watchers is not None:
                watchers.discard(event)
                if not watchers:
                    del self._watchers[key]

    @contextmanager
    def watch(self, keys: Iterable[str]) -> Iterator[asyncio.Event]:
        """An event set whenever one of `keys` (tables as `schema.table`) changes, for the life of the block."""
        event, keys = asyncio.Event(), set(keys)
        self.add(keys, event)
        try:
            yield event
        finally:
            self.discard(keys, event)

    def changed(self, key: str) -> None:
        for event in self._watchers.get(key, ()):
            event.set()

    def changed_all(self) -> None:
        """Wake everyone (the feed was interrupted: changes may have been missed)."""
        for watchers in self._watchers.values():
            for event in watchers:
                event.set()
