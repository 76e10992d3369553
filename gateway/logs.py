"""Structured logs on stderr: JSON lines, except readable `key=value` lines when stderr is a terminal;
`BACKSAAS_LOG_FORMAT=json|console` chooses either way (e.g. JSON in a terminal to pipe into `jq`).

A line logged with an exception (`log.exception`, `exc_info=...`) carries it: in JSON as `exception`, a
list of `{exc_type, exc_value, frames: [{filename, lineno, name}]}` (the exception and what caused it),
with the request's `request_id` beside it, so a 500 can be diagnosed from the log alone. Local variables
are never written (they hold passwords, tokens and rows).

JSON lines are rendered by orjson (a tenth of the standard library's time: every request writes an access
line), with the standard library as the fallback for what orjson refuses (an integer past 64 bits), and
stamped by `UtcStamper`, which formats the date and time once a second.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

import orjson
import structlog


def configure_logging(level: str | None = None, stream: TextIO | None = None) -> None:
    """Configure structlog once per process; `stream` is where lines go (stderr, looked up now)."""
    level_name = (level or os.environ.get("BACKSAAS_LOG_LEVEL", "info")).upper()
    chosen = os.environ.get("BACKSAAS_LOG_FORMAT", "").lower()
    console = chosen == "console" or (chosen != "json" and sys.stderr.isatty())
    renderer = structlog.dev.ConsoleRenderer() if console else structlog.processors.JSONRenderer(serializer=json_line)
    # the console renderer formats exceptions itself; JSON gets them as data, before it is rendered
    exceptions = [] if console else [structlog.processors.ExceptionRenderer(
        structlog.tracebacks.ExceptionDictTransformer(show_locals=False, use_rich=False))]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            UtcStamper(),
            *exceptions,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level_name, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=stream or sys.stderr),
        cache_logger_on_first_use=True,
    )


def json_line(event: dict[str, Any], default: Callable[[Any], Any]) -> str:
    """One log line's JSON (`JSONRenderer`'s serializer; `default` renders what JSON has no type for)."""
    try:
        return orjson.dumps(event, default=default, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:  # orjson.JSONEncodeError: e.g. an integer past 64 bits, which the standard library writes
        return json.dumps(event, default=default)


class UtcStamper:
    """`timestamp`: ISO 8601 in UTC with microseconds (`2025-01-31T12:00:00.123456Z`), as structlog's
    `TimeStamper(fmt="iso", utc=True)` writes it but for a whole second, which keeps its `.000000`; the part
    before the fraction is formatted once a second, not for every line."""

    __slots__ = ("prefix", "second")

    def __init__(self) -> None:
        self.second, self.prefix = -1, ""

    def __call__(self, logger: Any, name: str, event: dict[str, Any]) -> dict[str, Any]:
        now = time.time()
        second = int(now)
        if second != self.second:
            self.second, self.prefix = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        event["timestamp"] = f"{self.prefix}.{int((now - second) * 1_000_000):06d}Z"
        return event
