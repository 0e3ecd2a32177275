#!/usr/bin/env python3
"""Fuzz an RTMP server connection from its first byte: C0/C1/C2, then whatever follows.

Input: two bytes seeding where the stream is cut (``fuzzlib.split_input``), then the bytes a
client sends. The whole connection runs (``rtmp_driver``); it must end with one "closed" line and
no internal error.
"""

from __future__ import annotations

import atheris

with atheris.instrument_imports(include=["livevsr"]):
    from rtmp_driver import run_connection

from fuzzlib import check_allocations, fuzz, split_input


def test_one_input(data: bytes) -> None:
    pieces, _ = split_input(data)
    check_allocations(lambda: run_connection(pieces), data)


if __name__ == "__main__":
    fuzz(test_one_input)
