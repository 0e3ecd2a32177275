"""``livevsr upscale IN OUT``: the live engine and encoder over a file, losslessly (every frame out).

The ``block`` policy of the live pipeline, without threads: a file can wait for the engine.
"""

from __future__ import annotations

import fractions
import logging
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import av

from livevsr.config import EncoderConfig
from livevsr.engines.base import Engine
from livevsr.engines.resize import output_size, resize
from livevsr.errors import IngestError
from livevsr.pipeline.encode import VideoEncoder, pick_codec

log = logging.getLogger(__name__)


def _progress(done: int, total: int | None, started: float) -> None:
    elapsed = max(time.monotonic() - started, 1e-6)
    fps = done / elapsed
    if total:
        width = 30
        filled = int(width * min(done, total) / total)
        bar = "#" * filled + "-" * (width - filled)
        sys.stderr.write(f"\r[{bar}] {done}/{total} frames  {fps:5.1f} fps")
    else:
        sys.stderr.write(f"\r{done} frames  {fps:5.1f} fps")
    sys.stderr.flush()


def upscale_file(
    src: str | Path,
    dst: str | Path,
    engine: Engine,
    encoder_config: EncoderConfig,
    *,
    progress: bool = True,
    on_frame: Callable[[int], None] | None = None,
    output_height: int = 0,
) -> tuple[int, int]:
    """Upscale every video frame of ``src`` into ``dst``; returns (frames in, frames out).

    ``output_height`` (0 = the engine's native 4x): the output's height, the width by the input's
    aspect ratio; the engine's frames are scaled to it when it did not make that size itself."""
    try:
        inp = av.open(str(src))
    except (av.error.FFmpegError, OSError) as exc:
        raise IngestError(f"{src}: cannot open as video ({exc})") from exc
    with inp:
        if not inp.streams.video:
            raise IngestError(f"{src}: has no video stream")
        vstream = inp.streams.video[0]
        fps = float(vstream.average_rate or vstream.guessed_rate or 30)
        total = vstream.frames or None
        with av.open(str(dst), "w") as out:
            ostream = out.add_stream(
                pick_codec(encoder_config), rate=fractions.Fraction(fps).limit_denominator(1001)
            )
            encoder: VideoEncoder | None = None
            pending: deque[int] = deque()  # pts (1/90000 s) of frames inside the engine, in order
            frames_in = frames_out = 0
            geometry: tuple[int, int] | None = None
            held: list[av.VideoFrame] = []
            resized_warned = False
            started = time.monotonic()

            def emit(outs: list[av.VideoFrame]) -> None:
                nonlocal encoder, frames_out
                for frame in outs:
                    if not pending:
                        return  # output of padding frames
                    pts = pending.popleft()
                    if output_height:
                        assert geometry is not None
                        frame = resize(frame, *output_size(*geometry, output_height))
                    if encoder is None:
                        ostream.width, ostream.height = frame.width, frame.height
                        ostream.pix_fmt = "yuv420p"
                        encoder = VideoEncoder(encoder_config, frame.width, frame.height, fps, stream=ostream)
                    out.mux(encoder.encode(frame, pts))
                    frames_out += 1
                    if progress:
                        _progress(frames_out, total, started)
                    if on_frame is not None:
                        on_frame(frames_out)

            def drain() -> None:
                """Push what is held (padded to a chunk) and flush the engine."""
                if held:
                    frames = held + [held[-1]] * (-len(held) % engine.chunk)
                    outs: list[av.VideoFrame] = []
                    for i in range(0, len(frames), engine.chunk):
                        outs += engine.push(frames[i : i + engine.chunk])
                    held.clear()
                    emit(outs)
                emit(engine.flush())

            for frame in inp.decode(vstream):
                size = (frame.width, frame.height)
                if geometry is not None and size != geometry:
                    # One output file keeps one size: later frames are scaled to the first geometry.
                    if not resized_warned:
                        log.warning(
                            "%s: size changes from %dx%d to %dx%d at frame %d; scaling to the first size",
                            src,
                            *geometry,
                            *size,
                            frames_in,
                        )
                        resized_warned = True
                    frame = frame.reformat(width=geometry[0], height=geometry[1])
                if geometry is None:
                    engine.open(size[0], size[1], fps)
                    geometry = size
                pending.append(round(frames_in * 90000 / fps))
                frames_in += 1
                held.append(frame)
                if len(held) == engine.chunk:
                    outs = engine.push(held)
                    held = []
                    emit(outs)
            if geometry is not None:
                drain()
                engine.close()
            if encoder is not None:
                out.mux(encoder.flush())
            if progress:
                sys.stderr.write("\n")
    return frames_in, frames_out
