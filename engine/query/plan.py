"""The plan: what a read or a write asks for, resolved against the model, with no HTTP and no SQL in it.

REST and GraphQL parse their requests into plans; `engine.query.sql` renders them. A plan holds no
values: each filter value is a numbered parameter, so a plan is also the cache key of the statement
that serves every request of its shape.

Permissions live in the plan (Hasura's shape): every level that reaches rows of an entity carries the
caller's row scope for that entity and action (`scope`, made by `engine.authz.permissions` and nowhere
else), apart from the request's own `where`: a read and each embed, a filter and an order through a
relation, an aggregate, the rows a write touches, the row an upsert meets and the rows a write returns.
The SQL builder renders both; it never decides.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from engine.schema.model import OWNER_COLUMN, USERS, Schema

OPERATORS = ("eq", "neq", "gt", "gte", "lt", "lte", "like", "ilike", "in", "is")
# PostgREST's operators beyond those: containment (arrays, json), regular expressions (PostgreSQL's own
# engine, inside the database under the statement timeout), full-text search, IS DISTINCT FROM
MORE_OPERATORS = ("cs", "cd", "ov", "match", "imatch", "fts", "plfts", "phfts", "wfts", "isdistinct")
QUANTIFIABLE = ("eq", "neq", "gt", "gte", "lt", "lte", "like", "ilike", "match", "imatch")  # `op(any)`, `op(all)`
CASTS = ("text", "integer", "bigint", "numeric", "double precision", "boolean", "date", "timestamptz", "json",
         "jsonb", "uuid")
IS_VALUES = ("null", "true", "false", "unknown")


@dataclass(frozen=True)
class Relation:
    """An embeddable link: `one` (many-to-one, an object or null) or `many` (one-to-many, an array)."""

    name: str
    kind: str  # one | many
    target: str
    source_column: str  # column on the embedding entity
    target_column: str  # column on the embedded entity


@dataclass(frozen=True)
class JsonStep:
    """One step of a JSON path (`->` gives json, `->>` text): the key (or, `index`, the array position) is
    the value of parameter `param`, never SQL text."""

    arrow: str  # -> | ->>
    param: int
    index: bool = False


@dataclass(frozen=True)
class Filter:
    column: str
    op: str
    param: int  # index of the value in the request's parameter list (a string, or a list for `in`)
    negate: bool = False
    path: tuple[JsonStep, ...] = ()  # PostgREST's `meta->a->>b=eq.x`: the filter applies to the path's value
    quantifier: str | None = None  # any | all: `eq(any).{a,b}`, the value is a list
    config: int | None = None  # a text search's configuration (`fts(english)`), a parameter


@dataclass(frozen=True)
class Membership:
    """A `member` row scope: `column` (a tenant id) is a tenant where the user (parameter `param`) holds a
    membership with one of `roles`."""

    column: str
    param: int
    roles: tuple[str, ...]


@dataclass(frozen=True)
class Condition:
    """`and` / `or` of filters and nested conditions (an empty `and` holds for every row)."""

    kind: str  # and | or
    items: tuple[Filter | Membership | RelationFilter | CountFilter | Condition, ...]
    negate: bool = False


NO_ROWS = Condition("and", (), negate=True)  # the scope of a caller who may not see any row


@dataclass(frozen=True)
class RelationFilter:
    """Rows with a related row (one-to-many: at least one) matching `where` (GraphQL's `{author: {...}}`),
    among the related rows the caller may read (`scope`)."""

    relation: Relation
    where: Condition
    scope: Condition | None


@dataclass(frozen=True)
class Reference:
    """A ref column a write sets, and the rows its value may name: those of `target` the caller may read
    (`scope`). A value naming a row outside them is refused as one naming no row is, so that a write can
    neither tie a row to another user's unseen row (whose owner could then not delete it) nor tell
    whether it exists."""

    table: str  # the entity written
    column: str
    target: str
    scope: Condition


@dataclass(frozen=True)
class CountFilter:
    """Hasura's aggregate predicate (`{posts_aggregate: {count: {predicate: {_gt: 1}, filter: {...}}}}`):
    rows whose count of related rows (one-to-many; among those the caller may read, `scope`, that `where`
    keeps; of `columns`' values not null when named, `distinct` or not) meets every one of `predicates`
    (filters on the count: their column is unused)."""

    relation: Relation
    where: Condition
    scope: Condition | None
    predicates: tuple[Filter, ...]
    columns: tuple[str, ...] = ()
    distinct: bool = False


@dataclass(frozen=True)
class Step:
    """One many-to-one relation an order goes through, and the caller's read scope on its target: a
    related row the caller may not read orders as if it were missing (null)."""

    relation: Relation
    scope: Condition | None


@dataclass(frozen=True)
class Order:
    column: str
    descending: bool = False
    nulls: str | None = None  # first | last
    through: tuple[Step, ...] = ()  # many-to-one relations leading to the column (GraphQL order_by)
    # GraphQL's `{posts_aggregate: {count: desc}}`: `count` (column ignored) or `sum|avg|min|max|...` of the
    # column over the rows of `through`'s last step, a one-to-many relation, that its scope lets the caller read
    aggregate: str | None = None
    path: tuple[JsonStep, ...] = ()  # PostgREST's `order=meta->>k`: the value at a JSON path of the column


@dataclass(frozen=True)
class Column:
    alias: str
    column: str
    as_text: bool = False  # decimals are sent as strings
    constant: str | None = None  # a constant instead of the column (GraphQL's __typename)
    path: tuple[JsonStep, ...] = ()  # PostgREST's `meta->a->>b` in select=
    cast: str | None = None  # PostgREST's `col::text` (a name of CASTS, never input)
    aggregate: str | None = None  # PostgREST's `col.sum()`, `count()` (column ""): the level groups by the others
    aggregated_as: str | None = None  # PostgREST's `col::numeric.sum()`: the cast of the column before it is aggregated
    at: int | None = None  # Hasura's `meta(path: "$.a[0]")`: the parameter holding the path (text[], `#>`)


@dataclass(frozen=True)
class Embed:
    alias: str
    relation: Relation
    plan: ReadPlan
    spread: bool = False  # PostgREST's `...author(name)`: a to-one embed's keys are the parent row's own

    def keys(self) -> list[str]:
        """The keys the embed puts in its parent's object: its alias, or (a spread) its own keys."""
        return self.plan.keys() if self.spread else [self.alias]


@dataclass(frozen=True)
class ReadPlan:
    """The rows of one entity a level reaches: `scope` (the caller's, for the level's action; None: every
    row) and `where` (the request's), selected, ordered and paged. `scope` has no default: whoever makes
    a plan says which rows the caller may reach."""

    entity: str
    columns: tuple[Column, ...]
    embeds: tuple[Embed, ...] = ()
    where: Condition | None = None
    order: tuple[Order, ...] = ()
    limit: int | None = None  # a plan value, not a parameter: it changes the SQL little and is bounded
    offset: int | None = None
    distinct: tuple[str, ...] = ()  # DISTINCT ON these columns (GraphQL distinct_on)
    aggregates: tuple[Aggregate, ...] = ()  # aggregate embeds (GraphQL's `posts_aggregate`)
    scope: Condition | None = field(kw_only=True)

    def keys(self) -> list[str]:
        """The keys of each row's object, in order: columns, embeds (a spread's keys in its place),
        aggregates."""
        return [*(c.alias for c in self.columns), *(k for e in self.embeds for k in e.keys()),
                *(a.alias for a in self.aggregates if a.relation is not None)]

    def reach(self) -> Condition | None:
        """The rows the plan reaches: its scope and its where together."""
        parts = tuple(c for c in (self.scope, self.where) if c is not None)
        return parts[0] if len(parts) == 1 else Condition("and", parts) if parts else None

    def names_one_row(self) -> bool:
        """Whether the request's own filters hold `id = value` among those ANDed at the top (PostgREST's
        `id=eq.X`): the plan reaches one row at most, whatever else it says."""
        where = self.where
        return where is not None and where.kind == "and" and not where.negate and any(
            isinstance(f, Filter) and f.column == "id" and f.op == "eq" and not f.negate and not f.path
            and f.quantifier is None for f in where.items)

    def returned(self, scope: Condition | None) -> ReadPlan:
        """This plan's selection over the rows a write returned, under `scope` (the caller's READ scope):
        no filters, no order, no paging."""
        return replace(self, where=None, order=(), limit=None, offset=None, distinct=(), scope=scope)


@dataclass(frozen=True)
class Upsert:
    """`ON CONFLICT (target)`: a conflict is an update of the existing row, so `update` (the columns set
    from the new row, never owner_id) applies only where `scope` (the caller's UPDATE scope) holds for
    the existing row; no `update` columns: do nothing."""

    target: tuple[str, ...]
    update: tuple[str, ...]
    scope: Condition | None
    where: Condition | None = None  # the request's own condition on the existing row (Hasura's on_conflict.where)


@dataclass(frozen=True)
class AggregateField:
    """`count` (of rows, or of `columns`' values, `distinct` or not), or `sum|avg|min|max { alias: column }`."""

    alias: str
    function: str
    columns: tuple[tuple[str, str], ...] = ()  # (alias, column)
    distinct: bool = False


@dataclass(frozen=True)
class Aggregate:
    """`{alias}: {name}_aggregate { aggregate { count sum {..} } nodes {..} }`, at the root (`relation`
    None) or embedded: the rows of `plan` (filter, order, page) summarised under each `summaries` alias
    and listed, as `plan` selects them, under each `nodes` alias."""

    alias: str
    relation: Relation | None
    plan: ReadPlan
    summaries: tuple[tuple[str, tuple[AggregateField, ...]], ...] = ()
    nodes: tuple[str, ...] = ()

def relations_of(model: Schema) -> dict[str, dict[str, Relation]]:
    """entity -> embed name -> Relation, named as PostgREST names embeds.

    A ref is reachable by its field name and its column (`author`, `author_id`), its reverse by the
    `reverse:` name; the target entity's name (for a ref) and the referencing entity's name (for a
    reverse) work too when exactly one relation answers to them.
    """
    explicit: dict[str, dict[str, Relation]] = {e.name: {} for e in model.entities}
    weak: dict[str, dict[str, list[Relation]]] = {e.name: {} for e in model.entities}
    for entity in model.entities:
        links = [(f.name, f.column, f.ref.to, f.ref.reverse) for f in entity.refs if f.ref]
        if entity.owner:
            links.append(("owner", OWNER_COLUMN, USERS, entity.name))
        for name, column, target, reverse in links:
            one = Relation(name, "one", target, column, "id")
            explicit[entity.name].setdefault(name, one)
            explicit[entity.name].setdefault(column, one)
            many = Relation(reverse, "many", entity.name, "id", column)
            explicit[target].setdefault(reverse, many)
            weak[entity.name].setdefault(target, []).append(one)
            weak[target].setdefault(entity.name, []).append(many)
    for entity, names in weak.items():
        for name, candidates in names.items():
            if len(candidates) == 1:
                explicit[entity].setdefault(name, candidates[0])
    return explicit
