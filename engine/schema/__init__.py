"""The schema format: YAML in, an immutable, checked `Schema` model out."""

from engine.schema.loader import load_schema, load_schema_async, load_schema_file, meta_schema, read_schema_text
from engine.schema.model import Entity, Field, Grant, Hook, Ref, Schema

__all__ = ["Entity", "Field", "Grant", "Hook", "Ref", "Schema", "load_schema", "load_schema_async", "load_schema_file",
           "meta_schema", "read_schema_text"]
