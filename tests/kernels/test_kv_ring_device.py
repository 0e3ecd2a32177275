"""Devices given by name ("cuda", "cpu:0") against the indexed devices tensors report ("cuda:0", "cpu").

`livevsr bench attention` built ``KVRing(..., "cuda")`` and ``write()`` then rejected every chunk,
since ``torch.device("cuda:0") != torch.device("cuda")``. The same mismatch is shown on the CPU by
"cpu:0" (a ring built on it holds tensors that report "cpu"), and the CUDA rule by the normaliser.
"""

from __future__ import annotations

import pytest
import torch

from livevsr.engines.flashvsr import kernels


def test_same_device_fills_in_the_current_cuda_index(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert kernels.same_device("cuda", torch.device("cuda:1"))
    assert kernels.same_device(torch.device("cuda:1"), "cuda")
    assert not kernels.same_device("cuda", "cuda:0")
    assert kernels.canonical_device("cuda") == torch.device("cuda:1")
    assert kernels.canonical_device("cuda:0") == torch.device("cuda:0")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert kernels.same_device(torch.device("cuda"), torch.device("cuda:0"))  # the bench's case


def test_same_device_on_the_cpu_and_across_types() -> None:
    assert torch.device("cpu:0") != torch.device("cpu")  # what plain comparison gets wrong
    assert kernels.same_device("cpu:0", "cpu")
    assert kernels.same_device(torch.empty(1, device="cpu:0").device, "cpu:0")
    assert not kernels.same_device("cpu", "cuda:0")
    assert not kernels.same_device("cuda:0", "cuda:1")
    assert kernels.canonical_device("cpu") == torch.device("cpu")


def test_kv_ring_on_a_device_named_with_its_index_takes_its_own_tensors() -> None:
    ring = kernels.KVRing(layers=1, blocks_per_chunk=1, heads=2, device="cpu:0")
    k = torch.randn(128, 2, 128).to(torch.bfloat16)  # on "cpu", as the ring's own tensors report
    assert ring.k.device == k.device
    assert ring.write(0, k, -k) == 0
    assert torch.equal(ring.k[0, 0], k)
    with pytest.raises(ValueError, match="expected a tensor on cpu"):
        ring.write(0, k.to("meta"), k)
