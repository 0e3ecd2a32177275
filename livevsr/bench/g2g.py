"""``livevsr bench g2g``: glass-to-glass latency through the live server, measured with a burned barcode.

All on loopback: an App (bicubic unless told otherwise) takes an RTMP publisher that burns
``now_us()`` into each 640x360 frame (livevsr/telemetry/barcode.py), and a viewer reads the barcode
back from the 4x output at 4x the cell size. The publisher encodes in a forked child; every clock
read is the same machine's wall clock.

Viewers (``--viewer``):
- ``aiortc`` (default): a WHEP client in this process; latency from "frame drawn by the publisher"
  to "decoded by the viewer", before any playout buffer.
- ``chromium``: the web viewer in headless Chromium with ``?probe=1``; latency to the frame's
  expected display time (requestVideoFrameCallback), jitter buffer included: glass to glass.

Prints one JSON line and appends the run to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import platform
import shlex
import sys
import threading
import time
from multiprocessing.sharedctypes import RawArray
from pathlib import Path
from typing import Any

import aiohttp
import av
import numpy as np

from livevsr.bench import help_text, report
from livevsr.engines.registry import AUTO, engine_names
from livevsr.telemetry import barcode

STREAM_NAME = "main"
STREAM_KEY = "g2g"
SOURCE_CELL_PX = 8
VIEWERS = {
    "aiortc": "aiortc client, latency to decoded",
    "chromium": "web viewer in headless Chromium (?probe=1), latency to expected display",
}


class _StopPublishing(Exception):
    """Raised from the frame hook to end the publisher early."""


class _BarcodeHook:
    """The publisher's frame hook: burns ``now_us()`` into each frame. It is pickled into the
    publisher's child process, so it holds only the cell size and the shared counters."""

    def __init__(self, shared: Any, cell_px: int) -> None:
        self.shared, self.cell_px = shared, cell_px

    def __call__(self, rgb: np.ndarray, index: int) -> None:
        if self.shared[0]:
            raise _StopPublishing
        barcode.burn(rgb, barcode.now_us(), self.cell_px)
        self.shared[1] = index + 1


class BarcodePublisher:
    """``testing.publisher.publish`` in a thread, burning ``now_us()`` into each frame, until ``stop``.

    ``publish`` encodes in a child process, where the frame hook runs; the stop flag and the frame
    count therefore live in shared memory.
    """

    def __init__(self, url: str, width: int, height: int, fps: float, max_s: float,
                 cell_px: int = SOURCE_CELL_PX) -> None:
        self.url = url
        self.width, self.height, self.fps = width, height, fps
        self.max_frames = int(fps * max_s)
        self.cell_px = cell_px
        self.error: BaseException | None = None
        self._shared = RawArray("q", 2)  # [stop requested, frames burned]
        self._thread = threading.Thread(target=self._run, name="barcode-publisher", daemon=True)

    @property
    def frames(self) -> int:
        return int(self._shared[1])

    def _run(self) -> None:
        from livevsr.testing.publisher import publish

        try:
            hook = _BarcodeHook(self._shared, self.cell_px)
            publish(self.url, self.width, self.height, self.fps, self.max_frames, frame_hook=hook)
        except _StopPublishing:
            pass
        except BaseException as exc:  # noqa: B036 - handed to whoever waits on stop()
            self.error = exc

    def start(self) -> None:
        self._thread.start()

    async def stop(self, timeout_s: float = 10.0) -> None:
        self._shared[0] = 1
        if self._thread.is_alive():
            await asyncio.to_thread(self._thread.join, timeout_s)


def read_frame(frame: av.VideoFrame, cell_px: float) -> int | None:
    """The barcode in a decoded frame, reading only the top rows of its luma plane when it is YUV."""
    if frame.format.name in ("yuv420p", "yuvj420p", "nv12"):
        plane = frame.planes[0]
        rows = min(frame.height, barcode.band_height(frame.width, max(int(cell_px), 1)) + int(cell_px))
        luma = np.frombuffer(plane, dtype=np.uint8, count=rows * plane.line_size)
        return barcode.read(luma.reshape(rows, plane.line_size)[:, : frame.width], cell_px)
    return barcode.read(frame.to_ndarray(format="gray"), cell_px)


def percentiles(values: list[float]) -> dict[str, float | None]:
    """Nearest-rank p50/p95/p99 and the extremes, rounded to 0.1 ms."""
    if not values:
        return {"p50": None, "p95": None, "p99": None, "min": None, "max": None}
    s = sorted(values)

    def rank(q: float) -> float:
        return round(s[min(len(s) - 1, int(q * len(s)))], 1)

    return {
        "p50": rank(0.5), "p95": rank(0.95), "p99": rank(0.99), "min": round(s[0], 1), "max": round(s[-1], 1),
    }


def machine() -> str:
    """One line: CPU model, core count, OS, Python; for comparing runs."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 0
    return (f"{model}, {cpus} CPUs, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}")


async def _api_stream(http_port: int) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{http_port}/api/streams") as resp:
            body = await resp.json()
    return next((s for s in body["streams"] if s["name"] == STREAM_NAME), {})


@dataclasses.dataclass
class View:
    """What one viewer saw during the measurement window."""

    latencies_ms: list[float] = dataclasses.field(default_factory=list)
    received: int = 0  # frames decoded (aiortc) or presented (Chromium)
    unread: int = 0  # of those, frames whose barcode did not read
    size: tuple[int, int] | None = None


async def _view_aiortc(http_port: int, args: argparse.Namespace) -> View:
    """An aiortc WHEP client; latency is to "decoded", read from the top of the luma plane."""
    from livevsr.testing.whep_client import WhepClient

    view = View()
    async with WhepClient(f"http://127.0.0.1:{http_port}/whep/{STREAM_NAME}") as client:
        await client.recv(timeout=args.connect_timeout_s)
        measure_from = time.monotonic() + args.warmup_s
        measure_until = measure_from + args.seconds
        while (now := time.monotonic()) < measure_until:
            frame = await client.recv(timeout=10.0)
            at_us = barcode.now_us()
            if now < measure_from:
                continue
            view.received += 1
            view.size = (frame.width, frame.height)
            value = read_frame(frame, SOURCE_CELL_PX * frame.width / args.width)
            if value is None:
                view.unread += 1
                if args.dump_unreadable and view.unread <= 20:
                    _dump(args.dump_unreadable, view.received, frame)
            else:
                view.latencies_ms.append(barcode.latency_us(value, at_us) / 1000)
    return view


def _dump(folder: Path, index: int, frame: av.VideoFrame) -> None:
    """Keep an unreadable frame's luma (``[H, W]`` uint8 .npy) to look at why."""
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / f"unreadable-{index:05d}.npy", frame.to_ndarray(format="gray"))


async def _view_chromium(http_port: int, args: argparse.Namespace) -> View:
    """The web viewer in headless Chromium with ``?probe=1``: latency to the frame's expected display time."""
    from livevsr.testing.chromium import Chromium, chromium_path

    if chromium_path() is None:
        raise RuntimeError("--viewer chromium needs /usr/bin/chromium (apt-get install -y chromium)")
    probe = "window.livevsrStats.probe.upscaled"
    async with Chromium(f"http://127.0.0.1:{http_port}/view/{STREAM_NAME}?probe=1") as browser:
        await browser.wait_for(f"{probe} && {probe}.count > 0", timeout_s=args.connect_timeout_s)
        await asyncio.sleep(args.warmup_s)
        await browser.evaluate("window.livevsrProbe.reset()")
        before = await browser.evaluate(probe)
        await asyncio.sleep(args.seconds)
        after = await browser.evaluate(probe)
        samples = await browser.evaluate("window.livevsrProbe.samples('upscaled')")
        video = "document.getElementById('video-upscaled')"
        size = await browser.evaluate(f"[{video}.videoWidth, {video}.videoHeight]")
    return View(
        latencies_ms=[float(x) for x in samples],
        received=after["frames"] - before["frames"],
        unread=(after["frames"] - before["frames"]) - (after["read"] - before["read"]),
        size=(size[0], size[1]),
    )


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from livevsr.app import App, restrict_ice_addresses
    from livevsr.config import Config, EngineConfig, HTTPConfig, StreamConfig, load_config

    base = load_config(args.config) if args.config else Config(engine=EngineConfig(name="bicubic"))
    engine = base.engine if args.engine is None else dataclasses.replace(base.engine, name=args.engine)
    config = dataclasses.replace(
        base,
        rtmp=dataclasses.replace(base.rtmp, listen="127.0.0.1:0"),
        http=HTTPConfig(listen="127.0.0.1:0"),
        webrtc=dataclasses.replace(base.webrtc, ice_host_addresses=["127.0.0.1"]),
        engine=engine,
        streams=[StreamConfig(name=STREAM_NAME, key=STREAM_KEY)],
    )
    config.check()
    # aioice never offers loopback; the App patches it for its side, this is the client's (same process)
    restrict_ice_addresses(["127.0.0.1"])

    app = App(config)
    await app.start()
    publisher = BarcodePublisher(f"rtmp://127.0.0.1:{app.rtmp_port}/{config.rtmp.app}/{STREAM_KEY}",
                                 args.width, args.height, args.fps, args.warmup_s + args.seconds + 30)
    view = View()
    stream: dict[str, Any] = {}
    try:
        publisher.start()
        deadline = time.monotonic() + args.connect_timeout_s
        while True:  # until the stream is live (the first frames take a moment to go through)
            stream = await _api_stream(app.http_port)
            if stream.get("state") == "live" or time.monotonic() > deadline:
                break
            if publisher.error is not None:
                raise publisher.error
            await asyncio.sleep(0.2)
        viewer = _view_chromium if args.viewer == "chromium" else _view_aiortc
        view = await viewer(app.http_port, args)
        stream = await _api_stream(app.http_port)
    finally:
        await publisher.stop()
        await app.stop()
    if publisher.error is not None:
        raise publisher.error
    return {
        "bench": "g2g",
        "engine": (stream.get("engine") or {}).get("name", config.engine.name),
        "input": f"{args.width}x{args.height}@{args.fps:g}",
        "output": f"{view.size[0]}x{view.size[1]}" if view.size else None,
        "viewer": args.viewer,
        "seconds": args.seconds,
        "frames_published": publisher.frames,
        "frames_received": view.received,
        "frames_unreadable": view.unread,
        "fps_received": round(view.received / args.seconds, 2),
        "g2g_ms": percentiles(view.latencies_ms),
        "server_total_ms": (stream.get("latency_ms") or {}).get("total"),
        "server_stages_ms": {k: v.get("p50") for k, v in (stream.get("latency_ms") or {}).items()},
        "dropped": (stream.get("frames") or {}).get("dropped"),
    }


def _append_markdown(path: Path, command: str, result: dict[str, Any]) -> None:
    g = result["g2g_ms"]
    drops = ", ".join(f"{k} {v}" for k, v in (result.get("dropped") or {}).items() if v) or "0"
    lines = [
        f"\n### g2g: `{command}` ({report.utc_timestamp()})\n",
        f"Machine: {result['machine']}; load average {result['load_avg_1min']} at the end. "
        f"Publisher -> RTMP -> App -> WHEP -> {VIEWERS[result['viewer']]}, all on loopback.\n",
        report.table_header([
            "engine", "input", "output", "viewer", "frames recv (fps)", "unreadable", "g2g ms p50", "p95",
            "p99", "max", "server total p50/p95 ms", "dropped",
        ]),
    ]
    server = result.get("server_total_ms") or {}
    cells = [
        result["engine"], result["input"], result["output"], result["viewer"],
        f"{result['frames_received']} ({result['fps_received']})", result["frames_unreadable"],
        g["p50"], g["p95"], g["p99"], g["max"], f"{server.get('p50', '-')} / {server.get('p95', '-')}", drops,
    ]
    lines.append(report.table_row(cells))
    report.append_section(path, lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="livevsr bench g2g", description=help_text(__doc__, 1))
    parser.add_argument("--seconds", type=float, default=20.0, help="how long to measure (default 20)")
    parser.add_argument("--warmup-s", type=float, default=3.0, help="frames received before this are ignored")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--engine", choices=(AUTO, *engine_names()), default=None,
                        help="default: bicubic, or the config's engine when --config is given")
    parser.add_argument("--config", type=Path, default=None,
                        help="take engine, encoder and pipeline settings from this YAML (ports are ignored)")
    parser.add_argument("--viewer", choices=("aiortc", "chromium"), default="aiortc",
                        help="aiortc: latency to decoded; chromium: the web viewer's ?probe=1, to displayed")
    parser.add_argument("--connect-timeout-s", type=float, default=30.0)
    parser.add_argument("--markdown", type=Path, default=Path(report.BENCHMARKS_MD),
                        help="file the run is appended to")
    parser.add_argument("--no-markdown", action="store_true")
    parser.add_argument("--dump-unreadable", type=Path, default=None, metavar="DIR",
                        help="save the luma of up to 20 frames whose barcode did not read (aiortc viewer)")
    parser.add_argument("--verbose", action="store_true", help="show the server's log")
    args = parser.parse_args(argv)
    if args.width % 2 or args.height % 2 or args.width < 8 * SOURCE_CELL_PX:
        parser.error(f"--width/--height: expected even sizes, width >= {8 * SOURCE_CELL_PX}; "
                     f"got {args.width}x{args.height}")
    if barcode.band_height(args.width, SOURCE_CELL_PX) > args.height:
        parser.error(f"--height: the barcode needs {barcode.band_height(args.width, SOURCE_CELL_PX)} rows")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    command = ("livevsr bench g2g " + shlex.join(argv)).strip()
    try:
        result = asyncio.run(run(args))
    except Exception as exc:  # one JSON line either way, so scripted runs can tell
        print(json.dumps({"bench": "g2g", "command": command, "error": f"{type(exc).__name__}: {exc}"}))
        return 1
    load = os.getloadavg()[0]  # other work on the machine shows up as latency; say how busy it was
    result = {"bench": "g2g", "command": command, "machine": machine(), **result,
              "load_avg_1min": round(load, 2)}
    print(json.dumps(result))
    if result["g2g_ms"]["p50"] is None:
        return 1
    if not args.no_markdown:
        _append_markdown(args.markdown, command, result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
