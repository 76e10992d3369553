"""Request bodies, read within the tenant's plan's limits before anything parses them.

Why: a body is held in memory whole and then parsed as JSON (REST, GraphQL, functions, auth) on the event
loop that every tenant shares. Two things bound what that costs, and both are checked here, while the body
streams in, so that a body over either is refused before the rest of it is read and before anything
parses it:

- its bytes: the plan's `max_body_bytes` (engine.limits). The declared `Content-Length` is checked first,
  so an oversized body is refused before a byte of it is read; a chunked body (no length) is counted as it
  streams in. 413 `body_too_large`.
- its JSON values, which is what parsing costs (orjson builds one Python object per value: 100,000 small
  objects took 36 ms to parse here, while 10 MiB of one string took 32 ms and 3.5 million empty arrays,
  10 MiB, took 3.5 s). A top-level array holds at most the plan's `max_body_items` items (413
  `too_many_items`, the same refusal the REST bulk insert gives after parsing); and any body holds at most
  `MAX_BODY_VALUES` values whatever the plan (413 `body_too_complex`), a fixed bound like
  engine.limits' MAX_SELECT_ITEMS because it protects the process, not a plan's budget.

A body refused before its end leaves `scope[CLOSE_CONNECTION]` set: its answer should say `Connection:
close`, or the server reads (and throws away) the rest of the upload to keep the connection, about as much
CPU as the refusal saved (6 MB: 9.7 ms of the gateway's CPU per request kept alive, 4.3 ms closed).

Parsing cannot leave the event loop instead: orjson holds the GIL for the whole parse (a thread parsing 2
million objects kept the event loop's thread from running for 340 ms), so a parse in a thread stalls the
loop just the same; bounding the parse is what keeps it short.

The count is an upper bound taken at the speed of C: strings are cut out by splitting the chunk at its
quotes (a comma inside a string is not a value; only a chunk with escaped quotes takes a loop in Python,
one turn per quote), then the structural bytes left are counted (`,` `:` `[`
`{`: every value but the first follows one of them). Item counting tracks nesting depth over the structural
bytes only while the body is a top-level array. The work per chunk is bounded by the chunk (the server
hands them in at most 64 KiB) and the whole by the limits, and the event loop runs between chunks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from starlette.requests import Request

from engine.errors import BackSaasError, InvalidBody, Problem, TooManyItems
from engine.limits import Bounds

MAX_BODY_VALUES = 100_000  # JSON values and object keys in one body: at most ~40 ms of parsing here
# Arrays and objects nested in one another in a body: orjson parses 1,024 levels but writes only 254, and a
# body's values are written again (as SQL parameters, to hooks and functions), so deeper ones must not pass
MAX_BODY_DEPTH = 128
CLOSE_CONNECTION = "backsaas.close_connection"  # in the scope: a body refused before its end, whose rest is unread
SCAN_SLICE = 16 * 1024  # bytes counted between checks of the bounds
WHITESPACE = b" \t\r\n"
_STRUCTURAL = b"[]{},:"
_NOT_STRUCTURAL = bytes(b for b in range(256) if b not in _STRUCTURAL)


class BodyTooLarge(BackSaasError):
    code = "body_too_large"
    status = 413


class BodyTooComplex(BackSaasError):
    """A body with more JSON values than one request may make the server parse."""

    code = "body_too_complex"
    status = 413


def _refusal(limit: int, size: str) -> BodyTooLarge:
    return BodyTooLarge(f"the body is larger than this tenant's plan allows ({limit} bytes)",
                        details=[Problem("body", f"{size}, more than {limit} bytes")],
                        hint="send fewer objects per request (the plan's limits.max_body_bytes)")


def too_deep() -> BodyTooComplex:
    return BodyTooComplex(f"the body nests arrays and objects more than {MAX_BODY_DEPTH} levels deep",
                          details=[Problem("body", f"at most {MAX_BODY_DEPTH} levels")])


class BodyShape:
    """What parsing a body will cost, counted chunk by chunk as it arrives: its JSON values (an upper bound)
    and, when it is a top-level array, its items (its top-level commas, plus one). `feed` raises the 413 as
    soon as a bound is passed.

    Text/CSV bodies are not JSON: their rows are items (lines) and their fields values (commas and lines),
    counted without regard to quoting, an upper bound."""

    def __init__(self, max_items: int, max_values: int = MAX_BODY_VALUES, *, csv: bool = False) -> None:
        self.max_items, self.max_values, self.csv = max_items, max_values, csv
        self.values = 0
        self.commas = 0  # commas at depth 1 of a top-level array: its items but the first
        self.array: bool | None = None  # None until the first byte that is not whitespace
        self.depth = 0
        self.in_string = False
        self.escaped = False  # the chunk ended on a backslash inside a string: the next byte is escaped

    def feed(self, chunk: bytes) -> None:
        """Count one chunk, a slice at a time so that a body over a bound is refused within a slice of it."""
        for start in range(0, len(chunk), SCAN_SLICE):
            self._feed(chunk[start:start + SCAN_SLICE] if len(chunk) > SCAN_SLICE else chunk)

    def _feed(self, chunk: bytes) -> None:
        if self.csv:
            lines = chunk.count(b"\n")
            self.commas += lines  # a CSV body's header line is not an item: lines - 1 rows, at most
            self.values += lines + chunk.count(b",")
            self._check()
            return
        structure = self._structure(chunk)
        self.values += (structure.count(b",") + structure.count(b":") + structure.count(b"[")
                        + structure.count(b"{"))
        if self.array is None:
            first = chunk.lstrip(WHITESPACE)[:1]
            if first:
                self.array = first == b"["
        if self.array:
            self._count_items(structure)
        else:
            self._track_depth(structure)
        self._check()

    def _structure(self, chunk: bytes) -> bytes:
        """The chunk's structural bytes outside strings; whether it ends inside a string (and on an escaping
        backslash) is carried to the next chunk. Split at the quotes, the pieces alternate between outside and
        inside a string, unless a quote is escaped: without `\\"` in the chunk that is all in C."""
        pieces = chunk.split(b'"')
        if self.escaped or b'\\"' in chunk:
            return self._structure_escaped(pieces)
        outside = b"".join(pieces[1 if self.in_string else 0::2])
        if len(pieces) % 2 == 0:  # an odd number of quotes
            self.in_string = not self.in_string
        if self.in_string:
            last = pieces[-1]
            self.escaped = (len(last) - len(last.rstrip(b"\\"))) % 2 == 1
        return outside.translate(None, _NOT_STRUCTURAL)

    def _structure_escaped(self, pieces: list[bytes]) -> bytes:
        """`_structure` of a chunk with escaped quotes: piece by piece (a quote after an odd run of backslashes
        inside a string does not end it)."""
        outside: list[bytes] = []
        in_string, escaped = self.in_string, self.escaped
        for index, piece in enumerate(pieces):
            if index:
                if not escaped:
                    in_string = not in_string
                escaped = False
            if not in_string:
                outside.append(piece)
                continue
            run = len(piece) - len(piece.rstrip(b"\\"))
            if escaped and run == len(piece):  # the escape carried in takes the first backslash, or the quote
                escaped = run == 0 or (run - 1) % 2 == 1
            else:
                escaped = run % 2 == 1
        self.in_string, self.escaped = in_string, escaped and in_string
        return b"".join(outside).translate(None, _NOT_STRUCTURAL)

    def _count_items(self, structure: bytes) -> None:
        """Top-level commas (items but the first), tracking the nesting depth across chunks."""
        if self.depth == 1 and not structure.translate(None, b",:"):  # no brackets: every comma is a top-level one
            self.commas += structure.count(b",")
        else:
            self._walk(structure, count_items=True)

    def _track_depth(self, structure: bytes) -> None:
        """The nesting depth of a body that is not an array, across chunks: the chunk's brackets are walked
        one by one only when they could pass `MAX_BODY_DEPTH` (an object rarely nests that many)."""
        opened = structure.count(b"[") + structure.count(b"{")
        if self.depth + opened > MAX_BODY_DEPTH:
            self._walk(structure, count_items=False)
        else:
            self.depth += opened - structure.count(b"]") - structure.count(b"}")

    def _walk(self, structure: bytes, *, count_items: bool) -> None:
        """The structural bytes one by one: the depth (refused past `MAX_BODY_DEPTH`) and, `count_items`,
        the commas at depth 1 (stopping once they pass the plan's items: `_check` refuses the body)."""
        depth, commas = self.depth, self.commas
        for byte in structure:
            if byte == 91 or byte == 123:  # [ {
                depth += 1
                if depth > MAX_BODY_DEPTH:
                    raise too_deep()
            elif byte == 93 or byte == 125:  # ] }
                depth -= 1
            elif byte == 44 and depth == 1 and count_items:  # ,
                commas += 1
                if commas >= self.max_items:
                    break
        self.depth, self.commas = depth, commas

    def _check(self) -> None:
        if self.commas >= self.max_items:
            raise TooManyItems(f"the body holds more than {self.max_items} items; the plan allows "
                               f"{self.max_items} per request", details=[Problem("body", f"at most {self.max_items} items")],
                               hint="send the items in several requests")
        if self.values > self.max_values:
            raise BodyTooComplex(f"the body holds more than {self.max_values} JSON values; a request may hold "
                                 f"{self.max_values}", details=[Problem("body", f"at most {self.max_values} values")],
                                 hint="send the data in several requests")


async def read_body(request: Request, limits: Mapping[str, Any] | None = None) -> bytes:
    """The request's body, within the bounds of the plan whose `limits` are given (default: the request's,
    which the gateway put in `scope["backsaas.limits"]`): 413 `body_too_large` past `max_body_bytes`, 413
    `too_many_items` past `max_body_items` items in a top-level array (or CSV rows), 413 `body_too_complex`
    past `MAX_BODY_VALUES` JSON values; each refused as soon as the part of the body that passes it arrives."""
    bounds = Bounds.of_plan(limits if limits is not None else request.scope.get("backsaas.limits"))
    limit = bounds.max_body_bytes
    declared = request.headers.get("content-length", "").strip()
    if declared.isdigit() and int(declared) > limit:
        request.scope[CLOSE_CONNECTION] = True
        raise _refusal(limit, f"Content-Length is {declared}")
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    shape = BodyShape(bounds.max_body_items, csv=media == "text/csv")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":  # never a truncated body handed on as if whole
            raise InvalidBody("the client disconnected before its body arrived")
        chunk = message.get("body", b"")
        size += len(chunk)
        try:
            if size > limit:
                raise _refusal(limit, f"more than {limit} bytes arrived")
            shape.feed(chunk)
        except BackSaasError:
            request.scope[CLOSE_CONNECTION] = message.get("more_body", False)
            raise
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    body = b"".join(chunks)
    if b"\\u0000" in body:  # JSON's only way to write a NUL: the parse and the walk are paid by such bodies alone
        refuse_nul(body)
    return body


def refuse_nul(body: bytes) -> None:
    """A JSON body with a NUL character (`\\u0000`) in a string is refused here, naming where, once for every
    surface: no value the database keeps may hold one (text and jsonb refuse it with an error that names no
    field). A body that is not JSON is left to its parser."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return
    path = nul_path(value, "")
    if path is not None:
        raise InvalidBody("the body holds a NUL character (\\u0000), which no value may hold",
                          details=[Problem(path or "body", "a NUL character")])


def nul_path(value: Any, path: str) -> str | None:
    """Where the first string holding a NUL is in a JSON value (`[0].name`, a key's path too), or None."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        step = f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}" if path else key
        if isinstance(key, str) and "\x00" in key:
            return step
        found = nul_path(item, step)
        if found is not None:
            return found
    return None
