"""A wheel install runs: what a packager, a Dockerfile or pipx does with `pip install .`, then
`backsaas serve --demo` from an empty directory, on the embedded PostgreSQL, until /readyz answers 200.

The wheel is built from a copy of the package's sources (a build in the shared checkout would write its
build/ and egg-info there). By default the virtual environment sees this interpreter's packages for the
dependencies (`--system-site-packages`) and gets the built wheel alone (`--no-deps`), which keeps the test
in the normal suite; `BACKSAAS_WHEEL_FRESH_VENV=1` (CI) makes it a fresh environment into which pip
installs the wheel with all its dependencies from the index.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx2
import pytest

from engine.embedded import data_directory
from tests.server import free_port

REPO = Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "README.md", "MANIFEST.in", "platform.yaml", "schemas", "engine", "gateway", "functions")
FRESH = os.environ.get("BACKSAAS_WHEEL_FRESH_VENV") == "1"


def run(*command: str | Path, cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(part) for part in command], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                            env=clean_env())
    assert result.returncode == 0, f"{' '.join(map(str, command))}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "PYTHONPATH", "VIRTUAL_ENV")}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = tmp_path_factory.mktemp("source")
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, symlinks=True,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "node_modules"))
        else:
            shutil.copy2(REPO / name, source / name)
    dist = tmp_path_factory.mktemp("dist")
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", dist, source, cwd=source)
    (built,) = dist.glob("backsaas-*.whl")
    return built


def test_the_wheel_carries_platform_yaml_and_the_example_schemas(wheel: Path):
    with zipfile.ZipFile(wheel) as archive:
        assert archive.read("engine/platform.yaml") == (REPO / "platform.yaml").read_bytes()
        for schema in (REPO / "schemas").glob("*.yaml"):
            assert archive.read(f"gateway/schemas/{schema.name}") == schema.read_bytes()


def test_an_installed_wheel_serves_the_demo_from_an_empty_directory(wheel: Path, tmp_path: Path):
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", *([] if FRESH else ["--system-site-packages"]), venv, cwd=tmp_path)
    python, backsaas = venv / "bin" / "python", venv / "bin" / "backsaas"
    run(python, "-m", "pip", "install", "--quiet", *([] if FRESH else ["--no-deps"]), wheel, cwd=tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    where = run(python, "-c", "import engine, gateway; print(engine.__file__); print(gateway.__file__)", cwd=empty)
    assert all(Path(line).is_relative_to(venv) for line in where.stdout.split()), where.stdout  # not this checkout
    assert run(backsaas, "--version", cwd=empty).stdout.startswith("backsaas ")

    port = free_port()
    server = subprocess.Popen([str(backsaas), "serve", "--demo", "--port", str(port)], cwd=empty, env=clean_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    ready = None
    try:
        deadline = time.monotonic() + 180
        while server.poll() is None and time.monotonic() < deadline:
            try:
                ready = httpx2.get(f"{base}/readyz", timeout=2)
                if ready.status_code == 200:
                    break
            except httpx2.TransportError:
                time.sleep(0.3)
        assert ready is not None and ready.status_code == 200
        demo = httpx2.get(f"{base}/api/tenants/demo/").json()
        assert {"author", "post", "comment"} <= {e["name"] for e in demo["entities"]}
        console = httpx2.get(f"{base}/admin/")  # the console's bundle ships in the wheel
        assert console.status_code == 200 and '<div id="root">' in console.text
        script = re.search(r'src="(/admin/assets/[^"]+)"', console.text)[1]
        assert httpx2.get(f"{base}{script}").status_code == 200
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
        try:
            stdout, stderr = server.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            server.kill()
            stdout, stderr = server.communicate()
            postmaster = data_directory(empty) / "postmaster.pid"
            if postmaster.exists():
                os.kill(int(postmaster.read_text().split()[0]), signal.SIGTERM)
    assert server.returncode in (0, 128 + signal.SIGTERM), f"{stdout}\n{stderr[-3000:]}"
    assert "platform admin login: admin@backsaas.local" in stdout
    assert (data_directory(empty) / "PG_VERSION").exists()
