"""structlog configuration: JSON lines (or console) with bound context fields."""

from __future__ import annotations

import logging
import sys

import structlog


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    """Configure structlog once per process. Input text is only ever logged at DEBUG."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        # Each lazy logger is assembled once, on its first use, instead of on every call (a
        # filtered-out debug line then costs nothing). configure_logging runs first in the server.
        cache_logger_on_first_use=True,
    )


def get_logger(**fields: object) -> structlog.typing.FilteringBoundLogger:
    """A lazy logger: safe at module level, it follows configure_logging() called later."""
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger("bertserve", **fields)
    return logger
