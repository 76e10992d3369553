"""YAML text -> a checked, immutable `Schema`, or `SchemaInvalid` listing every problem with its line.

Four passes, all of which always run so that one report holds everything wrong with a file:
1. YAML, with the line of every key recorded and duplicate keys caught (PyYAML would silently keep the last);
2. JSON data: a schema is JSON data written as YAML (it is checked by a JSON Schema, its defaults are stored
   and sent as JSON, its numbers become SQL), so what YAML has and JSON lacks is refused here, once, for the
   whole document: keys that are not strings, sets, binary, timestamps, infinities, NaN, huge integers;
3. the published JSON Schema of the format (`schema.json`), for structure;
4. the semantic rules in `engine.schema.semantics`, which read the raw data defensively.
Only a file with no problem at all becomes a model. Nothing here touches a database.

A tenant's schema is untrusted input that the gateway parses while serving every tenant (DESIGN.md, wall 5):
the text has a size limit, YAML anchors and aliases are refused (a 349-byte alias bomb expanded for 7 s, and
`a: &a [*a]` recursed without end), nesting has a depth limit, and request handlers check schemas through
`load_schema_async`, off the event loop with a time limit. Results are cached by text, so the engine's later
loads of a schema a handler has just checked cost nothing.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from functools import cache, lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml

from engine import validation  # a module import: engine.validation imports this package
from engine.errors import Problem, SchemaCheckTimeout, SchemaInvalid
from engine.schema import semantics
from engine.schema.model import (
    NO_DEFAULT,
    Entity,
    ExposedFunction,
    Field,
    Grant,
    Hook,
    Ref,
    Schema,
    freeze,
)

PathKey = tuple[str | int, ...]
T = TypeVar("T")

MAX_SCHEMA_BYTES = 1024 * 1024  # a schema file's size limit (UTF-8 bytes)
MAX_YAML_DEPTH = 64  # collections nested deeper than this are refused (a schema needs about 10)
SCHEMA_CHECK_SECONDS = 5.0  # how long a request may wait for its schema to be checked
SCHEMA_CHECKERS = 2  # threads checking schemas for requests: more pathological schemas than this queue
JSON_INTEGERS = (-2**63, 2**64 - 1)  # what the engine's JSON (orjson) can write
ALIASES_REFUSED = "YAML anchors and aliases (&name, *name) are not allowed in a schema"


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """Safe YAML (libyaml's parser when present) without implicit timestamps: `2024-01-01` stays the
    string the JSON API will see."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        """PyYAML's constructors raise plain Python errors for a value that does not fit an explicit tag
        (`!!int abc`, `!!bool maybe`, `!!timestamp x`): those become YAML errors at the value's line."""
        try:
            return super().construct_object(node, deep)
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
            tag = str(node.tag).replace("tag:yaml.org,2002:", "!!")
            raise yaml.constructor.ConstructorError(
                None, None, f"{node.value!r} is not a valid {tag}" if isinstance(node.value, str)
                else f"this value is not a valid {tag}", node.start_mark) from exc


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


@cache
def meta_schema() -> dict[str, Any]:
    """The published JSON Schema of the schema format."""
    return json.loads(resources.files("engine.schema").joinpath("schema.json").read_text())


@cache
def meta_validator() -> Any:
    """The format's own JSON Schema, its patterns run in RE2 like every pattern applied to a tenant's text."""
    return validation.TenantValidator(meta_schema())


def dotted(path: PathKey) -> str:
    """`entities.post.fields.title`, list items and keys that are not strings in brackets (`roles[0]`,
    `fields[1]`, `default[null]`)."""
    out = ""
    for part in path:
        if isinstance(part, str):
            out += f".{part}" if out else part
        else:
            out += f"[{part}]" if isinstance(part, int) and not isinstance(part, bool) else f"[{yaml_text(part)}]"
    return out


class LineMap:
    """The line of each key and list item, so any problem found on the data can be located.

    Keys are recorded as the data will hold them (`1:` as the int 1) when `construct` is given, so that a
    problem with such a key is found at its own line."""

    def __init__(self, construct: Callable[[yaml.Node], Any] | None = None) -> None:
        self.lines: dict[PathKey, int] = {}
        self.construct = construct

    def line_of(self, path: PathKey) -> int | None:
        for end in range(len(path), -1, -1):
            if path[:end] in self.lines:
                return self.lines[path[:end]]
        return None

    def record(self, node: yaml.Node, path: PathKey, problems: list[Problem]) -> None:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, value_node in node.value:
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.value)
                if self.construct is not None and isinstance(key_node, yaml.ScalarNode):
                    constructed = self.construct(key_node)
                    key = constructed if isinstance(constructed, Hashable) else key
                line = key_node.start_mark.line + 1
                if key in seen:
                    problems.append(Problem(dotted((*path, key)),
                                            f"duplicate key '{key}' (first defined on line {seen[key]})", line))
                    continue
                seen[key] = line
                self.lines[(*path, key)] = line
                self.record(value_node, (*path, key), problems)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self.lines[(*path, index)] = item.start_mark.line + 1
                self.record(item, (*path, index), problems)


def bounds_problems(text: str) -> list[Problem]:
    """What makes `text` too costly to parse into data: its size, any anchor or alias, nesting too deep.

    Read from libyaml's event stream, which is linear in the text and never expands an alias."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_SCHEMA_BYTES:
        return [Problem("", f"the schema is {size} bytes; at most {MAX_SCHEMA_BYTES} are accepted")]
    loader = _Loader(text)
    depth = 0
    try:
        while (event := loader.get_event()) is not None:
            line = event.start_mark.line + 1
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
                return [Problem("", ALIASES_REFUSED, line)]
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_YAML_DEPTH:
                    return [Problem("", f"the YAML is nested deeper than {MAX_YAML_DEPTH} levels", line)]
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        return [Problem("", f"invalid YAML: {exc.problem or exc}", mark.line + 1 if mark else None)]
    except yaml.YAMLError as exc:
        return [Problem("", f"invalid YAML: {exc}")]
    finally:
        loader.dispose()
    return []


def parse_yaml(text: str) -> tuple[Any, LineMap, list[Problem]]:
    """The YAML's data, its lines, and its problems; the data is None when the text is no YAML document
    (a problem says why), or when the document is YAML's null (then no problem is reported here)."""
    lines = LineMap()
    refused = bounds_problems(text)
    if refused:
        return None, lines, refused
    problems: list[Problem] = []
    loader = _Loader(text)
    lines.construct = loader.construct_object
    try:
        node = loader.get_single_node()
        if node is None:
            return None, lines, [Problem("", "the file is empty", 1)]
        lines.lines[()] = node.start_mark.line + 1
        lines.record(node, (), problems)
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        return None, lines, [Problem("", f"invalid YAML: {exc.problem or exc}", mark.line + 1 if mark else None)]
    except yaml.YAMLError as exc:
        return None, lines, [Problem("", f"invalid YAML: {exc}")]
    finally:
        loader.dispose()
    return data, lines, problems


def yaml_text(value: Any) -> str:
    """A scalar as YAML writes it, for messages: `null`, `true`, `.inf`, `1`, `'a'`."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return ".nan" if math.isnan(value) else (".inf" if value > 0 else "-.inf")
    return repr(value)


def json_problems(data: Any, lines: LineMap, path: PathKey = ()) -> list[Problem]:
    """What in `data` JSON cannot hold, each at its path: keys that are not strings, sets, binary,
    timestamps, ordered mappings, infinities and NaN, integers beyond 64 bits. (Left in, they pass the
    JSON Schema and the semantic rules, which cannot see them, and then fail where the schema is stored,
    sent or turned into SQL.)"""
    refusal = _not_json(data)
    if refusal:
        return [Problem(dotted(path), refusal, lines.line_of(path))]
    problems = []
    if isinstance(data, dict):
        for key, value in data.items():
            if not isinstance(key, str):
                problems.append(Problem(dotted((*path, key)),
                                        f"the key {yaml_text(key)} is not a string (quote it: keys are names)",
                                        lines.line_of((*path, key))))
                continue
            problems += json_problems(value, lines, (*path, key))
    elif isinstance(data, list):
        for index, item in enumerate(data):
            problems += json_problems(item, lines, (*path, index))
    return problems


def _kind(value: Any) -> str:
    if isinstance(value, dict | list):
        return "a mapping" if isinstance(value, dict) else "a list"
    return "a string" if isinstance(value, str) else yaml_text(value)


def _not_json(value: Any) -> str | None:
    """Why the value itself (not its content) is no JSON value, or None."""
    if value is None or isinstance(value, str | bool | dict | list):
        return None
    if isinstance(value, int):
        if JSON_INTEGERS[0] <= value <= JSON_INTEGERS[1]:
            return None
        mantissa, exponent = f"{float(value):.6e}".split("e")
        mantissa = mantissa.rstrip("0") + ("0" if mantissa.rstrip("0").endswith(".") else "")
        return f"{value} is out of range: integers are sent as JSON in 64 bits (write a float: {mantissa}e{exponent})"
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{yaml_text(value)} is not a finite number (JSON has no infinity or NaN)"
    if isinstance(value, set):
        return "a set (!!set) is not JSON data: use a list"
    if isinstance(value, bytes):
        return "binary data (!!binary) is not JSON data: use a string"
    if isinstance(value, date):
        return f"a timestamp (!!timestamp) is not JSON data: write it as a string ('{value.isoformat()}')"
    if isinstance(value, tuple):
        return "an ordered mapping (!!omap, !!pairs) is not JSON data: use a mapping"
    return f"a {type(value).__name__} is not JSON data"


def structural_problems(data: Any, lines: LineMap) -> list[Problem]:
    problems = []
    for error in meta_validator().iter_errors(data):
        path: PathKey = tuple(error.absolute_path)
        if not path and error.validator == "type":
            problems.append(Problem("", f"a schema is a mapping (name: ..., entities: ...), not {_kind(data)}",
                                    lines.line_of(path)))
            continue
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            allowed = set(error.schema.get("properties", {}))
            for key in sorted(set(error.instance) - allowed):
                known = ", ".join(sorted(allowed))
                problems.append(Problem(dotted((*path, key)), f"unknown key '{key}' (expected one of: {known})",
                                        lines.line_of((*path, key))))
            continue
        if "propertyNames" in error.relative_schema_path:
            path = (*path, error.instance)  # point at the offending key itself
        message = error.message
        if error.validator == "pattern" and error.schema.get("pattern") == meta_schema()["$defs"]["identifier"]["pattern"]:
            message = (f"{error.instance!r} is not a valid name: lowercase letters, digits and _, "
                       "starting with a letter, at most 63 characters")
        elif error.validator == "oneOf" and path and "hooks" in path:
            message = (f"{error.instance!r} is neither a function name `module.function`, "
                       "{function: ..., async: ..., timeout: ...} nor {webhook: URL, secret: NAME}")
        problems.append(Problem(dotted(path), message, lines.line_of(path)))
    return problems


@lru_cache(maxsize=32)
def _checked(text: str, tenant: bool) -> Schema | tuple[Problem, ...]:
    """The model of `text`, or every problem with it, in file order (pure, so cached by text)."""
    data, lines, problems = parse_yaml(text)
    if data is not None or not problems:  # parsed: a document that is YAML's null is refused by its structure
        not_json = json_problems(data, lines)
        refused_at = {p.path for p in not_json}  # said once: the later passes misread what JSON cannot hold
        problems += not_json
        problems += [p for p in structural_problems(data, lines) if p.path not in refused_at]
        problems += [Problem(dotted(p), msg, lines.line_of(p)) for p, msg in semantics.check(data, tenant=tenant)
                     if dotted(p) not in refused_at]
    if problems:
        problems.sort(key=lambda p: (p.line or 0, p.path))
        return tuple(_unique(problems))
    return build_model(semantics.with_builtin_users(data))


def load_schema(text: str, source: str = "<schema>", *, tenant: bool = False) -> Schema:
    """Parse and check a schema; raise `SchemaInvalid` with every problem, in file order.

    `tenant`: the schema is a tenant's (not the platform's), so it may not declare the platform's roles."""
    result = _checked(text, tenant)
    if isinstance(result, tuple):
        raise SchemaInvalid(list(result), source)
    return result


def read_schema_text(path: str | Path) -> str:
    """A schema file's text; `SchemaInvalid` (naming the file and the line) when it is not UTF-8, so that a
    stray binary file is one more schema error, not a crash. OSError as usual when it cannot be read."""
    raw = Path(path).read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise SchemaInvalid([Problem("", f"the file is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset "
                                         f"{exc.start})", line)], str(path)) from None


def load_schema_file(path: str | Path, *, tenant: bool = False) -> Schema:
    """`load_schema` of a file's text (`read_schema_text`), its problems naming the file."""
    return load_schema(read_schema_text(path), source=str(path), tenant=tenant)


_checkers = ThreadPoolExecutor(max_workers=SCHEMA_CHECKERS, thread_name_prefix="schema-check")


async def off_loop(work: Callable[..., T], *args: Any, what: str = "the schema",
                   timeout: float = SCHEMA_CHECK_SECONDS) -> T:
    """Run CPU-heavy schema work (`work(*args)`) on the schema-check threads so the event loop keeps serving
    every tenant; `SchemaCheckTimeout` (503) when it (queueing included) outlasts `timeout` seconds. The
    thread finishes its work regardless: only the request stops waiting. E.g. a runtime's compile:
    `await off_loop(TenantRuntime.compile, db, slug, tenant_id, version, what=f"the runtime of {slug}")`."""
    future = asyncio.get_running_loop().run_in_executor(_checkers, work, *args)
    try:
        return await asyncio.wait_for(future, timeout)
    except TimeoutError:
        raise SchemaCheckTimeout(f"{what}: the work took longer than {timeout:g} s",
                                 hint="retry later; if it happens again, split or simplify the schema") from None


async def load_schema_async(text: str, source: str = "<schema>", *, tenant: bool = True,
                            timeout: float = SCHEMA_CHECK_SECONDS) -> Schema:
    """`load_schema` for request handlers: checked off the event loop (`off_loop`), with a time limit.
    A schema that arrives in a request is a tenant's, so `tenant` defaults to True."""
    result = await off_loop(_checked, text, tenant, what=f"{source}: checking the schema", timeout=timeout)
    if isinstance(result, tuple):
        raise SchemaInvalid(list(result), source)
    return result


def _unique(problems: list[Problem]) -> list[Problem]:
    seen: set[Problem] = set()
    return [p for p in problems if not (p in seen or seen.add(p))]


def build_model(data: dict[str, Any]) -> Schema:
    """The model of data that passed every check (so no validation happens here)."""
    entities = []
    for name, spec in data["entities"].items():
        fields = tuple(_build_field(fname, fspec, name, data) for fname, fspec in (spec.get("fields") or {}).items())
        grants = tuple(Grant(action, role, scope)
                       for action, roles in (spec.get("permissions") or {}).items()
                       for role, scope in (roles or {}).items())
        hooks = tuple(_build_hook(event, item)
                      for event, items in (spec.get("hooks") or {}).items() for item in items or ())
        entities.append(Entity(
            name=name,
            fields=fields,
            owner=bool(spec.get("owner", False)),
            realtime=bool(spec.get("realtime", False)),
            audit=bool(spec.get("audit", True)),
            indexes=tuple(tuple(ix) for ix in spec.get("indexes") or ()),
            unique=tuple(tuple(ix) for ix in spec.get("unique") or ()),
            permissions=grants,
            hooks=hooks,
            renamed_from=spec.get("renamed_from"),
            description=spec.get("description"),
        ))
    functions = tuple(ExposedFunction(name, spec["handler"], freeze(spec["input"]) if "input" in spec else None,
                                      tuple(spec.get("roles") or ()), float(spec.get("timeout", 10.0)),
                                      spec.get("description"), bool(spec.get("read_only", False)))
                      for name, spec in (data.get("functions") or {}).items())
    return Schema(name=data["name"], entities=tuple(entities), roles=tuple(data.get("roles") or ()),
                  version=data.get("version"), description=data.get("description"), functions=functions,
                  rest_aggregates=bool((data.get("rest") or {}).get("aggregates", False)))


def _build_field(name: str, spec: dict[str, Any], entity: str, data: dict[str, Any]) -> Field:
    ref = None
    if spec["type"] == "ref":
        ref = Ref(to=spec["to"], on_delete=spec.get("on_delete", "restrict"),
                  reverse=spec.get("reverse") or entity)
    return Field(
        name=name,
        type=spec["type"],
        required=bool(spec.get("required", False)),
        unique=bool(spec.get("unique", False)),
        default=freeze(spec["default"]) if "default" in spec else NO_DEFAULT,
        max_length=spec.get("max_length"),
        min_length=spec.get("min_length"),
        format=spec.get("format"),
        pattern=spec.get("pattern"),
        minimum=spec.get("minimum"),
        maximum=spec.get("maximum"),
        precision=spec.get("precision"),
        scale=spec.get("scale"),
        values=tuple(spec.get("values") or ()),
        items=spec.get("items"),
        ref=ref,
        renamed_from=spec.get("renamed_from"),
        description=spec.get("description"),
        internal=bool(spec.get("internal", False)),
        schema=freeze(spec["schema"]) if "schema" in spec else None,
        pii=bool(spec.get("pii", False)),
        sensitive=bool(spec.get("sensitive", False)),
    )


def _build_hook(event: str, item: str | dict[str, Any]) -> Hook:
    if isinstance(item, str):
        return Hook(event=event, function=item)
    if "function" in item:
        return Hook(event=event, function=item["function"], is_async=bool(item.get("async")),
                    timeout=float(item.get("timeout", 5.0)))
    return Hook(event=event, webhook=item["webhook"], secret=item.get("secret"), is_async=True)

