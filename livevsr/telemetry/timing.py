"""Per-frame timing: one small record rides with every frame from ingest to the viewer.

PyAV carries it through libavcodec (``packet.opaque`` -> ``frame.opaque`` with ``copy_opaque``),
the worker pairs it with the engine's outputs, and the encoder hands it back on the packet.
Stage marks use ``time.monotonic_ns()`` (immune to clock steps); ``wall_ns`` joins across hosts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

# Stage name -> (from mark, to mark). "total" is ingest to the first viewer send.
STAGES: dict[str, tuple[str, str]] = {
    "decode": ("received", "decoded"),
    "queue": ("decoded", "engine_in"),
    "engine": ("engine_in", "engine_out"),
    "encode": ("engine_out", "encoded"),
    "send": ("encoded", "sent"),
    "total": ("received", "sent"),
}


@dataclass(slots=True)
class FrameTiming:
    frame_id: int  # increasing per stream
    pts_ms: int  # source presentation time (RTMP/RTP media clock, ms)
    wall_ns: int = field(default_factory=time.time_ns)  # wall clock at ingest
    marks: dict[str, int] = field(default_factory=dict)  # mark -> time.monotonic_ns()

    def mark(self, name: str, t_ns: int | None = None) -> None:
        self.marks[name] = time.monotonic_ns() if t_ns is None else t_ns

    def stage_s(self, stage: str) -> float | None:
        """Seconds spent in ``stage``, or None if either end is not marked yet."""
        start, end = STAGES[stage]
        if start in self.marks and end in self.marks:
            return (self.marks[end] - self.marks[start]) / 1e9
        return None
