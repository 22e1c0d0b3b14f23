"""matplotlib for files, not screens: every plot of rnnkit and diagnostics draws through this."""

from __future__ import annotations


def pyplot():
    """`matplotlib.pyplot` on the Agg backend (PNG files; no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
