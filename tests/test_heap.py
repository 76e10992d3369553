"""A gateway keeps its tenants' compiled runtimes out of the garbage collector's full collections (which
pause every tenant while they walk the heap), and still reclaims the runtimes it lets go (engine/heap.py)."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import AsyncIterator

import pytest

from engine.database import Database
from engine.heap import Heap
from engine.runtime import RuntimeRegistry
from engine.storage.deploy import deploy
from functions.tenants import create_tenant

SCHEMA = """
name: heaped
entities:
  note:
    fields:
      text: {type: text}
"""


@pytest.fixture
async def registry(db: Database) -> AsyncIterator[RuntimeRegistry]:
    registry = RuntimeRegistry(db)
    await registry.start()
    try:
        yield registry
    finally:
        await registry.close()
        gc.unfreeze()  # the test process's heap goes back to how the other tests found it


@pytest.fixture(scope="module")
async def tenant(db: Database) -> str:
    await create_tenant(db, "heaped", source=SCHEMA)
    return "heaped"


async def test_a_compiled_runtime_is_left_out_of_full_collections(registry, tenant):
    gc.unfreeze()
    runtime = await registry.get(tenant)
    assert gc.get_freeze_count() > 0
    assert all(found is not runtime for found in gc.get_objects())  # collections walk none of it


async def test_a_runtime_replaced_by_a_deploy_is_reclaimed(db, registry, tenant):
    registry.heap = Heap(thaw_after=1)  # the first runtime let go thaws the heap
    runtime = await registry.get(tenant)
    first, version = weakref.ref(runtime), runtime.version
    del runtime
    await deploy(db, tenant, SCHEMA + "      title: {type: text}\n")
    for _ in range(100):  # the deploy's NOTIFY reaches the registry's listener
        if (await registry.get(tenant)).version != version:
            break
        await asyncio.sleep(0.05)
    assert (await registry.get(tenant)).version == version + 1
    assert first() is None
    assert gc.get_freeze_count() > 0  # and what stays is frozen again
