"""One stream's FlashVSR state: the streaming schedule of flashvsr_spec.md section 1.5.

Frames here are HR-sized LR frames (bicubic x4, padded to 128-px multiples), [3, H, W] in [-1, 1]
on the model's device. Indices are absolute within the stream.

Schedule (latent j is conditioned on LR frames 4j+1..4j+4 and decodes to HR frames 4j-3..4j):

======  ===============  ======================  ==================  ===================
step    latents (RoPE t)  proj-in LR frames        decoder LR frames   HR frames emitted
======  ===============  ======================  ==================  ===================
0       0..5              0 (warm-up), 1..24      0..20               0..20
i >= 1  2i+4, 2i+5        8i+17..8i+24            8i+13..8i+20        8i+13..8i+20
======  ===============  ======================  ==================  ===================

So step i runs once LR frame 8i+24 has arrived: 4 frames of lookahead beyond the last frame it emits.
A live stream has no known length, so each step runs as soon as its frames are in; ``flush()`` pads
the end by repeating the last frame (as the official scripts do) and returns exactly the frames that
were pushed and not yet emitted, nothing more.

Noise: the official code draws one tensor for the whole clip, which a stream without an end cannot
do. Latent j's noise comes from a generator seeded with (seed, j), so it depends only on the seed
and the latent's index: reproducible, and the same whether a stream is run in steps or at once.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Protocol

import torch

from livevsr.engines.flashvsr.attention import BlockGeometry, SelfAttentionBackend
from livevsr.engines.flashvsr.dit import DiTConstants, WanDiT

FIRST_LATENTS = 6  # latents of a stream's first step (3 chunks, bidirectional)
STEP_LATENTS = 2  # latents of every later step (1 chunk)
FIRST_FRAMES = 4 * FIRST_LATENTS - 3  # 21 HR frames from the first step
STEP_FRAMES = 4 * STEP_LATENTS  # 8 HR frames from every later step
LOOKAHEAD_FRAMES = 4  # LR frames the conditioning runs ahead of the output
_SEED_MIX = 0x9E3779B97F4A7C15  # odd 64-bit constant spreading seeds apart


class ProjIn(Protocol):
    """The LQ proj-in of proj_in.py (``BufferLQ4xProj`` or ``CausalLQ4xProj``)."""

    def reset(self) -> None: ...

    def warmup(self, first_frame: torch.Tensor) -> None:
        """first_frame: [1, 3, 1, H, W]."""

    def forward_clip(self, clip: torch.Tensor) -> torch.Tensor:
        """clip: [1, 3, 4, H, W] -> tokens [1, (H/16)(W/16), dim]."""
        ...


class LatentDecoder(Protocol):
    """What the session needs from a decoder; see :func:`as_latent_decoder`."""

    def reset(self) -> None: ...

    def decode(self, latents: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
        """latents [1, 16, T, h, w] (the stream's next ones); lr [1, 3, T', H, W] the LR frames these
        latents decode to (T' = 4T - 3 on the first call, 4T after). Returns [1, 3, T', H, W] in [-1, 1]."""
        ...


class _TCDecoderAdapter:
    """TCDecoder.decode_chunk takes latents time-first and the LR frames as its condition."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module

    def reset(self) -> None:
        self.module.reset()

    def decode(self, latents: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
        return self.module.decode_chunk(latents.transpose(1, 2), lr.to(latents.dtype))


class _WanVAEAdapter:
    """WanVAEDecoder.decode_chunk takes channel-first latents and no condition."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module

    def reset(self) -> None:
        self.module.reset()

    def decode(self, latents: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
        return self.module.decode_chunk(latents)


def as_latent_decoder(module: object) -> LatentDecoder:
    """Wrap tc_decoder.TCDecoder or wan_vae.WanVAEDecoder; anything with ``decode``/``reset`` passes."""
    from livevsr.engines.flashvsr.tc_decoder import TCDecoder
    from livevsr.engines.flashvsr.wan_vae import WanVAEDecoder

    if isinstance(module, TCDecoder):
        return _TCDecoderAdapter(module)
    if isinstance(module, WanVAEDecoder):
        return _WanVAEAdapter(module)
    if hasattr(module, "decode") and hasattr(module, "reset"):
        return module  # type: ignore[return-value]
    raise TypeError(
        f"decoder: expected TCDecoder, WanVAEDecoder or a LatentDecoder, got {type(module).__name__}"
    )


def latent_noise(
    seed: int, index: int, shape: tuple[int, int, int], device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Gaussian noise [C, h, w] of latent ``index``: a function of (seed, index) only."""
    g = torch.Generator(device=device)
    g.manual_seed((seed * _SEED_MIX + index) % (1 << 63))
    return torch.randn(shape, generator=g, device=device, dtype=dtype)


def step_latents(step: int) -> range:
    """Latent indices (= RoPE time positions) of ``step``."""
    return range(FIRST_LATENTS) if step == 0 else range(2 * step + 4, 2 * step + 6)


def step_frames(step: int) -> range:
    """HR frame indices ``step`` emits (and the LR frames its decoder is conditioned on)."""
    return range(FIRST_FRAMES) if step == 0 else range(8 * step + 13, 8 * step + 21)


def frames_needed(step: int) -> int:
    """LR frames that must have arrived before ``step`` can run: 0 .. 8*step + 24."""
    return 8 * step + 25


@dataclass(frozen=True)
class SessionSpec:
    """The per-stream settings a session runs with."""

    height: int  # padded HR height in pixels, a multiple of 128
    width: int  # padded HR width
    geom: BlockGeometry  # block grid and sparsity for this size
    seed: int = 0
    dtype: torch.dtype = torch.bfloat16
    latent_channels: int = 16


class StreamSession:
    """Turns a stream of HR-sized LR frames into decoded HR frames, one step at a time."""

    def __init__(
        self,
        dit: WanDiT,
        consts: DiTConstants,
        proj_in: ProjIn,
        decoder: LatentDecoder,
        backend: SelfAttentionBackend,
        spec: SessionSpec,
    ) -> None:
        if spec.height % 128 or spec.width % 128:
            raise ValueError(f"session: HR size must be a multiple of 128, got {spec.height}x{spec.width}")
        self.dit, self.consts, self.proj_in, self.decoder = dit, consts, proj_in, decoder
        self.backend, self.spec = backend, spec
        self.device = dit.patch_embedding.weight.device
        self._lr: deque[torch.Tensor] = deque()  # frames base, base+1, ... still needed
        self._base = 0  # absolute index of self._lr[0]
        self._pushed = 0  # frames pushed so far
        self._step = 0  # next step to run
        self.reset()

    @property
    def frames_pushed(self) -> int:
        return self._pushed

    @property
    def frames_emitted(self) -> int:
        return 0 if self._step == 0 else step_frames(self._step - 1)[-1] + 1

    def reset(self) -> None:
        """Start a new stream: forget every frame, cache and position."""
        self.backend.reset()
        self.proj_in.reset()
        self.decoder.reset()
        self._lr.clear()
        self._base = self._pushed = self._step = 0

    @torch.no_grad()
    def push(self, lr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """lr: [n, 3, H, W] in [-1, 1]. Runs every step whose frames are in.

        Returns (hr, lr_used): the newly decoded frames [m, 3, H, W] in [-1, 1] (m may be 0) and the
        LR frames they are aligned with, for the colour fix.
        """
        if lr.ndim != 4 or tuple(lr.shape[1:]) != (3, self.spec.height, self.spec.width):
            want = f"[n, 3, {self.spec.height}, {self.spec.width}]"
            raise ValueError(f"session.push: expected LR frames {want}, got {list(lr.shape)}")
        self._lr.extend(lr.to(self.device, self.spec.dtype).unbind(0))
        self._pushed += lr.shape[0]
        outs: list[tuple[torch.Tensor, torch.Tensor]] = []
        while self._pushed >= frames_needed(self._step):
            outs.append(self._run_step())
        return self._cat(outs)

    @torch.no_grad()
    def flush(self) -> tuple[torch.Tensor, torch.Tensor]:
        """End of stream: pad with the last frame, emit every frame pushed and not yet emitted, reset."""
        outs: list[tuple[torch.Tensor, torch.Tensor]] = []
        real = self._pushed
        if real > 0:
            last = self._lr[-1]
            while self.frames_emitted < real:
                while len(self._lr) + self._base < frames_needed(self._step):
                    self._lr.append(last)
                outs.append(self._run_step())
        hr, lr = self._cat(outs)
        keep = max(0, hr.shape[0] - (self.frames_emitted - real)) if outs else 0
        self.reset()
        return hr[:keep], lr[:keep]

    def _frames(self, start: int, stop: int) -> torch.Tensor:
        """LR frames [start, stop) as [1, 3, stop-start, H, W]."""
        return torch.stack([self._lr[i - self._base] for i in range(start, stop)], dim=1)[None]

    def _run_step(self) -> tuple[torch.Tensor, torch.Tensor]:
        step = self._step
        latents = step_latents(step)
        if step == 0:
            self.proj_in.warmup(self._frames(0, 1))
        cond = torch.cat(
            [self.proj_in.forward_clip(self._frames(4 * j + 1, 4 * j + 5)) for j in latents], dim=1
        )
        h8, w8 = self.spec.height // 8, self.spec.width // 8
        noise = torch.stack(
            [
                latent_noise(
                    self.spec.seed, j, (self.spec.latent_channels, h8, w8), self.device, self.spec.dtype
                )
                for j in latents
            ],
            dim=1,
        )[None]  # [1, C, f, h8, w8]
        velocity = self.dit(noise, cond, latents[0], self.consts, self.backend, self.spec.geom)
        x0 = noise - velocity.to(noise.dtype)  # one Euler step from sigma 1 to 0 (spec section 1.3)
        frames = step_frames(step)
        lr = self._frames(frames[0], frames[-1] + 1)
        hr = self.decoder.decode(x0, lr)
        self._step += 1
        # The next step needs LR frames from its first emitted frame on (decoder) and beyond.
        drop_to = step_frames(self._step)[0]
        while self._base < drop_to and self._lr:
            self._lr.popleft()
            self._base += 1
        return hr[0].transpose(0, 1), lr[0].transpose(0, 1)  # [T, 3, H, W] each

    def _cat(self, outs: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        if not outs:
            empty = torch.empty(
                0, 3, self.spec.height, self.spec.width, device=self.device, dtype=self.spec.dtype
            )
            return empty, empty
        return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])
