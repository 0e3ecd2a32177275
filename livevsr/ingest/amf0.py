"""AMF0: the value encoding of RTMP commands and metadata (Adobe "AMF0 File Format Specification").

Decoding is defensive: every length is checked against the bytes actually present and against
caps, so a hostile peer cannot make us recurse deeply or build huge strings. Values map to Python:

=============================  ======================================
AMF0 marker                     Python
=============================  ======================================
number (0x00)                   float
boolean (0x01)                  bool
string / long string / xml      str
object / typed object           dict (typed object: class name dropped)
ecma array (0x08)               dict
strict array (0x0A)             list
date (0x0B)                     float (ms since epoch; the time zone is dropped)
null (0x05)                     None
undefined / unsupported         UNDEFINED
=============================  ======================================

References (0x07), AMF3 switch (0x11), movie clips and record sets are refused.
"""

from __future__ import annotations

import struct
from typing import Any

from livevsr.errors import IngestError

MAX_DEPTH = 32  # nested objects/arrays; real commands use 2
MAX_STRING_BYTES = 65536  # long strings above this are refused (metadata strings are short)
MAX_ITEMS = 4096  # members of one object or array

_NUMBER = 0x00
_BOOLEAN = 0x01
_STRING = 0x02
_OBJECT = 0x03
_NULL = 0x05
_UNDEFINED = 0x06
_REFERENCE = 0x07
_ECMA_ARRAY = 0x08
_OBJECT_END = 0x09
_STRICT_ARRAY = 0x0A
_DATE = 0x0B
_LONG_STRING = 0x0C
_UNSUPPORTED = 0x0D
_XML_DOCUMENT = 0x0F
_TYPED_OBJECT = 0x10

_F64 = struct.Struct(">d")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")


class AMF0Error(IngestError):
    """Malformed or over-limit AMF0 data; the message says what and where."""


class _Undefined:
    """AMF0 `undefined` (distinct from `null`, which is None)."""

    _instance: _Undefined | None = None

    def __new__(cls) -> _Undefined:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNDEFINED"


UNDEFINED = _Undefined()


class _Reader:
    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self.data = memoryview(data)
        self.pos = 0

    def take(self, n: int, what: str) -> memoryview:
        end = self.pos + n
        if end > len(self.data):
            raise AMF0Error(
                f"AMF0: truncated {what} at byte {self.pos}: need {n} bytes, {len(self.data) - self.pos} left"
            )
        view = self.data[self.pos : end]
        self.pos = end
        return view

    def utf8(self, n: int, what: str) -> str:
        if n > MAX_STRING_BYTES:
            raise AMF0Error(
                f"AMF0: {what} of {n} bytes at byte {self.pos} exceeds the {MAX_STRING_BYTES}-byte cap"
            )
        raw = self.take(n, what)
        try:
            return str(raw, "utf-8")
        except UnicodeDecodeError as exc:
            raise AMF0Error(f"AMF0: {what} at byte {self.pos - n} is not UTF-8 ({exc.reason})") from None

    def short_string(self, what: str) -> str:
        (n,) = _U16.unpack(self.take(2, f"{what} length"))
        return self.utf8(n, what)

    def long_string(self, what: str) -> str:
        (n,) = _U32.unpack(self.take(4, f"{what} length"))
        return self.utf8(n, what)

    def value(self, depth: int) -> Any:
        at = self.pos
        marker = self.take(1, "type marker")[0]
        if marker == _NUMBER:
            return _F64.unpack(self.take(8, "number"))[0]
        if marker == _BOOLEAN:
            return self.take(1, "boolean")[0] != 0
        if marker == _STRING:
            return self.short_string("string")
        if marker in (_LONG_STRING, _XML_DOCUMENT):
            return self.long_string("long string")
        if marker == _NULL:
            return None
        if marker in (_UNDEFINED, _UNSUPPORTED):
            return UNDEFINED
        if marker == _OBJECT:
            return self.members(depth + 1, at)
        if marker == _TYPED_OBJECT:
            self.short_string("class name")
            return self.members(depth + 1, at)
        if marker == _ECMA_ARRAY:
            self.take(4, "ecma array count")  # a hint only; the array ends with the end marker
            return self.members(depth + 1, at)
        if marker == _STRICT_ARRAY:
            (count,) = _U32.unpack(self.take(4, "strict array count"))
            if count > MAX_ITEMS:
                raise AMF0Error(
                    f"AMF0: strict array of {count} items at byte {at} exceeds the {MAX_ITEMS}-item cap"
                )
            self.check_depth(depth + 1, at)
            return [self.value(depth + 1) for _ in range(count)]
        if marker == _DATE:
            millis = _F64.unpack(self.take(8, "date"))[0]
            self.take(2, "date time zone")
            return millis
        raise AMF0Error(f"AMF0: unsupported type marker 0x{marker:02x} at byte {at}")

    def check_depth(self, depth: int, at: int) -> None:
        if depth > MAX_DEPTH:
            raise AMF0Error(f"AMF0: nesting deeper than {MAX_DEPTH} levels at byte {at}")

    def members(self, depth: int, at: int) -> dict[str, Any]:
        self.check_depth(depth, at)
        out: dict[str, Any] = {}
        while True:
            name = self.short_string("member name")
            if not name and self.pos < len(self.data) and self.data[self.pos] == _OBJECT_END:
                self.pos += 1
                return out
            if len(out) >= MAX_ITEMS:
                raise AMF0Error(f"AMF0: object at byte {at} has more than {MAX_ITEMS} members")
            out[name] = self.value(depth)


def decode_all(data: bytes | bytearray | memoryview) -> list[Any]:
    """Decode every AMF0 value in ``data`` (a command or data message body).

    Raises ``AMF0Error`` (an ``IngestError``) on truncated or malformed input and on exceeded caps.
    """
    reader = _Reader(data)
    values: list[Any] = []
    while reader.pos < len(reader.data):
        if len(values) >= MAX_ITEMS:
            raise AMF0Error(f"AMF0: more than {MAX_ITEMS} top-level values")
        values.append(reader.value(0))
    return values


def decode(data: bytes | bytearray | memoryview) -> tuple[Any, int]:
    """Decode one AMF0 value from the start of ``data``; returns (value, bytes consumed)."""
    reader = _Reader(data)
    value = reader.value(0)
    return value, reader.pos


def _encode_string_body(out: bytearray, text: str) -> None:
    raw = text.encode("utf-8")
    if len(raw) > 0xFFFF:
        raise ValueError(f"AMF0: a member name of {len(raw)} bytes does not fit in 16 bits")
    out += _U16.pack(len(raw))
    out += raw


def _encode_value(out: bytearray, value: Any, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise ValueError(f"AMF0: cannot encode values nested deeper than {MAX_DEPTH} levels")
    if value is None:
        out.append(_NULL)
    elif value is UNDEFINED:
        out.append(_UNDEFINED)
    elif isinstance(value, bool):
        out.append(_BOOLEAN)
        out.append(1 if value else 0)
    elif isinstance(value, int | float):
        out.append(_NUMBER)
        out += _F64.pack(float(value))
    elif isinstance(value, str):
        raw = value.encode("utf-8")
        if len(raw) <= 0xFFFF:
            out.append(_STRING)
            out += _U16.pack(len(raw))
        else:
            out.append(_LONG_STRING)
            out += _U32.pack(len(raw))
        out += raw
    elif isinstance(value, dict):
        out.append(_OBJECT)
        for name, member in value.items():
            _encode_string_body(out, str(name))
            _encode_value(out, member, depth + 1)
        out += b"\x00\x00"
        out.append(_OBJECT_END)
    elif isinstance(value, list | tuple):
        out.append(_STRICT_ARRAY)
        out += _U32.pack(len(value))
        for item in value:
            _encode_value(out, item, depth + 1)
    else:
        raise TypeError(f"AMF0: cannot encode a {type(value).__name__}")


def encode(*values: Any) -> bytes:
    """Encode values in order (dicts become AMF0 objects, lists strict arrays)."""
    out = bytearray()
    for value in values:
        _encode_value(out, value, 0)
    return bytes(out)


def encode_ecma_array(mapping: dict[str, Any]) -> bytes:
    """Encode a dict as an ECMA array (how FLV metadata is usually written)."""
    out = bytearray([_ECMA_ARRAY])
    out += _U32.pack(len(mapping))
    for name, member in mapping.items():
        _encode_string_body(out, name)
        _encode_value(out, member, 1)
    out += b"\x00\x00"
    out.append(_OBJECT_END)
    return bytes(out)
