"""`host_kernels`: run kernels.py's CUDA kernels on the CPU through the harness in cuda_host.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.kernels import cuda_host


@pytest.fixture
def host_kernels() -> Iterator[list[tuple[str, str]]]:
    """Within the test, kernels.block_mean_pool / block_select / block_sparse_attn execute the real
    kernels/*.cu on CPU tensors (compiled with g++); yields the (source, kernel) launches made."""
    if not cuda_host.available():
        pytest.skip(f"needs a C++20 compiler ({cuda_host.CXX}) for the CUDA host harness")
    with cuda_host.on_cpu() as launched:
        yield launched
    assert launched, "the test launched no kernel on the host harness"
