"""Chunk stream reassembly and writing: fmt 0-3 headers, extended timestamps, interleaving, limits."""

from __future__ import annotations

import random
import struct
import tracemalloc

import pytest

from livevsr.ingest.chunk import (
    AUDIO,
    COMMAND_AMF0,
    SET_CHUNK_SIZE,
    VIDEO,
    ChunkError,
    ChunkReader,
    ChunkWriter,
    Message,
)

MAX_MESSAGE = 1_000_000
MAX_CHUNK = 65536


def reader() -> ChunkReader:
    return ChunkReader(MAX_MESSAGE, MAX_CHUNK)


def feed_bytewise(r: ChunkReader, data: bytes) -> list[Message]:
    out: list[Message] = []
    for i in range(len(data)):
        out += r.feed(data[i : i + 1])
    return out


def test_fmt0_then_fmt3_continuation_spec_example() -> None:
    # RTMP spec 5.3.2.2: a 307-byte video message in 128-byte chunks: fmt 0, fmt 3, fmt 3.
    payload = bytes(range(256)) + bytes(51)
    data = (
        b"\x04" + (1000).to_bytes(3, "big") + (307).to_bytes(3, "big") + b"\x09" + (1).to_bytes(4, "little")
        + payload[:128] + b"\xc4" + payload[128:256] + b"\xc4" + payload[256:]
    )  # fmt: skip
    for messages in (reader().feed(data), feed_bytewise(reader(), data)):
        assert messages == [Message(csid=4, type_id=VIDEO, stream_id=1, timestamp=1000, payload=payload)]


def test_fmt1_fmt2_fmt3_timestamp_deltas() -> None:
    # Spec 5.3.2.1: audio on one chunk stream, fmt 0 then fmt 2 then fmt 3 (same delta), then fmt 1.
    audio = b"A" * 32
    data = (
        b"\x03" + (1000).to_bytes(3, "big") + (32).to_bytes(3, "big") + b"\x08" + (1).to_bytes(4, "little")
        + audio
        + b"\x83" + (20).to_bytes(3, "big") + audio  # fmt 2: delta 20
        + b"\xc3" + audio  # fmt 3: same delta again
        + b"\x43" + (5).to_bytes(3, "big") + (3).to_bytes(3, "big") + b"\x09" + b"xyz"  # fmt 1: delta 5
    )  # fmt: skip
    messages = reader().feed(data)
    assert [(m.timestamp, m.type_id, m.stream_id, len(m.payload)) for m in messages] == [
        (1000, AUDIO, 1, 32), (1020, AUDIO, 1, 32), (1040, AUDIO, 1, 32), (1045, VIDEO, 1, 3)
    ]  # fmt: skip


def test_fmt3_after_fmt0_repeats_the_absolute_timestamp_as_delta() -> None:
    # Spec: a type-3 chunk following a type-0 chunk uses the type-0 timestamp as its delta.
    data = b"\x03" + (40).to_bytes(3, "big") + (1).to_bytes(3, "big") + b"\x08" + bytes(4) + b"a" + b"\xc3" + b"b"
    assert [m.timestamp for m in reader().feed(data)] == [40, 80]


def test_extended_timestamp_is_repeated_on_continuation_chunks() -> None:
    ts = 0x01234567
    payload = bytes(300)
    ext = struct.pack(">I", ts)
    data = (
        b"\x06" + b"\xff\xff\xff" + (300).to_bytes(3, "big") + b"\x09" + (1).to_bytes(4, "little") + ext
        + payload[:128] + b"\xc6" + ext + payload[128:256] + b"\xc6" + ext + payload[256:]
    )  # fmt: skip
    for messages in (reader().feed(data), feed_bytewise(reader(), data)):
        assert [(m.timestamp, len(m.payload)) for m in messages] == [(ts, 300)]


def test_interleaved_chunk_streams_and_two_and_three_byte_chunk_stream_ids() -> None:
    writer = ChunkWriter(chunk_size=100)
    video = bytes(random.Random(1).randbytes(450))
    audio = bytes(random.Random(2).randbytes(230))
    v = writer.write(70, VIDEO, 1, 10, video)  # 2-byte basic header (64..319)
    a = writer.write(1000, AUDIO, 1, 12, audio)  # 3-byte basic header
    v_chunks = _split_chunks(v, header_first=1 + 1 + 11, header_next=2, body=100)
    a_chunks = _split_chunks(a, header_first=3 + 11, header_next=3, body=100)
    mixed = b"".join(x for pair in zip(v_chunks, a_chunks + [b""] * 5, strict=False) for x in pair)
    r = ChunkReader(MAX_MESSAGE, MAX_CHUNK)
    r.chunk_size = 100
    messages = r.feed(mixed)
    assert sorted((m.csid, m.timestamp, m.payload) for m in messages) == [(70, 10, video), (1000, 12, audio)]


def _split_chunks(data: bytes, header_first: int, header_next: int, body: int) -> list[bytes]:
    chunks = [data[: header_first + body]]
    pos = header_first + body
    while pos < len(data):
        chunks.append(data[pos : pos + header_next + body])
        pos += header_next + body
    return chunks


def test_writer_round_trip_with_header_compression_and_extended_timestamps() -> None:
    rng = random.Random(7)
    writer = ChunkWriter(chunk_size=128)
    sent: list[Message] = []
    ts = 0xFFFF00  # crosses into extended timestamps
    stream = bytearray()
    for i in range(200):
        type_id = VIDEO if i % 3 else AUDIO
        csid = 6 if type_id == VIDEO else 4
        ts += rng.choice((0, 33, 33, 34, 200))
        payload = rng.randbytes(rng.choice((0, 5, 128, 129, 700, 4000)))
        sent.append(Message(csid, type_id, 1, ts, payload))
        stream += writer.write(csid, type_id, 1, ts, payload)
    assert reader().feed(bytes(stream)) == sent
    parts = [bytes(stream[i : i + 97]) for i in range(0, len(stream), 97)]
    r = reader()
    assert [m for p in parts for m in r.feed(p)] == sent


def test_set_chunk_size_applies_to_the_next_chunk() -> None:
    w = ChunkWriter(chunk_size=128)
    data = w.write(2, SET_CHUNK_SIZE, 0, 0, struct.pack(">I", 4096))
    w.chunk_size = 4096
    data += w.write(6, VIDEO, 1, 0, bytes(3000))
    r = reader()
    messages = r.feed(data)
    assert [m.type_id for m in messages] == [SET_CHUNK_SIZE, VIDEO]
    assert r.chunk_size == 4096 and len(messages[1].payload) == 3000


@pytest.mark.parametrize(
    ("size", "message"),
    [
        (0, "chunk size 0; it must be 1..2147483647"),
        (1 << 31, "chunk size 2147483648; it must be"),
        (MAX_CHUNK + 1, f"chunk size {MAX_CHUNK + 1}, above rtmp.max_chunk_size {MAX_CHUNK}"),
    ],
)
def test_set_chunk_size_limits(size: int, message: str) -> None:
    data = ChunkWriter().write(2, SET_CHUNK_SIZE, 0, 0, struct.pack(">I", size))
    with pytest.raises(ChunkError, match=message):
        reader().feed(data)


def test_oversize_message_claim_is_refused_before_allocating() -> None:
    # A header claiming 2**24 - 1 bytes; no body follows. Must fail from the header alone.
    header = b"\x06" + bytes(3) + b"\xff\xff\xff" + b"\x09" + (1).to_bytes(4, "little")
    tracemalloc.start()
    try:
        with pytest.raises(ChunkError, match="16777215-byte message, above rtmp.max_message_bytes 1000000"):
            reader().feed(header)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 100_000


def test_message_body_grows_with_arrival_not_with_the_claim() -> None:
    r = ChunkReader(max_message_bytes=900_000, max_chunk_size=MAX_CHUNK)
    header = b"\x06" + bytes(3) + (900_000).to_bytes(3, "big") + b"\x09" + (1).to_bytes(4, "little")
    tracemalloc.start()
    try:
        assert r.feed(header + bytes(128)) == []
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 100_000


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x46" + bytes(7), "chunk stream 6 starts with a type-1 header"),
        (b"\xc6", "chunk stream 6 starts with a type-3 header"),
        (
            b"\x06" + bytes(3) + (200).to_bytes(3, "big") + b"\x09" + bytes(4) + bytes(128) + b"\x86" + bytes(3),
            "type-2 header on chunk stream 6 while a message there is incomplete",
        ),
    ],
)
def test_protocol_violations(data: bytes, message: str) -> None:
    with pytest.raises(ChunkError, match=message):
        reader().feed(data)


def test_abort_discards_a_partial_message() -> None:
    w = ChunkWriter(chunk_size=128)
    partial = w.write(6, VIDEO, 1, 0, bytes(300))[: 12 + 128]
    abort = ChunkWriter().write(2, 2, 0, 0, struct.pack(">I", 6))
    fresh = ChunkWriter().write(6, COMMAND_AMF0, 1, 5, b"hello")
    messages = reader().feed(partial + abort + fresh)
    assert [(m.type_id, m.payload) for m in messages] == [(2, struct.pack(">I", 6)), (COMMAND_AMF0, b"hello")]


def test_claimed_2_31_chunk_size_and_big_message_never_allocate() -> None:
    # The largest chunk size a config allows; a peer then claims 2**31 and 2**31 - 1, and a 7 MB
    # message arrives as 100 bytes. Nothing may be sized from a claim.
    r = ChunkReader(max_message_bytes=8_000_000, max_chunk_size=16_777_215)
    tracemalloc.start()
    try:
        for size, message in ((1 << 31, "it must be 1..2147483647"), ((1 << 31) - 1, "above rtmp.max_chunk_size")):
            with pytest.raises(ChunkError, match=message):
                ChunkReader(8_000_000, 16_777_215).feed(ChunkWriter().write(2, SET_CHUNK_SIZE, 0, 0, struct.pack(">I", size)))
        assert [m.type_id for m in r.feed(ChunkWriter().write(2, SET_CHUNK_SIZE, 0, 0, struct.pack(">I", 16_777_215)))] == [SET_CHUNK_SIZE]
        header = b"\x06" + bytes(3) + (7_000_000).to_bytes(3, "big") + b"\x09" + (1).to_bytes(4, "little")
        assert r.feed(header + bytes(100)) == []
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert r.chunk_size == 16_777_215
    assert peak < 100_000, f"peak {peak} bytes"


def test_chunk_stream_count_cap() -> None:
    w = ChunkWriter()
    data = b"".join(w.write(csid, AUDIO, 1, 0, b"\xaf\x01") for csid in range(2, 2 + 65))
    with pytest.raises(ChunkError, match="more than 64 chunk streams on one connection"):
        reader().feed(data)


def test_incomplete_messages_across_chunk_streams_are_capped() -> None:
    # Each stream sends the first 32 KiB chunk of a 64 KiB message and never the rest: the fifth
    # would hold more than twice max_message_bytes in partial bodies.
    r = ChunkReader(max_message_bytes=65536, max_chunk_size=65536)
    r.feed(ChunkWriter().write(2, SET_CHUNK_SIZE, 0, 0, struct.pack(">I", 32768)))
    firsts = [ChunkWriter(chunk_size=32768).write(csid, VIDEO, 1, 0, bytes(65536))[: 12 + 32768] for csid in range(3, 8)]
    for first in firsts[:4]:
        assert r.feed(first) == []
    with pytest.raises(ChunkError, match="more than 131072 bytes of incomplete messages buffered"):
        r.feed(firsts[4])
