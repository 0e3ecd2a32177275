"""What the fuzz targets share: input splitting, the allocation check, and the atheris entry point.

Each ``fuzz_*.py`` beside this file is a standalone atheris script (libFuzzer flags on the command
line, corpus directories as arguments). ``livevsr fuzz`` and ``test_fuzz_short.py`` run them as
subprocesses. An input that raises anything but our own refusal classes is a crash.
"""

from __future__ import annotations

import random
import sys
import tracemalloc
from collections.abc import Callable

# The server's limits (RTMPConfig defaults); the targets fuzz with exactly these.
MAX_MESSAGE_BYTES = 8_000_000
MAX_CHUNK_SIZE = 65536

ALLOC_SAMPLE_EVERY = 257  # inputs; one in this many runs under tracemalloc (it is slow)
ALLOC_SLACK_BYTES = 1 << 20  # what parsing may allocate beyond a multiple of the input size
ALLOC_PER_INPUT_BYTE = 16  # copies of the input a parser may reasonably hold at once

_PIECE_SIZES = (1, 2, 3, 4, 5, 7, 11, 12, 64, 127, 128, 129, 1000, 1536, 4096)

_count = 0


def split_input(data: bytes) -> tuple[list[bytes], bytes]:
    """Cut ``data`` into the pieces a socket might deliver.

    The first two bytes seed the cuts (0 = one piece); the rest is the stream. Returns the pieces
    and the whole stream, so a target can compare piecewise with one-shot parsing.
    """
    if len(data) < 2:
        return [data[2:]], data[2:]
    seed, stream = int.from_bytes(data[:2], "big"), data[2:]
    if seed == 0:
        return [stream], stream
    rng = random.Random(seed)
    pieces: list[bytes] = []
    pos = 0
    while pos < len(stream):
        size = rng.choice(_PIECE_SIZES)
        pieces.append(stream[pos : pos + size])
        pos += size
    return pieces, stream


def check_allocations(run: Callable[[], object], data: bytes) -> None:
    """Run ``run`` under tracemalloc on a sample of inputs; fail if it allocated far beyond the input.

    A claimed 2**31-byte chunk or message must be refused, not allocated: anything that sized a
    buffer from a claim shows up here as a peak far above the input's own size.
    """
    global _count
    _count += 1
    if _count % ALLOC_SAMPLE_EVERY:
        run()
        return
    tracemalloc.start()
    try:
        run()
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    limit = ALLOC_PER_INPUT_BYTE * len(data) + ALLOC_SLACK_BYTES
    if peak > limit:
        raise AssertionError(f"allocated {peak} bytes for a {len(data)}-byte input (limit {limit})")


def fuzz(test_one_input: Callable[[bytes], None]) -> None:
    """Hand control to libFuzzer (``sys.argv`` carries its flags and corpus directories)."""
    import atheris

    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
