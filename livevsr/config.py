"""Configuration: one tree of frozen dataclasses.

Order: code defaults, then the YAML file, then ``LIVEVSR__SECTION__KEY=value`` environment variables,
validated once before any port or GPU opens. Unknown keys and wrong types are errors that name the
dotted key, the value seen, and what is accepted.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from livevsr.engines.registry import AUTO, engine_names
from livevsr.errors import ConfigError


def _host_port(key: str, value: str) -> None:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{key}: expected 'HOST:PORT' (e.g. '0.0.0.0:1935'), got {value!r}")


def parse_size_rate(value: str) -> tuple[int, int, float]:
    """'1920x1080@30' -> (1920, 1080, 30.0); ValueError if it is not that."""
    size, sep, rate = value.partition("@")
    width, x, height = size.partition("x")
    if not (sep and x and width.isdigit() and height.isdigit()):
        raise ValueError(value)
    w, h, f = int(width), int(height), float(rate)
    if w < 2 or h < 2 or not 0 < f <= 240:
        raise ValueError(value)
    return w, h, f


def _size_rate_or_keyword(key: str, value: str) -> None:
    if value in ("auto", "off"):
        return
    try:
        parse_size_rate(value)
    except ValueError:
        raise ConfigError(
            f"{key}: expected auto, off or WIDTHxHEIGHT@FPS (e.g. 1920x1080@30), got {value!r}"
        ) from None


def split_host_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host or "0.0.0.0", int(port)


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"  # debug | info | warning | error
    json: bool = False  # one JSON object per line instead of text

    def check(self, key: str) -> None:
        if self.level not in ("debug", "info", "warning", "error"):
            raise ConfigError(f"{key}.level: expected debug, info, warning or error, got {self.level!r}")


@dataclass(frozen=True)
class RTMPConfig:
    enabled: bool = True
    listen: str = "0.0.0.0:1935"  # the ingest port is the one port open to the network by default
    app: str = "live"  # OBS Server = rtmp://HOST:1935/<app>
    handshake_timeout_s: float = 10.0
    idle_timeout_s: float = 30.0  # a publisher that sends nothing for this long is closed
    max_chunk_size: int = 65536  # bytes; peers may ask for up to this
    max_message_bytes: int = 8_000_000  # one RTMP message (a video access unit) at most this big
    max_connections_per_ip: int = 16

    def check(self, key: str) -> None:
        _host_port(f"{key}.listen", self.listen)
        for name in ("handshake_timeout_s", "idle_timeout_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{key}.{name}: must be > 0, got {getattr(self, name)!r}")
        if not 128 <= self.max_chunk_size <= 16_777_215:
            raise ConfigError(f"{key}.max_chunk_size: expected 128..16777215, got {self.max_chunk_size!r}")
        if self.max_message_bytes < 65536:
            raise ConfigError(f"{key}.max_message_bytes: expected >= 65536, got {self.max_message_bytes!r}")
        if self.max_connections_per_ip < 1:
            raise ConfigError(
                f"{key}.max_connections_per_ip: must be >= 1, got {self.max_connections_per_ip!r}"
            )


@dataclass(frozen=True)
class HTTPConfig:
    listen: str = "127.0.0.1:8889"  # viewer, WHEP, API, metrics; set 0.0.0.0:8889 to serve other machines
    viewer_token: str = ""  # if set, WHEP playback and /api/streams need "Authorization: Bearer <token>"
    admin_token: str = ""  # if set, enables the control API (kick a publisher) for this bearer token
    # Limits against hostile clients (one address cannot hold sockets or slots, or slow others down):
    header_timeout_s: float = 10.0  # a request header must be complete this long after its first byte
    body_timeout_s: float = 10.0  # an SDP offer must have arrived this long after its header
    keepalive_timeout_s: float = 15.0  # an idle keep-alive connection is closed after this
    max_connections_per_ip: int = 32
    sessions_per_ip_per_s: float = 1.0  # new WHEP/WHIP sessions and kicks per address, after a burst
    sessions_burst: int = 10  # of this many

    def check(self, key: str) -> None:
        _host_port(f"{key}.listen", self.listen)
        for name in ("header_timeout_s", "body_timeout_s", "keepalive_timeout_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{key}.{name}: must be > 0, got {getattr(self, name)!r}")
        if self.max_connections_per_ip < 1:
            raise ConfigError(
                f"{key}.max_connections_per_ip: must be >= 1, got {self.max_connections_per_ip!r}"
            )
        if self.sessions_per_ip_per_s < 0 or self.sessions_burst < 1:
            raise ConfigError(
                f"{key}.sessions_per_ip_per_s must be >= 0 (0 = no limit) and {key}.sessions_burst >= 1, "
                f"got {self.sessions_per_ip_per_s!r} and {self.sessions_burst!r}"
            )


@dataclass(frozen=True)
class WebRTCConfig:
    # Addresses ICE advertises; empty = every interface. Set to the public IP behind NAT, or
    # ["127.0.0.1"] for loopback-only tests (aioice skips loopback otherwise).
    ice_host_addresses: list[str] = field(default_factory=list)
    max_viewers_per_stream: int = 50
    max_sessions_per_ip: int = 10  # WHEP sessions (pending or playing) one address may hold
    connect_timeout_s: float = 10.0  # a WHEP session not connected (ICE + DTLS) by then is removed
    # A peer that stops answering ICE consent checks (RFC 7675: tab killed, network gone) is dropped
    # after about this long; RFC 7675's 30 s held a vanished viewer's slot for up to 90 s here.
    consent_timeout_s: float = 15.0

    def check(self, key: str) -> None:
        for name in ("max_viewers_per_stream", "max_sessions_per_ip"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{key}.{name}: must be >= 1, got {getattr(self, name)!r}")
        for name in ("connect_timeout_s", "consent_timeout_s"):
            if getattr(self, name) < 2:
                raise ConfigError(f"{key}.{name}: must be >= 2 (seconds), got {getattr(self, name)!r}")


@dataclass(frozen=True)
class StreamConfig:
    name: str = "main"  # public name: viewers open /view/<name>, WHEP at /whep/<name>
    key: str = "livevsr"  # secret stream key a publisher must present; change it
    pull: str = ""  # pull the input from this URL (rtmp://, srt://, rtsp://, http(s)://, a file) instead
    relays: list[str] = field(default_factory=list)  # push the upscaled stream to these rtmp(s):// URLs
    record: bool = False  # record the upscaled stream to record.dir, a new file per publish
    engine: str = ""  # this stream's engine: "" = engine.name | auto | a name in engines/registry.py
    # Height of the upscaled picture sent out; the width follows the input's aspect ratio (even).
    # 0 = the engine's native 4x (a 480x270 input gives 1920x1080).
    output_height: int = 0

    def check(self, key: str) -> None:
        if self.output_height and not (64 <= self.output_height <= 4320 and self.output_height % 2 == 0):
            raise ConfigError(
                f"{key}.output_height: expected 0 (native 4x) or an even height 64..4320, "
                f"got {self.output_height!r}"
            )
        if self.engine and self.engine not in (AUTO, *engine_names()):
            raise ConfigError(
                f"{key}.engine: expected {', '.join((AUTO, *engine_names()))} or '' (engine.name), "
                f"got {self.engine!r}"
            )
        if not self.name or not all(c.isalnum() or c in "-_" for c in self.name):
            raise ConfigError(f"{key}.name: expected letters, digits, '-' or '_', got {self.name!r}")
        if not self.key:
            raise ConfigError(f"{key}.key: must not be empty")
        for i, url in enumerate(self.relays):
            if not url.startswith(("rtmp://", "rtmps://")):
                raise ConfigError(
                    f"{key}.relays[{i}]: expected an rtmp:// or rtmps:// URL, got {mask_url(url)!r}"
                )


def mask_url(url: str) -> str:
    """A URL safe to log: the last path part (the stream key) and any query or password hidden."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    rest = rest.split("?", 1)[0]
    host, slash, path = rest.partition("/")
    host = host.rsplit("@", 1)[-1]
    if not slash:
        return f"{scheme}://{host}"
    head, _, last = path.rpartition("/")
    return f"{scheme}://{host}/{head + '/' if head else ''}{'****' if last else ''}"


@dataclass(frozen=True)
class RecordConfig:
    dir: str = "recordings"  # files are named <stream>-<UTC time>.<ext>
    format: str = "fmp4"  # fmp4 (fragmented MP4, playable after a crash) | mkv
    source: bool = False  # also record the original (input size) next to the upscaled file

    def check(self, key: str) -> None:
        if self.format not in ("fmp4", "mkv"):
            raise ConfigError(f"{key}.format: expected 'fmp4' or 'mkv', got {self.format!r}")
        if not self.dir:
            raise ConfigError(f"{key}.dir: must not be empty")


@dataclass(frozen=True)
class FlashVSRConfig:
    weights_dir: str = "models/FlashVSR"  # folder with the five official files from JunhaoZhuang/FlashVSR
    variant: str = "tiny"  # tiny: TC decoder (real time) | full: Wan2.1 VAE decoder (higher quality, slower)
    proj_in: str = "v1.0"  # v1.0: Buffer_LQ4x_Proj | v1.1: causal proj-in (for the v1.1 weights)
    attention: str = "auto"  # auto (cupy on CUDA) | cupy | flex | reference
    sparse_ratio: float = 2.0  # top-k budget; 1.5 is faster, 2.0 more stable
    local_range: int = 11  # local attention window in blocks; 9 is sharper, 11 more stable
    kv_chunks: int = 3  # self-attention KV cache length in chunks (2 latent frames each)
    color_fix: str = "adain"  # adain | wavelet | none
    dtype: str = "bfloat16"
    device: str = "cuda"
    seed: int = 0

    def check(self, key: str) -> None:
        choices = {
            "variant": ("tiny", "full"),
            "proj_in": ("v1.0", "v1.1"),
            "attention": ("auto", "cupy", "flex", "reference"),
            "color_fix": ("adain", "wavelet", "none"),
            "dtype": ("bfloat16", "float32"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(
                    f"{key}.{name}: expected one of {', '.join(allowed)}, got {getattr(self, name)!r}"
                )
        if not 0 < self.sparse_ratio <= 64:
            raise ConfigError(f"{key}.sparse_ratio: expected a number in (0, 64], got {self.sparse_ratio!r}")
        if self.local_range < 1:
            raise ConfigError(f"{key}.local_range: must be >= 1, got {self.local_range!r}")
        if self.kv_chunks < 1:
            raise ConfigError(f"{key}.kv_chunks: must be >= 1, got {self.kv_chunks!r}")


@dataclass(frozen=True)
class EngineConfig:
    # auto (the best engine that runs here: flashvsr with weights and a CUDA GPU, else bicubic) or
    # the name of an engine in engines/registry.py
    name: str = AUTO
    # Live streams: the input is downscaled to at most this pixel rate before the engine (see
    # pipeline/sizing.py). auto = the engine's real-time limit in engines/registry.py | off | WxH@FPS
    max_input: str = "auto"
    flashvsr: FlashVSRConfig = field(default_factory=FlashVSRConfig)

    def check(self, key: str) -> None:
        _size_rate_or_keyword(f"{key}.max_input", self.max_input)
        if self.name not in (AUTO, *engine_names()):
            *first, last = (AUTO, *engine_names())
            raise ConfigError(f"{key}.name: expected {', '.join(first)} or {last}, got {self.name!r}")
        self.flashvsr.check(f"{key}.flashvsr")


@dataclass(frozen=True)
class PipelineConfig:
    ring_capacity_frames: int = 64  # decoded frames waiting for the engine; ~2 s at 30 fps
    ring_policy: str = "drop"  # drop: live, drop the oldest whole chunk when full | block: lossless (files)
    # drop policy: a chunk that waited longer than this for the engine is dropped as "late", so an
    # overloaded machine stays live (fewer frames) instead of falling ever further behind; 0 = off
    max_queue_ms: int = 250
    # Admission: a new publish is refused while the measured engine load of its device (GPU, or
    # the CPU for bicubic without one) is above this fraction of the device's time; 0 = off
    max_engine_load: float = 0.85

    def check(self, key: str) -> None:
        if not 0 <= self.max_engine_load <= 1:
            raise ConfigError(
                f"{key}.max_engine_load: expected a fraction 0..1 (0 turns it off), "
                f"got {self.max_engine_load!r}"
            )
        if self.max_queue_ms < 0:
            raise ConfigError(f"{key}.max_queue_ms: must be >= 0 (0 turns it off), got {self.max_queue_ms!r}")
        if self.ring_capacity_frames < 1:
            raise ConfigError(f"{key}.ring_capacity_frames: must be >= 1, got {self.ring_capacity_frames!r}")
        if self.ring_policy not in ("drop", "block"):
            raise ConfigError(f"{key}.ring_policy: expected 'drop' or 'block', got {self.ring_policy!r}")


@dataclass(frozen=True)
class EncoderConfig:
    codec: str = "auto"  # auto (h264_nvenc where it opens, else libx264) | libx264 | h264_nvenc
    bitrate_bps: int = 12_000_000  # 1440p30 needs 12-20 Mb/s for a clean picture
    preset: str = "auto"  # libx264: auto (the best preset this CPU keeps up with) | ultrafast .. medium
    keyframe_interval_s: float = 2.0  # and a keyframe whenever a viewer joins
    # the original as the engine sees it (after any live downscale), for the viewer's compare mode
    source_rendition: bool = True
    # Live streams: the largest output, a frame size at a frame rate (what counts is the pixel rate).
    # auto = 3840x2160@30 (H.264 level 5.1) with h264_nvenc; with libx264 what this CPU's cores
    # encode in real time, within 3840x2160 | off | WxH@FPS
    max_output: str = "auto"

    def check(self, key: str) -> None:
        _size_rate_or_keyword(f"{key}.max_output", self.max_output)
        presets = ("auto", "ultrafast", "superfast", "veryfast", "faster", "fast", "medium")
        if self.preset not in presets:
            raise ConfigError(f"{key}.preset: expected one of {', '.join(presets)}, got {self.preset!r}")
        if self.codec not in ("auto", "libx264", "h264_nvenc"):
            raise ConfigError(f"{key}.codec: expected auto, libx264 or h264_nvenc, got {self.codec!r}")
        if self.bitrate_bps < 100_000:
            raise ConfigError(f"{key}.bitrate_bps: must be >= 100000, got {self.bitrate_bps!r}")
        if self.keyframe_interval_s <= 0:
            raise ConfigError(f"{key}.keyframe_interval_s: must be > 0, got {self.keyframe_interval_s!r}")


@dataclass(frozen=True)
class Config:
    log: LogConfig = field(default_factory=LogConfig)
    rtmp: RTMPConfig = field(default_factory=RTMPConfig)
    http: HTTPConfig = field(default_factory=HTTPConfig)
    webrtc: WebRTCConfig = field(default_factory=WebRTCConfig)
    streams: list[StreamConfig] = field(default_factory=lambda: [StreamConfig()])
    engine: EngineConfig = field(default_factory=EngineConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    record: RecordConfig = field(default_factory=RecordConfig)

    def check(self, key: str = "") -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "streams":
                if not value:
                    raise ConfigError("streams: at least one stream is needed (name and key)")
                for i, stream in enumerate(value):
                    stream.check(f"streams[{i}]")
                for attr in ("name", "key"):
                    seen = [getattr(s, attr) for s in value]
                    if len(set(seen)) != len(seen):
                        raise ConfigError(f"streams: two streams share the same {attr}; each must be unique")
            else:
                value.check(f.name)


# ---------------------------------------------------------------------------------------------
# Loading


def _describe(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _convert(tp: Any, value: Any, key: str) -> Any:
    """Turn a YAML value into the annotated type, or raise ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return _build(tp, value, key)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_convert(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        raise AssertionError(f"union config types are not supported ({key})")
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise AssertionError(f"unsupported config type {_describe(tp)} at {key}")


def _build(cls: type, data: dict, key: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{key}.{unknown[0]}" if key else unknown[0]
        raise ConfigError(f"{where}: unknown key; allowed here: {', '.join(sorted(names))}")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _convert(hints[name], value, f"{key}.{name}" if key else name)
    return cls(**kwargs)


def _to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list):
        return [_to_plain(v) for v in obj]
    return obj


def as_dict(config: Config) -> dict:
    return _to_plain(config)


def _apply_env(data: dict, environ: typing.Mapping[str, str]) -> dict:
    """LIVEVSR__ENGINE__NAME=bicubic sets engine.name; values are parsed as YAML scalars."""
    for env_key, raw in environ.items():
        if not env_key.startswith("LIVEVSR__"):
            continue
        path = [p.lower() for p in env_key[len("LIVEVSR__") :].split("__") if p]
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{env_key}: {part!r} is not a section")
        node[path[-1]] = yaml.safe_load(raw) if raw else ""
    return data


def load_config(path: str | Path | None = None, environ: typing.Mapping[str, str] | None = None) -> Config:
    """Defaults, then ``path`` (YAML), then environment overrides; validated."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the config file ({exc.strerror})") from exc
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"{path}: the top level must be a mapping of sections, got {type(loaded).__name__}"
            )
        data = loaded
    environ = os.environ if environ is None else environ
    data = _apply_env(data, environ)
    try:
        config = _build(Config, data, "")
        config.check()
    except ConfigError as exc:
        var = _env_var_for(str(exc).partition(":")[0], environ)
        if var is None:
            raise
        raise ConfigError(f"{exc} (set by the environment variable {var})") from None
    return config


def _env_var_for(key: str, environ: typing.Mapping[str, str]) -> str | None:
    """The LIVEVSR__ variable that set the dotted ``key``, so an error can name what the user typed."""
    for env_key in environ:
        parts = env_key[len("LIVEVSR__") :].split("__")
        if env_key.startswith("LIVEVSR__") and ".".join(p.lower() for p in parts if p) == key:
            return env_key
    return None
