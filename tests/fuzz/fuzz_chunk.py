#!/usr/bin/env python3
"""Fuzz RTMP chunk-stream reassembly with the server's limits, fed in arbitrary pieces.

Input: two bytes seeding where the stream is cut (see ``fuzzlib.split_input``), then the
post-handshake byte stream. Acceptable: messages, or ``ChunkError``. Checks:

- cutting is invisible: piecewise feeding yields the same messages, and the same error if any,
  as feeding the whole stream at once (after an error, a feed's earlier messages are dropped with
  the connection, so then one list need only be a prefix of the other);
- nothing grows from a claim: buffered bytes stay within what arrived, incomplete bodies within
  the configured cap, and a sample of inputs runs under tracemalloc (``check_allocations``);
- every message respects the caps (length, chunk size).
"""

from __future__ import annotations

import atheris

with atheris.instrument_imports(include=["livevsr"]):
    from livevsr.ingest.chunk import ChunkError, ChunkReader, Message

from fuzzlib import MAX_CHUNK_SIZE, MAX_MESSAGE_BYTES, check_allocations, fuzz, split_input


def _feed(pieces: list[bytes]) -> tuple[list[Message], str | None]:
    reader = ChunkReader(MAX_MESSAGE_BYTES, MAX_CHUNK_SIZE)
    messages: list[Message] = []
    received = 0
    try:
        for piece in pieces:
            received += len(piece)
            messages += reader.feed(piece)
            if len(reader._buf) > min(received, MAX_CHUNK_SIZE + 18):
                raise AssertionError(f"{len(reader._buf)} bytes buffered after {received} received")
            if not 0 <= reader._pending_bytes <= min(received, 2 * MAX_MESSAGE_BYTES):
                raise AssertionError(f"{reader._pending_bytes} bytes pending after {received} received")
            if not 1 <= reader.chunk_size <= MAX_CHUNK_SIZE:
                raise AssertionError(f"chunk size {reader.chunk_size} outside 1..{MAX_CHUNK_SIZE}")
    except ChunkError as exc:
        return messages, str(exc)
    return messages, None


def _key(m: Message) -> tuple[int, int, int, int, bytes]:
    return (m.csid, m.type_id, m.stream_id, m.timestamp, m.payload)


def _check(data: bytes) -> None:
    pieces, stream = split_input(data)
    messages, error = _feed(pieces)
    for m in messages:
        if len(m.payload) > MAX_MESSAGE_BYTES or not 0 <= m.timestamp < 1 << 32:
            raise AssertionError(f"message breaks a cap: {len(m.payload)} bytes, timestamp {m.timestamp}")
    if len(pieces) > 1:
        whole, whole_error = _feed([stream])
        got, want = [_key(m) for m in messages], [_key(m) for m in whole]
        if error is not None:
            n = min(len(got), len(want))
            got, want = got[:n], want[:n]
        if got != want or error != whole_error:
            raise AssertionError(
                f"cutting changed the result: {len(messages)} messages/{error!r} in {len(pieces)} pieces, "
                f"{len(whole)}/{whole_error!r} in one"
            )


def test_one_input(data: bytes) -> None:
    check_allocations(lambda: _check(data), data)


if __name__ == "__main__":
    fuzz(test_one_input)
