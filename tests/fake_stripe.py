"""A local Stripe for the billing tests: `localstripe` (PyPI) behind a thin translating proxy.

localstripe keeps customers, plans, subscriptions, invoices and invoice items as Stripe does, but speaks
an older API: subscription items name a `plan` where today's API names a `price` (a Plan's id is valid
as either), it refuses `proration_behavior` (it always prorates) and knows `payment_behavior=
default_incomplete` as `allow_incomplete`. The proxy rewrites those on the way in and passes everything
else through, so the code under test calls the real `stripe` library with today's parameters. Nothing
else is faked.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import parse_qsl, urlencode

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.server import free_port

PRICE = re.compile(r"^(.*items\]?\[\d+\])\[price\]$")
DROPPED = re.compile(r"(^|\[)proration_behavior\]?$")


def translate(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    translated = []
    for key, value in pairs:
        if DROPPED.search(key):
            continue
        match = PRICE.match(key)
        if key == "payment_behavior" and value == "default_incomplete":
            value = "allow_incomplete"  # localstripe's older name for it
        translated.append((f"{match.group(1)}[plan]" if match else key, value))
    return translated


def proxy_app(upstream: str) -> Starlette:
    client = httpx.AsyncClient(base_url=upstream, timeout=30)

    async def forward(request: Request) -> Response:
        body = await request.body()
        if body and request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            body = urlencode(translate(parse_qsl(body.decode(), keep_blank_values=True))).encode()
        query = urlencode(translate(parse_qsl(request.url.query, keep_blank_values=True)))
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("authorization", "content-type")}
        answer = await client.request(request.method, request.url.path, params=query or None, content=body,
                                      headers=headers)
        return Response(answer.content, answer.status_code, media_type=answer.headers.get("content-type"))

    return Starlette(routes=[Route("/{path:path}", forward, methods=["GET", "POST", "DELETE"])])


@contextmanager
def local_stripe() -> Iterator[str]:
    """Start localstripe and the proxy; yields the base URL to give `STRIPE_API_BASE`."""
    port = free_port()
    process = subprocess.Popen(["localstripe", "--port", str(port), "--from-scratch"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    upstream = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(f"{upstream}/v1/customers", headers={"Authorization": "Bearer sk_test_x"})
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        proxy_port = free_port()
        server = uvicorn.Server(uvicorn.Config(proxy_app(upstream), host="127.0.0.1", port=proxy_port,
                                               log_level="warning", access_log=False, lifespan="off"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        try:
            yield f"http://127.0.0.1:{proxy_port}"
        finally:
            server.should_exit = True
            thread.join(timeout=10)
    finally:
        process.terminate()
        process.wait(timeout=10)
