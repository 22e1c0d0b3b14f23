"""`convert`: a user's model on rnnkit's layers, or back on torch.nn's, without editing its code.

It follows `torch.nn.SyncBatchNorm.convert_sync_batchnorm`: the module tree is changed in place,
each layer is replaced by its twin holding the very same Parameter objects (so an optimizer built
before the call still trains the model), and the module is returned (a new one where the module
itself is a layer).
"""

from __future__ import annotations

from torch import nn

from rnnkit import modules
from rnnkit.backends import check_backend_name

# torch.nn's class -> rnnkit's twin; exact classes only: a subclass may have its own forward
TWINS: dict[type[nn.Module], type[nn.Module]] = {
    nn.RNN: modules.RNN,
    nn.LSTM: modules.LSTM,
    nn.GRU: modules.GRU,
    nn.RNNCell: modules.RNNCell,
    nn.LSTMCell: modules.LSTMCell,
    nn.GRUCell: modules.GRUCell,
}
_TORCH_OF = {twin: torch_cls for torch_cls, twin in TWINS.items()}


def convert(module: nn.Module, *, to: str = "rnnkit", backend: str = "auto") -> nn.Module:
    """Replace every `torch.nn.RNN`, `LSTM`, `GRU`, `RNNCell`, `LSTMCell` and `GRUCell` in
    ``module``'s tree by rnnkit's twin (``to="rnnkit"``, on ``backend``), or every rnnkit layer
    and cell by torch.nn's (``to="torch"``).

    A twin takes the layer's settings, training mode and its Parameter objects themselves (device,
    dtype and ``requires_grad`` with them); the state_dict keys stay the same. Subclasses of those
    classes are left as they are (their forward may be their own), and so are layers already of
    the target kind. Hooks registered on a replaced layer are not carried over. rnnkit's
    ``weight_drop`` and ``cell_zoneout`` have no torch.nn equivalent: converting such a layer to
    torch raises ValueError.

    Returns:
        ``module``, converted in place; a new module where ``module`` itself is a layer.

    Example:
        >>> model = rnnkit.convert(model)  # its torch.nn.LSTM is an rnnkit.LSTM now
        >>> optimizer.step()  # built before the call: the same parameters
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module: expected a torch.nn.Module, got {type(module).__name__}")
    if to not in ("rnnkit", "torch"):
        raise ValueError(f"to: expected 'rnnkit' or 'torch', got {to!r}")
    backend = check_backend_name(backend)
    if to == "torch" and backend != "auto":
        raise ValueError(f"backend: applies to to='rnnkit' only (torch.nn has none), got {backend!r}")
    return _convert(module, to, backend, "")


def _convert(module: nn.Module, to: str, backend: str, path: str) -> nn.Module:
    out = _twin(module, to, backend, path or "module")
    for name, child in module.named_children():
        out.add_module(name, _convert(child, to, backend, f"{path}.{name}" if path else name))
    return out


def twin(module: nn.Module, *, backend: str = "auto") -> nn.Module:
    """rnnkit's twin of one torch.nn layer or cell (one of `TWINS`), on the same Parameter objects;
    ``module`` itself stays as it is (the diagnostics' recorder runs a model's layers as their twins
    while it records)."""
    if type(module) not in TWINS:
        raise TypeError(
            f"module: expected one of {', '.join(t.__name__ for t in TWINS)}, got {type(module).__name__}"
        )
    return _twin(module, "rnnkit", check_backend_name(backend), "module")


def _twin(module: nn.Module, to: str, backend: str, path: str) -> nn.Module:
    # the module's twin of the other kind, holding its parameters; the module itself where it has none
    kind = type(module)
    target = TWINS.get(kind) if to == "rnnkit" else _TORCH_OF.get(kind)
    if target is None:
        return module
    if to == "torch":
        for setting in ("weight_drop", "cell_zoneout"):
            if getattr(module, setting, 0.0):
                raise ValueError(
                    f"{path}: {kind.__name__}({setting}={getattr(module, setting)}) has no torch.nn "
                    f"equivalent; set {setting}=0 first to convert it"
                )
    extra = {"backend": backend} if to == "rnnkit" else {}
    first = next(module.parameters())  # every layer and cell has weights
    twin = target(**_settings(module), **extra, device="meta", dtype=first.dtype)
    for name, param in module.named_parameters(recurse=False):
        setattr(twin, name, param)  # RNNBase's __setattr__ keeps its _flat_weights in step
    twin.train(module.training)
    if hasattr(module, "qconfig"):
        twin.qconfig = module.qconfig
    if to == "torch" and isinstance(twin, nn.RNNBase):
        twin.flatten_parameters()  # cuDNN's one weight buffer (nothing to do off the GPU)
    return twin


def _settings(module: nn.Module) -> dict:
    # the constructor's arguments that rebuild ``module`` (a layer or a cell of either kind)
    settings = {"input_size": module.input_size, "hidden_size": module.hidden_size, "bias": module.bias}
    if isinstance(module, nn.RNNBase):
        settings.update(
            num_layers=module.num_layers, batch_first=module.batch_first, dropout=module.dropout,
            bidirectional=module.bidirectional,
        )  # fmt: skip
        if module.mode == "LSTM":
            settings["proj_size"] = module.proj_size
    if hasattr(module, "nonlinearity"):  # the RNN's and the RNNCell's
        settings["nonlinearity"] = module.nonlinearity
    return settings
