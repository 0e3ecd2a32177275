#!/usr/bin/env python3
"""Fuzz an RTMP server connection after a valid handshake: chunk stream, commands, publish, media.

Input: two bytes seeding where the stream is cut (``fuzzlib.split_input``), then the client's
post-handshake bytes (the seeds are real publishes, captured). The driver sends a plain C0/C1/C2
first, so the fuzzer spends its effort on the state machine: connect, createStream, publish with
the accepted key ``rtmp_driver.KEY``, metadata, AVC/AAC config and frames, aggregates, control.
"""

from __future__ import annotations

import atheris

with atheris.instrument_imports(include=["livevsr"]):
    from rtmp_driver import HANDSHAKE, run_connection

from fuzzlib import check_allocations, fuzz, split_input


def test_one_input(data: bytes) -> None:
    pieces, _ = split_input(data)
    check_allocations(lambda: run_connection([HANDSHAKE, *pieces]), data)


if __name__ == "__main__":
    fuzz(test_one_input)
