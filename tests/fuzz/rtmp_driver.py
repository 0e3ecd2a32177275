"""Drive one RTMP server connection (``rtmp._Connection``) with bytes, without sockets.

The connection only needs ``readexactly``/``read`` from its reader and ``write``/``drain``/``close``
from its writer, so a scripted reader hands it the fuzzer's pieces one ``read`` at a time and a
writer collects what it answers. The real handshake, chunk reader, command handling and FLV
parsing run on a real event loop. ``run()`` turns any unexpected exception into an
"internal error" log line; the driver re-raises it so the fuzzer sees the crash.

Checks per connection: S2 echoes C1, exactly one "closed" line, no ERROR records, the accepted stream key never
logged, our replies parse as a chunk stream, the sink sees config before packets and nothing after
``close``, and the reply volume stays proportional to what came in.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fuzzlib import MAX_CHUNK_SIZE, MAX_MESSAGE_BYTES

from livevsr.config import RTMPConfig
from livevsr.errors import IngestError
from livevsr.ingest import rtmp
from livevsr.ingest.base import AudioPacket, VideoPacket
from livevsr.ingest.chunk import ChunkReader

KEY = "fuzz-secret-key"  # the one stream key the fake authority accepts (the captured publishes use it)
APP = "live"
HANDSHAKE = b"\x03" + bytes(2 * rtmp.HANDSHAKE_BYTES)  # C0 C1 C2 of a plain client


class _Reader:
    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = [p for p in pieces if p]
        self.buf = b""

    async def readexactly(self, n: int) -> bytes:
        while len(self.buf) < n and self.pieces:
            self.buf += self.pieces.pop(0)
        if len(self.buf) < n:
            partial, self.buf = self.buf, b""
            raise asyncio.IncompleteReadError(partial, n)
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    async def read(self, n: int) -> bytes:
        if not self.buf and self.pieces:
            self.buf = self.pieces.pop(0)
        out, self.buf = self.buf[:n], self.buf[n:]
        return out


class _Transport:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True

    def get_write_buffer_size(self) -> int:
        return 0  # a peer that reads everything we send


class _Writer:
    def __init__(self) -> None:
        self.out = bytearray()
        self.transport = _Transport()

    def write(self, data: bytes) -> None:
        self.out += data

    async def drain(self) -> None:
        pass

    def close(self) -> None:
        self.transport.closed = True

    async def wait_closed(self) -> None:
        pass


class _Sink:
    def __init__(self) -> None:
        self.closed = False
        self.have_video_config = False
        self.have_audio_config = False

    def _alive(self, what: str) -> None:
        if self.closed:
            raise AssertionError(f"sink.{what} after close")

    def video_config(self, codec: str, extradata: bytes | None) -> None:
        self._alive("video_config")
        if codec != "h264" or not isinstance(extradata, bytes):
            raise AssertionError(f"video_config({codec!r}, {type(extradata).__name__})")
        self.have_video_config = True

    def video_packet(self, packet: VideoPacket) -> None:
        self._alive("video_packet")
        if not self.have_video_config or not packet.data or not isinstance(packet.data, bytes):
            raise AssertionError("video packet before config, or empty")

    def audio_config(self, codec: str, extradata: bytes | None, sample_rate: int, channels: int) -> None:
        self._alive("audio_config")
        if codec != "aac" or not isinstance(sample_rate, int) or not isinstance(channels, int):
            raise AssertionError(f"audio_config({codec!r}, ..., {sample_rate!r}, {channels!r})")
        self.have_audio_config = True

    def audio_packet(self, packet: AudioPacket) -> None:
        self._alive("audio_packet")
        if not self.have_audio_config or not packet.data:
            raise AssertionError("audio packet before config, or empty")

    def close(self, reason: str) -> None:
        self._alive("close")
        self.closed = True


class _Authority:
    def __init__(self) -> None:
        self.sinks: list[_Sink] = []

    def open_publish(self, key: str, source: str) -> _Sink:
        if key != KEY:
            raise IngestError("unknown stream key")
        sink = _Sink()
        self.sinks.append(sink)
        return sink


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


_loop = asyncio.new_event_loop()
_records = _Records()
_log = logging.getLogger(rtmp.__name__)
_log.addHandler(_records)
_log.setLevel(logging.DEBUG)
_log.propagate = False
_config = RTMPConfig(
    listen="127.0.0.1:0", app=APP, max_chunk_size=MAX_CHUNK_SIZE, max_message_bytes=MAX_MESSAGE_BYTES
)


def run_connection(pieces: list[bytes]) -> None:
    """Run one connection over ``pieces`` to its end; raise on anything but a clean close."""
    authority = _Authority()
    server: Any = rtmp.RTMPServer(_config, authority)
    writer = _Writer()
    conn = rtmp._Connection(server, _Reader(pieces), writer, "192.0.2.1:4000")  # type: ignore[arg-type]
    _records.records.clear()
    _loop.run_until_complete(conn.run())
    records, _records.records = _records.records, []

    for record in records:
        if record.levelno >= logging.ERROR:
            if record.exc_info and record.exc_info[1] is not None:
                raise record.exc_info[1]
            raise AssertionError(f"ERROR logged: {record.getMessage()}")
    lines = [r.getMessage() for r in records]
    closed = [line for line in lines if " closed: " in line]
    if len(closed) != 1:
        raise AssertionError(f"{len(closed)} 'closed' lines: {closed}")
    if authority.sinks:
        leaked = [line for line in lines if KEY in line]
        if leaked:
            raise AssertionError(f"stream key logged: {leaked[0]}")
        if not all(sink.closed for sink in authority.sinks):
            raise AssertionError("a publish was never closed")
    received = sum(len(p) for p in pieces)
    sent = b"".join(pieces)
    hs = rtmp.HANDSHAKE_BYTES
    if len(writer.out) >= 1 + 2 * hs and writer.out[: 1 + 2 * hs][1 + hs :] != sent[1 : 1 + hs]:
        raise AssertionError("S2 does not echo C1")
    if len(writer.out) > 8192 + 8 * received:
        raise AssertionError(f"answered {len(writer.out)} bytes to {received}")
    if len(writer.out) > 1 + 2 * rtmp.HANDSHAKE_BYTES:
        replies = ChunkReader(1 << 24, 1 << 24)
        replies.feed(bytes(writer.out[1 + 2 * rtmp.HANDSHAKE_BYTES :]))
