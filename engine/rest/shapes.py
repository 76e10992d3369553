"""A request's shape: its query string with the operands of its plain comparisons taken out.

Why: a read, update or delete is prepared (parsed, authorized, planned, its statement found) once per
exact request and kept (`RestApi.prepared_request`), but a client reading or writing rows one at a time
(`?id=eq.<uuid>`, a user's page of orders, ...) sends a new query string each time: each was parsed
again (about 100 µs of a 270 µs read, in process). The operands of `eq`, `neq`, `gt`, `gte`, `lt` and
`lte`, unquoted, reach the plan's values as they are written (`params.ReadParser.filter`), so a request
of a known shape is its shape's plan with its own operands put in their places. That they do is checked,
not assumed: the shape is parsed with markers in place of the operands, and kept only if each marker came
out once, unchanged, as a value, and appears nowhere else in the plan or its values.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

TOKEN = secrets.token_hex(8)  # in every marker: no client can send one on purpose
MARKER = f"\x00{TOKEN}:"
# a `key=op.operand` of the raw query string (its key and operand still percent-encoded)
PLAIN = re.compile(r"(?:^|(?<=&))([^=&]*)=((?:not\.)?(?:eq|neq|gt|gte|lt|lte)\.)([^&]*)")
NOT_FILTERS = frozenset(("select", "order", "limit", "offset", "or", "and", "on_conflict", "columns"))


@dataclass(frozen=True)
class Shape:
    query: str  # the request's query string, each plain comparison's operand a marker
    operands: tuple[str, ...]  # the request's operands (decoded), in marker order


def shape_of(query: str) -> Shape | None:
    """The request's shape, or None when it compares nothing plainly (its exact text is then its key).
    Read off the raw query string: cheaper than parsing it, which a request of a known shape never does."""
    operands: list[str] = []

    def marked(match: re.Match[str]) -> str:
        operand = unquote_plus(match.group(3))
        if unquote_plus(match.group(1)).rpartition(".")[2] in NOT_FILTERS or operand.startswith('"'):
            return match.group(0)  # not a filter; or quoted, which the parser unquotes
        operands.append(operand)
        return f"{match.group(1)}={match.group(2)}{MARKER}{len(operands) - 1}"

    shaped = PLAIN.sub(marked, query)
    return Shape(shaped, tuple(operands)) if operands else None


def placed(shape: Shape, plan: Any, values: list[Any]) -> tuple[int, ...] | None:
    """Where each of the shape's markers came out in the values of the plan parsed from it; None unless
    each came out exactly once, unchanged, and no marker is anywhere else (in the plan, in another value)."""
    positions = []
    for index in range(len(shape.operands)):
        marker = f"{MARKER}{index}"
        found = [i for i, value in enumerate(values) if value == marker]
        if len(found) != 1:
            return None
        positions.append(found[0])
    others = [value for i, value in enumerate(values) if i not in positions]
    if TOKEN in repr(plan) or TOKEN in repr(others):
        return None
    return tuple(positions)


def filled(template: list[Any], positions: tuple[int, ...], operands: tuple[str, ...]) -> list[Any]:
    """The shape's values with this request's operands in their places."""
    values = list(template)
    for position, operand in zip(positions, operands, strict=True):
        values[position] = operand
    return values
