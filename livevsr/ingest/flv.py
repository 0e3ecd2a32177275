"""FLV audio/video tag bodies, as RTMP carries them in message types 8 and 9.

Covers legacy FLV AVC (codec id 7) and AAC (sound format 10), plus enough of Enhanced RTMP
(veovera/enhanced-rtmp v1/v2) to name what a publisher sent: an ExVideoTagHeader with FourCC
``avc1`` is accepted as H.264; ``hvc1``/``av01``/``vp09`` parse to their codec name so the caller
can refuse them with a useful reason. Bodies are referenced, not copied, until the caller needs bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

from livevsr.errors import IngestError

# What a tag carries
CONFIG = "config"  # decoder configuration: avcC record / AudioSpecificConfig
FRAME = "frame"  # coded media
END = "end"  # end of sequence
INFO = "info"  # video info/command frame or E-RTMP metadata: no media

KEYFRAME = 1  # FLV video frame types
INFO_FRAME = 5

_LEGACY_VIDEO_CODECS = {
    2: "flv1", 3: "screen", 4: "vp6", 5: "vp6a", 6: "screen2", 7: "h264", 12: "hevc", 13: "av1",
}  # fmt: skip
_FOURCC_CODECS = {b"avc1": "h264", b"hvc1": "hevc", b"av01": "av1", b"vp09": "vp9", b"vp08": "vp8"}
_SOUND_FORMATS = {
    0: "pcm", 1: "adpcm", 2: "mp3", 3: "pcm_le", 4: "nellymoser16", 5: "nellymoser8", 6: "nellymoser",
    7: "alaw", 8: "mulaw", 9: "ex-header", 10: "aac", 11: "speex", 14: "mp3_8k", 15: "device",
}  # fmt: skip
_FOURCC_AUDIO_CODECS = {b"mp4a": "aac", b"Opus": "opus", b".mp3": "mp3", b"ac-3": "ac3", b"ec-3": "eac3",
                        b"fLaC": "flac"}  # fmt: skip
_LEGACY_RATES = (5512, 11025, 22050, 44100)  # Hz, FLV SoundRate index
_AAC_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350)  # Hz


def metadata_codec(value: object, audio: bool = False) -> str:
    """onMetaData's videocodecid/audiocodecid as a name: a legacy FLV id (7 -> h264), or an Enhanced
    RTMP FourCC, which OBS sends as a number ('hvc1' -> 1752589105 -> hevc)."""
    if isinstance(value, str):
        fourcc = value.encode("latin-1", "replace")[:4]
    elif (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and float(value).is_integer()
        and value >= 0
    ):
        number = int(value)
        if number < 256:
            names = _SOUND_FORMATS if audio else _LEGACY_VIDEO_CODECS
            return names.get(number, f"codec id {number}")
        if number >= 1 << 32:
            return str(number)
        fourcc = number.to_bytes(4, "big")
    else:
        return str(value)[:64]
    names = _FOURCC_AUDIO_CODECS if audio else _FOURCC_CODECS
    return names.get(fourcc) or f"fourcc {fourcc.decode('latin-1')!r}"


class FLVError(IngestError):
    """An audio or video tag body is truncated or malformed."""


@dataclass(slots=True)
class VideoTag:
    codec: str  # "h264", "hevc", "av1", ... or "codec id N" / "fourcc XXXX" when unknown
    kind: str  # CONFIG, FRAME, END or INFO
    keyframe: bool
    cts_ms: int  # composition time offset: pts = dts + cts
    data: memoryview  # avcC for CONFIG, AVCC access unit for FRAME, empty otherwise


@dataclass(slots=True)
class AudioTag:
    codec: str  # "aac", "mp3", ... ; "ex-header" for Enhanced RTMP audio
    kind: str  # CONFIG or FRAME
    data: memoryview  # AudioSpecificConfig for an AAC CONFIG, the raw frame otherwise
    sample_rate: int  # from the legacy header (AAC: take it from the AudioSpecificConfig instead)
    channels: int


def _signed24(b0: int, b1: int, b2: int) -> int:
    value = (b0 << 16) | (b1 << 8) | b2
    return value - (1 << 24) if value & 0x800000 else value


def parse_video(body: bytes | memoryview) -> VideoTag:
    """Parse an FLV VIDEODATA body (legacy or Enhanced RTMP)."""
    view = memoryview(body)
    if len(view) < 1:
        raise FLVError("empty video message")
    first = view[0]
    if first & 0x80:  # Enhanced RTMP ExVideoTagHeader
        frame_type = (first >> 4) & 0x07
        packet_type = first & 0x0F
        if len(view) < 5:
            raise FLVError(f"Enhanced RTMP video header truncated: {len(view)} bytes, need 5")
        fourcc = bytes(view[1:5])
        codec = _FOURCC_CODECS.get(fourcc, f"fourcc {fourcc.decode('latin-1')!r}")
        if packet_type in (6, 7):  # Multitrack, ModEx: the layout differs; refused as a codec
            name = "Enhanced RTMP multitrack" if packet_type == 6 else "Enhanced RTMP ModEx"
            return VideoTag(name, FRAME, frame_type == KEYFRAME, 0, view[1:])
        if frame_type == INFO_FRAME or packet_type == 4:
            return VideoTag(codec, INFO, False, 0, view[5:])
        if packet_type == 0:
            return VideoTag(codec, CONFIG, False, 0, view[5:])
        if packet_type == 2:
            return VideoTag(codec, END, False, 0, view[5:])
        if packet_type == 1:  # CodedFrames: with a composition time offset (for avc1/hvc1)
            if codec in ("h264", "hevc"):
                if len(view) < 8:
                    raise FLVError(f"Enhanced RTMP coded frame truncated: {len(view)} bytes, need 8")
                cts = _signed24(view[5], view[6], view[7])
                return VideoTag(codec, FRAME, frame_type == KEYFRAME, cts, view[8:])
            return VideoTag(codec, FRAME, frame_type == KEYFRAME, 0, view[5:])
        if packet_type == 3:  # CodedFramesX: composition time offset is zero
            return VideoTag(codec, FRAME, frame_type == KEYFRAME, 0, view[5:])
        raise FLVError(f"Enhanced RTMP video packet type {packet_type} is not defined")

    frame_type = first >> 4
    codec_id = first & 0x0F
    codec = _LEGACY_VIDEO_CODECS.get(codec_id, f"codec id {codec_id}")
    if codec_id not in (7, 12, 13):
        # No AVC-style packet header: report the codec so the caller can refuse it.
        kind = INFO if frame_type == INFO_FRAME else FRAME
        return VideoTag(codec, kind, frame_type == KEYFRAME, 0, view[1:])
    if frame_type == INFO_FRAME:
        return VideoTag(codec, INFO, False, 0, view[1:])
    if len(view) < 5:
        raise FLVError(f"AVC video header truncated: {len(view)} bytes, need 5")
    packet_type = view[1]
    cts = _signed24(view[2], view[3], view[4])
    data = view[5:]
    if packet_type == 0:
        return VideoTag(codec, CONFIG, False, 0, data)
    if packet_type == 1:
        return VideoTag(codec, FRAME, frame_type == KEYFRAME, cts, data)
    if packet_type == 2:
        return VideoTag(codec, END, False, 0, data)
    raise FLVError(f"AVC packet type {packet_type} is not defined (expected 0, 1 or 2)")


def parse_audio(body: bytes | memoryview) -> AudioTag:
    """Parse an FLV AUDIODATA body. Enhanced RTMP audio is reported as codec "ex-header"."""
    view = memoryview(body)
    if len(view) < 1:
        raise FLVError("empty audio message")
    first = view[0]
    sound_format = first >> 4
    codec = _SOUND_FORMATS.get(sound_format, f"sound format {sound_format}")
    sample_rate = _LEGACY_RATES[(first >> 2) & 0x03]
    channels = (first & 0x01) + 1
    if sound_format != 10:
        return AudioTag(codec, FRAME, view[1:], sample_rate, channels)
    if len(view) < 2:
        raise FLVError("AAC audio header truncated: 1 byte, need 2")
    kind = CONFIG if view[1] == 0 else FRAME
    return AudioTag(codec, kind, view[2:], sample_rate, channels)


class _Bits:
    def __init__(self, data: bytes | memoryview) -> None:
        self.data = bytes(data)
        self.pos = 0  # in bits

    def read(self, n: int) -> int:
        if self.pos + n > 8 * len(self.data):
            raise FLVError(f"AudioSpecificConfig truncated: {len(self.data)} bytes")
        value = 0
        for _ in range(n):
            byte = self.data[self.pos >> 3]
            value = (value << 1) | ((byte >> (7 - (self.pos & 7))) & 1)
            self.pos += 1
        return value


def parse_audio_specific_config(asc: bytes | memoryview) -> tuple[int, int]:
    """Sample rate (Hz) and channel count from an MPEG-4 AudioSpecificConfig (ISO 14496-3 1.6.2.1).

    Channel configuration 0 (layout given in-band) is reported as 2 channels.
    """
    bits = _Bits(asc)
    object_type = bits.read(5)
    if object_type == 31:
        bits.read(6)
    index = bits.read(4)
    if index == 15:
        sample_rate = bits.read(24)
    elif index < len(_AAC_RATES):
        sample_rate = _AAC_RATES[index]
    else:
        raise FLVError(f"AudioSpecificConfig sampling frequency index {index} is reserved")
    channel_config = bits.read(4)
    channels = {0: 2, 7: 8}.get(channel_config, channel_config)
    return sample_rate, channels
