"""Per-address limits against hostile clients: a token bucket for session creation, and a growing
delay before refusing wrong keys (RTMP, WHIP and the HTTP tokens share one). Plain bookkeeping on a
clock, used from the event loop."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from livevsr.telemetry.logs import RepeatSummary

if TYPE_CHECKING:
    from livevsr.config import HTTPConfig

Clock = Callable[[], float]


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """At most ``burst`` actions at once per key, refilled at ``rate_per_s``.

    A viewer opening the page (one or two sessions, a few reconnects) never notices; a client
    creating sessions in a loop gets 429 instead of making every other viewer's stream stutter.
    """

    def __init__(self, rate_per_s: float, burst: int, clock: Clock = time.monotonic) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def allow(self, key: str) -> bool:
        """Take one token for ``key``; False (and nothing taken) when it has none left."""
        if self.rate_per_s <= 0:
            return True
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(float(self.burst), now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate_per_s)
        bucket.updated = now
        self._forget_full(now)
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        return True

    def retry_after_s(self, key: str) -> float:
        """Seconds until ``key`` has a token again (for the Retry-After header)."""
        bucket = self._buckets.get(key)
        if bucket is None or self.rate_per_s <= 0:
            return 0.0
        return max(0.0, (1.0 - bucket.tokens) / self.rate_per_s)

    def _forget_full(self, now: float) -> None:
        # Buckets that have refilled completely carry no information: keep the table small.
        if len(self._buckets) < 1024:
            return
        full_after = self.burst / self.rate_per_s
        self._buckets = {k: b for k, b in self._buckets.items() if now - b.updated < full_after}


class FailureDelay:
    """How long to wait before refusing an address that keeps presenting wrong keys.

    The first wrong key is refused at once (a typo costs nothing); each further one within
    ``window_s`` doubles the wait, up to ``max_s``. Guessing keys becomes slow without any lockout
    that an attacker could use against the real publisher.
    """

    def __init__(
        self, first_s: float = 0.25, max_s: float = 5.0, window_s: float = 60.0, clock: Clock = time.monotonic
    ) -> None:
        self.first_s = first_s
        self.max_s = max_s
        self.window_s = window_s
        self._clock = clock
        self._failures: dict[str, tuple[int, float]] = {}  # address -> (count, last failure)

    def failed(self, address: str) -> float:
        """Record a wrong key from ``address``; returns the delay before its refusal is sent."""
        now = self._clock()
        count, last = self._failures.get(address, (0, now))
        count = count + 1 if now - last < self.window_s else 1
        self._failures[address] = (count, now)
        if len(self._failures) > 4096:
            self._failures = {a: v for a, v in self._failures.items() if now - v[1] < self.window_s}
        if count == 1:
            return 0.0
        return min(self.max_s, self.first_s * 2 ** (count - 2))


@dataclass
class Defences:
    """What the HTTP handlers apply to every client: the session-creation rate per address, the
    growing delay for wrong keys, the body deadline, and one summarising log for refusals."""

    sessions: RateLimiter
    key_failures: FailureDelay
    summary: RepeatSummary
    body_timeout_s: float = 10.0

    @classmethod
    def from_config(cls, http: HTTPConfig) -> Defences:
        return cls(
            sessions=RateLimiter(http.sessions_per_ip_per_s, http.sessions_burst),
            key_failures=FailureDelay(),
            summary=RepeatSummary(logging.getLogger("livevsr.server")),
            body_timeout_s=http.body_timeout_s,
        )
