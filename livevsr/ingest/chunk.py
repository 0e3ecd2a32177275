"""RTMP chunk stream: split messages into chunks and reassemble them (Adobe RTMP spec, section 5.3).

``ChunkReader`` is sans-IO: feed it bytes as they arrive and it returns whole messages. It applies
Set Chunk Size and Abort itself, because they change how the very next bytes parse. Every length a
peer claims is checked against the configured caps before anything is allocated, and message bodies
grow chunk by chunk, so a claimed 16 MiB message costs nothing until its bytes really arrive.

``ChunkWriter`` turns messages into chunks, compressing headers (fmt 1-3) the way real clients do.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from livevsr.errors import IngestError

DEFAULT_CHUNK_SIZE = 128  # bytes; both directions start here until a Set Chunk Size
MAX_CHUNK_STREAMS = 64  # distinct chunk stream ids per connection; clients use about six
_EXTENDED = 0xFFFFFF  # a 3-byte timestamp field of this value means "read 4 more bytes"

# Message type ids (RTMP spec 5.4, 6.1, 7.1)
SET_CHUNK_SIZE = 1
ABORT = 2
ACKNOWLEDGEMENT = 3
USER_CONTROL = 4
WINDOW_ACK_SIZE = 5
SET_PEER_BANDWIDTH = 6
AUDIO = 8
VIDEO = 9
DATA_AMF3 = 15
COMMAND_AMF3 = 17
DATA_AMF0 = 18
COMMAND_AMF0 = 20
AGGREGATE = 22

_U32 = struct.Struct(">I")


class ChunkError(IngestError):
    """The peer broke the chunk stream rules or a configured limit."""


@dataclass(slots=True)
class Message:
    """One reassembled RTMP message."""

    csid: int  # chunk stream id it arrived on
    type_id: int
    stream_id: int  # message stream id (0 = the connection, 1+ = streams made by createStream)
    timestamp: int  # ms, modulo 2**32
    payload: bytes


class _StreamState:
    """What a chunk stream id remembers between chunks (the fields fmt 1-3 headers omit)."""

    __slots__ = ("timestamp", "ts_field", "extended", "length", "type_id", "stream_id", "partial")

    def __init__(self) -> None:
        self.timestamp = 0  # absolute timestamp of the current (or last) message
        self.ts_field = 0  # last timestamp field: absolute after fmt 0, the delta after fmt 1/2
        self.extended = False  # the last fmt 0-2 header used the 4-byte extended timestamp
        self.length = 0
        self.type_id = 0
        self.stream_id = 0
        self.partial: bytearray | None = None  # body so far while a message spans chunks


class ChunkReader:
    """Reassembles messages from the client's chunk stream.

    ``max_message_bytes`` caps one message; ``max_chunk_size`` caps what Set Chunk Size may ask for.
    Violations raise ``ChunkError`` (an ``IngestError``) naming the value and the limit.
    """

    def __init__(self, max_message_bytes: int, max_chunk_size: int) -> None:
        self.max_message_bytes = max_message_bytes
        self.max_chunk_size = max_chunk_size
        self.chunk_size = DEFAULT_CHUNK_SIZE
        self._buf = bytearray()
        self._pos = 0
        self._streams: dict[int, _StreamState] = {}
        self._pending_bytes = 0  # sum of partial bodies across chunk streams

    def set_chunk_size(self, size: int) -> None:
        """Apply a Set Chunk Size from the peer (the top bit must be 0; 1..max_chunk_size)."""
        if size <= 0 or size >= 1 << 31:
            raise ChunkError(f"peer asked for chunk size {size}; it must be 1..2147483647")
        if size > self.max_chunk_size:
            raise ChunkError(
                f"peer asked for chunk size {size}, above rtmp.max_chunk_size {self.max_chunk_size}"
            )
        self.chunk_size = size

    def feed(self, data: bytes | bytearray | memoryview) -> list[Message]:
        """Add received bytes; return every message they complete, in arrival order."""
        self._buf += data
        out: list[Message] = []
        while True:
            message = self._next_chunk()
            if message is False:
                break
            if message is not None:
                out.append(message)
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        return out

    def _next_chunk(self) -> Message | None | bool:
        """Parse one chunk: a completed Message, None (chunk consumed, message incomplete) or False."""
        buf, pos, end = self._buf, self._pos, len(self._buf)
        if pos >= end:
            return False
        first = buf[pos]
        fmt, csid = first >> 6, first & 0x3F
        pos += 1
        if csid == 0:
            if end - pos < 1:
                return False
            csid = 64 + buf[pos]
            pos += 1
        elif csid == 1:
            if end - pos < 2:
                return False
            csid = 64 + buf[pos] + (buf[pos + 1] << 8)
            pos += 2

        state = self._streams.get(csid)
        if state is None:
            if fmt != 0:
                raise ChunkError(
                    f"chunk stream {csid} starts with a type-{fmt} header; the first must be type 0"
                )
            if len(self._streams) >= MAX_CHUNK_STREAMS:
                raise ChunkError(f"more than {MAX_CHUNK_STREAMS} chunk streams on one connection")
            state = _StreamState()
        header_len = (11, 7, 3, 0)[fmt]
        if end - pos < header_len:
            return False
        if fmt == 3:
            ts_field = state.ts_field
            extended = state.extended
            length = state.length
        else:
            ts_field = (buf[pos] << 16) | (buf[pos + 1] << 8) | buf[pos + 2]
            extended = ts_field == _EXTENDED
            length = state.length
            if fmt <= 1:
                length = (buf[pos + 3] << 16) | (buf[pos + 4] << 8) | buf[pos + 5]
        if extended:
            if end - pos - header_len < 4:
                return False
            ext_value = _U32.unpack_from(buf, pos + header_len)[0]
        pos_data = pos + header_len + (4 if extended else 0)

        continuing = state.partial is not None
        if continuing and fmt != 3:
            raise ChunkError(f"type-{fmt} header on chunk stream {csid} while a message there is incomplete")
        if fmt <= 1 and length > self.max_message_bytes:
            raise ChunkError(
                f"peer announced a {length}-byte message, above rtmp.max_message_bytes "
                f"{self.max_message_bytes}"
            )
        have = len(state.partial) if continuing else 0
        take = min(self.chunk_size, length - have)
        if end - pos_data < take:
            return False

        # The whole chunk is here: commit header fields.
        if csid not in self._streams:
            self._streams[csid] = state
        if not continuing:
            if fmt != 3:
                state.ts_field = ext_value if extended else ts_field
                state.extended = extended
            if fmt == 0:
                state.timestamp = state.ts_field
                state.stream_id = int.from_bytes(buf[pos + 7 : pos + 11], "little")
            else:
                state.timestamp = (state.timestamp + state.ts_field) & 0xFFFFFFFF
            if fmt <= 1:
                state.length = length
                state.type_id = buf[pos + 6]
        self._pos = pos_data + take

        if not continuing and take == length:
            return self._complete(csid, state, bytes(buf[pos_data : pos_data + take]))
        if not continuing:
            state.partial = bytearray()
        assert state.partial is not None
        if self._pending_bytes + take > 2 * self.max_message_bytes:
            raise ChunkError(f"more than {2 * self.max_message_bytes} bytes of incomplete messages buffered")
        state.partial += buf[pos_data : pos_data + take]
        self._pending_bytes += take
        if len(state.partial) < state.length:
            return None
        payload = bytes(state.partial)
        self._pending_bytes -= len(state.partial)
        state.partial = None
        return self._complete(csid, state, payload)

    def _complete(self, csid: int, state: _StreamState, payload: bytes) -> Message:
        message = Message(csid, state.type_id, state.stream_id, state.timestamp, payload)
        if message.type_id == SET_CHUNK_SIZE and message.stream_id == 0:
            self.set_chunk_size(_read_u32(payload, "Set Chunk Size"))
        elif message.type_id == ABORT and message.stream_id == 0:
            aborted = self._streams.get(_read_u32(payload, "Abort"))
            if aborted is not None and aborted.partial is not None:
                self._pending_bytes -= len(aborted.partial)
                aborted.partial = None
        return message


def _read_u32(payload: bytes, what: str) -> int:
    if len(payload) < 4:
        raise ChunkError(f"{what} message has {len(payload)} bytes; expected 4")
    return _U32.unpack_from(payload)[0]


class ChunkWriter:
    """Splits outgoing messages into chunks of ``chunk_size``, compressing headers like real clients.

    The first message on a chunk stream gets a type-0 header; later ones use type 1 (same stream
    id), 2 (same length and type) or 3 (same timestamp delta too). Continuation chunks are type 3,
    repeating the extended timestamp when the message used one.
    """

    def __init__(self, chunk_size: int = DEFAULT_CHUNK_SIZE, compress: bool = True) -> None:
        self.chunk_size = chunk_size
        self.compress = compress
        # csid -> (stream id, type, length, timestamp, timestamp field)
        self._last: dict[int, tuple[int, int, int, int, int]] = {}

    def write(self, csid: int, type_id: int, stream_id: int, timestamp: int, payload: bytes) -> bytes:
        """Return the chunks that carry one message on chunk stream ``csid`` (2..65599)."""
        if not 2 <= csid <= 65599:
            raise ValueError(f"chunk stream id must be 2..65599, got {csid}")
        if len(payload) > 0xFFFFFF:
            raise ValueError(f"an RTMP message holds at most 16777215 bytes, got {len(payload)}")
        timestamp &= 0xFFFFFFFF
        length = len(payload)
        last = self._last.get(csid) if self.compress else None
        fmt = 0
        ts_field = timestamp
        if last is not None and last[0] == stream_id and timestamp >= last[3]:
            delta = timestamp - last[3]
            ts_field = delta
            if (last[1], last[2]) != (type_id, length):
                fmt = 1
            elif delta != last[4]:
                fmt = 2
            else:
                fmt = 3
        self._last[csid] = (stream_id, type_id, length, timestamp, ts_field)
        extended = ts_field >= _EXTENDED
        out = bytearray(_basic_header(fmt, csid))
        if fmt <= 2:
            out += (_EXTENDED if extended else ts_field).to_bytes(3, "big")
        if fmt <= 1:
            out += length.to_bytes(3, "big")
            out.append(type_id)
        if fmt == 0:
            out += stream_id.to_bytes(4, "little")
        ext = _U32.pack(ts_field) if extended else b""
        out += ext
        view = memoryview(payload)
        out += view[: self.chunk_size]
        continuation = _basic_header(3, csid) + ext
        for start in range(self.chunk_size, length, self.chunk_size):
            out += continuation
            out += view[start : start + self.chunk_size]
        return bytes(out)


def _basic_header(fmt: int, csid: int) -> bytes:
    if csid < 64:
        return bytes([(fmt << 6) | csid])
    if csid < 320:
        return bytes([fmt << 6, csid - 64])
    return bytes([(fmt << 6) | 1, (csid - 64) & 0xFF, (csid - 64) >> 8])
