"""The `backsaas` command line, run as a user runs it, against the module's database."""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from engine import catalog
from engine.database import Database

REPO = Path(__file__).resolve().parent.parent
NOTES = "name: notes\nentities:\n  note:\n    fields:\n      title: {type: string, required: true}\n      body: {type: text}\n"


@pytest.fixture(scope="module")
def backsaas(database_url: str, tmp_path_factory: pytest.TempPathFactory):
    cwd = tmp_path_factory.mktemp("cli")

    def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "DATABASE_URL": database_url}
        return subprocess.run([sys.executable, "-m", "gateway.cli", *args], cwd=cwd, env=env, input=stdin,
                              capture_output=True, text=True, timeout=120)

    run.cwd = cwd  # type: ignore[attr-defined]
    run.url = database_url  # type: ignore[attr-defined]
    return run


async def deployed_by(url: str, slug: str) -> list[str]:
    db = await Database.connect(url)
    try:
        async with db.begin() as conn:
            tenant = await catalog.find_tenant(conn, slug)
            return [v.actor for v in await catalog.version_history(conn, tenant.id)]
    finally:
        await db.close()


def write(directory: Path, name: str, text: str) -> str:
    path = directory / name
    path.write_text(text)
    return str(path)


def test_help_lists_every_command(backsaas):
    result = backsaas("--help")
    assert result.returncode == 0
    for command in ("serve", "schema", "tenant", "member", "admin"):
        assert command in result.stdout
    for group, actions in (("schema", ("check", "plan", "deploy", "history", "rollback")),
                           ("member", ("invite", "list", "remove")), ("tenant", ("create", "list", "suspend", "activate")),
                           ("admin", ("create",)), ("auth", ("rotate-key",))):
        text = backsaas(group, "--help").stdout
        assert all(action in text for action in actions)
    serve = backsaas("serve", "--help").stdout
    assert all(flag in serve for flag in ("--host", "--port", "--workers", "--reload"))


def test_tenant_create_and_list(backsaas):
    created = backsaas("tenant", "create", "cli-notes", "--name", "CLI notes",
                       "--schema", write(backsaas.cwd, "notes.yaml", NOTES), "--json")
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["version"] == 1
    listed = json.loads(backsaas("tenant", "list", "--json").stdout)
    assert {"cli-notes", "system"} <= {t["slug"] for t in listed}
    assert next(t for t in listed if t["slug"] == "cli-notes")["name"] == "CLI notes"
    table = backsaas("tenant", "list").stdout
    assert "cli-notes" in table and "active" in table


def test_tenant_create_refuses_a_bad_slug(backsaas):
    result = backsaas("tenant", "create", "No")
    assert result.returncode == 1 and "invalid_input" in result.stderr and "slug" in result.stderr


def test_schema_plan_shows_sql_and_changes_nothing_then_apply_deploys_it(backsaas):
    backsaas("tenant", "create", "cli-plan", "--schema", write(backsaas.cwd, "plan1.yaml", NOTES))
    newer = write(backsaas.cwd, "plan2.yaml", NOTES + "      stars: {type: integer, default: 0}\n")
    planned = backsaas("schema", "plan", "--tenant", "cli-plan", newer)
    assert planned.returncode == 0, planned.stderr
    assert "add field note.stars" in planned.stdout and "ALTER TABLE t_cli_plan.note ADD COLUMN stars INTEGER" in planned.stdout
    assert json.loads(backsaas("schema", "plan", "--tenant", "cli-plan", newer, "--json").stdout)["base_version"] == 1
    applied = backsaas("schema", "deploy", "--tenant", "cli-plan", newer, "--json")
    assert applied.returncode == 0, applied.stderr
    assert json.loads(applied.stdout)["version"] == 2
    assert asyncio.run(deployed_by(backsaas.url, "cli-plan")) == [f"cli:{getpass.getuser()}"] * 2
    again = backsaas("schema", "plan", "--tenant", "cli-plan", newer)
    assert "No changes." in again.stdout


def test_destructive_apply_needs_the_flag(backsaas):
    backsaas("tenant", "create", "cli-drop", "--schema", write(backsaas.cwd, "drop1.yaml", NOTES))
    smaller = write(backsaas.cwd, "drop2.yaml", NOTES.replace("      body: {type: text}\n", ""))
    planned = backsaas("schema", "plan", "--tenant", "cli-drop", smaller)
    assert planned.returncode == 1 and "(destructive)" in planned.stdout and "refused" in planned.stderr
    refused = backsaas("schema", "deploy", "--tenant", "cli-drop", smaller)
    assert refused.returncode == 1 and "migration_refused" in refused.stderr
    allowed = backsaas("schema", "deploy", "--tenant", "cli-drop", smaller, "--allow-destructive")
    assert allowed.returncode == 0, allowed.stderr


def test_schema_apply_of_a_bad_file_lists_every_error(backsaas):
    backsaas("tenant", "create", "cli-bad", "--schema", write(backsaas.cwd, "bad1.yaml", NOTES))
    bad = write(backsaas.cwd, "bad2.yaml", NOTES + "      who: {type: ref, to: ghost}\n      limit: {type: text}\n")
    result = backsaas("schema", "deploy", "--tenant", "cli-bad", bad)
    assert result.returncode == 1
    assert "7: entities.note.fields.who.to: unknown entity 'ghost'" in result.stderr
    assert "8: entities.note.fields.limit:" in result.stderr


def test_schema_apply_to_an_unknown_tenant_fails_cleanly(backsaas):
    result = backsaas("schema", "deploy", "--tenant", "nobody", write(backsaas.cwd, "n.yaml", NOTES))
    assert result.returncode == 1 and "tenant_not_found" in result.stderr


def test_admin_create_reads_the_password_from_stdin(backsaas):
    result = backsaas("admin", "create", "--email", "ops@example.com", "--password-stdin", stdin="a long passphrase\n")
    assert result.returncode == 0, result.stderr
    assert "Platform admin ops@example.com created" in result.stdout
    again = backsaas("admin", "create", "--email", "ops@example.com", "--password-stdin", stdin="a long passphrase\n")
    assert again.returncode == 1 and "user_exists" in again.stderr


def test_tenant_create_issues_anon_and_service_keys_and_keys_can_be_managed(backsaas):
    created = json.loads(backsaas("tenant", "create", "cli-keys", "--json").stdout)
    assert set(created["keys"]) == {"anon", "service"} and created["keys"]["service"].startswith("bsk_")
    made = backsaas("key", "create", "--tenant", "cli-keys", "--name", "ci", "--role", "service", "--json")
    assert made.returncode == 0 and json.loads(made.stdout)["key"].startswith("bsk_")
    listed = json.loads(backsaas("key", "list", "--tenant", "cli-keys", "--json").stdout)
    assert [k["name"] for k in listed] == ["ci", "initial-anon", "initial-service"]
    assert all("key" not in k and "key_hash" not in k for k in listed)  # never shown again
    assert backsaas("key", "revoke", "--tenant", "cli-keys", "--name", "ci").returncode == 0
    again = backsaas("key", "revoke", "--tenant", "cli-keys", "--name", "ci")
    assert again.returncode == 1 and "key_not_found" in again.stderr
    bad_role = backsaas("key", "create", "--tenant", "cli-keys", "--name", "x", "--role", "wizard")
    assert bad_role.returncode == 1 and "role" in bad_role.stderr


def test_tenant_suspend_needs_a_reason_and_only_moves_from_the_right_state(backsaas):
    assert backsaas("tenant", "create", "cli-life").returncode == 0
    assert backsaas("tenant", "suspend", "cli-life").returncode == 2  # argparse: --reason is required
    suspended = backsaas("tenant", "suspend", "cli-life", "--reason", "abuse report")
    assert suspended.returncode == 0, suspended.stderr
    again = backsaas("tenant", "suspend", "cli-life", "--reason", "again")
    assert again.returncode == 1 and "transition_refused" in again.stderr
    assert backsaas("tenant", "activate", "cli-life").returncode == 0
    assert backsaas("tenant", "activate", "cli-life").returncode == 1
    assert backsaas("tenant", "suspend", "system", "--reason", "no").returncode == 1


def test_auth_rotate_key_prints_the_new_key_id(backsaas):
    rotated = backsaas("auth", "rotate-key")
    assert rotated.returncode == 0 and "New signing key" in rotated.stdout


def test_tenant_show_delete_restore_and_purge(backsaas):
    assert backsaas("tenant", "create", "cli-gone", "--schema", write(backsaas.cwd, "n.yaml", NOTES)).returncode == 0
    shown_run = backsaas("tenant", "show", "cli-gone", "--json")
    assert shown_run.returncode == 0, shown_run.stderr
    shown = json.loads(shown_run.stdout)
    assert shown["status"] == "active" and shown["version"] == 1 and sorted(shown["keys"]) == ["initial-anon", "initial-service"]
    assert backsaas("tenant", "delete", "cli-gone").returncode == 0
    assert json.loads(backsaas("tenant", "show", "cli-gone", "--json").stdout)["status"] == "deleted"
    assert json.loads(backsaas("tenant", "purge", "--json").stdout) == {"purged": []}  # within the retention
    assert backsaas("tenant", "restore", "cli-gone").returncode == 0
    assert backsaas("tenant", "delete", "cli-gone").returncode == 0
    purged = backsaas("tenant", "purge", "--older-than-days", "0", "--json")
    assert json.loads(purged.stdout) == {"purged": ["cli-gone"]}
    gone = backsaas("tenant", "show", "cli-gone")
    assert gone.returncode == 1 and "tenant_not_found" in gone.stderr


def test_schema_history_and_rollback(backsaas):
    notes = write(backsaas.cwd, "h1.yaml", NOTES)
    assert backsaas("tenant", "create", "cli-hist", "--schema", notes).returncode == 0
    wider = write(backsaas.cwd, "h2.yaml", NOTES.replace("fields:", "fields:\n      extra: {type: text}", 1))
    assert backsaas("schema", "deploy", "--tenant", "cli-hist", wider).returncode == 0
    history = json.loads(backsaas("schema", "history", "--tenant", "cli-hist", "--json").stdout)
    assert [v["version"] for v in history] == [1, 2] and "+      extra: {type: text}" in history[1]["diff"]
    refused = backsaas("schema", "rollback", "--tenant", "cli-hist", "--to", "1")
    assert refused.returncode == 1 and "migration_refused" in refused.stderr  # dropping `extra` is destructive
    back = backsaas("schema", "rollback", "--tenant", "cli-hist", "--to", "1", "--allow-destructive", "--json")
    assert back.returncode == 0 and json.loads(back.stdout)["version"] == 3
    assert backsaas("schema", "rollback", "--tenant", "cli-hist", "--to", "9").returncode == 1


def test_schema_deploy_with_a_stale_plan_is_a_version_conflict(backsaas):
    notes = write(backsaas.cwd, "s1.yaml", NOTES)
    assert backsaas("tenant", "create", "cli-stale", "--schema", notes).returncode == 0
    planned = json.loads(backsaas("schema", "plan", "--tenant", "cli-stale", notes, "--json").stdout)
    wider = write(backsaas.cwd, "s2.yaml", NOTES.replace("fields:", "fields:\n      extra: {type: text}", 1))
    assert backsaas("schema", "deploy", "--tenant", "cli-stale", wider).returncode == 0  # someone else deployed
    stale = backsaas("schema", "deploy", "--tenant", "cli-stale", wider, "--expect", planned["base_checksum"])
    assert stale.returncode == 1 and "version_conflict" in stale.stderr


def test_member_invite_list_and_remove(backsaas):
    assert backsaas("tenant", "create", "cli-team").returncode == 0
    invited = backsaas("member", "invite", "--tenant", "cli-team", "--email", "Pat@Example.com", "--role", "owner",
                       "--json")
    assert invited.returncode == 0, invited.stderr
    assert json.loads(invited.stdout)["email"] == "pat@example.com" and len(json.loads(invited.stdout)["token"]) > 20
    assert json.loads(backsaas("member", "list", "--tenant", "cli-team", "--json").stdout) == []  # not accepted yet
    missing = backsaas("member", "remove", "--tenant", "cli-team", "--email", "pat@example.com")
    assert missing.returncode == 1 and "not a member" in missing.stderr


def test_version_prints_the_installed_version(backsaas):
    result = backsaas("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"backsaas {metadata.version('backsaas')}"


def test_schema_check_of_a_directory_checks_each_schema_file_in_it(backsaas):
    folder = backsaas.cwd / "check-dir"
    folder.mkdir()
    write(folder, "a.yaml", NOTES)
    good = backsaas("schema", "check", str(folder))
    assert good.returncode == 0 and "Traceback" not in good.stderr
    assert f"{folder / 'a.yaml'}: ok (2 entities: note, users)" in good.stdout
    write(folder, "b.yml", NOTES + "      who: {type: ref, to: ghost}\n")
    bad = backsaas("schema", "check", str(folder))
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert f"{folder / 'a.yaml'}: ok" in bad.stdout and f"{folder / 'b.yml'}:7: entities.note.fields.who.to" in bad.stderr
    empty = backsaas.cwd / "empty-dir"
    empty.mkdir()
    nothing = backsaas("schema", "check", str(empty))
    assert nothing.returncode == 1 and "no .yaml or .yml schema file" in nothing.stderr and "Traceback" not in nothing.stderr
    not_a_file = backsaas("schema", "plan", "--tenant", "cli-notes", str(folder))
    assert not_a_file.returncode == 1 and "Is a directory" in not_a_file.stderr and "Traceback" not in not_a_file.stderr


def test_schema_errors_of_deploy_and_tenant_create_name_the_file_not_the_tenant(backsaas):
    assert backsaas("tenant", "create", "cli-label").returncode == 0
    bad = write(backsaas.cwd, "label-bad.yaml", NOTES + "      who: {type: ref, to: ghost}\n")
    deployed = backsaas("schema", "deploy", "--tenant", "cli-label", bad)
    assert deployed.returncode == 1
    assert deployed.stderr.startswith(f"{bad}: 1 error in schema") and f"{bad}:7: entities.note.fields.who.to" in deployed.stderr
    assert "cli-label" not in deployed.stderr
    created = backsaas("tenant", "create", "cli-label2", "--schema", bad)
    assert created.returncode == 1 and f"{bad}:7:" in created.stderr and "cli-label2" not in created.stderr
    unhooked = write(backsaas.cwd, "label-hook.yaml", NOTES + "    hooks:\n      before_create: [nowhere.missing]\n")
    missing = backsaas("schema", "deploy", "--tenant", "cli-label", unhooked)
    assert missing.returncode == 1 and missing.stderr.startswith(f"{unhooked}: 1 error in schema"), missing.stderr
    assert "nowhere.missing" in missing.stderr and "cli-label" not in missing.stderr


def test_destructive_refusal_names_the_allow_destructive_flag(backsaas):
    assert backsaas("tenant", "create", "cli-flag", "--schema", write(backsaas.cwd, "flag1.yaml", NOTES)).returncode == 0
    smaller = write(backsaas.cwd, "flag2.yaml", NOTES.replace("      body: {type: text}\n", ""))
    for command in ("plan", "deploy"):
        refused = backsaas("schema", command, "--tenant", "cli-flag", smaller)
        assert refused.returncode == 1 and "--allow-destructive" in refused.stderr, refused.stderr
        assert "allow_destructive" not in refused.stderr
    planned = json.loads(backsaas("schema", "plan", "--tenant", "cli-flag", smaller, "--json").stdout)
    assert planned["ok"] is False and "--allow-destructive" in planned["blockers"][0]["message"]
    assert "1 problem" in backsaas("schema", "deploy", "--tenant", "cli-flag", smaller).stderr


def test_a_deploy_counts_its_steps_in_english(backsaas):
    assert backsaas("tenant", "create", "cli-count", "--schema", write(backsaas.cwd, "count1.yaml", NOTES)).returncode == 0
    one = write(backsaas.cwd, "count2.yaml", NOTES + "      stars: {type: integer, default: 0}\n")
    assert "Tenant cli-count is at version 2 (1 step)." in backsaas("schema", "deploy", "--tenant", "cli-count", one).stdout
    two = write(backsaas.cwd, "count3.yaml", NOTES + "      stars: {type: integer, default: 0}\n      a: {type: text}\n"
                                                     "      b: {type: text}\n")
    assert "(2 steps)." in backsaas("schema", "deploy", "--tenant", "cli-count", two).stdout


def test_schema_files_json_cannot_hold_are_schema_errors_in_every_command_not_tracebacks(backsaas):
    assert backsaas("tenant", "create", "cli-notjson", "--schema", write(backsaas.cwd, "nj.yaml", NOTES)).returncode == 0
    bad_files = {
        "nj-null.yaml": ("null\n", "nj-null.yaml:1: a schema is a mapping"),
        "nj-key.yaml": ("name: notes\nentities:\n  1: {fields: {}}\n", "nj-key.yaml:3: entities[1]: the key 1 is not a string"),
        "nj-json.yaml": (NOTES + "      meta: {type: json, default: {1: 2}}\n",
                         "nj-json.yaml:7: entities.note.fields.meta.default[1]: the key 1 is not a string"),
        "nj-set.yaml": (NOTES + "      meta: {type: json, default: !!set {a, b}}\n",
                        "nj-set.yaml:7: entities.note.fields.meta.default: a set (!!set) is not JSON data"),
        "nj-inf.yaml": (NOTES + "      stars: {type: number, default: .inf}\n",
                        "nj-inf.yaml:7: entities.note.fields.stars.default: .inf is not a finite number"),
        "nj-nan.yaml": (NOTES + "      stars: {type: number, maximum: .nan}\n",
                        "nj-nan.yaml:7: entities.note.fields.stars.maximum: .nan is not a finite number"),
    }
    for name, (text, expected) in bad_files.items():
        path = write(backsaas.cwd, name, text)
        for command in (("schema", "check", path), ("schema", "plan", "--tenant", "cli-notjson", path),
                        ("schema", "deploy", "--tenant", "cli-notjson", path),
                        ("tenant", "create", "cli-notjson2", "--schema", path)):
            result = backsaas(*command)
            assert result.returncode == 1 and "Traceback" not in result.stderr, (command, result.stderr)
            assert result.stderr.startswith(f"{path}: 1 error in schema") and expected in result.stderr, (command, result.stderr)
    assert [t for t in json.loads(backsaas("tenant", "list", "--json").stdout) if t["slug"] == "cli-notjson2"] == []
    assert [v["version"] for v in json.loads(backsaas("schema", "history", "--tenant", "cli-notjson", "--json").stdout)] == [1]


def test_a_schema_file_that_is_not_utf8_is_a_schema_error_and_the_rest_of_its_directory_is_checked(backsaas):
    folder = backsaas.cwd / "utf8-dir"
    folder.mkdir()
    (folder / "a-binary.yaml").write_bytes(b"\xff\xfe bad bytes\n")
    write(folder, "b.yaml", NOTES)
    checked = backsaas("schema", "check", str(folder))
    assert checked.returncode == 1 and "Traceback" not in checked.stderr, checked.stderr
    assert f"{folder / 'a-binary.yaml'}:1: the file is not UTF-8" in checked.stderr
    assert f"{folder / 'b.yaml'}: ok" in checked.stdout
    binary = str(folder / "a-binary.yaml")
    for command in (("schema", "plan", "--tenant", "cli-notes", binary), ("schema", "deploy", "--tenant", "cli-notes", binary),
                    ("tenant", "create", "cli-binary", "--schema", binary)):
        result = backsaas(*command)
        assert result.returncode == 1 and "Traceback" not in result.stderr, (command, result.stderr)
        assert result.stderr.startswith(f"{binary}: 1 error in schema") and "not UTF-8" in result.stderr


def test_a_refusal_with_json_is_json_on_stdout_too(backsaas):
    """A script reading `--json`'s stdout gets the refusal as JSON (the human text stays on stderr)."""
    bad = write(backsaas.cwd, "json-refused.yaml", "name: notes\nentities:\n  1: {fields: {}}\n")
    for command in (("schema", "plan", "--tenant", "cli-json-none", bad, "--json"),
                    ("key", "create", "--tenant", "no-such-tenant", "--name", "k", "--role", "service", "--json")):
        result = backsaas(*command)
        answer = json.loads(result.stdout)
        assert result.returncode == 1 and answer["ok"] is False and answer["error"]["code"], (command, result.stdout)
        assert answer["error"]["message"] and result.stderr, command
