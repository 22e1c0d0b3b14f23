"""Record the gradient of every step's state during an ordinary ``loss.backward()``.

The backward pass of every rnnkit layer computes δ_t = dL/dh_t (and dL/dc_t for the LSTM) for
every step anyway; the recorder asks for it through `register_step_grad_hook` and keeps only the
norms ||δ_t|| per sample: [B, T] floats per layer, direction and path. Outside the ``with`` block
no hook is registered and the backward pass keeps nothing extra.
"""

from __future__ import annotations

import copy
import functools
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from rnnkit import convert
from rnnkit.autograd import StepGradients
from rnnkit.conversion import twin


@dataclass(frozen=True)
class StepNorms:
    """Per-sample gradient norms of one layer, direction and path ("h", or "c" for the LSTM).

    Attributes:
        module: the layer's name in the model ("" for the model itself).
        mode: "RNN_TANH", "RNN_RELU", "LSTM" or "GRU".
        layer, direction: which layer of the stack and which direction (1: reverse).
        path: "h" for ||dL/dh_t||, "c" for ||dL/dc_t||.
        norms: [B, T] float64 ||δ_t|| per sample and time step (zero past a sequence's length).
        lengths: [B] valid steps per sample, or None (all T).
    """

    module: str
    mode: str
    layer: int
    direction: int
    path: str
    norms: torch.Tensor
    lengths: torch.Tensor | None

    def label(self, with_module: bool = False) -> str:
        """e.g. "l0.h", "l1r.c" (layer, r for reverse, path); "encoder.l0.h" with the module."""
        name = f"{self.module}." if with_module and self.module else ""
        return f"{name}l{self.layer}{'r' if self.direction else ''}.{self.path}"

    def by_lag(self) -> torch.Tensor:
        """[B, K]: ||δ|| k steps back from where the gradient enters each sample (NaN past it).

        Direction 0 enters at each sample's last step (t = L_b - 1, lag k at t = L_b - 1 - k);
        direction 1 runs backwards in time, so it enters at t = 0 (lag k at t = k).
        """
        B, T = self.norms.shape
        lengths = torch.full((B,), T) if self.lengths is None else self.lengths.cpu()
        k = torch.arange(T)[None, :]
        t = lengths[:, None] - 1 - k if self.direction == 0 else k.expand(B, T)
        valid = k < lengths[:, None]
        gathered = self.norms.gather(1, t.clamp(0, T - 1))
        return torch.where(valid, gathered, torch.nan)

    def mean_by_lag(self) -> torch.Tensor:
        """[K] batch-mean ||δ|| by lag (over the samples that reach it)."""
        return torch.nanmean(self.by_lag(), dim=0)

    def first_nonfinite(self) -> tuple[int, int] | None:
        """(lag k, time step t) of the first NaN or infinite ||δ|| a sample reaches, counting back from
        where the gradient enters (t of the first such sample); None when every reached one is finite."""
        by_lag = self.by_lag()
        B, K = by_lag.shape
        lengths = torch.full((B,), K) if self.lengths is None else self.lengths.cpu()
        reached = torch.arange(K)[None, :] < lengths[:, None]
        bad = reached & ~torch.isfinite(by_lag)
        if not bad.any():
            return None
        k = int(torch.nonzero(bad.any(0))[0])
        b = int(torch.nonzero(bad[:, k])[0])
        t = int(lengths[b]) - 1 - k if self.direction == 0 else k
        return k, t

    def mean_by_step(self) -> torch.Tensor:
        """[T] batch-mean ||δ_t|| by time step (over the samples whose sequence has step t)."""
        T = self.norms.shape[1]
        if self.lengths is None:
            return self.norms.mean(0)
        valid = torch.arange(T)[None, :] < self.lengths.cpu()[:, None]
        return torch.nanmean(torch.where(valid, self.norms, torch.nan), dim=0)


def norms_from_step_gradients(module: str, mode: str, layer: int, grads: StepGradients) -> list[StepNorms]:
    """Reduce one layer's `StepGradients` ([T, B, D, X]) to per-sample norms, one per direction/path."""
    lengths = None if grads.lengths is None else grads.lengths.detach().cpu()
    result = []
    for path, tensor in (("h", grads.h), ("c", grads.c)):
        if tensor is None:
            continue
        norms = torch.linalg.vector_norm(tensor.double(), dim=-1).cpu()  # [T, B, D]
        for d in range(norms.shape[2]):
            result.append(StepNorms(module, mode, layer, d, path, norms[:, :, d].T.contiguous(), lengths))
    return result


def recurrent_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every rnnkit recurrent layer in ``model`` (those that can record step gradients)."""
    return [(n, m) for n, m in model.named_modules() if hasattr(m, "register_step_grad_hook")]


def _torch_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    # torch.nn's RNN, LSTM and GRU in ``model`` (exact classes, as `rnnkit.convert` takes them)
    return [(n, m) for n, m in model.named_modules() if type(m) in (nn.RNN, nn.LSTM, nn.GRU)]


def on_rnnkit_layers(model: nn.Module) -> nn.Module:
    """``model`` itself where it has rnnkit layers; where it has only torch.nn's, a converted copy
    (`rnnkit.convert`, said once in a warning): the caller's model is never changed."""
    if recurrent_layers(model) or not _torch_layers(model):
        return model
    warnings.warn(
        f"model: {type(model).__name__} has torch.nn recurrent layers, which record no step "
        "gradients; diagnosing a copy on rnnkit's twins (rnnkit.convert), the model is not changed",
        stacklevel=3,
    )
    return convert(copy.deepcopy(model))


def _as_twin(layer: nn.Module, stand_in: nn.Module, *args, **kwargs):
    # a torch.nn layer's forward while it is recorded: its twin's, in the layer's mode
    stand_in.train(layer.training)
    return stand_in(*args, **kwargs)


class GradientFlowRecorder:
    """Collect ||dL/dh_t|| (and ||dL/dc_t||) for every rnnkit layer during backward passes.

    Args:
        model: any module containing rnnkit RNN/LSTM/GRU layers, or torch.nn's: inside the block
            each runs as rnnkit's twin on the same parameters (a warning says so), and is itself
            again after it.
        capture_inputs: also keep each layer's latest forward input, so that
            `gate_statistics` can recompute its gates (a reference to the input, no copy).

    Example:
        >>> with GradientFlowRecorder(model) as rec:
        ...     loss_fn(model(x), y).backward()
        >>> [(s.label, s.mean_by_lag()[:3]) for s in rec.records]
    """

    def __init__(self, model: nn.Module, *, capture_inputs: bool = True) -> None:
        self.model = model
        self.capture_inputs = capture_inputs
        self.layers = recurrent_layers(model)
        self._stand_ins: list[tuple[nn.Module, nn.Module]] = []  # (torch.nn layer, its twin)
        if not self.layers:
            found = _torch_layers(model)
            if not found:
                raise ValueError(
                    f"model: no recurrent layer found in {type(model).__name__} (rnnkit's or torch.nn's "
                    "RNN, LSTM, GRU)"
                )
            warnings.warn(
                f"model: {type(model).__name__} has torch.nn recurrent layers, which record no step "
                "gradients; while recording, each runs as rnnkit's twin on the same parameters "
                "(rnnkit.convert does it for good); the model is not changed",
                stacklevel=2,
            )
            self._stand_ins = [(m, twin(m)) for _, m in found]
            self.layers = [(n, t) for (n, _), (_, t) in zip(found, self._stand_ins, strict=True)]
        self._records: dict[tuple[str, int, int, str], StepNorms] = {}
        self.inputs: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {}
        self._handles: list = []

    @property
    def records(self) -> list[StepNorms]:
        """The norms of the latest backward pass of each layer, direction and path."""
        return list(self._records.values())

    def __enter__(self) -> GradientFlowRecorder:
        for layer, stand_in in self._stand_ins:  # the layer's forward is its twin's, for the block
            layer.forward = functools.partial(_as_twin, layer, stand_in)
        for name, module in self.layers:
            self._handles.append(module.register_step_grad_hook(self._hook_for(name)))
            if self.capture_inputs:
                self._handles.append(
                    module.register_forward_pre_hook(self._input_hook_for(name), with_kwargs=True)
                )
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for layer, _ in self._stand_ins:
            del layer.forward  # the class's forward again

    def _hook_for(self, name: str):
        def hook(module: nn.Module, layer: int, grads: StepGradients) -> None:
            for s in norms_from_step_gradients(name, module.mode, layer, grads):
                self._records[(name, layer, s.direction, s.path)] = s

        return hook

    def _input_hook_for(self, name: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            self.inputs[name] = (args, kwargs)

        return hook
