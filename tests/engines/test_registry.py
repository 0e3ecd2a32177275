"""engines/registry.py: one table of engines that config, auto, admission and the CLI all read."""

from __future__ import annotations

import dataclasses

import pytest

from livevsr.config import Config, EngineConfig, StreamConfig
from livevsr.engines import registry
from livevsr.engines.bicubic.engine import BicubicEngine
from livevsr.engines.registry import EngineChoice, EngineSpec, RealtimeLimit, choose_engine, create_engine
from livevsr.errors import ConfigError, EngineError
from livevsr.pipeline.admission import LoadMonitor


class _Session:
    name = "cam"
    closed = False
    engine_busy_s = 0.0


def test_an_unknown_engine_name_is_an_error_not_flashvsr() -> None:
    with pytest.raises(EngineError, match="unknown engine 'magic'; expected one of bicubic, flashvsr"):
        create_engine(EngineChoice("magic", "test"), EngineConfig())
    with pytest.raises(ConfigError, match="engine.name: expected auto, bicubic or flashvsr, got 'magic'"):
        EngineConfig(name="magic").check("engine")


def test_every_engine_declares_what_the_process_needs() -> None:
    for name, spec in registry.ENGINES.items():
        assert spec.name == name
        assert spec.realtime_input.pixel_rate > 0 and spec.realtime_input.basis
        assert spec.device(EngineConfig()) in ("cpu", "cuda:0")
    assert registry.engine_spec("flashvsr").device(EngineConfig()) == "cuda:0"
    assert registry.engine_spec("bicubic").device(EngineConfig()) == "cpu"
    assert isinstance(
        create_engine(choose_engine(EngineConfig(name="bicubic")), EngineConfig()), BicubicEngine
    )


@pytest.fixture
def tiny_engine(monkeypatch: pytest.MonkeyPatch) -> EngineSpec:
    """A new engine, added the way the compact tier will be: one entry in the table."""
    made: list[int] = []
    spec = EngineSpec(
        "tiny", lambda config, auto: (True, "tiny runs here"),
        lambda config, output_height: made.append(output_height) or BicubicEngine(output_height=output_height),
        lambda config: "cuda:0", RealtimeLimit(320, 180, 30, "test"), starting_load=0.5, auto_rank=50,
    )  # fmt: skip
    monkeypatch.setitem(registry.ENGINES, "tiny", spec)
    return spec


def test_adding_an_engine_is_one_entry(tiny_engine: EngineSpec) -> None:
    config = EngineConfig(name="tiny")
    config.check("engine")  # the config accepts it
    StreamConfig(engine="tiny").check("streams[0]")
    choice = choose_engine(config)
    assert choice == EngineChoice("tiny", "engine.name is tiny; tiny runs here")
    assert isinstance(create_engine(choice, config, output_height=144), BicubicEngine)
    # auto ranks it between flashvsr (not usable here without a GPU) and bicubic
    auto = choose_engine(dataclasses.replace(config, name="auto"))
    assert auto.name == "tiny" and auto.reason.startswith("auto: fell back to tiny because ")
    # admission reserves its starting load on its device
    monitor = LoadMonitor({"cpu": 2.0})
    monitor.track(_Session(), "cuda:0", "tiny")
    assert monitor.device_load("cuda:0")[0] == 0.5
    with pytest.raises(
        ConfigError, match=r"streams\[0\].engine: expected auto, bicubic, flashvsr, tiny or ''"
    ):
        Config(streams=[StreamConfig(engine="tin")]).check()
