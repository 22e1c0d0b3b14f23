"""The six functions' tensor shapes, written once: every backend checks its arguments against them
before it reads a tensor, so a state of the wrong batch or saved gates of the wrong length is an
error that names the argument, never a read past a tensor or a gradient of the wrong size."""

from __future__ import annotations

import torch

# each argument's dimensions, by name; "4H" is four blocks of H (the gates), "P" the recurrent width
# (H, or the LSTM's projection). A backward reads its sizes off what the forward saved first
SHAPES: dict[str, dict[str, tuple[str, ...]]] = {
    "rnn_fwd": {"gx": ("T", "B", "D", "H"), "w_hh": ("D", "H", "H"), "h0": ("D", "B", "H"),
                "lengths": ("B",)},
    "rnn_bwd": {"y": ("T", "B", "D", "H"), "w_hh": ("D", "H", "H"), "dy": ("T", "B", "D", "H"),
                "dh_n": ("D", "B", "H"), "lengths": ("B",)},
    "lstm_fwd": {"gx": ("T", "B", "D", "4H"), "w_hh": ("D", "4H", "P"), "h0": ("D", "B", "P"),
                 "c0": ("D", "B", "H"), "w_hr": ("D", "P", "H"), "lengths": ("B",)},
    "lstm_bwd": {"gates": ("T", "B", "D", "4H"), "c_steps": ("T", "B", "D", "H"), "w_hh": ("D", "4H", "P"),
                 "dy": ("T", "B", "D", "P"), "dh_n": ("D", "B", "P"), "dc_n": ("D", "B", "H"),
                 "w_hr": ("D", "P", "H"), "c0": ("D", "B", "H"), "lengths": ("B",)},
    "gru_fwd": {"gx": ("T", "B", "D", "3H"), "w_hh": ("D", "3H", "H"), "b_hn": ("D", "H"),
                "h0": ("D", "B", "H"), "lengths": ("B",)},
    "gru_bwd": {"gates": ("T", "B", "D", "3H"), "ghn": ("T", "B", "D", "H"), "y": ("T", "B", "D", "H"),
                "dy": ("T", "B", "D", "H"), "dh_n": ("D", "B", "H"), "w_hh": ("D", "3H", "H"),
                "h0": ("D", "B", "H"), "lengths": ("B",)},
}  # fmt: skip
NONLINEARITIES = ("tanh", "relu")


def check_shapes(fn: str, nonlinearity: str | None = None, **tensors: torch.Tensor | None) -> None:
    """Raise ValueError unless every tensor given to ``fn`` (one of `SHAPES`) has its shape, read
    against the others (T, B, D, H and P from the first tensor that has each), and the device of the
    first; and unless an RNN's ``nonlinearity`` is "tanh" or "relu". None is an absent tensor.
    Nothing is checked while a graph is traced, where shapes may be symbolic (the operators check
    them when they run)."""
    if nonlinearity is not None and nonlinearity not in NONLINEARITIES:
        raise ValueError(f"{fn}: nonlinearity: expected 'tanh' or 'relu', got {nonlinearity!r}")
    if torch.compiler.is_compiling():
        return
    sizes: dict[str, tuple[int, str]] = {}  # symbol -> (its size, the argument it was read from)
    device = None
    for name, dims in SHAPES[fn].items():
        t = tensors.get(name)
        if t is None:
            continue
        if device is None:
            device = (t.device, name)
        elif t.device != device[0]:
            raise ValueError(
                f"{fn}: {name}: expected a tensor on {device[0]} (as {device[1]}), got {t.device}"
            )
        legend = f"[{', '.join(dims)}]"
        if t.dim() != len(dims):
            raise ValueError(f"{fn}: {name}: expected shape {legend}, got {list(t.shape)}")
        for dim, size in zip(dims, t.shape, strict=True):
            blocks, symbol = (int(dim[:-1]), dim[-1]) if dim[0].isdigit() else (1, dim)
            if size % blocks:
                raise ValueError(
                    f"{fn}: {name}: expected shape {legend}, got {list(t.shape)} ({size} is no {dim})"
                )
            known = sizes.setdefault(symbol, (size // blocks, name))
            if known[0] != size // blocks:
                raise ValueError(
                    f"{fn}: {name}: expected shape {legend} with {symbol} = {known[0]} (from {known[1]}), "
                    f"got {list(t.shape)}"
                )
    projected = tensors.get("w_hr") is not None or "w_hr" not in SHAPES[fn]
    if "P" in sizes and not projected and sizes["P"][0] != sizes["H"][0]:
        raise ValueError(
            f"{fn}: w_hh: expected P = H = {sizes['H'][0]} without a projection (w_hr None), got P = "
            f"{sizes['P'][0]} (from {sizes['P'][1]})"
        )
