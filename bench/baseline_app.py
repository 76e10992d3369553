"""The hand-written baseline of bench/rest.py: Starlette + asyncpg, JSON built by Postgres, the same
queries the engine runs for the benchmark's four requests, as the same tenant role. Nothing generic:
this is the floor a framework on this stack can approach.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

SCHEMA = os.environ.get("BENCH_SCHEMA", "t_bench")
ROLE = os.environ["BENCH_ROLE"]

LIST = (f"SELECT coalesce(json_agg(t), '[]')::text FROM (SELECT id, title, status, rating FROM {SCHEMA}.post "
        "WHERE status = $1 ORDER BY published_at DESC LIMIT 20) t")
GET = f"SELECT coalesce(json_agg(t), '[]')::text FROM (SELECT * FROM {SCHEMA}.post WHERE id = $1::uuid) t"
EMBED = (f"SELECT coalesce(json_agg(t), '[]')::text FROM (SELECT p.id, p.title, (SELECT to_json(a) FROM "
         f"(SELECT name FROM {SCHEMA}.author WHERE id = p.author_id) a) AS author FROM {SCHEMA}.post p "
         "ORDER BY p.created_at DESC LIMIT 20) t")
INSERT = (f"INSERT INTO {SCHEMA}.comment (post_id, body) "
          f"SELECT post_id, body FROM json_populate_record(NULL::{SCHEMA}.comment, $1::json)")
UPDATE = (f"UPDATE {SCHEMA}.post p SET rating = j.rating "
          f"FROM json_populate_record(NULL::{SCHEMA}.post, $2::json) j WHERE p.id = $1::uuid")


async def set_role(conn: asyncpg.Connection) -> None:
    await conn.execute(f'SET ROLE "{ROLE}"')


async def keep_session(conn: asyncpg.Connection) -> None:
    """No reset between requests: RESET ALL would drop the role (and cost a round trip)."""


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    app.state.pool = await asyncpg.create_pool(os.environ["BENCH_DATABASE_URL"], min_size=2, max_size=10,
                                               init=set_role, reset=keep_session)
    yield
    await app.state.pool.close()


def json(body: str) -> Response:
    return Response(body.encode(), media_type="application/json")


async def list_posts(request: Request) -> Response:
    return json(await request.app.state.pool.fetchval(LIST, request.query_params.get("status", "published")))


async def get_post(request: Request) -> Response:
    return json(await request.app.state.pool.fetchval(GET, request.query_params["id"]))


async def embed_posts(request: Request) -> Response:
    return json(await request.app.state.pool.fetchval(EMBED))


async def insert_comment(request: Request) -> Response:
    await request.app.state.pool.execute(INSERT, (await request.body()).decode())
    return Response(status_code=201)


async def update_post(request: Request) -> Response:
    await request.app.state.pool.execute(UPDATE, request.query_params["id"], (await request.body()).decode())
    return Response(status_code=204)


app = Starlette(routes=[Route("/list", list_posts), Route("/get", get_post), Route("/embed", embed_posts),
                        Route("/insert", insert_comment, methods=["POST"]),
                        Route("/update", update_post, methods=["PATCH"])], lifespan=lifespan)
