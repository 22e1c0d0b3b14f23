"""Drop-in twins of torch.nn's recurrent layers and cells, running on rnnkit's backends.

The layers subclass `torch.nn.RNNBase`, as `torch.nn.RNN`, `LSTM` and `GRU` do, and the cells
subclass `torch.nn.RNNCell`, `LSTMCell` and `GRUCell`: the constructor, the parameter names and
shapes, the initialisation and the ``state_dict`` are torch's own; only ``forward`` is rnnkit's.
(The layers are not subclasses of `torch.nn.LSTM` and co. because `torch.compile` refuses any
module that is one.) The extra keyword ``backend`` picks the implementation (see
`rnnkit.backends`), and the layers take an optional ``lengths`` for variable-length batches
without packing.

The layers' extra keyword ``weight_drop`` regularises inside the recurrence: DropConnect on the
recurrent weights (AWD-LSTM's weight drop). In training each forward zeroes every element of each
``weight_hh`` with that probability and scales the rest by 1/(1 - p); one mask for the whole batch
and every step, so every backend runs its fused recurrence unchanged on the masked weight, and the
gradient reaches the parameter through the mask. The parameters and the ``state_dict`` stay torch's.

The LSTM's extra keyword ``cell_zoneout`` is zoneout of the cell state (`rnnkit.zoneout`): in
training each unit keeps its previous cell state at each step with that probability, at inference
the cell takes the expectation.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence
from torch.utils.hooks import RemovableHandle

from rnnkit import functional, zoneout
from rnnkit._checks import (
    InputError,
    check_dtype_device,
    check_floating,
    check_lengths,
    check_probability,
    check_tensor,
)
from rnnkit.autograd import StepGradients, StepRecord
from rnnkit.backends import check_backend_name

StepGradHook = Callable[[nn.Module, int, StepGradients], None]


@dataclass(frozen=True)
class LayerActivations:
    """What one layer computed in a forward pass (see `gate_activations`)."""

    layer: int
    gates: torch.Tensor | None  # [T, B, D, G*H] activated gates; None for RNN
    cell: torch.Tensor | None  # [T, B, D, H] LSTM cell state c_t
    y: torch.Tensor  # [T, B, D, P] hidden state h_t
    lengths: torch.Tensor | None  # [B]
    # what the recurrence is given: enough to step it again (diagnostics.lyapunov does)
    gx: torch.Tensor | None = None  # [T, B, D, G*H] x_t W_ih^T + biases (GRU: without b_hn)
    b_hn: torch.Tensor | None = None  # [D, H] GRU's b_hn, inside the reset gate
    h0: torch.Tensor | None = None  # [D, B, P] initial state (None: zeros)
    c0: torch.Tensor | None = None  # [D, B, H] LSTM initial cell state (None: zeros)


def _fold_biases(
    mode: str, b_ih: torch.Tensor | None, b_hh: torch.Tensor | None
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    # -> (bias added to gx, GRU's b_hn that stays inside the reset gate)
    if b_ih is None:
        return None, None
    if mode != "GRU":
        return b_ih + b_hh, None
    H = b_hh.shape[0] // 3
    return b_ih + torch.cat((b_hh[: 2 * H], torch.zeros_like(b_hh[2 * H :]))), b_hh[2 * H :]


def _autocast_dtype(x: torch.Tensor) -> torch.dtype | None:
    # the dtype autocast asks for on x's device, or None outside an autocast region
    device = x.device.type
    if device not in ("cpu", "cuda") or not torch.is_autocast_enabled(device):
        return None
    return torch.get_autocast_dtype(device)


def _stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    return tensors[0].unsqueeze(0) if len(tensors) == 1 else torch.stack(tensors)


def _cat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)


def _check_input(
    x: object, legend: str, ranks: tuple[int, int], features: int, like: torch.Tensor, who: str
) -> torch.Tensor:
    # ranks = (batched, unbatched); who: the class, for torch.nn's words (a cell's differ a layer's)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"input: expected a torch.Tensor of shape {legend}, got {type(x).__name__}")
    if x.dim() not in ranks:
        raise ValueError(
            f"input: expected rank {ranks[0]} {legend} or rank {ranks[1]} (unbatched), "
            f"got shape {list(x.shape)} ({who}: Expected input to be {ranks[1]}D or {ranks[0]}D, "
            f"got {x.dim()}D instead)"
        )
    check_floating("input", x)
    if x.shape[-1] != features:
        said = (
            f"input has inconsistent input_size: got {x.shape[-1]} expected {features}"
            if who.endswith("Cell")
            else f"input.size(-1) must be equal to input_size. Expected {features}, got {x.shape[-1]}"
        )
        raise InputError(
            f"input: expected {features} features (input_size) in the last dimension, "
            f"got shape {list(x.shape)} ({said})"
        )
    said = (
        None
        if who.endswith("Cell")
        else f"RNN input dtype ({x.dtype}) does not match weight dtype ({like.dtype})"
    )
    check_dtype_device("input", x, like.dtype, like.device, torch_says=said)
    return x


def _check_state(
    name: str, t: object, batched: bool, lead: int, batch: int, width: int, legend: str, x, index=None
) -> torch.Tensor:
    # batched: [lead, B, width]; unbatched: [lead, width]; index: the LSTM's h (0) or c (1)
    shape = (lead, batch, width) if batched else (lead, width)
    legend = legend if batched else legend.replace("B, ", "")
    said = None
    if isinstance(t, torch.Tensor) and not batched and t.dim() != 2:
        said = f"For unbatched 2-D input, hx should also be 2-D but got {t.dim()}-D tensor"
    elif isinstance(t, torch.Tensor):
        said = f"Expected hidden{'' if index is None else f'[{index}]'} size {shape}, got {list(t.shape)}"
    check_tensor(name, t, shape, legend, dtype=x.dtype, device=x.device, torch_says=said)
    return t if batched else t.unsqueeze(1)


def _cell_state(name: str, t: object, k: int, shape: tuple[int, ...], legend: str, x, who: str):
    # a cell's hx (k 0) or c_0 (k 1), [B, H] or [H], in torch.nn's words where its shape is wrong
    said = None
    if isinstance(t, torch.Tensor):
        if t.dim() != len(shape):
            said = f"{who}: Expected hidden to be 1D or 2D, got {t.dim()}D instead"
        elif len(shape) == 2 and t.shape[0] != shape[0]:
            said = f"Input batch size {shape[0]} doesn't match hidden{k} batch size {t.shape[0]}"
        else:
            said = f"hidden{k} has inconsistent hidden_size: got {t.shape[-1]}, expected {shape[-1]}"
    return check_tensor(name, t, shape, legend, dtype=x.dtype, device=x.device, torch_says=said)


def _check_pair(hx: object, layer: str) -> None:
    # an LSTM's hx is (h_0, c_0): a tuple or list of exactly two
    if not isinstance(hx, (tuple, list)):
        raise TypeError(f"hx: expected a tuple (h_0, c_0) for the {layer}, got {type(hx).__name__}")
    if len(hx) != 2:
        raise ValueError(f"hx: expected a tuple (h_0, c_0) of 2 tensors for the {layer}, got {len(hx)}")


class _LayerRecord(StepRecord):
    """The `StepRecord` of one layer: hands its `StepGradients` to the module's step-gradient hooks;
    active while any is registered (asked in backward: a hook registered after the forward still sees
    that backward; with none the backward records nothing)."""

    def __init__(self, module: nn.Module, layer: int) -> None:
        self.module, self.layer = module, layer

    @property
    def active(self) -> bool:
        return bool(self.module._step_grad_hooks)

    def __call__(self, grads: StepGradients) -> None:
        for hook in list(self.module._step_grad_hooks.values()):
            hook(self.module, self.layer, grads)


class _RecurrentLayer(nn.RNNBase):
    """The forward of a multi-layer, optionally bidirectional recurrent layer."""

    weight_drop: float = 0.0  # also what a module pickled before the keyword existed reads
    cell_zoneout: float = 0.0  # the LSTM's (the same)

    def __init__(
        self,
        mode: str,
        *args,
        backend: str = "auto",
        weight_drop: float = 0.0,
        cell_zoneout: float = 0.0,
        **kwargs,
    ) -> None:
        super().__init__(mode, *args, **kwargs)
        self.backend = check_backend_name(backend)
        self.weight_drop = check_probability("weight_drop", weight_drop)
        self.cell_zoneout = check_probability("cell_zoneout", cell_zoneout)
        if self.cell_zoneout and mode != "LSTM":
            raise ValueError(f"cell_zoneout: only the LSTM has a cell state to zone out, got {mode}")
        self._step_grad_hooks: OrderedDict[int, StepGradHook] = OrderedDict()

    def extra_repr(self) -> str:
        s = super().extra_repr()
        s = s if self.weight_drop == 0 else f"{s}, weight_drop={self.weight_drop}"
        s = s if self.cell_zoneout == 0 else f"{s}, cell_zoneout={self.cell_zoneout}"
        return s if self.backend == "auto" else f"{s}, backend={self.backend!r}"

    def _recurrent_weight(self, layer: int, dtype: torch.dtype) -> torch.Tensor:
        # weight_hh of every direction [D, G*H, P]; in training with weight_drop, one DropConnect
        # mask for this forward (the batch and all its steps), independent per layer and direction
        w_hh = _stack(self._params(layer, "weight_hh", dtype))
        if self.training and self.weight_drop > 0:
            w_hh = F.dropout(w_hh, self.weight_drop, training=True)
        return w_hh

    def register_step_grad_hook(self, hook: StepGradHook) -> RemovableHandle:
        """Call ``hook(module, layer, StepGradients)`` for every layer during backward.

        The hook sees each step's total gradient dL/dh_t (and dL/dc_t for the LSTM) that the
        backward pass computes anyway; with no hook registered nothing extra is kept.

        Returns:
            A handle whose ``remove()`` unregisters the hook.

        Example:
            >>> norms = {}
            >>> lstm.register_step_grad_hook(lambda m, layer, g: norms.__setitem__(layer, g.h.norm(dim=-1)))
        """
        if not callable(hook):
            raise TypeError(
                f"hook: expected a callable hook(module, layer, grads), got {type(hook).__name__} {hook!r}"
            )
        handle = RemovableHandle(self._step_grad_hooks)
        self._step_grad_hooks[handle.id] = hook
        return handle

    def _record_for(self, layer: int) -> _LayerRecord | None:
        # under a compiler only where a hook would be called: `functional` then refuses the call
        if torch.compiler.is_compiling() and not self._step_grad_hooks:
            return None
        return _LayerRecord(self, layer)

    @property
    def _directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def _width(self) -> int:
        # the recurrent width P: what h is (proj_size for a projected LSTM)
        return self.proj_size if getattr(self, "proj_size", 0) > 0 else self.hidden_size

    def _params(self, layer: int, kind: str, dtype: torch.dtype | None = None) -> list[torch.Tensor]:
        params = [getattr(self, f"{kind}_l{layer}{s}") for s in ("", "_reverse")[: self._directions]]
        return [p if dtype in (None, p.dtype) else p.to(dtype) for p in params]

    def _input_projection(self, layer: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        # x [T, B, I] -> gx [T, B, D, G*H] in one matrix product for every step and direction;
        # the parameters in x's dtype (they differ only under autocast)
        T, B, _ = x.shape
        dtype = x.dtype
        folded = [(None, None)] * self._directions
        if self.bias:
            pairs = zip(
                self._params(layer, "bias_ih", dtype), self._params(layer, "bias_hh", dtype), strict=True
            )
            folded = [_fold_biases(self.mode, b_ih, b_hh) for b_ih, b_hh in pairs]
        b_gx = None if folded[0][0] is None else _cat([b for b, _ in folded])
        b_hn = None if folded[0][1] is None else _stack([b for _, b in folded])
        gx = functional.linear(x, _cat(self._params(layer, "weight_ih", dtype)), b_gx, backend=self.backend)
        return gx.view(T, B, self._directions, gx.shape[-1] // self._directions), b_hn

    def _recurrence(self, layer, x, h0, c0, lengths, record):
        gx, b_hn = self._input_projection(layer, x)
        w_hh = self._recurrent_weight(layer, x.dtype)
        zoned = None
        if self.mode == "LSTM" and self.cell_zoneout > 0 and self.training:  # masks; at inference
            zoned = zoneout.sample(gx, self.cell_zoneout)  # the expectation
            gx = zoneout.zone_gates(gx, zoned)

        def recompute_gx() -> torch.Tensor:  # for a double backward: gx again, from x (kept anyway)
            again = self._input_projection(layer, x)[0]
            return again if zoned is None else zoneout.zone_gates(again, zoned)

        kw = {"lengths": lengths, "backend": self.backend, "record": record, "recompute_gx": recompute_gx}
        if self.mode == "LSTM":
            w_hr = _stack(self._params(layer, "weight_hr", x.dtype)) if self.proj_size > 0 else None
            expected = 0.0 if self.training else self.cell_zoneout
            return functional.lstm(gx, w_hh, h0, c0, w_hr=w_hr, zoneout=expected, **kw)
        if self.mode == "GRU":
            return (*functional.gru(gx, w_hh, b_hn, h0, **kw), None)
        nonlinearity = "tanh" if self.mode == "RNN_TANH" else "relu"
        return (*functional.rnn(gx, w_hh, h0, nonlinearity=nonlinearity, **kw), None)

    def _initial_states(self, hx, batched: bool, batch: int, x: torch.Tensor):
        if hx is None:
            return None, None
        lead = self.num_layers * self._directions
        legend_c = "[num_layers*num_directions, B, H]"
        legend_h = legend_c if self._width == self.hidden_size else legend_c.replace("H]", "P]")
        if self.mode == "LSTM":
            _check_pair(hx, "LSTM")
            h0 = _check_state("h_0", hx[0], batched, lead, batch, self._width, legend_h, x, 0)
            c0 = _check_state("c_0", hx[1], batched, lead, batch, self.hidden_size, legend_c, x, 1)
            return h0, c0
        return _check_state("hx", hx, batched, lead, batch, self.hidden_size, legend_h, x), None

    def _prepare(self, input, hx, lengths):
        # -> x [T, B, I] time-major, h0, c0 [num_layers*D, B, ...] or None, lengths [B] or None, batched
        weight = self.weight_ih_l0
        if isinstance(input, PackedSequence):
            if lengths is not None:
                raise ValueError("lengths: a PackedSequence carries its own lengths; pass one or the other")
            x, lengths = pad_packed_sequence(input)
            _check_input(x, "[T, B, I]", (3, 3), self.input_size, weight, type(self).__name__)
            batched = True
        else:
            legend = "[B, T, I]" if self.batch_first else "[T, B, I]"
            x = _check_input(input, legend, (3, 2), self.input_size, weight, type(self).__name__)
            batched = x.dim() == 3
            if not batched:
                x = x.unsqueeze(1)
            elif self.batch_first:
                x = x.transpose(0, 1)
        T, B, _ = x.shape
        if T == 0:
            raise ValueError(f"input: the sequence is empty (T = 0), got shape {list(x.shape)}")
        h0, c0 = self._initial_states(hx, batched, B, x)
        cast = _autocast_dtype(x)  # as torch.nn: under autocast the layer computes in its dtype
        if cast is not None and cast != x.dtype:
            x, h0, c0 = (None if t is None else t.to(cast) for t in (x, h0, c0))
        return x, h0, c0, check_lengths(lengths, B, x.device), batched

    @torch.no_grad()
    def gate_activations(
        self,
        input: torch.Tensor | PackedSequence,
        hx: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None = None,
        *,
        lengths: torch.Tensor | Sequence[int] | None = None,
    ) -> list[LayerActivations]:
        """Every layer's gate activations for this input (no dropout or weight drop, no graph), for
        diagnostics. With ``cell_zoneout`` p, the gates the cell applies at inference: i scaled by
        1 - p, f = p + (1 - p) σ(a_f).

        Args:
            input, hx, lengths: as for ``forward``.

        Returns:
            One `LayerActivations` per layer, tensors time-major: gates [T, B, D, G*H]
            (LSTM i, f, g, o; GRU r, z, n; None for RNN), cell [T, B, D, H] (LSTM c_t),
            y [T, B, D, P]; every per-step tensor is zero past a sequence's length. Also what the
            recurrence was given (gx, GRU's b_hn, h0, c0), so that it can be stepped again.

        Example:
            >>> acts = lstm.gate_activations(x)
            >>> forget = acts[0].gates[..., lstm.hidden_size : 2 * lstm.hidden_size]
        """
        x, h0, c0, lengths, _ = self._prepare(input, hx, lengths)
        T, B, _ = x.shape
        D = self._directions
        result = []
        layer_input = x
        for layer in range(self.num_layers):
            states = slice(layer * D, (layer + 1) * D)
            gx, b_hn = self._input_projection(layer, layer_input)
            w_hh = _stack(self._params(layer, "weight_hh", x.dtype))
            w_hr = _stack(self._params(layer, "weight_hr", x.dtype)) if self.proj_size > 0 else None
            h0_l, c0_l = (None if h0 is None else h0[states]), (None if c0 is None else c0[states])
            y, gates, cell = functional.activations(
                self.mode, gx, w_hh, h0_l, c0_l, w_hr=w_hr, b_hn=b_hn, lengths=lengths,
                backend=self.backend, zoneout=self.cell_zoneout,
            )  # fmt: skip
            acts = LayerActivations(
                layer, gates, cell, y, lengths, gx, b_hn,
                None if h0 is None else h0[states], None if c0 is None else c0[states],
            )  # fmt: skip
            result.append(acts)
            layer_input = acts.y.reshape(T, B, D * self._width)
        return result

    def _fused_inference(self, x, h0, c0, lengths):
        # the whole stack in one fused call where the backend has one (the CPU backend's inference),
        # and nothing of rnnkit's own runs between the layers: no dropout, weight drop or zoneout.
        # Returns (output [T, B, D*P], h_n, c_n or None), or None where the layers run one by one
        if self.training and (self.weight_drop > 0 or (self.dropout > 0 and self.num_layers > 1)):
            return None
        if self.cell_zoneout > 0:  # masks in training, the expectation at inference: rnnkit's own
            return None
        shape = {"num_layers": self.num_layers, "bidirectional": self.bidirectional}
        return functional.layer_stack(
            self.mode, x, self._flat_weights, h0, c0, lengths, bias=self.bias, **shape,
            width=self._width, hidden=self.hidden_size, backend=self.backend,
        )  # fmt: skip

    def _layers(self, x, h0, c0, lengths):
        # rnnkit's recurrence, layer by layer: (output [T, B, D*P], h_n, c_n or None)
        T, B, _ = x.shape
        D = self._directions
        h_n, c_n = [], []
        layer_input = x
        for layer in range(self.num_layers):
            states = slice(layer * D, (layer + 1) * D)
            y, h, c = self._recurrence(
                layer,
                layer_input,
                None if h0 is None else h0[states],
                None if c0 is None else c0[states],
                lengths,
                self._record_for(layer),
            )
            h_n.append(h)
            c_n.append(c)
            layer_input = y.reshape(T, B, D * self._width)
            if layer < self.num_layers - 1 and self.dropout > 0 and self.training:
                layer_input = F.dropout(layer_input, self.dropout, training=True)
        return layer_input, torch.cat(h_n), torch.cat(c_n) if self.mode == "LSTM" else None

    def forward(
        self,
        input: torch.Tensor | PackedSequence,
        hx: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None = None,
        *,
        lengths: torch.Tensor | Sequence[int] | None = None,
    ):
        """Run every layer over the sequence, as the torch.nn twin does.

        Inference on the CPU backend (no gradient asked for, no dropout, no autocast) runs torch's own
        fused recurrence, as torch.nn does: it keeps nothing for a backward and records nothing, so
        rnnkit's explicit loop would compute the same numbers slower. Anything else (training, the
        per-step record, the Triton kernels, the reference) runs rnnkit's recurrence.

        Args:
            input: [T, B, I] ([B, T, I] with batch_first), [T, I] unbatched, or a PackedSequence.
            hx: initial state [num_layers*D, B, P] (unbatched: [num_layers*D, P]); for the LSTM a
                tuple (h_0, c_0) with c_0 [num_layers*D, B, H]. None: zeros.
            lengths: [B] valid steps per sequence, for padded input without packing: outputs
                past a length are zero and h_n is each sequence's state at its own last step.

        Returns:
            (output, h_n) for RNN and GRU, (output, (h_n, c_n)) for LSTM, shaped as torch.nn's:
            output [T, B, D*P] (or a PackedSequence), h_n [num_layers*D, B, P].
        """
        x, h0, c0, lengths, batched = self._prepare(input, hx, lengths)
        fused = self._fused_inference(x, h0, c0, lengths)
        output, h_n, c_n = fused if fused is not None else self._layers(x, h0, c0, lengths)
        if isinstance(input, PackedSequence):
            order = input.sorted_indices
            lengths_cpu = lengths.cpu()
            y_sorted = output if order is None else output.index_select(1, order)
            lens = lengths_cpu if order is None else lengths_cpu[order.cpu()]
            data = pack_padded_sequence(y_sorted, lens, enforce_sorted=True).data
            output = PackedSequence(data, input.batch_sizes, input.sorted_indices, input.unsorted_indices)
        elif not batched:
            output, h_n = output.squeeze(1), h_n.squeeze(1)
            c_n = None if c_n is None else c_n.squeeze(1)
        elif self.batch_first:
            output = output.transpose(0, 1)
        return (output, (h_n, c_n)) if self.mode == "LSTM" else (output, h_n)


class RNN(_RecurrentLayer):
    """`torch.nn.RNN` (tanh or relu) on rnnkit's backends; extra keywords ``backend`` and
    ``weight_drop`` (DropConnect on weight_hh in training; see the module's docstring).

    Example:
        >>> rnn = RNN(10, 20, num_layers=2, nonlinearity="relu")
        >>> output, h_n = rnn(torch.randn(5, 3, 10))  # [5, 3, 20], [2, 3, 20]
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        nonlinearity: str = "tanh",
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device=None,
        dtype=None,
        *,
        backend: str = "auto",
        weight_drop: float = 0.0,
        proj_size: int | None = None,
    ) -> None:
        if proj_size is not None:  # torch.nn's RNN takes the keyword to refuse it
            raise ValueError(
                "proj_size: only the LSTM has a projection, not the RNN (proj_size argument is only "
                "supported for LSTM, not RNN or GRU)"
            )
        modes = {"tanh": "RNN_TANH", "relu": "RNN_RELU"}
        if nonlinearity not in modes:
            raise ValueError(
                f"nonlinearity: expected 'tanh' or 'relu', got {nonlinearity!r} "
                f"(Unknown nonlinearity {nonlinearity!r}. Select from 'tanh' or 'relu'.)"
            )
        self.nonlinearity = nonlinearity
        super().__init__(
            modes[nonlinearity],
            input_size,
            hidden_size,
            num_layers,
            bias,
            batch_first,
            dropout,
            bidirectional,
            device=device,
            dtype=dtype,
            backend=backend,
            weight_drop=weight_drop,
        )


class LSTM(_RecurrentLayer):
    """`torch.nn.LSTM` (with proj_size) on rnnkit's backends; extra keywords ``backend``,
    ``weight_drop`` (DropConnect on weight_hh in training) and ``cell_zoneout`` (zoneout of the cell
    state; see the module's docstring and `rnnkit.zoneout`).

    Arguments as torch.nn.LSTM's, by position or keyword: input_size, hidden_size, num_layers=1,
    bias=True, batch_first=False, dropout=0.0, bidirectional=False, proj_size=0, device, dtype.

    Example:
        >>> lstm = LSTM(6, 200, bidirectional=True)
        >>> output, (h_n, c_n) = lstm(torch.randn(100, 30, 6))  # [100, 30, 400], [2, 30, 200]
    """

    def __init__(
        self, *args, backend: str = "auto", weight_drop: float = 0.0, cell_zoneout: float = 0.0, **kwargs
    ) -> None:
        super().__init__(
            "LSTM", *args, backend=backend, weight_drop=weight_drop, cell_zoneout=cell_zoneout, **kwargs
        )


class GRU(_RecurrentLayer):
    """`torch.nn.GRU` on rnnkit's backends; extra keywords ``backend`` and ``weight_drop``.

    Arguments as torch.nn.GRU's, by position or keyword: input_size, hidden_size, num_layers=1,
    bias=True, batch_first=False, dropout=0.0, bidirectional=False, device, dtype.

    Example:
        >>> gru = GRU(10, 20, batch_first=True)
        >>> output, h_n = gru(torch.randn(3, 5, 10))  # [3, 5, 20], [1, 3, 20]
    """

    def __init__(self, *args, backend: str = "auto", weight_drop: float = 0.0, **kwargs) -> None:
        if "proj_size" in kwargs:
            raise ValueError(
                "proj_size: only the LSTM has a projection, not the GRU (proj_size argument is only "
                "supported for LSTM, not RNN or GRU)"
            )
        super().__init__("GRU", *args, backend=backend, weight_drop=weight_drop, **kwargs)


class _RecurrentCell:
    """One step of a recurrent cell through the same recurrence as the layers (mixin)."""

    mode: str

    def __init__(self, *args, backend: str = "auto", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.backend = check_backend_name(backend)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s if self.backend == "auto" else f"{s}, backend={self.backend!r}"

    def _step(self, input, hx):
        who = type(self).__name__
        x = _check_input(input, "[B, I]", (2, 1), self.input_size, self.weight_ih, who)
        batched = x.dim() == 2
        if not batched:
            x = x.unsqueeze(0)
        B = x.shape[0]
        H = self.hidden_size
        legend, shape = ("[B, H]", (B, H)) if batched else ("[H]", (H,))
        if self.mode == "LSTM" and hx is not None:
            _check_pair(hx, "LSTMCell")
            states = [
                _cell_state(n, t, k, shape, legend, x, who)
                for k, (n, t) in enumerate(zip(("h_0", "c_0"), hx))
            ]
        else:
            states = [] if hx is None else [_cell_state("hx", hx, 0, shape, legend, x, who)]
        if not batched:
            states = [s.unsqueeze(0) for s in states]  # [1, H], as x is [1, I]
        p = self._parameters
        weights = [p["weight_ih"], p["weight_hh"], p["bias_ih"], p["bias_hh"]]
        out = functional.cell_step(self.mode, x, weights, states, backend=self.backend)
        if out is None:
            h0, c0 = [s.reshape(1, B, H) for s in states] + [None] * (2 - len(states))
            out = self._rnnkit_step(x, h0, c0)
        if not batched:
            out = tuple(t.squeeze(0) for t in out)
        return out if self.mode == "LSTM" else out[0]

    def _rnnkit_step(self, x, h0, c0):
        # the step through rnnkit's recurrence (its operators: compiled graphs, the Triton kernels)
        B = x.shape[0]
        dtype = _autocast_dtype(x) or x.dtype  # as torch.nn: under autocast, compute in its dtype

        def cast(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(dtype)

        x, h0, c0 = cast(x), cast(h0), cast(c0)
        b_gx, b_hn = _fold_biases(self.mode, cast(self.bias_ih), cast(self.bias_hh))

        def projection() -> torch.Tensor:  # [T=1, B, D=1, G*H]; again for a double backward
            gx = F.linear(x, cast(self.weight_ih), b_gx)
            return gx.view(1, B, 1, gx.shape[-1])

        gx = projection()
        w_hh = cast(self.weight_hh).unsqueeze(0)
        kw = {"backend": self.backend, "recompute_gx": projection}
        if self.mode == "LSTM":
            _, h, c = functional.lstm(gx, w_hh, h0, c0, **kw)
            out = (h[0], c[0])
        elif self.mode == "GRU":
            b_hn = None if b_hn is None else b_hn.unsqueeze(0)
            out = (functional.gru(gx, w_hh, b_hn, h0, **kw)[1][0],)
        else:
            _, h = functional.rnn(gx, w_hh, h0, nonlinearity=self.nonlinearity, **kw)
            out = (h[0],)
        return out

    def forward(self, input: torch.Tensor, hx=None):
        """One step: input [B, I] (or [I]), hx [B, H] (LSTM: a tuple (h, c)) or None.

        Returns:
            h' [B, H] for RNNCell and GRUCell, (h', c') for LSTMCell, as torch.nn's cells.
        """
        return self._step(input, hx)


class RNNCell(_RecurrentCell, nn.RNNCell):
    """`torch.nn.RNNCell` on rnnkit's backends; extra keyword ``backend``.

    Example:
        >>> cell = RNNCell(10, 20)
        >>> h = cell(torch.randn(3, 10))  # [3, 20]
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.nonlinearity not in ("tanh", "relu"):  # torch.nn finds out at the first step
            raise InputError(
                f"nonlinearity: expected 'tanh' or 'relu', got {self.nonlinearity!r} "
                f"(Unknown nonlinearity: {self.nonlinearity})"
            )

    @property
    def mode(self) -> str:
        return "RNN_TANH" if self.nonlinearity == "tanh" else "RNN_RELU"


class LSTMCell(_RecurrentCell, nn.LSTMCell):
    """`torch.nn.LSTMCell` on rnnkit's backends; extra keyword ``backend``.

    Example:
        >>> cell = LSTMCell(10, 20)
        >>> h, c = cell(torch.randn(3, 10))  # [3, 20], [3, 20]
    """

    mode = "LSTM"


class GRUCell(_RecurrentCell, nn.GRUCell):
    """`torch.nn.GRUCell` on rnnkit's backends; extra keyword ``backend``.

    Example:
        >>> cell = GRUCell(10, 20)
        >>> h = cell(torch.randn(3, 10))  # [3, 20]
    """

    mode = "GRU"
