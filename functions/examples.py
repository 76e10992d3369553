"""Example hooks an operator may name in a schema (`examples.noop`, `examples.slug_from_title`), and the
shape of every hook: `(ctx, change)`, returning the altered record (before_*) or None."""

from __future__ import annotations

import re

from engine.hooks import Change, HookContext, Refuse, function, hook


@hook
async def noop(ctx: HookContext, change: Change) -> None:
    """Does nothing: what a hook costs by itself (bench/rest.py measures it)."""


@hook
async def slug_from_title(ctx: HookContext, change: Change) -> dict | None:
    """before_create/before_update: sets `slug` from `title` (`Hello, World!` -> `hello-world`)."""
    record = change.record or {}
    title = record.get("title")
    if title is None:
        return None
    slug = re.sub(r"[^a-z0-9]+", "-", str(title).lower()).strip("-")
    if not slug:
        raise Refuse("the title needs at least one letter or digit", field="title")
    return {**record, "slug": slug}


@function
async def whoami(ctx: HookContext, payload: dict | None) -> dict:
    """A function clients may call (`functions.invoke('whoami')`): who the engine thinks the caller is, and
    the payload echoed back, so a client can check its credentials and its wiring end to end."""
    return {"tenant": ctx.tenant, "user_id": ctx.caller.user_id, "roles": list(ctx.caller.roles), "payload": payload}
