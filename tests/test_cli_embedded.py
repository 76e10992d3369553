"""Every `backsaas` command on the default database, as a newcomer runs them: no DATABASE_URL, in the
project directory where `backsaas serve --demo` runs the embedded PostgreSQL.

One `serve --demo` for the module (it initialises the data directory, and every command joins its
server); each command is then the installed `backsaas` script in a process of its own. A second,
empty directory is where a command is run by mistake.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest

from engine.embedded import data_directory
from tests.server import free_port

REPO = Path(__file__).resolve().parent.parent
BACKSAAS = Path(sysconfig.get_path("scripts")) / "backsaas"
NOTES = "name: notes\nentities:\n  note:\n    fields:\n      title: {type: string, required: true}\n      body: {type: text}\n"
WIDER = NOTES + "      stars: {type: integer, default: 0}\n"
PASSWORD = "a long passphrase"


def embedded_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}


def run_in(cwd: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BACKSAAS), *args], cwd=cwd, env=embedded_env(), input=stdin, capture_output=True,
                          text=True, timeout=180)


@dataclass
class Project:
    cwd: Path
    base: str
    server: subprocess.Popen[str]

    def __call__(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return run_in(self.cwd, *args, stdin=stdin)

    def ok(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        result = self(*args, stdin=stdin)
        assert result.returncode == 0, f"backsaas {' '.join(args)}: {result.stderr}"
        assert "Traceback" not in result.stderr
        return result

    def json(self, *args: str) -> object:
        return json.loads(self.ok(*args, "--json").stdout)

    def stop(self) -> tuple[str, str]:
        """SIGTERM, as Ctrl-C or a service manager stops it; a server still running after 2 minutes is killed,
        its orphaned PostgreSQL with it, and the test fails with what it logged."""
        if self.server.poll() is None:
            self.server.send_signal(signal.SIGTERM)
        try:
            return self.server.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            self.server.kill()
            out, err = self.server.communicate()
            postmaster = data_directory(self.cwd) / "postmaster.pid"
            if postmaster.exists():
                os.kill(int(postmaster.read_text().split()[0]), signal.SIGTERM)
            pytest.fail(f"serve did not stop within 2 minutes of SIGTERM:\n{out}\n{err[-4000:]}")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory):
    assert BACKSAAS.exists(), f"the backsaas script is not installed at {BACKSAAS}"
    cwd = tmp_path_factory.mktemp("newcomer")
    (cwd / "schemas").mkdir()
    shutil.copy(REPO / "schemas" / "blog.yaml", cwd / "schemas" / "blog.yaml")  # as in a clone of the repository
    (cwd / "notes.yaml").write_text(NOTES)
    (cwd / "notes2.yaml").write_text(WIDER)
    port = free_port()
    server = subprocess.Popen([str(BACKSAAS), "serve", "--demo", "--port", str(port)], cwd=cwd, env=embedded_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    running = Project(cwd, f"http://127.0.0.1:{port}", server)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and server.poll() is None:
        try:
            if httpx2.get(f"{running.base}/readyz", timeout=2).status_code == 200:
                break
        except httpx2.TransportError:
            time.sleep(0.2)
    else:
        out, err = running.stop()
        pytest.fail(f"serve --demo never became ready: {out}\n{err}")
    yield running
    running.stop()


def test_a_command_where_there_is_no_database_stops_and_says_where_it_looked_and_what_to_do(tmp_path: Path):
    for command in (["tenant", "list"], ["admin", "create", "--email", "a@example.com", "--password-stdin"]):
        result = run_in(tmp_path, *command, stdin=f"{PASSWORD}\n")
        assert result.returncode == 1, result.stderr
        assert "database_not_found" in result.stderr and "Traceback" not in result.stderr
        assert str(data_directory(tmp_path)) in result.stderr
        assert "backsaas serve" in result.stderr and "DATABASE_URL" in result.stderr
    assert not (tmp_path / ".backsaas").exists()  # nothing initialised in the wrong directory


def test_schema_plan_of_the_readmes_example(project: Project):
    planned = project.ok("schema", "plan", "--tenant", "demo", "schemas/blog.yaml")
    assert "Plan for tenant demo from version 1:" in planned.stdout and "No changes." in planned.stdout


def test_schema_check_needs_no_database(project: Project):
    checked = project.ok("schema", "check", "notes.yaml")
    assert "notes.yaml: ok (2 entities: note, users)" in checked.stdout


def test_a_schema_that_is_no_json_data_is_a_schema_error_and_with_json_a_json_refusal(project: Project):
    """On the embedded default: the checker's refusal of a schema JSON cannot hold (a key that is no string), in
    `check` and in `plan`, whose `--json` prints the refusal as JSON on stdout."""
    (project.cwd / "numbered.yaml").write_text("name: numbered\nentities:\n  1: {fields: {}}\n")
    checked = project("schema", "check", "numbered.yaml")
    assert checked.returncode == 1 and "the key 1 is not a string" in checked.stderr and "Traceback" not in checked.stderr
    planned = project("schema", "plan", "--tenant", "demo", "numbered.yaml", "--json")
    answer = json.loads(planned.stdout)
    assert planned.returncode == 1 and answer["ok"] is False and answer["error"]["code"] == "schema_invalid", planned


def test_tenant_create_list_and_show(project: Project):
    created = project.json("tenant", "create", "notes", "--name", "Notes", "--schema", "notes.yaml")
    assert created["version"] == 1 and set(created["keys"]) == {"anon", "service"}
    assert re.search(r"│ notes +│ Notes +│ active +│ free", project.ok("tenant", "list").stdout)
    shown = project.json("tenant", "show", "notes")
    assert shown["status"] == "active" and shown["version"] == 1
    assert sorted(shown["keys"]) == ["initial-anon", "initial-service"]


def test_schema_deploy_history_and_rollback(project: Project):
    project.ok("tenant", "create", "history", "--schema", "notes.yaml")
    deployed = project.ok("schema", "deploy", "--tenant", "history", "notes2.yaml")
    assert "Tenant history is at version 2 (1 step)." in deployed.stdout
    history = project.json("schema", "history", "--tenant", "history")
    assert [v["version"] for v in history] == [1, 2] and "+      stars: {type: integer, default: 0}" in history[1]["diff"]
    refused = project("schema", "rollback", "--tenant", "history", "--to", "1")
    assert refused.returncode == 1 and "migration_refused" in refused.stderr and "--allow-destructive" in refused.stderr
    assert project.json("schema", "rollback", "--tenant", "history", "--to", "1", "--allow-destructive")["version"] == 3


def test_key_create_list_and_revoke(project: Project):
    created = project.ok("key", "create", "--tenant", "demo", "--name", "ci", "--role", "service").stdout
    made = re.search(r"Key ci \(service\) for demo, shown once: (?P<key>bsk_\S+)", created)
    assert made, created
    assert httpx2.get(f"{project.base}/api/tenants/demo/rest/v1/post", headers={"apikey": made["key"]}).status_code == 200
    assert "ci" in [k["name"] for k in project.json("key", "list", "--tenant", "demo")]
    assert "Key ci of demo revoked." in project.ok("key", "revoke", "--tenant", "demo", "--name", "ci").stdout
    deadline = time.monotonic() + 10  # the server learns of the revocation by NOTIFY
    while (status := httpx2.get(f"{project.base}/api/tenants/demo/rest/v1/post",
                                headers={"apikey": made["key"]}).status_code) != 401 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert status == 401


def test_member_invite_list_and_remove(project: Project):
    invited = project.json("member", "invite", "--tenant", "demo", "--email", "pat@example.com", "--role", "developer")
    accepted = httpx2.post(f"{project.base}/api/platform/functions/v1/accept_invitation",
                           json={"token": invited["token"], "password": PASSWORD}, timeout=60)
    assert accepted.status_code == 200, accepted.text
    listed = project.json("member", "list", "--tenant", "demo")
    assert [(m["email"], m["role"]) for m in listed] == [("pat@example.com", "developer")]
    removed = project.ok("member", "remove", "--tenant", "demo", "--email", "pat@example.com")
    assert "Removed pat@example.com from demo." in removed.stdout
    assert project.json("member", "list", "--tenant", "demo") == []


def test_auth_rotate_key(project: Project):
    assert re.search(r"New signing key \S+;", project.ok("auth", "rotate-key").stdout)


def test_admin_create(project: Project):
    created = project.ok("admin", "create", "--email", "ops@example.com", "--password-stdin", stdin=f"{PASSWORD}\n")
    assert "Platform admin ops@example.com created" in created.stdout
    signed_in = httpx2.post(f"{project.base}/api/platform/auth/v1/token?grant_type=password",
                            json={"email": "ops@example.com", "password": PASSWORD}, timeout=60)
    assert signed_in.status_code == 200, signed_in.text


def test_admin_create_and_serve_print_the_platforms_anon_key(project: Project):
    published = httpx2.get(f"{project.base}/api/platform/", timeout=60).json()["anon_key"]
    created = project.ok("admin", "create", "--email", "keys@example.com", "--password-stdin", stdin=f"{PASSWORD}\n")
    assert published in created.stdout
    signed_up = httpx2.post(f"{project.base}/api/platform/auth/v1/signup", headers={"apikey": published},
                            json={"email": "dev@example.com", "password": PASSWORD}, timeout=60)
    assert signed_up.status_code == 200, signed_up.text


def test_tenant_lifecycle(project: Project):
    project.ok("tenant", "create", "life")
    assert "suspended" in project.ok("tenant", "suspend", "life", "--reason", "abuse report").stdout
    assert httpx2.get(f"{project.base}/api/tenants/life/").status_code == 403
    assert "active again" in project.ok("tenant", "activate", "life").stdout
    assert "deleted" in project.ok("tenant", "delete", "life").stdout
    assert httpx2.get(f"{project.base}/api/tenants/life/").status_code == 404
    assert "restored" in project.ok("tenant", "restore", "life").stdout
    project.ok("tenant", "delete", "life")
    assert "Purged 0 tenant(s)." in project.ok("tenant", "purge").stdout  # within the retention
    assert project.json("tenant", "purge", "--older-than-days", "0") == {"purged": ["life"]}


def test_audit_verify_of_the_demo_tenants_chain(project: Project):
    verified = project.json("audit", "verify", "--tenant", "demo")
    assert verified["ok"] and verified["entries"] > 0 and verified["broken_at"] is None, verified


def test_audit_seal_then_verify_on_the_embedded_default(project: Project):
    assert isinstance(project.json("audit", "seal", "--tenant", "demo")["sealed"], int)
    assert project.json("audit", "verify", "--tenant", "demo")["broken_at"] is None


def test_serve_refuses_a_malformed_trusted_proxies_list_before_it_starts(project: Project):
    result = project("serve", "--port", str(free_port()), "--trusted-proxies", "not-an-address")
    assert result.returncode != 0 and "not-an-address" in result.stdout + result.stderr


def test_billing_sweep(project: Project):
    assert isinstance(project.json("billing", "sweep"), dict | list)


def test_serve_on_a_port_in_use_stops_before_its_banner(project: Project):
    port = project.base.rsplit(":", 1)[1]
    result = project("serve", "--port", port)
    assert result.returncode == 1 and "port_in_use" in result.stderr and f"127.0.0.1:{port}" in result.stderr
    assert "BackSaas on" not in result.stdout and "gateway.started" not in result.stderr
    assert "Traceback" not in result.stderr


def test_sigterm_stops_serve_cleanly_without_a_lost_listener_warning(project: Project):
    _, stderr = project.stop()
    assert project.server.returncode in (0, 128 + signal.SIGTERM), stderr
    assert "gateway.stopped" in stderr
    assert "registry.listener_lost" not in stderr
