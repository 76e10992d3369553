"""The schema format: what loads, what is refused, and how the refusal reads (every error, with its line)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from engine.errors import SchemaInvalid
from engine.schema import load_schema, load_schema_file, meta_schema

REPO = Path(__file__).resolve().parent.parent


def problems_of(text: str) -> list[tuple[int | None, str, str]]:
    with pytest.raises(SchemaInvalid) as caught:
        load_schema(textwrap.dedent(text))
    return [(p.line, p.path, p.message) for p in caught.value.details]


def test_blog_example_loads_with_relations_and_builtin_users():
    model = load_schema_file(REPO / "schemas" / "blog.yaml")
    post = model.entity("post")
    assert post is not None and post.field("author").column == "author_id"
    assert post.field("author").ref.reverse == "posts"
    assert model.entity("comment").field("post").ref.on_delete == "cascade"
    assert {f.name for f in model.entity("users").fields} >= {"email", "password_hash", "roles", "verified"}
    assert model.all_roles == ("anon", "authenticated", "admin", "service", "editor", "member")


def test_platform_yaml_is_an_ordinary_schema():
    model = load_schema_file(REPO / "platform.yaml")
    assert {"tenants", "memberships", "schema_versions", "api_keys", "invitations", "plans", "subscriptions",
            "usage_daily", "audit_log", "users"} <= {e.name for e in model.entities}


def test_published_meta_schema_is_valid_draft_2020_12_and_accepts_the_examples():
    Draft202012Validator.check_schema(meta_schema())
    on_disk = json.loads((REPO / "engine" / "schema" / "schema.json").read_text())
    assert on_disk == meta_schema()


def test_every_type_and_option_becomes_the_model():
    model = load_schema(textwrap.dedent("""
        name: shop
        roles: [clerk]
        entities:
          product:
            owner: true
            fields:
              sku:      {type: string, max_length: 20, min_length: 3, pattern: "^[A-Z0-9-]+$", required: true, unique: true}
              notes:    {type: text}
              stock:    {type: integer, minimum: 0, default: 0}
              sold:     {type: bigint}
              weight:   {type: number, maximum: 1000.5}
              price:    {type: decimal, precision: 10, scale: 2, default: 9.99}
              active:   {type: boolean, default: true}
              launch:   {type: date, default: 2024-01-31}
              seen_at:  {type: datetime, default: now}
              ref_code: {type: uuid}
              attrs:    {type: json, default: {colour: red}}
              size:     {type: enum, values: [s, m, l]}
              labels:   {type: array, items: string}
              parent:   {type: ref, to: product, on_delete: set_null, reverse: children}
            indexes: [[size, launch]]
            unique: [[sku, size]]
            permissions:
              read: {anon: all}
              update: {clerk: own}
            hooks:
              before_create: [shop.normalise]
              after_create: [{webhook: "https://example.com/h", secret: SHOP_SECRET}, {function: shop.audit, async: true,
                              timeout: 2}]
    """))
    product = model.entity("product")
    types = {f.name: f.type for f in product.fields}
    assert types == {"sku": "string", "notes": "text", "stock": "integer", "sold": "bigint", "weight": "number",
                     "price": "decimal", "active": "boolean", "launch": "date", "seen_at": "datetime", "ref_code": "uuid",
                     "attrs": "json", "size": "enum", "labels": "array", "parent": "ref"}
    assert product.field("launch").default == "2024-01-31"  # a date stays the string the API sends
    assert product.field("attrs").default["colour"] == "red"
    assert product.indexes == (("size", "launch"),) and product.unique == (("sku", "size"),)
    assert [(h.event, h.function, h.webhook, h.is_async) for h in product.hooks] == [
        ("before_create", "shop.normalise", None, False), ("after_create", None, "https://example.com/h", True),
        ("after_create", "shop.audit", None, True)]
    assert product.hooks[2].timeout == 2
    assert {(g.action, g.role, g.scope) for g in product.permissions} == {("read", "anon", "all"), ("update", "clerk", "own")}


def test_loaded_model_is_immutable():
    model = load_schema("name: s\nentities:\n  a:\n    fields:\n      j: {type: json, default: {k: [1]}}\n")
    entity = model.entity("a")
    with pytest.raises(dataclasses.FrozenInstanceError):
        entity.name = "b"  # type: ignore[misc]
    with pytest.raises(TypeError):
        entity.field("j").default["k"] = 2  # type: ignore[index]
    assert entity.field("j").default["k"] == (1,)


@pytest.mark.parametrize(("text", "line", "path", "fragment"), [
    ("name: s\nentities:\n  a:\n    fields:\n      b: {type: ref, to: nowhere}\n",
     5, "entities.a.fields.b.to", "unknown entity 'nowhere'"),
    ("name: s\nentities:\n  a:\n    fields:\n      x: {type: text}\n      x: {type: integer}\n",
     6, "entities.a.fields.x", "duplicate key 'x' (first defined on line 5)"),
    ("name: s\nentities:\n  a:\n    fields:\n      order: {type: text}\n",
     5, "entities.a.fields.order", "reserved word"),
    ("name: s\nentities:\n  Bad-Name:\n    fields: {}\n",
     3, "entities.Bad-Name", "not a valid name"),
    ("name: s\nentities:\n  a:\n    fields:\n      t: {type: text}\n    indexes: [[t, nope]]\n",
     6, "entities.a.indexes[0][1]", "unknown field 'nope'"),
    ("name: s\nentities:\n  a:\n    fields:\n      n: {type: integer, default: many}\n",
     5, "entities.a.fields.n.default", "'many' is not of type 'integer'"),
    ("name: s\nentities:\n  a:\n    fields:\n      t: {type: text}\n    permissions:\n      read: {ghost: all}\n",
     7, "entities.a.permissions.read.ghost", "role 'ghost' is not declared"),
    ("name: s\nentities:\n  a:\n    fields:\n      id: {type: uuid}\n",
     5, "entities.a.fields.id", "implicit column"),
    ("name: s\nentities:\n  a:\n    fields:\n      b: {type: ref, to: a}\n      b_id: {type: uuid}\n",
     6, "entities.a.fields.b_id", "would clash"),
    ("name: s\nentities:\n  a:\n    fields:\n      t: {type: text}\n    permissions:\n      update: {authenticated: own}\n",
     7, "entities.a.permissions.update.authenticated", "needs `owner: true`"),
    ("name: s\nentities:\n  a:\n    fields:\n      s: {type: string, max_length: 3, default: toolong}\n",
     5, "entities.a.fields.s.default", "is too long"),
    ("name: s\nentities:\n  a:\n    fields:\n      s: {type: integer, max_length: 3}\n",
     5, "entities.a.fields.s.max_length", "applies to string or text fields"),
    ("name: s\nentities:\n  a:\n    fields:\n      p: {type: ref, to: b}\n      q: {type: ref, to: b}\n  b:\n    fields: {}\n",
     6, "entities.a.fields.q", "must name their reverses"),
    ("name: s\nentities:\n  a:\n    fields:\n      k: {type: enum}\n",
     5, "entities.a.fields.k", "'values' is a required property"),
    ("name: s\nentities:\n  a:\n    colour: red\n",
     4, "entities.a.colour", "unknown key 'colour'"),
])
def test_semantic_and_structural_errors_name_their_line_and_path(text, line, path, fragment):
    found = problems_of(text)
    assert any(at == line and where == path and fragment in message for at, where, message in found), found


def test_invalid_yaml_is_reported_with_its_line():
    (line, path, message), = problems_of("name: s\nentities:\n  a:\n    fields: {x: {type: text}\n  b: 1\n")
    assert line == 5 and path == "" and message.startswith("invalid YAML")


def test_a_file_with_twenty_errors_is_reported_whole_in_file_order():
    bad_fields = "\n".join(f"      f{i}: {{type: integer, default: x{i}}}" for i in range(18))
    text = f"name: s\nroles: [admin]\nentities:\n  a:\n    fields:\n{bad_fields}\n    indexes: [[missing]]\n"
    found = problems_of(text)
    assert len(found) == 20
    assert [line for line, _, _ in found] == sorted(line for line, _, _ in found)
    assert found[0][:2] == (2, "roles[0]")
    assert found[1][:2] == (6, "entities.a.fields.f0.default")
    assert found[-1][:2] == (24, "entities.a.indexes[0][0]")


def test_schema_check_cli_exits_1_and_lists_every_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: s\nentities:\n  a:\n    fields:\n      b: {type: ref, to: nowhere}\n      order: {type: text}\n")
    result = subprocess.run([sys.executable, "-m", "gateway.cli", "schema", "check", str(bad)],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 1
    assert f"{bad}:5: entities.a.fields.b.to: unknown entity 'nowhere'" in result.stderr
    assert f"{bad}:6: entities.a.fields.order:" in result.stderr
    good = subprocess.run([sys.executable, "-m", "gateway.cli", "schema", "check", str(REPO / "schemas" / "blog.yaml")],
                          capture_output=True, text=True, cwd=tmp_path)
    assert good.returncode == 0 and "ok" in good.stdout


MEMBERSHIP_SCHEMA = """
name: orgs
roles: [lead]
entities:
  tenants:
    fields:
      slug: {type: string}
  memberships:
    fields:
      user:   {type: ref, to: users}
      tenant: {type: ref, to: tenants}
      role:   {type: enum, values: [lead, admin]}
  project:
    fields:
      tenant: {type: ref, to: tenants}
    permissions:
      read:   {lead: member}
      update: {lead: member}
  loose:
    fields:
      x: {type: text}
    permissions:
      read: {lead: member, authenticated: member}
"""


def test_member_scope_is_for_reads_and_deletes_of_tenant_rows_by_membership_roles():
    messages = {(path, message) for _, path, message in problems_of(MEMBERSHIP_SCHEMA)}
    assert ("entities.project.permissions.update.lead",
            "scope 'member' applies to read and delete only (a write could move a row to another tenant)") in messages
    assert ("entities.loose.permissions.read.lead",
            "scope 'member' needs the entity to be `tenants` or to have a ref `tenant` to tenants") in messages
    assert ("entities.loose.permissions.read.authenticated",
            "'authenticated' is not a membership role (one of lead, admin)") in messages
    assert not any(path.startswith("entities.project.permissions.read") for path, _ in messages)


def test_the_readmes_schema_example_loads_and_names_installed_hooks():
    from engine.hooks import missing_handlers

    readme = (REPO / "README.md").read_text()
    example = readme.split("## The schema format, by example")[1].split("```yaml")[1].split("```")[0]
    assert missing_handlers(load_schema(example)) == []


def test_json_fields_may_declare_the_json_schema_of_their_values():
    found = problems_of("""
        name: s
        entities:
          a:
            fields:
              good: {type: json, default: {n: 1}, schema: {type: object, properties: {n: {type: integer}}}}
              bad_default: {type: json, default: {n: "x"}, schema: {type: object, properties: {n: {type: integer}}}}
              broken: {type: json, schema: {type: nonsense}}
              wrong_type: {type: text, schema: {type: object}}
    """)
    messages = {(path, message.split(":")[0]) for _, path, message in found}
    assert ("entities.a.fields.bad_default.default", "default {'n'") in messages
    assert ("entities.a.fields.broken.schema", "not a valid JSON Schema") in messages
    assert ("entities.a.fields.wrong_type.schema", "'schema' applies to json fields, not text") in messages
    assert not any(path.startswith("entities.a.fields.good") for _, path, _ in found)


def test_a_json_schema_combining_unevaluated_and_pattern_properties_is_refused():
    """jsonschema evaluates `unevaluatedProperties` against `patternProperties` with Python's backtracking `re`."""
    found = problems_of("""
        name: x
        entities:
          e:
            fields:
              f: {type: json, schema: {patternProperties: {"^a": {}}, unevaluatedProperties: false}}
    """)
    assert found == [(6, "entities.e.fields.f.schema",
                      "unevaluatedProperties cannot be combined with patternProperties; use additionalProperties")]


def test_a_function_input_pattern_re2_cannot_compile_is_a_schema_error():
    found = problems_of("""
        name: x
        entities: {}
        functions:
          f:
            handler: shop.f
            input: {type: object, properties: {a: {type: string, pattern: "(?<=a)b"}}}
    """)
    assert [(line, path) for line, path, _ in found] == [(7, "functions.f.input")]
    assert "is not a 'regex'" in found[0][2]


def test_schema_check_refuses_the_platforms_roles_in_a_tenant_schema_unless_told_it_is_the_platform(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: grab\nroles: [platform_admin]\nentities:\n  post:\n    fields:\n      title: {type: string}\n")
    tenant = subprocess.run([sys.executable, "-m", "gateway.cli", "schema", "check", str(bad)], capture_output=True, text=True)
    assert tenant.returncode == 1 and "platform_admin" in tenant.stderr
    platform = subprocess.run([sys.executable, "-m", "gateway.cli", "schema", "check", "--platform", str(REPO / "platform.yaml")],
                              capture_output=True, text=True)
    assert platform.returncode == 0, platform.stderr


FIELD = "name: s\nentities:\n  a:\n    fields:\n      {}\n"


@pytest.mark.parametrize("text, line, path, fragment", [
    ("null\n", 1, "", "a schema is a mapping (name: ..., entities: ...), not null"),
    ("~\n", 1, "", "not null"),
    ("[name, entities]\n", 1, "", "not a list"),
    ("name: s\nentities:\n  1: {fields: {}}\n", 3, "entities[1]", "the key 1 is not a string"),
    ("name: s\nentities:\n  true: {fields: {}}\n", 3, "entities[true]", "the key true is not a string"),
    ("name: s\nentities:\n  ~: {fields: {}}\n", 3, "entities[null]", "the key null is not a string"),
    ("name: s\nentities:\n  1.5: {fields: {}}\n", 3, "entities[1.5]", "the key 1.5 is not a string"),
    ("name: s\nentities:\n  a:\n    fields:\n      1: {type: text}\n", 5, "entities.a.fields[1]", "is not a string"),
    ("name: s\nentities:\n  a:\n    hooks:\n      1: [{webhook: 'https://x.example'}]\n", 5, "entities.a.hooks[1]",
     "is not a string"),
    (FIELD.format("j: {type: json, default: {1: 2}}"), 5, "entities.a.fields.j.default[1]", "the key 1 is not a string"),
    (FIELD.format("j: {type: json, default: {~: 2}}"), 5, "entities.a.fields.j.default[null]", "is not a string"),
    (FIELD.format("j: {type: json, default: {x: [{1: 2}]}}"), 5, "entities.a.fields.j.default.x[0][1]", "is not a string"),
    (FIELD.format("j: {type: json, default: !!set {a, b}}"), 5, "entities.a.fields.j.default", "a set (!!set) is not JSON"),
    (FIELD.format("j: {type: json, default: !!binary aGk=}"), 5, "entities.a.fields.j.default", "binary data"),
    (FIELD.format("j: {type: json, default: !!timestamp 2024-01-31}"), 5, "entities.a.fields.j.default", "'2024-01-31'"),
    (FIELD.format("j: {type: json, schema: {maximum: .inf}}"), 5, "entities.a.fields.j.schema.maximum", "not a finite"),
    ("name: s\nentities: {}\nfunctions:\n  f: {handler: a.b, input: {1: 2}}\n", 4, "functions.f.input[1]", "not a string"),
    (FIELD.format("j: {type: json, default: {a: 100000000000000000000000000000}}"), 5, "entities.a.fields.j.default.a",
     "integers are sent as JSON in 64 bits (write a float: 1.0e+29)"),
])
def test_a_schema_that_is_not_json_data_is_refused_at_its_path_and_line(text, line, path, fragment):
    found = problems_of(text)
    assert any(at == line and where == path and fragment in message for at, where, message in found), found
    assert len(found) == 1, found  # said once, not also by the passes that cannot read it


@pytest.mark.parametrize("spec, key, shown", [
    ("n: {type: number, default: .inf}", "default", ".inf"),
    ("n: {type: number, default: .nan}", "default", ".nan"),
    ("n: {type: decimal, default: -.inf}", "default", "-.inf"),
    ("n: {type: integer, default: .inf}", "default", ".inf"),
    ("n: {type: number, maximum: .nan}", "maximum", ".nan"),
    ("n: {type: integer, minimum: .inf}", "minimum", ".inf"),
    ("n: {type: number, minimum: -.inf, maximum: 5}", "minimum", "-.inf"),
    ("n: {type: array, items: number, default: [1, .inf]}", "default[1]", ".inf"),
])
def test_number_defaults_and_bounds_must_be_finite(spec, key, shown):
    (line, path, message), = problems_of(FIELD.format(spec))
    assert (line, path) == (5, f"entities.a.fields.n.{key}")
    assert message == f"{shown} is not a finite number (JSON has no infinity or NaN)"


@pytest.mark.parametrize("value, tag", [("!!int abc", "!!int"), ("!!float abc", "!!float"), ("!!bool maybe", "!!bool"),
                                        ("!!timestamp abc", "!!timestamp")])
def test_a_value_that_does_not_fit_its_explicit_yaml_tag_is_invalid_yaml_at_its_line(value, tag):
    (line, path, message), = problems_of(f"name: s\nentities: {{}}\nversion: {value}\n")
    assert (line, path) == (3, "") and message.startswith("invalid YAML") and f"is not a valid {tag}" in message


def test_a_schema_file_that_is_not_utf8_is_a_schema_error_naming_the_file(tmp_path):
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"name: s\n\xff\xfe bad bytes\n")
    with pytest.raises(SchemaInvalid) as caught:
        load_schema_file(binary)
    assert caught.value.source == str(binary)
    (problem,) = caught.value.details
    assert problem.line == 2 and "not UTF-8" in problem.message


def test_schema_check_cli_refuses_defaults_json_cannot_hold_and_checks_a_whole_directory_past_a_binary_file(tmp_path):
    (tmp_path / "a.yaml").write_bytes(b"\xff\xfe bad bytes\n")
    (tmp_path / "b.yaml").write_text(FIELD.format("j: {type: json, default: {1: 2}}"))
    (tmp_path / "c.yaml").write_text(FIELD.format("j: {type: json, default: !!set {a, b}}"))
    (tmp_path / "d.yaml").write_text("null\n")
    (tmp_path / "e.yaml").write_text(FIELD.format("n: {type: number, default: .inf}"))
    (tmp_path / "f.yaml").write_text(FIELD.format("j: {type: json, default: {a: 1}}"))
    result = subprocess.run([sys.executable, "-m", "gateway.cli", "schema", "check", str(tmp_path)],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"{tmp_path / 'a.yaml'}:1: the file is not UTF-8" in result.stderr
    assert f"{tmp_path / 'b.yaml'}:5: entities.a.fields.j.default[1]: the key 1 is not a string" in result.stderr
    assert f"{tmp_path / 'c.yaml'}:5: entities.a.fields.j.default: a set (!!set)" in result.stderr
    assert f"{tmp_path / 'd.yaml'}:1: a schema is a mapping" in result.stderr
    assert f"{tmp_path / 'e.yaml'}:5: entities.a.fields.n.default: .inf is not a finite number" in result.stderr
    assert f"{tmp_path / 'f.yaml'}: ok" in result.stdout and result.stdout.count(": ok") == 1
