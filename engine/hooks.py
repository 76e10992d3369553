"""Operator-installed logic: hooks on writes and functions clients call, as Python functions in `functions/`.

A schema names them `module.function` (`blog.set_slug` is `set_slug` in `functions/blog.py`), and
only functions registered with the decorators below answer to a name, so a typo or an unregistered
helper is a schema error at deploy time, never a surprise at request time:

    from engine.hooks import Change, HookContext, Refuse, function, hook

    @hook
    async def set_slug(ctx: HookContext, change: Change) -> dict | None:
        if not change.record.get("title"):
            raise Refuse("a post needs a title", field="title")
        return {**change.record, "slug": slugify(change.record["title"])}   # before_*: the altered change

    @function
    async def publish(ctx: HookContext, payload: dict) -> dict:
        return await ctx.data.update("post", {"id": f"eq.{payload['id']}"}, {"status": "published"})

A hook gets the change (`record`: the new values; `old`: the row before, for updates and deletes) and a
context: the tenant, the caller, a logger, and `data`, the engine's own read and write calls bound to
the request's transaction, with the caller's permissions (`ctx.data.elevated()` acts as `service`).
Synchronous functions are run in a worker thread. Every call has a time limit.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from engine.authz import Caller
from engine.errors import BackSaasError, Problem, ValidationFailed
from engine.schema.model import HOOK_EVENTS, Schema

if TYPE_CHECKING:
    from engine.data import DataApi

MARK = "__backsaas_kind__"
HookFunction = Callable[..., Any]


def hook(fn: HookFunction) -> HookFunction:
    """Register `fn(ctx, change)` as a hook that schemas may name."""
    setattr(fn, MARK, "hook")
    return fn


def function(fn: HookFunction) -> HookFunction:
    """Register `fn(ctx, payload)` as a function that schemas may expose at /functions/v1/{name}."""
    setattr(fn, MARK, "function")
    return fn


@dataclass(frozen=True)
class Change:
    entity: str
    action: str  # create | update | delete
    record: dict[str, Any] | None  # the new values (a patch, for before_update)
    old: dict[str, Any] | None = None


@dataclass(frozen=True)
class HookContext:
    tenant: str
    caller: Caller
    event: str  # before_create, ..., or function:{name}
    data: DataApi
    log: Any


class Refuse(ValidationFailed):
    """Raised by a hook to refuse a change: 422 with the hook's message, on `field` when given."""

    code = "hook_refused"

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message, details=[Problem(field or "", message)])


class HookFailed(BackSaasError):
    """An operator's function raised or ran out of time: the request fails, nothing is written."""

    code = "hook_failed"
    status = 500


class HookTimeout(HookFailed):
    code = "hook_timeout"
    status = 504


def resolve(name: str, kind: str = "hook") -> HookFunction | None:
    """The registered function called `name` (`module.function` under `functions/`), or None."""
    module_name, _, attribute = name.rpartition(".")
    try:
        module = importlib.import_module(f"functions.{module_name}")
    except ImportError:
        return None
    found = getattr(module, attribute, None)
    return found if callable(found) and getattr(found, MARK, None) == kind else None


def missing_handlers(model: Schema) -> list[Problem]:
    """Every hook and exposed function of the model that names no registered function."""
    problems = []
    for entity in model.entities:
        for event in HOOK_EVENTS:
            for index, item in enumerate(h for h in entity.hooks if h.event == event):
                if item.function and resolve(item.function) is None:
                    module, _, name = item.function.rpartition(".")
                    problems.append(Problem(f"entities.{entity.name}.hooks.{event}[{index}]",
                                            f"no hook '{item.function}' is installed (@hook on {name} in "
                                            f"functions/{module.replace('.', '/')}.py)"))
    for exposed in model.functions:
        if resolve(exposed.handler, "function") is None:
            problems.append(Problem(f"functions.{exposed.name}.handler",
                                    f"no function '{exposed.handler}' is installed (with @function)"))
    return problems


async def call(fn: HookFunction, name: str, timeout: float, *args: Any) -> Any:
    """Run an operator's function with its time limit; its failures become `HookFailed`/`HookTimeout`
    (a `Refuse` or another engine error passes through as it is)."""
    try:
        if inspect.iscoroutinefunction(fn):
            return await asyncio.wait_for(fn(*args), timeout)
        return await asyncio.wait_for(asyncio.to_thread(fn, *args), timeout)
    except TimeoutError as exc:
        raise HookTimeout(f"'{name}' did not finish within {timeout:g} s; nothing was written") from exc
    except BackSaasError:
        raise
    except Exception as exc:  # the operator's code failed: report which, log the trace, write nothing
        structlog.get_logger("backsaas.hooks").exception("hook.failed", hook=name)
        raise HookFailed(f"'{name}' failed: {type(exc).__name__}; nothing was written") from exc

