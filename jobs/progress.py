"""The progress line of the offline jobs: rows done of the total, rows/s, ETA, rows failed so far.

On a terminal, one line redrawn in place (stderr); otherwise a plain line every `every_s` seconds,
so that a log file gets a few lines rather than a stream of carriage returns.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

PLAIN_EVERY_S = 10.0
"""Seconds between two plain progress lines (no terminal)."""
DRAW_EVERY_S = 0.2
"""Least seconds between two redraws of the terminal line."""


def duration(seconds: float) -> str:
    whole = max(0, round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class RowProgress:
    """`update(done, failed)` as rows finish; `close()` at the end. `total` None: not known."""

    def __init__(
        self,
        total: int | None,
        what: str = "rows",
        *,
        stream: TextIO | None = None,
        tty: bool | None = None,
        enabled: bool = True,
        every_s: float = PLAIN_EVERY_S,
    ) -> None:
        self.total = total
        self.what = what
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.enabled = enabled
        self.every_s = every_s
        self.start = time.perf_counter()
        self._last = 0.0
        self._drawn = False
        self._shown: tuple[int, int] | None = None

    def line(self, done: int, failed: int, now: float | None = None) -> str:
        elapsed = (time.perf_counter() if now is None else now) - self.start
        rate = done / elapsed if elapsed > 0 else 0.0
        of = f"/{self.total}" if self.total is not None else ""
        parts = [f"{done}{of} {self.what}", f"{rate:.1f} {self.what}/s"]
        if self.total is not None and rate > 0 and done < self.total:
            parts.append(f"ETA {duration((self.total - done) / rate)}")
        parts.append(f"{failed} failed")
        return "  ".join(parts)

    def update(self, done: int, failed: int) -> None:
        if not self.enabled or (done, failed) == self._shown:
            return
        now = time.perf_counter()
        if now - self._last < (DRAW_EVERY_S if self.tty else self.every_s):
            return
        self._last = now
        self._shown = (done, failed)
        if self.tty:
            self.stream.write("\r\033[K" + self.line(done, failed, now))
            self._drawn = True
        else:
            self.stream.write(self.line(done, failed, now) + "\n")
        self.stream.flush()

    def close(self, done: int, failed: int) -> None:
        """The final line, on its own."""
        if not self.enabled:
            return
        text = self.line(done, failed)
        self.stream.write(("\r\033[K" if self._drawn else "") + text + "\n")
        self.stream.flush()
