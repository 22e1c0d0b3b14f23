"""Input checks shared by the functional API and the layers: every error names the argument,
what was expected and what was given. Nothing is silently cast, broadcast or truncated."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch


class InputError(ValueError, RuntimeError):
    """A tensor of the wrong shape, size or device, or a bad setting, where torch.nn raises
    RuntimeError: ``except ValueError`` (rnnkit's type) and ``except RuntimeError`` (torch's) both
    catch it, and its message ends with torch's own words for it."""


class DtypeError(TypeError, ValueError, RuntimeError):
    """A dtype unlike the weights'. torch.nn raises ValueError for a layer's input, RuntimeError for
    an initial state or a cell's input; rnnkit raised TypeError: each of the three catches it."""


def _with(message: str, torch_says: str | None) -> str:
    # rnnkit's message, then torch.nn's words, so that a pattern written for torch's still matches
    return message if torch_says is None else f"{message} ({torch_says})"


def check_tensor(
    name: str,
    t: object,
    shape: Sequence[int],
    legend: str,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | None = None,
    torch_says: str | None = None,
) -> torch.Tensor:
    """Raise a clear error unless ``t`` is a tensor of exactly ``shape`` (dtype, device);
    ``torch_says``: torch.nn's message for the wrong shape, appended to it."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor of shape {legend}, got {type(t).__name__}")
    if tuple(t.shape) != tuple(shape):
        message = f"{name}: expected shape {legend} = {list(shape)}, got {list(t.shape)}"
        raise InputError(_with(message, torch_says))
    check_dtype_device(name, t, dtype, device)
    return t


def check_dtype_device(
    name: str,
    t: torch.Tensor,
    dtype: torch.dtype | None,
    device: torch.device | None,
    torch_says: str | None = None,
) -> None:
    if dtype is not None and t.dtype != dtype:
        message = (
            f"{name}: expected dtype {dtype} (the dtype of the input and the weights), "
            f"got {t.dtype}; convert it with .to({dtype})"
        )
        raise DtypeError(_with(message, torch_says))
    if device is not None and t.device != device:
        raise InputError(f"{name}: expected a tensor on {device} (where the input is), got one on {t.device}")


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


class ArgumentError(ValueError):
    """A bad setting of a command or a config: ``argument`` names it (a config field, which the
    command line shows as its ``--option``), the message says what was expected and what was given."""

    def __init__(self, argument: str, detail: str) -> None:
        super().__init__(f"{argument}: {detail}")
        self.argument = argument
        self.detail = detail


def check_at_least(argument: str, value: int | float | None, least: int | float, what: str = "") -> None:
    """``value`` must be at least ``least`` (None: not set, nothing to check)."""
    if value is not None and value < least:
        raise ArgumentError(argument, f"expected {what or f'at least {least}'}, got {value}")


def check_probability(argument: str, p: object, *, one: bool = False) -> float:
    """A dropout-like probability in [0, 1) (1 would drop everything), as a float; with ``one``, in
    [0, 1] (a mask's probability, where 1 is every unit)."""
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not (0 <= p <= 1 if one else 0 <= p < 1):
        raise ValueError(f"{argument}: expected a probability in [0, {'1]' if one else '1)'}, got {p!r}")
    return float(p)


def check_choice(argument: str, value: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ArgumentError(argument, f"expected one of {', '.join(choices)}, got {value!r}")
    return value


def check_device(name: str, argument: str = "device") -> torch.device:
    """The device ``name`` names, if this machine has it: "cpu", "cuda" or "cuda:N" (or "meta")."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ArgumentError(argument, f"expected cpu, cuda or cuda:N, got {name!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ArgumentError(argument, f"{name!r}: this machine has no CUDA GPU (or torch is a CPU build)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ArgumentError(
                argument, f"{name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    elif device.type not in ("cpu", "meta"):
        raise ArgumentError(argument, f"expected cpu, cuda or cuda:N, got {name!r}")
    return device


def check_output_path(path: str | Path, argument: str, *, folder: bool) -> Path:
    """A place a command will write to (a folder, or a file), checked before any work: it can be
    created, nothing in the way is a file (or a folder), and it is writable. Creates nothing."""
    path = Path(path)
    if path.exists():
        if folder and not path.is_dir():
            raise ArgumentError(argument, f"{path} is a file, not a folder")
        if not folder and path.is_dir():
            raise ArgumentError(argument, f"{path} is a folder, not a file")
        if not os.access(path if folder else path.parent, os.W_OK):
            raise ArgumentError(argument, f"{path} is not writable")
        return path
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ArgumentError(argument, f"cannot create {path}: {parent} is a file")
    if not os.access(parent, os.W_OK):
        raise ArgumentError(argument, f"cannot create {path}: {parent} is not writable")
    return path


def check_where(device: str, backend: str) -> torch.device:
    """The device a command computes on, and that ``backend`` can run there: `ArgumentError` naming
    --device or --backend otherwise (before any work)."""
    from rnnkit.backends import BackendUnavailableError, backend_name

    where = check_device(device, "device")
    try:
        backend_name(backend, where)
    except BackendUnavailableError as err:
        raise ArgumentError("backend", str(err).removeprefix("backend ")) from None
    except ValueError as err:
        raise ArgumentError("backend", str(err).split(": ", 1)[-1]) from None
    return where
