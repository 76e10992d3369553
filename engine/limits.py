"""How much one request may ask of the server: embed depth, rows per array and per request, body items.

Why: one tenant's request must not hold the database or the event loop that every tenant shares (DESIGN.md,
"The walls", 5). Each bound comes from the tenant's plan (`plans.limits`, a flat key per bound) or else
from the named default below, and both dialects use the same checks:

- `max_embed_depth`: how deep embeds nest (REST `select=a(b(c))`, GraphQL relations and aggregates).
  Checked on the query text before anything recursive parses it, and again on the plan.
- `max_rows`: the most rows of any one array, the top level and every embedded one. Like PostgREST's
  `db-max-rows` it TRUNCATES silently rather than refusing (a larger `limit=`, `Range` or GraphQL `limit` is
  lowered to it; `Content-Range` shows the rows sent, so clients page on). An aggregate is truncated only
  when it lists `nodes` (its summaries then cover those rows, as Hasura's row limit does); a summary alone
  runs over every matching row.
- `max_request_rows`: the rows a request is estimated to return, refused (400 `query_too_costly`) before
  any SQL runs. Each array counts its `limit` (at most `max_rows`), or `ASSUMED_LIST_ROWS` when it has none,
  times the rows of the level it is embedded in; an object embed counts one per parent row. This is an
  estimate, not a bound: an unlimited embedded array really holds up to `max_rows` rows (the statement
  timeout is the backstop), but the nested fan-out that multiplies rows is what it refuses.
- `max_body_items`: the objects one write may carry (REST bulk insert, GraphQL `objects` with their
  nested inserts, `updates`), refused with 413 `too_many_items` before any validation work.
- `max_write_rows`: the rows one update or delete may change (REST PATCH and DELETE, GraphQL `update_*`
  and `delete_*`, the data API of hooks and functions), refused whole with 400 `too_many_rows`: the
  statement looks at one row past the bound and writes nothing when it gets there, so a filter matching a
  tenant's 50,000 rows costs what 1,001 cost (such a PATCH, audited, took seconds of the database's time
  and put another tenant's p99 at 8.9x, bench/noisy_neighbour.py). As `max_body_items` bounds an insert.
- `max_body_bytes`: the bytes of one request body on every surface that reads one (REST, GraphQL,
  functions, auth), refused with 413 `body_too_large` by the gateway before the body is read whole or
  parsed (gateway/bodies.py): by its `Content-Length`, else counted as it streams in.

Plus fixed bounds that protect the parser and PostgreSQL rather than the plan: `MAX_SELECT_ITEMS` (a
SELECT takes at most 1,664 entries) and `MAX_CONDITION_DEPTH` (nested `and(`/`or(`). Large bodies are
validated in a worker thread (`validate_sized`), small ones inline where a thread would cost more than
the work. This module knows plans and request text; it never builds SQL and knows nothing of HTTP.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import structlog

from engine.errors import (
    EmbedTooDeep,
    Problem,
    QueryParseError,
    QueryTooComplex,
    QueryTooCostly,
    TooManyItems,
    TooManyRows,
)
from engine.query.plan import Aggregate, Embed, ReadPlan

DEFAULT_MAX_EMBED_DEPTH = 8  # relation levels below the root
DEFAULT_MAX_ROWS = 1000  # rows of any one array (Supabase's default `max_rows`)
DEFAULT_MAX_REQUEST_ROWS = 100_000  # estimated rows of a whole request
DEFAULT_MAX_BODY_ITEMS = 1000  # objects in one write
DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024  # bytes of one request body (10 MiB)
DEFAULT_MAX_WRITE_ROWS = 1000  # rows one update or delete may change (as many as one insert's body may hold)
ASSUMED_LIST_ROWS = 25  # what an array without a limit counts for in the estimate
MAX_SELECT_ITEMS = 1000  # items of one select= (PostgreSQL: at most 1,664 target entries per SELECT)
MAX_CONDITION_DEPTH = 16  # parentheses nested in one or=/and= (each is a recursive parse and SQL level)
MAX_JSON_PATH_STEPS = 32  # steps of one JSON path (`meta->a->>b`): each is a nested SQL expression
VALIDATE_IN_THREAD_ABOVE = 100  # objects in a body above which validation leaves the event loop

LOGIC_KEYS = ("or", "and")
log = structlog.get_logger("backsaas.limits")
T = TypeVar("T")


@dataclass(frozen=True)
class Bounds:
    """The bounds of one tenant's requests, from its plan's `limits` (hashable: part of cache keys)."""

    max_embed_depth: int = DEFAULT_MAX_EMBED_DEPTH
    max_rows: int = DEFAULT_MAX_ROWS
    max_request_rows: int = DEFAULT_MAX_REQUEST_ROWS
    max_body_items: int = DEFAULT_MAX_BODY_ITEMS
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_write_rows: int = DEFAULT_MAX_WRITE_ROWS

    @classmethod
    def of_plan(cls, limits: Mapping[str, Any] | None) -> Bounds:
        """The plan's values where they are whole numbers of at least 1; the defaults elsewhere (a bad
        value is logged, since plans are operator data without a schema). Read once per limits object:
        the registry keeps one per tenant state, and this runs on every request."""
        if limits is None:
            return DEFAULT_BOUNDS
        known = _KNOWN.get(id(limits))
        if known is not None and known[0] is limits:  # the entry holds the object, so its id is not reused
            return known[1]
        chosen: dict[str, int] = {}
        for name in ("max_embed_depth", "max_rows", "max_request_rows", "max_body_items", "max_body_bytes",
                     "max_write_rows"):
            value = limits.get(name)
            if value is None:
                continue
            if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
                chosen[name] = value
            else:
                log.warning("limits.ignored", limit=name, value=repr(value)[:80])
        bounds = cls(**chosen) if chosen else DEFAULT_BOUNDS
        if len(_KNOWN) >= KNOWN_LIMITS:
            _KNOWN.clear()
        _KNOWN[id(limits)] = (limits, bounds)
        return bounds

    def cap(self, limit: int | None) -> int:
        """The limit an array is read with: the one asked for, at most `max_rows`."""
        return self.max_rows if limit is None else min(limit, self.max_rows)

    def page(self, limit: int | None) -> int:
        """The rows an array counts for in the estimate."""
        return min(ASSUMED_LIST_ROWS if limit is None else limit, self.max_rows)

    def check_items(self, count: int, field: str) -> None:
        """Refuse (413 `too_many_items`) a write of more objects than the plan allows, before any work per item."""
        if count > self.max_body_items:
            raise TooManyItems(f"the body holds {count} items; the plan allows {self.max_body_items} per request",
                               details=[Problem(field, f"at most {self.max_body_items} items")],
                               hint="send the items in several requests")

    def check_reached(self, reached: int | None, action: str) -> None:
        """Refuse (400 `too_many_rows`) an update or a delete that reached more rows than `max_write_rows`.
        Its statement looks at no more than one row past the bound and writes nothing when it is past it
        (engine.query.sql `bounded_target`), so the refusal costs what the bound's rows cost, however many
        rows the filters match, and leaves no change."""
        if reached is not None and reached > self.max_write_rows:
            raise TooManyRows(f"this {action} reaches more than {self.max_write_rows} rows, the most the plan allows "
                              "one write to change; nothing was changed",
                              hint="narrow the filters, or change the rows in several requests (REST: limit= with "
                                   "order=)")


DEFAULT_BOUNDS = Bounds()
KNOWN_LIMITS = 1024  # limits objects remembered (one per cached tenant state)
_KNOWN: dict[int, tuple[Mapping[str, Any], Bounds]] = {}


# -- the query text, before it is parsed ------------------------------------------------------------------


def nesting(text: str) -> tuple[int, int]:
    """(deepest parenthesis nesting, items at every level) of a select= or logic value, outside double
    quotes, in one pass with no recursion."""
    depth = deepest = 0
    items = 1
    quoted = False
    for char in text:
        if char == '"':
            quoted = not quoted
        elif quoted:
            continue
        elif char == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif char == ")":
            depth -= 1
        elif char == ",":
            items += 1
    return deepest, items


def check_query(params: Iterable[tuple[str, str]], bounds: Bounds) -> None:
    """Refuse, before parsing, a select= nested deeper than the plan allows or with more items than a
    SELECT holds, a select= with control characters other than whitespace (an alias reaches SQL, and a
    NUL there broke the connection: a 503), and conditions nested deeper than `MAX_CONDITION_DEPTH`."""
    for key, value in params:
        last = key.rpartition(".")[2]
        if last == "select":
            if any(ord(char) < 32 and char not in "\t\n\r" for char in value):
                raise QueryParseError(f"{key}= holds a control character",
                                      details=[Problem(key, "names and aliases hold no control characters")])
            depth, items = nesting(value)
            if depth > bounds.max_embed_depth:
                raise _too_deep(key, depth, bounds)
            if items > MAX_SELECT_ITEMS:
                raise QueryTooComplex(f"{key}= selects {items} items; at most {MAX_SELECT_ITEMS} are allowed",
                                      details=[Problem(key, f"at most {MAX_SELECT_ITEMS} items")])
        elif last in LOGIC_KEYS:
            depth, _ = nesting(value)
            if depth > MAX_CONDITION_DEPTH:
                raise QueryTooComplex(f"{key}= nests conditions {depth} levels deep; at most {MAX_CONDITION_DEPTH} "
                                      "are allowed", details=[Problem(key, f"at most {MAX_CONDITION_DEPTH} levels")])


def check_json_path(base: str, steps: int) -> None:
    """Refuse a JSON path of more than `MAX_JSON_PATH_STEPS` steps (REST's and RPC's alike)."""
    if steps > MAX_JSON_PATH_STEPS:
        raise QueryTooComplex(f"a JSON path of {base} takes {steps} steps; at most {MAX_JSON_PATH_STEPS} are allowed",
                              details=[Problem(base, f"at most {MAX_JSON_PATH_STEPS} steps")])


def _too_deep(field: str, depth: int, bounds: Bounds) -> EmbedTooDeep:
    return EmbedTooDeep(f"embeds nest {depth} levels deep; the plan allows {bounds.max_embed_depth}",
                        details=[Problem(field, f"at most {bounds.max_embed_depth} nested embeds")],
                        hint="read the deeper levels in a second request")


# -- the plan, before any SQL ---------------------------------------------------------------------------------


class RowBudget:
    """The estimated rows of one request, summed over its plans (REST has one, a GraphQL operation one per
    root field): `admit` truncates each plan's arrays at `max_rows` and refuses the request once the
    estimate passes `max_request_rows` or an embed nests deeper than `max_embed_depth`."""

    def __init__(self, bounds: Bounds, field: str = "select") -> None:
        self.bounds = bounds
        self.field = field  # where the errors point: REST's select=, or the GraphQL root field
        self.rows = 0

    def admit(self, plan: ReadPlan, *, single: bool = False, truncate_root: bool = True,
              field: str | None = None) -> ReadPlan:
        """`plan` with its arrays truncated; `single` for a root of at most one row (`_by_pk`), and the root
        left as it is with `truncate_root=False` (what a write returns is the rows it wrote); `field` is
        where errors point from now on (a GraphQL root field)."""
        self.field = field or self.field
        if single:
            own, limit = 1, plan.limit
        else:
            own = self.bounds.page(plan.limit)
            limit = self.bounds.cap(plan.limit) if truncate_root else plan.limit
        bounded = self._level(plan, own, 0)
        return replace(bounded, limit=limit)

    def admit_aggregate(self, aggregate: Aggregate, field: str | None = None) -> Aggregate:
        """A root `_aggregate`: one summary object, and its `nodes` counted and truncated as a list."""
        self.field = field or self.field
        return self._aggregate(aggregate, 1, 0)

    def _count(self, rows: int) -> None:
        self.rows += rows
        if self.rows > self.bounds.max_request_rows:
            raise QueryTooCostly(f"the request may return about {self.rows} rows; the plan allows "
                                 f"{self.bounds.max_request_rows}",
                                 details=[Problem(self.field, f"about {self.rows} rows, counting "
                                                  f"{ASSUMED_LIST_ROWS} for each list without a limit")],
                                 hint="set limits on the nested lists (e.g. children.limit=10) or nest fewer lists")

    def _level(self, plan: ReadPlan, rows: int, depth: int) -> ReadPlan:
        """The embeds and aggregates of a level holding `rows` rows, `depth` relations below the root."""
        self._count(rows)
        embeds: list[Embed] = []
        for embed in plan.embeds:
            if depth + 1 > self.bounds.max_embed_depth:
                raise _too_deep(self.field, depth + 1, self.bounds)
            child = embed.plan
            if embed.relation.kind == "many":
                child = replace(self._level(child, rows * self.bounds.page(child.limit), depth + 1),
                                limit=self.bounds.cap(child.limit))
            else:
                child = self._level(child, rows, depth + 1)
            embeds.append(replace(embed, plan=child))
        aggregates = tuple(self._aggregate(a, rows, depth + 1) if a.relation is not None else a
                           for a in plan.aggregates)
        return replace(plan, embeds=tuple(embeds), aggregates=aggregates)

    def _aggregate(self, aggregate: Aggregate, rows: int, depth: int) -> Aggregate:
        if depth > self.bounds.max_embed_depth:
            raise _too_deep(self.field, depth, self.bounds)
        if not aggregate.nodes:
            self._count(rows)  # one summary object per parent row
            return aggregate
        plan = aggregate.plan
        listed = self._level(plan, rows * self.bounds.page(plan.limit), depth)
        return replace(aggregate, plan=replace(listed, limit=self.bounds.cap(plan.limit)))


# -- bodies -----------------------------------------------------------------------------------------------------


async def validate_sized(size: int, validate: Callable[[], T]) -> T:
    """`validate()` inline for small bodies, in a worker thread above `VALIDATE_IN_THREAD_ABOVE` objects, so
    that a big batch does not hold the event loop (and a small write does not pay for a thread)."""
    if size > VALIDATE_IN_THREAD_ABOVE:
        return await asyncio.to_thread(validate)
    return validate()
