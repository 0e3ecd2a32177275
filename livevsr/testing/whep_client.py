"""A WHEP viewer built on aiortc: for tests and benchmarks (it decodes what a browser would)."""

from __future__ import annotations

import asyncio
import collections
import time
from types import TracebackType

import aiohttp
import av
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack


class WhepError(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"WHEP POST answered {status}: {body}")
        self.status = status
        self.body = body


class WhepClient:
    """``async with WhepClient(url) as c: frame = await c.recv()``; DELETEs its session on exit."""

    def __init__(
        self, url: str, token: str | None = None, max_buffered_frames: int = 30, audio: bool = False
    ) -> None:
        """Decoded frames wait in a buffer of ``max_buffered_frames``; a reader slower than the stream
        loses the oldest ones (counted in ``dropped``), as a browser would, instead of growing
        memory without bound (aiortc's own track queue has no limit).

        With ``audio`` the offer also asks for Opus audio; decoded audio frames collect in
        ``audio_frames`` as (monotonic arrival time, frame), the newest 3000 (~60 s) kept."""
        self.url = url
        self.token = token
        self.max_buffered_frames = max_buffered_frames
        self.audio = audio
        self.audio_frames: collections.deque[tuple[float, av.AudioFrame]] = collections.deque(maxlen=3000)
        self.audio_samples = 0  # every decoded audio sample, also those the deque let go
        self._audio_pump: asyncio.Task | None = None
        self.dropped = 0
        self._frames: asyncio.Queue[av.VideoFrame | None] = asyncio.Queue()
        self._pump: asyncio.Task | None = None
        self.pc = RTCPeerConnection()
        self.location: str | None = None
        self._track: asyncio.Future[MediaStreamTrack] = asyncio.get_event_loop().create_future()
        self._http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> WhepClient:
        try:
            await self.connect()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        self.pc.addTransceiver("video", direction="recvonly")
        if self.audio:
            self.pc.addTransceiver("audio", direction="recvonly")

        @self.pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "video" and not self._track.done():
                self._track.set_result(track)
                self._pump = asyncio.ensure_future(self._pump_frames(track))
            elif track.kind == "audio" and self._audio_pump is None:
                self._audio_pump = asyncio.ensure_future(self._pump_audio(track))

        await self.pc.setLocalDescription(await self.pc.createOffer())
        self._http = aiohttp.ClientSession()
        headers = {"Content-Type": "application/sdp"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        async with self._http.post(self.url, data=self.pc.localDescription.sdp, headers=headers) as resp:
            body = await resp.text()
            if resp.status != 201:
                raise WhepError(resp.status, body)
            self.location = str(resp.url.join(aiohttp.client.URL(resp.headers["Location"])))
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))

    async def _pump_frames(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                self._frames.put_nowait(None)
                return
            if self._frames.qsize() >= self.max_buffered_frames:
                self._frames.get_nowait()
                self.dropped += 1
            self._frames.put_nowait(frame)

    async def _pump_audio(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            self.audio_frames.append((time.monotonic(), frame))
            self.audio_samples += frame.samples

    async def recv(self, timeout: float = 10.0) -> av.VideoFrame:
        await asyncio.wait_for(asyncio.shield(self._track), timeout)
        frame = await asyncio.wait_for(self._frames.get(), timeout)
        if frame is None:
            self._frames.put_nowait(None)  # stays ended for later calls
            raise MediaStreamError
        return frame

    async def close(self) -> int | None:
        """Ends the session; returns the DELETE status (None if never connected)."""
        status = None
        if self._http is not None:
            if self.location is not None:
                async with self._http.delete(self.location) as resp:
                    status = resp.status
            await self._http.close()
            self._http = None
        for task in (self._pump, self._audio_pump):
            if task is not None:
                task.cancel()
        await self.pc.close()
        return status
