#!/usr/bin/env python3
"""Fuzz the WHEP and WHIP offer checks and aiortc's SDP parsing as our handlers reach it.

Input: a selector byte (even: WHEP ``check_offer``, odd: WHIP ``check_offer``), then the offer body
(decoded as UTF-8 with replacement, as text). Acceptable: the check passes, or raises its
``OfferError`` (a ``ValueError``). An offer that passes goes on to what ``WhepServer.create`` and
``WhipServer.create`` run next: ``aiortc.sdp.SessionDescription.parse``, and on one in
``FULL_EVERY`` of those a real ``RTCPeerConnection.setRemoteDescription``. Both handlers turn any
exception from aiortc into their ``OfferError`` (HTTP 400), so those are acceptable too; each new
kind is printed once so a run shows what aiortc refuses with. A hang or runaway memory is a crash.
"""

from __future__ import annotations

import asyncio
import sys

import atheris

with atheris.instrument_imports(include=["livevsr", "aiortc"]):
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
    from aiortc import sdp as aiortc_sdp

    from livevsr.ingest import whip
    from livevsr.publish import whep

from fuzzlib import check_allocations, fuzz

FULL_EVERY = 64  # parsed offers; a peer connection costs ~10 ms, the parse well under one

_loop = asyncio.new_event_loop()
_parsed = 0
_seen: set[tuple[str, str]] = set()


def _note(exc: Exception) -> None:
    """Print each kind of aiortc refusal once (type and where it was raised)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = f"{tb.tb_frame.f_code.co_filename.rsplit('/', 1)[-1]}:{tb.tb_lineno}" if tb else "?"
    key = (type(exc).__name__, where)
    if key not in _seen:
        _seen.add(key)
        print(f"fuzz_sdp: aiortc refused an offer with {key[0]} at {where}: {str(exc)[:100]}", file=sys.stderr)


async def _set_remote(sdp: str, is_whep: bool) -> None:
    """What ``WhepServer.create``/``WhipServer.create`` do with an offer, up to the answer."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        if is_whep:
            transceiver = pc.addTransceiver("video", direction="sendonly")
            h264 = [c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType in ("video/H264", "video/rtx")]
            transceiver.setCodecPreferences(h264)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
    finally:
        await pc.close()


def _check(data: bytes) -> None:
    global _parsed
    if not data:
        return
    is_whep = data[0] % 2 == 0
    sdp = data[1:].decode("utf-8", "replace")
    try:
        (whep.check_offer if is_whep else whip.check_offer)(sdp)
    except (whep.OfferError, whip.OfferError):
        return
    try:
        aiortc_sdp.SessionDescription.parse(sdp)
        _parsed += 1
        if _parsed % FULL_EVERY == 0:
            _loop.run_until_complete(_set_remote(sdp, is_whep))
    except Exception as exc:  # the handlers wrap these into OfferError (HTTP 400)
        _note(exc)


def test_one_input(data: bytes) -> None:
    check_allocations(lambda: _check(data), data)


if __name__ == "__main__":
    fuzz(test_one_input)
