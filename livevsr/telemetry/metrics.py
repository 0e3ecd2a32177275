"""Prometheus metrics and live percentiles per stream.

Histograms feed /metrics; a short rolling window per stage feeds the percentiles in /api/streams
(Prometheus histograms cannot give exact recent percentiles).
"""

from __future__ import annotations

import threading
import time
from collections import deque

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from livevsr.telemetry.timing import STAGES, FrameTiming

# Seconds; 1 ms .. 2 s as the ecosystem notes recommend, plus a tail for slow GPUs.
LATENCY_BUCKETS_S = (
    0.001, 0.002, 0.005, 0.010, 0.020, 0.035, 0.050, 0.075, 0.100, 0.150,
    0.250, 0.400, 0.600, 1.0, 2.0, 5.0,
)  # fmt: skip


class Metrics:
    """All process metrics in one registry (a fresh registry per App keeps tests independent)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.stage_seconds = Histogram(
            "livevsr_stage_seconds", "Time a frame spends in each pipeline stage",
            ["stream", "stage"], buckets=LATENCY_BUCKETS_S, registry=self.registry,
        )  # fmt: skip
        self.frames = Counter(
            "livevsr_frames",
            "Frames through each point of the pipeline",
            ["stream", "point"],
            registry=self.registry,
        )
        self.dropped = Counter(
            "livevsr_dropped_frames", "Frames dropped, by cause", ["stream", "cause"], registry=self.registry
        )
        self.viewers = Gauge("livevsr_viewers", "Connected WHEP viewers", ["stream"], registry=self.registry)
        self.live = Gauge(
            "livevsr_stream_live", "1 while a publisher is live", ["stream"], registry=self.registry
        )
        self.engine_load = Gauge(
            "livevsr_engine_load",
            "Fraction of wall time the stream's engine computes (admission control's measure)",
            ["stream"], registry=self.registry,
        )  # fmt: skip
        self.glass_to_glass = Histogram(
            "livevsr_glass_to_glass_seconds", "Barcode-measured source-to-viewer latency",
            ["stream"], buckets=LATENCY_BUCKETS_S, registry=self.registry,
        )  # fmt: skip

    def init_stream(self, stream: str) -> None:
        """Zero every series for ``stream`` so dashboards show 0 instead of nothing."""
        for point in ("received", "decoded", "upscaled", "encoded"):
            self.frames.labels(stream, point)
        for cause in ("ring_full", "late", "decode_error", "ingest_backlog", "engine_error"):
            self.dropped.labels(stream, cause)
        self.viewers.labels(stream).set(0)
        self.live.labels(stream).set(0)
        self.engine_load.labels(stream).set(0)


class RollingStats:
    """Recent stage latencies and frame rates of one stream, safe to update from any thread."""

    WINDOW_S = 10.0

    def __init__(self, maxlen: int = 1024) -> None:
        self._lock = threading.Lock()
        self._stages: dict[str, deque[float]] = {s: deque(maxlen=maxlen) for s in STAGES}
        self._events: dict[str, deque[float]] = {"in": deque(maxlen=maxlen), "out": deque(maxlen=maxlen)}

    def add_timing(self, timing: FrameTiming, stages: tuple[str, ...]) -> None:
        with self._lock:
            for stage in stages:
                value = timing.stage_s(stage)
                if value is not None:
                    self._stages[stage].append(value)

    def tick(self, kind: str) -> None:
        with self._lock:
            self._events[kind].append(time.monotonic())

    def fps(self, kind: str) -> float:
        now = time.monotonic()
        with self._lock:
            recent = [t for t in self._events[kind] if now - t <= self.WINDOW_S]
        if len(recent) < 2:
            return 0.0
        span = now - recent[0]
        return round((len(recent) - 1) / span, 2) if span > 0 else 0.0

    def percentiles_ms(self) -> dict[str, dict[str, float] | None]:
        out: dict[str, dict[str, float] | None] = {}
        with self._lock:
            snapshot = {k: sorted(v) for k, v in self._stages.items()}
        for stage, values in snapshot.items():
            if not values:
                out[stage] = None
                continue
            out[stage] = {f"p{p}": round(1000 * _quantile(values, p / 100), 2) for p in (50, 95, 99)}
        return out

    def reset(self) -> None:
        with self._lock:
            for d in (*self._stages.values(), *self._events.values()):
                d.clear()

    def reset_rates(self) -> None:
        """Forget the frame events: fps reads 0 at once instead of decaying over the window."""
        with self._lock:
            for d in self._events.values():
                d.clear()


def _quantile(sorted_values: list[float], q: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


class LoopLagMonitor:
    """How late the event loop wakes up: the delay every viewer and publisher feels."""

    INTERVAL_S = 0.1

    def __init__(self, maxlen: int = 600) -> None:
        self._lags: deque[float] = deque(maxlen=maxlen)  # last minute at 10 Hz

    async def run(self) -> None:
        import asyncio

        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(self.INTERVAL_S)
            self._lags.append(max(0.0, loop.time() - before - self.INTERVAL_S))

    def percentiles_ms(self) -> dict[str, float] | None:
        values = sorted(self._lags)
        if not values:
            return None
        return {f"p{p}": round(1000 * _quantile(values, p / 100), 2) for p in (50, 99)} | {
            "max": round(1000 * values[-1], 2)
        }
