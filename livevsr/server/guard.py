"""HTTP connection limits aiohttp does not have: a deadline for each request's header, and a cap on
connections per address.

aiohttp reads a request header for as long as bytes keep trickling in, so a client sending one byte
every few seconds holds a socket forever (slowloris); enough of them exhaust the process's file
descriptors. The guard wraps aiohttp's protocol: the first byte of a request starts a timer that the
request handler's start cancels (through ``middleware``); a header still incomplete when it fires
closes the connection. The body is bounded where it is read (routes.py), idle keep-alive
connections by aiohttp's own ``keepalive_timeout``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from livevsr.telemetry.logs import RepeatSummary

log = logging.getLogger(__name__)

_BUSY = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"


class HttpGuard:
    def __init__(self, max_connections_per_ip: int, header_timeout_s: float, summary: RepeatSummary) -> None:
        self.max_connections_per_ip = max_connections_per_ip
        self.header_timeout_s = header_timeout_s
        self._summary = summary
        self._per_ip: dict[str, int] = {}
        self._by_transport: dict[asyncio.BaseTransport, _GuardedProtocol] = {}

    def connections(self, ip: str) -> int:
        return self._per_ip.get(ip, 0)

    def wrap(self, factory: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        return lambda: _GuardedProtocol(self, factory)

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        protocol = self._by_transport.get(request.transport) if request.transport else None
        if protocol is not None:
            protocol.handling = True
            protocol.cancel_deadline()
        try:
            return await handler(request)
        finally:
            if protocol is not None:
                protocol.handling = False

    # -- bookkeeping for _GuardedProtocol --------------------------------------------------------

    def _admit(self, ip: str, protocol: _GuardedProtocol, transport: asyncio.BaseTransport) -> bool:
        if self._per_ip.get(ip, 0) >= self.max_connections_per_ip:
            kind = "HTTP connection refused: too many open (http.max_connections_per_ip)"
            self._summary.event(
                logging.WARNING, kind, ip,
                f"HTTP: refused a connection from {ip}: {self._per_ip[ip]} already open "
                "(http.max_connections_per_ip)",
            )  # fmt: skip
            return False
        self._per_ip[ip] = self._per_ip.get(ip, 0) + 1
        self._by_transport[transport] = protocol
        return True

    def _release(self, ip: str, transport: asyncio.BaseTransport) -> None:
        self._by_transport.pop(transport, None)
        left = self._per_ip.get(ip, 0) - 1
        if left > 0:
            self._per_ip[ip] = left
        else:
            self._per_ip.pop(ip, None)

    def _timed_out(self, ip: str) -> None:
        kind = f"HTTP connection closed: request header not complete within {self.header_timeout_s:g} s"
        self._summary.event(logging.WARNING, kind, ip, f"HTTP: {kind} ({ip}, http.header_timeout_s)")


class _GuardedProtocol(asyncio.Protocol):
    """aiohttp's protocol for one connection, with the guard's cap and header deadline around it."""

    def __init__(self, guard: HttpGuard, factory: Callable[[], asyncio.Protocol]) -> None:
        self._guard = guard
        self._factory = factory
        self._inner: asyncio.Protocol | None = None
        self._transport: asyncio.Transport | None = None
        self._ip = ""
        self._deadline: asyncio.TimerHandle | None = None
        self.handling = False  # a request's handler is running (its header is complete)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # No isinstance check: uvloop's transports do not derive from asyncio.Transport.
        self._transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self._ip = str(peer[0]) if peer else "?"
        if not self._guard._admit(self._ip, self, transport):
            self._transport.write(_BUSY)  # type: ignore[union-attr]
            transport.close()
            return
        self._inner = self._factory()
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._inner is None:
            return
        if not self.handling and self._deadline is None:
            # The first byte of a request: its header must be complete before the deadline.
            loop = asyncio.get_running_loop()
            self._deadline = loop.call_later(self._guard.header_timeout_s, self._expire)
        self._inner.data_received(data)

    def cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        if self.handling or self._transport is None:
            return
        self._guard._timed_out(self._ip)
        self._transport.close()

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        self.cancel_deadline()
        if self._inner is None:
            return
        assert self._transport is not None
        self._guard._release(self._ip, self._transport)
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()


class GuardedTCPSite(web.TCPSite):
    """aiohttp's TCPSite, serving through the guard's protocol."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, guard: HttpGuard) -> None:
        super().__init__(runner, host, port)
        self._guard = guard

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with the runner (TCPSite.start minus the listen)
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._guard.wrap(server), self._host, self._port)
