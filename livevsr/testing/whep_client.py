"""A WHEP viewer built on aiortc: for tests and benchmarks (it decodes what a browser would)."""

from __future__ import annotations

import asyncio
from types import TracebackType

import aiohttp
import av
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack


class WhepError(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"WHEP POST answered {status}: {body}")
        self.status = status
        self.body = body


class WhepClient:
    """``async with WhepClient(url) as c: frame = await c.recv()``; DELETEs its session on exit."""

    def __init__(self, url: str, token: str | None = None) -> None:
        self.url = url
        self.token = token
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

        @self.pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "video" and not self._track.done():
                self._track.set_result(track)

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

    async def recv(self, timeout: float = 10.0) -> av.VideoFrame:
        track = await asyncio.wait_for(asyncio.shield(self._track), timeout)
        return await asyncio.wait_for(track.recv(), timeout)

    async def close(self) -> int | None:
        """Ends the session; returns the DELETE status (None if never connected)."""
        status = None
        if self._http is not None:
            if self.location is not None:
                async with self._http.delete(self.location) as resp:
                    status = resp.status
            await self._http.close()
            self._http = None
        await self.pc.close()
        return status
