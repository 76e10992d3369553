"""Installed logic: hooks on writes and functions clients call, in two registries that never mix.

- The **tenant registry**: what a tenant's schema may name. The shipped examples (`functions/examples.py`)
  and the operator's own functions directory (`BACKSAAS_FUNCTIONS_DIR`, or `backsaas serve --functions-dir`;
  by default `./functions` of the directory the server runs in), registered with `@hook` and `@function`.
- The **platform registry**: the platform's own operations (`functions/tenants.py`, `members.py`,
  `deploys.py`, `secrets.py`), which act on any tenant through the platform's connection. They are
  registered with `@platform_hook` and `@platform_function`, which refuse any function defined outside
  those shipped modules, so no operator's or tenant's code can add one; only the system tenant's schema
  (`platform.yaml`) binds them, and each one still checks its caller itself (`functions/access.py`).

A schema names a function `module.function` (`blog.set_slug` is `set_slug` in `blog.py` of the operator's
directory), and only a registered function answers to a name, so a typo, an unregistered helper or a
platform operation named by a tenant is a schema error at deploy time, never a surprise at request time.
`call`, which runs every hook and function, checks the registry against the tenant once more:

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
import os
import pkgutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import structlog

from engine.authz import Caller
from engine.errors import (
    BackSaasError,
    DatabaseUnavailable,
    Forbidden,
    Problem,
    ValidationFailed,
    input_refusal,
    is_outage,
)
from engine.schema.model import HOOK_EVENTS, Schema
from engine.storage.naming import SYSTEM_TENANT

if TYPE_CHECKING:
    from engine.data import DataApi

MARK = "__backsaas_kind__"
HookFunction = Callable[..., Any]

SHIPPED_PACKAGE = "functions"
SHIPPED_DIRECTORY = Path(__file__).resolve().parent.parent / SHIPPED_PACKAGE
PLATFORM_MODULES = frozenset({"tenants", "members", "deploys", "secrets", "keys", "users", "access", "usage",
                              "billing", "dashboard"})
"""The platform's own modules in `functions/`: only they define platform operations, and their names are
the platform's (a tenant schema's `tenants.x` is never looked up, in `functions/` or the operator's directory)."""
FUNCTIONS_DIR_ENV = "BACKSAAS_FUNCTIONS_DIR"
OPERATOR_PACKAGE = "backsaas_operator_functions"  # the operator's directory, imported as this package
PLATFORM_MODULES |= {"branding", "domains", "gdpr"}  # the trust layer's: white-label, custom domains, privacy

_platform: dict[str, HookFunction] = {}  # "tenants.reveal_keys" -> the function, filled by the decorators
PLATFORM_MODULES |= {"audit"}  # the audit trail's reading, verification and export (functions/audit.py)


def hook(fn: HookFunction) -> HookFunction:
    """Register `fn(ctx, change)` as a hook that tenant schemas may name."""
    setattr(fn, MARK, "hook")
    return fn


def function(fn: HookFunction) -> HookFunction:
    """Register `fn(ctx, payload)` as a function that tenant schemas may expose at /functions/v1/{name}."""
    setattr(fn, MARK, "function")
    return fn


def platform_hook(fn: HookFunction) -> HookFunction:
    """Register `fn(ctx, change)` as a hook of the platform's own entities (bound by platform.yaml only)."""
    return _register_platform(fn, "hook")


def platform_function(fn: HookFunction) -> HookFunction:
    """Register `fn(ctx, payload)` as a platform operation at /api/platform/functions/v1 (platform.yaml only)."""
    return _register_platform(fn, "function")


def _register_platform(fn: HookFunction, kind: str) -> HookFunction:
    package, _, module = fn.__module__.partition(".")
    try:  # where the code really is, not only what it says its module is (`__module__` can be set by anyone)
        defined_in = Path(inspect.getfile(fn)).resolve()
    except TypeError:
        defined_in = None
    shipped = defined_in is not None and defined_in.parent == SHIPPED_DIRECTORY and defined_in.stem == module
    if package != SHIPPED_PACKAGE or module not in PLATFORM_MODULES or not shipped:
        raise TypeError(f"{fn.__module__}.{fn.__qualname__}: platform operations are defined only in the "
                        f"platform's own modules (functions/{{{','.join(sorted(PLATFORM_MODULES))}}}.py), "
                        "never by an operator's functions directory; use @hook or @function")
    setattr(fn, MARK, f"platform_{kind}")
    _platform[f"{module}.{fn.__name__}"] = fn
    return fn


def is_platform_operation(fn: HookFunction) -> bool:
    return str(getattr(fn, MARK, "")).startswith("platform_")


class HandlerBroken(BackSaasError):
    """An installed module that names a hook or function fails to import: the server's, not the caller's, fault."""

    code = "hook_failed"
    status = 500


class PlatformOnly(Forbidden):
    """A platform operation reached from a tenant (or tenant code from the system tenant): refused, whatever
    the binding or the caller."""

    code = "platform_operation"


class FunctionsDirMissing(BackSaasError):
    code = "functions_dir_missing"
    status = 400


def use_functions_dir(path: str) -> Path:
    """Name the operator's functions directory for this process and the ones it starts (`--functions-dir`)."""
    resolved = Path(path).expanduser().resolve()
    if not resolved.is_dir():
        raise FunctionsDirMissing(f"the functions directory {resolved} does not exist",
                                  hint="give a directory of .py files whose @hook and @function tenant schemas name")
    os.environ[FUNCTIONS_DIR_ENV] = str(resolved)
    return resolved


def functions_dir() -> Path | None:
    """The operator's functions directory: `BACKSAAS_FUNCTIONS_DIR`, else `./functions` when it exists and is
    not the shipped package itself (as in a checkout of BackSaas); None when there is none."""
    configured = os.environ.get(FUNCTIONS_DIR_ENV)
    path = Path(configured).resolve() if configured else (Path.cwd() / SHIPPED_PACKAGE).resolve()
    if path == SHIPPED_DIRECTORY or not path.is_dir():
        return None
    return path


def _split(name: str) -> tuple[str, str] | None:
    """`module.function` as (module, function): identifiers only, none private (no `__init__`, no `_helper`)."""
    parts = name.split(".")
    if len(parts) < 2 or not all(p.isidentifier() and not p.startswith("_") for p in parts):
        return None
    return ".".join(parts[:-1]), parts[-1]


def _import(qualified: str, label: str) -> ModuleType | None:
    """The module `qualified`, or None when there is no such module; a module that exists but fails to
    import is `HandlerBroken` (its error named), never mistaken for a missing one."""
    try:
        return importlib.import_module(qualified)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (qualified == exc.name or qualified.startswith(exc.name + ".")):
            return None
        raise HandlerBroken(f"the functions module '{label}' failed to import: {type(exc).__name__}: {exc}") from exc
    except Exception as exc:  # the operator's module raised while importing: report it by name
        raise HandlerBroken(f"the functions module '{label}' failed to import: {type(exc).__name__}: {exc}") from exc


def _operator_module(module: str) -> ModuleType | None:
    root = functions_dir()
    if root is None:
        return None
    package = sys.modules.get(OPERATOR_PACKAGE)
    if package is None or list(getattr(package, "__path__", ())) != [str(root)]:  # first use, or another directory
        for loaded in [m for m in sys.modules if m == OPERATOR_PACKAGE or m.startswith(OPERATOR_PACKAGE + ".")]:
            del sys.modules[loaded]
        package = ModuleType(OPERATOR_PACKAGE, f"the operator's functions directory, {root}")
        package.__path__ = [str(root)]
        sys.modules[OPERATOR_PACKAGE] = package
        importlib.invalidate_caches()
    return _import(f"{OPERATOR_PACKAGE}.{module}", module)


@cache
def _shipped_modules() -> frozenset[str]:
    return frozenset(m.name for m in pkgutil.iter_modules([str(SHIPPED_DIRECTORY)]))


def _tenant_function(name: str, kind: str) -> HookFunction | None:
    split = _split(name)
    if split is None or split[0].split(".")[0] in PLATFORM_MODULES:
        return None
    module_name, attribute = split
    root = module_name.split(".")[0]
    shipped = root in _shipped_modules() or f"{SHIPPED_PACKAGE}.{root}" in sys.modules  # a shipped name is never the operator's
    module = _import(f"{SHIPPED_PACKAGE}.{module_name}", module_name) if shipped else _operator_module(module_name)
    found = getattr(module, attribute, None) if module is not None else None
    return found if callable(found) and getattr(found, MARK, None) == kind else None


def _platform_function(name: str, kind: str) -> HookFunction | None:
    split = _split(name)
    if split is None or split[0] not in PLATFORM_MODULES:
        return None
    _import(f"{SHIPPED_PACKAGE}.{split[0]}", split[0])  # its decorators register what it defines
    found = _platform.get(name)
    return found if found is not None and getattr(found, MARK, None) == f"platform_{kind}" else None


def is_platform_name(name: str) -> bool:
    split = _split(name)
    return split is not None and split[0].split(".")[0] in PLATFORM_MODULES


def resolve(name: str, kind: str = "hook", tenant: str | None = None) -> HookFunction | None:
    """The function registered as `name`, or None: for the system tenant from the platform registry only,
    for any other tenant from the tenant registry only; without a tenant, from the registry its module
    belongs to (`call` then checks it against the tenant it runs for)."""
    platform = is_platform_name(name) if tenant is None else tenant == SYSTEM_TENANT
    return _platform_function(name, kind) if platform else _tenant_function(name, kind)


def check_binding(fn: HookFunction, name: str, tenant: str) -> None:
    """Refuse a platform operation outside the system tenant, and tenant code inside it (`PlatformOnly`)."""
    if is_platform_operation(fn) and tenant != SYSTEM_TENANT:
        raise PlatformOnly(f"'{name}' is an operation of the platform: it runs only as platform.yaml binds it, "
                           "at /api/platform/functions/v1")
    if not is_platform_operation(fn) and tenant == SYSTEM_TENANT:
        raise PlatformOnly(f"the system tenant runs only the platform's operations, not '{name}'")


def _missing(name: str, kind: str, tenant: str | None) -> str | None:
    """Why `name` cannot be bound (None when it can)."""
    try:
        if resolve(name, kind, tenant) is not None:
            return None
    except HandlerBroken as exc:
        return exc.message
    decorator = f"@{kind}"
    if tenant is not None and tenant != SYSTEM_TENANT and is_platform_name(name):
        return (f"no {kind} '{name}' is installed for tenant schemas: '{name.split('.')[0]}' holds the platform's "
                "own operations, which only platform.yaml binds")
    if tenant == SYSTEM_TENANT:
        return f"no platform {kind} '{name}' is installed (@platform_{kind} in the platform's own modules)"
    module, _, attribute = name.rpartition(".")
    return (f"no {kind} '{name}' is installed ({decorator} on {attribute} in {module.replace('.', '/')}.py of the "
            "functions directory)")


def missing_handlers(model: Schema, tenant: str | None = None) -> list[Problem]:
    """Every hook and exposed function of the model that names nothing `tenant` may bind (see `resolve`:
    every deploy path a tenant reaches passes its tenant)."""
    problems = []
    for entity in model.entities:
        for event in HOOK_EVENTS:
            for index, item in enumerate(h for h in entity.hooks if h.event == event):
                why = _missing(item.function, "hook", tenant) if item.function else None
                if why:
                    problems.append(Problem(f"entities.{entity.name}.hooks.{event}[{index}]", why))
    for exposed in model.functions:
        why = _missing(exposed.handler, "function", tenant)
        if why:
            problems.append(Problem(f"functions.{exposed.name}.handler", why))
    return problems


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


async def call(fn: HookFunction, name: str, timeout: float, context: HookContext, *args: Any) -> Any:
    """Run an installed function with its time limit, once its registry matches the tenant it runs for
    (`PlatformOnly` otherwise); its failures become `HookFailed`/`HookTimeout` (a `Refuse` or another
    engine error passes through as it is)."""
    check_binding(fn, name, context.tenant)
    try:
        if inspect.iscoroutinefunction(fn):
            return await asyncio.wait_for(fn(context, *args), timeout)
        return await asyncio.wait_for(asyncio.to_thread(fn, context, *args), timeout)
    except TimeoutError as exc:
        raise HookTimeout(f"'{name}' did not finish within {timeout:g} s; nothing was written") from exc
    except BackSaasError:
        raise
    except Exception as exc:  # the operator's code failed: report which, log the trace, write nothing
        if is_outage(exc):  # ...unless the database went away under it: a 503 to retry, like any request's
            raise DatabaseUnavailable() from exc
        refusal = input_refusal(exc)  # ...or the database refused the input: the catalogue's 4xx, as REST's
        if refusal is not None:
            raise refusal from exc
        structlog.get_logger("backsaas.hooks").exception("hook.failed", hook=name)
        raise HookFailed(f"'{name}' failed: {type(exc).__name__}; nothing was written") from exc

