"""The SDP reading WHIP and WHEP share: is this an offer we answer, and which codecs it offers."""

from __future__ import annotations

import re

MAX_MEDIA_SECTIONS = 8  # each m-line costs an aiortc transceiver; a client needs two (video, audio)
_RTPMAP = re.compile(r"^a=rtpmap:\d+ ([A-Za-z0-9-]+)/", re.MULTILINE)
_NOT_CODECS = {"RTX", "RED", "ULPFEC"}  # retransmission and FEC payloads, not picture codecs


class OfferError(ValueError):
    """An SDP offer cannot be answered; the message is safe to return to the client."""


def offered_video_codecs(sdp: str) -> set[str] | None:
    """Upper-case codec names of the offer's video m-lines, or None if it has no video m-line.

    Raises OfferError for a body that is not SDP or has more than MAX_MEDIA_SECTIONS m-lines.
    """
    return offered_codecs(sdp, "video")


def offered_codecs(sdp: str, kind: str) -> set[str] | None:
    """Upper-case codec names of the offer's ``kind`` ("video", "audio") m-lines, or None if it
    has none; raises OfferError like ``offered_video_codecs``."""
    if not sdp.startswith("v=0"):
        raise OfferError("the body is not an SDP offer (it must start with 'v=0')")
    sections = re.split(r"^(?=m=)", sdp, flags=re.MULTILINE)[1:]
    if len(sections) > MAX_MEDIA_SECTIONS:
        raise OfferError(f"the offer has {len(sections)} m-lines; at most {MAX_MEDIA_SECTIONS} are accepted")
    media = [s for s in sections if s.startswith(f"m={kind}")]
    if not media:
        return None
    return {c.upper() for s in media for c in _RTPMAP.findall(s)} - _NOT_CODECS
