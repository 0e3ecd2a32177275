"""Recording: the upscaled stream (and optionally the original) to a file per publish session.

Fragmented MP4 (``frag_keyframe+empty_moov+default_base_moof``) writes a self-contained fragment at
every keyframe, so a file cut short by a crash or a kill plays up to its last complete fragment;
Matroska writes its clusters as it goes and is read back the same way. Packets are remuxed, not
re-encoded; audio is the publisher's AAC, aligned by pts (see ``mux``).
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable
from pathlib import Path

import av

from livevsr.config import RecordConfig
from livevsr.pipeline.stream import PublishSession
from livevsr.publish.mux import PacketWriter, SessionTap

log = logging.getLogger(__name__)

FORMATS = {  # config name -> (FFmpeg muxer, extension, muxer options)
    "fmp4": ("mp4", "mp4", {"movflags": "frag_keyframe+empty_moov+default_base_moof"}),
    "mkv": ("matroska", "mkv", {}),
}


class FileWriter(PacketWriter):
    """Writes ``<stem>.<ext>``; a resolution change continues in ``<stem>-2.<ext>`` and so on."""

    retry = False  # a full disk or a bad directory is not fixed by retrying

    def __init__(self, name: str, stem: Path, fmt: str, on_drop: Callable[[str, int], None]) -> None:
        self.stem = stem
        self.muxer, self.ext, self.options = FORMATS[fmt]
        self.paths: list[Path] = []
        super().__init__(name, on_drop, "record_slow")

    def describe(self) -> str:
        return f"recording {self.paths[-1] if self.paths else self.stem}"

    def _open(self, width: int, height: int) -> av.container.OutputContainer:
        suffix = f"-{len(self.paths) + 1}" if self.paths else ""
        path = self.stem.with_name(f"{self.stem.name}{suffix}.{self.ext}")
        self.paths.append(path)
        return av.open(str(path), "w", format=self.muxer, options=dict(self.options))


def _unique_stem(directory: Path, base: str) -> Path:
    stem, n = directory / base, 1
    while any(directory.glob(f"{stem.name}.*")):
        n += 1
        stem = directory / f"{base}.{n}"
    return stem


def open_recording(session: PublishSession, config: RecordConfig) -> SessionTap:
    """A ``SessionOutput`` for one publish session: ``<dir>/<stream>-<UTC time>.<ext>``."""
    name = session.name
    on_drop = session.stream.drop
    directory = Path(config.dir)
    directory.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    stem = _unique_stem(directory, f"{name}-{stamp}")
    writers: list[tuple[str, PacketWriter]] = [("upscaled", FileWriter(name, stem, config.format, on_drop))]
    if config.source:
        source_stem = stem.with_name(stem.name + "-source")
        writers.append(("source", FileWriter(name, source_stem, config.format, on_drop)))
    log.info("[%s] recording to %s.*", name, stem)
    return SessionTap(writers)
