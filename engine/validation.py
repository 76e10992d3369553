"""JSON Schema (Draft 2020-12) for the values a field may hold.

One mapping from field type to JSON Schema, used wherever a value is checked against a field: a default
in a schema file, and the request bodies of the generated APIs. Formats are checked for real
(`jsonschema[format-nongpl]`), never silently skipped.
"""

from __future__ import annotations

from typing import Any

from jsonschema import Draft202012Validator

from engine.schema.model import Field, thaw

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
        return {}
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
