"""structlog configuration: JSON lines (or console) with bound context fields."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable

import structlog


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    """Configure structlog once per process. Input text is only ever logged at DEBUG.

    Libraries' own logging (Ray, gRPC, asyncio) and Python warnings go through the same renderer,
    so that with `fmt="json"` every line on stderr is one JSON object."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    _route_stdlib_logging(renderer, max(numeric, logging.WARNING))
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


def _route_stdlib_logging(renderer: structlog.types.Processor, level: int) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processor=renderer,
            foreign_pre_chain=[
                structlog.stdlib.add_logger_name,
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.captureWarnings(True)
    adopt_library_logger("ray")


def adopt_library_logger(name: str) -> None:
    """Send a library logger that installs its own handlers (Ray does, on import and in
    `ray.init`) through the root handler configured above."""
    logger = logging.getLogger(name)
    for handler in logger.handlers[:]:
        logger.removeHandler(handler)
    logger.propagate = True


def get_logger(**fields: object) -> structlog.typing.FilteringBoundLogger:
    """A lazy logger: safe at module level, it follows configure_logging() called later."""
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger("bertserve", **fields)
    return logger


class Throttle:
    """At most one log line per key and `interval_s` for events that a client can repeat at will
    (a rejected token on every call). `note(key)` returns None when the line is to be left out,
    else how many lines of that key were left out since the last one (0 for the first)."""

    def __init__(self, interval_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval_s = interval_s
        self._clock = clock
        self._logged_at: dict[str, float] = {}
        self._left_out: dict[str, int] = {}

    def note(self, key: str) -> int | None:
        now = self._clock()
        last = self._logged_at.get(key)
        if last is not None and now - last < self._interval_s:
            self._left_out[key] = self._left_out.get(key, 0) + 1
            return None
        self._logged_at[key] = now
        return self._left_out.pop(key, 0)

    def left_out(self) -> dict[str, int]:
        """The lines left out since each key's last one, forgetting them (for a final summary)."""
        counts, self._left_out = {k: n for k, n in self._left_out.items() if n}, {}
        return counts
