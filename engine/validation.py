"""JSON Schema (Draft 2020-12) for the values a field may hold.

One mapping from field type to JSON Schema, used wherever a value is checked against a field: a default
in a schema file, and the request bodies of the generated APIs. Formats are checked for real
(`jsonschema[format-nongpl]`), never silently skipped.

Every regular expression a tenant supplies (a field's `pattern:`, `pattern`/`patternProperties` inside a
json field's `schema:` or a function's `input:`, a value of `format: regex`) runs in RE2, whose matching
time is linear in the input: Python's backtracking `re` must never see one (DESIGN.md, wall 5: one POST
against `^(a+)+$` held the event loop for 10 s). `TenantValidator` is Draft 2020-12 with those keywords
rewired to RE2; `json_schema_problem` refuses at schema check what RE2 cannot run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import lru_cache
from typing import Any

import orjson
import re2
from jsonschema import Draft202012Validator, FormatChecker, validators
from jsonschema import _keywords as draft_keywords
from jsonschema.exceptions import SchemaError, ValidationError

from engine.errors import Problem
from engine.schema.model import OWNER_COLUMN, Entity, Field, thaw

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)

_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # a refused pattern is reported to its author, not logged to stderr


class PatternError(ValueError):
    """A pattern RE2 cannot compile (a backreference, a lookaround, a bad escape, ...)."""


@lru_cache(maxsize=4096)
def compile_pattern(pattern: str) -> Any:
    """`pattern` compiled by RE2 (cached: body validators call this per value)."""
    try:
        return re2.compile(pattern, _RE2_OPTIONS)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        reason = reason.decode(errors="replace") if isinstance(reason, bytes) else str(reason)
        raise PatternError(f"invalid regular expression (RE2 syntax; no backreferences or lookarounds): "
                           f"{reason}") from None


def pattern_problem(pattern: str) -> str | None:
    """Why RE2 cannot run `pattern`, or None."""
    try:
        compile_pattern(pattern)
    except PatternError as exc:
        return str(exc)
    return None


def _search(pattern: str, text: str) -> bool:
    return compile_pattern(pattern).search(text) is not None


def _pattern(validator: Any, pattern: str, instance: Any, schema: dict[str, Any]) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and not _search(pattern, instance):
        yield ValidationError(f"does not match {pattern!r}")


def _pattern_properties(validator: Any, patterns: dict[str, Any], instance: Any,
                        schema: dict[str, Any]) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for key, value in instance.items():
            if _search(pattern, key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _additional_properties(validator: Any, additional: Any, instance: Any,
                           schema: dict[str, Any]) -> Iterator[ValidationError]:
    if "patternProperties" not in schema:  # no regular expression involved: the draft's own keyword
        yield from draft_keywords.additionalProperties(validator, additional, instance, schema)
        return
    if not validator.is_type(instance, "object"):
        return
    properties, patterns = schema.get("properties", {}), schema["patternProperties"]
    extras = [k for k in instance if k not in properties and not any(_search(p, k) for p in patterns)]
    if validator.is_type(additional, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], additional, path=extra)
    elif not additional and extras:
        yield ValidationError(f"{', '.join(map(repr, sorted(extras)))} not allowed: "
                              f"no property or pattern of {', '.join(map(repr, sorted(patterns)))} matches")


def _is_regex(value: object) -> bool:
    if isinstance(value, str):
        compile_pattern(value)
    return True


FORMAT_CHECKER = FormatChecker(())
FORMAT_CHECKER.checkers = {**Draft202012Validator.FORMAT_CHECKER.checkers, "regex": (_is_regex, PatternError)}

TenantValidator = validators.extend(
    Draft202012Validator,
    {"pattern": _pattern, "patternProperties": _pattern_properties, "additionalProperties": _additional_properties},
    format_checker=FORMAT_CHECKER,
)
"""Draft 2020-12 whose regular expressions run in RE2."""


def _keys_anywhere(schema: Any, key: str) -> bool:
    if isinstance(schema, dict):
        return key in schema or any(_keys_anywhere(v, key) for v in schema.values())
    if isinstance(schema, list):
        return any(_keys_anywhere(v, key) for v in schema)
    return False


def json_schema_problem(schema: Any) -> str | None:
    """Why a tenant-supplied JSON Schema cannot be used, or None: it must be a valid Draft 2020-12 schema whose
    patterns RE2 compiles. `unevaluatedProperties` evaluates `patternProperties` with Python's `re` inside
    jsonschema, so the two may not be combined."""
    try:
        TenantValidator.check_schema(schema, format_checker=FORMAT_CHECKER)
    except SchemaError as error:
        return f"not a valid JSON Schema: {error.message}"
    if _keys_anywhere(schema, "unevaluatedProperties") and _keys_anywhere(schema, "patternProperties"):
        return "unevaluatedProperties cannot be combined with patternProperties; use additionalProperties"
    return None


_SCALAR: dict[str, dict[str, Any]] = {
    "string": {"type": "string"},
    "text": {"type": "string"},
    "integer": {"type": "integer", "minimum": INT32[0], "maximum": INT32[1]},
    "bigint": {"type": "integer", "minimum": INT64[0], "maximum": INT64[1]},
    "number": {"type": "number"},
    "decimal": {"type": "number"},
    "boolean": {"type": "boolean"},
    "date": {"type": "string", "format": "date"},
    "datetime": {"type": "string", "format": "date-time"},
    "uuid": {"type": "string", "format": "uuid"},
}


def field_json_schema(field: Field) -> dict[str, Any]:
    """The JSON Schema of one non-null value of `field`."""
    if field.type == "json":
        return thaw(field.schema) if field.schema is not None else {}
    if field.type == "enum":
        return {"enum": list(field.values)}
    if field.type == "ref":
        return {"type": "string", "format": "uuid"}
    if field.type == "array":
        return {"type": "array", "items": dict(_SCALAR[field.items or "string"])}
    schema = dict(_SCALAR[field.type])
    for key, keyword in (("max_length", "maxLength"), ("min_length", "minLength"), ("format", "format"),
                         ("pattern", "pattern"), ("minimum", "minimum"), ("maximum", "maximum")):
        value = getattr(field, key)
        if value is not None:
            schema[keyword] = value
    if field.type == "decimal" and field.precision is not None:
        scale = field.scale or 0
        largest = 10 ** (field.precision - scale) - 10 ** -scale  # numeric(5,2) holds at most 999.99
        schema["maximum"] = min(largest, schema.get("maximum", largest))
        schema["minimum"] = max(-largest, schema.get("minimum", -largest))
    return schema


def value_errors(field: Field, value: Any) -> list[str]:
    """Why `value` does not fit `field` (empty when it fits)."""
    validator = TenantValidator(field_json_schema(field), format_checker=FORMAT_CHECKER)
    return [e.message for e in validator.iter_errors(thaw(value))]


def date_part(value: Any) -> Any:
    """A `date` field's value as PostgreSQL casts a timestamp to a date (`2020-01-01T23:59:59-10:00` is
    2020-01-01: its date as written), which PostgREST's and Hasura's inputs both take; anything else as it is."""
    if isinstance(value, str) and len(value) > 10 and value[10] in "T ":
        return value[:10]
    return value


READ_ONLY = ("id", "created_at", "updated_at", OWNER_COLUMN)
# A create may name its row's id (a UUID), as PostgREST takes any column: clients make ids up front (an
# optimistic UI, supabase-js's upsert, whose conflict target is the primary key); an update never changes it.
ID_ON_CREATE = {"type": "string", "format": "uuid"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    if "enum" in schema:
        return {**schema, "enum": [*schema["enum"], None]}
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        return {**schema, "type": [*types, "null"]}
    return schema  # json: anything, null included


def column_json_schema(field: Field) -> dict[str, Any]:
    """The schema of a field's value in a request body (keyed by column; decimals may come as strings)."""
    schema = field_json_schema(field)
    if field.type == "decimal":
        schema = {**schema, "type": ["number", "string"], "pattern": r"^-?\d+(\.\d+)?$"}
    return schema if field.required else _nullable(schema)


def entity_json_schema(entity: Entity, *, partial: bool) -> dict[str, Any]:
    """What a create (`partial=False`) or an update body of `entity` may hold."""
    writable = [f for f in entity.fields if not f.internal]
    required = [f.column for f in writable if f.required and not f.has_default and not partial]
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": {**({} if partial else {"id": ID_ON_CREATE}), **{f.column: column_json_schema(f) for f in writable}},
        "required": required,
        "additionalProperties": False,
    }


Check = Callable[[Any], bool]
_CHECKED_KEYWORDS = frozenset(("type", "maxLength", "minLength", "format", "pattern", "minimum", "maximum", "enum",
                               "items"))
_TYPE_CHECKS: dict[str, Check] = {
    "string": lambda v: type(v) is str,
    "integer": lambda v: type(v) is int,  # a float like 1.0 is an integer too: left to jsonschema
    "number": lambda v: type(v) is int or type(v) is float,
    "boolean": lambda v: type(v) is bool,
    "null": lambda v: v is None,
}


def _all(checks: list[Check]) -> Check:
    if len(checks) == 1:
        return checks[0]
    return lambda v: all(check(v) for check in checks)


def accepts(schema: Any) -> Check | None:
    """A predicate that holds only for values `schema` surely accepts (False: not sure), or None when the
    schema uses a keyword beyond the few the engine's field schemas use.

    Why: jsonschema walks a schema through generic keyword functions, about 10 us per field of every
    written object; these predicates are plain comparisons, compiled once per entity, and whatever they
    do not vouch for goes through jsonschema, which alone words the problems. Each keyword means what
    Draft 2020-12 says (a length, a pattern only constrain strings; a bound only numbers); a pattern runs
    in RE2 and a format through the same `FORMAT_CHECKER`, as in `TenantValidator`."""
    if not isinstance(schema, dict) or not set(schema) <= _CHECKED_KEYWORDS:
        return None
    if not schema:
        return lambda v: True
    if "enum" in schema:
        values = schema["enum"]
        if set(schema) != {"enum"} or not isinstance(values, list) \
                or not all(v is None or type(v) is str for v in values):
            return None
        texts, null = frozenset(v for v in values if v is not None), None in values
        return lambda v: (type(v) is str and v in texts) or (null and v is None)
    types = schema.get("type")
    names = [types] if isinstance(types, str) else types
    if not isinstance(names, list) or not names or not all(n in (*_TYPE_CHECKS, "array") for n in names):
        return None
    alternatives: list[Check] = []
    for name in names:
        if name == "array":
            item = accepts(schema["items"]) if "items" in schema else (lambda v: True)
            if item is None:
                return None
            alternatives.append(lambda v, item=item: type(v) is list and all(item(i) for i in v))
            continue
        checks = [_TYPE_CHECKS[name]]
        if name == "string":
            if "maxLength" in schema:
                checks.append(lambda v, most=schema["maxLength"]: len(v) <= most)
            if "minLength" in schema:
                checks.append(lambda v, least=schema["minLength"]: len(v) >= least)
            if "pattern" in schema:
                try:
                    regex = compile_pattern(schema["pattern"])
                except PatternError:
                    return None
                checks.append(lambda v, regex=regex: regex.search(v) is not None)
        if name in ("integer", "number"):
            if "minimum" in schema:
                checks.append(lambda v, least=schema["minimum"]: not v < least)
            if "maximum" in schema:
                checks.append(lambda v, most=schema["maximum"]: not v > most)
        alternatives.append(_all(checks))
    typed = alternatives[0] if len(alternatives) == 1 else (lambda v: any(a(v) for a in alternatives))
    if "format" not in schema:
        return typed
    if schema["format"] == "uuid":
        return _all([typed, lambda v: (type(v) is str and _canonical_uuid(v)) or _conforms(v, "uuid")])
    return _all([typed, lambda v, format_=schema["format"]: _conforms(v, format_)])


_UUID_CHARACTERS = frozenset("0123456789abcdefABCDEF-")


def _canonical_uuid(value: str) -> bool:
    """8-4-4-4-12 hex digits (every ref's form): jsonschema's uuid format surely takes it (`UUID()` parses the
    32 digits left once the dashes go, and its dashes are where that format wants them), in a third of its
    time; anything else is left to it."""
    return (len(value) == 36 and value[8] == value[13] == value[18] == value[23] == "-"
            and value.count("-") == 4 and _UUID_CHARACTERS.issuperset(value))


def _conforms(value: Any, format_: str) -> bool:
    try:
        return FORMAT_CHECKER.conforms(value, format_)
    except Exception:  # a checker's own error: jsonschema raises it again, the fast path only stands aside
        return False


class BodyValidator:
    """Compiled once per entity and mode; reports every problem of every object at once."""

    def __init__(self, entity: Entity, *, partial: bool) -> None:
        self.schema = entity_json_schema(entity, partial=partial)
        self.validator = TenantValidator(self.schema, format_checker=FORMAT_CHECKER)
        self.required = frozenset(self.schema["required"])
        found = {key: accepts(value) for key, value in self.schema["properties"].items()}
        self.checks: dict[str, Check] = {key: check for key, check in found.items() if check is not None}

    def surely_valid(self, body: Any) -> bool:
        """Whether `body` is valid by the compiled checks alone (False: jsonschema decides)."""
        if type(body) is not dict or not self.required <= body.keys():
            return False
        checks = self.checks
        for key, value in body.items():
            check = checks.get(key)
            if check is None or not check(value):
                return False
        return True

    def problems(self, body: Any, prefix: str = "") -> list[Problem]:
        if self.surely_valid(body):
            return []
        found = []
        for error in self.validator.iter_errors(body):
            if error.validator == "required":
                missing = error.message.split("'")[1]
                found.append(Problem(prefix + missing, "is required"))
            elif error.validator == "additionalProperties":
                where = "".join(f"{p}." for p in error.absolute_path)  # a key inside a json field's value
                allowed = error.schema.get("properties", {}) if isinstance(error.schema, dict) else {}
                for key in sorted(set(error.instance) - set(allowed)):
                    why = ("is not an allowed key" if where else
                           "is read-only" if key in READ_ONLY else "is not a field of this entity")
                    found.append(Problem(prefix + where + key, why))
            else:
                where = ".".join(str(p) for p in error.absolute_path)
                message = error.message
                if error.instance is None or isinstance(error.instance, bool):  # JSON's words, not Python's
                    message = message.replace(repr(error.instance), orjson.dumps(error.instance).decode(), 1)
                found.append(Problem(prefix + where, message))
        return found
