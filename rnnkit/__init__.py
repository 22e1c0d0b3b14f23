"""rnnkit: recurrent layers on our own Triton kernels, with a PyTorch reference path.

The layers are drop-in twins of `torch.nn`'s (same constructor, parameter names, state_dict and
return values) with an extra ``backend`` keyword:

    >>> import rnnkit
    >>> lstm = rnnkit.LSTM(6, 200, bidirectional=True)
    >>> output, (h_n, c_n) = lstm(torch.randn(100, 30, 6))
"""

from rnnkit import functional
from rnnkit.autograd import StepGradients
from rnnkit.backends import BackendUnavailableError, backend_name, triton_available
from rnnkit.conversion import convert
from rnnkit.modules import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell

__all__ = [
    "GRU",
    "LSTM",
    "RNN",
    "BackendUnavailableError",
    "GRUCell",
    "LSTMCell",
    "RNNCell",
    "StepGradients",
    "backend_name",
    "convert",
    "functional",
    "triton_available",
]
__version__ = "0.1.0"
