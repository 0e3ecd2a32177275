"""FLV audio/video tag bodies as RTMP carries them."""

from __future__ import annotations

import pytest

from livevsr.ingest import flv
from livevsr.ingest.flv import FLVError, parse_audio, parse_audio_specific_config, parse_video

AVCC = b"\x01\x64\x00\x1f\xff\xe1\x00\x04SPS!\x01\x00\x03PPS"
NALU = b"\x00\x00\x00\x03\x65\x88\x84"


def test_avc_sequence_header() -> None:
    tag = parse_video(b"\x17\x00\x00\x00\x00" + AVCC)
    assert (tag.codec, tag.kind, tag.keyframe, tag.cts_ms, bytes(tag.data)) == ("h264", flv.CONFIG, False, 0, AVCC)


def test_avc_nalu_keyframe_and_signed_composition_time() -> None:
    key = parse_video(b"\x17\x01\x00\x00\x42" + NALU)
    assert (key.kind, key.keyframe, key.cts_ms, bytes(key.data)) == (flv.FRAME, True, 0x42, NALU)
    inter = parse_video(b"\x27\x01\xff\xff\xfe" + NALU)
    assert (inter.keyframe, inter.cts_ms) == (False, -2)


def test_avc_end_of_sequence_and_info_frame() -> None:
    assert parse_video(b"\x17\x02\x00\x00\x00").kind == flv.END
    assert parse_video(b"\x57\x00").kind == flv.INFO


@pytest.mark.parametrize(
    ("body", "codec"),
    [
        (b"\x22" + bytes(8), "flv1"),
        (b"\x1c\x00\x00\x00\x00", "hevc"),  # the pre-standard codec id 12 some Chinese CDNs use
        (b"\x90hvc1" + bytes(4), "hevc"),  # Enhanced RTMP SequenceStart
        (b"\x91av01" + bytes(4), "av1"),  # Enhanced RTMP CodedFrames
        (b"\x93vp09" + bytes(4), "vp9"),
        (b"\x90abcd", "fourcc 'abcd'"),
        (b"\x2f" + bytes(4), "codec id 15"),
    ],
)
def test_other_codecs_are_named(body: bytes, codec: str) -> None:
    assert parse_video(body).codec == codec


def test_enhanced_rtmp_avc1_is_h264() -> None:
    config = parse_video(b"\x90avc1" + AVCC)
    assert (config.codec, config.kind, bytes(config.data)) == ("h264", flv.CONFIG, AVCC)
    frame = parse_video(b"\x91avc1\x00\x00\x21" + NALU)
    assert (frame.kind, frame.keyframe, frame.cts_ms, bytes(frame.data)) == (flv.FRAME, True, 0x21, NALU)
    framex = parse_video(b"\xa3avc1" + NALU)
    assert (framex.keyframe, framex.cts_ms, bytes(framex.data)) == (False, 0, NALU)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "empty video message"),
        (b"\x17\x01\x00", "AVC video header truncated: 3 bytes, need 5"),
        (b"\x91av", "Enhanced RTMP video header truncated"),
        (b"\x91avc1\x00", "Enhanced RTMP coded frame truncated"),
        (b"\x17\x05\x00\x00\x00", "AVC packet type 5 is not defined"),
    ],
)
def test_malformed_video(body: bytes, message: str) -> None:
    with pytest.raises(FLVError, match=message):
        parse_video(body)


def test_aac_config_and_raw() -> None:
    asc = b"\x11\x90"  # AAC LC, 48 kHz, stereo
    config = parse_audio(b"\xaf\x00" + asc)
    assert (config.codec, config.kind, bytes(config.data)) == ("aac", flv.CONFIG, asc)
    assert parse_audio_specific_config(config.data) == (48000, 2)
    raw = parse_audio(b"\xaf\x01\x21\x10")
    assert (raw.kind, bytes(raw.data)) == (flv.FRAME, b"\x21\x10")


def test_audio_specific_config_variants() -> None:
    assert parse_audio_specific_config(b"\x12\x08") == (44100, 1)  # LC, index 4, mono
    # Explicit 24-bit frequency (index 15): LC, 0x00BB80 = 48000 Hz, 2 channels.
    bits = "00010" + "1111" + format(48000, "024b") + "0010" + "0" * 11  # 48 bits
    assert parse_audio_specific_config(int(bits, 2).to_bytes(len(bits) // 8, "big")) == (48000, 2)
    with pytest.raises(FLVError, match="truncated"):
        parse_audio_specific_config(b"\x11")
    with pytest.raises(FLVError, match="index 13 is reserved"):
        parse_audio_specific_config(b"\x16\x90")


def test_other_audio_codecs_are_named() -> None:
    mp3 = parse_audio(b"\x2e" + bytes(4))
    assert (mp3.codec, mp3.sample_rate, mp3.channels) == ("mp3", 44100, 1)
    assert parse_audio(b"\x9f" + bytes(4)).codec == "ex-header"
    with pytest.raises(FLVError, match="AAC audio header truncated"):
        parse_audio(b"\xaf")


@pytest.mark.parametrize(
    ("value", "audio", "name"),
    [
        (7.0, False, "h264"),  # legacy FLV codec id, as an AMF0 number
        (1752589105.0, False, "hevc"),  # OBS: FourCC 'hvc1' as a number
        (1635148593.0, False, "h264"),  # 'avc1'
        (1635148594.0, False, "fourcc 'avc2'"),
        ("hvc1", False, "hevc"),
        (10.0, True, "aac"),
        (1836069985.0, True, "aac"),  # 'mp4a'
        (1332770163.0, True, "opus"),  # 'Opus'
        (99.0, False, "codec id 99"),
        (True, False, "True"),
    ],
)
def test_metadata_codec_ids_are_named(value: object, audio: bool, name: str) -> None:
    assert flv.metadata_codec(value, audio=audio) == name
