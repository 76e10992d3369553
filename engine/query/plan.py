"""The read plan: what a read asks for, resolved against the model, with no HTTP and no SQL in it.

REST (and later GraphQL) parse their requests into a `ReadPlan`; `engine.query.sql` renders it. A plan
holds no values: each filter value is a numbered parameter, so a plan is also the cache key of the
statement that serves every request of its shape.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.schema.model import OWNER_COLUMN, USERS, Schema

OPERATORS = ("eq", "neq", "gt", "gte", "lt", "lte", "like", "ilike", "in", "is")
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
class Filter:
    column: str
    op: str
    param: int  # index of the value in the request's parameter list (a string, or a list for `in`)
    negate: bool = False


@dataclass(frozen=True)
class Membership:
    """A `member` row scope: `column` (a tenant id) is a tenant where the user (parameter `param`) holds a
    membership with one of `roles`."""

    column: str
    param: int
    roles: tuple[str, ...]


@dataclass(frozen=True)
class Condition:
    """`and` / `or` of filters and nested conditions."""

    kind: str  # and | or
    items: tuple[Filter | Membership | RelationFilter | Condition, ...]
    negate: bool = False


@dataclass(frozen=True)
class RelationFilter:
    """Rows with a related row (one-to-many: at least one) matching `where` (GraphQL's `{author: {...}}`)."""

    relation: Relation
    where: Condition


@dataclass(frozen=True)
class Order:
    column: str
    descending: bool = False
    nulls: str | None = None  # first | last
    through: tuple[Relation, ...] = ()  # many-to-one relations leading to the column (GraphQL order_by)


@dataclass(frozen=True)
class Column:
    alias: str
    column: str
    as_text: bool = False  # decimals are sent as strings
    constant: str | None = None  # a constant instead of the column (GraphQL's __typename)


@dataclass(frozen=True)
class Embed:
    alias: str
    relation: Relation
    plan: ReadPlan


@dataclass(frozen=True)
class ReadPlan:
    entity: str
    columns: tuple[Column, ...]
    embeds: tuple[Embed, ...] = ()
    where: Condition | None = None
    order: tuple[Order, ...] = ()
    limit: int | None = None  # a plan value, not a parameter: it changes the SQL little and is bounded
    offset: int | None = None
    distinct: tuple[str, ...] = ()  # DISTINCT ON these columns (GraphQL distinct_on)
    aggregates: tuple[Aggregate, ...] = ()  # aggregate embeds (GraphQL's `posts_aggregate`)


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
