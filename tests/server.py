"""A real gateway on a free port, in a thread of the test process, for tests that drive it with stock clients."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from gateway.app import create_app


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def running_gateway(database_url: str, **options: Any) -> Iterator[str]:
    """Serve the gateway on the module's database; yields its base URL and stops it afterwards.

    Rate limits are off unless the test passes `rate_limits` (tests/test_rate_limits.py does): other tests
    drive a tenant far faster than any plan's windows allow."""
    options.setdefault("rate_limits", {"enabled": False})
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(database_url, **options), host="127.0.0.1", port=port, log_level="warning",
                                           access_log=False, lifespan="on", loop="asyncio"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
