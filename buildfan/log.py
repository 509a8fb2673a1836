"""structlog set-up: readable on a terminal, one JSON object per line with `--log-format json`."""

from __future__ import annotations

import logging
import sys

import structlog


def configure(fmt: str = "auto", verbose: bool = False) -> None:
    """fmt: auto (console on a TTY, plain key=value otherwise), console, or json. Logs go to stderr."""
    level = logging.DEBUG if verbose else logging.INFO
    if fmt == "text":
        fmt = "plain"
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "plain"
    renderer: structlog.typing.Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=fmt == "console")
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
