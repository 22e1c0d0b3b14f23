"""Where the tests find the real datasets: $RNNKIT_TEST_DATA, else ../shared/data beside the checkout."""

from __future__ import annotations

import gzip
import hashlib
import os
from pathlib import Path

import numpy as np

from rnnkit import datasets


def shared_data(name: str) -> Path:
    """The folder of dataset ``name`` ("mnist", "imdb"); it may not exist (tests skip then)."""
    root = os.environ.get("RNNKIT_TEST_DATA")
    base = Path(root) if root else Path(__file__).resolve().parents[2] / "shared" / "data"
    return base / name


def write_idx(path: Path, array: np.ndarray) -> None:
    code = {np.uint8: 0x08}[array.dtype.type]
    header = bytes([0, 0, code, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


def make_tiny_mnist(tmp_path: Path, monkeypatch) -> Path:
    """96 training and 32 test 'digits': class k lights up columns 2k + 4 and 2k + 5 of every row."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "mnist"
    folder.mkdir()
    for prefix, n in (("train", 96), ("t10k", 32)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = (rng.random((n, 28, 28)) * 60).astype(np.uint8)
        for i, k in enumerate(labels):
            images[i, :, 2 * k + 4 : 2 * k + 6] = 255
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
    md5 = {
        name: (hashlib.md5((folder / name).read_bytes()).hexdigest(),
               hashlib.md5(gzip.decompress((folder / name).read_bytes())).hexdigest())
        for name in datasets.MNIST_FILES
    }  # fmt: skip
    monkeypatch.setitem(datasets.IDX_DATASETS, "mnist", (md5, ()))
    return folder
