"""The RTMP server on loopback with real publishers (FFmpeg's RTMP client via PyAV) and raw byte clients.

The authority and sink are recording fakes of our own seam; RTMP, H.264 and AAC are real.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import av
import numpy as np
import pytest

from livevsr.config import RTMPConfig
from livevsr.errors import IngestError
from livevsr.ingest import amf0
from livevsr.ingest.base import AudioPacket, VideoPacket
from livevsr.ingest.chunk import (
    ACKNOWLEDGEMENT,
    AGGREGATE,
    COMMAND_AMF0,
    DATA_AMF0,
    SET_CHUNK_SIZE,
    USER_CONTROL,
    VIDEO,
    WINDOW_ACK_SIZE,
    ChunkReader,
    ChunkWriter,
)
from livevsr.ingest.rtmp import RTMPServer
from livevsr.testing.publisher import publish, synthetic_frame

GOOD_KEYS = ("good-key-1", "good-key-2")
BAD_KEY = "bad-secret-key"


class RecordingSink:
    def __init__(self, key: str, source: str) -> None:
        self.key = key
        self.source = source
        self.video_configs: list[bytes | None] = []
        self.audio_configs: list[tuple[bytes | None, int, int]] = []
        self.video: list[VideoPacket] = []
        self.audio: list[AudioPacket] = []
        self.closes: list[str] = []

    def video_config(self, codec: str, extradata: bytes | None) -> None:
        assert codec == "h264"
        self.video_configs.append(extradata)

    def video_packet(self, packet: VideoPacket) -> None:
        self.video.append(packet)

    def audio_config(self, codec: str, extradata: bytes | None, sample_rate: int, channels: int) -> None:
        assert codec == "aac"
        self.audio_configs.append((extradata, sample_rate, channels))

    def audio_packet(self, packet: AudioPacket) -> None:
        self.audio.append(packet)

    def close(self, reason: str) -> None:
        self.closes.append(reason)


class RecordingAuthority:
    def __init__(self) -> None:
        self.sinks: list[RecordingSink] = []
        self.refused: list[str] = []

    def open_publish(self, key: str, source: str) -> RecordingSink:
        if key not in GOOD_KEYS:
            self.refused.append(source)
            raise IngestError("unknown stream key")
        sink = RecordingSink(key, source)
        self.sinks.append(sink)
        return sink

    def sinks_for(self, key: str) -> list[RecordingSink]:
        return [s for s in self.sinks if s.key == key]


def make_config(**overrides: Any) -> RTMPConfig:
    values: dict[str, Any] = {"listen": "127.0.0.1:0", "handshake_timeout_s": 2.0, "idle_timeout_s": 5.0}
    values.update(overrides)
    return RTMPConfig(**values)


@pytest.fixture
async def authority() -> RecordingAuthority:
    return RecordingAuthority()


@pytest.fixture
async def server(authority: RecordingAuthority) -> AsyncIterator[RTMPServer]:
    srv = RTMPServer(make_config(), authority)
    await srv.start()
    yield srv
    await srv.stop()


async def until(condition: Callable[[], bool], timeout_s: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.02)


def url(server: RTMPServer, key: str, app: str = "live") -> str:
    return f"rtmp://127.0.0.1:{server.port}/{app}/{key}"


def decode_h264(sink: RecordingSink) -> list[av.VideoFrame]:
    ctx = av.CodecContext.create("h264", "r")
    ctx.extradata = sink.video_configs[-1]
    frames: list[av.VideoFrame] = []
    for packet in sink.video:
        frames += ctx.decode(av.Packet(packet.data))
    frames += ctx.decode(None)
    return frames


# -- real publishers ---------------------------------------------------------------------------------


async def test_publish_delivers_decodable_h264(server: RTMPServer, authority: RecordingAuthority) -> None:
    sent = await asyncio.to_thread(publish, url(server, GOOD_KEYS[0]), 320, 180, 30, 30, realtime=False, gop=10)
    assert sent == 30
    await until(lambda: server.connection_count == 0, what="the publisher's connection to close")
    (sink,) = authority.sinks
    assert sink.source.startswith("rtmp 127.0.0.1:")
    assert len(sink.video_configs) == 1 and sink.video_configs[0][:1] == b"\x01"  # avcC version 1
    assert len(sink.video) == 30
    assert [p.keyframe for p in sink.video] == [i % 10 == 0 for i in range(30)]
    dts = [p.dts_ms for p in sink.video]
    assert dts == sorted(dts) and all(p.pts_ms == p.dts_ms for p in sink.video)  # no B-frames
    assert 900 <= dts[-1] - dts[0] <= 1000  # 29 frame intervals at 30 fps
    assert all(p.recv_ns <= time.monotonic_ns() for p in sink.video)
    frames = decode_h264(sink)
    assert len(frames) == 30
    assert {(f.width, f.height) for f in frames} == {(320, 180)}
    assert sink.closes == ["publisher stopped (FCUnpublish)"]


def _paint_white_at_7(image: np.ndarray, index: int) -> None:
    assert image.shape == (180, 320, 3) and image.dtype == np.uint8 and image.flags.writeable
    if index == 7:
        image[:] = 255


async def test_frame_hook_draws_into_what_is_encoded(server: RTMPServer, authority: RecordingAuthority) -> None:
    frames = 12
    sent = await asyncio.to_thread(
        publish, url(server, GOOD_KEYS[0]), 320, 180, 30, frames, realtime=False, frame_hook=_paint_white_at_7
    )
    assert sent == frames
    await until(lambda: bool(authority.sinks and authority.sinks[0].closes))
    luma = [float(f.to_ndarray(format="gray").mean()) for f in decode_h264(authority.sinks[0])]
    assert len(luma) == frames
    assert luma[7] > 230 and max(luma[:7] + luma[8:]) < 180, luma


def test_synthetic_frame_moves() -> None:
    a, b = synthetic_frame(64, 36, 0), synthetic_frame(64, 36, 1)
    assert a.shape == (36, 64, 3) and a.dtype == np.uint8
    assert (a != b).mean() > 0.5  # most pixels change from one frame to the next


async def test_audio_packets_arrive(server: RTMPServer, authority: RecordingAuthority) -> None:
    await asyncio.to_thread(publish, url(server, GOOD_KEYS[0]), 160, 90, 30, 30, realtime=False, audio=True)
    await until(lambda: bool(authority.sinks and authority.sinks[0].closes), what="the publish to end")
    (sink,) = authority.sinks
    ((asc, rate, channels),) = sink.audio_configs
    assert (rate, channels) == (48000, 2)
    assert len(sink.audio) >= 40  # ~1 s of 1024-sample frames at 48 kHz (47), minus encoder delay
    pts = [p.pts_ms for p in sink.audio]
    assert pts == sorted(pts) and {p.codec for p in sink.audio} == {"aac"}
    ctx = av.CodecContext.create("aac", "r")
    ctx.extradata = asc
    samples = sum(f.samples for p in sink.audio for f in ctx.decode(av.Packet(p.data)))
    assert samples >= 40 * 1024


async def test_wrong_key_is_refused_while_another_publish_goes_on(
    server: RTMPServer, authority: RecordingAuthority, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="livevsr.ingest.rtmp")
    good = asyncio.ensure_future(asyncio.to_thread(publish, url(server, GOOD_KEYS[0]), 160, 90, 30, 75))
    await until(lambda: bool(authority.sinks and len(authority.sinks[0].video) >= 5), what="the good publish")
    with pytest.raises(OSError):
        await asyncio.to_thread(publish, url(server, BAD_KEY), 160, 90, 30, 30, realtime=False)
    assert len(authority.refused) == 1 and len(authority.sinks) == 1
    count_after_refusal = len(authority.sinks[0].video)
    await until(lambda: len(authority.sinks[0].video) > count_after_refusal + 10, what="more good packets")
    assert await good == 75
    await until(lambda: bool(authority.sinks[0].closes))
    assert len(authority.sinks[0].video) == 75
    refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refused) == 1
    assert "publish rtmp://…/live/**** refused: unknown stream key" in refused[0]
    assert BAD_KEY not in caplog.text and GOOD_KEYS[0] not in caplog.text


async def test_two_publishers_at_once_then_reconnect(server: RTMPServer, authority: RecordingAuthority) -> None:
    first = asyncio.to_thread(publish, url(server, GOOD_KEYS[0]), 320, 180, 30, 45, gop=15)
    second = asyncio.to_thread(publish, url(server, GOOD_KEYS[1]), 160, 96, 30, 45, gop=15)
    assert await asyncio.gather(first, second) == [45, 45]
    await until(lambda: server.connection_count == 0)
    for key, size in ((GOOD_KEYS[0], (320, 180)), (GOOD_KEYS[1], (160, 96))):
        (sink,) = authority.sinks_for(key)
        frames = decode_h264(sink)
        assert len(frames) == 45 and {(f.width, f.height) for f in frames} == {size}
        assert sink.closes == ["publisher stopped (FCUnpublish)"]
    # The same key again after a disconnect: a fresh open_publish and a fresh sink.
    assert await asyncio.to_thread(publish, url(server, GOOD_KEYS[0]), 160, 90, 30, 10, realtime=False) == 10
    await until(lambda: len(authority.sinks_for(GOOD_KEYS[0])) == 2 and bool(authority.sinks[-1].closes))
    again = authority.sinks_for(GOOD_KEYS[0])[1]
    assert len(decode_h264(again)) == 10 and again.closes == ["publisher stopped (FCUnpublish)"]
    assert authority.sinks_for(GOOD_KEYS[0])[0].closes == ["publisher stopped (FCUnpublish)"]


async def test_garbage_connections_do_not_disturb_a_publish(
    server: RTMPServer, authority: RecordingAuthority, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="livevsr.ingest.rtmp")
    good = asyncio.ensure_future(asyncio.to_thread(publish, url(server, GOOD_KEYS[0]), 160, 90, 30, 45))
    await until(lambda: bool(authority.sinks and authority.sinks[0].video), what="the good publish")
    for junk in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x16\x03\x01\x02\x00\x01", os.urandom(4096)):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(junk)
        assert await asyncio.wait_for(reader.read(), 5.0) == b""  # closed without an answer
        writer.close()
    assert await good == 45
    await until(lambda: bool(authority.sinks[0].closes))
    assert len(authority.sinks[0].video) == 45
    junk_lines = [r.getMessage() for r in caplog.records if "not RTMP" in r.getMessage() or "TLS" in r.getMessage()]
    assert len(junk_lines) == 3  # one line per junk connection, no "opened" line
    assert "HTTP request" in junk_lines[0] and "TLS handshake on the plain RTMP port" in junk_lines[1]
    # "opened" is debug only (a refused publish is one line); the publisher's own line is there.
    assert sum("opened" in r.getMessage() for r in caplog.records) == 0
    assert sum("publishing rtmp://" in r.getMessage() for r in caplog.records) == 1


async def test_stop_closes_open_publishes(authority: RecordingAuthority) -> None:
    srv = RTMPServer(make_config(), authority)
    await srv.start()
    publisher = asyncio.ensure_future(asyncio.to_thread(publish, url(srv, GOOD_KEYS[0]), 160, 90, 30, 300))
    await until(lambda: bool(authority.sinks and authority.sinks[0].video), what="the publish")
    await srv.stop()
    assert authority.sinks[0].closes == ["server stopping"]
    assert srv.connection_count == 0
    with pytest.raises(OSError):
        await asyncio.wait_for(publisher, 10.0)


async def test_stop_event_ends_a_publish_cleanly(server: RTMPServer, authority: RecordingAuthority) -> None:
    stop = threading.Event()
    publisher = asyncio.ensure_future(
        asyncio.to_thread(publish, url(server, GOOD_KEYS[0]), 160, 90, 30, 900, stop=stop)
    )
    await until(lambda: bool(authority.sinks and len(authority.sinks[0].video) >= 5), what="the publish")
    stop.set()
    sent = await asyncio.wait_for(publisher, 5.0)
    assert 5 <= sent < 900
    await until(lambda: bool(authority.sinks[0].closes))
    assert authority.sinks[0].closes == ["publisher stopped (FCUnpublish)"]
    assert len(authority.sinks[0].video) == sent


async def test_wrong_app_is_refused(server: RTMPServer, authority: RecordingAuthority) -> None:
    with pytest.raises(av.error.FFmpegError):  # ffmpeg turns the _error into AVERROR_UNKNOWN
        await asyncio.to_thread(publish, url(server, GOOD_KEYS[0], app="other"), 160, 90, 30, 5, realtime=False)
    assert authority.sinks == [] and authority.refused == []


# -- raw byte clients ----------------------------------------------------------------------------------


class RawClient:
    """Speaks just enough RTMP, byte by byte, to push the server into corners."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.chunks = ChunkWriter()
        self.incoming = ChunkReader(max_message_bytes=1 << 24, max_chunk_size=1 << 24)

    @classmethod
    async def connect(cls, port: int, handshake: bool = True) -> RawClient:
        client = cls(*await asyncio.open_connection("127.0.0.1", port))
        if handshake:
            client.writer.write(b"\x03" + bytes(1536))
            s0s1s2 = await asyncio.wait_for(client.reader.readexactly(1 + 2 * 1536), 5.0)
            assert s0s1s2[0] == 3 and s0s1s2[1 + 1536 :] == bytes(1536)  # S2 echoes C1
            client.writer.write(bytes(1536))
        return client

    def send(self, csid: int, type_id: int, stream_id: int, payload: bytes) -> None:
        self.writer.write(self.chunks.write(csid, type_id, stream_id, 0, payload))

    def command(self, stream_id: int, *values: Any) -> None:
        self.send(3 if stream_id == 0 else 8, COMMAND_AMF0, stream_id, amf0.encode(*values))

    async def until_command(self, name: str) -> list[Any]:
        """Read messages until a command called ``name`` arrives; return its values."""
        while True:
            data = await asyncio.wait_for(self.reader.read(65536), 5.0)
            assert data, f"connection closed before {name!r}"
            for message in self.incoming.feed(data):
                if message.type_id == COMMAND_AMF0:
                    values = amf0.decode_all(message.payload)
                    if values[0] == name:
                        return values

    async def publish(self, key: str) -> None:
        self.command(0, "connect", 1, {"app": "live", "tcUrl": "rtmp://127.0.0.1/live"})
        await self.until_command("_result")
        self.command(0, "createStream", 2, None)
        result = await self.until_command("_result")
        self.command(int(result[3]), "publish", 3, None, key, "live")
        status = await self.until_command("onStatus")
        assert status[3]["code"] == "NetStream.Publish.Start"

    async def closed_by_server(self, timeout_s: float = 5.0) -> float:
        """Wait for EOF from the server; return how long it took."""
        start = time.monotonic()
        try:
            while await asyncio.wait_for(self.reader.read(65536), timeout_s):
                pass
        except ConnectionError:
            pass  # closed while our bytes were unread (a reset, not a FIN), or we wrote after the close
        self.writer.close()
        return time.monotonic() - start


def warnings_from(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (struct.pack(">I", 1 << 31), "chunk size 2147483648; it must be 1..2147483647"),
        (struct.pack(">I", 0), "chunk size 0; it must be"),
        (struct.pack(">I", 65537), "chunk size 65537, above rtmp.max_chunk_size 65536"),
    ],
)
async def test_bad_chunk_size_closes_only_that_connection(
    server: RTMPServer, caplog: pytest.LogCaptureFixture, payload: bytes, reason: str
) -> None:
    bystander = await RawClient.connect(server.port)
    client = await RawClient.connect(server.port)
    client.send(2, SET_CHUNK_SIZE, 0, payload)
    await client.closed_by_server()
    (line,) = [w for w in warnings_from(caplog) if "closed" in w]
    assert line.startswith("[RTMP] [127.0.0.1:") and reason in line
    await until(lambda: server.connection_count == 1, what="only the bystander left")
    bystander.writer.close()


async def test_oversized_message_claim_closes_the_connection(
    server: RTMPServer, caplog: pytest.LogCaptureFixture
) -> None:
    client = await RawClient.connect(server.port)
    client.writer.write(b"\x06" + bytes(3) + b"\xff\xff\xff" + bytes([VIDEO]) + (1).to_bytes(4, "little"))
    await client.closed_by_server()
    (line,) = [w for w in warnings_from(caplog) if "closed" in w]
    assert "16777215-byte message, above rtmp.max_message_bytes 8000000" in line


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"\x90hvc1" + bytes(30), "video codec hevc is not supported; use H.264: in OBS"),  # E-RTMP HEVC
        (b"\x1c\x00" + bytes(30), "video codec hevc is not supported; use H.264"),  # legacy codec id 12
        (b"\x96" + bytes(30), "Enhanced RTMP multitrack video is not supported; send one H.264 track"),
    ],
)
async def test_other_video_codecs_are_refused_with_advice(
    server: RTMPServer, authority: RecordingAuthority, body: bytes, expected: str
) -> None:
    client = await RawClient.connect(server.port)
    await client.publish(GOOD_KEYS[0])
    client.send(6, VIDEO, 1, body)
    await client.closed_by_server()
    (sink,) = authority.sinks
    (reason,) = sink.closes
    assert reason.startswith(expected)


async def test_deep_amf0_closes_the_connection(server: RTMPServer, caplog: pytest.LogCaptureFixture) -> None:
    client = await RawClient.connect(server.port)
    deep = b"\x03\x00\x01a" * 40 + b"\x05" + b"\x00\x00\x09" * 40
    client.send(3, COMMAND_AMF0, 0, amf0.encode("connect", 1) + deep)
    await client.closed_by_server()
    assert any("nesting deeper than 32 levels" in w for w in warnings_from(caplog))


async def test_command_before_connect_and_bad_c0(server: RTMPServer, caplog: pytest.LogCaptureFixture) -> None:
    client = await RawClient.connect(server.port)
    client.command(0, "publish", 1, None, GOOD_KEYS[0], "live")
    await client.closed_by_server()
    rtmpe = await RawClient.connect(server.port, handshake=False)
    rtmpe.writer.write(b"\x06" + bytes(1536))
    await rtmpe.closed_by_server()
    lines = warnings_from(caplog)
    assert any("command 'publish' before connect" in w for w in lines)
    assert any("encrypted RTMP (RTMPE" in w for w in lines)


async def test_handshake_and_idle_timeouts(authority: RecordingAuthority, caplog: pytest.LogCaptureFixture) -> None:
    srv = RTMPServer(make_config(handshake_timeout_s=0.3, idle_timeout_s=0.5), authority)
    await srv.start()
    try:
        silent = await RawClient.connect(srv.port, handshake=False)
        silent.writer.write(b"\x03" + bytes(100))  # C0 and part of C1, then nothing
        assert 0.2 < await silent.closed_by_server() < 3.0
        idle = await RawClient.connect(srv.port)
        await idle.publish(GOOD_KEYS[0])
        assert 0.3 < await idle.closed_by_server() < 3.0
        assert authority.sinks[0].closes == ["no data for 0.5 s (rtmp.idle_timeout_s)"]
        # Connected but never publishing: closed after handshake_timeout_s even while sending pings.
        lingering = await RawClient.connect(srv.port)
        lingering.command(0, "connect", 1, {"app": "live"})
        for _ in range(6):
            lingering.send(2, 4, 0, b"\x00\x06" + bytes(4))  # User Control ping request
            await asyncio.sleep(0.1)
        assert await lingering.closed_by_server() < 3.0
        lines = warnings_from(caplog)
        assert any("handshake not finished within 0.3 s" in w for w in lines)
        assert any("no publish within 0.3 s (rtmp.handshake_timeout_s)" in w for w in lines)
    finally:
        await srv.stop()


async def test_connections_per_ip_cap(authority: RecordingAuthority, caplog: pytest.LogCaptureFixture) -> None:
    srv = RTMPServer(make_config(max_connections_per_ip=2), authority)
    await srv.start()
    try:
        first = await RawClient.connect(srv.port)
        second = await RawClient.connect(srv.port)
        for _ in range(5):  # a retry flood is refused each time but logged once per second
            extra = await RawClient.connect(srv.port, handshake=False)
            await extra.closed_by_server()
        refusals = [w for w in warnings_from(caplog) if "refused" in w]
        assert len(refusals) == 1 and "refused: 2 connections from 127.0.0.1 already open" in refusals[0]
        first.writer.close()
        await until(lambda: srv.connection_count == 1)
        fourth = await RawClient.connect(srv.port)  # a slot is free again
        await until(lambda: srv.connection_count == 2)
        second.writer.close()
        fourth.writer.close()
    finally:
        await srv.stop()


async def test_chunked_publish_with_tiny_chunks_and_extended_timestamps(
    server: RTMPServer, authority: RecordingAuthority
) -> None:
    """A raw publisher that never raises the chunk size, whose clock is past 2**24 ms, and whose
    metadata is unreadable (ignored with a warning, not a disconnect)."""
    client = await RawClient.connect(server.port)
    await client.publish(GOOD_KEYS[0])
    avcc = b"\x01\x42\xc0\x1e\xff\xe1\x00\x04SPS!\x01\x00\x03PPS"
    start = 0xFFFFF0
    client.send(4, DATA_AMF0, 1, amf0.encode("@setDataFrame", "onMetaData") + b"\x03\x00\x01a")  # truncated
    client.writer.write(client.chunks.write(6, VIDEO, 1, start, b"\x17\x00\x00\x00\x00" + avcc))
    for i in range(5):
        body = (b"\x17" if i == 0 else b"\x27") + b"\x01\x00\x00\x00" + struct.pack(">I", 300) + bytes(300)
        client.writer.write(client.chunks.write(6, VIDEO, 1, start + 33 * i, body))
    client.command(1, "deleteStream", 4, None, 1)
    await until(lambda: bool(authority.sinks and authority.sinks[0].closes))
    (sink,) = authority.sinks
    assert sink.video_configs == [avcc]
    assert [p.dts_ms for p in sink.video] == [start + 33 * i for i in range(5)]
    assert [p.keyframe for p in sink.video] == [True, False, False, False, False]
    assert all(len(p.data) == 304 for p in sink.video)
    assert sink.closes == ["publisher stopped (deleteStream)"]
    client.writer.close()



def test_works_on_uvloop() -> None:
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> RecordingAuthority:
        authority = RecordingAuthority()
        srv = RTMPServer(make_config(), authority)
        await srv.start()
        try:
            await asyncio.to_thread(publish, url(srv, GOOD_KEYS[0]), 160, 90, 30, 15, realtime=False, audio=True)
            await until(lambda: bool(authority.sinks and authority.sinks[0].closes))
        finally:
            await srv.stop()
        return authority

    (sink,) = uvloop.run(scenario()).sinks
    assert len(decode_h264(sink)) == 15 and sink.audio


async def test_enhanced_rtmp_avc1_is_accepted(server: RTMPServer, authority: RecordingAuthority) -> None:
    client = await RawClient.connect(server.port)
    await client.publish(GOOD_KEYS[0])
    avcc = b"\x01\x42\xc0\x1e\xff\xe1\x00\x04SPS!\x01\x00\x03PPS"
    nalu = struct.pack(">I", 3) + b"\x65\x88\x84"
    client.send(6, VIDEO, 1, b"\x90avc1" + avcc)  # SequenceStart
    client.writer.write(client.chunks.write(6, VIDEO, 1, 40, b"\x91avc1\x00\x00\x21" + nalu))  # CodedFrames
    client.writer.write(client.chunks.write(6, VIDEO, 1, 73, b"\xa3avc1" + nalu))  # CodedFramesX, inter
    await until(lambda: bool(authority.sinks) and len(authority.sinks[0].video) == 2)
    (sink,) = authority.sinks
    assert sink.video_configs == [avcc]
    assert [(p.dts_ms, p.pts_ms, p.keyframe, p.data) for p in sink.video] == [
        (40, 40 + 0x21, True, nalu), (73, 73, False, nalu)
    ]  # fmt: skip
    client.writer.close()
    await until(lambda: sink.closes == ["publisher disconnected"])


async def test_acknowledgements_and_ping(server: RTMPServer) -> None:
    client = await RawClient.connect(server.port)
    client.command(0, "connect", 1, {"app": "live"})
    await client.until_command("_result")
    client.send(2, WINDOW_ACK_SIZE, 0, struct.pack(">I", 4000))  # ack me every 4000 bytes
    client.send(2, USER_CONTROL, 0, b"\x00\x06" + struct.pack(">I", 1234))  # ping request
    client.send(3, COMMAND_AMF0, 0, amf0.encode("_checkbw", 0, None, "x" * 5000))  # > 4000 bytes
    seen: dict[int, bytes] = {}
    while ACKNOWLEDGEMENT not in seen or USER_CONTROL not in seen:
        data = await asyncio.wait_for(client.reader.read(65536), 5.0)
        assert data
        seen.update((m.type_id, m.payload) for m in client.incoming.feed(data))
    assert seen[USER_CONTROL] == b"\x00\x07" + struct.pack(">I", 1234)  # ping response
    (acked,) = struct.unpack(">I", seen[ACKNOWLEDGEMENT])
    assert acked >= 1 + 2 * 1536 + 5000  # handshake plus everything since
    client.writer.close()


async def test_aggregate_message_is_split_into_tags(server: RTMPServer, authority: RecordingAuthority) -> None:
    client = await RawClient.connect(server.port)
    await client.publish(GOOD_KEYS[0])
    avcc = b"\x01\x42\xc0\x1e\xff\xe1\x00\x04SPS!\x01\x00\x03PPS"
    nalu = struct.pack(">I", 3) + b"\x65\x88\x84"

    def tag(type_id: int, ts: int, body: bytes) -> bytes:
        header = bytes([type_id]) + len(body).to_bytes(3, "big") + (ts & 0xFFFFFF).to_bytes(3, "big")
        return header + bytes([ts >> 24]) + bytes(3) + body + struct.pack(">I", 11 + len(body))

    tags = tag(VIDEO, 500, b"\x17\x00\x00\x00\x00" + avcc) + tag(VIDEO, 500, b"\x17\x01\x00\x00\x00" + nalu)
    tags += tag(VIDEO, 533, b"\x27\x01\x00\x00\x00" + nalu)
    client.writer.write(client.chunks.write(6, AGGREGATE, 1, 1000, tags))  # sub-tag times shift by +500
    await until(lambda: bool(authority.sinks) and len(authority.sinks[0].video) == 2)
    (sink,) = authority.sinks
    assert sink.video_configs == [avcc]
    assert [(p.dts_ms, p.keyframe) for p in sink.video] == [(1000, True), (1033, False)]
    client.writer.close()


def _partial_first_chunks(count: int) -> bytes:
    """Set Chunk Size 32768, then the first chunk of a 64 KiB video message on each of ``count`` streams."""
    data = ChunkWriter().write(2, SET_CHUNK_SIZE, 0, 0, struct.pack(">I", 32768))
    for csid in range(4, 4 + count):
        data += ChunkWriter(chunk_size=32768).write(csid, VIDEO, 1, 0, bytes(65536))[: 12 + 32768]
    return data


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (ChunkWriter().write(3, COMMAND_AMF0, 0, 0, amf0.encode("connect", 1) + b"\x0c\x80\x00\x00\x00"), "AMF0: long string of 2147483648 bytes at byte 24 exceeds the 65536-byte cap"),
        (ChunkWriter().write(3, COMMAND_AMF0, 0, 0, amf0.encode("connect", 1) + b"\x0a\x80\x00\x00\x00"), "AMF0: strict array of 2147483648 items at byte 19 exceeds the 4096-item cap"),
        (b"".join(ChunkWriter().write(c, USER_CONTROL, 0, 0, bytes(6)) for c in range(2, 67)), "more than 64 chunk streams on one connection"),
        (_partial_first_chunks(5), "more than 131072 bytes of incomplete messages buffered"),
    ],
    ids=["amf0-string-2^31", "amf0-array-2^31", "chunk-streams", "incomplete-bytes"],
)
async def test_each_exceeded_limit_closes_with_one_clear_line(
    authority: RecordingAuthority, caplog: pytest.LogCaptureFixture, data: bytes, reason: str
) -> None:
    srv = RTMPServer(make_config(max_message_bytes=65536), authority)
    await srv.start()
    try:
        client = await RawClient.connect(srv.port)
        client.writer.write(data)
        await client.closed_by_server()
        await until(lambda: srv.connection_count == 0, what="the connection to end")
    finally:
        await srv.stop()
    (line,) = warnings_from(caplog)
    assert line.startswith("[RTMP] [127.0.0.1:") and line.endswith(f"] closed: {reason}")
