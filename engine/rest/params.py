"""PostgREST's query string -> a `ReadPlan` and its parameter values.

Knows the dialect (`select=`, `col=op.value`, `not.`, `or=(...)`, `order=`, `limit`, `offset`, the same
on embedded resources with a `path.` prefix) and the model (which names are columns and relations);
knows nothing of SQL or HTTP. Every problem is a `QueryParseError`, `UnknownColumn` or `UnknownRelation`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from engine.authz.permissions import Permissions
from engine.errors import BackSaasError, Problem, QueryParseError, UnknownColumn, UnknownRelation
from engine.limits import DEFAULT_BOUNDS, Bounds, RowBudget, check_json_path, check_query
from engine.query.plan import (
    CASTS,
    IS_VALUES,
    MORE_OPERATORS,
    OPERATORS,
    QUANTIFIABLE,
    Column,
    Condition,
    Embed,
    Filter,
    JsonStep,
    Order,
    ReadPlan,
    Relation,
    RelationFilter,
    Step,
)
from engine.schema.model import Entity, Schema

TEXT_TYPES = ("string", "text", "enum")
TEXT_SEARCH = ("fts", "plfts", "phfts", "wfts")
TEXTUAL = ("like", "ilike", "match", "imatch", *TEXT_SEARCH)
# PostgreSQL's own text search configurations (a name outside them is refused before the database sees it)
TEXT_SEARCH_CONFIGS = frozenset((
    "simple", "arabic", "armenian", "basque", "catalan", "danish", "dutch", "english", "finnish", "french", "german",
    "greek", "hindi", "hungarian", "indonesian", "irish", "italian", "lithuanian", "nepali", "norwegian", "portuguese",
    "romanian", "russian", "serbian", "spanish", "swedish", "tamil", "turkish", "yiddish"))
CAST_NAMES = {**{c: c for c in CASTS}, "int": "integer", "int4": "integer", "int8": "bigint", "float8": "double precision",
              "float": "double precision", "bool": "boolean", "varchar": "text", "timestamp with time zone": "timestamptz"}
JSON_ARROWS = re.compile(r"(->>|->)")
AGGREGATE = re.compile(r"(?:(?P<column>[^()]+)\.)?(?P<function>count|sum|avg|min|max)\(\)(?:::(?P<cast>[a-z0-9 ]+))?")


class AggregatesDisabled(BackSaasError):
    """PostgREST's PGRST123: aggregate functions are off unless the tenant turns them on."""

    code = "PGRST123"
    status = 400


class AmbiguousEmbed(BackSaasError):
    """PostgREST's PGRST201 (300 Multiple Choices): more than one relation answers to an embed's name;
    `details` lists them as PostgREST does (cardinality, embedding, relationship)."""

    code = "PGRST201"
    status = 300

    def __init__(self, message: str, hint: str, relationships: list[dict[str, str]]) -> None:
        super().__init__(message, hint=hint)
        self.relationships = relationships

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "details": self.relationships, "hint": self.hint}


VALUE_STARTS = ("", "(", ",", ".", "{", ":", " ")  # what a double quote follows where it opens a quoted value
ESCAPED = re.compile(r"\\(.)", re.S)


def split_top(text: str, separator: str = ",") -> list[str]:
    """Split on `separator` outside parentheses, braces (`eq(any).{a,b}`) and quoted values. As PostgREST
    reads them, a double quote opens a quoted value only at a value's start (`in.("a,b",c)`), where a
    backslash escapes the character after it (`"say \\"hi\\""`); elsewhere it is a character like any other
    (`in.(q"x)`, which supabase-js sends for the value `q"x`)."""
    parts, depth, quoted, escaped, previous, current = [], 0, False, False, "", []
    for char in text:
        if quoted:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                quoted = False
        elif char == '"' and previous in VALUE_STARTS:
            quoted = True
        elif char in "({":
            depth += 1
        elif char in ")}":
            depth -= 1
            if depth < 0:
                raise QueryParseError(f"unbalanced parentheses in '{text}'")
        if char == separator and depth == 0 and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
        previous = char
    if depth or quoted:
        raise QueryParseError(f"unbalanced parentheses or quotes in '{text}'")
    parts.append("".join(current))
    return parts


def unquote(value: str) -> str:
    """A value or name as written, or, in double quotes, what they hold (each backslash escaping the
    character after it)."""
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return ESCAPED.sub(r"\1", value[1:-1])
    return value


def unquote_name(text: str) -> str:
    """A column named in double quotes, as PostgREST allows (`"title"`, `"meta"->a`, `"rank"::text`), as it
    is named bare: the quotes dropped from its leading name."""
    if text.startswith('"') and (end := text.find('"', 1)) > 0:
        return text[1:end] + text[end + 1:]
    return text


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
        self.unshown: set[tuple[str, ...]] = set()  # the paths of empty embeds (`author!inner()`): filters only

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
                level.filters.append((unquote_name(last), value))
        plan = self.level(entity, (), levels, levels[()].select, action)
        unused = [".".join(p) for p in levels if p and not self._used(plan, p)]
        if unused:
            raise UnknownRelation(f"'{unused[0]}' is not an embedded resource of this request",
                                  hint="filters, order and limits on an embed need it in select=")
        return RowBudget(self.bounds).admit(plan, truncate_root=action == "read")

    @staticmethod
    def embed_is(embed: Embed, text: str) -> RelationFilter | Condition:
        """PostgREST's null filter on an embed (`author=not.is.null`, `author=is.null`): rows with (without) a
        related row that the embed shows, under its filters and the caller's read scope on it."""
        if text not in ("is.null", "not.is.null"):
            raise QueryParseError(f"'{embed.alias}={text}': an embedded resource is filtered by is.null or not.is.null",
                                  details=[Problem(embed.alias, "an embed, not a column")])
        related = RelationFilter(embed.relation, embed.plan.where or Condition("and", ()), embed.plan.scope)
        return related if text == "not.is.null" else Condition("and", (related,), negate=True)

    def _used(self, plan: ReadPlan, path: tuple[str, ...]) -> bool:
        if any(path[:depth] in self.unshown for depth in range(1, len(path) + 1)):
            return True
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
        selected, embeds, inner = self.select(entity, columns, select or "*", path, levels)
        by_alias = {e.alias: e for e in embeds}
        for name, value in spec.filters:
            embed = by_alias.get(name) if name not in columns else None
            conditions.append(self.filter(columns, name, value) if embed is None else self.embed_is(embed, value))
        embeds = tuple(e for e in embeds if (*path, e.alias) not in self.unshown)
        if any(e.spread for e in embeds):  # a spread's columns sit beside the row's own: one name, one key
            names = [c.alias for c in selected] + [k for e in embeds for k in e.keys()]
            twice = sorted({n for n in names if names.count(n) > 1})
            if twice:
                raise QueryParseError(f"select= gives '{twice[0]}' twice at one level, a spread's column beside "
                                      "another", details=[Problem(twice[0], "named twice")],
                                      hint="rename one inside the spread, e.g. ...author(author_name:name)")
        for kind, value in spec.logic:
            conditions.append(self.logic(columns, kind, value))
        conditions += inner
        where = Condition("and", tuple(conditions)) if conditions else None
        order = self.order(entity_name, columns, spec.order)
        if any(c.aggregate for c in selected):  # grouped rows order by what they are grouped by
            grouped = {c.column for c in selected if not c.aggregate and not c.path}
            for o in order:
                if o.through or o.path or o.column not in grouped:
                    raise QueryParseError(f"cannot order aggregated rows by '{o.column}'",
                                          hint=f"order by a grouped column: {', '.join(sorted(grouped)) or 'none'}")
        return ReadPlan(entity_name, selected, embeds, where, order,
                        self.count("limit", spec.limit), self.count("offset", spec.offset), scope=scope)

    def select(self, entity: Entity, columns: Mapping[str, str], text: str, path: tuple[str, ...],
               levels: dict[tuple[str, ...], _Level]
               ) -> tuple[tuple[Column, ...], tuple[Embed, ...], list[RelationFilter]]:
        """The columns, the embeds, and the conditions `!inner` embeds put on this level's rows."""
        selected: list[Column] = []
        embeds: list[Embed] = []
        inner: list[RelationFilter] = []
        for raw in split_top(text):
            item = raw.strip()
            if not item:
                raise QueryParseError(f"empty item in select='{text}'")
            head = item.split("(")[0]
            alias, _, rest = item.partition(":") if ":" in head.replace("::", "") else ("", "", item)
            alias, rest = unquote(alias.strip()), unquote_name(rest.strip())
            aggregate = AGGREGATE.fullmatch(rest)
            if path and rest == "count" and "count" not in columns:
                # PostgREST's older `authors(count)`: the embed's row count, aggregates enabled or not
                selected.append(Column(alias or "count", "", aggregate="count"))
            elif aggregate is not None:
                selected.append(self.aggregate(entity, columns, alias, aggregate))
            elif "(" in rest:
                if not rest.endswith(")"):
                    raise QueryParseError(f"'{item}' in select= is missing its closing parenthesis")
                name, inner_text = rest[: rest.index("(")].strip(), rest[rest.index("(") + 1: -1]
                spread = name.startswith("...")
                name, hint, join = self.embed_name(name.removeprefix("..."))
                relation = self.relation(entity, name, hint)
                if spread and (alias or relation.kind != "one"):
                    raise QueryParseError(f"'{item}' in select=: a spread (...) takes a to-one embed, unnamed "
                                          "(name its columns inside it: ...author(author_name:name))",
                                          details=[Problem(name, "not a to-one embed" if alias == ""
                                                           else "a spread has no alias")])
                alias = alias or name
                child = self.level(relation.target, (*path, alias), levels, inner_text or "*")
                embeds.append(Embed(alias, relation, child, spread=spread))
                if not inner_text.strip():  # PostgREST 11's empty embed: it filters, it is not shown
                    self.unshown.add((*path, alias))
                if join == "inner":  # PostgREST's !inner: only rows with a related row the embed shows
                    inner.append(RelationFilter(relation, child.where or Condition("and", ()), child.scope))
            elif rest == "*":
                selected += [Column(c, c) for c in columns]  # decimals as JSON numbers, as PostgREST sends numeric
            else:
                selected.append(self.column(entity, columns, alias, rest))
        if any(c.aggregate for c in selected) and embeds:
            raise QueryParseError("aggregate functions and embedded resources at one level are not supported",
                                  hint="aggregate inside the embed instead, e.g. books(pages.sum())")
        return tuple(dict.fromkeys(selected)), tuple(embeds), inner

    def aggregate(self, entity: Entity, columns: Mapping[str, str], alias: str, match: re.Match[str]) -> Column:
        """`count()`, `col.sum()`, `col.avg()::text`, `col::numeric.sum()`...: allowed when the tenant's schema says
        `rest: {aggregates: true}` (PostgREST's db-aggregates-enabled)."""
        if not self.model.rest_aggregates:
            raise AggregatesDisabled("Use of aggregate functions is not allowed",
                                     hint="the tenant's schema enables them with `rest: {aggregates: true}` "
                                          "(PostgREST's db-aggregates-enabled)")
        function, name, cast = match["function"], (match["column"] or "").strip(), (match["cast"] or "").strip()
        name, _, before = name.partition("::")  # `pages::bigint.sum()`: the column cast, then aggregated
        name, before = unquote_name(name.strip()), before.strip().lower()
        for named in (cast, before):
            if named and named not in CAST_NAMES:
                raise QueryParseError(f"cannot cast to '{named}' in {match[0]}", hint=f"casts: {', '.join(sorted(CAST_NAMES))}")
        if not name and function != "count":
            raise QueryParseError(f"{function}() needs a column, e.g. rank.{function}()")
        base, path = "", ()
        if name:
            if not JSON_ARROWS.search(name) and name not in columns:
                raise UnknownColumn(f"column '{name}' of '{entity.name}' does not exist",
                                    hint=f"columns: {', '.join(columns)}")
            base, path, _ = self.json_path(columns, name)
        return Column(alias or function, base, path=path, cast=CAST_NAMES[cast] if cast else None, aggregate=function,
                      aggregated_as=CAST_NAMES[before] if before else None)

    @staticmethod
    def embed_name(text: str) -> tuple[str, str, str]:
        """`author`, `author!inner`, `author!writer`, `author!writer!inner` -> (name, the relation's hint, the
        join hint `inner`/`left`), as PostgREST's grammar has them (the join hint last)."""
        name, *hints = (part.strip() for part in text.split("!"))
        join = hints.pop() if hints and hints[-1] in ("inner", "left") else ""
        if len(hints) > 1 or any(not hint for hint in hints):
            raise QueryParseError(f"'{text}' in select=: an embed takes one relation hint and one join hint at most, "
                                  "e.g. author!writer!inner")
        return name, hints[0] if hints else "", join

    def relation(self, entity: Entity, name: str, hint: str) -> Relation:
        """The relation an embed names: by field, column, reverse or entity name, disambiguated by a hint
        (`person!writer`, `person!writer_id`, `person!doc_writer_id_fkey`) as PostgREST's are; `!inner` and
        `!left` are join hints, not names."""
        relations = self.relations[entity.name]
        known = f"relations of {entity.name}: {', '.join(sorted(relations))}"
        if not hint:
            relation = relations.get(name)
            if relation is not None:
                return relation
            found = [r for r in dict.fromkeys(relations.values()) if r.target == name]
            if len(found) > 1:
                keys = sorted(self.link_names(entity.name, r)[2] for r in found)
                raise AmbiguousEmbed(f"Could not embed because more than one relationship was found for "
                                     f"'{entity.name}' and '{name}'",
                                     f"Try changing '{name}' to one of the following: "
                                     f"{', '.join(repr(f'{name}!{k}') for k in keys)}. Find the desired relationship in "
                                     "the 'details' key.", [self.relationship(entity.name, r) for r in found])
            raise UnknownRelation(f"could not find a relationship between '{entity.name}' and '{name}'", hint=known)
        relation = relations.get(hint)  # a field or column of this entity
        if relation is not None and relation.kind == "one" and name in (relation.target, relation.name, hint):
            return relation
        for relation in relations.values():
            if relation.target == name and hint in self.link_names(entity.name, relation):
                return relation
        raise UnknownRelation(f"could not find a relationship between '{entity.name}' and '{name}' named '{hint}'",
                              hint=known)

    @staticmethod
    def link_names(entity: str, relation: Relation) -> tuple[str, str, str]:
        """The names a hint may give a relation of `entity`: its column (`writer_id`), its field (`writer`)
        and its foreign key as PostgreSQL names it (`doc_writer_id_fkey`, named from either end)."""
        table, column = ((relation.target, relation.target_column) if relation.kind == "many"
                         else (entity, relation.source_column))
        return column, column.removesuffix("_id"), f"{table}_{column}_fkey"

    def relationship(self, entity: str, relation: Relation) -> dict[str, str]:
        """One of PGRST201's `details`: a relation as PostgREST describes it."""
        table, column = ((relation.target, relation.target_column) if relation.kind == "many"
                         else (entity, relation.source_column))
        referenced = entity if relation.kind == "many" else relation.target
        return {"cardinality": "one-to-many" if relation.kind == "many" else "many-to-one",
                "embedding": f"{entity} with {relation.target}",
                "relationship": f"{table}_{column}_fkey using {table}({column}) and {referenced}(id)"}

    def json_path(self, columns: Mapping[str, str], text: str) -> tuple[str, tuple[JsonStep, ...], str]:
        """`meta->a->>b` -> (column, its steps, the type of the value: `json` after `->`, `text` after
        `->>`, else the column's own); keys become parameters."""
        base, *parts = (p.strip() for p in JSON_ARROWS.split(text))
        if base not in columns:
            raise UnknownColumn(f"column '{base}' does not exist", hint=f"columns: {', '.join(columns)}")
        if not parts:
            return base, (), columns[base]
        if columns[base] != "json":
            raise QueryParseError(f"'{text}': JSON paths apply to json columns; '{base}' is a {columns[base]} column",
                                  details=[Problem(base, "not a json column")])
        check_json_path(base, len(parts) // 2)
        steps = []
        for arrow, key in zip(parts[0::2], parts[1::2], strict=True):
            key = unquote(key)
            if not key:
                raise QueryParseError(f"'{text}': a JSON path step needs a key")
            index = key.lstrip("-").isdigit() and key.isascii()
            self.values.append(int(key) if index else key)
            steps.append(JsonStep(arrow, len(self.values) - 1, index))
        return base, tuple(steps), "text" if parts[-2] == "->>" else "json"

    def column(self, entity: Entity, columns: Mapping[str, str], alias: str, text: str) -> Column:
        """One selected column: `name`, `name::cast`, `meta->a->>b` (named `b`), renamed by `alias:`."""
        name, _, cast = text.partition("::")
        name, cast = name.strip(), cast.strip().lower()
        if cast and cast not in CAST_NAMES:
            raise QueryParseError(f"'{text}' in select=: cannot cast to '{cast}'",
                                  hint=f"casts: {', '.join(sorted(CAST_NAMES))}")
        if not JSON_ARROWS.search(name) and name not in columns:
            raise UnknownColumn(f"column '{name}' of '{entity.name}' does not exist", hint=f"columns: {', '.join(columns)}")
        base, path, _ = self.json_path(columns, name)
        default = unquote(JSON_ARROWS.split(name)[-1].strip()) if path else name
        return Column(alias or default, base, path=path,
                      cast=CAST_NAMES[cast] if cast else None)

    def filter(self, columns: Mapping[str, str], name: str, text: str) -> Filter:
        column, path, kind = self.json_path(columns, name)
        negate = text.startswith("not.")
        if negate:
            text = text[4:]
        operator, dot, value = text.partition(".")
        op, _, argument = operator.partition("(")
        if argument and not argument.endswith(")"):
            raise QueryParseError(f"'{name}={text}': unbalanced parentheses in the operator")
        argument = argument[:-1]
        if not dot or op not in (*OPERATORS, *MORE_OPERATORS):
            raise QueryParseError(f"'{name}={text}': expected operator.value with an operator of "
                                  f"{', '.join((*OPERATORS, *MORE_OPERATORS))}")
        if op == "is":
            if argument or value.lower() not in IS_VALUES:
                raise QueryParseError(f"'{name}=is.{value}': is. takes null, true, false or unknown")
            return Filter(column, f"is_{value.lower()}", -1, negate, path=path)
        quantifier, config = None, None
        if argument:
            if op in TEXT_SEARCH:
                if argument not in TEXT_SEARCH_CONFIGS:
                    raise QueryParseError(f"'{name}={text}': '{argument}' is not a text search configuration",
                                          hint=f"configurations: {', '.join(sorted(TEXT_SEARCH_CONFIGS))}")
                self.values.append(argument)
                config = len(self.values) - 1
            elif op in QUANTIFIABLE and argument in ("any", "all"):
                quantifier = argument
            else:
                raise QueryParseError(f"'{name}={text}': {op}({argument}) is not an operator",
                                      hint=f"(any) and (all) quantify {', '.join(QUANTIFIABLE)}; "
                                           "fts, plfts, phfts and wfts take a configuration")
        if op in TEXTUAL and kind not in (*TEXT_TYPES, "text"):
            raise QueryParseError(f"'{name}' is a {kind} column: {op} applies to text",
                                  details=[Problem(name, f"{op} on a {kind} column")])
        if (op in ("cs", "cd", "ov") and kind not in ("array", "json")) or (op == "ov" and kind != "array"):
            raise QueryParseError(f"'{name}' is a {kind} column: {op} applies to "
                                  f"{'arrays' if op == 'ov' else 'arrays and json'}",
                                  details=[Problem(name, f"{op} on a {kind} column")])
        if quantifier:
            if not (value.startswith("{") and value.endswith("}")):
                raise QueryParseError(f"'{name}={text}': {op}({quantifier}) takes a list in braces, e.g. {{a,b}}")
            items = [unquote(v.strip()) for v in split_top(value[1:-1])] if value[1:-1].strip() else []
            self.values.append([i.replace("*", "%") for i in items] if op in ("like", "ilike") else items)
        elif op == "in":
            if kind == "array":
                raise QueryParseError(f"'{name}' is an array column: in. compares single values",
                                      details=[Problem(name, "in. on an array column")], hint="eq.{a,b} matches the array")
            if not (value.startswith("(") and value.endswith(")")):
                raise QueryParseError(f"'{name}=in.{value}': in. takes a list in parentheses, e.g. in.(1,2)")
            items = [unquote(v.strip()) for v in split_top(value[1:-1])] if value[1:-1].strip() else []
            self.values.append(items)
        else:
            self.values.append(unquote(value).replace("*", "%") if op in ("like", "ilike") else unquote(value))
        return Filter(column, op, len(self.values) - 1, negate, path=path, quantifier=quantifier, config=config)

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
            name, dot, rest = unquote_name(item).partition(".")
            if not dot:
                raise QueryParseError(f"'{item}' in {kind}=: expected column.operator.value")
            items.append(self.filter(columns, name, rest))
        return Condition(kind, tuple(items), negate)

    def order(self, entity: str, columns: Mapping[str, str], text: str | None) -> tuple[Order, ...]:
        """`order=col.desc.nullslast,author(name).asc`: columns, or a column of a to-one relation, which
        orders among the related rows the caller may read (another's row orders as a missing one)."""
        if not text:
            return ()
        orders = []
        for raw in split_top(text):
            head, _, tail = raw.strip().partition(")")
            if _:  # author(name).desc
                relation_name, _, name = head.partition("(")
                modifiers = [m for m in tail.split(".") if m]
                through = (self.order_step(entity, relation_name.strip(), raw),)
                target_columns = self.permissions.of(through[0].relation.target, "read").columns
                if name.strip() not in target_columns:
                    raise UnknownColumn(f"cannot order by '{raw.strip()}': no such column",
                                        hint=f"columns: {', '.join(target_columns)}")
                name, path = name.strip(), ()
            else:
                name, *modifiers = unquote_name(raw.strip()).split(".")
                through = ()
                if not JSON_ARROWS.search(name) and name not in columns:
                    raise UnknownColumn(f"cannot order by '{name}': no such column", hint=f"columns: {', '.join(columns)}")
                name, path, _ = self.json_path(columns, name)
            descending, nulls = False, None
            for modifier in modifiers:
                if modifier in ("asc", "desc"):
                    descending = modifier == "desc"
                elif modifier in ("nullsfirst", "nullslast"):
                    nulls = modifier[5:]
                else:
                    raise QueryParseError(f"'{raw}' in order=: expected asc, desc, nullsfirst or nullslast")
            orders.append(Order(name, descending, nulls, through, path=path))
        return tuple(orders)

    def order_step(self, entity: str, name: str, raw: str) -> Step:
        """A to-one relation an order goes through, with the caller's read scope on its target."""
        relation = self.relations[entity].get(name)
        if relation is None or relation.kind != "one":
            raise QueryParseError(f"'{raw.strip()}' in order=: '{name}' is not a to-one relation of '{entity}'",
                                  hint="order by a column of a many-to-one embed, e.g. order=author(name).desc")
        return Step(relation, self.permissions.scope(relation.target, "read", self.caller_param))

    @staticmethod
    def count(name: str, text: str | None) -> int | None:
        if text is None:
            return None
        if not (text.isascii() and text.isdigit()):  # '²'.isdigit() is true, int('²') fails
            raise QueryParseError(f"{name}={text}: expected a whole number")
        return int(text)

