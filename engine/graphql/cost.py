"""What a GraphQL mutation asks the server to write: the number of rows, counted before anything runs.

Why: a plan's `max_body_items` (engine.limits) bounds the objects of one write, and a GraphQL mutation
carries them in arguments rather than in a body: `objects` lists, an `object`, the rows of their nested
array and object relations (`{children: {data: [...]}}`), and `update_*_many`'s `updates`. Counting them
here, on the coerced values, lets the request be refused (`too_many_items`) before any validation or SQL.
The cost of what a query reads (rows times their lists' multiplicity) is counted on its plans by
`engine.limits.RowBudget`, the same for REST and GraphQL. Never builds SQL.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from graphql.language import ast
from graphql.utilities import value_from_ast_untyped

from engine.query.plan import Relation

SUFFIXES = ("_one", "_by_pk", "_many")


def mutation_items(fields: Sequence[ast.FieldNode], variables: Mapping[str, Any],
                   relations: Mapping[str, Mapping[str, Relation]]) -> int:
    """The rows the root fields of a mutation insert or update by name: each object with its nested ones,
    each of `updates`; a `where` write counts one (its rows are bounded by the table, not the body)."""
    total = 0
    for field in fields:
        kind, _, rest = field.name.value.partition("_")
        entity, variant = rest, ""
        for suffix in SUFFIXES:
            if rest.endswith(suffix) and rest[: -len(suffix)] in relations:
                entity, variant = rest[: -len(suffix)], suffix
                break
        args = {a.name.value: value_from_ast_untyped(a.value, variables) for a in field.arguments or ()}
        if kind == "insert" and entity in relations:
            objects = [args.get("object")] if variant == "_one" else as_list(args.get("objects"))
            total += sum(_rows(entity, o, relations) for o in objects)
        elif kind == "update" and variant == "_many":
            total += len(as_list(args.get("updates")))
        else:
            total += 1
    return total


def as_list(value: Any) -> list[Any]:
    """A single value where a list is expected is a one-item list (the spec's input coercion)."""
    return value if isinstance(value, list) else [] if value is None else [value]


def _rows(entity: str, obj: Any, relations: Mapping[str, Mapping[str, Relation]]) -> int:
    """One object and the objects nested in it through relations (`{relation: {data: ...}}`)."""
    if not isinstance(obj, dict):
        return 1
    count = 1
    links = relations.get(entity, {})
    for key, nested in obj.items():
        relation = links.get(key)
        if relation is None or not isinstance(nested, dict):
            continue
        data = nested.get("data")
        children = data if isinstance(data, list) else [data] if data is not None else []
        count += sum(_rows(relation.target, child, relations) for child in children)
    return count
