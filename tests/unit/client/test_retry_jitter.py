"""The client's wait before a retry, with injected random draws and clock (no server, no sleeping):
decorrelated jitter above the server's pushback, full jitter without one, and the deadline rule."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from bertserve_client._rpc import PUSHBACK_KEY, RetryPolicy, _Attempts


class Rejected(grpc.RpcError):
    """A failed call as the client sees it: a code and, maybe, the pushback trailer."""

    def __init__(
        self, code: grpc.StatusCode = grpc.StatusCode.RESOURCE_EXHAUSTED, pushback: str | None = None
    ) -> None:
        self._code = code
        self._pushback = pushback

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return "rejected"

    def trailing_metadata(self) -> Any:
        return () if self._pushback is None else ((PUSHBACK_KEY, self._pushback),)


def draws(*values: float) -> Iterator[float]:
    return iter(values)


def policy(*values: float, **kwargs: object) -> RetryPolicy:
    values_left = draws(*values)
    return RetryPolicy(rand=lambda: next(values_left), **kwargs)  # type: ignore[arg-type]


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def test_a_retry_after_a_pushback_never_comes_sooner_than_it() -> None:
    assert policy(0.0).delay(Rejected(pushback="200"), 0) == pytest.approx(0.2)


def test_the_first_retry_after_a_pushback_is_spread_over_one_to_four_pushbacks() -> None:
    assert policy(0.5).delay(Rejected(pushback="200"), 0) == pytest.approx(0.5)
    assert policy(0.999).delay(Rejected(pushback="200"), 0) == pytest.approx(0.2 + 0.6 * 0.999)


def test_later_retries_spread_up_to_four_times_the_wait_before() -> None:
    # Decorrelated jitter: the window's top grows with the previous wait, its floor is the pushback.
    assert policy(1.0).delay(Rejected(pushback="100"), 1, previous=0.3) == pytest.approx(1.2)
    assert policy(0.0).delay(Rejected(pushback="100"), 1, previous=0.3) == pytest.approx(0.1)
    assert policy(0.5).delay(Rejected(pushback="100"), 2, previous=0.9) == pytest.approx(0.1 + 0.5 * 3.5)
    # A previous wait shorter than the new pushback: spread over one to four pushbacks again.
    assert policy(1.0).delay(Rejected(pushback="500"), 1, previous=0.05) == pytest.approx(2.0)


def test_callers_rejected_together_with_the_same_pushback_come_back_spread_out() -> None:
    waits = [policy(k / 10).delay(Rejected(pushback="100"), 0) or 0.0 for k in range(10)]
    assert waits == sorted(waits) and len(set(waits)) == 10
    assert min(waits) == pytest.approx(0.1) and max(waits) == pytest.approx(0.1 + 0.3 * 0.9)


def test_the_spread_is_capped_at_max_backoff_but_never_below_the_pushback() -> None:
    assert policy(1.0, max_backoff_s=2.0).delay(Rejected(pushback="1000"), 1, previous=3.0) == 2.0
    assert policy(0.5, max_backoff_s=2.0).delay(Rejected(pushback="1000"), 1, previous=3.0) == 1.5
    assert policy(1.0, max_backoff_s=2.0).delay(Rejected(pushback="4000"), 0) == 4.0


def test_with_a_spread_of_one_the_first_retry_waits_exactly_the_pushback() -> None:
    assert policy(0.7, pushback_spread=1.0).delay(Rejected(pushback="250"), 0) == 0.25
    with pytest.raises(ValueError, match="pushback_spread"):
        RetryPolicy(pushback_spread=0.5)


def test_without_a_pushback_the_backoff_is_full_jitter_and_exponential() -> None:
    unavailable = Rejected(grpc.StatusCode.UNAVAILABLE)
    assert policy(1.0).delay(unavailable, 0) == pytest.approx(0.1)
    assert policy(1.0, retries=10).delay(unavailable, 3, previous=0.2) == pytest.approx(0.8)
    assert policy(0.25, retries=10).delay(unavailable, 3) == pytest.approx(0.2)
    assert policy(1.0, retries=10).delay(unavailable, 8) == 5.0  # max_backoff_s
    assert policy(0.0).delay(unavailable, 2) == 0.0


def test_unavailable_with_a_pushback_waits_for_it_too() -> None:
    assert policy(0.0).delay(Rejected(grpc.StatusCode.UNAVAILABLE, "1500"), 0) == pytest.approx(1.5)


def test_attempts_pass_each_wait_on_as_the_previous_one() -> None:
    clock = Clock()
    attempts = _Attempts(policy(1.0, 1.0, 1.0, clock=clock), timeout=None)
    waits = []
    for _ in range(3):
        wait = attempts.wait(Rejected(pushback="100"))
        assert wait is not None
        waits.append(wait)
    assert waits == pytest.approx([0.4, 1.6, 5.0])  # the last one at max_backoff_s
    assert attempts.wait(Rejected(pushback="100")) is None  # three retries, the default


def test_no_retry_whose_drawn_wait_would_pass_the_deadline() -> None:
    clock = Clock()
    attempts = _Attempts(policy(1.0, 0.0, clock=clock), timeout=0.5)
    assert attempts.timeout() == 0.5
    # Drawn 0.8 s (four pushbacks): past the 0.5 s deadline, so no retry.
    assert attempts.wait(Rejected(pushback="200")) is None
    attempts = _Attempts(policy(0.0, 0.0, clock=clock), timeout=0.5)
    assert attempts.wait(Rejected(pushback="200")) == pytest.approx(0.2)
    clock.now += 0.2
    assert attempts.timeout() == pytest.approx(0.3)  # what is left of the one deadline
    clock.now += 0.25
    assert attempts.wait(Rejected(pushback="200")) is None  # 0.05 s left, the pushback is 0.2 s
