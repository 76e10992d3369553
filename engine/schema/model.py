"""The normalised, immutable model of a tenant schema.

Everything downstream (storage, migrations, validation, the APIs) reads this model, never the YAML.
It is built only by `engine.schema.loader`, after every check has passed, so code holding a `Schema`
may assume it is consistent: refs point at entities that exist, roles are declared, defaults fit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from types import MappingProxyType
from typing import Any

SCALAR_TYPES = ("string", "text", "integer", "bigint", "number", "decimal", "boolean", "date", "datetime", "uuid")
FIELD_TYPES = (*SCALAR_TYPES, "json", "enum", "array", "ref")
BUILTIN_ROLES = ("anon", "authenticated", "admin", "service")
# The system tenant's roles (platform.yaml): platform admins and the membership roles of a tenant's members. A
# tenant's schema may not declare them, so a role name in a caller never means both (DESIGN.md, finding 12).
PLATFORM_ROLES = ("platform_admin", "owner", "developer", "viewer")
ACTIONS = ("read", "create", "update", "delete")
HOOK_EVENTS = ("before_create", "after_create", "before_update", "after_update", "before_delete", "after_delete")
IMPLICIT_COLUMNS = ("id", "created_at", "updated_at")
OWNER_COLUMN = "owner_id"
USERS = "users"


class _NoDefault:
    """Marks a field without a default (None is a legitimate JSON default: null)."""

    def __repr__(self) -> str:
        return "NO_DEFAULT"


NO_DEFAULT: Any = _NoDefault()


def freeze(value: Any) -> Any:
    """A deeply immutable copy of a YAML value (dicts become read-only mappings, lists tuples)."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: freeze(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """The plain JSON-able form of a frozen value."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [thaw(v) for v in value]
    return value


@dataclass(frozen=True)
class Ref:
    """A many-to-one link; its reverse (one-to-many) appears on the target under `reverse`."""

    to: str
    on_delete: str
    reverse: str


@dataclass(frozen=True)
class Field:
    name: str
    type: str
    required: bool = False
    unique: bool = False
    default: Any = NO_DEFAULT
    max_length: int | None = None
    min_length: int | None = None
    format: str | None = None
    pattern: str | None = None
    minimum: float | None = None
    maximum: float | None = None
    precision: int | None = None
    scale: int | None = None
    values: tuple[str, ...] = ()
    items: str | None = None
    ref: Ref | None = None
    renamed_from: str | None = None
    description: str | None = None
    internal: bool = False  # engine-managed (e.g. users.password_hash): never read or written through the APIs
    schema: Any = None  # json fields: the JSON Schema their values match (frozen)
    pii: bool = False  # personal data: a GDPR export carries it, an erasure anonymises it (engine/gdpr.py)
    sensitive: bool = False  # redacted in the audit trail (engine/audit.py), as internal fields are

    @property
    def column(self) -> str:
        """The database column: a ref `author` is stored as `author_id`."""
        return f"{self.name}_id" if self.type == "ref" else self.name

    @property
    def has_default(self) -> bool:
        return self.default is not NO_DEFAULT


@dataclass(frozen=True)
class Grant:
    action: str
    role: str
    scope: str  # all | own


@dataclass(frozen=True)
class Hook:
    """A function in functions/ (`module.function`) or a webhook URL, run at `event`."""

    event: str
    function: str | None = None
    webhook: str | None = None
    secret: str | None = None  # the name of the tenant's webhook secret (set_webhook_secret), never a server variable
    is_async: bool = False  # after commit, from the outbox (webhooks always are)
    timeout: float = 5.0


@dataclass(frozen=True)
class ExposedFunction:
    """A function clients call at POST /functions/v1/{name}."""

    name: str
    handler: str
    input: Any = None  # JSON Schema of the body (frozen), or None for any JSON
    roles: tuple[str, ...] = ()
    timeout: float = 10.0
    description: str | None = None
    read_only: bool = False  # callable with GET at /rest/v1/rpc/{name} (it only reads)


@dataclass(frozen=True)
class Entity:
    name: str
    fields: tuple[Field, ...]
    owner: bool = False
    realtime: bool = False  # its changes are logged (backsaas_changes) and streamed as SSE
    audit: bool = True  # every write is an audit entry (engine/audit.py); false opts high-volume data out
    indexes: tuple[tuple[str, ...], ...] = ()
    unique: tuple[tuple[str, ...], ...] = ()
    permissions: tuple[Grant, ...] = ()
    hooks: tuple[Hook, ...] = ()
    renamed_from: str | None = None
    description: str | None = None
    _by_name: Mapping[str, Field] = dataclass_field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", MappingProxyType({f.name: f for f in self.fields}))

    def field(self, name: str) -> Field | None:
        return self._by_name.get(name)

    def column_of(self, name: str) -> str:
        """The column for a field name, or an implicit column given by its own name."""
        found = self.field(name)
        return found.column if found else name

    @property
    def refs(self) -> tuple[Field, ...]:
        return tuple(f for f in self.fields if f.ref is not None)


@dataclass(frozen=True)
class Schema:
    name: str
    entities: tuple[Entity, ...]
    roles: tuple[str, ...] = ()
    version: int | None = None
    description: str | None = None
    functions: tuple[ExposedFunction, ...] = ()
    rest_aggregates: bool = False  # `rest: {aggregates: true}`: aggregate functions in REST's select=
    _by_name: Mapping[str, Entity] = dataclass_field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", MappingProxyType({e.name: e for e in self.entities}))

    def entity(self, name: str) -> Entity | None:
        return self._by_name.get(name)

    @property
    def all_roles(self) -> tuple[str, ...]:
        return (*BUILTIN_ROLES, *self.roles)


def visible_columns(entity: Entity) -> dict[str, str]:
    """column -> field type, for the columns a client may read and filter on (never internal ones)."""
    columns = {"id": "uuid"}
    for f in entity.fields:
        if not f.internal:
            columns[f.column] = "uuid" if f.type == "ref" else f.type
    columns.update({"created_at": "datetime", "updated_at": "datetime"})
    if entity.owner:
        columns[OWNER_COLUMN] = "uuid"
    return columns
