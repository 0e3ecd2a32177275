"""CuPy launchers for the LCSA CUDA kernels (kernels/*.cu), the KV ring and the ``cupy`` backend.

Each source is compiled once per process with ``cupy.RawModule`` (NVRTC) on first use; ``import``
needs neither cupy nor a GPU. Launches go on torch's current CUDA stream, and tensors are handed to
the kernels as raw device pointers of the torch tensors (the zero-copy address that
``__cuda_array_interface__`` / DLPack would expose; bf16 has no cupy dtype). The wrappers check dtype,
shape, contiguity and device first and raise ``ValueError`` naming the tensor and the expected shape.

Shapes: H heads, D = 128 head dims, S = blocks per chunk, a block = 128 tokens (attention.py).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from livevsr.engines.flashvsr.attention import BlockGeometry

KERNEL_DIR = Path(__file__).resolve().parents[3] / "kernels"
DEFAULT_ARCHS = ("90a", "80")
KERNEL_ARCHS: dict[str, tuple[str, ...]] = {  # archs kernel_check compiles each source for
    # "90": what cupy.RawModule builds on an H100 (plain sm_<compute capability>, never sm_90a).
    "block_select.cu": ("90", "90a", "80"),
    "block_sparse_attn.cu": ("90", "90a", "80"),
}
NVRTC_OPTIONS = ("--std=c++17",)

HEAD_DIM = 128
BLOCK_TOKENS = 128  # tokens per mask block (2 latent frames x 8 x 8)
RING_SLOTS = 4  # KV ring chunk slots per layer: kv_chunks cached + the current chunk
BSA_SMEM_BYTES = 96 * 1024  # Q 32 KiB + 2 stages x (K 16 KiB + V 16 KiB); static_assert in the .cu
SCORES_SMEM_MAX_BYTES = 32 * 1024  # local-window scores of one row (<= 8192 blocks); under 48 KiB
DYNAMIC_SMEM_MAX_BYTES = {  # the most each launcher asks for; kernel_check adds it to static smem
    "block_sparse_attn_fwd": BSA_SMEM_BYTES,
    "draft_scores_softmax": SCORES_SMEM_MAX_BYTES,
}
_BSA_THREADS = 256
_SCORE_THREADS = 128
_TOPK_THREADS = 1024
_LOG2E = 1.4426950408889634

_lock = threading.Lock()
_modules: dict[tuple[str, int], Any] = {}  # (source, device) -> cupy.RawModule
_functions: dict[tuple[str, str, int], Any] = {}


def _function(source: str, name: str, device: torch.device) -> Any:
    """The compiled kernel `name` of kernels/`source` on `device` (each source compiled once)."""
    import cupy

    dev = device.index if device.index is not None else torch.cuda.current_device()
    key = (source, name, dev)
    with _lock:
        fn = _functions.get(key)
        if fn is None:
            with cupy.cuda.Device(dev):
                mod = _modules.get((source, dev))
                if mod is None:
                    code = (KERNEL_DIR / source).read_text()
                    mod = _modules[(source, dev)] = cupy.RawModule(
                        code=code, options=NVRTC_OPTIONS, backend="nvrtc"
                    )
                fn = mod.get_function(name)
                if DYNAMIC_SMEM_MAX_BYTES.get(name, 0) > 48 * 1024:  # opt in above the default 48 KiB
                    fn.max_dynamic_shared_size_bytes = DYNAMIC_SMEM_MAX_BYTES[name]
            _functions[key] = fn
    return fn


def _launch(
    source: str,
    name: str,
    device: torch.device,
    grid: tuple[int, ...],
    block: tuple[int, ...],
    args: tuple[Any, ...],
    shared_mem: int = 0,
) -> None:
    import cupy

    fn = _function(source, name, device)
    dev = device.index if device.index is not None else torch.cuda.current_device()
    stream = cupy.cuda.ExternalStream(torch.cuda.current_stream(device).cuda_stream, dev)
    with cupy.cuda.Device(dev), stream:  # on torch's stream: ordered with the surrounding torch ops
        fn(grid, block, args, shared_mem=shared_mem)


def _ptr(t: torch.Tensor) -> np.uint64:
    return np.uint64(t.data_ptr())


def _i32(x: int) -> np.int32:
    return np.int32(x)


def _on_device(t: torch.Tensor) -> bool:
    """Whether a kernel can read `t`: CUDA memory (tests/kernels/cuda_host.py, which runs the kernels
    on the CPU, swaps this for its own test)."""
    return t.is_cuda


def canonical_device(device: torch.device | str) -> torch.device:
    """``device`` with its index filled in where torch leaves it out: ``cuda`` is the current CUDA
    device. A tensor's device always has its index (``cuda:0``), and ``torch.device("cuda:0") !=
    torch.device("cuda")``, so devices given by name must be compared through this (or same_device)."""
    d = torch.device(device)
    if d.index is None and d.type == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return d


def same_device(a: torch.device | str, b: torch.device | str) -> bool:
    """Whether ``a`` and ``b`` name the same device: ``cuda`` is ``cuda:<current>``, ``cpu`` is ``cpu:0``."""
    a, b = torch.device(a), torch.device(b)
    if a.type != b.type:
        return False
    if a.index == b.index:
        return True
    if a.type == "cuda":
        return canonical_device(a).index == canonical_device(b).index
    return (a.index or 0) == (b.index or 0)


def _check(
    name: str,
    t: Any,
    shape: Sequence[int | None],
    expect: str,
    dtype: torch.dtype,
    device: torch.device | None = None,
) -> None:
    """Raise ValueError unless `t` is a contiguous CUDA tensor of `dtype` with `shape` (None: any)."""
    want = f"a contiguous CUDA {dtype} tensor {expect}"
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name}: expected {want}, got {type(t).__name__}")
    if t.dtype != dtype:
        raise ValueError(f"{name}: expected {want}, got dtype {t.dtype}")
    if t.dim() != len(shape) or any(s is not None and s != n for s, n in zip(shape, t.shape, strict=True)):
        raise ValueError(f"{name}: expected {want}, got shape {list(t.shape)}")
    if not _on_device(t):
        raise ValueError(f"{name}: expected {want}, got a tensor on {t.device}")
    if device is not None and not same_device(t.device, device):
        raise ValueError(f"{name}: expected {want} on {device} (like q), got {t.device}")
    if not t.is_contiguous():
        raise ValueError(f"{name}: expected {want}, got a non-contiguous tensor (strides {t.stride()})")
    if t.data_ptr() % 16:  # the kernels move 16-byte vectors
        raise ValueError(
            f"{name}: expected {want} starting on a 16-byte boundary, got address {t.data_ptr():#x}"
        )


def _check_slots(slots: Sequence[int], n_slots: int) -> tuple[int, int, int, int]:
    if not 1 <= len(slots) <= RING_SLOTS or any(not 0 <= s < n_slots for s in slots):
        raise ValueError(
            f"slots: expected 1..{RING_SLOTS} ring slot indices in [0, {n_slots}), got {list(slots)}"
        )
    padded = list(slots) + [0] * (RING_SLOTS - len(slots))
    return padded[0], padded[1], padded[2], padded[3]


def block_mean_pool(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of each 128-token block: x [nb*128, H, 128] bf16 -> [nb, H, 128] bf16 (fp32 sum)."""
    if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[0] % BLOCK_TOKENS:
        got = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x: expected [n_blocks*128, heads, 128] bf16, got {got}")
    n_blocks, heads = x.shape[0] // BLOCK_TOKENS, x.shape[1]
    _check("x", x, (None, None, HEAD_DIM), "[n_blocks*128, heads, 128]", torch.bfloat16)
    if out is None:
        out = torch.empty((n_blocks, heads, HEAD_DIM), dtype=torch.bfloat16, device=x.device)
    _check("out", out, (n_blocks, heads, HEAD_DIM), f"[{n_blocks}, {heads}, 128]", torch.bfloat16, x.device)
    if n_blocks:
        _launch(
            "block_select.cu",
            "block_mean_pool",
            x.device,
            (n_blocks, heads),
            (HEAD_DIM,),
            (_ptr(x), _ptr(out), _i32(heads)),
        )
    return out


@dataclass(frozen=True)
class BlockLists:
    """The draft mask as lists: kv_idx [H, nq_blocks, nk_blocks] int32 (first kv_cnt valid, ascending
    logical key-block indices), kv_cnt [H, nq_blocks] int32, probs [H, nq_blocks, nk_blocks] fp32 (the
    row softmax, 0 outside the local window), thr [H, n_q] fp32 (each (head, chunk) threshold)."""

    kv_idx: torch.Tensor
    kv_cnt: torch.Tensor
    probs: torch.Tensor
    thr: torch.Tensor


def block_select(
    qb: torch.Tensor, kpool: torch.Tensor, slots: Sequence[int], geom: BlockGeometry
) -> BlockLists:
    """Draft block mask (spec section 3.3) from pooled blocks.

    qb: [n_q*S, H, 128] bf16, pooled queries of the current chunk(s).
    kpool: [n_slots, S, H, 128] bf16, pooled keys per ring slot; logical key chunk c is slot slots[c],
    oldest first, n_k = len(slots) <= 4 chunks.
    """
    S = geom.blocks_per_chunk
    if not isinstance(kpool, torch.Tensor) or kpool.dim() != 4:
        got = list(kpool.shape) if isinstance(kpool, torch.Tensor) else type(kpool).__name__
        raise ValueError(f"kpool: expected [n_slots, {S}, heads, 128] bf16, got {got}")
    heads = kpool.shape[2]
    _check("kpool", kpool, (None, S, heads, HEAD_DIM), f"[n_slots, {S}, {heads}, 128]", torch.bfloat16)
    if not isinstance(qb, torch.Tensor) or qb.dim() != 3 or qb.shape[0] == 0 or qb.shape[0] % S:
        got = list(qb.shape) if isinstance(qb, torch.Tensor) else type(qb).__name__
        raise ValueError(f"qb: expected [n_q*{S}, {heads}, 128] bf16, got {got}")
    _check("qb", qb, (None, heads, HEAD_DIM), f"[n_q*{S}, {heads}, 128]", torch.bfloat16, kpool.device)
    if geom.topk < 0 or geom.local_range < 1:
        raise ValueError(
            f"geom: expected topk >= 0 and local_range >= 1, got {geom.topk}, {geom.local_range}"
        )
    s0, s1, s2, s3 = _check_slots(slots, kpool.shape[0])
    n_k = len(slots)
    nq_blocks, nk_blocks = qb.shape[0], n_k * S
    n_q = nq_blocks // S
    window = min(geom.local_range, geom.blocks_h) * min(geom.local_range, geom.blocks_w)
    score_smem = n_k * window * 4
    if score_smem > SCORES_SMEM_MAX_BYTES:
        raise ValueError(
            f"geom.local_range: {geom.local_range} needs {score_smem} B of scores per row, "
            f"over {SCORES_SMEM_MAX_BYTES} B; use a smaller window"
        )
    dev = qb.device
    probs = torch.empty((heads, nq_blocks, nk_blocks), dtype=torch.float32, device=dev)
    kv_idx = torch.empty((heads, nq_blocks, nk_blocks), dtype=torch.int32, device=dev)
    kv_cnt = torch.empty((heads, nq_blocks), dtype=torch.int32, device=dev)
    thr = torch.empty((heads, n_q), dtype=torch.float32, device=dev)
    inv_sqrt_d = np.float32(1.0) / np.float32(math.sqrt(HEAD_DIM))  # torch: bf16 tensor / python float
    _launch(
        "block_select.cu",
        "draft_scores_softmax",
        dev,
        (nq_blocks, heads),
        (_SCORE_THREADS,),
        (
            _ptr(qb),
            _ptr(kpool),
            _ptr(probs),
            _i32(heads),
            _i32(nq_blocks),
            _i32(geom.blocks_h),
            _i32(geom.blocks_w),
            _i32(geom.local_range),
            _i32(n_k),
            _i32(s0),
            _i32(s1),
            _i32(s2),
            _i32(s3),
            np.float32(inv_sqrt_d),
        ),
        shared_mem=score_smem,
    )
    _launch(
        "block_select.cu",
        "topk_block_lists",
        dev,
        (n_q, heads),
        (_TOPK_THREADS,),
        (
            _ptr(probs),
            _ptr(kv_idx),
            _ptr(kv_cnt),
            _ptr(thr),
            _i32(nq_blocks),
            _i32(nk_blocks),
            _i32(S),
            _i32(n_q),
            _i32(geom.topk),
        ),
    )
    return BlockLists(kv_idx, kv_cnt, probs, thr)


def block_sparse_attn(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_idx: torch.Tensor,
    kv_cnt: torch.Tensor,
    slots: Sequence[int] | None = None,
    blocks_per_chunk: int | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Block-sparse attention forward, softmax scale 1/sqrt(128).

    q: [nq_blocks*128, H, 128] bf16. k, v: either one ring layer [n_slots, S*128, H, 128] bf16 with
    `slots` (ring slot of each logical key chunk, oldest first) and `blocks_per_chunk` = S, or plain
    [nk_blocks*128, H, 128] (one chunk of all key blocks). kv_idx [H, nq_blocks, max_sel] int32 holds
    logical key-block indices (< len(slots)*S; not checked on the device), kv_cnt [H, nq_blocks] int32
    how many are valid. Returns [nq_blocks*128, H, 128] bf16; query blocks with kv_cnt 0 are zeros.
    """
    if not isinstance(q, torch.Tensor) or q.dim() != 3 or q.shape[0] == 0 or q.shape[0] % BLOCK_TOKENS:
        got = list(q.shape) if isinstance(q, torch.Tensor) else type(q).__name__
        raise ValueError(f"q: expected [nq_blocks*128, heads, 128] bf16, got {got}")
    heads, dev = q.shape[1], q.device
    _check("q", q, (None, heads, HEAD_DIM), f"[nq_blocks*128, {heads}, 128]", torch.bfloat16)
    nq_blocks = q.shape[0] // BLOCK_TOKENS
    if isinstance(k, torch.Tensor) and k.dim() == 3:
        if k.shape[0] == 0 or k.shape[0] % BLOCK_TOKENS:
            raise ValueError(f"k: expected [nk_blocks*128, {heads}, 128] bf16, got {list(k.shape)}")
        _check("k", k, (None, heads, HEAD_DIM), f"[nk_blocks*128, {heads}, 128]", torch.bfloat16, dev)
        _check("v", v, tuple(k.shape), f"{list(k.shape)} like k", torch.bfloat16, dev)
        S, n_slots, slots = k.shape[0] // BLOCK_TOKENS, 1, (0,) if slots is None else slots
    else:
        if blocks_per_chunk is None or slots is None:
            raise ValueError("k: a 4-D ring layer [n_slots, S*128, H, 128] needs slots and blocks_per_chunk")
        S = blocks_per_chunk
        expect = f"[n_slots, {S * BLOCK_TOKENS}, {heads}, 128]"
        _check("k", k, (None, S * BLOCK_TOKENS, heads, HEAD_DIM), expect, torch.bfloat16, dev)
        _check("v", v, tuple(k.shape), f"{list(k.shape)} like k", torch.bfloat16, dev)
        n_slots = k.shape[0]
    s0, s1, s2, s3 = _check_slots(slots, n_slots)
    if not isinstance(kv_idx, torch.Tensor) or kv_idx.dim() != 3:
        got = list(kv_idx.shape) if isinstance(kv_idx, torch.Tensor) else type(kv_idx).__name__
        raise ValueError(f"kv_idx: expected [{heads}, {nq_blocks}, max_sel] int32, got {got}")
    max_sel = kv_idx.shape[2]
    _check("kv_idx", kv_idx, (heads, nq_blocks, None), f"[{heads}, {nq_blocks}, max_sel]", torch.int32, dev)
    _check("kv_cnt", kv_cnt, (heads, nq_blocks), f"[{heads}, {nq_blocks}]", torch.int32, dev)
    if out is None:
        out = torch.empty_like(q)
    _check("out", out, tuple(q.shape), f"{list(q.shape)} like q", torch.bfloat16, dev)
    scale_log2 = np.float32(_LOG2E / math.sqrt(HEAD_DIM))
    _launch(
        "block_sparse_attn.cu",
        "block_sparse_attn_fwd",
        dev,
        (nq_blocks, heads),
        (_BSA_THREADS,),
        (
            _ptr(q),
            _ptr(k),
            _ptr(v),
            _ptr(kv_idx),
            _ptr(kv_cnt),
            _ptr(out),
            _i32(heads),
            _i32(nq_blocks),
            _i32(max_sel),
            _i32(S),
            _i32(s0),
            _i32(s1),
            _i32(s2),
            _i32(s3),
            scale_log2,
        ),
        shared_mem=BSA_SMEM_BYTES,
    )
    return out


def mask_to_lists(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bool block mask [H, nq_blocks, nk_blocks] -> (kv_idx int32 same shape, ascending selected
    indices first; kv_cnt int32 [H, nq_blocks]). Plain torch, any device."""
    order = torch.argsort((~mask).to(torch.int8), dim=-1, stable=True)
    return order.to(torch.int32).contiguous(), mask.sum(-1).to(torch.int32)


def lists_to_mask(kv_idx: torch.Tensor, kv_cnt: torch.Tensor, nk_blocks: int) -> torch.Tensor:
    """Inverse of mask_to_lists: -> bool [H, nq_blocks, nk_blocks]."""
    valid = torch.arange(kv_idx.shape[-1], device=kv_idx.device) < kv_cnt[..., None].long()
    hits = torch.zeros((*kv_cnt.shape, nk_blocks), dtype=torch.int32, device=kv_idx.device)
    hits.scatter_add_(-1, torch.where(valid, kv_idx.long(), 0), valid.to(torch.int32))
    return hits > 0


class KVRing:
    """One stream's self-attention K/V cache in a preallocated ring of chunk slots.

    k, v: [layers, slots, S*128, H, 128] bf16; k_pooled: [layers, slots, S, H, 128] bf16, the block
    means of each slot's keys, computed once when the chunk is written. Per layer, the occupied slots
    are kept oldest first; writing takes a free slot, dropping frees the oldest. Nothing is shifted.
    """

    def __init__(
        self,
        layers: int,
        blocks_per_chunk: int,
        heads: int = 12,
        device: torch.device | str = "cuda",
        slots: int = RING_SLOTS,
    ) -> None:
        if layers < 1 or blocks_per_chunk < 1 or heads < 1 or not 1 <= slots <= RING_SLOTS:
            raise ValueError(
                f"KVRing: expected layers, blocks_per_chunk, heads >= 1 and 1..{RING_SLOTS} slots, "
                f"got {layers}, {blocks_per_chunk}, {heads}, {slots}"
            )
        self.layers, self.blocks_per_chunk, self.heads, self.n_slots = layers, blocks_per_chunk, heads, slots
        self.device = canonical_device(device)  # "cuda" -> "cuda:0", as the tensors written will say
        tokens = blocks_per_chunk * BLOCK_TOKENS
        self.k = torch.empty(
            (layers, slots, tokens, heads, HEAD_DIM), dtype=torch.bfloat16, device=self.device
        )
        self.v = torch.empty_like(self.k)
        self.k_pooled = torch.empty(
            (layers, slots, blocks_per_chunk, heads, HEAD_DIM), dtype=torch.bfloat16, device=self.device
        )
        self._order: list[list[int]] = [[] for _ in range(layers)]

    def reset(self) -> None:
        self._order = [[] for _ in range(self.layers)]

    def chunks(self, layer: int) -> int:
        return len(self._order[layer])

    def slots(self, layer: int) -> tuple[int, ...]:
        """Ring slots of `layer`'s cached chunks, oldest first."""
        return tuple(self._order[layer])

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> int:
        """Copy one chunk k, v [S*128, H, 128] bf16 into a free slot of `layer`; return the slot."""
        order = self._order[layer]
        if len(order) >= self.n_slots:
            raise ValueError(
                f"KVRing.write: layer {layer} already holds {len(order)} chunks in "
                f"{self.n_slots} slots; drop the oldest first"
            )
        shape = (self.blocks_per_chunk * BLOCK_TOKENS, self.heads, HEAD_DIM)
        for name, t in (("k", k), ("v", v)):
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape or t.dtype != torch.bfloat16:
                got = f"{t.dtype} {list(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"{name}: expected a bf16 chunk {list(shape)}, got {got}")
            if not same_device(t.device, self.device):
                raise ValueError(f"{name}: expected a tensor on {self.device}, got {t.device}")
        slot = next(s for s in range(self.n_slots) if s not in order)
        self.k[layer, slot].copy_(k)
        self.v[layer, slot].copy_(v)
        if self.device.type == "cuda":
            block_mean_pool(self.k[layer, slot], out=self.k_pooled[layer, slot])
        else:  # same arithmetic in torch (fp32 sum, one rounding), so the ring works without a GPU
            blocks = (
                self.k[layer, slot].float().view(self.blocks_per_chunk, BLOCK_TOKENS, self.heads, HEAD_DIM)
            )
            self.k_pooled[layer, slot] = blocks.mean(1).to(torch.bfloat16)
        order.append(slot)
        return slot

    def drop_oldest(self, layer: int) -> None:
        if not self._order[layer]:
            raise ValueError(f"KVRing.drop_oldest: layer {layer} holds no chunk")
        self._order[layer].pop(0)


class CupyAttentionBackend:
    """The ``cupy`` SelfAttentionBackend: a KV ring plus the draft-mask and block-sparse kernels.

    The ring is allocated on the first ``attend`` for the stream geometry (blocks per chunk, heads,
    device) and reallocated, empty, when that changes. ``layers`` bounds the layer index.
    """

    name = "cupy"

    def __init__(self, device: torch.device | str = "cuda", layers: int = 30, heads: int = 12) -> None:
        import cupy  # noqa: F401  (ImportError here lets make_backend("auto") fall back)

        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise ValueError(f"CupyAttentionBackend: expected a CUDA device, got {self.device}")
        if layers < 1 or heads < 1:
            raise ValueError(f"CupyAttentionBackend: expected layers, heads >= 1, got {layers}, {heads}")
        self.layers, self.heads = layers, heads
        self._ring: KVRing | None = None

    @property
    def ring(self) -> KVRing | None:
        return self._ring

    def reset(self) -> None:
        if self._ring is not None:
            self._ring.reset()

    def cached_chunks(self, layer: int, geom: BlockGeometry) -> int:
        ring = self._ring
        if ring is None or ring.blocks_per_chunk != geom.blocks_per_chunk:
            return 0
        return ring.chunks(layer)

    def _ring_for(self, geom: BlockGeometry, heads: int, device: torch.device) -> KVRing:
        if geom.kv_chunks + 1 > RING_SLOTS:
            raise ValueError(
                f"geom.kv_chunks: the KV ring holds {RING_SLOTS} chunk slots (cache + current), "
                f"so at most {RING_SLOTS - 1} cached chunks; got {geom.kv_chunks}"
            )
        ring = self._ring
        if (
            ring is None
            or ring.blocks_per_chunk != geom.blocks_per_chunk
            or ring.heads != heads
            or not same_device(ring.device, device)
        ):
            self._ring = None  # free the old ring before allocating the new geometry's
            ring = self._ring = KVRing(self.layers, geom.blocks_per_chunk, heads, device)
        return ring

    def attend(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, geom: BlockGeometry
    ) -> torch.Tensor:
        """See SelfAttentionBackend.attend: q, k, v [n_q*S*128, H, 128] bf16 -> [n_q*S*128, H, 128].

        k and v may be strided views (they are copied into the ring); q is made contiguous.
        """
        chunk = geom.blocks_per_chunk * BLOCK_TOKENS
        expect = f"[n_q*{chunk}, heads, 128]"
        for name, t in (("q", q), ("k", k), ("v", v)):
            if not isinstance(t, torch.Tensor) or t.dim() != 3 or t.shape[0] == 0 or t.shape[0] % chunk:
                got = list(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"{name}: expected {expect} bf16, got {got}")
            if (
                t.shape != q.shape
                or t.shape[2] != HEAD_DIM
                or t.dtype != torch.bfloat16
                or t.device != q.device
            ):
                raise ValueError(
                    f"{name}: expected {expect} bf16 on {q.device} like q {list(q.shape)}, "
                    f"got {t.dtype} {list(t.shape)} on {t.device}"
                )
        if q.shape[1] != self.heads:
            raise ValueError(f"q: expected {self.heads} heads ({expect}), got {list(q.shape)}")
        if not 0 <= layer < self.layers:
            raise ValueError(f"layer: expected 0..{self.layers - 1}, got {layer}")
        q = q.contiguous()
        n_q = q.shape[0] // chunk
        ring = self._ring_for(geom, self.heads, q.device)
        if ring.chunks(layer) + n_q > ring.n_slots:
            raise ValueError(
                f"q: {n_q} new chunks on top of {ring.chunks(layer)} cached do not fit the "
                f"{ring.n_slots}-slot KV ring; reset() before a stream's first step"
            )
        for c in range(n_q):
            ring.write(layer, k[c * chunk : (c + 1) * chunk], v[c * chunk : (c + 1) * chunk])
        slots = ring.slots(layer)
        lists = block_select(block_mean_pool(q), ring.k_pooled[layer], slots, geom)
        out = block_sparse_attn(
            q,
            ring.k[layer],
            ring.v[layer],
            lists.kv_idx,
            lists.kv_cnt,
            slots=slots,
            blocks_per_chunk=geom.blocks_per_chunk,
        )
        while ring.chunks(layer) > geom.kv_chunks:
            ring.drop_oldest(layer)
        return out


CupyBackend = CupyAttentionBackend
