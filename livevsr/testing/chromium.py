"""Headless Chromium driven over the Chrome DevTools Protocol, for end-to-end viewer tests.

No WebDriver and no new dependencies: Chromium is started with ``--remote-debugging-port=0``, the
port it picked is read from ``<user-data-dir>/DevToolsActivePort``, and JavaScript is evaluated in
the page over an aiohttp websocket. The browser is started in its own process group and killed by
that id on exit, with its helper processes.

    async with Chromium("http://127.0.0.1:8889/view/main") as browser:
        width = await browser.wait_for("document.querySelector('video').videoWidth", timeout_s=20)
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import logging
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

log = logging.getLogger(__name__)

CHROMIUM = "/usr/bin/chromium"
FLAGS = (
    "--headless=new",
    "--no-sandbox",  # tests run as root in containers, where the sandbox cannot start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
    "--allow-loopback-in-peer-connection",
    # plain host candidates instead of mDNS .local names: aioice would otherwise resolve them through
    # one process-wide asyncio.Lock, which breaks when tests run the server in successive event loops
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--mute-audio",
    "--disable-dev-shm-usage",  # containers often have a 64 MB /dev/shm; use /tmp instead
)


class ChromiumError(RuntimeError):
    """Chromium did not start, the page is gone, or an evaluated expression threw."""


def chromium_path() -> str | None:
    """The Chromium executable, or None when it is not installed (tests skip then)."""
    if os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    return shutil.which("chromium")


class Chromium:
    """One headless Chromium showing ``url``; ``evaluate`` runs JavaScript in that page."""

    def __init__(self, url: str, *, executable: str | None = None, extra_args: tuple[str, ...] = (),
                 window_size: tuple[int, int] = (1280, 800), startup_timeout_s: float = 30.0) -> None:
        self.url = url
        self.executable = executable or chromium_path() or CHROMIUM
        self.extra_args = extra_args
        self.window_size = window_size
        self.startup_timeout_s = startup_timeout_s
        self.console: list[str] = []  # console messages and uncaught exceptions from the page
        self._proc: asyncio.subprocess.Process | None = None
        self._profile: str | None = None
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict]] = {}

    async def __aenter__(self) -> Chromium:
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def stderr_tail(self, max_chars: int = 4000) -> str:
        """The end of Chromium's own log, for failure messages."""
        if not self._profile:
            return ""
        try:
            return (Path(self._profile) / "chromium.log").read_text(errors="replace")[-max_chars:]
        except OSError:
            return ""

    async def start(self) -> None:
        self._profile = tempfile.mkdtemp(prefix="livevsr-chromium-")
        logfile = open(Path(self._profile) / "chromium.log", "wb")  # noqa: SIM115 - closed below
        try:
            self._proc = await asyncio.create_subprocess_exec(
                self.executable, *FLAGS, *self.extra_args,
                f"--window-size={self.window_size[0]},{self.window_size[1]}",
                f"--user-data-dir={self._profile}", "--remote-debugging-port=0", self.url,
                stdin=asyncio.subprocess.DEVNULL, stdout=logfile, stderr=logfile,
                start_new_session=True,  # its own process group: renderer and GPU helpers die with it
            )
        finally:
            logfile.close()
        log.info("chromium pid %d: started for %s", self._proc.pid, self.url)
        port = await self._devtools_port()
        self._session = aiohttp.ClientSession()
        ws_url = await self._page_ws_url(port)
        self._ws = await self._session.ws_connect(ws_url, max_msg_size=64 * 1024 * 1024)
        self._reader = asyncio.create_task(self._read_loop())
        await self.send("Runtime.enable")
        await self._wait_loaded()

    async def _wait_loaded(self) -> None:
        """Until the page has navigated away from about:blank and finished loading."""
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(ChromiumError):
                state = await self.evaluate("[location.href, document.readyState]", timeout_s=5)
                if state and state[0] != "about:blank" and state[1] == "complete":
                    return
            await asyncio.sleep(0.1)
        raise ChromiumError(f"{self.url} did not finish loading within {self.startup_timeout_s} s")

    async def _devtools_port(self) -> int:
        assert self._proc is not None and self._profile is not None
        path = Path(self._profile) / "DevToolsActivePort"
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self._proc.returncode is not None:
                raise ChromiumError(f"chromium exited with {self._proc.returncode} before DevTools opened:\n"
                                    f"{self.stderr_tail()}")
            with contextlib.suppress(OSError, ValueError, IndexError):
                port = int(path.read_text().splitlines()[0])
                if port > 0:
                    return port
            await asyncio.sleep(0.1)
        raise ChromiumError(f"chromium did not write {path} within {self.startup_timeout_s} s:\n"
                            f"{self.stderr_tail()}")

    async def _page_ws_url(self, port: int) -> str:
        assert self._session is not None
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError, json.JSONDecodeError):
                async with self._session.get(f"http://127.0.0.1:{port}/json/list") as resp:
                    targets = await resp.json(content_type=None)
                pages = [t for t in targets if t.get("type") == "page" and t.get("webSocketDebuggerUrl")]
                if pages:
                    return pages[0]["webSocketDebuggerUrl"]
            await asyncio.sleep(0.1)
        raise ChromiumError(f"chromium on DevTools port {port} showed no page "
                            f"within {self.startup_timeout_s} s")

    async def _read_loop(self) -> None:
        assert self._ws is not None
        try:
            async for msg in self._ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                data = json.loads(msg.data)
                if "id" in data:
                    future = self._pending.pop(data["id"], None)
                    if future is not None and not future.done():
                        future.set_result(data)
                else:
                    self._on_event(data.get("method", ""), data.get("params", {}))
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(ChromiumError("the DevTools connection closed"))
            self._pending.clear()

    def _on_event(self, method: str, params: dict) -> None:
        if method == "Runtime.consoleAPICalled":
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            self.console.append(f"console.{params.get('type', 'log')}: {text}")
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            exc = details.get("exception", {})
            self.console.append(f"uncaught: {exc.get('description') or details.get('text', '')}")

    async def send(self, method: str, params: dict | None = None, timeout_s: float = 30.0) -> dict:
        """One DevTools command; returns its ``result``."""
        if self._ws is None or self._ws.closed:
            raise ChromiumError(f"{method}: the DevTools connection is not open")
        msg_id = next(self._ids)
        future: asyncio.Future[dict] = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = future
        await self._ws.send_str(json.dumps({"id": msg_id, "method": method, "params": params or {}}))
        try:
            reply = await asyncio.wait_for(future, timeout_s)
        finally:
            self._pending.pop(msg_id, None)
        if "error" in reply:
            raise ChromiumError(f"{method}: {reply['error'].get('message')}")
        return reply.get("result", {})

    async def evaluate(self, expr: str, timeout_s: float = 30.0) -> Any:
        """Evaluate ``expr`` in the page (awaiting it if it is a promise) and return its JSON value."""
        result = await self.send("Runtime.evaluate", {
            "expression": expr, "returnByValue": True, "awaitPromise": True,
        }, timeout_s=timeout_s)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text", "")
            raise ChromiumError(f"evaluate {expr!r} threw: {text}")
        return result.get("result", {}).get("value")

    async def screenshot(self, path: str | Path) -> None:
        """Save what the page shows now as a PNG, for looking at a failure."""
        result = await self.send("Page.captureScreenshot", {"format": "png"})
        Path(path).write_bytes(base64.b64decode(result["data"]))

    async def wait_for(self, expr: str, timeout_s: float = 30.0, interval_s: float = 0.25) -> Any:
        """Evaluate ``expr`` until it is truthy and return that value; ChromiumError on timeout.

        An error while evaluating (the page is navigating, an element is not there yet) counts as
        "not yet"; the last one is in the timeout message.
        """
        deadline = time.monotonic() + timeout_s
        last: Any = None
        while True:
            try:
                last = await self.evaluate(expr)
            except ChromiumError as exc:
                if self._ws is None or self._ws.closed:
                    raise
                last = exc
            else:
                if last:
                    return last
            if time.monotonic() >= deadline:
                console = "\n".join(self.console[-20:])
                raise ChromiumError(f"waited {timeout_s} s for {expr!r}; last value {last!r}; "
                                    f"console:\n{console}")
            await asyncio.sleep(interval_s)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
            self._reader = None
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close()
            self._ws = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._proc is not None:
            await self._kill(self._proc)
            self._proc = None
        if self._profile is not None:
            shutil.rmtree(self._profile, ignore_errors=True)
            self._profile = None

    @staticmethod
    async def _kill(proc: asyncio.subprocess.Process) -> None:
        """SIGTERM the browser's process group (its id is the browser's pid), then SIGKILL if it lingers."""
        for sig, grace_s in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                await asyncio.wait_for(proc.wait(), grace_s)
                break
            except TimeoutError:
                continue
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # helpers that outlived the browser
        log.info("chromium pid %d: stopped (exit %s)", proc.pid, proc.returncode)
