"""Pull ingest: a stream whose input is a URL that PyAV opens (rtmp://, srt://, rtsp://, HLS, files).

One thread per pulled stream opens the URL, starts a publish session through the stream manager
(with the stream's own key, like any publisher) and feeds it: H.264 as compressed packets (decoded
behind the session, as RTMP ingest does), any other video codec decoded here into frames, AAC
audio as raw frames. When the source ends or fails the session ends and the URL is opened again
with exponential backoff, until the server stops; a file therefore plays in a loop. Finite media
(files, VOD playlists) are paced on their timestamps like a live source; live sources are not.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import av

from livevsr.config import mask_url
from livevsr.errors import IngestError
from livevsr.ingest.base import AudioPacket, VideoPacket

log = logging.getLogger(__name__)

OPEN_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 10.0  # a live source silent this long is reopened
BACKOFF_START_S = 1.0
BACKOFF_MAX_S = 30.0
STABLE_SESSION_S = 10.0  # a session that lasted this long resets the backoff
ADTS_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350)


class Sink(Protocol):
    def video_config(self, codec: str, extradata: bytes | None) -> None: ...
    def video_packet(self, packet: VideoPacket) -> None: ...
    def video_frame(self, frame: av.VideoFrame, pts_ms: int, recv_ns: int) -> None: ...
    def audio_config(self, codec: str, extradata: bytes | None, sample_rate: int, channels: int) -> None: ...
    def audio_packet(self, packet: AudioPacket) -> None: ...
    def set_source_fps(self, fps: float) -> None: ...
    def close(self, reason: str) -> None: ...


class Authority(Protocol):
    def open_publish(self, key: str, source: str, *, pull: bool = False) -> Any: ...


def adts_to_raw(data: bytes) -> tuple[bytes, bytes, int, int] | None:
    """(raw AAC frame, AudioSpecificConfig, sample rate, channels) from one ADTS frame, or None."""
    if len(data) < 7 or data[0] != 0xFF or data[1] & 0xF0 != 0xF0:
        return None
    header = 7 if data[1] & 0x01 else 9  # protection_absent = 0 adds a CRC
    profile = (data[2] >> 6) + 1  # audio object type
    rate_index = (data[2] >> 2) & 0x0F
    channels = ((data[2] & 0x01) << 2) | (data[3] >> 6)
    if rate_index >= len(ADTS_RATES):
        return None
    asc = ((profile << 11) | (rate_index << 7) | (channels << 3)).to_bytes(2, "big")
    return data[header:], asc, ADTS_RATES[rate_index], channels


class PullSource:
    """Keeps one stream fed from ``url`` until ``stop``."""

    def __init__(
        self, name: str, key: str, url: str, authority: Authority, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.name = name
        self.url = url
        self.masked = mask_url(url)
        self._key = key
        self._authority = authority
        self._loop = loop
        self._stop = threading.Event()
        self.sessions = 0  # publish sessions started
        self.last_reason: str | None = None
        self._thread = threading.Thread(target=self._run, name=f"pull-{name}", daemon=True)

    def start(self) -> None:
        log.info("[%s] pulling from %s", self.name, self.masked)
        self._thread.start()

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.to_thread(self._thread.join, OPEN_TIMEOUT_S + READ_TIMEOUT_S)

    # -- thread ------------------------------------------------------------------------------------

    def _call(self, fn: Callable[..., Any], *args: Any) -> None:
        """Call a sink method on the event loop (sinks are not thread-safe)."""
        self._loop.call_soon_threadsafe(fn, *args)

    def _open_session(self) -> Sink:
        async def open_publish() -> Sink:
            return self._authority.open_publish(self._key, f"pull {self.masked}", pull=True)

        return asyncio.run_coroutine_threadsafe(open_publish(), self._loop).result(timeout=10)

    def _run(self) -> None:
        backoff = BACKOFF_START_S
        logged: str | None = None
        while not self._stop.is_set():
            started = time.monotonic()
            reason = self._pull_once()
            if self._stop.is_set():
                break
            stable = time.monotonic() - started >= STABLE_SESSION_S
            if stable or reason == "the source ended":
                backoff = BACKOFF_START_S  # a file loops after a short pause
            if stable:
                logged = None  # it worked for a while: the same cause is news again
            self.last_reason = reason
            if reason != logged:  # one line per cause, not one per attempt
                log.warning(
                    "[%s] pull %s: %s; reopening with backoff (%.0f s, up to %.0f s)",
                    self.name, self.masked, reason, backoff, BACKOFF_MAX_S,
                )  # fmt: skip
                logged = reason
            self._stop.wait(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    def _pull_once(self) -> str:
        """Open, feed one session until the source ends or fails; returns why it ended."""
        try:
            container = av.open(self.url, timeout=(OPEN_TIMEOUT_S, READ_TIMEOUT_S))
        except av.error.FFmpegError as exc:
            return f"cannot open: {exc.strerror or type(exc).__name__}"  # strerror: without the URL
        except OSError as exc:
            return f"cannot open: {exc.strerror or type(exc).__name__}"
        try:
            if not container.streams.video:
                return "the source has no video"
            try:
                sink = self._open_session()
            except IngestError as exc:
                return f"refused: {exc}"
            except (TimeoutError, RuntimeError, asyncio.CancelledError) as exc:  # the loop is stopping
                return f"refused: {type(exc).__name__}"
            self.sessions += 1
            reason = "the source ended"
            try:
                self._pump(container, sink)
            except av.error.FFmpegError as exc:
                reason = f"read failed: {exc.strerror or type(exc).__name__}"
            except _Stopped:
                reason = "server stopping"
            except Exception as exc:  # a bug or an odd source must not end the pulling for good
                log.exception("[%s] pull %s failed", self.name, self.masked)
                reason = f"failed: {type(exc).__name__}"
            self._call(sink.close, f"pull: {reason}")
            return reason
        finally:
            container.close()

    def _pump(self, container: av.container.InputContainer, sink: Sink) -> None:
        video = container.streams.video[0]
        audio = next((s for s in container.streams.audio if s.codec_context.name == "aac"), None)
        packets_mode = video.codec_context.name == "h264"
        if packets_mode:
            extradata = video.codec_context.extradata
            self._call(sink.video_config, "h264", bytes(extradata) if extradata else None)
        if video.average_rate:
            self._call(sink.set_source_fps, float(video.average_rate))
        audio_config: bytes | None = None
        if audio is not None and audio.codec_context.extradata:
            audio_config = bytes(audio.codec_context.extradata)
            ctx = audio.codec_context
            self._call(sink.audio_config, "aac", audio_config, ctx.sample_rate, ctx.channels)
        paced = container.duration is not None  # finite media: play it at its own speed
        clock: tuple[float, float] | None = None  # (monotonic s, media s) at the first packet
        streams = [video] + ([audio] if audio is not None else [])
        for packet in container.demux(*streams):
            if self._stop.is_set():
                raise _Stopped
            if packet.pts is None or packet.dts is None or packet.time_base is None:
                continue  # flush packets
            t = float(packet.pts * packet.time_base)
            if paced:
                if clock is None:
                    clock = (time.monotonic(), t)
                delay = clock[0] + (t - clock[1]) - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    raise _Stopped
            recv_ns = time.monotonic_ns()
            pts_ms = round(t * 1000)
            if packet.stream is audio:
                data = bytes(packet)
                if audio_config is None:  # ADTS (MPEG-TS, HLS): the config is in every header
                    parsed = adts_to_raw(data)
                    if parsed is None:
                        continue
                    data, asc, rate, channels = parsed
                    audio_config = asc
                    self._call(sink.audio_config, "aac", asc, rate, channels)
                elif data[:2] == b"\xff\xf1" or data[:2] == b"\xff\xf9":
                    parsed = adts_to_raw(data)
                    data = parsed[0] if parsed else data
                self._call(sink.audio_packet, AudioPacket(data, pts_ms, "aac", recv_ns))
            elif packets_mode:
                dts_ms = round(float(packet.dts * packet.time_base) * 1000)
                vp = VideoPacket(bytes(packet), pts_ms, dts_ms, packet.is_keyframe, recv_ns)
                self._call(sink.video_packet, vp)
            else:
                for frame in packet.decode():
                    ms = round(float(frame.time) * 1000) if frame.time is not None else pts_ms
                    self._call(sink.video_frame, frame, ms, recv_ns)


class _Stopped(Exception):
    """The server is stopping: leave the demux loop."""
