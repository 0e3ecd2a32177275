"""The live sizing rule (pipeline/sizing.py): an engine input and an output every input keeps live at."""

from __future__ import annotations

import dataclasses

import pytest

from livevsr.config import Config, EncoderConfig, EngineConfig, load_config
from livevsr.engines.registry import engine_spec
from livevsr.errors import ConfigError
from livevsr.pipeline.sizing import Limit, encoder_cap, engine_cap, frame_rate_note, plan_sizes

BICUBIC = engine_cap(Config(), engine_spec("bicubic"))
FLASHVSR = engine_cap(Config(), engine_spec("flashvsr"))
X264_2_CORES = encoder_cap(Config(encoder=EncoderConfig(codec="libx264")), cores=2)
NVENC = Limit(3840 * 2160 * 30, 3840 * 2160, "level 5.1")


@pytest.mark.parametrize(
    ("size", "fps", "engine_input", "output"),
    [
        ((1280, 720), 30, (480, 270), (1920, 1080)),
        ((1280, 720), 60, (320, 180), (1280, 720)),  # 60 fps kept: a smaller picture instead
        ((1920, 1080), 30, (480, 270), (1920, 1080)),
        ((1920, 1080), 60, (320, 180), (1280, 720)),
        ((3840, 2160), 30, (480, 270), (1920, 1080)),
        ((3840, 2160), 60, (320, 180), (1280, 720)),
        ((1921, 1081), 30, (480, 270), (1920, 1080)),  # odd: downscaled to even sizes
        ((1080, 1920), 30, (270, 480), (1080, 1920)),  # portrait: the ladder is of the short side
        ((720, 1280), 60, (180, 320), (720, 1280)),
        ((161, 97), 30, (161, 97), (644, 388)),  # small enough: untouched, odd or not
        ((480, 270), 30, (480, 270), (1920, 1080)),
        ((1440, 1080), 30, (480, 360), (1920, 1440)),  # 4:3: same pixels as 16:9 1080p
    ],
)
def test_bicubic_with_libx264_on_two_cores(size, fps, engine_input, output) -> None:  # noqa: ANN001
    plan = plan_sizes(*size, fps, engine_limit=BICUBIC, output_cap=X264_2_CORES)
    assert (plan.engine_input, plan.output, plan.fps) == (engine_input, output, fps)
    assert plan.downscaled == (size != engine_input)
    assert output[0] * output[1] * fps <= X264_2_CORES.pixel_rate
    if plan.downscaled:
        assert "libx264" in plan.reason and "2 CPU cores" in plan.reason


def test_with_nvenc_the_cap_is_h264_level_5_1_and_the_engine_limit_binds() -> None:
    plan = plan_sizes(1920, 1080, 30, engine_limit=BICUBIC, output_cap=NVENC)
    assert (plan.engine_input, plan.output) == ((960, 540), (3840, 2160))
    plan = plan_sizes(3840, 2160, 60, engine_limit=BICUBIC, output_cap=NVENC)
    assert (plan.engine_input, plan.output) == ((640, 360), (2560, 1440))
    plan = plan_sizes(1920, 1080, 30, engine_limit=FLASHVSR, output_cap=NVENC)
    assert (plan.engine_input, plan.output) == ((480, 270), (1920, 1080))
    assert plan.reason.startswith("flashvsr real-time limit 480x270@30")
    plan = plan_sizes(1920, 1080, 60, engine_limit=FLASHVSR, output_cap=NVENC)
    assert (plan.engine_input, plan.output, plan.fps) == ((320, 180), (1280, 720), 60)


def test_output_height_is_not_capped_but_the_engine_input_is_limited() -> None:
    plan = plan_sizes(1920, 1080, 30, engine_limit=BICUBIC, output_cap=X264_2_CORES, output_height=1440)
    assert (plan.engine_input, plan.output) == ((1280, 720), (2560, 1440))
    assert plan.reason.startswith("bicubic real-time limit 960x540@60")


def test_the_log_line_says_what_was_done_and_why() -> None:
    plan = plan_sizes(1920, 1080, 60, engine_limit=BICUBIC, output_cap=X264_2_CORES)
    assert plan.describe() == (
        "input 1920x1080@60 downscaled to 320x180 (output cap 85 Mpixel/s: what libx264 encodes in "
        "real time on 2 CPU cores), output 1280x720"
    )
    kept = plan_sizes(160, 96, 30, engine_limit=BICUBIC, output_cap=X264_2_CORES)
    assert not kept.downscaled and kept.describe().startswith("input 160x96@30 (within")


def test_off_and_explicit_limits() -> None:
    config = Config(engine=EngineConfig(max_input="off"), encoder=EncoderConfig(max_output="off"))
    spec = engine_spec("bicubic")
    assert engine_cap(config, spec) is None and encoder_cap(config) is None
    plan = plan_sizes(1920, 1080, 30, engine_limit=None, output_cap=None)
    assert plan.output == (7680, 4320)
    config = dataclasses.replace(config, encoder=EncoderConfig(max_output="2560x1440@30"))
    plan = plan_sizes(1920, 1080, 30, engine_limit=None, output_cap=encoder_cap(config))
    assert plan.output == (2560, 1440) and "encoder.max_output" in plan.reason


def test_a_bad_limit_names_the_key(tmp_path) -> None:  # noqa: ANN001
    path = tmp_path / "c.yaml"
    path.write_text("encoder:\n  max_output: 4k\n")
    with pytest.raises(ConfigError, match=r"encoder.max_output: expected auto, off or WIDTHxHEIGHT@FPS"):
        load_config(path, environ={})


def test_a_slow_output_is_reported_not_silent() -> None:
    assert frame_rate_note(60, 59) is None
    assert frame_rate_note(60, 38) == (
        "the output keeps 38 of the input's 60 fps: this machine cannot keep up at this size "
        "(frames are dropped as late)"
    )
