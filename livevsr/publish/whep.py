"""WHEP egress: each viewer is an aiortc peer connection fed the stream's pre-encoded H.264 packets.

The packets come from the stream's one encoder (aiortc only packetizes them), so N viewers cost N
packetizers, not N encoders. H.264 is forced with codec preferences: aiortc would answer VP8 first.
An offer with an Opus audio m-line also gets the stream's audio (one Opus transcode per stream, in
step with the video: see whep_audio.py); an offer without one gets video only.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass, field

import av
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

import livevsr.dtls  # noqa: F401 - lets DTLS work with RSA-certificate peers (GStreamer)
from livevsr.pipeline.fanout import EncodedFrame, Subscriber
from livevsr.pipeline.stream import Stream
from livevsr.sdp import OfferError, offered_codecs, offered_video_codecs

log = logging.getLogger(__name__)

def check_offer(sdp: str) -> None:
    """A WHEP offer must have a video m-line that offers H.264."""
    codecs = offered_video_codecs(sdp)
    if codecs is None:
        raise OfferError("the offer has no video m-line; add a recvonly video transceiver")
    if "H264" not in codecs:
        offered = ", ".join(sorted(codecs)) or "none"
        raise OfferError(f"the offer has no H.264 video (offered: {offered}); this server sends H.264 only")


def wants_audio(sdp: str) -> bool:
    """Whether the offer asks for audio we can send (Opus)."""
    return "OPUS" in (offered_codecs(sdp, "audio") or set())


class _SubscriberTrack(MediaStreamTrack):
    """A track whose ``recv`` hands aiortc encoded ``av.Packet``s from a stream subscriber."""

    def __init__(self, subscriber: Subscriber) -> None:
        super().__init__()
        self._subscriber = subscriber

    async def _next(self) -> EncodedFrame:
        item = await self._subscriber.recv()
        if item is None:  # the subscription ended (viewer left, server stopping)
            self.stop()
            raise MediaStreamError
        return item


class AudioPacketTrack(_SubscriberTrack):
    """The stream's Opus audio."""

    kind = "audio"

    async def recv(self) -> av.Packet:
        return (await self._next()).packet


class PacketTrack(_SubscriberTrack):
    """One video rendition; the first viewer to send a frame closes that frame's end-to-end latency."""

    kind = "video"

    def __init__(self, stream: Stream, subscriber: Subscriber) -> None:
        super().__init__(subscriber)
        self._stream = stream

    async def recv(self) -> av.Packet:
        item = await self._next()
        timing = item.timing
        if timing is not None and "sent" not in timing.marks:
            timing.mark("sent")
            self._stream.record_stages(timing, ("send", "total"))
        return item.packet


@dataclass
class WhepSession:
    id: str
    stream: Stream
    rendition: str
    pc: RTCPeerConnection
    subscriber: Subscriber
    audio: Subscriber | None = None
    remote: str = ""  # the viewer's address, for the per-address cap
    closed: asyncio.Event = field(default_factory=asyncio.Event)


class WhepServer:
    """Creates and ends WHEP viewer sessions.

    A session whose peer never completes ICE and DTLS within ``connect_timeout_s`` is removed (a
    POST alone must not hold a viewer slot), and one address holds at most ``max_sessions_per_ip``
    sessions, so a single client cannot take every slot of a stream.
    """

    def __init__(
        self, max_viewers_per_stream: int, *, max_sessions_per_ip: int = 10, connect_timeout_s: float = 10.0
    ) -> None:
        self.max_viewers_per_stream = max_viewers_per_stream
        self.max_sessions_per_ip = max_sessions_per_ip
        self.connect_timeout_s = connect_timeout_s
        self.sessions: dict[str, WhepSession] = {}
        self._closing: set[asyncio.Task] = set()  # timeouts being carried out (kept referenced)

    def sessions_of(self, remote: str) -> int:
        return sum(1 for s in self.sessions.values() if s.remote == remote)

    def _codecs(self, kind: str, mime_types: tuple[str, ...]) -> list:
        return [c for c in RTCRtpSender.getCapabilities(kind).codecs if c.mimeType in mime_types]

    async def create(
        self, stream: Stream, rendition: str, offer_sdp: str, remote: str = ""
    ) -> tuple[WhepSession, str]:
        """Answer ``offer_sdp``; raises OfferError for an offer we cannot serve, OverflowError when
        the stream or the viewer's address has no slot left."""
        check_offer(offer_sdp)
        if stream.viewer_count >= self.max_viewers_per_stream:
            raise OverflowError(
                f"stream {stream.name} has its maximum of {self.max_viewers_per_stream} viewers"
            )
        if remote and self.sessions_of(remote) >= self.max_sessions_per_ip:
            raise OverflowError(
                f"{remote} already has {self.max_sessions_per_ip} viewer sessions open "
                "(webrtc.max_sessions_per_ip); close one first"
            )
        pc = RTCPeerConnection()
        subscriber = stream.broadcasters[rendition].subscribe()
        audio = stream.audio.subscribe() if wants_audio(offer_sdp) else None
        session = WhepSession(uuid.uuid4().hex, stream, rendition, pc, subscriber, audio, remote)
        try:
            transceiver = pc.addTransceiver(PacketTrack(stream, subscriber), direction="sendonly")
            transceiver.setCodecPreferences(self._codecs("video", ("video/H264", "video/rtx")))
            if audio is not None:
                transceiver = pc.addTransceiver(AudioPacketTrack(audio), direction="sendonly")
                transceiver.setCodecPreferences(self._codecs("audio", ("audio/opus",)))
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:
            subscriber.close()
            if audio is not None:
                audio.close()
            await pc.close()
            # The detail is for our log; the client gets a generic reason.
            log.warning("[%s] WHEP offer could not be answered: %s", stream.name, exc)
            raise OfferError("cannot answer the offer (unsupported or malformed SDP)") from exc
        self.sessions[session.id] = session
        stream.viewers_changed()

        @pc.on("connectionstatechange")
        async def _on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                await self.close(session.id, f"connection {pc.connectionState}")

        asyncio.get_running_loop().call_later(self.connect_timeout_s, self._check_connected, session)

        log.info(
            "[%s] WHEP viewer %s joined (%s%s), %d viewers",
            stream.name,
            session.id[:8],
            rendition,
            " + audio" if audio is not None else "",
            stream.viewer_count,
        )
        return session, pc.localDescription.sdp

    def _check_connected(self, session: WhepSession) -> None:
        if session.id in self.sessions and session.pc.connectionState != "connected":
            reason = f"ICE/DTLS not connected within {self.connect_timeout_s:g} s (webrtc.connect_timeout_s)"
            task = asyncio.ensure_future(self.close(session.id, reason))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def close(self, session_id: str, reason: str) -> bool:
        session = self.sessions.pop(session_id, None)
        if session is None:
            return False
        session.subscriber.close()
        if session.audio is not None:
            session.audio.close()
        session.stream.viewers_changed()
        await session.pc.close()
        session.closed.set()
        log.info("[%s] WHEP viewer %s left: %s", session.stream.name, session_id[:8], reason)
        return True

    async def close_all(self) -> None:
        for sid in list(self.sessions):
            await self.close(sid, "server stopping")
