#!/usr/bin/env python3
"""Fuzz the AMF0 decoder: arbitrary command/data message bodies.

Acceptable: values, or ``AMF0Error``. Anything else is a crash. What decodes must survive a round
trip: ``decode_all(encode(*values))`` gives the same values (dates come back as numbers, typed
objects and ECMA arrays as plain objects, so the second decode equals the first).
"""

from __future__ import annotations

import math
from typing import Any

import atheris

with atheris.instrument_imports(include=["livevsr"]):
    from livevsr.ingest import amf0

from fuzzlib import check_allocations, fuzz


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def _decode(data: bytes) -> None:
    try:
        values = amf0.decode_all(data)
    except amf0.AMF0Error:
        pass
    else:
        again = amf0.decode_all(amf0.encode(*values))
        if not _same(values, again):
            raise AssertionError(f"round trip changed the values: {values!r} -> {again!r}")
    try:
        _, consumed = amf0.decode(data)
    except amf0.AMF0Error:
        return
    if not 0 < consumed <= len(data):
        raise AssertionError(f"decode consumed {consumed} of {len(data)} bytes")


def test_one_input(data: bytes) -> None:
    check_allocations(lambda: _decode(data), data)


if __name__ == "__main__":
    fuzz(test_one_input)
