"""What the engine's HTTP dialects (REST, auth, GraphQL) hand back to the gateway: status, headers, body
bytes, with nothing left to compute on the way out."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
