"""FrameRing: the bounded buffer between the decoder and the engine worker.

Live streams use the ``drop`` policy: when the ring is full the oldest whole chunk is dropped and
counted, so latency never grows without bound and the engine keeps getting aligned chunks.
Files use ``block``: the producer waits, nothing is lost.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class RingClosed(Exception):
    """The ring was closed and holds nothing more."""


class FrameRing(Generic[T]):
    def __init__(
        self,
        capacity: int,
        policy: str = "drop",
        chunk: int = 1,
        on_drop: Callable[[list[T]], None] | None = None,
    ) -> None:
        if policy not in ("drop", "block"):
            raise ValueError(f"policy: expected 'drop' or 'block', got {policy!r}")
        # A chunk must fit, or a full ring could never hand one out.
        self.capacity = max(capacity, chunk)
        self.policy = policy
        self.chunk = chunk
        self._on_drop = on_drop
        self._items: deque[T] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self.dropped = 0

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    def set_chunk(self, chunk: int) -> None:
        with self._cond:
            self.chunk = chunk
            self.capacity = max(self.capacity, chunk)

    def put(self, item: T, timeout: float | None = None) -> bool:
        """Add one item. Returns False if the ring is closed (or ``block`` timed out)."""
        dropped: list[T] = []
        with self._cond:
            if self._closed:
                return False
            if len(self._items) >= self.capacity:
                if self.policy == "block":
                    if not self._cond.wait_for(
                        lambda: self._closed or len(self._items) < self.capacity, timeout
                    ):
                        return False
                    if self._closed:
                        return False
                else:
                    for _ in range(min(self.chunk, len(self._items))):
                        dropped.append(self._items.popleft())
                    self.dropped += len(dropped)
            self._items.append(item)
            self._cond.notify_all()
        if dropped and self._on_drop is not None:
            self._on_drop(dropped)
        return True

    def get_chunk(self, timeout: float | None = None) -> list[T] | None:
        """Take ``chunk`` items in order. None on timeout; after close, the remainder (possibly
        shorter than a chunk) and then ``RingClosed``."""
        with self._cond:
            ready = self._cond.wait_for(lambda: self._closed or len(self._items) >= self.chunk, timeout)
            if not ready:
                return None
            if len(self._items) >= self.chunk:
                out = [self._items.popleft() for _ in range(self.chunk)]
            elif self._items:
                out = list(self._items)
                self._items.clear()
            else:
                raise RingClosed
            self._cond.notify_all()
            return out

    def close(self) -> None:
        """No more puts; getters drain what is left, then get ``RingClosed``."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed
