"""Input checks shared by the functional API and the layers: every error names the argument,
what was expected and what was given. Nothing is silently cast, broadcast or truncated."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def check_tensor(
    name: str,
    t: object,
    shape: Sequence[int],
    legend: str,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Raise a clear error unless ``t`` is a tensor of exactly ``shape`` (dtype, device)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor of shape {legend}, got {type(t).__name__}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {legend} = {list(shape)}, got {list(t.shape)}")
    check_dtype_device(name, t, dtype, device)
    return t


def check_dtype_device(
    name: str, t: torch.Tensor, dtype: torch.dtype | None, device: torch.device | None
) -> None:
    if dtype is not None and t.dtype != dtype:
        raise TypeError(
            f"{name}: expected dtype {dtype} (the dtype of the input and the weights), "
            f"got {t.dtype}; convert it with .to({dtype})"
        )
    if device is not None and t.device != device:
        raise ValueError(f"{name}: expected a tensor on {device} (where the input is), got one on {t.device}")


def check_floating(name: str, t: torch.Tensor) -> None:
    if not t.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {t.dtype}")


def check_lengths(
    lengths: torch.Tensor | Sequence[int] | None, batch: int, device: torch.device
) -> torch.Tensor | None:
    """Check the type and shape of per-sequence lengths; return them as int64 on ``device``.

    Their values (each in [1, T]) are checked by the operator that uses them
    (`rnnkit.ops.check_length_values`), where the values exist even under `torch.compile`.
    """
    if lengths is None:
        return None
    if not isinstance(lengths, torch.Tensor):
        lengths = torch.as_tensor(lengths)
    if lengths.dtype.is_floating_point or lengths.dtype.is_complex or lengths.dtype == torch.bool:
        raise TypeError(f"lengths: expected an integer tensor, got dtype {lengths.dtype}")
    if tuple(lengths.shape) != (batch,):
        raise ValueError(
            f"lengths: expected shape [B] = [{batch}] (one length per sequence), got {list(lengths.shape)}"
        )
    return lengths.to(device=device, dtype=torch.int64)
