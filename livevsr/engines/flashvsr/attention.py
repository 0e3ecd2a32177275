"""Self-attention backends for the streaming FlashVSR DiT (locality-constrained block-sparse attention).

Token layout handed to a backend: window-partitioned ("block-major"). A block is 128 tokens =
2 latent frames x 8 x 8 tokens; blocks are ordered (chunk, by, bx) row-major and tokens inside a
block (df, dy, dx). Tensors are [n_blocks * 128, heads, head_dim], q and k already RMSNorm'd and
RoPE'd. See ../shared/design/flashvsr_spec.md section 3.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass(frozen=True)
class BlockGeometry:
    """The block grid of one stream geometry and the sparsity settings that go with it."""

    blocks_h: int  # spatial blocks per chunk along H (latent rows / 8)
    blocks_w: int  # along W (latent cols / 8)
    topk: int  # (query-block, key-block) pairs kept per (head, query chunk); spec section 3.3
    local_range: int  # spatial window in blocks, centred and truncated at the edges
    kv_chunks: int = 3  # chunks kept in the KV cache after a step

    @property
    def blocks_per_chunk(self) -> int:
        return self.blocks_h * self.blocks_w


class SelfAttentionBackend(Protocol):
    """Owns the per-layer KV cache of one stream and runs the LCSA self-attention."""

    def reset(self) -> None:
        """Drop every cached K/V (a new stream or a new geometry)."""

    def attend(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, geom: BlockGeometry
    ) -> torch.Tensor:
        """Attend the current chunk(s) to the cache plus themselves.

        q, k, v: [n_q * S * 128, heads, head_dim] for the current chunk(s): n_q = 3 on a stream's
        first step (bidirectional among them), 1 afterwards. Appends k, v to ``layer``'s cache,
        builds the draft mask over cache + current, runs block-sparse attention, then evicts the
        oldest chunk while more than ``geom.kv_chunks`` remain. Returns [n_q * S * 128, heads,
        head_dim]; query blocks that selected no key block give zeros.
        """
        ...
