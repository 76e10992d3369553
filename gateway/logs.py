"""Structured logs on stderr: JSON lines, except readable `key=value` lines when stderr is a terminal;
`BACKSAAS_LOG_FORMAT=json|console` chooses either way (e.g. JSON in a terminal to pipe into `jq`)."""

from __future__ import annotations

import logging
import os
import sys
from typing import TextIO

import structlog


def configure_logging(level: str | None = None, stream: TextIO | None = None) -> None:
    """Configure structlog once per process; `stream` is where lines go (stderr, looked up now)."""
    level_name = (level or os.environ.get("BACKSAAS_LOG_LEVEL", "info")).upper()
    chosen = os.environ.get("BACKSAAS_LOG_FORMAT", "").lower()
    console = chosen == "console" or (chosen != "json" and sys.stderr.isatty())
    renderer = structlog.dev.ConsoleRenderer() if console else structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level_name, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=stream or sys.stderr),
        cache_logger_on_first_use=True,
    )
