"""TC decoder: the Tiny pipeline's conditional latent decoder (spec section 5).

A decoder-only TAEHV derivative (``examples/WanVSR/utils/TCDecoder.py`` upstream), 4x wider than
TAEHV and deepened with identity-initialised 3x3 convolutions. Its input at each latent step is the
4x8x8 pixel-unshuffle of the 4 HR-sized LR frames that go with that latent (768 channels) followed
by the 16 latent channels, 784 in all. It is causal with one step of memory per
``MemBlock``, so it decodes a stream chunk by chunk with the same result as one pass over the video.

Layer indices are those of the checkpoint (``decoder.N.*``, spec section 5 and 6)::

    0 Clamp   1 conv 784->C0   2 ReLU   3 IdentityConv2d(C0)   4 ReLU
    5-7 MemBlock(C0)    8 Upsample x2    9 TGrow(C0, 1)    10 conv C0->C1 (no bias)
    11-13 MemBlock(C1)  14 Upsample x2  15 TGrow(C1, 2)    16 conv C1->C2 (no bias)
    17-19 MemBlock(C2)  20 Upsample x2  21 TGrow(C2, 2)    22 conv C2->C3 (no bias)
    23 ReLU   24 IdentityConv2d(C3)   25 ReLU   26 conv C3->3

with (C0, C1, C2, C3) = (512, 256, 128, 128) in the official weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from livevsr.engines.flashvsr.proj_in import space_to_depth_3d

TIME_FACTOR = 4  # HR frames per latent frame
SPACE_FACTOR = 8  # HR pixels per latent pixel side
FRAMES_TO_TRIM = 3  # the first latent decodes to 4 frames of which the first 3 are padding
FULL_CHANNELS = (512, 256, 128, 128)


def _conv(c_in: int, c_out: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, padding=1, bias=bias)


class Clamp(nn.Module):
    """Soft clamp of the decoder input to (-3, 3)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


class IdentityConv2d(nn.Conv2d):
    """A 3x3, bias-free C->C convolution initialised to the identity (the 'deepening' layers)."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels, channels, 3, padding=1, bias=False)
        with torch.no_grad():
            nn.init.dirac_(self.weight)


class MemBlock(nn.Module):
    """``relu(conv3(relu(conv2(relu(conv1([x, past]))))) + x)``; ``past`` is the previous step's x."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            _conv(2 * channels, channels),
            nn.ReLU(inplace=True),
            _conv(channels, channels),
            nn.ReLU(inplace=True),
            _conv(channels, channels),
        )

    def forward(self, x: torch.Tensor, past: torch.Tensor) -> torch.Tensor:
        """x, past: [N, C, H, W] -> [N, C, H, W]."""
        return F.relu(self.conv(torch.cat([x, past], dim=1)) + x)


class TGrow(nn.Module):
    """A bias-free 1x1 conv C -> C*stride, read as ``stride`` consecutive time steps of C channels."""

    def __init__(self, channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(channels, channels * stride, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N*T, C, H, W] -> [N*T*stride, C, H, W], sub-steps in time order."""
        c = x.shape[1]
        return self.conv(x).reshape(-1, c, x.shape[2], x.shape[3])


class TCDecoder(nn.Module):
    """Conditional tiny decoder with streaming state.

    Streaming: ``reset()``, then ``decode_chunk`` per chunk (6 latents with LR frames 0..20 first,
    then 2 latents with the next 8 LR frames). ``decode_video`` is the one-pass decode of a whole
    clip; it leaves the streaming state alone.
    """

    def __init__(
        self,
        latent_channels: int = 16,
        image_channels: int = 3,
        channels: tuple[int, int, int, int] = FULL_CHANNELS,
    ) -> None:
        super().__init__()
        self.latent_channels = latent_channels
        self.image_channels = image_channels
        c0, c1, c2, c3 = channels
        cond_channels = image_channels * TIME_FACTOR * SPACE_FACTOR * SPACE_FACTOR  # 768
        self.decoder = nn.Sequential(
            Clamp(),
            _conv(cond_channels + latent_channels, c0),
            nn.ReLU(inplace=True),
            IdentityConv2d(c0),
            nn.ReLU(inplace=True),
            MemBlock(c0),
            MemBlock(c0),
            MemBlock(c0),
            nn.Upsample(scale_factor=2),
            TGrow(c0, 1),
            _conv(c0, c1, bias=False),
            MemBlock(c1),
            MemBlock(c1),
            MemBlock(c1),
            nn.Upsample(scale_factor=2),
            TGrow(c1, 2),
            _conv(c1, c2, bias=False),
            MemBlock(c2),
            MemBlock(c2),
            MemBlock(c2),
            nn.Upsample(scale_factor=2),
            TGrow(c2, 2),
            _conv(c2, c3, bias=False),
            nn.ReLU(inplace=True),
            IdentityConv2d(c3),
            nn.ReLU(inplace=True),
            _conv(c3, image_channels),
        )
        self._mem: dict[int, torch.Tensor] = {}  # MemBlock index -> its input at the previous step
        self._started = False

    def reset(self) -> None:
        """Forget the stream: zero memory, and trim 3 frames from the next chunk's output."""
        self._mem = {}
        self._started = False

    def _input(self, latents: torch.Tensor, cond: torch.Tensor, first: bool) -> torch.Tensor:
        """[B, T_lat, 16, h, w] and [B, 3, T, 8h, 8w] -> decoder input [B, T_lat, 784, h, w]."""
        if latents.ndim != 5 or latents.shape[2] != self.latent_channels:
            want_lat = f"[B, T, {self.latent_channels}, h, w]"
            raise ValueError(f"TC decoder: expected latents {want_lat}, got {list(latents.shape)}")
        b, t_lat, _, h, w = latents.shape
        t_cond = TIME_FACTOR * t_lat - (FRAMES_TO_TRIM if first else 0)
        want = [b, self.image_channels, t_cond, SPACE_FACTOR * h, SPACE_FACTOR * w]
        if list(cond.shape) != want:
            where = "a stream's first chunk" if first else "a later chunk"
            raise ValueError(
                f"TC decoder: for {t_lat} latents in {where} expected cond {want}, got {list(cond.shape)}"
            )
        if first:  # group 0 is [f0 f0 f0 f0]: pad the front with 3 copies of frame 0
            cond = torch.cat([cond[:, :, :1].expand(-1, -1, FRAMES_TO_TRIM, -1, -1), cond], dim=2)
        c = space_to_depth_3d(cond, TIME_FACTOR, SPACE_FACTOR, SPACE_FACTOR).transpose(1, 2)
        return torch.cat([c.to(latents.dtype), latents], dim=2)  # cond first, then the latent

    def _step(self, x: torch.Tensor, start: int, out: list[torch.Tensor]) -> None:
        """Run one time step [B, C, h, w] from layer ``start`` on, depth first, appending frames."""
        for i in range(start, len(self.decoder)):
            layer = self.decoder[i]
            if isinstance(layer, MemBlock):
                past = self._mem.get(i)
                self._mem[i] = x
                x = layer(x, torch.zeros_like(x) if past is None else past)
            elif isinstance(layer, TGrow):
                steps = layer(x).unflatten(0, (x.shape[0], layer.stride))  # [B, s, C, H, W]
                for k in range(layer.stride):  # sub-steps in time order
                    self._step(steps[:, k], i + 1, out)
                return
            else:
                x = layer(x)
        out.append(x)

    def decode_chunk(self, latents: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Decode the next chunk of a stream.

        latents: [B, T_lat, 16, h, w], raw DiT latents (no Wan mean/std).
        cond: [B, 3, T, 8h, 8w] upscaled LR frames in [-1, 1]; T = 4*T_lat - 3 on a stream's first
        chunk (LR frames 0..), 4*T_lat after (the next frames in order).
        Returns [B, 3, T, 8h, 8w] in about [-1, 1] (not clamped), aligned with ``cond``.
        """
        first = not self._started
        x = self._input(latents, cond, first)
        out: list[torch.Tensor] = []
        for t in range(x.shape[1]):
            self._step(x[:, t], 0, out)
        self._started = True
        video = torch.stack(out, dim=2)  # [B, 3, 4*T_lat, H, W]
        if first:
            video = video[:, :, FRAMES_TO_TRIM:]
        return video * 2 - 1

    def decode_video(self, latents: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Decode a whole clip in one pass, parallel over time; the streaming state is untouched.

        latents: [B, T_lat, 16, h, w]; cond: [B, 3, 4*T_lat - 3, 8h, 8w] in [-1, 1].
        Returns [B, 3, 4*T_lat - 3, 8h, 8w] in about [-1, 1].
        """
        x = self._input(latents, cond, first=True)
        b = x.shape[0]
        x = x.flatten(0, 1)  # [B*T, C, h, w]
        for layer in self.decoder:
            if isinstance(layer, MemBlock):
                steps = x.unflatten(0, (b, -1))
                past = torch.cat([torch.zeros_like(steps[:, :1]), steps[:, :-1]], dim=1)
                x = layer(x, past.flatten(0, 1))
            else:
                x = layer(x)
        video = x.unflatten(0, (b, -1)).transpose(1, 2)  # [B, 3, 4*T_lat, H, W]
        return video[:, :, FRAMES_TO_TRIM:] * 2 - 1
