"""The FlashVSR engine: av.VideoFrame RGB in, exactly 4x larger av.VideoFrame RGB out.

Per frame: PIL-exact bicubic x4 of the uint8 LR frame on the device (the only LR upsampling,
spec section 1.1), scaled to [-1, 1] and padded to 128-px multiples at HR (the DiT's block grid
needs them); the stream session (session.py) runs the DiT and the decoder; the colour fix pairs
each output with its upscaled LR frame; the padding is cropped off and the result truncated to
uint8 as the official scripts do. The official scripts centre-crop the picture to 128-px multiples;
we pad and crop back instead, so any input size works, even below 32 px.

The weights, the prompt K/V and the time modulation are loaded and computed once per engine;
a stream (``open``) only allocates its session: KV cache, decoder memory, a few LR frames.
"""

from __future__ import annotations

import copy
import logging
import math
import threading
from dataclasses import dataclass

import av
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from livevsr.config import FlashVSRConfig
from livevsr.engines.flashvsr.attention import BlockGeometry, make_backend, topk_budget
from livevsr.engines.flashvsr.color import color_fix
from livevsr.engines.flashvsr.dit import DiTConfig, WanDiT
from livevsr.engines.flashvsr.session import SessionSpec, StreamSession, as_latent_decoder
from livevsr.errors import EngineError

log = logging.getLogger(__name__)

SCALE = 4
CHUNK_FRAMES = 8  # frames per push: one DiT chunk (2 latents) in steady state
HR_MULTIPLE = 128  # HR pixels: 16-px tokens x 8-token attention blocks (spec section 3.1)
_PIL_PRECISION_BITS = 22  # Pillow's fixed-point resampling precision (32 - 8 - 2)
_PIL_BICUBIC_A = -0.5  # Pillow's bicubic kernel (torch's bicubic uses -0.75)
_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


# ---------------------------------------------------------------------------------------------
# Pillow-exact bicubic resize on the device


def _pil_bicubic(x: float) -> float:
    x = abs(x)
    if x < 1.0:
        return ((_PIL_BICUBIC_A + 2.0) * x - (_PIL_BICUBIC_A + 3.0)) * x * x + 1.0
    if x < 2.0:
        return (((x - 5.0) * x + 8.0) * x - 4.0) * _PIL_BICUBIC_A
    return 0.0


def _pil_coeffs(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Source indices and fixed-point weights [out_size, K] of Pillow's bicubic resample of one axis.

    Follows Pillow's ``precompute_coeffs`` and ``normalize_coeffs_8bpc``: the kernel is cut at the
    image edge and renormalised (not padded), then rounded to 22-bit fixed point.
    """
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    idx = np.zeros((out_size, ksize), dtype=np.int64)
    kk = np.zeros((out_size, ksize), dtype=np.int64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(0, int(center - support + 0.5))
        xmax = min(in_size, int(center + support + 0.5)) - xmin
        w = [_pil_bicubic((x + xmin - center + 0.5) / filterscale) for x in range(xmax)]
        total = sum(w)
        for x, wx in enumerate(w):
            k = wx / total if total != 0.0 else wx
            kk[xx, x] = int(k * (1 << _PIL_PRECISION_BITS) + (-0.5 if k < 0 else 0.5))
            idx[xx, x] = xmin + x
        idx[xx, xmax:] = xmin  # weight 0
    return idx, kk


def _resample_last_axis(x: torch.Tensor, idx: torch.Tensor, kk: torch.Tensor) -> torch.Tensor:
    """x: [..., n_in] uint8 -> [..., n_out] uint8 with Pillow's rounding and clipping (int32 exact)."""
    acc = (x.to(torch.int32)[..., idx] * kk).sum(-1, dtype=torch.int32) + (1 << (_PIL_PRECISION_BITS - 1))
    return (acc >> _PIL_PRECISION_BITS).clamp_(0, 255).to(torch.uint8)


class PilBicubicUpscaler:
    """``PIL.Image.resize((s*w, s*h), BICUBIC)`` of uint8 RGB, bit-exact, on any torch device."""

    def __init__(self, width: int, height: int, scale: int, device: torch.device) -> None:
        ix, kx = _pil_coeffs(width, scale * width)
        iy, ky = _pil_coeffs(height, scale * height)
        self._x = (torch.from_numpy(ix).to(device), torch.from_numpy(kx).to(device, torch.int32))
        self._y = (torch.from_numpy(iy).to(device), torch.from_numpy(ky).to(device, torch.int32))

    def __call__(self, frame: torch.Tensor) -> torch.Tensor:
        """frame: [3, h, w] uint8 -> [3, s*h, s*w] uint8; horizontal pass first, as Pillow does."""
        x = _resample_last_axis(frame, *self._x)  # [3, h, s*w]
        return _resample_last_axis(x.transpose(1, 2), *self._y).transpose(1, 2)  # [3, s*h, s*w]


# ---------------------------------------------------------------------------------------------
# Models


@dataclass
class FlashVSRModels:
    """The modules one engine runs; built from the official files or at random (benchmarks, tests)."""

    dit: WanDiT
    proj_in: nn.Module  # proj_in.BufferLQ4xProj (v1.0) or CausalLQ4xProj (v1.1)
    decoder: nn.Module  # tc_decoder.TCDecoder (variant tiny) or wan_vae.WanVAEDecoder (full)
    prompt: torch.Tensor  # [1, S_ctx, text_dim] prompt embedding, fixed (spec section 1.4)


def load_models(cfg: FlashVSRConfig, dit_config: DiTConfig | None = None) -> FlashVSRModels:
    """Load the official files from ``cfg.weights_dir`` strictly onto ``cfg.device`` in ``cfg.dtype``."""
    from livevsr.engines.flashvsr import weights

    dtype, device = _DTYPES[cfg.dtype], torch.device(cfg.device)
    with torch.device("meta"):
        dit = WanDiT(dit_config)
    kw = {"dtype": dtype, "device": device}
    decoder = (
        weights.load_tc_decoder(cfg.weights_dir, **kw)
        if cfg.variant == "tiny"
        else weights.load_wan_vae_decoder(cfg.weights_dir, **kw)
    )
    return FlashVSRModels(
        dit=weights.load_dit(cfg.weights_dir, dit, **kw),
        proj_in=weights.load_proj_in(cfg.weights_dir, version=cfg.proj_in, **kw),
        decoder=decoder,
        prompt=weights.load_prompt(cfg.weights_dir, dtype=dtype, device=device),
    )


_shared_lock = threading.Lock()
_shared: dict[tuple, FlashVSRModels] = {}


def shared_models(cfg: FlashVSRConfig, dit_config: DiTConfig | None = None) -> FlashVSRModels:
    """:func:`load_models`, once per process and configuration: every stream's engine shares them."""
    key = (cfg.weights_dir, cfg.variant, cfg.proj_in, cfg.dtype, cfg.device, dit_config)
    with _shared_lock:
        if key not in _shared:
            _shared[key] = load_models(cfg, dit_config)
        return _shared[key]


def stream_private(module: nn.Module) -> nn.Module:
    """A copy of ``module`` whose parameters and buffers are the same tensors (no memory) but whose
    stream state (caches, memories, flags) is its own."""
    memo = {id(t): t for t in (*module.parameters(), *module.buffers())}
    return copy.deepcopy(module, memo)


def random_models(
    cfg: FlashVSRConfig,
    dit_config: DiTConfig | None = None,
    *,
    proj_hidden: tuple[int, int] = (2048, 3072),
    decoder_channels: tuple[int, int, int, int] = (512, 256, 128, 128),
    vae_dim: int = 96,
    prompt_tokens: int = 512,
    seed: int = 0,
) -> FlashVSRModels:
    """Randomly initialised modules of the given sizes (defaults: full size) for benchmarks and tests."""
    from livevsr.engines.flashvsr.proj_in import build_proj_in
    from livevsr.engines.flashvsr.tc_decoder import TCDecoder
    from livevsr.engines.flashvsr.wan_vae import WanVAEDecoder

    dit_config = dit_config or DiTConfig()
    dtype, device = _DTYPES[cfg.dtype], torch.device(cfg.device)
    torch.manual_seed(seed)
    with torch.device(device):
        dit = WanDiT(dit_config)
        proj_in = build_proj_in(cfg.proj_in, out_dim=dit_config.dim, hidden_dims=proj_hidden)
        decoder = (
            TCDecoder(channels=decoder_channels) if cfg.variant == "tiny" else WanVAEDecoder(dim=vae_dim)
        )
        prompt = torch.randn(1, prompt_tokens, dit_config.text_dim)
    mods = [m.to(dtype).eval().requires_grad_(False) for m in (dit, proj_in, decoder)]
    return FlashVSRModels(*mods, prompt=prompt.to(dtype))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# The engine


def padded_size(out_height: int, out_width: int) -> tuple[int, int]:
    """HR size the model runs at: each side rounded up to a multiple of 128 (at least 128)."""
    return tuple(max(HR_MULTIPLE, -(-s // HR_MULTIPLE) * HR_MULTIPLE) for s in (out_height, out_width))  # type: ignore[return-value]


def _pad(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pad [n, 3, h, w] at the bottom and right to height x width: mirrored where it fits, else repeated."""
    ph, pw = height - x.shape[2], width - x.shape[3]
    if ph == 0 and pw == 0:
        return x
    mode = "reflect" if ph < x.shape[2] and pw < x.shape[3] else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


class FlashVSREngine:
    """FlashVSR (one-step streaming diffusion SR) as an :class:`livevsr.engines.base.Engine`."""

    name = "flashvsr"
    scale = SCALE
    chunk = CHUNK_FRAMES

    def __init__(
        self,
        cfg: FlashVSRConfig,
        *,
        dit_config: DiTConfig | None = None,
        weights: FlashVSRModels | None = None,
    ) -> None:
        """``weights`` None loads the official files from ``cfg.weights_dir``; else modules to use as is
        (moved to ``cfg.device`` and ``cfg.dtype``)."""
        self.cfg = cfg
        self.device = torch.device(cfg.device)
        self.dtype = _DTYPES[cfg.dtype]
        models = weights if weights is not None else shared_models(cfg, dit_config)
        for m in (models.dit, models.proj_in, models.decoder):
            m.to(self.device, self.dtype).eval().requires_grad_(False)
        # The DiT is stateless (the backend owns the KV cache); proj-in and decoder keep stream state,
        # so each engine gets its own module objects over the same weight tensors.
        models = FlashVSRModels(
            models.dit, stream_private(models.proj_in), stream_private(models.decoder), models.prompt
        )
        self.models = models
        self.dit_config = models.dit.cfg
        with torch.inference_mode():
            self.consts = models.dit.precompute(models.prompt.to(self.device, self.dtype))
        self._decoder = as_latent_decoder(models.decoder)
        self._backend = None
        self._session: StreamSession | None = None
        self._in_size: tuple[int, int] | None = None  # (width, height) of the open stream
        self._upscale: PilBicubicUpscaler | None = None

    def open(self, width: int, height: int, fps: float) -> None:
        if width < 1 or height < 1:
            raise EngineError(f"flashvsr: frame size must be positive, got {width}x{height}")
        ph, pw = padded_size(SCALE * height, SCALE * width)
        blocks_h, blocks_w = ph // HR_MULTIPLE, pw // HR_MULTIPLE
        s = blocks_h * blocks_w
        geom = BlockGeometry(
            blocks_h=blocks_h,
            blocks_w=blocks_w,
            topk=topk_budget(s, ph, pw, self.cfg.sparse_ratio),
            local_range=self.cfg.local_range,
            kv_chunks=self.cfg.kv_chunks,
        )
        if self._backend is None:
            c = self.dit_config
            self._backend = make_backend(
                self.cfg.attention,
                self.device,
                layers=c.num_layers,
                heads=c.num_heads,
                head_dim=c.head_dim,
                dtype=self.dtype,
            )
        spec = SessionSpec(height=ph, width=pw, geom=geom, seed=self.cfg.seed, dtype=self.dtype)
        self._session = StreamSession(
            self.models.dit, self.consts, self.models.proj_in, self._decoder, self._backend, spec
        )
        self._in_size = (width, height)
        self._upscale = PilBicubicUpscaler(width, height, SCALE, self.device)
        log.info(
            "flashvsr: open %dx%d -> %dx%d (model %dx%d, %dx%d blocks, top-k %d, attention %s)",
            width, height, SCALE * width, SCALE * height, pw, ph, blocks_w, blocks_h, geom.topk,
            type(self._backend).__name__,
        )  # fmt: skip

    def push(self, frames: list[av.VideoFrame]) -> list[av.VideoFrame]:
        """Upscale ``frames`` (normally ``chunk`` of them; any count is accepted)."""
        session = self._require_open()
        if not frames:
            return []
        with torch.inference_mode():
            hr, lr = session.push(self._prepare(frames))
            return self._finish(hr, lr)

    def flush(self) -> list[av.VideoFrame]:
        """Emit every frame pushed and not yet returned; the stream then starts afresh."""
        if self._session is None:
            return []
        with torch.inference_mode():
            return self._finish(*self._session.flush())

    def close(self) -> None:
        if self._session is not None:
            log.info(
                "flashvsr: close after %d frames in, %d out",
                self._session.frames_pushed,
                self._session.frames_emitted,
            )
            self._session.reset()
        self._session = None
        self._backend = None  # frees the KV cache
        self._in_size = None
        self._upscale = None

    def _require_open(self) -> StreamSession:
        if self._session is None:
            raise EngineError("flashvsr: push() before open(); the pipeline must open the stream first")
        return self._session

    def _prepare(self, frames: list[av.VideoFrame]) -> torch.Tensor:
        """av frames -> [n, 3, H_pad, W_pad] in [-1, 1], model dtype, on the device."""
        assert self._in_size is not None and self._upscale is not None and self._session is not None
        w, h = self._in_size
        out = []
        for f in frames:
            if (f.width, f.height) != (w, h):
                raise EngineError(
                    f"flashvsr: got a {f.width}x{f.height} frame on a stream opened at {w}x{h}; "
                    "call open() again on a resolution change"
                )
            rgb = torch.from_numpy(f.to_ndarray(format="rgb24")).to(self.device, non_blocking=True)
            out.append(self._upscale(rgb.permute(2, 0, 1)))  # [3, 4h, 4w] uint8
        x = torch.stack(out).to(torch.float32) / 255.0 * 2.0 - 1.0
        spec = self._session.spec
        return _pad(x, spec.height, spec.width).to(self.dtype)

    def _finish(self, hr: torch.Tensor, lr: torch.Tensor) -> list[av.VideoFrame]:
        """[m, 3, H_pad, W_pad] decoded and LR frames -> m av frames of exactly 4x the input size."""
        if hr.shape[0] == 0:
            return []
        assert self._in_size is not None
        w, h = SCALE * self._in_size[0], SCALE * self._in_size[1]
        hr, lr = hr[:, :, :h, :w].float(), lr[:, :, :h, :w].float()
        out = color_fix(self.cfg.color_fix, hr, lr)
        # ((x + 1) * 127.5).clip(0, 255).astype(uint8): truncation, as inf_full.py:15-19
        rgb = ((out + 1.0) * 127.5).clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        return [av.VideoFrame.from_ndarray(np.ascontiguousarray(a), format="rgb24") for a in rgb]
