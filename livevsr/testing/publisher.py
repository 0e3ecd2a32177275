"""A synthetic RTMP publisher: a moving test pattern, libx264 like OBS sends it, over PyAV's FLV muxer.

Used by the RTMP ingest tests and by benchmarks as a stand-in for OBS (no ffmpeg binary needed):

    frames_sent = publish("rtmp://127.0.0.1:1935/live/testkey", 320, 180, 30, 90)

``frame_hook(image, index)`` sees each frame before it is encoded and may draw into it, e.g. to
burn a timestamp barcode. ``image`` is an RGB ``[H, W, 3]`` uint8 array, C-contiguous; the frame
is converted to yuv420p after the hook, so draw with values that survive that (blocks of >= 2 px).

Why a child process: PyAV opens the output (``avio_open``, which for rtmp:// runs FFmpeg's whole
handshake and publish negotiation) while holding the GIL. A publisher thread in the same process
as an asyncio RTMP server would freeze the server's loop while waiting for the server to answer:
a deadlock. So ``publish`` runs the encoder and FFmpeg's RTMP client in a child process by default,
and ``frame_hook`` runs there too. ``time.monotonic``/``time.time`` are the same clocks in the
child, so timestamps it burns compare with the parent's; side effects on parent objects are lost
(pass ``in_process=True`` when the server lives in another process and you need them).

Why not a plain fork: the caller has live threads holding FFmpeg state (a server's decode/encode
threads; PyAV keeps one swscale context with its own slice threads per Python thread that ever
called ``VideoFrame.reformat``). A forked child gets none of those threads, yet CPython frees the
other threads' thread-locals in the child right after fork(), and freeing such a swscale context
waits on condition variables whose waiters stayed in the parent: the child hangs inside fork().
So children come from multiprocessing's fork server, a clean single-threaded process (spawn where
there is none); the arguments, ``frame_hook`` included, must therefore pickle (a module-level
function or a picklable callable object).
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import pickle
import threading
import time
from collections.abc import Callable
from fractions import Fraction
from typing import Any, Protocol

import av
import numpy as np

AUDIO_RATE = 48000  # Hz
AUDIO_FRAME_SAMPLES = 1024  # one AAC frame
AUDIO_TONE_HZ = 440.0


class _Flag(Protocol):
    def is_set(self) -> bool: ...


def synthetic_frame(width: int, height: int, index: int) -> np.ndarray:
    """A moving test pattern: RGB ``[height, width, 3]`` uint8.

    Diagonal colour gradients scroll by 2 px per frame and a white square crosses the picture, so
    consecutive frames differ everywhere (motion for the encoder and for a VSR model).
    """
    y = np.arange(height, dtype=np.int32)[:, None]
    x = np.arange(width, dtype=np.int32)[None, :]
    shift = 2 * index
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[..., 0] = ((x + shift) * 255 // max(width - 1, 1)) & 0xFF
    image[..., 1] = ((y + shift) * 255 // max(height - 1, 1)) & 0xFF
    image[..., 2] = ((x + y + 3 * shift) // 2) & 0xFF
    side = max(min(width, height) // 6, 2)
    left = (4 * index) % max(width - side, 1)
    top = (height - side) // 2
    image[top : top + side, left : left + side] = 255
    return image


def _tone(start_sample: int, samples: int) -> np.ndarray:
    """A stereo sine as planar float32 ``[2, samples]``."""
    t = (np.arange(samples, dtype=np.float64) + start_sample) / AUDIO_RATE
    mono = (0.2 * np.sin(2 * np.pi * AUDIO_TONE_HZ * t)).astype(np.float32)
    return np.stack([mono, mono])


def aac_frames(duration_ms: int) -> tuple[bytes, list[tuple[bytes, int]]]:
    """The publisher's tone as raw AAC frames, without a connection: (AudioSpecificConfig,
    [(frame, pts_ms)]). For feeding a session's audio path directly (tests, ``livevsr bench audio``)."""
    ctx = av.CodecContext.create("aac", "w")
    ctx.sample_rate, ctx.layout, ctx.format = AUDIO_RATE, "stereo", "fltp"
    ctx.time_base = Fraction(1, AUDIO_RATE)
    ctx.open()
    out = []
    for i in range(duration_ms * AUDIO_RATE // 1000 // AUDIO_FRAME_SAMPLES):
        start = i * AUDIO_FRAME_SAMPLES
        frame = av.AudioFrame.from_ndarray(_tone(start, AUDIO_FRAME_SAMPLES), format="fltp", layout="stereo")
        frame.sample_rate, frame.pts = AUDIO_RATE, start
        out += [(bytes(p), round(p.pts * 1000 / AUDIO_RATE)) for p in ctx.encode(frame)]
    return bytes(ctx.extradata), out


def publish(
    url: str,
    width: int,
    height: int,
    fps: float,
    frames: int,
    *,
    realtime: bool = True,
    frame_hook: Callable[[np.ndarray, int], None] | None = None,
    audio: bool = False,
    gop: int | None = None,
    stop: threading.Event | None = None,
    in_process: bool = False,
) -> int:
    """Publish ``frames`` frames of ``synthetic_frame`` to ``url`` (rtmp://host:port/app/key).

    Encodes libx264 ``tune=zerolatency``, no B-frames, SPS/PPS repeated on every keyframe, a
    keyframe every ``gop`` frames (default: one second), plus a 440 Hz AAC tone when ``audio``.
    With ``realtime`` frames are sent on the wall clock (``index / fps`` after the start);
    otherwise as fast as they encode. Setting ``stop`` ends the publish early and cleanly
    (trailer, FCUnpublish). Returns the number of frames sent.

    Raises what PyAV raises (an ``av.error.FFmpegError``) when the server refuses the connection,
    the application or the key (a refused key gives ``av.error.PermissionError``, also an
    ``OSError``), or when the connection drops mid-stream.
    Runs in a child process unless ``in_process`` (see the module docstring).
    """
    args = (url, width, height, fps, frames, realtime, frame_hook, audio, gop)
    if in_process:
        return _publish(*args, stop)
    return _run_in_child(args, stop)


def _child_main(conn: multiprocessing.connection.Connection, args: tuple[Any, ...], stop: _Flag) -> None:
    try:
        result: tuple[str, Any] = ("ok", _publish(*args, stop))
    except BaseException as exc:  # noqa: B036 - everything goes back to the parent
        try:
            result = ("error", pickle.dumps(exc))
            pickle.loads(result[1])
        except Exception:
            result = ("error", pickle.dumps(RuntimeError(f"{type(exc).__name__}: {exc}")))
    conn.send(result)
    conn.close()


def _context() -> multiprocessing.context.BaseContext:
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    # The server imports PyAV and numpy once; each publisher is then a cheap fork of it.
    ctx.set_forkserver_preload([__name__])
    return ctx


def _run_in_child(args: tuple[Any, ...], stop: threading.Event | None) -> int:
    ctx = _context()
    parent_end, child_end = ctx.Pipe(duplex=False)
    child_stop = ctx.Event()
    process = ctx.Process(
        target=_child_main, args=(child_end, args, child_stop), name="livevsr-publisher", daemon=True
    )
    process.start()
    child_end.close()
    try:
        try:
            while not parent_end.poll(0.05):
                if stop is not None and stop.is_set():
                    child_stop.set()
            status, value = parent_end.recv()
        except EOFError:
            process.join()
            raise RuntimeError(f"publisher process died (exit code {process.exitcode})") from None
        process.join()
    finally:
        if process.is_alive():
            process.terminate()
            process.join()
        parent_end.close()
    if status == "ok":
        return int(value)
    raise pickle.loads(value)


def _publish(
    url: str,
    width: int,
    height: int,
    fps: float,
    frames: int,
    realtime: bool,
    frame_hook: Callable[[np.ndarray, int], None] | None,
    audio: bool,
    gop: int | None,
    stop: _Flag | None,
) -> int:
    if width % 2 or height % 2:
        raise ValueError(f"width and height must be even for yuv420p, got {width}x{height}")
    rate = Fraction(fps).limit_denominator(1001)
    gop_frames = gop if gop is not None else max(round(fps), 1)
    sent = 0
    container = av.open(url, "w", format="flv")
    try:
        video = container.add_stream("libx264", rate=rate)
        video.width = width
        video.height = height
        video.pix_fmt = "yuv420p"
        video.codec_context.time_base = 1 / rate
        video.codec_context.gop_size = gop_frames
        video.codec_context.max_b_frames = 0
        keyint = f"keyint={gop_frames}:min-keyint={gop_frames}"
        video.codec_context.options = {
            "preset": "ultrafast",
            "tune": "zerolatency",
            # SPS/PPS on every keyframe and no B-frames, as OBS sends; keyframes exactly every gop.
            "x264-params": f"repeat-headers=1:bframes=0:scenecut=0:{keyint}",
        }
        sound = None
        if audio:
            sound = container.add_stream("aac", rate=AUDIO_RATE, layout="stereo")
            sound.codec_context.time_base = Fraction(1, AUDIO_RATE)
        audio_samples = 0
        start = time.monotonic()
        for index in range(frames):
            if stop is not None and stop.is_set():
                break
            if realtime:
                delay = start + float(index / rate) - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            image = synthetic_frame(width, height, index)
            if frame_hook is not None:
                frame_hook(image, index)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")
            frame.pts = index
            frame.time_base = 1 / rate
            container.mux(video.encode(frame))
            sent += 1
            if sound is not None:
                # Keep audio up to this video frame's end time, in whole AAC frames.
                until = int((index + 1) / rate * AUDIO_RATE)
                while audio_samples < until:
                    chunk = av.AudioFrame.from_ndarray(
                        _tone(audio_samples, AUDIO_FRAME_SAMPLES), format="fltp", layout="stereo"
                    )
                    chunk.sample_rate = AUDIO_RATE
                    chunk.pts = audio_samples
                    chunk.time_base = Fraction(1, AUDIO_RATE)
                    container.mux(sound.encode(chunk))
                    audio_samples += AUDIO_FRAME_SAMPLES
        container.mux(video.encode(None))
        if sound is not None:
            container.mux(sound.encode(None))
    finally:
        container.close()
    return sent
