"""The OpenAPI 3.1 document of a tenant's REST API, generated from its runtime (never written by hand).

OpenAPI 3.1 schemas are JSON Schema 2020-12, so request bodies reuse the very schemas that validate
them (`engine.validation`). Built once per runtime and base URL.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.runtime import TenantRuntime
from engine.schema.model import Entity, ExposedFunction, thaw, visible_columns
from engine.validation import entity_json_schema, field_json_schema

ERROR = {"$ref": "#/components/schemas/Error"}
FILTER_HELP = ("PostgREST filter: operator.value, e.g. eq.5, gt.2, in.(a,b), is.null, like.*x*; "
               "prefix not. to negate")
COLUMN_SCHEMAS: dict[str, dict[str, Any]] = {
    "uuid": {"type": "string", "format": "uuid"},
    "datetime": {"type": "string", "format": "date-time"},
}


def row_schema(entity: Entity) -> dict[str, Any]:
    """A row as the API returns it; select= may narrow it and embeds widen it, so nothing is required."""
    properties: dict[str, Any] = {}
    for column, type_name in visible_columns(entity).items():
        field = next((f for f in entity.fields if f.column == column), None)
        if field is not None and field.type == "decimal":  # a JSON number, exact as the database writes it
            schema: dict[str, Any] = {"type": "number"}
        elif field is not None and field.type != "ref":
            schema = {k: v for k, v in field_json_schema(field).items()
                      if k not in ("minimum", "maximum", "minLength", "maxLength", "pattern", "format")}
        else:
            schema = dict(COLUMN_SCHEMAS.get(type_name, {"type": "string"}))
        nullable = (field is not None and not field.required) or column == "owner_id"
        properties[column] = {"anyOf": [schema, {"type": "null"}]} if nullable else schema
    return {"type": "object", "properties": properties, "additionalProperties": True}


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in schema.items() if k != "$schema"}


def _responses(success: dict[str, Any], *codes: str) -> dict[str, Any]:
    errors = {code: {"description": description, "content": {"application/json": {"schema": ERROR}}}
              for code, description in (("400", "bad request: malformed query, unknown column, bad value"),
                                        ("403", "forbidden"), ("404", "unknown entity"),
                                        ("406", "not exactly one row for a single-object request"),
                                        ("409", "conflict: unique or foreign key violation"),
                                        ("416", "range not satisfiable"),
                                        ("422", "validation failed")) if code in codes}
    return {**success, **errors}


def entity_paths(entity: Entity) -> dict[str, Any]:
    name = entity.name
    rows = {"type": "array", "items": {"$ref": f"#/components/schemas/{name}"}}
    filters = [{"name": column, "in": "query", "required": False, "description": FILTER_HELP,
                "schema": {"type": "string"}} for column in visible_columns(entity)]
    common = [{"$ref": f"#/components/parameters/{p}"} for p in ("select", "order", "limit", "offset", "or", "and")]
    read = [*common, *filters, {"$ref": "#/components/parameters/range"}, {"$ref": "#/components/parameters/prefer"}]
    write_filters = [*filters, {"$ref": "#/components/parameters/or"}, {"$ref": "#/components/parameters/and"},
                     {"$ref": "#/components/parameters/select"}, {"$ref": "#/components/parameters/prefer"}]
    rows_response = {"description": "the rows", "content": {"application/json": {"schema": rows}}}
    written = {"200": {"description": "the rows written (Prefer: return=representation)",
                       "content": {"application/json": {"schema": rows}}},
               "204": {"description": "written (Prefer: return=minimal)"}}
    return {
        "get": {"operationId": f"list_{name}", "tags": [name], "parameters": read,
                "responses": _responses({"200": rows_response}, "400", "403", "404", "406", "416")},
        "head": {"operationId": f"count_{name}", "tags": [name], "parameters": read,
                 "responses": _responses({"200": {"description": "headers only (Content-Range)"}},
                                         "400", "403", "404", "406", "416")},
        "post": {"operationId": f"create_{name}", "tags": [name],
                 "parameters": [{"$ref": "#/components/parameters/select"}, {"$ref": "#/components/parameters/prefer"},
                                {"$ref": "#/components/parameters/on_conflict"},
                                {"$ref": "#/components/parameters/columns"}],
                 "requestBody": {"required": True, "content": {"application/json": {"schema": {"oneOf": [
                     {"$ref": f"#/components/schemas/{name}_create"},
                     {"type": "array", "minItems": 1, "items": {"$ref": f"#/components/schemas/{name}_create"}}]}}}},
                 "responses": _responses({"201": {"description": "created; with Prefer: return=representation the "
                                                                 "body holds the rows (an array of the entity)"}},
                                         "400", "403", "404", "409", "422")},
        "patch": {"operationId": f"update_{name}", "tags": [name], "parameters": write_filters,
                  "requestBody": {"required": True, "content": {"application/json": {
                      "schema": {"$ref": f"#/components/schemas/{name}_update"}}}},
                  "responses": _responses(written, "400", "403", "404", "409", "422")},
        "delete": {"operationId": f"delete_{name}", "tags": [name], "parameters": write_filters,
                   "responses": _responses(written, "400", "403", "404", "409")},
    }


def rpc_paths(function: ExposedFunction) -> dict[str, Any]:
    """`/rpc/{name}`: POST with the function's input as the body; GET with it as query arguments when the
    schema marks the function read_only (PostgREST's STABLE functions)."""
    name = function.name
    schema = thaw(function.input) if function.input is not None else {}
    schema = schema if isinstance(schema, dict) else {}
    result = {"200": {"description": "what the function returns (a list takes select, filters, order, limit)",
                      "content": {"application/json": {"schema": {}}}},
              "204": {"description": "the function returned nothing"}}
    shaping = [{"$ref": f"#/components/parameters/{p}"} for p in ("select", "order", "limit", "offset")]
    paths: dict[str, Any] = {"post": {
        "operationId": f"rpc_{name}", "tags": ["rpc"], "summary": function.description or f"call {name}",
        "parameters": shaping,
        "requestBody": {"required": False, "content": {"application/json": {"schema": schema or {"type": "object"}}}},
        "responses": _responses(result, "400", "403", "404", "422")}}
    if function.read_only:
        arguments = [{"name": key, "in": "query", "required": key in schema.get("required", ()),
                      "schema": value if isinstance(value, Mapping) else {}}
                     for key, value in dict(schema.get("properties") or {}).items()]
        paths["get"] = {"operationId": f"rpc_{name}_get", "tags": ["rpc"],
                        "summary": function.description or f"call {name}", "parameters": [*arguments, *shaping],
                        "responses": _responses(result, "400", "403", "404", "422")}
    return paths


PARAMETERS = {
    "select": {"name": "select", "in": "query", "schema": {"type": "string"},
               "description": "columns and embeds, e.g. id,title,author(name),comments(*)"},
    "order": {"name": "order", "in": "query", "schema": {"type": "string"},
              "description": "e.g. created_at.desc.nullslast,title"},
    "limit": {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 0}},
    "offset": {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0}},
    "or": {"name": "or", "in": "query", "schema": {"type": "string"}, "description": "e.g. (a.eq.1,b.gt.2)"},
    "and": {"name": "and", "in": "query", "schema": {"type": "string"}, "description": "e.g. (a.eq.1,b.gt.2)"},
    "on_conflict": {"name": "on_conflict", "in": "query", "schema": {"type": "string"},
                    "description": "upsert target columns, with Prefer: resolution=merge-duplicates"},
    "columns": {"name": "columns", "in": "query", "schema": {"type": "string"},
                "description": "the keys of the body to insert"},
    "range": {"name": "Range", "in": "header", "schema": {"type": "string", "pattern": "^[0-9]+-[0-9]*$"},
              "description": "rows first-last, e.g. 0-9"},
    "prefer": {"name": "Prefer", "in": "header", "schema": {"type": "string"},
               "description": "return=representation|minimal|headers-only, count=exact, "
                              "resolution=merge-duplicates|ignore-duplicates"},
}


def foreign_key_notes(entity: Entity, schema: dict[str, Any]) -> dict[str, Any]:
    """A ref column's description is PostgREST's note naming its target (`<fk table='author' column='id'/>`),
    which clients reading PostgREST's documents (and the console's pickers of related rows) understand."""
    properties = dict(schema.get("properties") or {})
    for field in entity.fields:
        if field.ref is not None and field.column in properties:
            note = f"Note:\nThis is a Foreign Key to `{field.ref.to}.id`.<fk table='{field.ref.to}' column='id'/>"
            properties[field.column] = {**properties[field.column], "description": note}
    return {**schema, "properties": properties} if properties else schema


def openapi_document(runtime: TenantRuntime, server_url: str) -> dict[str, Any]:
    schemas: dict[str, Any] = {
        "Error": {"type": "object", "required": ["code", "message"],
                  "properties": {"code": {"type": "string"}, "message": {"type": "string"},
                                 "details": {}, "hint": {"type": ["string", "null"]}}},
    }
    paths: dict[str, Any] = {}
    for entity in runtime.model.entities:
        schemas[entity.name] = foreign_key_notes(entity, row_schema(entity))
        schemas[f"{entity.name}_create"] = foreign_key_notes(entity, _body(entity_json_schema(entity, partial=False)))
        schemas[f"{entity.name}_update"] = foreign_key_notes(
            entity, {**_body(entity_json_schema(entity, partial=True)), "minProperties": 1})
        paths[f"/{entity.name}"] = entity_paths(entity)
    for function in runtime.model.functions:
        paths[f"/rpc/{function.name}"] = rpc_paths(function)
    return {
        "openapi": "3.1.0",
        "info": {"title": f"{runtime.slug} REST API", "version": str(runtime.version),
                 "description": f"PostgREST-compatible API of tenant {runtime.slug}, schema version {runtime.version}"},
        "servers": [{"url": server_url}],
        "paths": paths,
        "components": {"schemas": schemas, "parameters": PARAMETERS},
    }
