"""Regenerate the fuzz seed corpora in ``tests/fuzz/corpus/<target>/`` from real publishes.

    python tests/fuzz/make_corpus.py

Runs our RTMP server on loopback behind a recording TCP proxy and publishes through it with the
PyAV/FFmpeg test publisher (``livevsr.testing.publisher.publish``: libx264 + AAC) and, when
``gst-launch-1.0`` has them, GStreamer's ``rtmp2sink`` and ``rtmpsink``. The client-to-server bytes
of each publish are split into per-target seeds:

- ``handshake``: the whole connection from C0 (the input format is ``fuzzlib.split_input``'s:
  two bytes seeding the cuts, then the stream);
- ``rtmp_conn`` and ``chunk``: the post-handshake chunk stream, whole and cut;
- ``amf0``: each command and data message body;
- ``flv``: audio/video tag bodies (cut to 64 bytes: the parsers read only headers), a selector
  byte first (0 video, 1 audio, 2 AudioSpecificConfig);
- ``sdp``: aiortc's own WHEP and WHIP offers plus a hand-written Chromium-style and OBS-style
  offer, a selector byte first (0 WHEP check, 1 WHIP check).

Plus a few hand-made edge cases (extended timestamps, Set Chunk Size, Abort, aggregates, deep
AMF0). Generated files are named by content hash and replaced on each run; ``regress-*`` (inputs
that once crashed a target) and ``found-*`` (a minimized set of what long fuzz runs discovered,
added with ``-merge=1``) are kept.
"""

from __future__ import annotations

import asyncio
import hashlib
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from livevsr.config import RTMPConfig
from livevsr.errors import IngestError
from livevsr.ingest import amf0
from livevsr.ingest.chunk import (
    ABORT,
    AGGREGATE,
    AUDIO,
    COMMAND_AMF0,
    DATA_AMF0,
    SET_CHUNK_SIZE,
    USER_CONTROL,
    VIDEO,
    WINDOW_ACK_SIZE,
    ChunkReader,
    ChunkWriter,
)
from livevsr.ingest.rtmp import HANDSHAKE_BYTES, RTMPServer
from livevsr.testing.publisher import publish

sys.path.insert(0, str(Path(__file__).parent))
from rtmp_driver import KEY  # noqa: E402

CORPUS = Path(__file__).parent / "corpus"
TARGETS = ("amf0", "chunk", "flv", "handshake", "rtmp_conn", "sdp")
FLV_SEED_BYTES = 64
CAPTURE_BYTES = 48_000  # a capture is cut here: connect, publish, config and the first frames fit


class _Sink:
    def video_config(self, *args: object) -> None: ...
    def video_packet(self, *args: object) -> None: ...
    def audio_config(self, *args: object) -> None: ...
    def audio_packet(self, *args: object) -> None: ...
    def close(self, reason: str) -> None: ...


class _Authority:
    def open_publish(self, key: str, source: str) -> _Sink:
        if key != KEY:
            raise IngestError("unknown stream key")
        return _Sink()


async def _capture(run_client: object) -> list[bytes]:
    """Start the server behind a recording proxy, run ``run_client(url)``; return each connection's bytes."""
    server = RTMPServer(RTMPConfig(listen="127.0.0.1:0"), _Authority())
    await server.start()
    captured: list[bytearray] = []

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, tap: bytearray | None) -> None:
        try:
            while data := await reader.read(65536):
                if tap is not None:
                    tap += data
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def on_client(c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        s_reader, s_writer = await asyncio.open_connection("127.0.0.1", server.port)
        tap = bytearray()
        captured.append(tap)
        await asyncio.gather(pipe(c_reader, s_writer, tap), pipe(s_reader, c_writer, None))

    proxy = await asyncio.start_server(on_client, "127.0.0.1", 0)
    port = proxy.sockets[0].getsockname()[1]
    try:
        await run_client(f"rtmp://127.0.0.1:{port}/live/{KEY}")  # type: ignore[operator]
        await asyncio.sleep(0.5)
    finally:
        proxy.close()
        await server.stop()
    return [bytes(c) for c in captured if c]


async def _pyav(url: str) -> None:
    await asyncio.to_thread(publish, url, 64, 48, 30, 6, realtime=False, audio=True, gop=3)


async def _gst(sink: str, url: str) -> None:
    location = url + (" live=1" if sink == "rtmpsink" else "")
    pipeline = (
        "videotestsrc num-buffers=4 ! video/x-raw,width=64,height=48,framerate=30/1 "
        "! x264enc tune=zerolatency key-int-max=2 ! h264parse ! flvmux streamable=true name=mux "
        f"! {sink} location={shlex.quote(location)} "
        "audiotestsrc num-buffers=4 ! audioconvert ! voaacenc ! aacparse ! mux."
    )
    proc = await asyncio.create_subprocess_exec(
        "gst-launch-1.0", "-e", *shlex.split(pipeline), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    await asyncio.wait_for(proc.wait(), 30.0)


def _gst_has(*names: str) -> bool:
    if shutil.which("gst-inspect-1.0") is None:
        return False
    return all(subprocess.run(["gst-inspect-1.0", n], capture_output=True).returncode == 0 for n in names)


def _handmade_chunk_streams() -> list[bytes]:
    """Corners real publishers rarely hit: extended timestamps, chunk size changes, Abort, aggregates."""
    out = []
    w = ChunkWriter(chunk_size=128)
    s = w.write(2, SET_CHUNK_SIZE, 0, 0, (64).to_bytes(4, "big"))
    w.chunk_size = 64
    s += w.write(4, VIDEO, 1, 0xFFFFFF + 5, b"\x17\x01\x00\x00\x00" + bytes(150))
    s += w.write(4, VIDEO, 1, 0xFFFFFF + 40, b"\x27\x01\x00\x00\x21" + bytes(150))
    s += w.write(70, AUDIO, 1, 3, b"\xaf\x01" + bytes(20))
    s += w.write(400, AUDIO, 1, 4, b"\xaf\x01" + bytes(20))
    out.append(s)
    w = ChunkWriter()
    partial = w.write(6, VIDEO, 1, 0, bytes(300))[:140]
    out.append(partial + ChunkWriter().write(2, ABORT, 0, 0, (6).to_bytes(4, "big")))
    w = ChunkWriter()
    tag = b"\x09" + (5).to_bytes(3, "big") + bytes(4) + bytes(3) + b"\x17\x01\x00\x00\x00" + (16).to_bytes(4, "big")
    out.append(w.write(5, AGGREGATE, 1, 100, tag * 3))
    out.append(w.write(2, USER_CONTROL, 0, 0, b"\x00\x06" + bytes(4)) + w.write(2, WINDOW_ACK_SIZE, 0, 0, b"\x00\x00\x10\x00"))
    return out


def _handmade_amf0() -> list[bytes]:
    return [
        amf0.encode("connect", 1, {"app": "live", "tcUrl": "rtmp://h/live", "objectEncoding": 0}),
        amf0.encode("publish", 3, None, KEY, "live"),
        amf0.encode("@setDataFrame", "onMetaData") + amf0.encode_ecma_array({"width": 64.0, "encoder": "x"}),
        b"\x0b" + bytes(10) + b"\x0c\x00\x00\x00\x03abc" + b"\x10\x00\x01C\x00\x01a\x05\x00\x00\x09" + b"\x0a\x00\x00\x00\x02\x06\x0d",
        b"\x03\x00\x01a" * 31 + b"\x05" + b"\x00\x00\x09" * 31,
    ]


def _sdp_offers() -> list[bytes]:
    from aiortc import RTCConfiguration, RTCPeerConnection

    async def offer(kinds: list[tuple[str, str]]) -> str:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        for kind, direction in kinds:
            pc.addTransceiver(kind, direction=direction)
        await pc.setLocalDescription(await pc.createOffer())
        sdp = pc.localDescription.sdp
        await pc.close()
        return sdp

    whep = asyncio.run(offer([("video", "recvonly"), ("audio", "recvonly")]))
    whip = asyncio.run(offer([("audio", "sendonly"), ("video", "sendonly")]))
    here = Path(__file__).parent
    return [
        b"\x00" + whep.encode(),
        b"\x01" + whip.encode(),
        b"\x00" + (here / "offer_chromium.sdp").read_bytes(),
        b"\x01" + (here / "offer_obs.sdp").read_bytes(),
    ]


def _split_capture(stream: bytes, seeds: dict[str, list[bytes]]) -> None:
    stream = stream[:CAPTURE_BYTES]
    seeds["handshake"].append(b"\x00\x00" + stream[: 1 + 2 * HANDSHAKE_BYTES + 600])
    body = stream[1 + 2 * HANDSHAKE_BYTES :]
    for target in ("rtmp_conn", "chunk"):
        seeds[target] += [b"\x00\x00" + body, b"\x12\x34" + body]
    reader = ChunkReader(1 << 24, 1 << 24)
    try:
        messages = reader.feed(body)
    except IngestError:
        messages = []
    for m in messages:
        if m.type_id in (COMMAND_AMF0, DATA_AMF0):
            seeds["amf0"].append(m.payload)
        elif m.type_id == VIDEO:
            seeds["flv"].append(b"\x00" + m.payload[:FLV_SEED_BYTES])
        elif m.type_id == AUDIO:
            seeds["flv"].append(b"\x01" + m.payload[:FLV_SEED_BYTES])
            if m.payload[:2] == b"\xaf\x00":
                seeds["flv"].append(b"\x02" + m.payload[2:])


def main() -> int:
    seeds: dict[str, list[bytes]] = {t: [] for t in TARGETS}
    clients = [("pyav", _pyav)]
    for sink in ("rtmp2sink", "rtmpsink"):
        needed = ("videotestsrc", "x264enc", "h264parse", "flvmux", "voaacenc", "aacparse", sink)
        if _gst_has(*needed):
            clients.append((sink, lambda url, sink=sink: _gst(sink, url)))
        else:
            print(f"make_corpus: GStreamer {sink} not available, skipped")
    for name, client in clients:
        for stream in asyncio.run(_capture(client)):
            print(f"make_corpus: {name}: captured {len(stream)} bytes")
            _split_capture(stream, seeds)
    for s in _handmade_chunk_streams():
        seeds["chunk"].append(b"\x00\x00" + s)
        seeds["rtmp_conn"].append(b"\x00\x00" + s)
    seeds["amf0"] += _handmade_amf0()
    seeds["flv"] += [b"\x00\x90hvc1" + bytes(8), b"\x00\x81avc1\x00\x00\x10", b"\x02\xf8\x80\x00\x00\x10"]
    seeds["sdp"] += _sdp_offers()
    total = 0
    for target, items in seeds.items():
        folder = CORPUS / target
        kept = {p.name for p in folder.iterdir() if p.name.startswith(("regress-", "found-"))} if folder.exists() else set()
        if folder.exists():
            for p in folder.iterdir():
                if p.name not in kept:
                    p.unlink()
        folder.mkdir(parents=True, exist_ok=True)
        for item in dict.fromkeys(items):
            (folder / hashlib.sha1(item).hexdigest()[:16]).write_bytes(item)
        size = sum(p.stat().st_size for p in folder.iterdir())
        total += size
        print(f"make_corpus: {target}: {len(list(folder.iterdir()))} seeds, {size} bytes")
    print(f"make_corpus: {total} bytes in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
