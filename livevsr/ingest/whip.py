"""WHIP ingest (RFC 9725): OBS 30+ publishes over WebRTC; aiortc decodes, frames go to the session.

OBS sends one Opus audio m-line and one video m-line carrying only the codec of its configured
encoder; aiortc can only receive H.264 of those, so an offer without H.264 is refused with a hint.
The stream key is the WHIP Bearer token. Video frames arrive decoded (aiortc's receiver decodes
H.264 with PyAV) and enter the ring through ``PublishSession.video_frame``. Opus audio arrives
decoded as well; it is re-encoded to AAC (what FLV and MP4 outputs carry) for relays and recordings.

RTP clocks of audio and video start at random values and aiortc does not map them through RTCP
sender reports, so each track's clock is anchored to the arrival time of its first frame; that
keeps audio and video within a jitter buffer's difference of each other.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Protocol

import av
from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

import livevsr.dtls  # noqa: F401 - lets DTLS work with RSA-certificate peers (GStreamer)
from livevsr.audio import FrameEncoder
from livevsr.errors import IngestError
from livevsr.ingest.base import AudioPacket
from livevsr.sdp import OfferError, offered_video_codecs

log = logging.getLogger(__name__)

AAC_SAMPLE_RATE = 48000  # Hz; Opus always decodes at 48 kHz
AAC_BITRATE_BPS = 128_000
FPS_PROBE_FRAMES = 31  # frames over which the publisher's frame rate is measured


class AuthError(Exception):
    """Missing or wrong Bearer token; the client gets a generic 401, never the detail."""


class NoSuchStream(LookupError):
    """The URL names a stream that is not configured."""


class PublishSink(Protocol):
    """What WHIP feeds (``PublishSession``): decoded video frames, AAC audio, and the end."""

    closed: bool

    def video_frame(self, frame: av.VideoFrame, pts_ms: int, recv_ns: int) -> None: ...

    def audio_config(self, codec: str, extradata: bytes | None, sample_rate: int, channels: int) -> None: ...

    def audio_packet(self, packet: AudioPacket) -> None: ...

    def set_source_fps(self, fps: float) -> None: ...

    def close(self, reason: str) -> None: ...


class StreamLike(Protocol):
    name: str
    key: str


class Authority(Protocol):
    """The slice of ``StreamManager`` WHIP needs."""

    streams: dict

    def get(self, name: str) -> StreamLike | None: ...

    def open_publish(self, key: str, source: str) -> PublishSink: ...


def check_offer(sdp: str) -> None:
    """A WHIP offer must carry H.264 video (OBS offers exactly one video codec: its encoder's)."""
    codecs = offered_video_codecs(sdp)
    if codecs is None:
        raise OfferError("the offer has no video; livevsr upscales video, so publish a video track")
    if "H264" not in codecs:
        offered = ", ".join(sorted(codecs)) or "none"
        raise OfferError(
            f"the offer has no H.264 video (offered: {offered}); in OBS, Settings > Output, "
            "pick an H.264 video encoder (x264 or NVENC H.264)"
        )


def dtls_failure_hint(offer_sdp: str) -> str:
    """Why DTLS failed after ICE succeeded, for a publisher where the cause is known ("" if not).

    FFmpeg's WHIP muxer is always the DTLS server, and its GnuTLS build (PyAV's) makes a P-224
    certificate, a curve the OpenSSL under aiortc no longer supports: no handshake is possible."""
    if re.search(r"^o=FFmpeg ", offer_sdp, re.MULTILINE):
        return (
            " (an FFmpeg publisher: its own DTLS certificate is P-224, which cannot work here; "
            "give FFmpeg a P-256 one with -cert_file and -key_file)"
        )
    return ""


def bearer_token(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class AacEncoder:
    """Decoded audio frames (any format) in, raw AAC frames with their pts in ms out."""

    def __init__(self, sample_rate: int = AAC_SAMPLE_RATE) -> None:
        self._encoder = FrameEncoder("aac", sample_rate, "fltp", AAC_BITRATE_BPS)
        self._start_ms = 0  # pts of the first frame; output pts count samples from there
        self.sample_rate = sample_rate

    @property
    def extradata(self) -> bytes:
        return self._encoder.extradata

    def encode(self, frame: av.AudioFrame, pts_ms: int) -> list[tuple[bytes, int]]:
        """``pts_ms`` is the frame's time; output pts count samples from the first (gaps are closed up)."""
        if self._encoder.samples == 0 and self._encoder.buffered == 0:
            self._start_ms = pts_ms
        return [
            (bytes(p), self._start_ms + round(p.pts * 1000 / self.sample_rate))
            for p in self._encoder.encode(frame)
        ]


@dataclass
class WhipSession:
    id: str
    stream_name: str
    pc: RTCPeerConnection
    sink: PublishSink | None = None
    tasks: list[asyncio.Task] = field(default_factory=list)
    t0_ns: int | None = None  # arrival of the first frame of any track: the session's common clock
    closed: bool = False


class WhipServer:
    """Creates and ends WHIP publish sessions."""

    def __init__(self, authority: Authority) -> None:
        self.authority = authority
        self.sessions: dict[str, WhipSession] = {}

    def _find(self, name: str | None, token: str | None) -> StreamLike:
        """The stream this publisher may publish to; AuthError/NoSuchStream otherwise."""
        if name is not None:
            stream = self.authority.get(name)
            if stream is None:
                raise NoSuchStream(name)
            candidates = [stream]
        else:
            candidates = list(self.authority.streams.values())
        if token is None:
            raise AuthError("no bearer token")
        for stream in candidates:
            if hmac.compare_digest(stream.key.encode(), token.encode()):
                return stream
        raise AuthError("wrong bearer token")

    async def create(
        self, name: str | None, token: str | None, offer_sdp: str, remote: str
    ) -> tuple[WhipSession, str]:
        """Answer the publisher's offer and start its publish session.

        Raises AuthError, NoSuchStream, OfferError (bad offer) or IngestError (refused by the manager).
        """
        stream = self._find(name, token)
        check_offer(offer_sdp)
        pc = RTCPeerConnection()
        session = WhipSession(uuid.uuid4().hex, stream.name, pc)
        tracks: list[MediaStreamTrack] = []

        # Registered before setRemoteDescription: the "track" event fires inside it.
        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            tracks.append(track)

        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
            h264 = [
                c for c in RTCRtpReceiver.getCapabilities("video").codecs
                if c.mimeType in ("video/H264", "video/rtx")
            ]  # fmt: skip
            for transceiver in pc.getTransceivers():
                if transceiver.kind == "video":
                    transceiver.setCodecPreferences(h264)
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:
            await pc.close()
            # The detail is for our log; the publisher gets a generic reason.
            log.warning("WHIP offer could not be answered: %r", exc)
            raise OfferError("cannot answer the offer (unsupported or malformed SDP)") from exc
        if "H264" not in pc.localDescription.sdp.upper():
            await pc.close()
            raise OfferError(
                "no H.264 profile in the offer that this server can receive; "
                "use the baseline/main H.264 profile in the OBS encoder settings"
            )
        try:
            session.sink = self.authority.open_publish(stream.key, f"whip {remote}")
        except IngestError:
            await pc.close()
            raise
        self.sessions[session.id] = session

        @pc.on("connectionstatechange")
        async def _on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                reason = f"WebRTC connection {pc.connectionState}"
                if pc.connectionState == "failed" and pc.iceConnectionState == "completed":
                    reason += dtls_failure_hint(offer_sdp)
                await self.close(session.id, reason)

        for track in tracks:
            consume = self._consume_video if track.kind == "video" else self._consume_audio
            session.tasks.append(asyncio.ensure_future(consume(session, track)))
        log.info("[%s] WHIP publisher %s connected from %s", stream.name, session.id[:8], remote)
        return session, pc.localDescription.sdp

    def _pts_ms(self, session: WhipSession, anchor: list, frame: av.Frame, recv_ns: int) -> int:
        """Map a track's RTP clock onto the session clock (ms since the first frame of any track)."""
        if session.t0_ns is None:
            session.t0_ns = recv_ns
        t = float(frame.pts * frame.time_base) if frame.pts is not None else (recv_ns - session.t0_ns) / 1e9
        if not anchor:
            anchor.extend([t, (recv_ns - session.t0_ns) / 1e9])
        return round((anchor[1] + t - anchor[0]) * 1000)

    async def _consume_video(self, session: WhipSession, track: MediaStreamTrack) -> None:
        anchor: list[float] = []
        reason = "publisher's video track ended"
        first_ms, frames = 0, 0
        try:
            while not session.closed:
                frame = await track.recv()
                sink = session.sink
                if sink is None or sink.closed:
                    reason = "the stream was taken over by another publish"
                    break
                recv_ns = time.monotonic_ns()
                pts_ms = self._pts_ms(session, anchor, frame, recv_ns)
                sink.video_frame(frame, pts_ms, recv_ns)
                # WebRTC carries no frame rate; measure it once over the first second or so.
                frames += 1
                if frames == 1:
                    first_ms = pts_ms
                elif frames == FPS_PROBE_FRAMES and pts_ms > first_ms:
                    sink.set_source_fps((frames - 1) * 1000 / (pts_ms - first_ms))
        except MediaStreamError:
            pass
        await self.close(session.id, reason)

    async def _consume_audio(self, session: WhipSession, track: MediaStreamTrack) -> None:
        """Decoded Opus in, AAC out (consumed even when unused: aiortc's queue is unbounded)."""
        anchor: list[float] = []
        encoder: AacEncoder | None = None
        try:
            while not session.closed:
                frame = await track.recv()
                sink = session.sink
                if sink is None or sink.closed:
                    break
                recv_ns = time.monotonic_ns()
                pts_ms = self._pts_ms(session, anchor, frame, recv_ns)
                if encoder is None:
                    encoder = AacEncoder()
                    sink.audio_config("aac", encoder.extradata, encoder.sample_rate, 2)
                for data, ms in await asyncio.to_thread(encoder.encode, frame, pts_ms):
                    sink.audio_packet(AudioPacket(data, ms, "aac", recv_ns))
        except MediaStreamError:
            pass
        except (av.error.FFmpegError, ValueError):
            log.exception("[%s] WHIP audio dropped", session.stream_name)

    async def close(self, session_id: str, reason: str) -> bool:
        session = self.sessions.pop(session_id, None)
        if session is None:
            return False
        session.closed = True
        if session.sink is not None:
            session.sink.close(reason)
        await session.pc.close()
        current = asyncio.current_task()
        for task in session.tasks:
            if task is not current:
                task.cancel()
        log.info("[%s] WHIP publisher %s left: %s", session.stream_name, session_id[:8], reason)
        return True

    async def close_all(self) -> None:
        for sid in list(self.sessions):
            await self.close(sid, "server stopping")
