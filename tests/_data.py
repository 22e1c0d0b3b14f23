"""Where the tests find the real datasets: $RNNKIT_TEST_DATA, else ../shared/data beside the checkout."""

from __future__ import annotations

import os
from pathlib import Path


def shared_data(name: str) -> Path:
    """The folder of dataset ``name`` ("mnist", "imdb"); it may not exist (tests skip then)."""
    root = os.environ.get("RNNKIT_TEST_DATA")
    base = Path(root) if root else Path(__file__).resolve().parents[2] / "shared" / "data"
    return base / name
