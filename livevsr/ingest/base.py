"""What every ingest source (RTMP, WHIP, pull) hands to the pipeline.

A source authenticates a publisher through an ``IngestAuthority`` (the stream manager) and then
feeds that publish session's ``IngestSink`` with compressed H.264 access units. Decoding happens
behind the sink, off the event loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(slots=True)
class VideoPacket:
    """One H.264 access unit as it arrived.

    ``data`` is AVCC (4-byte length-prefixed NAL units, as in FLV) when the session's
    ``video_config`` gave avcC extradata, or Annex-B (start codes) when it gave none.
    """

    data: bytes
    pts_ms: int  # presentation time on the source's millisecond clock
    dts_ms: int
    keyframe: bool
    recv_ns: int  # time.monotonic_ns() when the last byte of the access unit arrived


@dataclass(slots=True)
class AudioPacket:
    """One compressed audio frame (AAC raw or Opus), passed through untouched."""

    data: bytes
    pts_ms: int
    codec: str  # "aac" or "opus"
    recv_ns: int


class IngestSink(Protocol):
    """One publish session's receiving end. Methods are called on the event loop and must not block."""

    def video_config(self, codec: str, extradata: bytes | None) -> None:
        """A (new) decoder configuration: codec "h264"; extradata is the avcC record, or None for Annex-B."""

    def video_packet(self, packet: VideoPacket) -> None: ...

    def audio_config(self, codec: str, extradata: bytes | None, sample_rate: int, channels: int) -> None: ...

    def audio_packet(self, packet: AudioPacket) -> None: ...

    def close(self, reason: str) -> None:
        """The publisher went away (or was kicked); ``reason`` is one short human-readable phrase."""

    # Optional: ``closed`` (bool) and ``end_reason`` (str) tell a source that the server ended the
    # publish (an operator's kick, admission control, a reconnect replacing it); RTMP then hangs up.
    # Optional: ``async def drain(self) -> None`` waits while the pipeline wants the publisher held
    # back (lossless streams); a source that can pause reading (RTMP over TCP) awaits it.
    # Optional: ``refuse(reason: str)`` ends the publish as refused (e.g. an unsupported codec), so
    # the stream shows the reason instead of waiting; the source still calls ``close`` after it.


class IngestAuthority(Protocol):
    """Decides who may publish: implemented by the stream manager."""

    def open_publish(self, key: str, source: str) -> IngestSink:
        """Start a publish session for stream key ``key`` from ``source`` (e.g. "rtmp 1.2.3.4:5555").

        Raises ``IngestError`` with a short reason when the key is unknown or the stream is busy;
        the reason is safe to log and never contains the key.
        """
        ...
