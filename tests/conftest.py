import os

import pytest
import torch

# Without a GPU the Triton kernels run on the CPU interpreter; it must be chosen before triton is
# imported (it decides what @triton.jit builds).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none on this machine)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _ieee_fp32_on_gpu():
    """fp32 comparisons on a GPU hold to ~1e-5 only with IEEE products on both sides: TF32 off for
    cuDNN (torch.nn's RNNs, and rnnkit's layers, which follow its flag as torch.nn does) and for
    torch's matmuls (rnnkit's input projection and weight gradients). Tests of TF32 turn it on."""
    if not torch.cuda.is_available():
        yield
        return
    from tests._testing import tf32_flags

    with tf32_flags(cudnn=False, matmul=False):
        yield


@pytest.fixture
def poisoned(monkeypatch):
    """Kernel outputs and scratch start as NaN: a slot a kernel leaves unwritten fails the test."""
    from kernels import _config

    monkeypatch.setattr(_config, "POISON_OUTPUTS", True)


@pytest.fixture
def tiny_mnist(tmp_path, monkeypatch):
    from tests._data import make_tiny_mnist

    return make_tiny_mnist(tmp_path, monkeypatch)
