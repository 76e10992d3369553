"""Request bodies, read within the tenant's plan's byte limit before anything parses them.

Why: a body is held in memory whole and then parsed as JSON (REST, GraphQL, functions, auth); a client
that sends a gigabyte must not make the process hold a gigabyte. The declared `Content-Length` is checked
first, so an oversized body is refused before a byte of it is read; a chunked body (no length) is counted
as it streams in and refused as soon as it passes the limit. Either way the answer is 413 `body_too_large`,
and nothing was parsed or written.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.requests import Request

from engine.errors import BackSaasError, InvalidBody, Problem
from engine.limits import Bounds


class BodyTooLarge(BackSaasError):
    code = "body_too_large"
    status = 413


def _refusal(limit: int, size: str) -> BodyTooLarge:
    return BodyTooLarge(f"the body is larger than this tenant's plan allows ({limit} bytes)",
                        details=[Problem("body", f"{size}, more than {limit} bytes")],
                        hint="send fewer objects per request (the plan's limits.max_body_bytes)")


async def read_body(request: Request, limits: Mapping[str, Any] | None = None) -> bytes:
    """The request's body, at most `max_body_bytes` of the plan whose `limits` are given (default: the
    request's, which the gateway put in `scope["backsaas.limits"]`); 413 `body_too_large` beyond it."""
    limit = Bounds.of_plan(limits if limits is not None else request.scope.get("backsaas.limits")).max_body_bytes
    declared = request.headers.get("content-length", "").strip()
    if declared.isdigit() and int(declared) > limit:
        raise _refusal(limit, f"Content-Length is {declared}")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":  # never a truncated body handed on as if whole
            raise InvalidBody("the client disconnected before its body arrived")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _refusal(limit, f"more than {limit} bytes arrived")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)
