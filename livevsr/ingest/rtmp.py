"""Embedded RTMP ingest server: publishers (OBS, ffmpeg) push H.264/AAC, we hand access units to a sink.

Publish side only. One ``_Connection`` per TCP connection runs the simple handshake, reassembles
the chunk stream (``chunk.py``), answers the NetConnection/NetStream commands (``amf0.py``) and
turns FLV tags (``flv.py``) into ``VideoPacket``/``AudioPacket`` for the ``IngestSink`` that the
``IngestAuthority`` returned for the stream key. Nothing here decodes or blocks the loop.

Every limit a peer can push against (handshake and idle timeouts, chunk size, message size, AMF0
depth, connections per IP) closes only that connection, with one log line naming what happened.
Stream keys are never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import struct
import time
from typing import Any

from livevsr.config import RTMPConfig, split_host_port
from livevsr.errors import IngestError
from livevsr.ingest import amf0, flv
from livevsr.ingest.base import AudioPacket, IngestAuthority, IngestSink, VideoPacket
from livevsr.ingest.chunk import (
    ACKNOWLEDGEMENT,
    AGGREGATE,
    AUDIO,
    COMMAND_AMF0,
    COMMAND_AMF3,
    DATA_AMF0,
    DATA_AMF3,
    SET_CHUNK_SIZE,
    SET_PEER_BANDWIDTH,
    USER_CONTROL,
    VIDEO,
    WINDOW_ACK_SIZE,
    ChunkReader,
    ChunkWriter,
    Message,
)
from livevsr.limits import FailureDelay
from livevsr.telemetry.logs import RepeatSummary

log = logging.getLogger(__name__)

RTMP_VERSION = 3
HANDSHAKE_BYTES = 1536  # C1/C2/S1/S2 size
OUT_CHUNK_SIZE = 4096  # bytes; what we announce for our (small) replies
WINDOW_BYTES = 2_500_000  # our Window Acknowledgement Size and the peer bandwidth we announce
MAX_WRITE_BUFFER_BYTES = 1 << 20  # replies queued to a peer that does not read
READ_BYTES = 1 << 16

_CSID_CONTROL = 2
_CSID_COMMAND = 3
_CSID_STREAM = 5

_STREAM_BEGIN = 0  # User Control event types
_PING_REQUEST = 6
_PING_RESPONSE = 7

_U32 = struct.Struct(">I")
_CODEC_ADVICE = "use H.264: in OBS, Settings > Output > Video Encoder, pick x264 or an H.264 hardware encoder"


_METADATA_FIELDS = ("width", "height", "framerate", "videocodecid", "audiocodecid", "encoder")


def _short(value: Any) -> str:
    """A metadata value for the log: whole numbers without ".0", text cut to 64 characters."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)[:64]


def _metadata_summary(metadata: dict) -> tuple[str, ...]:
    """The onMetaData fields the log shows, codec ids as names (and None where a field is absent)."""
    out = []
    for name in _METADATA_FIELDS:
        value = metadata.get(name)
        if value is not None and name in ("videocodecid", "audiocodecid"):
            out.append(flv.metadata_codec(value, audio=name == "audiocodecid"))
        else:
            out.append(_short(value))
    return tuple(out)


def _describe_first_byte(first: int) -> str:
    if first == 0x16:
        return "a TLS handshake on the plain RTMP port (RTMPS is not supported; terminate TLS in front)"
    if first in (6, 8):
        return f"encrypted RTMP (RTMPE, version byte {first}) which is not supported"
    if 0x41 <= first <= 0x5A:
        return f"not RTMP (first byte {chr(first)!r}, an HTTP request or text?)"
    return f"not RTMP (first byte 0x{first:02x}, expected 0x03)"


class RTMPServer:
    """Accepts RTMP publishers on ``config.listen`` and feeds each publish to ``authority``'s sink."""

    def __init__(
        self,
        config: RTMPConfig,
        authority: IngestAuthority,
        *,
        summary: RepeatSummary | None = None,
        key_failures: FailureDelay | None = None,
    ) -> None:
        """``summary``: logs repeated refusals once per address and second; ``key_failures``: the
        growing delay before refusing an address that keeps sending wrong keys (shared with WHIP)."""
        self.config = config
        self.authority = authority
        self.summary = summary if summary is not None else RepeatSummary(log)
        self.key_failures = key_failures if key_failures is not None else FailureDelay()
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._per_ip: dict[str, int] = {}

    async def start(self) -> None:
        """Bind ``config.listen`` ("127.0.0.1:0" gives an ephemeral port) and start accepting."""
        host, port = split_host_port(self.config.listen)
        host = host.strip("[]")  # "[::]:1935" binds IPv6
        self._server = await asyncio.start_server(self._on_client, host, port, reuse_address=True)
        log.info("[RTMP] listening on %s:%d, application %r", host, self.port, self.config.app)

    @property
    def port(self) -> int:
        """The bound TCP port."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("RTMPServer.port: the server is not started")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    async def stop(self) -> None:
        """Stop listening and close every connection; open sinks get close("server stopping")."""
        if self._server is not None:
            self._server.close()
        connections = list(self._connections)
        for conn in connections:
            conn.abort("server stopping")
        tasks = [conn.task for conn in connections if conn.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            self._server = None

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        address = writer.get_extra_info("peername") or ("?", 0)
        ip, port = str(address[0]), int(address[1])
        peer = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
        if self._per_ip.get(ip, 0) >= self.config.max_connections_per_ip:
            self._log_refusal(peer, ip)
            writer.close()
            return
        conn = _Connection(self, reader, writer, peer)
        conn.task = asyncio.current_task()
        self._connections.add(conn)
        self._per_ip[ip] = self._per_ip.get(ip, 0) + 1
        try:
            await conn.run()
        finally:
            self._connections.discard(conn)
            self._per_ip[ip] -= 1
            if not self._per_ip[ip]:
                del self._per_ip[ip]


    def _log_refusal(self, peer: str, ip: str) -> None:
        """One line per second at most, however fast one address retries."""
        self.summary.event(
            logging.WARNING, "RTMP connection refused: too many open (rtmp.max_connections_per_ip)", ip,
            f"[RTMP] [{peer}] refused: {self._per_ip[ip]} connections from {ip} already open "
            "(rtmp.max_connections_per_ip)",
        )  # fmt: skip


class _Closed(Exception):
    """Internal: end this connection with ``reason`` (logged at ``level``)."""

    def __init__(self, reason: str, level: int = logging.INFO) -> None:
        super().__init__(reason)
        self.reason = reason
        self.level = level


class _Refused(_Closed):
    """Internal: a publish refused (wrong key, busy, ...); its status is sent after the key delay."""

    def __init__(self, reason: str, stream_id: int, wrong_key: bool) -> None:
        super().__init__(reason, logging.WARNING)
        self.stream_id = stream_id
        self.wrong_key = wrong_key


class _Connection:
    """One TCP connection: handshake, chunk stream, commands, and at most one publish at a time."""

    def __init__(
        self, server: RTMPServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str
    ) -> None:
        self.config = server.config
        self.authority = server.authority
        self.reader = reader
        self.writer = writer
        self.peer = peer
        self.prefix = f"[RTMP] [{peer}]"
        self.ip = peer.rsplit(":", 1)[0].strip("[]")
        self.server = server
        self.task: asyncio.Task[Any] | None = None
        self.chunks = ChunkReader(self.config.max_message_bytes, self.config.max_chunk_size)
        self.out = ChunkWriter(compress=False)
        self._abort_reason: str | None = None
        self._refused = False  # the connection ends because its publish was refused
        self.connected = False  # "connect" accepted
        self.app = ""
        self.next_stream_id = 1
        self.sink: IngestSink | None = None
        self.publish_stream_id = 0
        self.idle_since = 0.0  # monotonic time since when no publish is active
        self.metadata: dict[str, Any] = {}
        self.video_config: bytes | None = None
        self.audio_config: bytes | None = None
        self.bytes_in = 0
        self.acked_bytes = 0
        self.peer_window = WINDOW_BYTES
        self.dropped_before_config = 0
        self.warned_audio_codec = False
        self.warned_data = False
        self._ts_base = {AUDIO: 0, VIDEO: 0}  # 2**32 multiples: RTMP timestamps wrap after ~49.7 days
        self._ts_last = {AUDIO: 0, VIDEO: 0}
        self.video_packets = 0
        self.audio_packets = 0

    # -- lifecycle -------------------------------------------------------------------------------

    def abort(self, reason: str) -> None:
        """Close from outside (server stop): the read loop sees EOF and ends with ``reason``."""
        if self._abort_reason is None:
            self._abort_reason = reason
        self.writer.transport.close()

    async def run(self) -> None:
        reason, level = "closed", logging.INFO
        try:
            await self._handshake()
            # Debug only: a refused publish is then one line (summarised per address), not two.
            log.debug("%s opened", self.prefix)
            self.idle_since = time.monotonic()
            await self._read_loop()
        except _Refused as exc:
            reason, level = exc.reason, exc.level
            await self._refuse(exc)
        except _Closed as exc:
            reason, level = exc.reason, exc.level
        except IngestError as exc:
            reason, level = str(exc), logging.WARNING
        except (ConnectionError, OSError) as exc:
            reason, level = f"connection error: {exc.__class__.__name__}", logging.INFO
        except Exception:
            log.exception("%s internal error", self.prefix)
            reason, level = "internal error", logging.ERROR
        except asyncio.CancelledError:
            reason = "cancelled"
            raise
        finally:
            if self._abort_reason is not None:
                reason, level = self._abort_reason, logging.INFO
            self._close_sink(reason)
            self.writer.close()
            if self._refused:  # a key-guessing loop must cost one line a second, not two per try
                kind = f"RTMP publish refused: {reason.rsplit('refused: ', 1)[-1]}"
                self.server.summary.event(level, kind, self.ip, f"{self.prefix} closed: {reason}")
            else:
                log.log(level, "%s closed: %s", self.prefix, reason)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.wait_closed(), 1.0)

    async def _refuse(self, refusal: _Refused) -> None:
        """Send the refusal; after a wrong key, only once this address's growing delay has passed."""
        self._refused = True
        delay = self.server.key_failures.failed(self.ip) if refusal.wrong_key else 0.0
        if delay:
            await asyncio.sleep(delay)
        self._send_status(refusal.stream_id, "error", "NetStream.Publish.BadName", "Publish refused.")
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.drain(), 1.0)

    async def _handshake(self) -> None:
        timeout_s = self.config.handshake_timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                c0 = await self.reader.readexactly(1)
                if c0[0] != RTMP_VERSION:
                    raise _Closed(_describe_first_byte(c0[0]), logging.WARNING)
                c1 = await self.reader.readexactly(HANDSHAKE_BYTES)
                # Simple handshake: S1 = our time, zeros (no digest), random; S2 = C1 echoed.
                s1 = _U32.pack(self._uptime_ms()) + b"\x00\x00\x00\x00" + os.urandom(HANDSHAKE_BYTES - 8)
                self.writer.write(bytes([RTMP_VERSION]) + s1 + c1)
                await self.writer.drain()
                await self.reader.readexactly(HANDSHAKE_BYTES)  # C2: its content is not checked
                self.bytes_in = self.acked_bytes = 1 + 2 * HANDSHAKE_BYTES  # acks count the handshake too
        except TimeoutError:
            raise _Closed(f"handshake not finished within {timeout_s:g} s", logging.WARNING) from None
        except asyncio.IncompleteReadError:
            raise _Closed("peer closed the connection during the handshake") from None

    async def _read_loop(self) -> None:
        idle_s = self.config.idle_timeout_s
        setup_s = self.config.handshake_timeout_s
        while True:
            # Without a publish, a connection gets handshake_timeout_s to start one (after connecting or
            # after unpublishing), so a trickle of pings cannot hold a slot forever.
            now = time.monotonic()
            setup_left = math.inf if self.sink is not None else self.idle_since + setup_s - now
            try:
                async with asyncio.timeout(min(idle_s, max(setup_left, 0.0))):
                    data = await self.reader.read(READ_BYTES)
            except TimeoutError:
                if self.sink is None and time.monotonic() >= self.idle_since + setup_s:
                    reason = f"no publish within {setup_s:g} s (rtmp.handshake_timeout_s)"
                else:
                    reason = f"no data for {idle_s:g} s (rtmp.idle_timeout_s)"
                raise _Closed(reason, logging.WARNING) from None
            if not data:
                raise _Closed("publisher disconnected" if self.sink else "peer closed the connection")
            recv_ns = time.monotonic_ns()
            self.bytes_in += len(data)
            for message in self.chunks.feed(data):
                self._on_message(message, recv_ns)
            if getattr(self.sink, "closed", False):
                # The server ended the publish (kicked, refused for load, replaced by a reconnect):
                # hang up, so the publisher knows instead of streaming into nothing.
                raise _Closed(f"ended by the server: {getattr(self.sink, 'end_reason', None) or 'closed'}")
            drain = getattr(self.sink, "drain", None)
            if drain is not None:
                # Lossless (block) streams: stop reading while the pipeline catches up, so TCP slows
                # the publisher down instead of us dropping frames. Not counted as idle time.
                await drain()
            if self.bytes_in - self.acked_bytes >= self.peer_window:
                self.acked_bytes = self.bytes_in
                self._send_control(ACKNOWLEDGEMENT, _U32.pack(self.bytes_in & 0xFFFFFFFF))
            if self.writer.transport.get_write_buffer_size() > MAX_WRITE_BUFFER_BYTES:
                raise _Closed("peer does not read our replies", logging.WARNING)

    def _close_sink(self, reason: str) -> None:
        sink, self.sink = self.sink, None
        if sink is None:
            return
        self.idle_since = time.monotonic()
        log.info(
            "%s publish ended: %s (%d video, %d audio packets)",
            self.prefix, reason, self.video_packets, self.audio_packets,
        )  # fmt: skip
        try:
            sink.close(reason)
        except Exception:
            log.exception("%s sink.close failed", self.prefix)

    @staticmethod
    def _uptime_ms() -> int:
        return (time.monotonic_ns() // 1_000_000) & 0xFFFFFFFF

    # -- sending ---------------------------------------------------------------------------------

    def _send(self, csid: int, type_id: int, stream_id: int, payload: bytes) -> None:
        self.writer.write(self.out.write(csid, type_id, stream_id, 0, payload))

    def _send_control(self, type_id: int, payload: bytes) -> None:
        self._send(_CSID_CONTROL, type_id, 0, payload)

    def _send_command(self, stream_id: int, *values: Any) -> None:
        csid = _CSID_COMMAND if stream_id == 0 else _CSID_STREAM
        self._send(csid, COMMAND_AMF0, stream_id, amf0.encode(*values))

    def _send_status(self, stream_id: int, level: str, code: str, description: str) -> None:
        info = {"level": level, "code": code, "description": description}
        self._send_command(stream_id, "onStatus", 0, None, info)

    # -- receiving -------------------------------------------------------------------------------

    def _on_message(self, message: Message, recv_ns: int) -> None:
        type_id = message.type_id
        if type_id == VIDEO:
            self._on_video(message.payload, message.timestamp, message.stream_id, recv_ns)
        elif type_id == AUDIO:
            self._on_audio(message.payload, message.timestamp, message.stream_id, recv_ns)
        elif type_id in (COMMAND_AMF0, COMMAND_AMF3):
            payload = message.payload
            if type_id == COMMAND_AMF3 and payload[:1] == b"\x00":
                payload = payload[1:]  # AMF3 command messages start with a format byte, then AMF0
            self._on_command(amf0.decode_all(payload), message.stream_id)
        elif type_id in (DATA_AMF0, DATA_AMF3):
            payload = message.payload
            if type_id == DATA_AMF3 and payload[:1] == b"\x00":
                payload = payload[1:]
            self._on_data(payload)
        elif type_id == AGGREGATE:
            self._on_aggregate(message, recv_ns)
        elif type_id == WINDOW_ACK_SIZE:
            size = _U32.unpack_from(message.payload)[0] if len(message.payload) >= 4 else 0
            if size > 0:
                self.peer_window = size
        elif type_id == USER_CONTROL:
            payload = message.payload
            if len(payload) >= 6 and int.from_bytes(payload[:2], "big") == _PING_REQUEST:
                self._send_control(USER_CONTROL, _PING_RESPONSE.to_bytes(2, "big") + payload[2:6])
        elif type_id == SET_CHUNK_SIZE:
            log.debug("%s peer chunk size %d", self.prefix, self.chunks.chunk_size)
        # Abort was applied by the chunk reader; Acknowledgement and Set Peer Bandwidth need nothing.

    def _on_command(self, values: list[Any], stream_id: int) -> None:
        if not values or not isinstance(values[0], str):
            raise _Closed("command message without a command name", logging.WARNING)
        name = values[0]
        txn = values[1] if len(values) > 1 and isinstance(values[1], float) else 0.0
        args = values[2:]
        if name == "connect":
            self._on_connect(txn, args[0] if args and isinstance(args[0], dict) else {})
            return
        if not self.connected:
            raise _Closed(f"command {name[:32]!r} before connect", logging.WARNING)
        if name == "createStream":
            stream = self.next_stream_id
            self.next_stream_id += 1
            self._send_command(0, "_result", txn, None, float(stream))
        elif name == "publish":
            key = args[1] if len(args) > 1 and isinstance(args[1], str) else ""
            self._on_publish(txn, key, stream_id)
        elif name in ("FCUnpublish", "deleteStream", "closeStream"):
            if self.sink is not None:
                self._close_sink(f"publisher stopped ({name})")
        elif name in ("releaseStream", "FCPublish", "_checkbw", "getStreamLength"):
            pass  # ffmpeg and OBS send these; nothing waits for an answer
        else:
            log.debug("%s ignoring command %r", self.prefix, name[:32])

    def _on_connect(self, txn: float, command: dict[str, Any]) -> None:
        if self.connected:
            raise _Closed("second connect on one connection", logging.WARNING)
        app = command.get("app")
        app = app if isinstance(app, str) else ""
        name = app.split("?", 1)[0].strip("/")  # "live/" and "live?token=..." mean app "live"
        if name != self.config.app:
            info = {"level": "error", "code": "NetConnection.Connect.Rejected", "description": "Unknown app."}
            self._send_command(0, "_error", txn, None, info)
            # Only the first path segment: OBS users sometimes paste "live/KEY" into the server URL.
            shown = name.split("/", 1)[0][:64] + ("/****" if "/" in name else "")
            reason = f"connect refused: application {shown!r} is not {self.config.app!r}"
            raise _Closed(reason, logging.WARNING)
        self.connected = True
        self.app = name
        self._send_control(WINDOW_ACK_SIZE, _U32.pack(WINDOW_BYTES))
        self._send_control(SET_PEER_BANDWIDTH, _U32.pack(WINDOW_BYTES) + b"\x02")  # 2 = dynamic
        self._send_control(SET_CHUNK_SIZE, _U32.pack(OUT_CHUNK_SIZE))
        self.out.chunk_size = OUT_CHUNK_SIZE
        encoding = command.get("objectEncoding", 0.0)
        self._send_command(
            0, "_result", txn,
            {"fmsVer": "FMS/3,5,7,7009", "capabilities": 31.0, "mode": 1.0},
            {
                "level": "status",
                "code": "NetConnection.Connect.Success",
                "description": "Connection succeeded.",
                "objectEncoding": encoding if isinstance(encoding, float) else 0.0,
            },
        )  # fmt: skip

    def _on_publish(self, txn: float, key: str, stream_id: int) -> None:
        if self.sink is not None:
            raise _Closed("publish while already publishing on this connection", logging.WARNING)
        if stream_id == 0 or stream_id >= self.next_stream_id:
            raise _Closed(f"publish on stream {stream_id}, which createStream did not make", logging.WARNING)
        try:
            if not key:
                raise IngestError("empty stream key")
            sink = self.authority.open_publish(key, f"rtmp {self.peer}")
        except IngestError as exc:
            # The client gets a generic refusal; the log gets the reason (never the key).
            wrong_key = not key or str(exc) == "unknown stream key"
            reason = f"publish rtmp://…/{self.app}/**** refused: {exc}"
            raise _Refused(reason, stream_id, wrong_key) from None
        self.sink = sink
        self.publish_stream_id = stream_id
        self.video_config = self.audio_config = None
        self.video_packets = self.audio_packets = self.dropped_before_config = 0
        self._send_control(USER_CONTROL, _STREAM_BEGIN.to_bytes(2, "big") + _U32.pack(stream_id))
        self._send_status(stream_id, "status", "NetStream.Publish.Start", "Publishing.")
        log.info("%s publishing rtmp://…/%s/****", self.prefix, self.app)

    def _on_data(self, payload: bytes) -> None:
        try:
            values = amf0.decode_all(payload)
        except amf0.AMF0Error as exc:  # metadata is informational: a bad one is not worth a disconnect
            if not self.warned_data:
                self.warned_data = True
                log.warning("%s ignoring an unreadable data message: %s", self.prefix, exc)
            return
        if values and values[0] == "@setDataFrame":
            values = values[1:]
        if len(values) >= 2 and values[0] == "onMetaData" and isinstance(values[1], dict):
            summary, previous = _metadata_summary(values[1]), _metadata_summary(self.metadata)
            changed = summary != previous
            self.metadata = values[1]
            if changed:  # some muxers (GStreamer flvmux) repeat onMetaData every few frames
                text = "%s metadata: %sx%s @ %s fps, video codec %s, audio codec %s, encoder '%s'"
                log.info(text, self.prefix, *summary)
            # The frame rate before the first frame: live sizing (pipeline/sizing.py) plans with it.
            fps, set_fps = values[1].get("framerate"), getattr(self.sink, "set_source_fps", None)
            if set_fps is not None and isinstance(fps, (int, float)) and 0 < fps <= 240:
                set_fps(float(fps))

    def _on_aggregate(self, message: Message, recv_ns: int) -> None:
        """An aggregate message holds FLV tags back to back (RTMP spec 7.1.6)."""
        body = memoryview(message.payload)
        pos = 0
        offset: int | None = None
        while pos + 11 <= len(body):
            tag_type = body[pos]
            size = int.from_bytes(body[pos + 1 : pos + 4], "big")
            ts = int.from_bytes(body[pos + 4 : pos + 7], "big") | (body[pos + 7] << 24)
            if pos + 11 + size + 4 > len(body):
                raise _Closed("aggregate message truncated", logging.WARNING)
            if offset is None:
                offset = message.timestamp - ts  # sub-tag times are relative to the first one
            tag = bytes(body[pos + 11 : pos + 11 + size])
            ts = (ts + offset) & 0xFFFFFFFF
            if tag_type == VIDEO:
                self._on_video(tag, ts, message.stream_id, recv_ns)
            elif tag_type == AUDIO:
                self._on_audio(tag, ts, message.stream_id, recv_ns)
            elif tag_type == DATA_AMF0:
                self._on_data(tag)
            pos += 11 + size + 4

    def _unwrap(self, kind: int, timestamp: int) -> int:
        if timestamp < self._ts_last[kind] - (1 << 31):
            self._ts_base[kind] += 1 << 32
        self._ts_last[kind] = timestamp
        return self._ts_base[kind] + timestamp

    def _on_video(self, payload: bytes, timestamp: int, stream_id: int, recv_ns: int) -> None:
        sink = self.sink
        if sink is None or stream_id != self.publish_stream_id:
            return
        tag = flv.parse_video(payload)
        if tag.codec != "h264":
            if tag.codec.startswith("Enhanced RTMP"):  # multitrack (OBS "Enhanced Broadcasting") or ModEx
                reason = f"{tag.codec} video is not supported; send one H.264 track (no multitrack video)"
            else:
                reason = f"video codec {tag.codec} is not supported; {_CODEC_ADVICE}"
            refuse = getattr(sink, "refuse", None)  # optional: the stream then shows it was refused
            if refuse is not None:
                refuse(reason)
            raise _Closed(reason, logging.WARNING)
        if tag.kind == flv.CONFIG:
            config = bytes(tag.data)
            if config != self.video_config:
                self.video_config = config
                sink.video_config("h264", config)
        elif tag.kind == flv.FRAME:
            if self.video_config is None:
                if not self.dropped_before_config:
                    log.warning("%s dropping video until the AVC sequence header arrives", self.prefix)
                self.dropped_before_config += 1
                return
            if not tag.data:
                return
            dts = self._unwrap(VIDEO, timestamp)
            self.video_packets += 1
            sink.video_packet(VideoPacket(bytes(tag.data), dts + tag.cts_ms, dts, tag.keyframe, recv_ns))

    def _on_audio(self, payload: bytes, timestamp: int, stream_id: int, recv_ns: int) -> None:
        sink = self.sink
        if sink is None or stream_id != self.publish_stream_id:
            return
        tag = flv.parse_audio(payload)
        if tag.codec != "aac":
            if not self.warned_audio_codec:
                self.warned_audio_codec = True
                log.warning("%s ignoring %s audio; only AAC is passed on", self.prefix, tag.codec)
            return
        if tag.kind == flv.CONFIG:
            config = bytes(tag.data)
            if config != self.audio_config:
                sample_rate, channels = flv.parse_audio_specific_config(config)
                self.audio_config = config
                sink.audio_config("aac", config, sample_rate, channels)
        elif self.audio_config is not None and tag.data:
            self.audio_packets += 1
            sink.audio_packet(AudioPacket(bytes(tag.data), self._unwrap(AUDIO, timestamp), "aac", recv_ns))
