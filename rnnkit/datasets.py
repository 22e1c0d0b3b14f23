"""Datasets read from local files, verified by checksum before use.

MNIST (and Fashion-MNIST, same format): the four canonical gzipped IDX files in a directory,
``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``, ``t10k-images-idx3-ubyte.gz``,
``t10k-labels-idx1-ubyte.gz``.
"""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np
import torch

MNIST_FILES = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class DatasetError(RuntimeError):
    """A dataset file is missing, corrupt or malformed; the message says which and what to do."""


def md5sum(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_idx(path: str | Path) -> torch.Tensor:
    """Read an IDX file (gzipped or not) into a tensor of its stored shape and type.

    Example:
        >>> read_idx("mnist/t10k-labels-idx1-ubyte.gz").shape
        torch.Size([10000])
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as err:
        raise DatasetError(
            f"{path}: cannot be read as {'gzip' if path.suffix == '.gz' else 'IDX'}: {err}"
        ) from err
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DatasetError(f"{path}: not an IDX file (bad magic number {data[:4].hex()})")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    offset = 4 + 4 * ndim
    expected = offset + int(np.prod(dims)) * dtype.itemsize
    if len(data) != expected:
        raise DatasetError(f"{path}: truncated or padded: {len(data)} bytes, the header promises {expected}")
    array = np.frombuffer(data, dtype=dtype, offset=offset).reshape(dims)
    return torch.from_numpy(array.astype(dtype.newbyteorder("=")))


def load_mnist(
    data_dir: str | Path, split: str = "train", *, verify: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST images and labels from the canonical gzipped IDX files in ``data_dir``.

    Args:
        data_dir: the directory holding the four files.
        split: "train" (60,000) or "test" (10,000).
        verify: check each file's MD5 against the canonical one first.

    Returns:
        images [N, 28, 28] uint8, labels [N] int64.

    Example:
        >>> images, labels = load_mnist("../shared/data/mnist", "test")
    """
    if split not in ("train", "test"):
        raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
    prefix = "train" if split == "train" else "t10k"
    names = (f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz")
    data_dir = Path(data_dir)
    missing = [n for n in names if not (data_dir / n).is_file()]
    if missing:
        raise DatasetError(
            f"MNIST {split} split: {', '.join(missing)} not found in {data_dir}; put the canonical "
            f"gzipped IDX files there (the four: {', '.join(MNIST_FILES)})"
        )
    if verify:
        for n in names:
            actual = md5sum(data_dir / n)
            if actual != MNIST_FILES[n]:
                raise DatasetError(
                    f"{data_dir / n}: MD5 {actual}, expected {MNIST_FILES[n]}: the file is corrupt or "
                    "truncated; delete it and put the canonical file there"
                )
    images, labels = (read_idx(data_dir / n) for n in names)
    if images.shape[1:] != (28, 28) or images.shape[0] != labels.shape[0]:
        raise DatasetError(
            f"{data_dir}: images {list(images.shape)} and labels {list(labels.shape)} do not match"
        )
    return images, labels.long()
