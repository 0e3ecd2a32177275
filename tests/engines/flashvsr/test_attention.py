"""Draft-mask rules and the block-sparse attention oracle (spec section 3)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from livevsr.engines.flashvsr.attention import (
    BLOCK,
    BlockGeometry,
    FlexBackend,
    ReferenceBackend,
    block_sparse_attention_reference,
    draft_block_mask,
    local_block_mask,
    make_backend,
    topk_budget,
)


def _qkv(lq: int, lk: int, heads: int = 2, dim: int = 32, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(n, heads, dim, generator=g) for n in (lq, lk, lk))


def _spec_draft_mask(q: torch.Tensor, k: torch.Tensor, geom: BlockGeometry) -> torch.Tensor:
    """The spec's pseudocode (section 3.5), loop by loop, as the oracle for draft_block_mask."""
    s = geom.blocks_per_chunk
    heads, dim, dt = q.shape[1], q.shape[2], q.dtype  # upstream computes in the tensors' dtype
    qb = q.reshape(-1, BLOCK, heads, dim).float().mean(1).to(dt)
    kb = k.reshape(-1, BLOCK, heads, dim).float().mean(1).to(dt)
    n_q, n_k = qb.shape[0] // s, kb.shape[0] // s
    sc = torch.einsum("ind,jnd->nij", qb.float(), kb.float()).to(dt) / math.sqrt(dim)
    loc = local_block_mask(geom.blocks_h, geom.blocks_w, geom.local_range).repeat(n_q, n_k)
    p = torch.softmax(sc.float() + torch.where(loc, 0.0, float("-inf")), -1)
    sel = torch.zeros_like(p, dtype=torch.bool)
    for hd in range(heads):
        for c in range(n_q):
            rows = slice(c * s, (c + 1) * s)
            m = p[hd, rows].flatten()
            kk = min(m.numel() - 1, geom.topk)
            thr = m.topk(kk + 1).values[-1]
            sel[hd, rows] = p[hd, rows] > thr
    return sel


def test_local_mask_is_centred_and_cut_at_the_edges() -> None:
    m = local_block_mask(3, 4, 3).view(3, 4, 3, 4)
    assert m[0, 0].sum() == 4  # corner: rows 0..1, cols 0..1
    assert m[1, 1].sum() == 9
    assert m[1, 1, 0:3, 0:3].all()
    assert not m[0, 0, 2].any() and not m[0, 0, :, 2:].any()
    even = local_block_mask(1, 6, 4).view(6, 6)  # even L: r-2 .. r+1
    assert even[3].tolist() == [False, True, True, True, True, False]


def test_local_mask_counts_at_768x1408() -> None:
    m = local_block_mask(6, 11, 11)
    assert int(m.sum()) == 3276  # spec section 3.2
    assert int(m.sum(1).min()) == 36 and int(m.sum(1).max()) == 66
    assert int(local_block_mask(6, 11, 9).sum()) == 2686


def test_topk_budget_matches_the_spec() -> None:
    assert topk_budget(66, 768, 1408, 2.0) == 7919
    assert topk_budget(60, 768, 1280, 2.0) == int(3600 * 2.0) - 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("n_q,n_k", [(3, 3), (1, 4)])
def test_draft_mask_matches_the_spec_loop(n_q: int, n_k: int, dtype: torch.dtype) -> None:
    geom = BlockGeometry(blocks_h=2, blocks_w=3, topk=7, local_range=3)
    q, k, _ = _qkv(geom.blocks_per_chunk * n_q * BLOCK, geom.blocks_per_chunk * n_k * BLOCK, heads=3)
    q, k = q.to(dtype), k.to(dtype)
    got = draft_block_mask(q, k, geom)
    assert got.shape == (3, 6 * n_q, 6 * n_k)
    assert torch.equal(got, _spec_draft_mask(q, k, geom))


def test_draft_mask_budget_is_per_head_and_query_chunk() -> None:
    geom = BlockGeometry(blocks_h=2, blocks_w=2, topk=5, local_range=11)
    s = geom.blocks_per_chunk
    q, k, _ = _qkv(s * 3 * BLOCK, s * 3 * BLOCK, heads=2, seed=1)
    q = q * 8  # peaky block scores, so rows differ in how many blocks they get
    sel = draft_block_mask(q, k, geom).view(2, 3, s, 3 * s)
    assert (sel.sum((-1, -2)) == 5).all()  # no ties with random data: exactly topk per (head, chunk)
    per_row = sel.sum(-1)
    assert per_row.max() > per_row.min()  # shared budget, not per row


def test_draft_mask_never_selects_outside_the_window_and_rows_can_be_empty() -> None:
    geom = BlockGeometry(blocks_h=1, blocks_w=4, topk=3, local_range=1)  # each block sees itself only
    s = geom.blocks_per_chunk
    q, k, _ = _qkv(s * BLOCK, s * 2 * BLOCK, heads=1, seed=2)
    sel = draft_block_mask(q, k, geom)[0]
    own = local_block_mask(1, 4, 1).repeat(1, 2)
    assert not (sel & ~own).any()
    # 8 nonzero probabilities (2 per row), budget 3: the 3 largest survive, one row at least is empty.
    assert int(sel.sum()) == 3
    assert (sel.sum(-1) == 0).any()


def test_draft_mask_threshold_is_strict() -> None:
    geom = BlockGeometry(blocks_h=1, blocks_w=2, topk=2, local_range=3)
    q = torch.ones(2 * BLOCK, 1, 32)
    k = torch.ones(2 * BLOCK, 1, 32)  # every probability equal: nothing is strictly above the threshold
    assert not draft_block_mask(q, k, geom).any()
    big = BlockGeometry(blocks_h=1, blocks_w=2, topk=100, local_range=3)
    k[:BLOCK] *= 2  # two distinct values per row; a budget >= numel-1 drops the weakest only
    sel = draft_block_mask(q, k, big)[0]
    assert sel[:, 0].all() and not sel[:, 1].any()


def _near_tie(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """One query block against three key chunks of one block each (S = 1), whose block means are
    1, 1 + 2**-10 and 0.5 along channel 0. Every token is bf16-exact; the second key block's mean
    (127 tokens of 1, one of 1.125) is not: bf16 rounds it to 1, a tie with the first block."""
    q = torch.zeros(BLOCK, 1, 128)
    q[:, 0, 0] = 1.0
    k = torch.zeros(3 * BLOCK, 1, 128)
    k[:BLOCK, 0, 0] = 1.0
    k[BLOCK : 2 * BLOCK, 0, 0] = 1.0
    k[2 * BLOCK - 1, 0, 0] = 1.125
    k[2 * BLOCK :, 0, 0] = 0.5
    assert torch.equal(k.bfloat16().float(), k)
    return q.to(dtype), k.to(dtype)


def test_draft_mask_rounds_in_the_compute_dtype_at_a_near_tie() -> None:
    """Budget k' = 1: the threshold is the 2nd largest probability and only entries strictly above
    it are kept. In fp32 the second block wins by 2**-10 (as the official fp32 run computes); in bf16
    its mean rounds to a tie with the first block, so nothing is strictly above (official bf16)."""
    geom = BlockGeometry(blocks_h=1, blocks_w=1, topk=1, local_range=1)
    q, k = _near_tie(torch.float32)
    fp32 = draft_block_mask(q, k, geom)[0, 0]
    assert fp32.tolist() == [False, True, False]
    q, k = _near_tie(torch.bfloat16)
    assert not draft_block_mask(q, k, geom).any()
    for dtype in (torch.float32, torch.bfloat16):  # both agree with the spec loop in that dtype
        q, k = _near_tie(dtype)
        assert torch.equal(draft_block_mask(q, k, geom), _spec_draft_mask(q, k, geom))


def test_reference_attention_with_a_full_mask_is_dense_attention() -> None:
    q, k, v = _qkv(2 * BLOCK, 3 * BLOCK, heads=2)
    mask = torch.ones(2, 2, 3, dtype=torch.bool)
    got = block_sparse_attention_reference(q, k, v, mask)
    want = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)
    )
    torch.testing.assert_close(got, want.transpose(0, 1), atol=1e-5, rtol=1e-5)


def test_reference_attention_uses_only_selected_blocks_and_zeroes_empty_rows() -> None:
    q, k, v = _qkv(3 * BLOCK, 4 * BLOCK, heads=2, seed=3)
    mask = torch.tensor(
        [[[1, 0, 1, 0], [0, 0, 0, 0], [0, 1, 1, 1]], [[1, 1, 1, 1], [0, 0, 0, 1], [0, 0, 0, 0]]],
        dtype=torch.bool,
    )
    got = block_sparse_attention_reference(q.bfloat16(), k.bfloat16(), v.bfloat16(), mask)
    assert got.dtype == torch.bfloat16
    for h in range(2):
        for i in range(3):
            rows = slice(i * BLOCK, (i + 1) * BLOCK)
            sel = mask[h, i].nonzero().flatten().tolist()
            if not sel:
                assert (got[rows, h] == 0).all()
                continue
            idx = torch.cat([torch.arange(j * BLOCK, (j + 1) * BLOCK) for j in sel])
            qh, kh, vh = (t.bfloat16().float() for t in (q[rows, h], k[idx, h], v[idx, h]))
            want = torch.softmax(qh @ kh.T / math.sqrt(32), -1) @ vh
            torch.testing.assert_close(got[rows, h].float(), want, atol=2e-2, rtol=2e-2)


def test_reference_backend_keeps_a_sliding_cache_of_kv_chunks() -> None:
    geom = BlockGeometry(blocks_h=1, blocks_w=2, topk=10, local_range=3, kv_chunks=3)
    chunk = geom.blocks_per_chunk * BLOCK
    backend = ReferenceBackend()
    q, k, v = _qkv(3 * chunk, 3 * chunk)
    assert backend.attend(0, q, k, v, geom).shape == q.shape
    assert backend.cached_chunks(0, geom) == 3
    for step in range(3):
        q, k, v = _qkv(chunk, chunk, seed=10 + step)
        backend.attend(0, q, k, v, geom)
        assert backend.cached_chunks(0, geom) == 3
        assert torch.equal(backend._k[0][-chunk:], k)  # newest last, oldest evicted
    assert backend.cached_chunks(1, geom) == 0
    backend.reset()
    assert backend.cached_chunks(0, geom) == 0


def test_flex_backend_matches_the_reference_on_cpu() -> None:
    geom = BlockGeometry(blocks_h=1, blocks_w=2, topk=5, local_range=3)
    chunk = geom.blocks_per_chunk * BLOCK
    ref, flex = ReferenceBackend(), FlexBackend(compile=False)
    for step, n in enumerate((3, 1, 1)):
        q, k, v = _qkv(n * chunk, n * chunk, seed=20 + step)
        want = ref.attend(0, q, k, v, geom)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "flex_attention called without torch.compile()"
            got = flex.attend(0, q, k, v, geom)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_make_backend_names() -> None:
    assert isinstance(make_backend("reference", "cpu"), ReferenceBackend)
    assert isinstance(make_backend("auto", "cpu"), ReferenceBackend)
    assert isinstance(make_backend("flex", "cpu"), FlexBackend)
    with pytest.raises(ValueError, match="needs a CUDA device"):
        make_backend("cupy", "cpu")
    with pytest.raises(ValueError, match="got 'dense'"):
        make_backend("dense", "cpu")
