"""The per-address limits and the summarising log, on a test clock."""

from __future__ import annotations

import logging
import time

from livevsr.limits import FailureDelay, RateLimiter
from livevsr.telemetry.logs import RepeatSummary


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_rate_limiter_allows_a_burst_then_the_rate_per_address() -> None:
    clock = Clock()
    limiter = RateLimiter(rate_per_s=1.0, burst=3, clock=clock)
    assert [limiter.allow("a") for _ in range(4)] == [True, True, True, False]
    assert limiter.allow("b")  # another address has its own bucket
    assert limiter.retry_after_s("a") > 0
    clock.now = 1.0
    assert limiter.allow("a") and not limiter.allow("a")


def test_failure_delay_grows_and_forgets() -> None:
    clock = Clock()
    delay = FailureDelay(first_s=0.25, max_s=1.0, window_s=60.0, clock=clock)
    assert [delay.failed("a") for _ in range(5)] == [0.0, 0.25, 0.5, 1.0, 1.0]
    assert delay.failed("b") == 0.0  # a typo from another address costs nothing
    clock.now = 120.0
    assert delay.failed("a") == 0.0


def test_repeat_summary_logs_the_first_then_one_count_per_interval(caplog) -> None:  # noqa: ANN001
    logger = logging.getLogger("test.summary")
    summary = RepeatSummary(logger, interval_s=0.2)
    with caplog.at_level(logging.WARNING, logger="test.summary"):
        for _ in range(300):
            summary.event(logging.WARNING, "publish refused: wrong key", "10.0.0.1", "refused 10.0.0.1: wrong key")
        summary.event(logging.WARNING, "publish refused: wrong key", "10.0.0.2", "refused 10.0.0.2: wrong key")
        time.sleep(0.5)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[:2] == ["refused 10.0.0.1: wrong key", "refused 10.0.0.2: wrong key"]
    assert "299 more from 10.0.0.1 in the last 0.2 s: publish refused: wrong key" in lines
    assert len(lines) == 3
    summary.close()
