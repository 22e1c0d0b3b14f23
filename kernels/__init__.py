"""Recurrent kernels: Triton launchers and their PyTorch reference (`kernels.reference`),
with the same signatures and return values. No autograd here; see `rnnkit.autograd`."""
