"""Hostile clients on loopback: slow headers, session floods, wrong keys, half-open WHEP sessions."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from livevsr.app import App
from livevsr.config import HTTPConfig, WebRTCConfig
from tests.conftest import loopback_config, wait_for

OFFER_HEADERS = {"Content-Type": "application/sdp"}


async def _start(**overrides: object) -> App:
    app = App(loopback_config(**overrides))
    await app.start()
    return app


async def _offer() -> str:
    from aiortc import RTCPeerConnection

    pc = RTCPeerConnection()
    pc.addTransceiver("video", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


async def test_a_trickled_request_header_is_cut_off() -> None:
    app = await _start(http=HTTPConfig(listen="127.0.0.1:0", header_timeout_s=1.0))
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", app.http_port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        closed = False
        while time.monotonic() - started < 6:
            writer.write(b"X")  # one byte at a time, never finishing the header
            try:
                await writer.drain()
                if await asyncio.wait_for(reader.read(100), 0.5) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue
            except ConnectionError:
                closed = True
                break
        assert closed, "a header trickled byte by byte held the connection"
        assert time.monotonic() - started < 4
        writer.close()
        async with aiohttp.ClientSession() as http:  # complete requests are not affected
            async with http.get(f"http://127.0.0.1:{app.http_port}/healthz") as resp:
                assert resp.status == 200
    finally:
        await app.stop()


async def test_connections_per_address_are_capped() -> None:
    app = await _start(http=HTTPConfig(listen="127.0.0.1:0", max_connections_per_ip=3))
    try:
        conns = [await asyncio.open_connection("127.0.0.1", app.http_port) for _ in range(3)]
        await wait_for(lambda: app.http_guard.connections("127.0.0.1") == 3, timeout=5)
        reader, writer = await asyncio.open_connection("127.0.0.1", app.http_port)
        reply = await asyncio.wait_for(reader.read(200), 5)
        assert reply.startswith(b"HTTP/1.1 503")
        for _, w in conns:
            w.close()
        await wait_for(lambda: app.http_guard.connections("127.0.0.1") == 0, timeout=5)
    finally:
        await app.stop()


async def test_session_floods_get_429_and_wrong_keys_a_growing_delay() -> None:
    http_cfg = HTTPConfig(listen="127.0.0.1:0", sessions_per_ip_per_s=1.0, sessions_burst=3)
    app = await _start(http=http_cfg)
    url = f"http://127.0.0.1:{app.http_port}/whip/main"
    try:
        async with aiohttp.ClientSession() as http:
            statuses, took = [], []
            for _ in range(4):
                started = time.monotonic()
                headers = {**OFFER_HEADERS, "Authorization": "Bearer wrong"}
                async with http.post(url, data="v=0\r\n", headers=headers) as resp:
                    statuses.append(resp.status)
                    took.append(time.monotonic() - started)
            assert statuses == [401, 401, 401, 429]
            assert took[2] >= 0.4 > took[0]  # the third wrong key waits 0.5 s, the first not at all
    finally:
        await app.stop()


async def test_a_whep_session_that_never_connects_frees_its_slot() -> None:
    app = await _start(webrtc=WebRTCConfig(ice_host_addresses=["127.0.0.1"], connect_timeout_s=2.0,
                                           max_sessions_per_ip=2))  # fmt: skip
    url = f"http://127.0.0.1:{app.http_port}/whep/main"
    try:
        offer = await _offer()
        async with aiohttp.ClientSession() as http:
            for expected in (201, 201, 503):
                async with http.post(url, data=offer, headers=OFFER_HEADERS) as resp:
                    assert resp.status == expected, await resp.text()
                    if expected == 503:
                        assert "webrtc.max_sessions_per_ip" in (await resp.json())["error"]
            assert len(app.whep.sessions) == 2
            # Nobody answers ICE for these offers: both are gone after the connect timeout.
            await wait_for(lambda: not app.whep.sessions, timeout=10)
    finally:
        await app.stop()

