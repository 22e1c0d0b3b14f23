"""Recurrent kernels: Triton launchers and their PyTorch reference (`kernels.reference`),
with the same signatures and return values. No autograd here; see `rnnkit.autograd`."""

import torch

# the storage dtypes the Triton kernels take (the gate math in fp32 registers, the products in the
# storage dtype or TF32); float64 is the reference's, whose every product is float64
TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
