"""The timestamp barcode survives libx264 and a 4x bicubic upscale, and never reads noise as a value."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest

from livevsr.telemetry import barcode

VALUES = [0, 1, barcode.VALUE_MOD - 1, 0x0123_4567_89AB, 1_764_000_000_123_456 % barcode.VALUE_MOD]


def moving_pattern(width: int, height: int, index: int) -> np.ndarray:
    """A small moving colour pattern with texture, so the encoder has something to spend bits on."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.empty((height, width, 3), dtype=np.uint8)
    rgb[..., 0] = (x * 3 + index * 5) % 256
    rgb[..., 1] = (y * 2 + index * 3) % 256
    rgb[..., 2] = ((x ^ y) + index * 7) % 256
    return rgb


def h264_roundtrip(frames: list[np.ndarray], bitrate_bps: int) -> list[av.VideoFrame]:
    """Encode rgb frames with libx264 (zerolatency, as the publisher does) and decode them again."""
    height, width = frames[0].shape[:2]
    encoder = av.CodecContext.create("libx264", "w")
    encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuv420p"
    encoder.time_base = Fraction(1, 30)
    encoder.bit_rate = bitrate_bps
    encoder.options = {"preset": "veryfast", "tune": "zerolatency"}
    decoder = av.CodecContext.create("h264", "r")
    decoded: list[av.VideoFrame] = []
    for i, rgb in enumerate(frames):
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
        frame.pts = i
        for packet in encoder.encode(frame):
            decoded.extend(decoder.decode(packet))
    for packet in encoder.encode(None):
        decoded.extend(decoder.decode(packet))
    decoded.extend(decoder.decode(None))
    return decoded


@pytest.mark.parametrize("value", VALUES)
def test_raw_roundtrip(value: int) -> None:
    rgb = moving_pattern(320, 180, 0)
    barcode.burn(rgb, value)
    assert barcode.read(rgb) == value
    assert barcode.read(rgb[..., 1]) == value  # a luma-like plane reads too


@pytest.mark.parametrize(("width", "height"), [(320, 180), (640, 360), (1280, 720), (176, 144)])
def test_h264_and_4x_bicubic(width: int, height: int) -> None:
    values = [(0x7A5B_1234_0000 + i * 33_333) % barcode.VALUE_MOD for i in range(12)]
    frames = []
    for i, value in enumerate(values):
        rgb = moving_pattern(width, height, i)
        barcode.burn(rgb, value)
        frames.append(rgb)
    # a starved bitrate, like a publisher on a bad uplink: the cells must still read
    decoded = h264_roundtrip(frames, bitrate_bps=width * height)
    assert len(decoded) == len(values)
    for frame, value in zip(decoded, values, strict=True):
        assert barcode.read(frame.to_ndarray(format="gray")) == value
        assert barcode.read(frame.to_ndarray(format="rgb24")) == value
        big = frame.reformat(width=width * 4, height=height * 4, interpolation="BICUBIC")
        assert barcode.read(big.to_ndarray(format="gray"), cell_px=32) == value
    # and once more through the output encoder, as a viewer sees it
    upscaled = [f.reformat(width=width * 4, height=height * 4, interpolation="BICUBIC").to_ndarray(
        format="rgb24") for f in decoded[:4]]
    for frame, value in zip(h264_roundtrip(upscaled, bitrate_bps=width * height * 16), values, strict=False):
        assert barcode.read(frame.to_ndarray(format="gray"), cell_px=32) == value


def test_no_false_positive() -> None:
    rng = np.random.default_rng(1)
    assert barcode.read(np.zeros((180, 320), dtype=np.uint8)) is None
    assert barcode.read(np.full((180, 320), 255, dtype=np.uint8)) is None
    for i in range(200):
        assert barcode.read(moving_pattern(320, 180, i)) is None
        noise = rng.integers(0, 256, size=(64, 320), dtype=np.uint8)
        assert barcode.read(noise) is None
        # random black/white cells: a real barcode shape, but the pattern or the CRC must fail
        cells = rng.integers(0, 2, size=(2, 40), dtype=np.uint8) * 255
        assert barcode.read(np.kron(cells, np.ones((8, 8), dtype=np.uint8))) is None


def test_corrupted_cell_is_rejected() -> None:
    rgb = np.zeros((180, 320, 3), dtype=np.uint8)
    barcode.burn(rgb, 0x1234_5678_9ABC)
    rgb[0:8, 8 * 20: 8 * 21] ^= 255  # flip one data cell
    assert barcode.read(rgb) is None


def test_too_narrow_frame() -> None:
    with pytest.raises(ValueError, match="need at least 8"):
        barcode.burn(np.zeros((64, 48, 3), dtype=np.uint8), 1)
    assert barcode.read(np.zeros((64, 48), dtype=np.uint8)) is None


def test_latency_wraps() -> None:
    assert barcode.latency_us(barcode.VALUE_MOD - 10, at_us=5) == 15
    assert barcode.band_height(320) == 16 and barcode.band_height(1280, 32) == 64
