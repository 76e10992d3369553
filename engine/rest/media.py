"""What a REST request asks for and sends beyond JSON: `Accept` negotiation, `Prefer` and the
`Preference-Applied` it earns, and the bodies PostgREST also takes (`text/csv`, HTML forms).

Kept apart from `api` because it is pure text handling: no plan, no SQL, no database.
"""

from __future__ import annotations

import csv
import functools
import io
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import orjson

from engine.answer import Answer
from engine.errors import BackSaasError, InvalidBody, NotAcceptable, Problem, QueryParseError, RangeNotSatisfiable
from engine.validation import date_part

JSON = "json"
OBJECT = "object"
CSV = "csv"
OBJECT_MEDIA = "application/vnd.pgrst.object+json"
CONTENT_TYPES = {JSON: "application/json; charset=utf-8", OBJECT: f"{OBJECT_MEDIA}; charset=utf-8",
                 CSV: "text/csv; charset=utf-8"}
ACCEPTED = {
    "application/json": JSON, "application/*": JSON, "*/*": JSON, "application/vnd.pgrst.array+json": JSON,
    OBJECT_MEDIA: OBJECT, "application/vnd.pgrst.object": OBJECT, "text/csv": CSV,
}
PREFERENCES = {  # the preferences PostgREST honours here, in the order it lists them in Preference-Applied
    "resolution": ("merge-duplicates", "ignore-duplicates"),
    "return": ("representation", "minimal", "headers-only"),
    "count": ("exact", "planned", "estimated"),
    "handling": ("strict", "lenient"),
    "missing": ("default", "null"),
}


def not_one(rows: int) -> NotAcceptable:
    """PostgREST's PGRST116: the client asked for one object (`vnd.pgrst.object+json`) and `rows` it is not."""
    return NotAcceptable("Cannot coerce the result to a single JSON object", f"The result contains {rows} rows")


class InvalidPreferences(BackSaasError):
    """PostgREST's PGRST122: `Prefer: handling=strict` and a preference this server does not honour."""

    code = "PGRST122"
    status = 400


class MediaNotAvailable(BackSaasError):
    """PostgREST's PGRST107: nothing the client accepts is something this endpoint can send."""

    code = "PGRST107"
    status = 406


class UnsupportedMedia(BackSaasError):
    """PostgREST's 415 for a body of a type it cannot read."""

    code = "PGRST102"
    status = 415


NULLS_STRIPPED = "nulls=stripped"  # PostgREST 11.2's media parameter (`stripNulls()`): no null fields


def without_nulls(answer: Answer) -> Answer:
    """A JSON answer whose objects leave out their null fields, at every depth (PostgreSQL's
    `json_strip_nulls`, as PostgREST applies it: null items of arrays stay), said in its Content-Type."""
    kind = dict(answer.headers).get("Content-Type", "")
    if not answer.body or not answer.status < 300 or not kind.startswith(("application/json", OBJECT_MEDIA)):
        return answer
    media = OBJECT_MEDIA if kind.startswith(OBJECT_MEDIA) else "application/vnd.pgrst.array+json"
    headers = [(name, value) for name, value in answer.headers if name != "Content-Type"]
    return Answer(answer.status, [*headers, ("Content-Type", f"{media}; {NULLS_STRIPPED}; charset=utf-8")],
                  orjson.dumps(_stripped(orjson.loads(answer.body))))


def _stripped(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _stripped(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [_stripped(item) for item in value]
    return value


@functools.lru_cache(maxsize=256)  # a pure function of a header that clients repeat on every request
def negotiate(accept: str) -> str:
    """The representation to send for `Accept` (json, object or csv), by the client's q-values and then
    its order; nothing acceptable is a 406 naming what was asked."""
    if not accept.strip():
        return JSON
    choices = []
    for position, part in enumerate(accept.split(",")):
        media, *parameters = (p.strip() for p in part.split(";"))
        quality = 1.0
        for parameter in parameters:
            name, _, value = parameter.partition("=")
            if name.strip() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if quality > 0:
            choices.append((-quality, position, media.lower()))
    for _, _, media in sorted(choices):
        if media in ACCEPTED:
            return ACCEPTED[media]
    raise MediaNotAvailable(f"None of these media types are available: {accept}",
                            hint="application/json, application/vnd.pgrst.object+json or text/csv")


@dataclass(frozen=True)
class Prefer:
    """The `Prefer` header: each preference's value when it is one this server honours, else None."""

    returning: str | None = None  # representation | minimal | headers-only
    count: str | None = None  # exact | planned | estimated
    resolution: str | None = None  # merge-duplicates | ignore-duplicates
    handling: str | None = None  # strict: a preference not honoured here is a 400, not ignored
    missing: str | None = None  # default: a key a bulk insert's object lacks takes the column's default

    @classmethod
    @functools.lru_cache(maxsize=256)  # a pure function of a header clients repeat (a refusal is not kept)
    def parse(cls, header: str) -> Prefer:
        found: dict[str, str] = {}
        unknown: list[str] = []
        for part in header.split(","):
            name, _, value = (p.strip() for p in part.partition("="))
            if value in PREFERENCES.get(name, ()):
                found.setdefault(name, value)
            elif name:
                unknown.append(part.strip())
        if found.get("handling") == "strict" and unknown:
            raise InvalidPreferences("Invalid preferences given with handling=strict",
                                     hint=f"not honoured here: {', '.join(unknown)}")
        return cls(found.get("return"), found.get("count"), found.get("resolution"), found.get("handling"),
                   found.get("missing"))

    def returns(self, what: str) -> bool:
        """Whether the client asked for `what` (representation | headers-only); minimal by default."""
        return self.returning == what

    @property
    def counted(self) -> bool:
        return self.count is not None

    def applied(self, *, write: bool, resolution: bool = False, missing: bool = False) -> list[tuple[str, str]]:
        """`Preference-Applied`, as PostgREST sends it: the honoured preferences the client named
        (`return=` on writes only, `resolution=` on upserts only, `missing=` on inserts only)."""
        if not (self.returning or self.count or self.handling or self.resolution or self.missing):
            return []  # no preference named (most requests): nothing to build
        values = [f"resolution={self.resolution}" if resolution and self.resolution else None,
                  f"missing={self.missing}" if missing and self.missing else None,
                  f"return={self.returning}" if write and self.returning else None,
                  f"count={self.count}" if self.count else None,
                  f"handling={self.handling}" if self.handling else None]
        named = [v for v in values if v]
        return [("Preference-Applied", ", ".join(named))] if named else []


def _whole(text: str) -> bool:
    return text.isascii() and text.isdigit()


def parse_range(header: str | None) -> tuple[int | None, int | None]:
    """`Range: 0-9` -> (limit 10, offset 0); `10-` -> (None, 10)."""
    if not header:
        return None, None
    unit, _, spec = header.rpartition("=")
    first, dash, last = spec.strip().partition("-")
    if not dash or not _whole(first) or (last and not _whole(last)) or (unit and unit.strip() != "items"):
        raise QueryParseError(f"Range '{header}': expected first-last, e.g. 0-9")
    if last and int(last) < int(first):
        raise RangeNotSatisfiable("Requested range not satisfiable", f"Range '{header}': the last item comes before the first")
    return (int(last) - int(first) + 1 if last else None), int(first)


def read_range(rows: int, total: int | None, offset: int, applied: list[tuple[str, str]]
               ) -> tuple[int, list[tuple[str, str]]] | Answer:
    """PostgREST's status and `Content-Range` of `rows` sent from `offset` of `total` (None: not counted):
    200, or 206 when a counted answer sends part of the rows (`first-last/total`, `*` when not counted);
    a 416 answer with `Content-Range: */total` when the offset is past the end."""
    if total is not None and offset > total:
        error = RangeNotSatisfiable("Requested range not satisfiable",
                                    f"An offset of {offset} was requested, but there are only {total} rows.")
        return Answer(416, [("Content-Range", f"*/{total}"), ("Content-Type", CONTENT_TYPES[JSON]), *applied],
                      orjson.dumps(error.as_dict()))
    span = f"{offset}-{offset + rows - 1}" if rows and total != 0 else "*"
    status = 206 if total is not None and rows < total else 200
    return status, [("Content-Range", f"{span}/{total if total is not None else '*'}"), *applied]


def form_body(body: bytes) -> dict[str, Any]:
    """An `application/x-www-form-urlencoded` body: one object of text values (PostgreSQL casts them)."""
    try:
        fields = dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body),
                                errors="strict"))  # a percent-escape that is not UTF-8 is refused, not replaced
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidBody(f"the body is not a valid form: {exc}") from exc
    held = [name for name, value in fields.items() if "\x00" in name or "\x00" in value]
    if held:  # %00: no value the database keeps may hold a NUL
        raise InvalidBody("the form holds a NUL character (%00), which no value may hold",
                          details=[Problem(held[0], "a NUL character")])
    return fields


def csv_body(body: bytes) -> list[dict[str, Any]]:
    """A `text/csv` body: a header line of column names, then one object per line; the field `NULL` is
    null and an empty field the empty string, as PostgREST reads them."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidBody(f"the CSV body is not UTF-8: {exc}") from exc
    reader = csv.reader(io.StringIO(text), strict=True)
    try:
        rows = list(reader)
    except csv.Error as exc:
        raise InvalidBody(f"the CSV body is malformed: {exc}") from exc
    if not rows or not rows[0]:
        raise InvalidBody("the CSV body needs a header line naming the columns")
    header = rows[0]
    objects = []
    for number, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise InvalidBody(f"line {number} of the CSV body has {len(row)} fields, the header {len(header)}")
        objects.append({name: (None if value == "NULL" else value) for name, value in zip(header, row, strict=True)})
    return objects


def json_body(body: bytes) -> Any:
    try:
        return orjson.loads(body or b"null")
    except orjson.JSONDecodeError as exc:
        raise InvalidBody(f"the body is not valid JSON: {exc}") from exc


def parse_body(content_type: str, body: bytes) -> tuple[Any, bool]:
    """The body as JSON values, whatever PostgREST would have taken it as, and whether its values are
    text to be typed by their columns (CSV, forms)."""
    media = content_type.split(";")[0].strip().lower()
    if media in ("", "application/json", "application/vnd.pgrst.object+json", "application/vnd.pgrst.object"):
        return json_body(body), False
    if media == "text/csv":
        return csv_body(body), True
    if media == "application/x-www-form-urlencoded":
        # curl -d sends this type for any body: JSON under it (a form's first key is a column name, never
        # `{` or `[`) is read as JSON, so `curl -d '{...}'` keeps working as it always has here
        if body.lstrip()[:1] in (b"{", b"["):
            return json_body(body), False
        return form_body(body), True
    raise UnsupportedMedia(f"Content-Type not acceptable: {media}",
                           hint="application/json, text/csv or application/x-www-form-urlencoded")


def number_of(text: str, kind: type) -> Any:
    """A number's text as the number PostgreSQL's cast makes of it, or the text (for validation to refuse by
    name): never with Python's extras (`1_000`, digits of other scripts such as `٣`), and never NaN or an
    infinity, which JSON cannot hold (`1e400` overflows to one) and the body's JSON would turn into null."""
    if "_" in text or not text.isascii():
        return text
    try:
        value = kind(text)
    except ValueError:
        return text
    return value if kind is int or math.isfinite(value) else text


def _array(text: str) -> Any:
    """A PostgreSQL array literal of text items (`{a,b}`, `{"a b",c}`), or `text` when it is not one."""
    if not (text.startswith("{") and text.endswith("}")):
        return text
    inner = text[1:-1]
    if not inner:
        return []
    try:
        return next(csv.reader([inner], skipinitialspace=True, strict=True))
    except csv.Error:
        return text


TEXT_COERCIONS = {
    "integer": lambda t: number_of(t, int), "bigint": lambda t: number_of(t, int), "number": lambda t: number_of(t, float),
    "boolean": lambda t: {"true": True, "t": True, "false": False, "f": False}.get(t.lower(), t),
    "json": lambda t: _json_or_text(t), "array": _array,
}


def _json_or_text(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


# What PostgreSQL's casts make of a JSON string sent for a column of another type, as PostgREST's
# `json_populate_recordset` takes it (`{"stock": "3"}`, `{"active": "true"}`, a date column given a
# timestamp): JSON bodies get these; text bodies (CSV, forms) get every TEXT_COERCIONS
JSON_STRING_COERCIONS = {**{kind: TEXT_COERCIONS[kind] for kind in ("integer", "bigint", "number", "boolean", "array")},
                         "date": date_part}


def cast_strings(objects: list[dict[str, Any]], columns: Mapping[str, str]) -> list[dict[str, Any]]:
    """A JSON body's objects with the strings sent for numeric, boolean, array and date columns as the
    values PostgreSQL would cast them to (one that does not parse stays, for validation to refuse by name);
    objects with none are kept as they are."""
    found = []
    for obj in objects:
        if any(isinstance(value, str) and columns.get(name) in JSON_STRING_COERCIONS for name, value in obj.items()):
            obj = {name: JSON_STRING_COERCIONS[columns[name]](value)
                   if isinstance(value, str) and columns.get(name) in JSON_STRING_COERCIONS else value
                   for name, value in obj.items()}
        found.append(obj)
    return found


def typed(objects: list[dict[str, Any]], columns: dict[str, str]) -> list[dict[str, Any]]:
    """Text fields of a CSV or form body as the JSON values of their columns' types (what PostgREST's
    `json_populate_recordset` makes of them), so the schema's validation applies unchanged; a field that
    does not parse stays text and is refused by validation with its name."""
    return [{name: TEXT_COERCIONS[columns[name]](value)
             if isinstance(value, str) and columns.get(name) in TEXT_COERCIONS else value
             for name, value in obj.items()} for obj in objects]
