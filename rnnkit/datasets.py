"""Datasets: downloaded once from their canonical URLs into a cache, or taken from a local
directory, and verified by checksum before use. Nothing is trained on a file that fails its check.

- MNIST and Fashion-MNIST: the four gzipped IDX files, ``train-images-idx3-ubyte.gz``,
  ``train-labels-idx1-ubyte.gz``, ``t10k-images-idx3-ubyte.gz``, ``t10k-labels-idx1-ubyte.gz``.
- IMDB (Large Movie Review Dataset): ``aclImdb_v1.tar.gz`` (the canonical archive), or the
  labelled-only repack ``aclImdb_v1_labelled.tar.gz``, or an extracted ``aclImdb/`` tree (checked
  by its file counts: 12,500 reviews in each of train/test × pos/neg).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import torch

# file -> (MD5 of the canonical .gz, MD5 of its decompressed IDX content). A file is accepted if either
# matches: a re-compressed copy (Debian's dataset-fashion-mnist) holds the same bytes once unpacked.
MNIST_FILES = {
    "train-images-idx3-ubyte.gz": ("f68b3c2dcbeaaa9fbdd348bbdeb94873", "6bbc9ace898e44ae57da46a324031adb"),
    "train-labels-idx1-ubyte.gz": ("d53e105ee54ea40749a09fcbcd1e9432", "a25bea736e30d166cdddb491f175f624"),
    "t10k-images-idx3-ubyte.gz": ("9fb629c4189551a2d022fa330f9573f3", "2646ac647ad5339dbf082846283269ea"),
    "t10k-labels-idx1-ubyte.gz": ("ec29112dd5afa0611ce80d1b7f02629c", "27ae3e4e09519cfbb04c329615203637"),
}
FASHION_MNIST_FILES = {
    "train-images-idx3-ubyte.gz": ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "f4a8712d7a061bf5bd6d2ca38dc4d50a"),
    "train-labels-idx1-ubyte.gz": ("25c81989df183df01b3e8a0aad5dffbe", "9018921c3c673c538a1fc5bad174d6f9"),
    "t10k-images-idx3-ubyte.gz": ("bef4ecab320f06d8554ea6380940ec79", "8181f5470baa50b63fa0f6fddb340f0a"),
    "t10k-labels-idx1-ubyte.gz": ("bb300cfdad3c16e7a12a480ee83cd310", "15d484375f8d13e6eb1aabb0c3f46965"),
}
IDX_DATASETS = {
    "mnist": (
        MNIST_FILES,
        ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
    ),
    "fashion-mnist": (FASHION_MNIST_FILES, ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)),
}
IMDB_URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
IMDB_ARCHIVES = {  # file name -> md5
    "aclImdb_v1.tar.gz": "7c2ac02c03563afcf9b574c7e56c153a",
    "aclImdb_v1_labelled.tar.gz": "cbaced38a2d498af0767cef4fbe4d856",
}
IMDB_REVIEWS_PER_FOLDER = 12_500
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


def default_data_dir() -> Path:
    """$RNNKIT_DATA, else $XDG_CACHE_HOME/rnnkit, else ~/.cache/rnnkit."""
    if os.environ.get("RNNKIT_DATA"):
        return Path(os.environ["RNNKIT_DATA"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rnnkit"


def download(url: str, dest: Path, md5: str, *, timeout: float = 15.0) -> Path:
    """Fetch ``url`` to ``dest`` atomically (a partial file never takes its name) and check its MD5."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as f:
            shutil.copyfileobj(response, f, length=1 << 20)
    except (OSError, urllib.error.URLError) as err:
        tmp.unlink(missing_ok=True)
        raise DatasetError(f"cannot download {url}: {err}") from err
    actual = md5sum(tmp)
    if actual != md5:
        tmp.unlink()
        raise DatasetError(f"{url}: downloaded MD5 {actual}, expected {md5}; nothing was kept")
    tmp.replace(dest)
    return dest


def _verified(path: Path, md5: str) -> Path:
    actual = md5sum(path)
    if actual != md5:
        raise DatasetError(
            f"{path}: MD5 {actual}, expected {md5}: the file is corrupt or truncated; delete it and "
            "download it again, or put the canonical file there"
        )
    return path


def _verified_idx(path: Path, gz_md5: str, raw_md5: str) -> Path:
    # the canonical .gz, a re-compressed copy of it, or the decompressed file
    if path.suffix == ".gz" and md5sum(path) == gz_md5:
        return path
    opener = gzip.open if path.suffix == ".gz" else open
    digest = hashlib.md5()
    try:
        with opener(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    except (OSError, EOFError) as err:
        raise DatasetError(
            f"{path}: cannot be read ({err}): the file is corrupt or truncated; delete it"
        ) from err
    if digest.hexdigest() != raw_md5:
        raise DatasetError(
            f"{path}: MD5 {md5sum(path)}, expected {gz_md5} (or {raw_md5} unpacked): the file is corrupt or "
            "truncated; delete it and download it again, or put the canonical file there"
        )
    return path


def ensure_idx_files(
    name: str, data_dir: str | Path | None = None, *, download_missing: bool = True
) -> dict[str, Path]:
    """The four verified IDX files of ``name`` ("mnist" or "fashion-mnist"), by canonical name.

    Looks in ``data_dir`` (default `default_data_dir()`/<name>) for each file, gzipped or not,
    downloads what is missing from the canonical URLs unless ``download_missing`` is False, and
    checks every file's MD5 (of the .gz, or of its content).
    """
    if name not in IDX_DATASETS:
        raise ValueError(f"dataset: expected one of {', '.join(IDX_DATASETS)}, got {name!r}")
    files, mirrors = IDX_DATASETS[name]
    folder = Path(data_dir) if data_dir is not None else default_data_dir() / name
    found = {}
    for file in files:
        for candidate in (folder / file, folder / file.removesuffix(".gz")):
            if candidate.is_file():
                found[file] = candidate
                break
    missing = [file for file in files if file not in found]
    errors = []
    for file in missing:
        for mirror in mirrors if download_missing else ():
            try:
                found[file] = download(mirror + file, folder / file, files[file][0])
                break
            except DatasetError as err:
                errors.append(str(err))
        else:
            why = errors[-1] if errors else "downloading is off"
            raise DatasetError(
                f"{name}: {', '.join(missing)} not in {folder} and could not be fetched ({why}). Put the "
                f"four files {', '.join(files)} in {folder} (or pass --data-dir with them)"
            )
    return {file: _verified_idx(path, *files[file]) for file, path in found.items()}


def load_idx_dataset(
    name: str, split: str = "train", data_dir: str | Path | None = None, *, download_missing: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels of MNIST or Fashion-MNIST, verified.

    Args:
        name: "mnist" or "fashion-mnist". split: "train" (60,000) or "test" (10,000).
        data_dir: the folder with the four files (default: the cache, downloading what is missing).

    Returns:
        images [N, 28, 28] uint8, labels [N] int64.

    Example:
        >>> images, labels = load_idx_dataset("mnist", "test", "../shared/data/mnist")
    """
    if split not in ("train", "test"):
        raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
    paths = ensure_idx_files(name, data_dir, download_missing=download_missing)
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(paths[f"{prefix}-images-idx3-ubyte.gz"])
    labels = read_idx(paths[f"{prefix}-labels-idx1-ubyte.gz"])
    if images.shape[1:] != (28, 28) or images.shape[0] != labels.shape[0]:
        raise DatasetError(
            f"{name}: images {list(images.shape)} and labels {list(labels.shape)} do not match"
        )
    return images, labels.long()


def load_mnist(data_dir: str | Path, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST from the canonical files in ``data_dir`` (no download): images [N, 28, 28] uint8, labels [N]."""
    return load_idx_dataset("mnist", split, data_dir, download_missing=False)


def _imdb_member(name: str) -> tuple[str, int, int] | None:
    # "aclImdb/train/pos/123_9.txt" -> ("train", label 1, id 123)
    parts = name.split("/")
    if len(parts) != 4 or parts[0] != "aclImdb" or parts[1] not in ("train", "test"):
        return None
    if parts[2] not in ("pos", "neg") or not parts[3].endswith(".txt"):
        return None
    return parts[1], int(parts[2] == "pos"), int(parts[3].split("_")[0])


def load_imdb_reviews(
    data_dir: str | Path | None = None, *, download_missing: bool = True
) -> dict[str, tuple[list[str], list[int]]]:
    """The labelled IMDB reviews, verified: {"train": (texts, labels), "test": (texts, labels)}.

    ``data_dir`` may hold ``aclImdb_v1.tar.gz`` or ``aclImdb_v1_labelled.tar.gz`` (checked by MD5)
    or an extracted ``aclImdb/`` tree (checked by its file counts). Reviews come in a fixed order
    (split, label, id), labels 1 = positive.
    """
    folder = Path(data_dir) if data_dir is not None else default_data_dir() / "imdb"
    tree = folder / "aclImdb"
    reviews: dict[str, list[tuple[int, int, str]]] = {"train": [], "test": []}
    if tree.is_dir():
        for split in ("train", "test"):
            for label, sub in ((0, "neg"), (1, "pos")):
                files = sorted((tree / split / sub).glob("*.txt"))
                if len(files) != IMDB_REVIEWS_PER_FOLDER:
                    raise DatasetError(
                        f"{tree / split / sub}: {len(files)} reviews, expected {IMDB_REVIEWS_PER_FOLDER}: "
                        "the tree is incomplete; extract the archive again"
                    )
                for f in files:
                    reviews[split].append((label, int(f.name.split("_")[0]), f.read_text(encoding="utf-8")))
    else:
        archive = next((folder / n for n in IMDB_ARCHIVES if (folder / n).is_file()), None)
        if archive is None:
            archive = folder / "aclImdb_v1.tar.gz"
            if not download_missing:
                raise DatasetError(
                    f"IMDB: no aclImdb_v1.tar.gz, aclImdb_v1_labelled.tar.gz or aclImdb/ in {folder}; "
                    "put one there (or pass --data-dir with it)"
                )
            try:
                download(IMDB_URL, archive, IMDB_ARCHIVES[archive.name])
            except DatasetError as err:
                raise DatasetError(
                    f"IMDB: {err}. Put aclImdb_v1.tar.gz (or an extracted aclImdb/) in {folder}, or pass "
                    "--data-dir with it"
                ) from err
        _verified(archive, IMDB_ARCHIVES[archive.name])
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                key = _imdb_member(member.name) if member.isfile() else None
                if key is not None:
                    text = tar.extractfile(member).read().decode("utf-8")
                    reviews[key[0]].append((key[1], key[2], text))
    result = {}
    for split, items in reviews.items():
        if len(items) != 2 * IMDB_REVIEWS_PER_FOLDER:
            raise DatasetError(f"IMDB {split}: {len(items)} reviews, expected {2 * IMDB_REVIEWS_PER_FOLDER}")
        items.sort()
        result[split] = ([t for _, _, t in items], [label for label, _, _ in items])
    return result
