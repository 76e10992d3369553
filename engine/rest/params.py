"""PostgREST's query string -> a `ReadPlan` and its parameter values.

Knows the dialect (`select=`, `col=op.value`, `not.`, `or=(...)`, `order=`, `limit`, `offset`, the same
on embedded resources with a `path.` prefix) and the model (which names are columns and relations);
knows nothing of SQL or HTTP. Every problem is a `QueryParseError`, `UnknownColumn` or `UnknownRelation`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from engine.authz.permissions import Permissions
from engine.errors import Problem, QueryParseError, UnknownColumn, UnknownRelation
from engine.limits import DEFAULT_BOUNDS, Bounds, RowBudget, check_query
from engine.query.plan import (
    IS_VALUES,
    OPERATORS,
    Column,
    Condition,
    Embed,
    Filter,
    Order,
    ReadPlan,
    Relation,
)
from engine.schema.model import Entity, Schema

TEXT_TYPES = ("string", "text", "enum")


def split_top(text: str, separator: str = ",") -> list[str]:
    """Split on `separator` outside parentheses and double quotes."""
    parts, depth, quoted, current = [], 0, False, []
    for char in text:
        if char == '"':
            quoted = not quoted
        elif not quoted and char == "(":
            depth += 1
        elif not quoted and char == ")":
            depth -= 1
            if depth < 0:
                raise QueryParseError(f"unbalanced parentheses in '{text}'")
        if char == separator and depth == 0 and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if depth or quoted:
        raise QueryParseError(f"unbalanced parentheses or quotes in '{text}'")
    parts.append("".join(current))
    return parts


def unquote(value: str) -> str:
    return value[1:-1] if len(value) >= 2 and value[0] == value[-1] == '"' else value


@dataclass
class _Level:
    """What the query string says about one level of the tree (the root or an embed path)."""

    select: str | None = None
    filters: list[tuple[str, str]] = field(default_factory=list)
    logic: list[tuple[str, str]] = field(default_factory=list)
    order: str | None = None
    limit: str | None = None
    offset: str | None = None


ROOT_OPTIONS = ("select", "columns", "on_conflict", "order", "limit", "offset")


def is_root_filter(key: str) -> bool:
    """Whether a query parameter filters the root rows (`col=...`, `or=`, `and=`), not an option or an embed's."""
    return key in ("or", "and", "not.or", "not.and") or ("." not in key and key not in ROOT_OPTIONS)


def shaping(params: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """What shapes an insert's answer: every parameter but the root's filters (an insert has no rows to
    filter: the root's `order` and each embed's filters, order and limits apply to what it shows)."""
    return [(k, v) for k, v in params if not is_root_filter(k) and k not in ("limit", "offset")]


def has_root_filters(params: list[tuple[str, str]]) -> bool:
    """Whether a query string restricts the root rows (embedded filters and options do not): an update or
    delete without one would reach every row of the caller's scope."""
    return any(is_root_filter(key) for key, _ in params)


class ReadParser:
    """Parses one request; `values` collects the filter values in parameter order."""

    def __init__(self, model: Schema, relations: Mapping[str, Mapping[str, Relation]], permissions: Permissions,
                 user_id: str | None, bounds: Bounds = DEFAULT_BOUNDS) -> None:
        self.model = model
        self.bounds = bounds  # the tenant's plan's: embed depth, rows per array and per request (engine.limits)
        self.relations = relations
        self.permissions = permissions  # the caller's: each level's row scope and columns
        self.user_id = user_id
        self.values: list[Any] = []

    def caller_param(self) -> int:
        """The caller's user id as a parameter of the plan (a row scope's)."""
        self.values.append(self.user_id)
        return len(self.values) - 1

    def returned(self, plan: ReadPlan) -> ReadPlan:
        """What a write of `plan`'s root shows: its selection (embeds with their own filters, order and
        limits) over the written rows in the request's order, under the READ scope."""
        return replace(plan.returned(self.permissions.shown(plan.entity, self.caller_param)), order=plan.order)

    def only(self, plan: ReadPlan, ids: Sequence[str]) -> ReadPlan:
        """`plan` restricted to the rows `ids` (the rows a write wrote, read back in its transaction)."""
        self.values.append(list(ids))
        return replace(plan, where=Condition("and", (Filter("id", "in", len(self.values) - 1),)))

    def parse(self, entity: str, params: Iterable[tuple[str, str]], action: str = "read") -> ReadPlan:
        """The plan of a request whose root does `action`; every embedded level is a read, authorized
        on its own, and each level carries the caller's row scope for it (`engine.authz.permissions`).
        The text is checked against the plan's bounds before it is parsed, the plan after (arrays truncated)."""
        params = list(params)
        check_query(params, self.bounds)
        levels: dict[tuple[str, ...], _Level] = {(): _Level()}
        for key, value in params:
            *path, last = key.split(".")
            if last == "or" and path and path[-1] == "not":
                path, last = path[:-1], "not.or"
            elif last == "and" and path and path[-1] == "not":
                path, last = path[:-1], "not.and"
            level = levels.setdefault(tuple(path), _Level())
            if last == "select" and not path:
                level.select = value
            elif last in ("order", "limit", "offset"):
                setattr(level, last, value)
            elif last in ("or", "and", "not.or", "not.and"):
                level.logic.append((last, value))
            elif last in ("on_conflict", "columns") and not path:
                continue  # write options, read by the write path
            else:
                level.filters.append((last, value))
        plan = self.level(entity, (), levels, levels[()].select, action)
        unused = [".".join(p) for p in levels if p and not self._used(plan, p)]
        if unused:
            raise UnknownRelation(f"'{unused[0]}' is not an embedded resource of this request",
                                  hint="filters, order and limits on an embed need it in select=")
        return RowBudget(self.bounds).admit(plan, truncate_root=action == "read")

    def _used(self, plan: ReadPlan, path: tuple[str, ...]) -> bool:
        for embed in plan.embeds:
            if embed.alias == path[0]:
                return len(path) == 1 or self._used(embed.plan, path[1:])
        return False

    def level(self, entity_name: str, path: tuple[str, ...], levels: dict[tuple[str, ...], _Level],
              select: str | None, action: str = "read") -> ReadPlan:
        entity = self.model.entity(entity_name)
        assert entity is not None  # relations only ever point at entities of the same model
        permission = self.permissions.of(entity_name, action)
        columns = permission.columns
        scope = permission.predicate(self.caller_param)
        conditions: list[Filter | Condition] = []
        spec = levels.get(path, _Level())
        selected, embeds = self.select(entity, columns, select or "*", path, levels)
        conditions += [self.filter(columns, name, value) for name, value in spec.filters]
        for kind, value in spec.logic:
            conditions.append(self.logic(columns, kind, value))
        where = Condition("and", tuple(conditions)) if conditions else None
        return ReadPlan(entity_name, selected, embeds, where, self.order(columns, spec.order),
                        self.count("limit", spec.limit), self.count("offset", spec.offset), scope=scope)

    def select(self, entity: Entity, columns: Mapping[str, str], text: str, path: tuple[str, ...],
               levels: dict[tuple[str, ...], _Level]) -> tuple[tuple[Column, ...], tuple[Embed, ...]]:
        selected: list[Column] = []
        embeds: list[Embed] = []
        for raw in split_top(text):
            item = raw.strip()
            if not item:
                raise QueryParseError(f"empty item in select='{text}'")
            alias, _, rest = item.partition(":") if ":" in item.split("(")[0] else ("", "", item)
            if "(" in rest:
                if not rest.endswith(")"):
                    raise QueryParseError(f"'{item}' in select= is missing its closing parenthesis")
                name, inner = rest[: rest.index("(")].strip(), rest[rest.index("(") + 1: -1]
                if "!" in name:
                    raise QueryParseError(f"embed hints ('{name}') are not supported", hint="name the relation instead")
                relation = self.relations[entity.name].get(name)
                if relation is None:
                    raise UnknownRelation(f"could not find a relationship between '{entity.name}' and '{name}'",
                                          hint=f"relations of {entity.name}: {', '.join(sorted(self.relations[entity.name]))}")
                alias = alias.strip() or name
                child = self.level(relation.target, (*path, alias), levels, inner or "*")
                embeds.append(Embed(alias, relation, child))
            elif rest.strip() == "*":
                selected += [Column(c, c, t == "decimal") for c, t in columns.items()]
            else:
                name = rest.strip()
                if "::" in name or "->" in name:
                    raise QueryParseError(f"casts and JSON paths in select= ('{name}') are not supported")
                if name not in columns:
                    raise UnknownColumn(f"column '{name}' of '{entity.name}' does not exist",
                                        hint=f"columns: {', '.join(columns)}")
                selected.append(Column(alias.strip() or name, name, columns[name] == "decimal"))
        return tuple(dict.fromkeys(selected)), tuple(embeds)

    def filter(self, columns: Mapping[str, str], name: str, text: str) -> Filter:
        if name not in columns:
            raise UnknownColumn(f"column '{name}' does not exist", hint=f"columns: {', '.join(columns)}")
        negate = text.startswith("not.")
        if negate:
            text = text[4:]
        op, dot, value = text.partition(".")
        if not dot or op not in OPERATORS:
            raise QueryParseError(f"'{name}={text}': expected operator.value with an operator of {', '.join(OPERATORS)}")
        if op == "is":
            if value.lower() not in IS_VALUES:
                raise QueryParseError(f"'{name}=is.{value}': is. takes null, true, false or unknown")
            return Filter(name, f"is_{value.lower()}", -1, negate)
        if op in ("like", "ilike"):
            if columns[name] not in TEXT_TYPES:
                raise QueryParseError(f"'{name}' is a {columns[name]} column: {op} applies to text")
            value = value.replace("*", "%")
        if op == "in":
            if columns[name] == "array":
                raise QueryParseError(f"'{name}' is an array column: in. compares single values",
                                      details=[Problem(name, "in. on an array column")], hint="eq.{a,b} matches the array")
            if not (value.startswith("(") and value.endswith(")")):
                raise QueryParseError(f"'{name}=in.{value}': in. takes a list in parentheses, e.g. in.(1,2)")
            items = [unquote(v.strip()) for v in split_top(value[1:-1])] if value[1:-1].strip() else []
            self.values.append(items)
        else:
            self.values.append(unquote(value))
        return Filter(name, op, len(self.values) - 1, negate)

    def logic(self, columns: Mapping[str, str], kind: str, text: str) -> Condition:
        negate = kind.startswith("not.")
        kind = kind.removeprefix("not.")
        if not (text.startswith("(") and text.endswith(")")):
            raise QueryParseError(f"{kind}={text}: expected a list in parentheses, e.g. {kind}=(a.eq.1,b.gt.2)")
        items: list[Filter | Condition] = []
        for raw in split_top(text[1:-1]):
            item = raw.strip()
            inner_negate = item.startswith("not.") and item[4:].split("(")[0] in ("and", "or")
            head = item[4:] if inner_negate else item
            if head.split("(")[0] in ("and", "or") and "(" in head:
                sub = head.split("(")[0]
                items.append(self.logic(columns, ("not." if inner_negate else "") + sub, head[len(sub):]))
                continue
            name, dot, rest = item.partition(".")
            if not dot:
                raise QueryParseError(f"'{item}' in {kind}=: expected column.operator.value")
            items.append(self.filter(columns, name, rest))
        return Condition(kind, tuple(items), negate)

    def order(self, columns: Mapping[str, str], text: str | None) -> tuple[Order, ...]:
        if not text:
            return ()
        orders = []
        for raw in text.split(","):
            name, *modifiers = raw.strip().split(".")
            if name not in columns:
                raise UnknownColumn(f"cannot order by '{name}': no such column", hint=f"columns: {', '.join(columns)}")
            descending, nulls = False, None
            for modifier in modifiers:
                if modifier in ("asc", "desc"):
                    descending = modifier == "desc"
                elif modifier in ("nullsfirst", "nullslast"):
                    nulls = modifier[5:]
                else:
                    raise QueryParseError(f"'{raw}' in order=: expected asc, desc, nullsfirst or nullslast")
            orders.append(Order(name, descending, nulls))
        return tuple(orders)

    @staticmethod
    def count(name: str, text: str | None) -> int | None:
        if text is None:
            return None
        if not (text.isascii() and text.isdigit()):  # '²'.isdigit() is true, int('²') fails
            raise QueryParseError(f"{name}={text}: expected a whole number")
        return int(text)

