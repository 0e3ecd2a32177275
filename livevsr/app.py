"""The process: config in, RTMP ingest + stream manager + HTTP server running, until stopped."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from collections.abc import Awaitable

from aiohttp import web

from livevsr import __version__
from livevsr.config import Config, split_host_port
from livevsr.engines.registry import choose_engine, preload
from livevsr.errors import ConfigError
from livevsr.ingest.whip import WhipServer
from livevsr.limits import Defences
from livevsr.pipeline.manager import StreamManager
from livevsr.publish.whep import WhepServer
from livevsr.server.guard import GuardedTCPSite, HttpGuard
from livevsr.server.routes import build_app
from livevsr.telemetry.logs import quiet_bad_requests
from livevsr.telemetry.metrics import LoopLagMonitor, Metrics

log = logging.getLogger(__name__)


WILDCARD_HOSTS = ("", "0.0.0.0", "::", "[::]")


def reachable_hosts(host: str) -> list[str]:
    """Hosts a user can type to reach a server bound to ``host``: a wildcard bind becomes 127.0.0.1
    and this machine's other IPv4 addresses (0.0.0.0 works on no other machine, nor in OBS)."""
    if host not in WILDCARD_HOSTS:
        return [host]
    import ifaddr

    others = [ip.ip for a in ifaddr.get_adapters() for ip in a.ips if isinstance(ip.ip, str)]
    return ["127.0.0.1"] + [ip for ip in others if not ip.startswith("127.")]


async def listen(key: str, address: str, start: Awaitable[None]) -> None:
    """Await a server's bind; a port that cannot be had is a config error naming the key."""
    try:
        await start
    except OSError as exc:
        why = "address already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
        raise ConfigError(
            f"{key}: cannot listen on {address}: {why}; stop what uses it or change {key}"
        ) from None


def restrict_ice_addresses(addresses: list[str]) -> None:
    """Offer only these host addresses in ICE (aioice otherwise lists every interface but loopback)."""
    if not addresses:
        return
    import aioice.ice

    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: list(addresses)


def set_consent_timeout(timeout_s: float) -> None:
    """Drop a WebRTC peer that stops answering ICE consent checks after about ``timeout_s``.

    aioice checks every 5 s and gives up after 6 misses (RFC 7675's 30 s); a killed viewer's slot
    stayed taken for up to 90 s. Checking every 3 s (at most) keeps the check traffic small.
    """
    import aioice.ice

    interval = min(3.0, timeout_s / 3)
    aioice.ice.CONSENT_INTERVAL = interval
    aioice.ice.CONSENT_FAILURES = max(2, round(timeout_s / interval))


class App:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.metrics = Metrics()
        self.engine_choice = choose_engine(config.engine)
        self.manager: StreamManager | None = None
        self.whep = WhepServer(
            config.webrtc.max_viewers_per_stream,
            max_sessions_per_ip=config.webrtc.max_sessions_per_ip,
            connect_timeout_s=config.webrtc.connect_timeout_s,
        )
        self.defences = Defences.from_config(config.http)
        self.http_guard = HttpGuard(
            config.http.max_connections_per_ip, config.http.header_timeout_s, self.defences.summary
        )
        self._bad_request_filter: logging.Filter | None = None
        self.whip: WhipServer | None = None
        self.rtmp = None
        self.pulls: list = []  # PullSource per stream with a pull URL
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self.ready = {"http": False, "rtmp": not config.rtmp.enabled}
        self.http_port = 0
        self.ingest: dict = {}  # what /api/streams tells publishers (never the key)
        self.loop_lag = LoopLagMonitor()
        self._lag_task: asyncio.Future | None = None
        self.rtmp_port = 0

    async def start(self) -> None:
        self._lag_task = asyncio.ensure_future(self.loop_lag.run())
        loop = asyncio.get_running_loop()
        restrict_ice_addresses(self.config.webrtc.ice_host_addresses)
        set_consent_timeout(self.config.webrtc.consent_timeout_s)
        self._bad_request_filter = quiet_bad_requests(self.defences.summary)
        self.manager = StreamManager(self.config, self.engine_choice, self.metrics, loop)
        for choice in {s.engine_choice.name: s.engine_choice for s in self.manager.streams.values()}.values():
            await asyncio.to_thread(preload, choice, self.config.engine)  # weights load once, off the loop
        self._add_outputs()
        log.info(
            "livevsr %s: engine %s (%s)", __version__, self.engine_choice.name, self.engine_choice.reason
        )

        self.whip = WhipServer(self.manager)
        app = build_app(
            self.manager, self.whep, self.metrics, self.ready, self.whip,
            viewer_token=self.config.http.viewer_token, admin_token=self.config.http.admin_token,
            ingest=self.ingest, loop_lag=self.loop_lag, defences=self.defences, guard=self.http_guard,
        )  # fmt: skip
        self._runner = web.AppRunner(
            app, access_log=None, keepalive_timeout=self.config.http.keepalive_timeout_s
        )
        await self._runner.setup()
        host, port = split_host_port(self.config.http.listen)
        self._site = GuardedTCPSite(self._runner, host, port, self.http_guard)
        await listen("http.listen", self.config.http.listen, self._site.start())
        self.http_port = self._runner.addresses[0][1]
        self.ready["http"] = True
        urls = [f"http://{h}:{self.http_port}/" for h in reachable_hosts(host)]
        log.info("HTTP: viewer and API at %s", " or ".join(urls))

        if self.config.rtmp.enabled:
            from livevsr.ingest.rtmp import RTMPServer

            self.rtmp = RTMPServer(
                self.config.rtmp, self.manager,
                summary=self.defences.summary, key_failures=self.defences.key_failures,
            )  # fmt: skip
            await listen("rtmp.listen", self.config.rtmp.listen, self.rtmp.start())
            self.rtmp_port = self.rtmp.port
            self.ingest.update(rtmp_port=self.rtmp_port, rtmp_app=self.config.rtmp.app)
            self.ready["rtmp"] = True
            hosts = reachable_hosts(split_host_port(self.config.rtmp.listen)[0])
            urls = [f"rtmp://{h}:{self.rtmp_port}/{self.config.rtmp.app}" for h in hosts]
            log.info("RTMP: publish to %s with a stream key (OBS: Server = one of these)", " or ".join(urls))
        self._start_pulls(loop)

    def _start_pulls(self, loop: asyncio.AbstractEventLoop) -> None:
        """Streams with a ``pull`` URL feed themselves from it (reconnecting) instead of waiting."""
        from livevsr.ingest.pull import PullSource

        for sc in self.config.streams:
            if sc.pull:
                source = PullSource(sc.name, sc.key, sc.pull, self.manager, loop)
                source.start()
                self.pulls.append(source)

    def _add_outputs(self) -> None:
        """One output per publish session: WHEP audio for every stream, relays and recording for the
        streams that ask for them."""
        from livevsr.publish.record import open_recording
        from livevsr.publish.rtmp_relay import open_relays
        from livevsr.publish.whep_audio import WhepAudioTap

        assert self.manager is not None
        for sc in self.config.streams:
            stream = self.manager.streams[sc.name]
            if sc.relays:
                urls = list(sc.relays)
                stream.output_factories.append(lambda session, urls=urls: open_relays(session, urls))
            if sc.record:
                record = self.config.record
                stream.output_factories.append(lambda session, cfg=record: open_recording(session, cfg))
            stream.output_factories.append(lambda session, s=stream: WhepAudioTap(s.name, s.audio))

    async def _finish_outputs(self) -> None:
        """Let recordings write their last fragment and relays their end before the process exits."""
        from livevsr.publish.mux import join_writers

        unfinished = await asyncio.to_thread(join_writers, 10.0)
        if unfinished:
            log.warning("%d relay/recording outputs did not finish in 10 s", unfinished)

    async def stop(self) -> None:
        if self._lag_task is not None:
            self._lag_task.cancel()
        """Stop taking publishers, drain in-flight frames, tell viewers goodbye, close ports."""
        if self.manager is not None:
            self.manager.accepting = False
        if self.rtmp is not None:
            await self.rtmp.stop()
        if self.whip is not None:
            await self.whip.close_all()
        for pull in self.pulls:
            await pull.stop()
        if self.manager is not None:
            await self.manager.close()
            await self._finish_outputs()
        await self.whep.close_all()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._bad_request_filter is not None:
            logging.getLogger("aiohttp.server").removeFilter(self._bad_request_filter)
        self.defences.summary.close()
        self.ready = {k: False for k in self.ready}


async def serve_forever(config: Config) -> None:
    """Run until SIGINT/SIGTERM; a second signal exits at once."""
    import signal

    app = App(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set():
            log.warning("second signal: exiting now")
            os._exit(1)
        log.info("stopping: no new publishers, draining in-flight frames")
        stop.set()

    # Handlers first: a signal during start-up (ports already logged) must still stop cleanly.
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    try:
        await app.start()
    except ConfigError:
        await app.stop()  # free what did start (the HTTP port when RTMP's is taken)
        raise
    await stop.wait()
    try:
        await asyncio.wait_for(app.stop(), timeout=20)
    except TimeoutError:
        log.warning("shutdown took longer than 20 s; exiting anyway")
