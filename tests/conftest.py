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


@pytest.fixture
def poisoned(monkeypatch):
    """Kernel outputs and scratch start as NaN: a slot a kernel leaves unwritten fails the test."""
    from kernels import _config

    monkeypatch.setattr(_config, "POISON_OUTPUTS", True)
