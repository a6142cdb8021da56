"""An asyncio event loop on virtual time, for unit tests of code that waits on timers.

When nothing is ready to run, the loop's clock jumps to its next timer instead of waiting for it:
`asyncio.sleep`, `wait_for` timeouts and `call_later` take no real time, everything that is not
waiting on a timer has run before the clock moves, and what a test sees at a given virtual time
does not depend on how busy the machine is. Code under test that reads time gets the loop's
(`loop.time`, passed as its injected clock). The clock starts at 0.

Only for code that waits on nothing outside the loop (no threads, sockets or subprocesses): while
it would wait for them, the clock jumps to the next timer (a test's own timeout, at worst).
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class _JumpingSelector:
    """The loop's selector, polled without waiting: a wait for a timer advances the clock."""

    def __init__(self, inner: selectors.BaseSelector, loop: VirtualTimeLoop) -> None:
        self._inner = inner
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        events = self._inner.select(0)
        if events or timeout == 0:
            return events
        if timeout is None:  # no timer at all: only outside events can wake the loop
            return self._inner.select(None)
        self._loop.advance(timeout)
        return []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        super().__init__()
        self._now = 0.0
        self._selector: Any = _JumpingSelector(self._selector, self)

    def time(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += max(0.0, seconds)


def run(coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
    """Run `coro` on a virtual-time loop, failing with TimeoutError after `timeout` virtual
    seconds (a test that deadlocks fails at once)."""
    loop = VirtualTimeLoop()
    try:
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(asyncio.wait_for(coro, timeout))
    finally:  # as asyncio.run ends
        left = asyncio.all_tasks(loop)
        for task in left:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        asyncio.set_event_loop(None)
        loop.close()


def now() -> float:
    """The running loop's time: the clock to inject into the code under test."""
    return asyncio.get_running_loop().time()


async def elapse(seconds: float) -> None:
    """Let `seconds` of virtual time pass: everything due meanwhile runs, in time order."""
    assert isinstance(asyncio.get_running_loop(), VirtualTimeLoop), "run the test with virtual_time.run"
    await asyncio.sleep(seconds)
