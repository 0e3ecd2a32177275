"""Fan one rendition's encoded packets (or a stream's Opus audio) out to every viewer, on the event loop.

Each subscriber has a small queue. A slow subscriber never slows the others: when its queue is
full it is cleared and the subscriber skips ahead to the next keyframe (and asks for one).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import av

from livevsr.telemetry.timing import FrameTiming

SUBSCRIBER_QUEUE_PACKETS = 8  # ~0.25 s at 30 fps; more would only add latency
AUDIO_QUEUE_PACKETS = 64  # ~1.3 s of 20 ms Opus: audio is released in bursts, one per engine chunk


@dataclass(slots=True)
class EncodedFrame:
    """One encoded access unit and, for the upscaled rendition, the timing of its frame."""

    packet: av.Packet
    timing: FrameTiming | None = None

    @property
    def is_keyframe(self) -> bool:
        return self.packet.is_keyframe


class Subscriber:
    def __init__(self, broadcaster: Broadcaster, queue_packets: int) -> None:
        self._broadcaster = broadcaster
        self.queue: asyncio.Queue[EncodedFrame | None] = asyncio.Queue(maxsize=queue_packets)
        self.waiting_for_keyframe = True  # a decoder can only start at an IDR
        self.skipped = 0

    def offer(self, packet: EncodedFrame) -> None:
        if self.waiting_for_keyframe:
            if not packet.is_keyframe:
                return
            self.waiting_for_keyframe = False
        if self.queue.full():
            # Too slow: drop what is queued and resume at the next keyframe.
            while not self.queue.empty():
                self.queue.get_nowait()
                self.skipped += 1
            self.waiting_for_keyframe = True
            self._broadcaster.request_keyframe()
            if not packet.is_keyframe:
                return
            self.waiting_for_keyframe = False
        self.queue.put_nowait(packet)

    async def recv(self) -> EncodedFrame | None:
        """The next encoded frame, or None once the subscription is closed."""
        return await self.queue.get()

    def close(self) -> None:
        self._broadcaster.unsubscribe(self)
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(None)


class Broadcaster:
    """One rendition of one stream. ``publish`` must be called on the event loop."""

    def __init__(
        self, request_keyframe: Callable[[], None], queue_packets: int = SUBSCRIBER_QUEUE_PACKETS
    ) -> None:
        self._request_keyframe = request_keyframe
        self._queue_packets = queue_packets
        self._subscribers: set[Subscriber] = set()

    def set_keyframe_requester(self, request_keyframe: Callable[[], None]) -> None:
        self._request_keyframe = request_keyframe

    def request_keyframe(self) -> None:
        self._request_keyframe()

    def subscribe(self) -> Subscriber:
        sub = Subscriber(self, self._queue_packets)
        self._subscribers.add(sub)
        self._request_keyframe()
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self._subscribers.discard(sub)

    def publish(self, packet: EncodedFrame) -> None:
        for sub in list(self._subscribers):
            sub.offer(packet)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)
