"""Self-attention backends for the streaming FlashVSR DiT (locality-constrained block-sparse attention).

Token layout handed to a backend: window-partitioned ("block-major"). A block is 128 tokens =
2 latent frames x 8 x 8 tokens; blocks are ordered (chunk, by, bx) row-major and tokens inside a
block (df, dy, dx). Tensors are [n_blocks * 128, heads, head_dim], q and k already RMSNorm'd and
RoPE'd. See ../shared/design/flashvsr_spec.md section 3.
"""

from __future__ import annotations

import abc
import logging
import math
from dataclasses import dataclass
from typing import Protocol

import torch

_log = logging.getLogger(__name__)


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


# ---------------------------------------------------------------------------------------------
# Block selection (spec section 3.2, 3.3)

BLOCK = 128  # tokens per attention block: 2 latent frames x 8 x 8 tokens; also the kernels' tile
_REFERENCE_SCORE_BYTES = 256 << 20  # fp32 scores the reference materialises at once


def local_block_mask(
    blocks_h: int, blocks_w: int, local_range: int, device: torch.device | None = None
) -> torch.Tensor:
    """[S, S] bool, S = blocks_h * blocks_w: may query block (r, c) see key block (r', c')?

    The window is centred and cut at the frame edges, never shifted to stay local_range wide:
    ``r - L//2 <= r' <= r - L//2 + L - 1``, likewise for columns (official
    ``build_local_block_mask_shifted_vec_normal_slide``). Every block sees itself.
    """
    r = torch.arange(blocks_h, device=device).repeat_interleave(blocks_w)
    c = torch.arange(blocks_w, device=device).repeat(blocks_h)
    half = local_range // 2
    lo_r, lo_c = r - half, c - half
    in_r = (r[None, :] >= lo_r[:, None]) & (r[None, :] <= lo_r[:, None] + local_range - 1)
    in_c = (c[None, :] >= lo_c[:, None]) & (c[None, :] <= lo_c[:, None] + local_range - 1)
    return in_r & in_c


def topk_budget(blocks_per_chunk: int, height_px: int, width_px: int, sparse_ratio: float) -> int:
    """(query-block, key-block) pairs kept per (head, query chunk), as the official code computes it.

    ``int(S*S * sparse_ratio*768*1280/(H*W)) - 1`` with H, W the (padded) HR size in pixels
    (inf_full.py:209, full.py:531-534); at 768x1408 this is 7919. Operations in the same order as
    upstream so float rounding agrees.
    """
    topk_ratio = sparse_ratio * 768 * 1280 / (height_px * width_px)
    return max(0, int(blocks_per_chunk * blocks_per_chunk * topk_ratio) - 1)


def draft_block_mask(q: torch.Tensor, k: torch.Tensor, geom: BlockGeometry) -> torch.Tensor:
    """Which key blocks each query block attends to, per head (spec section 3.3).

    q: [S*n_q*128, H, D], k: [S*n_k*128, H, D] (cache + current), block-major. Returns bool
    [H, S*n_q, S*n_k]. Reproduces the official arithmetic in the compute dtype (q's): block means
    and their dot products rounded to that dtype (bf16 in a bf16 run, no rounding in an fp32 one),
    the -inf local prior added in fp32, a softmax over every key block, then per
    (head, query chunk) one shared budget: keep the entries strictly above the (k'+1)-th largest,
    k' = min(numel - 1, topk). Rows may end up empty; entries outside the local window are 0 after
    the softmax and so are never kept.
    """
    s = geom.blocks_per_chunk
    lq, heads, dim = q.shape
    nqb, nkb = lq // BLOCK, k.shape[0] // BLOCK
    if lq % (BLOCK * s) or k.shape[0] % (BLOCK * s):
        raise ValueError(
            f"draft_block_mask: q {tuple(q.shape)} / k {tuple(k.shape)} are not whole chunks of {s} blocks"
        )
    n_q, n_k = nqb // s, nkb // s
    # Upstream pools and scores in the tensors' own dtype. Pooled in fp32 then rounded once: what
    # torch's bf16 mean and einsum do (fp32 accumulate, one rounding); a no-op rounding in fp32.
    dtype = q.dtype
    qb = q.reshape(nqb, BLOCK, heads, dim).float().mean(1).to(dtype)  # [nqb, H, D]
    kb = k.reshape(nkb, BLOCK, heads, dim).float().mean(1).to(dtype)
    scores = torch.einsum("ihd,jhd->hij", qb.float(), kb.float()).to(dtype)
    scores = scores / math.sqrt(dim)  # dtype / float -> dtype, as upstream
    local = local_block_mask(geom.blocks_h, geom.blocks_w, geom.local_range, q.device).repeat(n_q, n_k)
    prior = torch.zeros(local.shape, dtype=torch.float32, device=q.device).masked_fill_(~local, float("-inf"))
    probs = torch.softmax(scores.float() + prior, dim=-1)  # [H, S*n_q, S*n_k]
    flat = probs.reshape(heads, n_q, s * s * n_k)
    kk = min(flat.shape[-1] - 1, geom.topk)
    if kk <= 0:
        return torch.zeros(probs.shape, dtype=torch.bool, device=q.device)
    thr = flat.topk(kk + 1, dim=-1).values[..., -1:]
    return (flat > thr).reshape(heads, n_q * s, n_k * s)


# ---------------------------------------------------------------------------------------------
# Block-sparse attention


def block_sparse_attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Plain-torch block-sparse attention, the oracle for the kernels.

    q: [Lq, H, D], k, v: [Lk, H, D] with Lq, Lk multiples of 128; mask: [H, Lq/128, Lk/128] bool.
    Softmax(q k^T / sqrt(D)) over the selected key blocks only, accumulated in fp32, returned in
    q's dtype. A query block that selects no key block gives zeros (as block_sparse_attn does).
    """
    lq, heads, dim = q.shape
    lk = k.shape[0]
    nqb, nkb = lq // BLOCK, lk // BLOCK
    if lq % BLOCK or lk % BLOCK or mask.shape != (heads, nqb, nkb):
        raise ValueError(
            f"block_sparse_attention_reference: q {tuple(q.shape)}, k {tuple(k.shape)} need lengths that are "
            f"multiples of {BLOCK} and mask [H, Lq/128, Lk/128] = {[heads, nqb, nkb]}, got {list(mask.shape)}"
        )
    scale = dim**-0.5
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    step = max(1, _REFERENCE_SCORE_BYTES // (BLOCK * lk * 4))  # query blocks per slice
    for h in range(heads):
        kh, vh = k[:, h].float(), v[:, h].float()
        for b0 in range(0, nqb, step):
            b1 = min(nqb, b0 + step)
            m = mask[h, b0:b1]  # [nb, nkb]
            s = (q[b0 * BLOCK : b1 * BLOCK, h].float() @ kh.T) * scale
            s = s.view(b1 - b0, BLOCK, nkb, BLOCK).masked_fill_(~m[:, None, :, None], float("-inf"))
            p = torch.softmax(s.view((b1 - b0) * BLOCK, lk), dim=-1)
            p = p.view(b1 - b0, BLOCK, lk).masked_fill_(~m.any(-1)[:, None, None], 0.0)  # NaN rows -> 0
            out[b0 * BLOCK : b1 * BLOCK, h] = (p.view(-1, lk) @ vh).to(q.dtype)
    return out


class _CachingBackend(abc.ABC):
    """KV-cache bookkeeping shared by the torch backends; subclasses supply ``_attention``."""

    def __init__(self) -> None:
        self._k: dict[int, torch.Tensor] = {}
        self._v: dict[int, torch.Tensor] = {}

    def reset(self) -> None:
        self._k.clear()
        self._v.clear()

    def cached_chunks(self, layer: int, geom: BlockGeometry) -> int:
        k = self._k.get(layer)
        return 0 if k is None else k.shape[0] // (geom.blocks_per_chunk * BLOCK)

    def attend(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, geom: BlockGeometry
    ) -> torch.Tensor:
        chunk_tokens = geom.blocks_per_chunk * BLOCK
        if layer in self._k:
            k = torch.cat([self._k[layer], k])
            v = torch.cat([self._v[layer], v])
        mask = draft_block_mask(q, k, geom)
        out = self._attention(q, k, v, mask)
        keep = min(k.shape[0], geom.kv_chunks * chunk_tokens)  # drop oldest chunks beyond kv_chunks
        self._k[layer] = k[k.shape[0] - keep :]
        self._v[layer] = v[v.shape[0] - keep :]
        return out

    @abc.abstractmethod
    def _attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Block-sparse attention of q to k, v under ``mask`` [H, Lq/128, Lk/128]."""


class ReferenceBackend(_CachingBackend):
    """Pure torch on any device: draft mask plus :func:`block_sparse_attention_reference`."""

    name = "reference"

    def _attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        return block_sparse_attention_reference(q, k, v, mask)


class FlexBackend(_CachingBackend):
    """torch FlexAttention with a BlockMask built from the draft mask.

    The selected blocks are the BlockMask's block lists, and a ``mask_mod`` looks each element's
    block up in the draft mask: eager FlexAttention ignores block lists and applies only the
    mask_mod (gpu_offline.md section 3), compiled FlexAttention skips unlisted blocks. Compiled is the
    default on CUDA. ``full_blocks=True`` (compiled only) passes the selected blocks as "full"
    blocks instead, skipping the mask_mod; torch 2.13's CPU inductor fails to build that variant
    (undeclared ``kv_indices``), so it is opt-in until it is checked on a GPU. Checked here: eager and
    compiled-on-CPU equal the reference to 1e-6, empty query blocks included.
    """

    name = "flex"

    def __init__(self, compile: bool | None = None, full_blocks: bool = False) -> None:
        super().__init__()
        self._full_blocks = full_blocks
        from torch.nn.attention import flex_attention as fa

        self._fa = fa
        self._compile = compile
        self._fn = None

    def _attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        compiled = q.is_cuda if self._compile is None else self._compile
        if self._fn is None:
            self._fn = (
                torch.compile(self._fa.flex_attention, dynamic=False) if compiled else self._fa.flex_attention
            )
        heads, nqb, nkb = mask.shape
        counts = mask.sum(-1, dtype=torch.int32)[None]  # [1, H, nqb]
        order = torch.argsort(mask.to(torch.int8), dim=-1, descending=True, stable=True).to(torch.int32)[None]
        if compiled and self._full_blocks:
            # Selected blocks as "full" blocks: no per-element mask_mod at all.
            block_mask = self._fa.BlockMask.from_kv_blocks(
                torch.zeros_like(counts),
                order,
                counts,
                order,
                BLOCK_SIZE=BLOCK,
                seq_lengths=(q.shape[0], k.shape[0]),
            )
        else:

            def block_lookup(
                b: torch.Tensor, h: torch.Tensor, qi: torch.Tensor, ki: torch.Tensor
            ) -> torch.Tensor:
                return mask[h, qi // BLOCK, ki // BLOCK]

            block_mask = self._fa.BlockMask.from_kv_blocks(
                counts, order, BLOCK_SIZE=BLOCK, mask_mod=block_lookup, seq_lengths=(q.shape[0], k.shape[0])
            )
        # [L, H, D] -> [1, H, L, D]
        out = self._fn(
            q.permute(1, 0, 2)[None],
            k.permute(1, 0, 2)[None],
            v.permute(1, 0, 2)[None],
            block_mask=block_mask,
        )
        out = out[0].permute(1, 0, 2)
        # Empty query blocks: zeros, as block_sparse_attn writes (flex may give NaN in eager mode).
        keep = mask.any(-1).T.repeat_interleave(BLOCK, 0)[:, :, None]  # [Lq, H, 1]
        return torch.where(keep, out, torch.zeros((), dtype=out.dtype, device=out.device)).contiguous()


def make_backend(
    name: str,
    device: torch.device | str,
    *,
    layers: int = 30,
    heads: int = 12,
    head_dim: int = 128,
    dtype: torch.dtype = torch.bfloat16,
) -> SelfAttentionBackend:
    """Build the self-attention backend ``name`` (reference | flex | cupy | auto) for ``device``.

    ``auto``: the cupy kernels on CUDA when they import and fit (bf16, head_dim 128), else
    FlexAttention on CUDA, else the reference. layers/heads size the cupy KV ring.
    """
    device = torch.device(device)
    if name == "reference":
        return ReferenceBackend()
    if name == "flex":
        return FlexBackend()
    if name == "cupy":
        return _cupy_backend(device, layers, heads)
    if name == "auto":
        if device.type != "cuda":
            return ReferenceBackend()
        if dtype != torch.bfloat16 or head_dim != 128:
            _log.info("attention: cupy kernels need bf16 and head_dim 128; using FlexAttention")
            return FlexBackend()
        try:
            return _cupy_backend(device, layers, heads)
        except ImportError as exc:
            _log.warning("attention: cupy kernels unavailable (%s); using FlexAttention", exc)
            return FlexBackend()
    raise ValueError(f"attention backend: expected reference, flex, cupy or auto, got {name!r}")


def _cupy_backend(device: torch.device, layers: int, heads: int) -> SelfAttentionBackend:
    if device.type != "cuda":
        raise ValueError(f"attention backend cupy needs a CUDA device, got {device}")
    import cupy  # noqa: F401  (ImportError here means: pip install livevsr[cuda])

    from livevsr.engines.flashvsr import kernels

    return kernels.CupyAttentionBackend(layers=layers, heads=heads)
