"""StreamManager: the configured streams, and the authority that lets publishers in."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging

from livevsr.config import Config
from livevsr.engines.registry import EngineChoice, choose_engine, create_engine
from livevsr.errors import IngestError
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
        for sc in config.streams:
            engine_config, choice = config.engine, engine_choice
            if sc.engine:  # a per-stream engine overrides engine.name
                engine_config = dataclasses.replace(config.engine, name=sc.engine)
                choice = choose_engine(engine_config)
                choice = EngineChoice(choice.name, f"streams[{sc.name}].engine: {choice.reason}")
            factory = functools.partial(create_engine, choice, engine_config)
            stream = Stream(config, sc, choice, factory, metrics, loop)
            self.streams[sc.name] = stream
            self._by_key[sc.key] = stream
        self.accepting = True

    def open_publish(self, key: str, source: str) -> PublishSession:
        if not self.accepting:
            raise IngestError("server is shutting down")
        stream = self._by_key.get(key)
        if stream is None:
            raise IngestError("unknown stream key")
        self._admit(stream)
        return stream.start_session(source)

    def _admit(self, stream: Stream) -> None:
        """Refuse a stream the GPU cannot also carry, instead of slowing every stream down.

        FlashVSR at live rates needs a whole GPU for one stream (see BENCHMARKS.md), so one
        flashvsr stream runs per process; bicubic streams are cheap and always admitted.
        """
        if stream.engine_choice.name != "flashvsr":
            return
        busy = [
            s.name
            for s in self.streams.values()
            if s is not stream and s.sessions_running and s.engine_choice.name == "flashvsr"
        ]
        if busy:
            raise IngestError(
                f"GPU busy: flashvsr is already upscaling stream {busy[0]!r} (one flashvsr stream per GPU)"
            )

    def get(self, name: str) -> Stream | None:
        return self.streams.get(name)

    async def close(self) -> None:
        """Stop taking publishers, end every session and wait for in-flight frames to drain."""
        self.accepting = False
        for stream in self.streams.values():
            if stream.session is not None:
                stream.session.close("server stopping")
        sessions = [session for stream in self.streams.values() for session in stream.sessions_running]
        if sessions:
            await asyncio.wait([asyncio.ensure_future(s.wait_finished()) for s in sessions], timeout=15)
