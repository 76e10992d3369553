"""The README runs as written: `backsaas serve --demo` in an empty directory, then every `bash` and
`python` block of README.md in order, as a newcomer pastes them, against that live demo. Only blocks
marked `<!-- illustration ... -->` on the line before are skipped (the server start this test performs,
the test suite, the benchmarks). A `curl` answered with an HTTP error fails the block, as it should
surprise a reader."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.server import free_port

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"^(?P<marker><!-- illustration[^\n]*-->\n)?```(?P<lang>[a-z]*)\n(?P<body>.*?)^```$", re.M | re.S)
# curl answers an HTTP error with exit 22 (and its body on stderr), as a reader would notice the error
STRICT_CURL = 'curl() { command curl --fail-with-body -sS "$@"; echo; }\n'


def runnable_blocks() -> list[tuple[int, str, str]]:
    text = README.read_text()
    return [(text[:m.start()].count("\n") + 1, m["lang"], m["body"]) for m in BLOCK.finditer(text)
            if m["lang"] in ("bash", "python") and not m["marker"]]


@pytest.fixture(scope="module")
def demo(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    project = tmp_path_factory.mktemp("newcomer")
    port = free_port()
    env = {**os.environ, "DATABASE_URL": database_url}
    with (project / "serve.log").open("wb") as log:
        server = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--demo", "--port", str(port)],
                                  cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and server.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        else:
            pytest.fail(f"backsaas serve --demo did not become ready:\n{(project / 'serve.log').read_text()}")
        yield port, project
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_the_readme_has_runnable_blocks():
    languages = [lang for _, lang, _ in runnable_blocks()]
    assert "bash" in languages and "python" in languages


def test_every_readme_block_runs_in_order_against_a_live_demo(demo: tuple[int, Path], database_url: str):
    port, project = demo
    # the demo's database: a newcomer's `backsaas` commands find the embedded one in the same directory
    env = {**os.environ, "DATABASE_URL": database_url}
    for line, lang, body in runnable_blocks():
        body = body.replace("127.0.0.1:8000", f"127.0.0.1:{port}").replace("localhost:8000", f"localhost:{port}")
        command = ["bash", "-eo", "pipefail", "-c", STRICT_CURL + body] if lang == "bash" else [sys.executable, "-c", body]
        done = subprocess.run(command, cwd=project, capture_output=True, text=True, timeout=120, env=env)
        assert done.returncode == 0, f"README.md:{line} ({lang}) failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
