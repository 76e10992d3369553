"""YAML text -> a checked, immutable `Schema`, or `SchemaInvalid` listing every problem with its line.

Three passes, all of which always run so that one report holds everything wrong with a file:
1. YAML, with the line of every key recorded and duplicate keys caught (PyYAML would silently keep the last);
2. the published JSON Schema of the format (`schema.json`), for structure;
3. the semantic rules in `engine.schema.semantics`, which read the raw data defensively.
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
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
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
ALIASES_REFUSED = "YAML anchors and aliases (&name, *name) are not allowed in a schema"


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """Safe YAML (libyaml's parser when present) without implicit timestamps: `2024-01-01` stays the
    string the JSON API will see."""


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
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


class LineMap:
    """The line of each key and list item, so any problem found on the data can be located."""

    def __init__(self) -> None:
        self.lines: dict[PathKey, int] = {}

    def line_of(self, path: PathKey) -> int | None:
        for end in range(len(path), -1, -1):
            if path[:end] in self.lines:
                return self.lines[path[:end]]
        return None

    def record(self, node: yaml.Node, path: PathKey, problems: list[Problem]) -> None:
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key_node, value_node in node.value:
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.value)
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
    lines = LineMap()
    refused = bounds_problems(text)
    if refused:
        return None, lines, refused
    problems: list[Problem] = []
    loader = _Loader(text)
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


def structural_problems(data: Any, lines: LineMap) -> list[Problem]:
    problems = []
    for error in meta_validator().iter_errors(data):
        path: PathKey = tuple(error.absolute_path)
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
    if data is not None:
        problems += structural_problems(data, lines)
        problems += [Problem(dotted(p), msg, lines.line_of(p)) for p, msg in semantics.check(data, tenant=tenant)]
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


def load_schema_file(path: str | Path, *, tenant: bool = False) -> Schema:
    path = Path(path)
    return load_schema(path.read_text(encoding="utf-8"), source=str(path), tenant=tenant)


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

