"""JSON Schema (Draft 2020-12) for the values a field may hold.

One mapping from field type to JSON Schema, used wherever a value is checked against a field: a default
in a schema file, and the request bodies of the generated APIs. Formats are checked for real
(`jsonschema[format-nongpl]`), never silently skipped.
"""

from __future__ import annotations

from typing import Any

from jsonschema import Draft202012Validator

from engine.errors import Problem
from engine.schema.model import OWNER_COLUMN, Entity, Field, thaw

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
FORMAT_CHECKER = Draft202012Validator.FORMAT_CHECKER

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
    validator = Draft202012Validator(field_json_schema(field), format_checker=FORMAT_CHECKER)
    return [e.message for e in validator.iter_errors(thaw(value))]


READ_ONLY = ("id", "created_at", "updated_at", OWNER_COLUMN)


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
        "properties": {f.column: column_json_schema(f) for f in writable},
        "required": required,
        "additionalProperties": False,
    }


class BodyValidator:
    """Compiled once per entity and mode; reports every problem of every object at once."""

    def __init__(self, entity: Entity, *, partial: bool) -> None:
        self.schema = entity_json_schema(entity, partial=partial)
        self.validator = Draft202012Validator(self.schema, format_checker=FORMAT_CHECKER)

    def problems(self, body: Any, prefix: str = "") -> list[Problem]:
        found = []
        for error in self.validator.iter_errors(body):
            if error.validator == "required":
                missing = error.message.split("'")[1]
                found.append(Problem(prefix + missing, "is required"))
            elif error.validator == "additionalProperties":
                for key in sorted(set(error.instance) - set(self.schema["properties"])):
                    why = "is read-only" if key in READ_ONLY else "is not a field of this entity"
                    found.append(Problem(prefix + key, why))
            else:
                where = ".".join(str(p) for p in error.absolute_path)
                found.append(Problem(prefix + where, error.message))
        return found
