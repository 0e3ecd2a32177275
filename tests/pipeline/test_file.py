from pathlib import Path

import av
import numpy as np
import pytest

from livevsr.__main__ import main
from livevsr.config import EncoderConfig
from livevsr.engines.bicubic.engine import BicubicEngine
from livevsr.pipeline.file import upscale_file


def write_video(path: Path, width: int, height: int, frames: int, resize_at: int | None = None) -> None:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            img = np.full((height, width, 3), (i * 9) % 256, np.uint8)
            img[:, i % width] = 255
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            if resize_at is not None and i >= resize_at:
                frame = frame.reformat(width=width // 2, height=height // 2)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


def read_frames(path: Path) -> list[av.VideoFrame]:
    with av.open(str(path)) as inp:
        return list(inp.decode(video=0))


class ChunkedEngine(BicubicEngine):
    """Bicubic behind an 8-frame lookahead, as FlashVSR is: exercises chunking, warm-up and flush."""

    chunk = 8

    def __init__(self) -> None:
        super().__init__()
        self._held: list[av.VideoFrame] = []

    def push(self, frames: list[av.VideoFrame]) -> list[av.VideoFrame]:
        assert len(frames) == self.chunk
        out, self._held = self._held, super().push(frames)
        return out

    def flush(self) -> list[av.VideoFrame]:
        out, self._held = self._held, []
        return out


@pytest.mark.parametrize("engine_cls", [BicubicEngine, ChunkedEngine])
def test_every_frame_comes_out_at_exactly_four_times_the_size(tmp_path: Path, engine_cls: type) -> None:
    src, dst = tmp_path / "in.mp4", tmp_path / "out.mp4"
    write_video(src, 50, 38, 21)  # odd sizes, and a frame count that is not a chunk multiple
    frames_in, frames_out = upscale_file(
        src, dst, engine_cls(), EncoderConfig(codec="libx264"), progress=False
    )
    assert (frames_in, frames_out) == (21, 21)
    out = read_frames(dst)
    assert len(out) == 21
    assert {(f.width, f.height) for f in out} == {(200, 152)}
    # Order is kept: the moving bright column ends up at 4x its source position.
    for i in (0, 7, 20):
        row = out[i].to_ndarray(format="gray")[76]
        assert abs(int(np.argmax(row)) - 4 * (i % 50)) <= 3


def test_size_change_inside_a_file_keeps_one_output_size(tmp_path: Path) -> None:
    src, dst = tmp_path / "in.mkv", tmp_path / "out.mkv"
    write_video(src, 64, 48, 12, resize_at=6)
    assert upscale_file(src, dst, BicubicEngine(), EncoderConfig(codec="libx264"), progress=False) == (12, 12)
    assert {(f.width, f.height) for f in read_frames(dst)} == {(256, 192)}


def test_cli_upscale_reports_counts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, dst = tmp_path / "in.mp4", tmp_path / "out.mp4"
    write_video(src, 32, 32, 5)
    assert main(["upscale", str(src), str(dst), "--engine", "bicubic"]) == 0
    assert "5 frames upscaled from 5" in capsys.readouterr().out


def test_cli_upscale_of_a_non_video_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    assert main(["upscale", str(bad), str(tmp_path / "o.mp4"), "--engine", "bicubic"]) == 2
    assert "cannot open as video" in capsys.readouterr().err


def test_auto_preset_trades_quality_for_speed_by_pixel_rate_and_cores() -> None:
    from livevsr.pipeline.encode import auto_preset

    assert auto_preset(2560, 1440, 30, cores=2) == "ultrafast"  # 110 Mpx/s on 2 cores
    assert auto_preset(640, 360, 30, cores=2) == "faster"
    assert auto_preset(1920, 1080, 30, cores=16) == "faster"
    assert auto_preset(1920, 1080, 30, cores=4) == "superfast"


@pytest.mark.parametrize("engine_cls", [BicubicEngine, ChunkedEngine])
def test_output_height_sets_the_height_and_keeps_the_aspect_ratio(tmp_path: Path, engine_cls: type) -> None:
    # ChunkedEngine stands in for FlashVSR: it ignores output_height and makes 4x, which is rescaled.
    src, dst = tmp_path / "in.mp4", tmp_path / "out.mp4"
    write_video(src, 50, 38, 10)
    engine = BicubicEngine(output_height=144) if engine_cls is BicubicEngine else engine_cls()
    counts = upscale_file(src, dst, engine, EncoderConfig(codec="libx264"), progress=False, output_height=144)
    assert counts == (10, 10)
    # 50 * 144 / 38 = 189.47: the nearest even width
    assert {(f.width, f.height) for f in read_frames(dst)} == {(190, 144)}


def test_cli_upscale_height(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, dst = tmp_path / "in.mp4", tmp_path / "out.mp4"
    write_video(src, 64, 36, 5)
    assert main(["upscale", str(src), str(dst), "--engine", "bicubic", "--height", "90"]) == 0
    assert "5 frames upscaled from 5" in capsys.readouterr().out
    assert {(f.width, f.height) for f in read_frames(dst)} == {(160, 90)}
    with pytest.raises(SystemExit):
        main(["upscale", str(src), str(dst), "--height", "91"])
    assert "even height 64..4320" in capsys.readouterr().err
