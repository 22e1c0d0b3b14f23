"""The CPU backend: `kernels.reference`'s six functions made fast for float32 and float64 on the CPU,
and the pieces around the recurrence that a CPU run needs to be fast too.

    rnn_fwd, rnn_bwd, lstm_fwd, lstm_bwd, gru_fwd, gru_bwd   the recurrence (`recurrence`)
    linear, sum_over_rows      the input projection and the weight gradients' products (`_onednn`)
    layer_stack, cell_step     a stack's inference, a cell's step: torch's own fused recurrence
    zone_gates, bernoulli      cell zoneout's mask (`_step`)
    SETTINGS                   its environment switches (`_config`)
    keep_freed_memory, release how a training process keeps freed buffers mapped (`_memory`)

Every function returns what the reference returns, to float32 rounding; the LSTM backward's dgx
has gate-major strides (see `recurrence.lstm_bwd`).
"""

from kernels.cpu._config import SETTINGS
from kernels.cpu._memory import keep_freed_memory, release
from kernels.cpu._onednn import linear, sum_over_rows
from kernels.cpu._step import bernoulli, zone_gates
from kernels.cpu.recurrence import gru_bwd, gru_fwd, lstm_bwd, lstm_fwd, rnn_bwd, rnn_fwd
from kernels.cpu.stack import cell_step, layer_stack

__all__ = [
    "SETTINGS",
    "bernoulli",
    "cell_step",
    "gru_bwd",
    "gru_fwd",
    "keep_freed_memory",
    "layer_stack",
    "linear",
    "lstm_bwd",
    "lstm_fwd",
    "release",
    "rnn_bwd",
    "rnn_fwd",
    "sum_over_rows",
    "zone_gates",
]
