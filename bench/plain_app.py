"""The plain-ASGI baseline of bench/rest.py: no framework at all, asyncpg, JSON built by Postgres, the same
statements as baseline_app.py (Starlette) for the same requests, as the same tenant role. What is left
of a request here is uvicorn's HTTP parsing, one pool checkout and the statement: the floor of any
Python server on this stack.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import parse_qs

import asyncpg
from baseline_app import EMBED, GET, INSERT, LIST, UPDATE, keep_session, set_role

JSON_HEADERS = [(b"content-type", b"application/json")]
pool: asyncpg.Pool | None = None


async def body_of(receive: Any) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def answer(send: Any, status: int, body: bytes = b"") -> None:
    await send({"type": "http.response.start", "status": status, "headers": JSON_HEADERS})
    await send({"type": "http.response.body", "body": body})


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    global pool
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                pool = await asyncpg.create_pool(os.environ["BENCH_DATABASE_URL"], min_size=2, max_size=10,
                                                 init=set_role, reset=keep_session)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if pool is not None:
                    await pool.close()
                await send({"type": "lifespan.shutdown.complete"})
                return
    assert pool is not None
    path = scope["path"]
    query = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
    if path == "/list":
        await answer(send, 200, (await pool.fetchval(LIST, query.get("status", "published"))).encode())
    elif path == "/get":
        await answer(send, 200, (await pool.fetchval(GET, query["id"])).encode())
    elif path == "/embed":
        await answer(send, 200, (await pool.fetchval(EMBED)).encode())
    elif path == "/insert" and scope["method"] == "POST":
        await pool.execute(INSERT, (await body_of(receive)).decode())
        await answer(send, 201)
    elif path == "/update" and scope["method"] == "PATCH":
        await pool.execute(UPDATE, query["id"], (await body_of(receive)).decode())
        await answer(send, 204)
    elif path == "/healthz":
        await answer(send, 200, b"{}")
    else:
        await answer(send, 404, b"{}")
