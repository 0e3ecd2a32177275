from pathlib import Path

import pytest

from livevsr.config import Config, load_config
from livevsr.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_shipped_config_equals_code_defaults() -> None:
    assert load_config(ROOT / "config.yaml", environ={}) == Config()


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("engine:\n  name: flashvsr\n")
    config = load_config(
        path, environ={"LIVEVSR__ENGINE__NAME": "bicubic", "LIVEVSR__RTMP__IDLE_TIMEOUT_S": "5"}
    )
    assert config.engine.name == "bicubic"
    assert config.rtmp.idle_timeout_s == 5.0


@pytest.mark.parametrize(
    ("var", "value", "message"),
    [
        ("LIVEVSR__ENGINE__NMAE", "bicubic", "engine.nmae: unknown key; allowed here:"),
        ("LIVEVSR__RTMP__IDLE_TIMEOUT_S", "soon", "rtmp.idle_timeout_s: expected a number, got 'soon'"),
    ],
)
def test_an_error_from_the_environment_names_the_variable(var: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(None, environ={var: value})
    assert str(exc.value).startswith(message)
    assert str(exc.value).endswith(f"(set by the environment variable {var})")


def test_an_error_from_the_file_names_no_variable(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("engine:\n  nmae: bicubic\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path, environ={"LIVEVSR__ENGINE__NAME": "bicubic"})
    assert "environment" not in str(exc.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "rtmpp:\n  listen: ':1'\n",
            "rtmpp: unknown key; allowed here: encoder, engine, http, log, pipeline, record, rtmp, streams,"
            " webrtc",
        ),
        ("rtmp:\n  port: 1935\n", "rtmp.port: unknown key; allowed here: app, enabled,"),
        ("rtmp:\n  listen: 1935\n", "rtmp.listen: expected a string, got 1935"),
        (
            "rtmp:\n  listen: 'nohost'\n",
            "rtmp.listen: expected 'HOST:PORT' (e.g. '0.0.0.0:1935'), got 'nohost'",
        ),
        ("rtmp:\n  enabled: 'yes'\n", "rtmp.enabled: expected true or false, got 'yes'"),
        (
            "pipeline:\n  ring_capacity_frames: 1.5\n",
            "pipeline.ring_capacity_frames: expected an integer, got 1.5",
        ),
        ("pipeline:\n  ring_policy: keep\n", "pipeline.ring_policy: expected 'drop' or 'block', got 'keep'"),
        ("engine:\n  name: magic\n", "engine.name: expected auto, bicubic or flashvsr, got 'magic'"),
        (
            "engine:\n  flashvsr:\n    variant: huge\n",
            "engine.flashvsr.variant: expected one of tiny, full, got 'huge'",
        ),
        ("streams: []\n", "streams: at least one stream is needed"),
        (
            "streams:\n  - name: a b\n    key: k\n",
            "streams[0].name: expected letters, digits, '-' or '_', got 'a b'",
        ),
        (
            "streams:\n  - name: a\n    key: k\n  - name: b\n    key: k\n",
            "streams: two streams share the same key",
        ),
        (
            "streams:\n  - name: a\n    token: k\n",
            "streams[0].token: unknown key; allowed here: engine, key, name, output_height, pull, record, relays",
        ),
        (
            "streams:\n  - name: a\n    key: k\n    relays: ['http://x/live/secret']\n",
            "streams[0].relays[0]: expected an rtmp:// or rtmps:// URL, got 'http://x/live/****'",
        ),
        (
            "streams:\n  - name: a\n    key: k\n    output_height: 1081\n",
            "streams[0].output_height: expected 0 (native 4x) or an even height 64..4320, got 1081",
        ),
        (
            "pipeline:\n  max_engine_load: 1.5\n",
            "pipeline.max_engine_load: expected a fraction 0..1 (0 turns it off), got 1.5",
        ),
        ("record:\n  format: avi\n", "record.format: expected 'fmp4' or 'mkv', got 'avi'"),
        ("encoder:\n  bitrate_bps: 10\n", "encoder.bitrate_bps: must be >= 100000, got 10"),
        ("- a\n- b\n", "the top level must be a mapping of sections, got list"),
        ("rtmp: [\n", "not valid YAML"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    assert message in str(err.value)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_config(tmp_path / "nope.yaml", environ={})


def test_a_stream_engine_must_be_known(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("streams:\n  - name: a\n    key: k\n    engine: magic\n")
    with pytest.raises(ConfigError, match=r"streams\[0\].engine: expected auto, bicubic, flashvsr or ''"):
        load_config(path, environ={})
