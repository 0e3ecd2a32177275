"""AMF0 encode/decode at the byte level: round trips, exact bytes, caps, truncation."""

from __future__ import annotations

import struct
import tracemalloc

import pytest

from livevsr.errors import IngestError
from livevsr.ingest import amf0
from livevsr.ingest.amf0 import UNDEFINED, AMF0Error, decode, decode_all, encode, encode_ecma_array


def test_round_trip_of_a_connect_command() -> None:
    command = {
        "app": "live",
        "type": "nonprivate",
        "flashVer": "FMLE/3.0 (compatible; FMSc/1.0)",
        "tcUrl": "rtmp://127.0.0.1:1935/live",
        "fpad": False,
        "capabilities": 239.0,
        "nested": {"list": [1.0, "two", None, True], "deeper": {"x": -0.5}},
        "ünïcode": "✓",
    }
    body = encode("connect", 1, command, None, UNDEFINED)
    assert decode_all(body) == ["connect", 1.0, command, None, UNDEFINED]


def test_exact_bytes_of_scalars() -> None:
    assert encode(1.5) == b"\x00" + struct.pack(">d", 1.5)
    assert encode(True, False) == b"\x01\x01\x01\x00"
    assert encode("ab") == b"\x02\x00\x02ab"
    assert encode(None) == b"\x05"
    assert encode({"a": 1}) == b"\x03\x00\x01a\x00" + struct.pack(">d", 1.0) + b"\x00\x00\x09"


def test_long_string_date_ecma_array_and_typed_object_decode() -> None:
    long_text = "x" * amf0.MAX_STRING_BYTES  # above 0xFFFF: needs the long-string marker
    assert encode(long_text)[0] == 0x0C
    assert decode_all(encode(long_text)) == [long_text]
    date = b"\x0b" + struct.pack(">d", 1.7e12) + b"\x00\x00"
    assert decode_all(date) == [1.7e12]
    ecma = encode_ecma_array({"width": 320.0, "height": 180.0})
    assert ecma[0] == 0x08
    assert decode_all(b"\x02\x00\x0aonMetaData" + ecma) == ["onMetaData", {"width": 320.0, "height": 180.0}]
    typed = b"\x10\x00\x03Cls\x00\x01k\x05\x00\x00\x09"
    assert decode_all(typed) == [{"k": None}]


def test_decode_reports_bytes_consumed() -> None:
    value, used = decode(encode("abc") + b"trailing")
    assert (value, used) == ("abc", 6)


def _nested_objects(depth: int) -> bytes:
    return b"\x03\x00\x01a" * depth + b"\x05" + b"\x00\x00\x09" * depth


def test_depth_cap() -> None:
    decode_all(_nested_objects(amf0.MAX_DEPTH))
    with pytest.raises(AMF0Error, match=f"nesting deeper than {amf0.MAX_DEPTH} levels"):
        decode_all(_nested_objects(amf0.MAX_DEPTH + 1))
    deep_arrays = b"\x0a\x00\x00\x00\x01" * (amf0.MAX_DEPTH + 1) + b"\x05"
    with pytest.raises(AMF0Error, match="nesting deeper"):
        decode_all(deep_arrays)


def test_string_and_count_caps_do_not_allocate() -> None:
    # A long string claiming 4 GiB, and a strict array claiming 4 billion items, with no data behind.
    with pytest.raises(AMF0Error, match="4294967295 bytes at byte 5 exceeds the 65536-byte cap"):
        decode_all(b"\x0c\xff\xff\xff\xff")
    with pytest.raises(AMF0Error, match="strict array of 4294967295 items at byte 0 exceeds"):
        decode_all(b"\x0a\xff\xff\xff\xff")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x00\x3f\xf0", "truncated number at byte 1: need 8 bytes, 2 left"),
        (b"\x02\x00\x05ab", "truncated string at byte 3: need 5 bytes, 2 left"),
        (b"\x02\x00", "truncated string length at byte 1: need 2 bytes, 1 left"),
        (b"\x03\x00\x01a\x05", "truncated member name length at byte 5"),
        (b"\x03\x00\x01a", "truncated type marker at byte 4"),
        (b"\x01", "truncated boolean at byte 1"),
    ],
)
def test_truncated_input_raises_a_clear_error(data: bytes, message: str) -> None:
    with pytest.raises(AMF0Error, match=message) as info:
        decode_all(data)
    assert isinstance(info.value, IngestError)


def test_refused_markers_and_bad_utf8() -> None:
    with pytest.raises(AMF0Error, match="unsupported type marker 0x07 at byte 0"):
        decode_all(b"\x07\x00\x01")  # reference
    with pytest.raises(AMF0Error, match="unsupported type marker 0x11"):
        decode_all(b"\x11\x02")  # switch to AMF3
    with pytest.raises(AMF0Error, match="not UTF-8"):
        decode_all(b"\x02\x00\x02\xff\xfe")


def test_encode_rejects_unknown_types() -> None:
    with pytest.raises(TypeError, match="cannot encode a bytes"):
        encode(b"raw")


def test_member_and_top_level_value_caps() -> None:
    members = b"".join(b"\x00\x04" + b"%04x" % i + b"\x05" for i in range(amf0.MAX_ITEMS + 1))
    with pytest.raises(AMF0Error, match=f"object at byte 0 has more than {amf0.MAX_ITEMS} members"):
        decode_all(b"\x03" + members + b"\x00\x00\x09")
    assert len(decode_all(b"\x05" * amf0.MAX_ITEMS)) == amf0.MAX_ITEMS
    with pytest.raises(AMF0Error, match=f"more than {amf0.MAX_ITEMS} top-level values"):
        decode_all(b"\x05" * (amf0.MAX_ITEMS + 1))


def test_claimed_sizes_of_2_31_never_allocate() -> None:
    tracemalloc.start()
    try:
        with pytest.raises(AMF0Error, match="2147483648 bytes at byte 5 exceeds the 65536-byte cap"):
            decode_all(b"\x0c\x80\x00\x00\x00" + bytes(16))
        with pytest.raises(AMF0Error, match="strict array of 2147483648 items"):
            decode_all(b"\x0a\x80\x00\x00\x00" + bytes(16))
        assert decode_all(b"\x08\x80\x00\x00\x00\x00\x00\x09") == [{}]  # the ECMA count is only a hint
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 100_000, f"peak {peak} bytes"
