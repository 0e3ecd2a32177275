"""Admission control by measured engine load.

A stream's load is the fraction of wall time its engine spends computing (``EngineWorker.busy_s``),
smoothed over a few seconds; a device's load is the sum over the streams on it, as a fraction of
the device's capacity. A GPU runs one stream's kernels at a time, so its capacity is 1; the CPU's
is its core count (each engine worker is one thread).

Two rules keep the streams already running at full rate:
- a publish is refused while its device's load is above ``pipeline.max_engine_load``; on the CPU
  also while the machine's CPUs are busier than that (the x264 encoders, decoders and viewers cost
  far more than bicubic on a box without a GPU, and other programs on the box count too);
- a stream admitted into a device that then stays overloaded (load above capacity for a few
  seconds) is ended with the reason, if it is the newest on the device and still on probation.
A session too young to be measured reserves its engine's ``starting_load`` (engines/registry.py)
of its device meanwhile.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from livevsr.engines.registry import engine_spec

SMOOTHING = 0.5  # weight of the newest one-second sample: a few seconds of memory
STARTING_S = 5.0  # engine warm-up (weights to the GPU, first chunks): no trustworthy load yet
OVERLOAD_SAMPLES = 3  # consecutive samples above capacity before the newest stream is ended
PROBATION_S = 60.0  # how long after its start a stream can still be ended for overloading
RECONNECT_GRACE_S = 15.0  # a stream back this soon is a reconnect: its past load is its own


def machine_cpu_seconds() -> float:
    """CPU seconds spent by every program on this machine so far (Linux /proc/stat); elsewhere
    this process's own."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return time.process_time()
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")  # user..steal; guest is inside user


class MeasuredSession(Protocol):
    name: str  # the stream's
    closed: bool

    @property
    def engine_busy_s(self) -> float: ...


@dataclass
class _Tracked:
    session: MeasuredSession
    device: str
    starting_load: float
    started: float
    busy_s: float
    sampled_at: float
    load: float | None = None  # smoothed fraction of one device unit; None until first measured


class LoadMonitor:
    """Call ``sample`` about once a second (on the event loop)."""

    def __init__(
        self,
        capacity: dict[str, float],
        clock: Callable[[], float] = time.monotonic,
        cpu_seconds: Callable[[], float] | None = None,
    ) -> None:
        """``cpu_seconds``: CPU time used so far on the machine (``machine_cpu_seconds``), or None."""
        self.capacity = capacity  # device -> units; a device not listed (a GPU) has 1
        self._clock = clock
        self._tracked: list[_Tracked] = []
        self._over: dict[str, int] = {}  # device -> consecutive overloaded samples
        self._cpu_seconds = cpu_seconds
        self._cpu_mark = (clock(), cpu_seconds()) if cpu_seconds is not None else (0.0, 0.0)
        self.machine_cpu: float | None = None  # smoothed share of all cores in use
        self._ended: dict[str, float] = {}  # stream -> when its last tracked session ended

    def track(self, session: MeasuredSession, device: str, starting_load: float | str) -> None:
        """``starting_load``: the share of ``device`` the session holds until measured, or the name
        of its engine (the registry's figure)."""
        if isinstance(starting_load, str):
            starting_load = engine_spec(starting_load).starting_load
        now = self._clock()
        self._tracked.append(_Tracked(session, device, starting_load, now, session.engine_busy_s, now))

    def sample(self) -> list[tuple[MeasuredSession, str]]:
        """Update every session's load; returns (session, reason) for sessions to end."""
        now = self._clock()
        self._sample_machine_cpu(now)
        for t in self._tracked:
            if t.session.closed:
                self._ended[t.session.name] = now
        self._tracked = [t for t in self._tracked if not t.session.closed]
        for t in self._tracked:
            busy, dt = t.session.engine_busy_s, now - t.sampled_at
            if dt <= 0:
                continue
            fraction = max(0.0, busy - t.busy_s) / dt
            t.load = fraction if t.load is None else SMOOTHING * fraction + (1 - SMOOTHING) * t.load
            t.busy_s, t.sampled_at = busy, now
        evict = []
        for device in {t.device for t in self._tracked}:
            load = self.device_load(device)[0]
            self._over[device] = self._over.get(device, 0) + 1 if load > 1.0 else 0
            if self._over[device] < OVERLOAD_SAMPLES:
                continue
            on_device = [t for t in self._tracked if t.device == device]
            newest = max(on_device, key=lambda t: t.started)
            if len(on_device) > 1 and now - newest.started <= PROBATION_S:
                self._over[device] = 0
                self._tracked.remove(newest)  # it is being ended: its load is gone
                evict.append((newest.session, (
                    f"{device} cannot carry this stream as well: measured engine load {load:.0%} of its "
                    f"capacity since it started; the streams already running keep their frame rate"
                )))  # fmt: skip
        return evict

    def _sample_machine_cpu(self, now: float) -> None:
        if self._cpu_seconds is None:
            return
        used, (then, used_then) = self._cpu_seconds(), self._cpu_mark
        if now <= then:
            return
        share = max(0.0, used - used_then) / (now - then) / self.capacity.get("cpu", 1.0)
        last = self.machine_cpu
        self.machine_cpu = share if last is None else SMOOTHING * share + (1 - SMOOTHING) * last
        self._cpu_mark = (now, used)

    def stream_load(self, name: str) -> float | None:
        """The smoothed load of stream ``name``'s running session (fraction of one device unit)."""
        for t in self._tracked:
            if t.session.name == name and not t.session.closed:
                return t.load
        return None

    def device_load(self, device: str, exclude: str | None = None) -> tuple[float, dict[str, str]]:
        """(load as a fraction of the device's capacity, {stream: its share, for messages}),
        leaving out stream ``exclude`` (a publisher reconnecting replaces its own session)."""
        now = self._clock()
        total, shares = 0.0, {}
        for t in self._tracked:
            if t.device != device or t.session.closed or t.session.name == exclude:
                continue
            starting = now - t.started < STARTING_S
            load = t.load or 0.0
            if starting:
                load = max(load, t.starting_load)
            total += load
            shares[t.session.name] = f"{load:.0%}" + (" starting" if starting else "")
        return total / self.capacity.get(device, 1.0), shares

    def refusal(self, device: str, stream: str, limit: float) -> str | None:
        """Why a new publish of ``stream`` is refused on ``device``, or None if it is admitted."""
        if limit <= 0:
            return None
        load, shares = self.device_load(device, exclude=stream)
        if load >= limit:
            listed = ", ".join(f"{name} {share}" for name, share in sorted(shares.items()))
            return (
                f"{device} is busy: measured engine load {load:.0%} ({listed}) is above "
                f"pipeline.max_engine_load {limit:.0%}; try again when a stream ends"
            )
        # A reconnect's (smoothed) past CPU time is its own, about to go or just gone.
        ended = self._ended.get(stream)
        reconnect = any(t.session.name == stream for t in self._tracked) or (
            ended is not None and self._clock() - ended < RECONNECT_GRACE_S
        )
        # Refusing protects the streams already running; with none, a busy box still gets its stream.
        others = any(t.session.name != stream for t in self._tracked)
        cpu = self.machine_cpu
        if device == "cpu" and cpu is not None and cpu >= limit and others and not reconnect:
            return (
                f"the CPU is busy: {cpu:.0%} of this machine's {self.capacity.get('cpu', 1.0):g} cores "
                f"in use (engines, encoders, viewers), above pipeline.max_engine_load {limit:.0%}; "
                "try again when a stream ends"
            )
        return None
