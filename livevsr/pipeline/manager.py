"""StreamManager: the configured streams, and the authority that lets publishers in."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os

from livevsr.config import Config
from livevsr.engines.registry import EngineChoice, choose_engine, create_engine
from livevsr.errors import IngestError
from livevsr.pipeline.admission import LoadMonitor, machine_cpu_seconds
from livevsr.pipeline.stream import PublishSession, Stream
from livevsr.telemetry.metrics import Metrics

log = logging.getLogger(__name__)


class StreamManager:
    """Implements ``IngestAuthority``: a publish with a known key starts that stream's session."""

    def __init__(
        self, config: Config, engine_choice: EngineChoice, metrics: Metrics, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.config = config
        self.engine_choice = engine_choice
        self.streams: dict[str, Stream] = {}
        self._by_key: dict[str, Stream] = {}
        self._pulled = {sc.name for sc in config.streams if sc.pull}  # fed by their URL, not publishers
        for sc in config.streams:
            engine_config, choice = config.engine, engine_choice
            if sc.engine:  # a per-stream engine overrides engine.name
                engine_config = dataclasses.replace(config.engine, name=sc.engine)
                choice = choose_engine(engine_config)
                choice = EngineChoice(choice.name, f"streams[{sc.name}].engine: {choice.reason}")
            # An engine that can make the output size itself (bicubic) does; the encoder rescales the rest.
            factory = functools.partial(create_engine, choice, engine_config, output_height=sc.output_height)
            stream = Stream(config, sc, choice, factory, metrics, loop)
            self.streams[sc.name] = stream
            self._by_key[sc.key] = stream
        self.metrics = metrics
        self.load = LoadMonitor({"cpu": float(os.cpu_count() or 1)}, cpu_seconds=machine_cpu_seconds)
        self._sampler = loop.create_task(self._sample_load())
        self.accepting = True

    def device(self, stream: Stream) -> str:
        """Where a stream's engine computes (its registry entry says): a GPU, or "cpu"."""
        return stream.engine_choice.spec.device(self.config.engine)

    def open_publish(self, key: str, source: str, *, pull: bool = False) -> PublishSession:
        """``pull``: the stream's own pull source is opening it (the only way into a pulled stream)."""
        if not self.accepting:
            raise IngestError("server is shutting down")
        stream = self._by_key.get(key)
        if stream is None:
            raise IngestError("unknown stream key")
        if stream.name in self._pulled and not pull:
            # Otherwise the publisher and the pull would keep replacing each other.
            raise IngestError(
                f"stream {stream.name} pulls its input from a URL (streams[].pull); publish to another stream"
            )
        device = self.device(stream)
        # Refuse what the device cannot also carry, instead of slowing every stream on it down.
        refusal = self.load.refusal(device, stream.name, self.config.pipeline.max_engine_load)
        if refusal is not None:
            stream.publish_refused(refusal)
            raise IngestError(refusal)
        session = stream.start_session(source)
        self.load.track(session, device, stream.engine_choice.spec.starting_load)
        return session

    async def _sample_load(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                self._apply_load_sample()
            except Exception:  # a bug here must not stop admission control for the process's life
                log.exception("engine load sampling failed")

    def _apply_load_sample(self) -> None:
        for session, reason in self.load.sample():
            if self.config.pipeline.max_engine_load > 0:
                session.refuse(reason)  # type: ignore[attr-defined]
        for name, stream in self.streams.items():
            load = self.load.stream_load(name)
            stream.engine_load = load
            self.metrics.engine_load.labels(name).set(load or 0.0)

    def get(self, name: str) -> Stream | None:
        return self.streams.get(name)

    async def close(self) -> None:
        """Stop taking publishers, end every session and wait for in-flight frames to drain."""
        self.accepting = False
        self._sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._sampler
        for stream in self.streams.values():
            if stream.session is not None:
                stream.session.close("server stopping")
        sessions = [session for stream in self.streams.values() for session in stream.sessions_running]
        if sessions:
            await asyncio.wait([asyncio.ensure_future(s.wait_finished()) for s in sessions], timeout=15)
