"""streams[].output_height: the output size rule, the scaler, and bicubic scaling straight to it."""

from __future__ import annotations

import av
import numpy as np
import pytest

from livevsr.config import EngineConfig
from livevsr.engines.bicubic.engine import BicubicEngine
from livevsr.engines.registry import EngineChoice, create_engine
from livevsr.engines.resize import output_size, resize


@pytest.mark.parametrize(
    ("width", "height", "output_height", "expected"),
    [
        # 0: the engine's native 4x, whatever the size
        (480, 270, 0, (1920, 1080)),
        (641, 361, 0, (2564, 1444)),
        # one aspect ratio, one output size, whether the engine's 4x is bigger or smaller
        (640, 360, 1080, (1920, 1080)),
        (480, 270, 1080, (1920, 1080)),
        (1280, 720, 1080, (1920, 1080)),
        (1920, 1080, 720, (1280, 720)),
        (320, 240, 1080, (1440, 1080)),  # 4:3
        (1080, 1920, 1080, (608, 1080)),  # portrait: 607.5 rounds up to the even 608
        (720, 576, 1080, (1350, 1080)),  # 5:4 PAL storage size
        # odd ratios: the width is the nearest even number
        (641, 361, 1080, (1918, 1080)),  # 1917.67
        (100, 3, 64, (2134, 64)),  # 2133.3
        (3, 100, 64, (2, 64)),  # 1.92 -> 2
        (1, 1000, 64, (2, 64)),  # 0.064: never below 2
        (2, 2, 64, (64, 64)),  # tiny square
        (1, 1, 4320, (4320, 4320)),
        (50, 38, 144, (190, 144)),  # 189.47
    ],
)
def test_output_size(width: int, height: int, output_height: int, expected: tuple[int, int]) -> None:
    assert output_size(width, height, output_height) == expected


def test_output_size_is_even_and_keeps_the_aspect_ratio_within_a_pixel() -> None:
    for width in range(1, 400, 7):
        for height in range(1, 300, 11):
            for output_height in (64, 144, 720, 1080, 4320):
                w, h = output_size(width, height, output_height)
                assert h == output_height and w % 2 == 0 and w >= 2
                if w > 2:
                    assert abs(w - width * output_height / height) <= 1


def test_output_size_rejects_what_cannot_be_encoded() -> None:
    with pytest.raises(ValueError):
        output_size(0, 360, 1080)
    with pytest.raises(ValueError):
        output_size(640, 360, 1081)


def frame(width: int, height: int, fmt: str = "yuv420p") -> av.VideoFrame:
    img = np.zeros((height, width, 3), np.uint8)
    img[:, : width // 2] = 200
    return av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format=fmt)


def test_resize_scales_to_the_size_asked_and_passes_a_frame_of_that_size_through() -> None:
    small = frame(64, 36)
    up = resize(small, 256, 144)
    assert (up.width, up.height, up.format.name) == (256, 144, "yuv420p")
    down = resize(frame(512, 288), 256, 144)
    assert (down.width, down.height, down.format.name) == (256, 144, "yuv420p")
    # The picture survives: the left half stays bright, the right half dark.
    gray = down.to_ndarray(format="gray")
    assert gray[:, :100].mean() > 150 and gray[:, 156:].mean() < 50
    assert resize(small, 64, 36) is small
    converted = resize(frame(64, 36, "yuv444p"), 64, 36)
    assert (converted.width, converted.height, converted.format.name) == (64, 36, "yuv420p")


def test_bicubic_engine_scales_straight_to_the_output_height() -> None:
    engine = BicubicEngine(output_height=144)
    engine.open(40, 30, 30)  # 4x would be 160x120
    assert [(f.width, f.height) for f in engine.push([frame(40, 30)])] == [(192, 144)]
    engine.close()
    engine.open(480, 270, 30)  # 4x would be 1920x1080: one scaling down, never 4x then down
    src = frame(480, 270)
    out = engine.push([src])
    assert [(f.width, f.height, f.format.name) for f in out] == [(256, 144, "yuv420p")]
    assert np.array_equal(out[0].to_ndarray(), resize(src, 256, 144).to_ndarray())
    engine.close()
    engine.open(96, 64, 30)  # a new geometry keeps the height and follows the new aspect ratio
    assert [(f.width, f.height) for f in engine.push([frame(96, 64)])] == [(216, 144)]


def test_bicubic_engine_without_an_output_height_is_4x() -> None:
    engine = BicubicEngine()
    engine.open(50, 38, 30)
    assert [(f.width, f.height) for f in engine.push([frame(50, 38)])] == [(200, 152)]


def test_create_engine_passes_the_output_height_to_bicubic() -> None:
    engine = create_engine(EngineChoice("bicubic", "test"), EngineConfig(name="bicubic"), output_height=144)
    engine.open(160, 90, 30)
    assert [(f.width, f.height) for f in engine.push([frame(160, 90)])] == [(256, 144)]
