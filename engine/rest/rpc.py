"""PostgREST's RPC over the tenant's exposed functions: `POST /rest/v1/rpc/{name}` with a JSON object of
arguments, `GET` with query arguments for functions the schema marks `read_only: true` (so
`supabase.rpc(name, args)` works); a result that is a list of objects takes the query string's `select`,
filters, `order`, `limit` and `offset`, as PostgREST applies them to a set-returning function.

The call itself is `engine.invoke.invoke`, the path of `/functions/v1/{name}`: the same authorization,
input validation, transaction and time limit. What is applied to the result afterwards runs in the
database (one statement over the result as a JSON parameter, as the tenant's role), so no tenant-supplied
pattern runs in a Python regex engine: `like` and `match` are PostgreSQL's, under the statement timeout.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.sql.elements import ColumnElement

from engine.answer import Answer
from engine.errors import BackSaasError, Problem, QueryParseError
from engine.invoke import FunctionNotFound, invoke
from engine.limits import check_json_path
from engine.query.sql import compile_statement
from engine.rest.media import (
    CONTENT_TYPES,
    CSV,
    JSON,
    OBJECT,
    MediaNotAvailable,
    Prefer,
    negotiate,
    not_one,
    number_of,
    parse_range,
    read_range,
)
from engine.rest.params import JSON_ARROWS, split_top, unquote

SHAPING = ("select", "order", "limit", "offset")
FILTER = re.compile(r"(not\.)?[a-z]+(\([a-z]*\))?\.")  # a filter's value: `eq.3`, `not.in.(1,2)`, `like(any).{..}`
COMPARISONS = {"eq": "=", "neq": "<>", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
PATTERNS = {"like": "LIKE", "ilike": "ILIKE", "match": "~", "imatch": "~*"}
SCHEMA_TYPES = {"integer": int, "number": float}


class MethodNotAllowed(BackSaasError):
    """PostgREST's PGRST101: a function that may write is called only with POST."""

    code = "PGRST101"
    status = 405


def _json_value(text: str) -> Any:
    """A query-string value as JSON: a number, true, false or null when it reads as one, else the text."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return text
    return value if isinstance(value, int | float | bool) or value is None else text


def _argument(text: str, schema: Any) -> Any:
    """A GET argument typed by the function's input schema (`integer`, `number`, `boolean`), else text."""
    kind = schema.get("type") if isinstance(schema, Mapping) else None
    if kind in SCHEMA_TYPES:
        return number_of(text, SCHEMA_TYPES[kind])  # as bodies' number strings: text PostgreSQL would refuse stays text
    if kind == "boolean":
        return {"true": True, "false": False}.get(text, text)
    if kind in ("object", "array"):
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            return text  # the input's validation names it
    return text


class ResultQuery:
    """The query string's shaping of a function's list result, as one SQL statement over it."""

    def __init__(self, params: list[tuple[str, str]]) -> None:
        self.values: list[Any] = []
        self.params = params
        self.result = 0

    def value(self, value: Any) -> int:
        self.values.append(value)
        return len(self.values) - 1

    def key(self, name: str, rows: sa.FromClause) -> ColumnElement[Any]:
        """A key of each object (jsonb), or the value at a JSON path (`meta->a->0`, `meta->>b`) in it."""
        base, *parts = (p.strip() for p in JSON_ARROWS.split(name))
        check_json_path(base, len(parts) // 2)
        found: ColumnElement[Any] = rows.c.value
        for number, raw in enumerate((base, *parts[1::2])):
            step = unquote(raw)
            index = number > 0 and step.lstrip("-").isdigit() and step.isascii()  # an array's item, by position
            found = found.op("->", return_type=postgresql.JSONB())(
                sa.bindparam(f"v{self.value(int(step) if index else step)}", type_=sa.Integer() if index else sa.Text()))
        return found

    def shown(self, name: str, rows: sa.FromClause) -> ColumnElement[Any]:
        """What select= shows of `name`: its JSON value, or after `->>` its text (as PostgREST's `->>`)."""
        value = self.key(name, rows)
        if "->>" in name and JSON_ARROWS.findall(name)[-1] == "->>":
            return sa.func.to_jsonb(value.op("#>>", return_type=sa.Text())(sa.literal_column("'{}'")))
        return value

    def condition(self, name: str, text: str, rows: sa.FromClause) -> ColumnElement[bool]:
        negate = text.startswith("not.")
        op, dot, value = text.removeprefix("not.").partition(".")
        if not dot:
            raise QueryParseError(f"'{name}={text}': expected operator.value")
        field = self.key(name, rows)
        expression: ColumnElement[bool]
        if op in COMPARISONS:
            json = sa.cast(sa.bindparam(f"v{self.value(orjson.dumps(_json_value(unquote(value))).decode())}",
                                        type_=sa.Text()), postgresql.JSONB)
            expression = field.op(COMPARISONS[op], is_comparison=True)(json)
        elif op in PATTERNS:
            text_value = field.op("#>>", return_type=sa.Text())(sa.literal_column("'{}'"))
            pattern = unquote(value).replace("*", "%") if op in ("like", "ilike") else unquote(value)
            expression = text_value.op(PATTERNS[op], is_comparison=True)(
                sa.bindparam(f"v{self.value(pattern)}", type_=sa.Text()))
        elif op == "in":
            if not (value.startswith("(") and value.endswith(")")):
                raise QueryParseError(f"'{name}=in.{value}': in. takes a list in parentheses, e.g. in.(1,2)")
            items = [orjson.dumps(_json_value(unquote(v.strip()))).decode() for v in split_top(value[1:-1])] \
                if value[1:-1].strip() else []
            array = sa.cast(sa.bindparam(f"v{self.value(items)}", type_=postgresql.ARRAY(sa.Text())),
                            postgresql.ARRAY(postgresql.JSONB))
            expression = field == sa.any_(array)
        elif op == "is" and value.lower() in ("null", "true", "false"):
            literal = sa.cast(sa.literal_column(f"'{value.lower()}'"), postgresql.JSONB)  # one of three words
            expression = sa.or_(field.is_(None), field == literal) if value.lower() == "null" else field == literal
        else:
            raise QueryParseError(f"'{name}={text}': a function's result is filtered with eq, neq, gt, gte, lt, "
                                  "lte, like, ilike, match, imatch, in or is",
                                  details=[Problem(name, f"operator '{op}' on a function's result")])
        return sa.not_(expression) if negate else expression

    def statement(self, counted: bool = False) -> sa.Select[Any]:
        """The function's result shaped by the query string: its page of objects (`body`, `page_rows`) and,
        `counted`, how many objects the filters keep before limit and offset (`total`)."""
        self.result = self.value(None)  # the function's result, a parameter set by the caller
        rows = sa.func.jsonb_array_elements(
            sa.cast(sa.bindparam(f"v{self.result}", type_=sa.Text()), postgresql.JSONB)
        ).table_valued("value").alias("r")
        options = dict(self.params)
        shown: ColumnElement[Any] = rows.c.value
        selected = [item.strip() for item in split_top(options.get("select", "*"))]
        if selected != ["*"]:
            pairs: list[ColumnElement[Any]] = []
            for item in selected:
                alias, _, name = item.partition(":") if ":" in item else ("", "", item)
                if not name or "(" in name:
                    raise QueryParseError(f"'{item}' in select=: a function's result selects its keys")
                alias = alias or JSON_ARROWS.split(name)[-1].strip()  # a path's value is named by its last key
                pairs += [sa.bindparam(f"v{self.value(unquote(alias))}", type_=sa.Text()), self.shown(name, rows)]
            shown = sa.func.jsonb_build_object(*pairs)
        statement = sa.select(shown.label("o")).select_from(rows)
        for name, text in self.params:
            if name in SHAPING:
                continue
            if name in ("or", "and", "not.or", "not.and") or "." in name:
                raise QueryParseError(f"'{name}=' on a function's result: only column filters apply there",
                                      details=[Problem(name, "not supported on rpc results")])
            statement = statement.where(self.condition(name, text, rows))
        filtered = statement
        for raw in split_top(options["order"]) if options.get("order") else []:
            name, *modifiers = raw.strip().split(".")
            clause = self.key(name, rows)
            ordered = clause.desc() if "desc" in modifiers else clause.asc()
            if "nullsfirst" in modifiers or "nullslast" in modifiers:
                ordered = ordered.nulls_first() if "nullsfirst" in modifiers else ordered.nulls_last()
            if any(m not in ("asc", "desc", "nullsfirst", "nullslast") for m in modifiers):
                raise QueryParseError(f"'{raw}' in order=: expected asc, desc, nullsfirst or nullslast")
            statement = statement.order_by(ordered)
        for option in ("limit", "offset"):
            text = options.get(option)
            if text is not None:
                if not (text.isascii() and text.isdigit()):
                    raise QueryParseError(f"{option}={text}: expected a whole number")
                statement = getattr(statement, option)(sa.literal_column(str(int(text))))
        page = statement.subquery("page")
        total = sa.select(sa.func.count()).select_from(filtered.subquery("counted")).scalar_subquery()
        return sa.select(sa.cast(sa.func.coalesce(sa.func.jsonb_agg(page.c.o), sa.literal_column("'[]'::jsonb")),
                                 sa.Text).label("body"), sa.func.count().label("page_rows"),
                         (total if counted else sa.null()).label("total")).select_from(page)


class RpcNotFound(FunctionNotFound):
    """PostgREST's PGRST202: no function of that name (`/functions/v1` answers `function_not_found`)."""

    code = "PGRST202"


def exposed_function(runtime: Any, name: str) -> Any:
    """The function the tenant's schema exposes as `name`, or PostgREST's PGRST202."""
    exposed = next((f for f in runtime.model.functions if f.name == name), None)
    if exposed is None:
        raise RpcNotFound(f"Could not find the function '{name}' of tenant '{runtime.slug}'",
                          hint=", ".join(f.name for f in runtime.model.functions) or None)
    return exposed


def allowed(runtime: Any, name: str) -> str:
    """The `Allow` header of `OPTIONS /rpc/{name}`: GET and HEAD only for a function marked read_only."""
    return "OPTIONS,GET,HEAD,POST" if exposed_function(runtime, name).read_only else "OPTIONS,POST"


async def call(api: Any, name: str, method: str, query: bytes, headers: Mapping[str, str], body: bytes) -> Answer:
    """Answer `/rest/v1/rpc/{name}` for `api` (an `engine.rest.api.RestApi`)."""
    runtime = api.runtime
    exposed = exposed_function(runtime, name)
    media = negotiate(headers.get("accept", ""))
    if media == CSV:
        raise MediaNotAvailable("a function's result is sent as JSON", hint="Accept: application/json")
    params = parse_qsl(query.decode("utf-8", "replace"), keep_blank_values=True)
    if method in ("GET", "HEAD"):
        if not exposed.read_only:
            raise MethodNotAllowed(f"'{name}' may write: call it with POST",
                                   hint="a function the schema marks read_only: true is also callable with GET")
        properties = (exposed.input or {}).get("properties", {}) if isinstance(exposed.input, Mapping) else {}
        arguments = {k: _argument(v, properties.get(k)) for k, v in params if k in properties}
        params = [(k, v) for k, v in params if k not in properties]
        unnamed = [f"{k}={v}" for k, v in params if k not in SHAPING and not FILTER.match(v)]
        if unnamed:  # PostgREST knows a function's arguments from its signature; here the schema names them
            raise QueryParseError(f"'{unnamed[0]}' is neither an argument '{name}' declares nor a filter on its "
                                  "result (column=operator.value)",
                                  details=[Problem(k.partition("=")[0], "not a declared argument") for k in unnamed],
                                  hint="name the arguments under the function's input.properties in the schema, "
                                       "or call it with POST and a JSON body")
        body = orjson.dumps(arguments)
    elif method != "POST":
        raise MethodNotAllowed(f"{method} is not a way to call a function", hint="POST, or GET when read_only")
    limit, offset = parse_range(headers.get("range"))  # before the call: a malformed Range runs nothing
    prefer = Prefer.parse(headers.get("prefer", ""))
    counted = prefer.count is not None  # every count is exact here: the result is in hand
    status, result = await invoke(runtime, api.db, api.caller, name, body, api.bounds)
    decoded = orjson.loads(result) if result else None
    listed = isinstance(decoded, list) and all(isinstance(r, dict) for r in decoded)
    if listed and (limit is not None or offset is not None):  # as on reads, it wins over limit= and offset=
        params = [(k, v) for k, v in params if k not in ("limit", "offset")] + \
                 [(k, str(v)) for k, v in (("limit", limit), ("offset", offset)) if v is not None]
    if params:
        if not listed:
            raise QueryParseError(f"'{name}' does not return a list of objects: the query string's select, "
                                  "filters, order and limit do not apply", details=[Problem(k, "not applicable")
                                                                                    for k, _ in params])
        shaping = ResultQuery(params)
        compiled = compile_statement(shaping.statement(counted))
        values = shaping.values
        values[shaping.result] = result.decode()
        async with api.connection() as conn:
            row = await conn.fetchrow(compiled.sql, *compiled.arguments(values))
        result, rows, total = row["body"].encode(), row["page_rows"], row["total"]
    else:
        rows = len(decoded) if isinstance(decoded, list) else 1
        total = rows if counted and isinstance(decoded, list) else None
    offset = int(dict(params).get("offset", "0") or 0) if params else 0
    ranged = read_range(rows, total, offset, prefer.applied(write=False))
    if isinstance(ranged, Answer):
        return ranged
    read_status, response_headers = ranged
    if status == 204:
        return Answer(204, response_headers, b"")
    if media == OBJECT:
        decoded = orjson.loads(result)
        if isinstance(decoded, list):
            if len(decoded) != 1:
                raise not_one(len(decoded))
            result = orjson.dumps(decoded[0])
    return Answer(read_status, [*response_headers, ("Content-Type", CONTENT_TYPES[OBJECT if media == OBJECT else JSON])],
                  b"" if method == "HEAD" else result)
