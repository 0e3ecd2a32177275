"""One stream's lifecycle: publish sessions come and go, viewers stay subscribed to the stream.

A ``PublishSession`` is the ``IngestSink`` of one publish: it owns the decode thread, the ring, the
engine worker and the encode worker. The ``Stream`` outlives sessions: its broadcasters keep their
viewers across publisher reconnects and resolution changes, and its stats are what /api/streams shows.
"""

from __future__ import annotations

import asyncio
import ctypes
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Protocol

import av

from livevsr.config import Config, StreamConfig
from livevsr.engines.base import Engine
from livevsr.engines.registry import EngineChoice
from livevsr.engines.resize import resize
from livevsr.ingest.base import AudioPacket, VideoPacket
from livevsr.pipeline.decode import BACKLOG_PACKETS, DecodedFrame, DecodeThread
from livevsr.pipeline.encode_worker import EncodeWorker
from livevsr.pipeline.fanout import AUDIO_QUEUE_PACKETS, Broadcaster, EncodedFrame
from livevsr.pipeline.ring import FrameRing
from livevsr.pipeline.sizing import LiveSizing, SizePlan, frame_rate_note
from livevsr.pipeline.worker import EngineWorker, UpscaledFrame
from livevsr.telemetry.metrics import Metrics, RollingStats
from livevsr.telemetry.timing import FrameTiming

log = logging.getLogger(__name__)

RENDITIONS = ("upscaled", "source")
ENGINE_QUEUE_FRAMES = 8  # upscaled frames waiting for the encoder; backpressure onto the ring
PIPELINE_STAGES = ("decode", "queue", "engine", "encode")
FPS_SAMPLE_PACKETS = 8
BACKLOG_HIGH_WATER = BACKLOG_PACKETS // 2  # block policy: pause the publisher above this many packets


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc
    except (OSError, AttributeError):
        return None


_MALLOC_TRIM = _malloc_trim()


def return_freed_memory() -> None:
    """Give the heap's free pages back to the OS. A session frees hundreds of MB of frames and
    encoder buffers in the worker threads' malloc arenas, which glibc otherwise keeps: the soak's
    server stayed ~400 MB above its start after every stream had ended."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


class SessionOutput(Protocol):
    """A consumer of one publish session's encoded packets and original audio (relay, recorder, WHEP audio).

    Methods are called on the event loop and must not block; ``close`` comes once, after the
    session's last packet.
    """

    def video(self, rendition: str, frame: EncodedFrame) -> None: ...

    def audio_config(self, codec: str, extradata: bytes | None, sample_rate: int, channels: int) -> None: ...

    def audio(self, packet: AudioPacket) -> None: ...

    def close(self) -> None: ...


class Stream:
    """A configured stream (name + key); at most one publish session at a time."""

    def __init__(
        self,
        config: Config,
        stream_config: StreamConfig,
        engine_choice: EngineChoice,
        engine_factory: Callable[[], Engine],
        metrics: Metrics,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.name = stream_config.name
        self.key = stream_config.key
        self.output_height = stream_config.output_height  # 0 = the engine's native 4x
        self.config = config
        self.engine_choice = engine_choice
        self.engine_factory = engine_factory
        self.metrics = metrics
        self.loop = loop
        self.stats = RollingStats()
        self.state = "idle"
        self.reason = "waiting for a publisher"
        self.refusal: str | None = None  # why the last publish was refused (codec, admission), if it was
        self.session: PublishSession | None = None
        self.sessions_running: set[PublishSession] = set()  # includes ended ones still draining
        self.input_size: tuple[int, int] | None = None
        self.output_size: tuple[int, int] | None = None
        self.source_fps = 0.0
        self.engine_load: float | None = None  # measured by the manager's LoadMonitor
        self.sizing = LiveSizing(config, engine_choice.spec, stream_config.output_height)
        self.scaling: SizePlan | None = None  # the current publish's sizes and why (pipeline/sizing.py)
        self.counts = {"received": 0, "decoded": 0, "upscaled": 0, "encoded": 0}  # since the server started
        self.dropped: dict[str, int] = {}
        # counts and dropped when the current (or last) publish started: /api/streams shows the
        # publish people are looking at, not what earlier publishers left behind.
        self._publish_base: tuple[dict[str, int], dict[str, int]] = (dict(self.counts), {})
        self._drop_lock = threading.Lock()
        self._drops_unlogged: dict[str, int] = {}
        self._drops_logged_at = 0.0
        self.last_pts_90k = 0
        self.broadcasters = {r: Broadcaster(self._keyframe_requester(r)) for r in RENDITIONS}
        # Opus for WHEP viewers, fed by a WhepAudioTap per session (see app.py); every packet is a keyframe.
        self.audio = Broadcaster(lambda: None, queue_packets=AUDIO_QUEUE_PACKETS)
        # Each publish session gets one output from each factory (relays, recorder, WHEP audio: see app.py).
        self.output_factories: list[Callable[[PublishSession], SessionOutput]] = []
        metrics.init_stream(self.name)

    def _keyframe_requester(self, rendition: str) -> Callable[[], None]:
        def request() -> None:
            if self.session is not None and self.session.encoder is not None:
                self.session.encoder.request_keyframe(rendition)

        return request

    # -- publish sessions (event loop) -------------------------------------------------------------

    def start_session(self, source: str) -> PublishSession:
        if self.session is not None:
            # The same publisher reconnecting before its old connection timed out wins.
            self.session.close("replaced by a new publish of the same stream")
        self.stats.reset()
        self.scaling = None
        self.refusal = None
        self._publish_base = (dict(self.counts), dict(self.dropped))
        self.session = PublishSession(self, source)
        self.sessions_running.add(self.session)
        self.state, self.reason = "starting", f"publisher connected ({source})"
        self.metrics.live.labels(self.name).set(1)
        log.info("[%s] publish started from %s, engine %s", self.name, source, self.engine_choice.name)
        return self.session

    def session_ended(self, session: PublishSession, reason: str, error: bool) -> None:
        if self.session is not session:
            return
        self.session = None
        self.last_pts_90k = max(self.last_pts_90k, session.last_pts_90k) + 3000
        self.state = "error" if error else "idle"
        self.reason = reason if error else f"waiting for a publisher (last: {reason})"
        self.stats.reset_rates()  # nothing comes in or goes out now; latencies stay for a look back
        self.metrics.live.labels(self.name).set(0)
        log.info("[%s] publish ended: %s", self.name, reason)

    def publish_refused(self, reason: str) -> None:
        """A publish was turned away before it started (admission): the viewer shows why."""
        if self.session is None:
            self.state, self.reason, self.refusal = "error", reason, reason

    # -- counters (any thread) ---------------------------------------------------------------------

    def count(self, point: str, n: int = 1) -> None:
        self.counts[point] += n
        self.metrics.frames.labels(self.name, point).inc(n)

    def drop(self, cause: str, n: int) -> None:
        self.dropped[cause] = self.dropped.get(cause, 0) + n
        self.metrics.dropped.labels(self.name, cause).inc(n)
        # One summary line per second at most, never one per frame.
        with self._drop_lock:
            self._drops_unlogged[cause] = self._drops_unlogged.get(cause, 0) + n
            now = time.monotonic()
            if now - self._drops_logged_at < 1.0:
                return
            summary, self._drops_unlogged = self._drops_unlogged, {}
            since, self._drops_logged_at = self._drops_logged_at, now
        causes = ", ".join(f"{k} {v}" for k, v in sorted(summary.items()))
        log.warning(
            "[%s] dropped %d frames in the last %.1f s (%s)",
            self.name,
            sum(summary.values()),
            min(now - since, 99.9),
            causes,
        )

    def record_stages(self, timing: FrameTiming, stages: tuple[str, ...]) -> None:
        self.stats.add_timing(timing, stages)
        for stage in stages:
            value = timing.stage_s(stage)
            if value is not None:
                self.metrics.stage_seconds.labels(self.name, stage).observe(value)

    # -- viewers ------------------------------------------------------------------------------------

    @property
    def viewer_count(self) -> int:
        return sum(b.subscriber_count for b in self.broadcasters.values())

    def viewers_changed(self) -> None:
        self.metrics.viewers.labels(self.name).set(self.viewer_count)

    def snapshot(self) -> dict:
        """The JSON /api/streams shows for this stream."""
        fps_in, fps_out = self.stats.fps("in"), self.stats.fps("out")
        return {
            "name": self.name,
            "state": self.state,
            "reason": self.reason,
            "refused": self.refusal,
            "engine": {"name": self.engine_choice.name, "reason": self.engine_choice.reason,
                       "load": None if self.engine_load is None else round(self.engine_load, 3)},
            "input": None if self.input_size is None else
            {"width": self.input_size[0], "height": self.input_size[1], "fps": fps_in},
            "output": None if self.output_size is None else
            {"width": self.output_size[0], "height": self.output_size[1], "fps": fps_out},
            "scaling": self._scaling_snapshot(fps_in, fps_out),
            "frames": self._publish_frames(),  # the current (or last) publish
            "frames_total": {**self.counts, "dropped": dict(self.dropped)},  # every publish since start
            "latency_ms": self.stats.percentiles_ms(),
            "viewers": self.viewer_count,
            "renditions": list(RENDITIONS) if self.config.encoder.source_rendition else ["upscaled"],
        }  # fmt: skip

    def _scaling_snapshot(self, fps_in: float, fps_out: float) -> dict | None:
        plan = self.scaling
        if plan is None:
            return None
        live = self.state == "live"
        return {**plan.as_dict(), "frame_rate": frame_rate_note(fps_in, fps_out) if live else None}


    def _publish_frames(self) -> dict:
        counts, dropped = self._publish_base
        return {
            **{k: v - counts.get(k, 0) for k, v in self.counts.items()},
            "dropped": {k: n for k, v in self.dropped.items() if (n := v - dropped.get(k, 0))},
        }


class PublishSession:
    """The receiving end of one publish (an ``IngestSink``); lives until the publisher goes away."""

    def __init__(self, stream: Stream, source: str) -> None:
        self.stream = stream
        self.source = source
        self.name = stream.name
        self.closed = False
        self.error: str | None = None
        self.end_reason: str | None = None  # why it ended; an ingest source tells its publisher
        self._busy_s = 0.0
        self._frame_ids = itertools.count()
        self._fps_hint = 0.0
        self._dts_seen: list[int] = []
        self._plan: SizePlan | None = None  # this publish's sizes (decode thread)
        self.last_pts_90k = stream.last_pts_90k
        cfg = stream.config
        self.engine = stream.engine_factory()
        self.ring: FrameRing[DecodedFrame] = FrameRing(
            cfg.pipeline.ring_capacity_frames, cfg.pipeline.ring_policy, chunk=self.engine.chunk,
            on_drop=lambda items: stream.drop("ring_full", len(items)),
        )  # fmt: skip
        self._upscaled: queue.Queue = queue.Queue(maxsize=ENGINE_QUEUE_FRAMES)
        self.outputs: list[SessionOutput] = []
        for factory in stream.output_factories:
            try:
                self.outputs.append(factory(self))
            except Exception:  # one broken output must not stop the stream
                log.exception("[%s] cannot start an output", self.name)
        self.decoder = DecodeThread(
            self.name, self.ring, stream.drop, self._on_decoded, lossless=cfg.pipeline.ring_policy == "block"
        )
        self.worker = EngineWorker(
            self.name, self.engine, self.ring, self._upscaled, self.fps_hint, self._fail, stream.drop,
            max_queue_ms=cfg.pipeline.max_queue_ms if cfg.pipeline.ring_policy == "drop" else 0,
        )  # fmt: skip
        max_queue_ms = cfg.pipeline.max_queue_ms if cfg.pipeline.ring_policy == "drop" else 0
        self.encoder: EncodeWorker | None = EncodeWorker(
            self.name, cfg.encoder, self._upscaled, self.fps_hint, stream.last_pts_90k,
            self._deliver, self._on_encoded, self._fail, on_drop=stream.drop, max_queue_ms=max_queue_ms,
            chunk_frames=self.engine.chunk, output_height=stream.output_height,
        )  # fmt: skip
        self._watch = asyncio.ensure_future(self._watch_threads())

    @property
    def engine_busy_s(self) -> float:
        """Seconds the engine has computed for this session (admission control's load measure)."""
        worker = self.worker
        if worker is not None:
            self._busy_s = worker.busy_s
        return self._busy_s

    def refuse(self, reason: str) -> None:
        """End this session from the server side (admission control, an unsupported codec);
        ``reason`` becomes the stream's."""
        self.stream.refusal = reason
        self._end_with_error(reason)

    def fps_hint(self) -> float:
        return self._fps_hint or self.stream.source_fps or 30.0

    # -- IngestSink (event loop) --------------------------------------------------------------------

    def video_config(self, codec: str, extradata: bytes | None) -> None:
        if not self.closed:
            self.decoder.configure(codec, extradata)

    def video_packet(self, packet: VideoPacket) -> None:
        if self.closed:
            return
        self._learn_fps(packet.dts_ms)
        timing = FrameTiming(next(self._frame_ids), packet.pts_ms)
        timing.mark("received", packet.recv_ns)
        self.stream.count("received")
        self.decoder.submit(packet, timing)

    def video_frame(self, frame: av.VideoFrame, pts_ms: int, recv_ns: int) -> None:
        """An already decoded frame (WHIP: aiortc decodes): straight into the ring."""
        if self.closed:
            return
        timing = FrameTiming(next(self._frame_ids), pts_ms)
        timing.mark("received", recv_ns)
        timing.mark("decoded")
        self.stream.count("received")
        item = DecodedFrame(frame, timing)
        self._on_decoded(item)
        self.ring.put(item)

    def audio_config(self, codec: str, extradata: bytes | None, sample_rate: int, channels: int) -> None:
        """Audio is not upscaled: it goes straight to the outputs, which align it with the video by pts."""
        if not self.closed:
            for out in self.outputs:
                out.audio_config(codec, extradata, sample_rate, channels)

    def audio_packet(self, packet: AudioPacket) -> None:
        if not self.closed:
            for out in self.outputs:
                out.audio(packet)

    def set_source_fps(self, fps: float) -> None:
        if fps > 0:
            self._fps_hint = fps
            self.stream.source_fps = fps

    async def drain(self) -> None:
        """Block policy: hold the publisher back (its socket unread) while the decoder backlog is high,
        so nothing is dropped; with the drop policy this returns at once."""
        if self.stream.config.pipeline.ring_policy != "block":
            return
        while not self.closed and self.decoder.backlog() >= BACKLOG_HIGH_WATER:
            await asyncio.sleep(0.005)

    def _learn_fps(self, dts_ms: int) -> None:
        """The source frame rate, from the median gap of the first packets (rate control needs it)."""
        if self._fps_hint or len(self._dts_seen) > FPS_SAMPLE_PACKETS:
            return
        self._dts_seen.append(dts_ms)
        if len(self._dts_seen) > FPS_SAMPLE_PACKETS:
            gaps = sorted(b - a for a, b in itertools.pairwise(self._dts_seen) if b > a)
            if gaps:
                self.set_source_fps(round(1000 / gaps[len(gaps) // 2], 2))

    def close(self, reason: str) -> None:
        """The publisher left (or was replaced): drain what is in flight, then end."""
        if self.closed:
            return
        self.closed = True
        self.end_reason = reason
        self.decoder.close()
        self.stream.session_ended(self, reason, error=self.error is not None)

    # -- worker callbacks (worker threads) ----------------------------------------------------------

    def _on_decoded(self, item: DecodedFrame) -> None:
        """Every decoded frame, before the ring: sized for the engine (pipeline/sizing.py)."""
        stream, frame = self.stream, item.frame
        stream.count("decoded")
        stream.stats.tick("in")
        stream.input_size = (frame.width, frame.height)
        plan = self._plan
        if LiveSizing.stale(plan, frame.width, frame.height, self.fps_hint()):
            plan = self._plan = stream.sizing.plan(frame.width, frame.height, self.fps_hint())
            if stream.session is self:
                stream.scaling = plan
            log.info("[%s] %s", self.name, plan.describe())
        if plan.downscaled:
            # Downscaled here, not in the engine thread: the ring then holds small frames.
            item.frame = resize(frame, *plan.engine_input)

    def _on_encoded(self, item: UpscaledFrame) -> None:
        stream = self.stream
        stream.count("encoded")
        stream.stats.tick("out")
        stream.output_size = (item.upscaled.width, item.upscaled.height)
        stream.record_stages(item.timing, PIPELINE_STAGES)
        if stream.state == "starting":
            stream.state, stream.reason = "live", f"publishing from {self.source}"

    def _deliver(self, rendition: str, packets: list[EncodedFrame]) -> None:
        if not packets:
            return
        if rendition == "upscaled":
            self.stream.count("upscaled", len(packets))
        if self.encoder is not None:
            self.last_pts_90k = self.encoder.last_pts_90k
        try:
            self.stream.loop.call_soon_threadsafe(self._publish, rendition, packets)
        except RuntimeError:
            pass  # the loop is gone: nobody is left to watch

    def _publish(self, rendition: str, packets: list[EncodedFrame]) -> None:
        broadcaster = self.stream.broadcasters[rendition]
        for p in packets:
            broadcaster.publish(p)
            for out in self.outputs:
                out.video(rendition, p)

    def _fail(self, reason: str) -> None:
        """A worker thread gave up: end the session with the reason (from any thread)."""
        self.error = reason
        try:
            self.stream.loop.call_soon_threadsafe(self._end_with_error, reason)
        except RuntimeError:  # the loop is gone: the process is exiting
            log.error("[%s] stream stopped during shutdown: %s", self.name, reason)

    def _end_with_error(self, reason: str) -> None:
        log.error("[%s] stream stopped: %s", self.name, reason)
        if not self.closed:
            self.closed = True
            self.end_reason = reason
            self.decoder.close()
            self.worker.stop()
            self.stream.session_ended(self, reason, error=True)
        elif self.stream.session is None:
            self.stream.state, self.stream.reason = "error", reason

    async def _watch_threads(self) -> None:
        """Join the threads off the loop once the session ends."""
        while not self.closed:
            await asyncio.sleep(0.5)
        t0 = time.monotonic()
        await asyncio.to_thread(self.decoder.join, 30)
        await asyncio.to_thread(self.worker.join, 30)
        if self.encoder is not None:
            await asyncio.to_thread(self.encoder.join, 30)
        # The encoder's last packets were queued on the loop before its thread ended: they are out.
        for out in self.outputs:
            out.close()
        self.stream.sessions_running.discard(self)
        self._release()
        await asyncio.to_thread(return_freed_memory)
        log.debug("[%s] session threads joined in %.2fs", self.name, time.monotonic() - t0)

    def _release(self) -> None:
        """Drop the heavy parts now. The session and its threads' bound callbacks form reference
        cycles that only the cyclic GC frees, and it runs rarely: the soak saw ~100 MB of encoder and
        frame buffers kept per ended session until a full collection."""
        self.encoder = None
        self.worker = self.decoder = None  # type: ignore[assignment]
        self.ring = None  # type: ignore[assignment]
        self.engine = None  # type: ignore[assignment]
        self._upscaled = None  # type: ignore[assignment]

    async def wait_finished(self) -> None:
        await self._watch
