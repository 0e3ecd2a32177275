#!/usr/bin/env python3
"""Fuzz the FLV tag-body parsers: video (legacy and Enhanced RTMP), audio, AudioSpecificConfig.

The first byte picks the parser (as RTMP message types 9 and 8 and an AAC sequence header would),
the rest is the body. Acceptable: a tag, or ``FLVError``. A tag's data must lie inside the body.
"""

from __future__ import annotations

import atheris

with atheris.instrument_imports(include=["livevsr"]):
    from livevsr.ingest import flv

from fuzzlib import check_allocations, fuzz


def _parse(data: bytes) -> None:
    if not data:
        return
    which, body = data[0] % 3, data[1:]
    try:
        if which == 0:
            video = flv.parse_video(body)
            if video.kind not in (flv.CONFIG, flv.FRAME, flv.END, flv.INFO):
                raise AssertionError(f"unknown kind {video.kind!r}")
            if not -(1 << 23) <= video.cts_ms < 1 << 23:
                raise AssertionError(f"composition time {video.cts_ms} is not a signed 24-bit value")
            if bytes(video.data) not in body:
                raise AssertionError("video data is not a slice of the body")
        elif which == 1:
            audio = flv.parse_audio(body)
            if bytes(audio.data) not in body or audio.channels not in (1, 2):
                raise AssertionError(f"bad audio tag {audio!r}")
            if audio.codec == "aac" and audio.kind == flv.CONFIG:
                flv.parse_audio_specific_config(audio.data)
        else:
            rate, channels = flv.parse_audio_specific_config(body)
            if not (0 <= rate < 1 << 24 and 0 <= channels <= 15):
                raise AssertionError(f"AudioSpecificConfig gave {rate} Hz, {channels} channels")
    except flv.FLVError:
        pass


def test_one_input(data: bytes) -> None:
    check_allocations(lambda: _parse(data), data)


if __name__ == "__main__":
    fuzz(test_one_input)
