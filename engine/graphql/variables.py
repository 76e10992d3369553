"""A GraphQL request's variables, checked and coerced to the types its operation declares.

graphql-core's `get_variable_values` is the definition: it resolves each declared type from the document,
walks the value once to bound its depth, then again to coerce it, through generic type tests, on every
request (about 10 us for one insert's object). Here the declared types are resolved once per operation
(`signatures`, cached with the validated document) and a value graphql-core would accept as it is is
coerced in one walk by `coerce_value`; whatever it is not sure of (a missing or null value where one is
required, a default to apply, a scalar's refusal, a non-list where a list is declared, a one-of or
custom `out_type` input, deep nesting) goes to graphql-core, which alone words the errors. Leaves are
coerced by the scalar's or enum's own coercion, exactly as graphql-core calls it. Never builds SQL.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from graphql import (
    GraphQLEnumType,
    GraphQLInputObjectType,
    GraphQLList,
    GraphQLNonNull,
    GraphQLScalarType,
    GraphQLSchema,
    Undefined,
)
from graphql.execution.values import get_variable_values
from graphql.language import ast
from graphql.utilities import type_from_ast

from engine.graphql.compiler import GraphQLError

UNSURE = object()  # `coerce_value`: graphql-core decides
MAX_DEPTH = 32  # levels `coerce_value` walks before it leaves a value to graphql-core's own depth bound
Signature = tuple[str, Any, bool]  # (name, input type, has a default)
_PLAIN_OUT_TYPE = GraphQLInputObjectType.out_type


def signatures(schema: GraphQLSchema, operation: ast.OperationDefinitionNode) -> tuple[Signature, ...] | None:
    """The operation's declared variables resolved against `schema`, or None when one does not resolve to
    an input type (graphql-core then reports it)."""
    found = []
    for definition in operation.variable_definitions or ():
        type_ = type_from_ast(schema, definition.type)
        if not isinstance(type_, (GraphQLNonNull, GraphQLList, GraphQLInputObjectType, GraphQLScalarType,
                                  GraphQLEnumType)):
            return None
        found.append((definition.variable.name.value, type_, definition.default_value is not None))
    return tuple(found)


def coerce_variables(schema: GraphQLSchema, operation: ast.OperationDefinitionNode, variables: dict[str, Any],
                     declared: tuple[Signature, ...] | None = None) -> dict[str, Any]:
    """The request's variables checked and coerced to the operation's declared types (`declared`: its
    `signatures`, when the caller keeps them)."""
    if declared is not None:
        coerced = fast_variables(declared, variables)
        if coerced is not UNSURE:
            return coerced  # type: ignore[return-value]
    result = get_variable_values(schema, operation.variable_definitions or (), variables)
    if isinstance(result, list):
        raise GraphQLError("validation-failed", result[0].message)
    return dict(getattr(result, "coerced", result))  # graphql-core 3.3 wraps them, 3.2 does not


def fast_variables(declared: tuple[Signature, ...], variables: Mapping[str, Any]) -> dict[str, Any] | object:
    """The coerced variables, or `UNSURE`."""
    coerced: dict[str, Any] = {}
    for name, type_, has_default in declared:
        if name not in variables:
            if has_default or isinstance(type_, GraphQLNonNull):
                return UNSURE
            continue  # a nullable variable left out is left out
        value = coerce_value(variables[name], type_, 0)
        if value is UNSURE:
            return UNSURE
        coerced[name] = value
    return coerced


def coerce_value(value: Any, type_: Any, depth: int) -> Any:
    """graphql-core's `coerce_input_value` of `value`, for the values it takes without a question (the
    coerced object's keys in the type's field order, as there); `UNSURE` otherwise."""
    if depth > MAX_DEPTH:
        return UNSURE
    if isinstance(type_, GraphQLNonNull):
        if value is None:
            return UNSURE
        type_ = type_.of_type
    elif value is None:
        return None
    if isinstance(type_, GraphQLList):
        if type(value) is not list:
            return UNSURE
        items = []
        for item in value:
            coerced = coerce_value(item, type_.of_type, depth + 1)
            if coerced is UNSURE:
                return UNSURE
            items.append(coerced)
        return items
    if isinstance(type_, GraphQLInputObjectType):
        if type(value) is not dict or getattr(type_, "is_one_of", False) or type_.out_type is not _PLAIN_OUT_TYPE:
            return UNSURE
        fields = type_.fields
        if not value.keys() <= fields.keys():
            return UNSURE
        result: dict[str, Any] = {}
        for name, field in fields.items():
            if name in value:
                coerced = coerce_value(value[name], field.type, depth + 1)
                if coerced is UNSURE:
                    return UNSURE
                result[field.out_name or name] = coerced
            elif isinstance(field.type, GraphQLNonNull) or getattr(field, "default", None) is not None \
                    or field.default_value is not Undefined:
                return UNSURE
        return result
    if isinstance(type_, (GraphQLScalarType, GraphQLEnumType)):
        coerce = getattr(type_, "coerce_input_value", None) or type_.parse_value  # 3.3, or 3.2's name
        try:
            coerced = coerce(value)
        except Exception:  # a refusal (GraphQLError, or the scalar's own error): graphql-core words it
            return UNSURE
        return UNSURE if coerced is Undefined else coerced
    return UNSURE
