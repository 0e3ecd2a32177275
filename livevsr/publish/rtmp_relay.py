"""RTMP relay out: push the upscaled stream (and the original audio) to other RTMP servers.

Each target URL gets its own writer thread (FLV over PyAV's RTMP client) fed from a bounded queue:
a slow or unreachable target drops and counts packets, never stalls the stream. The H.264 is the
stream's own encoder output, remuxed; a lost connection is retried with exponential backoff while
the publish lasts. URLs are logged masked: their last path part is the target's stream key.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import av

from livevsr.config import mask_url
from livevsr.pipeline.stream import PublishSession
from livevsr.publish.mux import PacketWriter, SessionTap

log = logging.getLogger(__name__)

OPEN_TIMEOUT_S = 10.0  # connect + RTMP handshake + publish
IO_TIMEOUT_S = 10.0  # a write blocked this long counts as a lost connection


class RelayWriter(PacketWriter):
    retry = True

    def __init__(self, name: str, url: str, on_drop: Callable[[str, int], None]) -> None:
        self.url = url
        super().__init__(name, on_drop, "relay_slow")

    def describe(self) -> str:
        return f"relay {mask_url(self.url)}"

    def _open(self, width: int, height: int) -> av.container.OutputContainer:
        return av.open(
            self.url, "w", format="flv",
            options={"flvflags": "no_duration_filesize"},  # a network output cannot seek back
            timeout=(OPEN_TIMEOUT_S, IO_TIMEOUT_S),
        )  # fmt: skip


def open_relays(session: PublishSession, urls: list[str]) -> SessionTap:
    """A ``SessionOutput`` for one publish session pushing to every URL in ``urls``."""
    name = session.name
    on_drop = session.stream.drop
    return SessionTap([("upscaled", RelayWriter(name, url, on_drop)) for url in urls])
