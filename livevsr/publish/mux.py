"""Remux a stream's encoded packets (plus its original audio) into a container, on a thread.

Shared by the RTMP relay (FLV over the network) and the recorder (fragmented MP4 or MKV files).
Nothing is re-encoded: the H.264 comes from the stream's one encoder as Annex-B with SPS/PPS on
every IDR, and the audio is the publisher's AAC. The muxers convert Annex-B to the length-prefixed
form they store once the codec extradata holds Annex-B SPS/PPS, taken from the first keyframe.

Audio is ahead of the video by the engine's lookahead and the encoder; ``SessionTap`` maps it onto
the encoder's 90 kHz clock (``AudioClock``) and the writer holds each audio packet until the video
has reached its pts.

Each writer has a bounded queue: a slow target drops (and counts) packets instead of stalling the
pipeline; after a video drop it waits for the next keyframe so the output stays decodable.
"""

from __future__ import annotations

import abc
import collections
import fractions
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import av

from livevsr.ingest.base import AudioPacket
from livevsr.pipeline.avsync import AudioClock
from livevsr.pipeline.fanout import EncodedFrame

log = logging.getLogger(__name__)

TIME_BASE = fractions.Fraction(1, 90000)  # the encoder's clock; audio is mapped onto it
QUEUE_ITEMS = 256  # ~4 s of 30 fps video plus its audio; a slower target drops
AUDIO_HOLD_90K = 10 * 90000  # audio waiting for its video; more than the deepest engine lookahead
AUDIO_WAIT_S = 1.0  # how long an output waits for the audio configuration before opening without
BACKOFF_START_S = 1.0
BACKOFF_MAX_S = 30.0
STABLE_CONNECTION_S = 30.0  # a connection that lasted this long resets the backoff


def split_annexb(data: bytes) -> list[bytes]:
    """The NAL units of an Annex-B access unit (3- or 4-byte start codes)."""
    units = []
    start = data.find(b"\x00\x00\x01")
    while start >= 0:
        begin = start + 3
        nxt = data.find(b"\x00\x00\x01", begin)
        end = len(data) if nxt < 0 else nxt
        unit = data[begin:end]
        if nxt >= 0:
            unit = unit.rstrip(b"\x00")  # trailing zero of the next 4-byte start code
        if unit:
            units.append(unit)
        start = nxt
    return units


def parameter_sets(data: bytes) -> bytes | None:
    """Annex-B SPS + PPS of a keyframe (the extradata muxers need), or None if it carries none."""
    units = split_annexb(data)
    sps = [u for u in units if u[0] & 0x1F == 7]
    pps = [u for u in units if u[0] & 0x1F == 8]
    if not sps or not pps:
        return None
    return b"".join(b"\x00\x00\x00\x01" + u for u in sps[:1] + pps)


def picture_size(keyframe: bytes) -> tuple[int, int]:
    """Width and height from a keyframe, by decoding it (exact, and only once per configuration)."""
    ctx = av.CodecContext.create("h264", "r")
    frames = list(ctx.decode(av.Packet(keyframe))) + list(ctx.decode(None))
    if frames:
        return frames[0].width, frames[0].height
    if ctx.width and ctx.height:
        return ctx.width, ctx.height
    raise ValueError("the keyframe does not decode")


@dataclass(frozen=True, slots=True)
class AudioTrack:
    codec: str  # "aac"
    extradata: bytes | None  # AudioSpecificConfig
    sample_rate: int
    channels: int


@dataclass(slots=True)
class _Item:
    kind: str  # "video" | "audio" | "audio_config" | "end"
    data: bytes = b""
    pts: int = 0  # 90 kHz
    keyframe: bool = False
    track: AudioTrack | None = None


_running: set[PacketWriter] = set()  # writers whose thread has not finished
_running_lock = threading.Lock()


def join_writers(timeout_s: float) -> int:
    """Wait (blocking) for every writer to finish its output; returns how many did not in time.

    At shutdown, so that recordings get their last fragment and trailer and relays their end."""
    deadline = time.monotonic() + timeout_s
    with _running_lock:
        writers = list(_running)
    for writer in writers:
        writer.join(max(0.0, deadline - time.monotonic()))
    return sum(1 for w in writers if w._thread.is_alive())


class PacketWriter(abc.ABC):
    """One output (a URL or a file series) written by its own thread.

    Subclasses give ``_open`` (a new output container) and ``describe`` (a log-safe name). The loop
    calls ``video``, ``audio``, ``set_audio`` and ``close``; none of them blocks.
    """

    retry = True  # reopen with exponential backoff after an error (a relay); False: give up

    def __init__(self, name: str, on_drop: Callable[[str, int], None], drop_cause: str) -> None:
        self.name = name  # the stream's
        self._on_drop = on_drop
        self._drop_cause = drop_cause
        self._queue: queue.Queue[_Item] = queue.Queue(maxsize=QUEUE_ITEMS)
        self._skip_to_keyframe = False
        self.dropped = 0
        self.written = {"video": 0, "audio": 0}
        self.opened = 0  # containers opened (reconnects + 1, or files)
        self.failed: str | None = None
        self._audio_track: AudioTrack | None = None
        self._container: av.container.OutputContainer | None = None
        self._vstream: av.video.stream.VideoStream | None = None
        self._astream: av.audio.stream.AudioStream | None = None
        self._params: bytes | None = None
        self._base_pts = 0
        self._last_video_pts = -1
        self._last_audio_pts = -1
        self._held_audio: collections.deque[_Item] = collections.deque()
        self._early: list[_Item] = []  # video waiting for the audio configuration
        self._first_video_at: float | None = None
        self._backoff_s = BACKOFF_START_S
        self._retry_at = 0.0
        self._opened_at = 0.0
        self._last_error: str | None = None
        self._thread = threading.Thread(target=self._run, name=f"{drop_cause}-{name}", daemon=True)
        with _running_lock:
            _running.add(self)
        self._thread.start()

    # -- subclass hooks ---------------------------------------------------------------------------

    @abc.abstractmethod
    def describe(self) -> str:
        """A log-safe name of the output (no stream keys)."""

    @abc.abstractmethod
    def _open(self, width: int, height: int) -> av.container.OutputContainer:
        """A new output container for a picture of this size."""

    # -- event loop side ----------------------------------------------------------------------------

    def video(self, data: bytes, pts: int, keyframe: bool) -> None:
        if self._skip_to_keyframe:
            if not keyframe:
                self._drop(1)
                return
            self._skip_to_keyframe = False
        if not self._put(_Item("video", data, pts, keyframe)):
            self._skip_to_keyframe = True  # the picture stays intact: resume at an IDR
            self._drop(1)

    def audio(self, data: bytes, pts: int) -> None:
        if not self._put(_Item("audio", data, pts)):
            self._drop(1)

    def set_audio(self, track: AudioTrack) -> None:
        self._put(_Item("audio_config", track=track), force=True)

    def close(self) -> None:
        self._put(_Item("end"), force=True)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _drop(self, n: int) -> None:
        self.dropped += n
        self._on_drop(self._drop_cause, n)

    def _put(self, item: _Item, force: bool = False) -> bool:
        try:
            self._queue.put_nowait(item)
            return True
        except queue.Full:
            if not force:
                return False
        # Control items must arrive: make room by dropping the oldest media.
        while True:
            try:
                self._queue.get_nowait()
                self._drop(1)
            except queue.Empty:
                pass
            try:
                self._queue.put_nowait(item)
                self._skip_to_keyframe = True
                return True
            except queue.Full:
                continue

    # -- writer thread ------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                item = self._queue.get()
                if item.kind == "end":
                    break
                if item.kind == "audio_config":
                    self._audio_track = item.track
                elif item.kind == "audio":
                    self._hold_audio(item)
                elif self.failed is None:
                    self._on_video(item)
        except Exception:  # a bug here must not take the stream down
            log.exception("[%s] %s: writer failed", self.name, self.describe())
        finally:
            self._finish()
            with _running_lock:
                _running.discard(self)

    def _on_video(self, item: _Item) -> None:
        """Hold the first video briefly until the audio's configuration is known (WHIP's comes after
        the first frames): an output's tracks are fixed when it opens."""
        self._early.append(item)
        if self._audio_track is None:
            if self._first_video_at is None:
                self._first_video_at = time.monotonic()
            if time.monotonic() - self._first_video_at < AUDIO_WAIT_S:
                return
        early, self._early = self._early, []
        for it in early:
            self._video(it)

    def _video(self, item: _Item) -> None:
        params = parameter_sets(item.data) if item.keyframe else None
        if self._container is None or (params is not None and params != self._params):
            if not item.keyframe or params is None:
                return  # a decoder can only start at an IDR with its parameter sets
            if time.monotonic() < self._retry_at:
                return
            self._close_container("the encoder's configuration changed" if self._container else None)
            try:
                self._start(item, params)
            except Exception as exc:  # noqa: BLE001 - any open failure is reported the same way
                self._error(f"cannot open: {exc}")
                return
        try:
            self._write_video(item)
        except Exception as exc:  # noqa: BLE001
            self._error(f"write failed: {exc}")

    def _start(self, item: _Item, params: bytes) -> None:
        width, height = picture_size(item.data)
        container = self._open(width, height)
        try:
            vs = container.add_stream("libx264")
            ctx = vs.codec_context
            ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuv420p"
            ctx.time_base = vs.time_base = TIME_BASE
            ctx.options = {"preset": "ultrafast", "tune": "zerolatency"}
            # The stream needs an open codec context, but the packets are ours: replace the
            # encoder's own parameter sets with the ones our packets were encoded with.
            ctx.open()
            ctx.extradata = params
            astream = None
            track = self._audio_track
            if track is not None and track.codec == "aac" and track.extradata:
                astream = container.add_stream("aac", rate=track.sample_rate)
                actx = astream.codec_context
                actx.layout = "stereo" if track.channels >= 2 else "mono"
                actx.open()
                actx.extradata = track.extradata
            container.start_encoding()
        except Exception:
            container.close()
            raise
        self._container, self._vstream, self._astream = container, vs, astream
        self._params = params
        self._base_pts = item.pts
        self._last_video_pts = self._last_audio_pts = -1
        self.opened += 1
        self._opened_at = time.monotonic()
        audio = f", audio {track.codec} {track.sample_rate} Hz" if astream is not None and track else ""
        log.info("[%s] %s: started, video %dx%d%s", self.name, self.describe(), width, height, audio)

    def _write_video(self, item: _Item) -> None:
        assert self._container is not None and self._vstream is not None
        pts = item.pts - self._base_pts
        if pts <= self._last_video_pts:
            return
        self._release_audio(item.pts)
        self._mux(self._vstream, item.data, pts, item.keyframe)
        self._last_video_pts = pts
        self.written["video"] += 1

    def _hold_audio(self, item: _Item) -> None:
        self._held_audio.append(item)
        while self._held_audio and item.pts - self._held_audio[0].pts > AUDIO_HOLD_90K:
            self._held_audio.popleft()  # the video stalled: keep the audio bounded
            self._drop(1)

    def _release_audio(self, video_pts: int) -> None:
        """Write held audio up to the video's time; audio before the output's start is skipped."""
        while self._held_audio and self._held_audio[0].pts <= video_pts:
            a = self._held_audio.popleft()
            if self._astream is None or a.pts < self._base_pts:
                continue
            pts = a.pts - self._base_pts
            if pts <= self._last_audio_pts:
                continue
            self._mux(self._astream, a.data, pts, True)
            self._last_audio_pts = pts
            self.written["audio"] += 1

    def _mux(self, stream: av.stream.Stream, data: bytes, pts: int, keyframe: bool) -> None:
        assert self._container is not None
        packet = av.Packet(data)
        packet.pts = packet.dts = pts
        packet.time_base = TIME_BASE
        packet.is_keyframe = keyframe
        packet.stream = stream
        self._container.mux(packet)

    def _error(self, reason: str) -> None:
        self._close_container(None, quiet=True)
        if not self.retry:
            self.failed = reason
            log.error("[%s] %s: %s; giving up for this publish", self.name, self.describe(), reason)
            return
        if self._opened_at and time.monotonic() - self._opened_at >= STABLE_CONNECTION_S:
            self._backoff_s = BACKOFF_START_S
            self._last_error = None  # it worked for a while: the same cause is news again
        self._opened_at = 0.0
        if reason != self._last_error:  # one line per cause, not one per attempt
            log.warning(
                "[%s] %s: %s; retrying with backoff (up to %.0f s)",
                self.name, self.describe(), reason, BACKOFF_MAX_S,
            )  # fmt: skip
            self._last_error = reason
        self._retry_at = time.monotonic() + self._backoff_s
        self._backoff_s = min(self._backoff_s * 2, BACKOFF_MAX_S)

    def _close_container(self, reason: str | None, quiet: bool = False) -> None:
        container, self._container = self._container, None
        self._vstream = self._astream = None
        self._params = None
        if container is None:
            return
        try:
            container.close()
        except Exception as exc:  # noqa: BLE001 - closing a broken output fails too
            if not quiet:
                log.warning("[%s] %s: close failed: %s", self.name, self.describe(), exc)
        finally:
            self._after_close()
        if reason:
            log.info("[%s] %s: closed (%s)", self.name, self.describe(), reason)

    def _after_close(self) -> None:  # noqa: B027 - an optional hook: a no-op unless a subclass needs it
        """Subclasses release what ``_open`` took besides the container (called once per open)."""

    def _finish(self) -> None:
        if self._early and self.failed is None:  # a publish shorter than the audio wait
            early, self._early = self._early, []
            for it in early:
                self._video(it)
        if self._container is not None and self._held_audio:
            try:
                self._release_audio(self._base_pts + self._last_video_pts)
            except Exception:  # noqa: BLE001
                pass
        had = self._container is not None
        self._close_container(None)
        if had or self.dropped:
            log.info(
                "[%s] %s: ended, %d video and %d audio packets written, %d dropped",
                self.name, self.describe(), self.written["video"], self.written["audio"], self.dropped,
            )  # fmt: skip


class SessionTap:
    """A ``SessionOutput``: feeds one writer per rendition, with the audio on the video's clock."""

    def __init__(self, writers: list[tuple[str, PacketWriter]]) -> None:
        self.writers = writers  # (rendition, writer)
        self._clock = AudioClock()

    def video(self, rendition: str, frame: EncodedFrame) -> None:
        packet = frame.packet
        if packet.pts is None:
            return
        for audio, pts in self._clock.learn(frame):
            self._write_audio(audio, pts)
        data = None
        for r, writer in self.writers:
            if r == rendition:
                data = bytes(packet) if data is None else data
                writer.video(data, packet.pts, packet.is_keyframe)

    def audio_config(self, codec: str, extradata: bytes | None, sample_rate: int, channels: int) -> None:
        for _, writer in self.writers:
            writer.set_audio(AudioTrack(codec, extradata, sample_rate, channels))

    def audio(self, packet: AudioPacket) -> None:
        pts = self._clock.map(packet)
        if pts is not None:
            self._write_audio(packet, pts)

    def _write_audio(self, packet: AudioPacket, pts: int) -> None:
        for _, writer in self.writers:
            writer.audio(packet.data, pts)

    def close(self) -> None:
        for _, writer in self.writers:
            writer.close()

    def join(self, timeout: float | None = None) -> None:
        for _, writer in self.writers:
            writer.join(timeout)
