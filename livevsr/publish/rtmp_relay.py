"""RTMP relay out: push the upscaled stream (and the original audio) to other RTMP servers.

Each target URL gets its own writer thread fed from a bounded queue; it muxes FLV into a pipe to a
small relay process that pushes it over FFmpeg's RTMP client (see ``relay_child`` for why):
a slow or unreachable target drops and counts packets, never stalls the stream. The H.264 is the
stream's own encoder output, remuxed; a lost connection is retried with exponential backoff while
the publish lasts. URLs are logged masked: their last path part is the target's stream key.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable

import av

from livevsr.config import mask_url
from livevsr.pipeline.stream import PublishSession
from livevsr.publish.mux import PacketWriter, SessionTap

log = logging.getLogger(__name__)

CHILD_EXIT_S = 5.0  # after its stdin closes, the relay process has this long to finish sending


class RelayWriter(PacketWriter):
    """Muxes FLV into a pipe to a relay process (``relay_child``) that pushes it to the URL."""

    retry = True

    def __init__(self, name: str, url: str, on_drop: Callable[[str, int], None]) -> None:
        self.url = url
        self._proc: subprocess.Popen | None = None
        self.child_error: str | None = None
        super().__init__(name, on_drop, "relay_slow")

    def describe(self) -> str:
        return f"relay {mask_url(self.url)}"

    def _open(self, width: int, height: int) -> av.container.OutputContainer:
        self._reap()
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "livevsr.publish.relay_child"],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, bufsize=0,
            env={**os.environ, "LIVEVSR_RELAY_URL": self.url},
        )  # fmt: skip
        return av.open(
            self._proc.stdin, "w", format="flv",
            # a pipe cannot seek back; send each packet as soon as it is muxed
            options={"flvflags": "no_duration_filesize", "flush_packets": "1"},
        )  # fmt: skip

    def _after_close(self) -> None:
        self._reap()

    def _reap(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(timeout=CHILD_EXIT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        err = proc.stderr.read()  # a line or two: cannot fill the pipe and block the child
        proc.stderr.close()
        if proc.returncode:
            lines = (err or b"").decode(errors="replace").strip().splitlines()
            if proc.returncode < 0:
                cause = f"relay process ended by signal {-proc.returncode} (the target stopped answering)"
            else:
                cause = lines[-1] if lines else f"relay process exited with {proc.returncode}"
            self.child_error = cause

    def _error(self, reason: str) -> None:
        self.child_error = None
        self._close_container(None, quiet=True)
        self._reap()
        super()._error(f"target: {self.child_error}" if self.child_error else reason)


def open_relays(session: PublishSession, urls: list[str]) -> SessionTap:
    """A ``SessionOutput`` for one publish session pushing to every URL in ``urls``."""
    name = session.name
    on_drop = session.stream.drop
    return SessionTap([("upscaled", RelayWriter(name, url, on_drop)) for url in urls])
