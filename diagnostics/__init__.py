"""Gradient flow back through time, from the per-step gradients that rnnkit's backward records
(`rnnkit.StepGradients`). Reads what the backward pass records; never reaches into kernels."""
