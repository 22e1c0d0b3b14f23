"""Text preparation for the IMDB task: normalise, build a vocabulary on the training split, encode."""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable

import torch

PAD, UNK = 0, 1
_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)
_PUNCTUATION = str.maketrans({c: " " for c in string.punctuation})


def tokenize(text: str) -> list[str]:
    """Lowercase, drop ``<br />``, replace punctuation by spaces, split on white space.

    Example:
        >>> tokenize("Great film!<br /><br />Loved it.")
        ['great', 'film', 'loved', 'it']
    """
    return _BREAK.sub(" ", text).lower().translate(_PUNCTUATION).split()


def build_vocab(
    token_lists: Iterable[list[str]], max_size: int = 10_000, min_freq: int = 10
) -> dict[str, int]:
    """The ``max_size`` most frequent words seen at least ``min_freq`` times (ties by the word).

    Returns:
        word -> index, from 2 up: 0 is padding, 1 an unknown word.
    """
    counts = Counter(word for tokens in token_lists for word in tokens)
    words = sorted((w for w, c in counts.items() if c >= min_freq), key=lambda w: (-counts[w], w))
    return {w: i + 2 for i, w in enumerate(words[:max_size])}


def encode(
    token_lists: list[list[str]], vocab: dict[str, int], max_len: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids [N, max_len] and lengths [N] (at least 1).

    A longer review keeps its last ``max_len`` tokens (where a review's verdict usually is; Keras's
    ``pad_sequences`` cuts the same end); a shorter one is padded with 0 after its end, and its
    length marks the true last token.
    """
    ids = torch.full((len(token_lists), max_len), PAD, dtype=torch.long)
    lengths = torch.ones(len(token_lists), dtype=torch.long)
    for row, tokens in enumerate(token_lists):
        kept = [vocab.get(w, UNK) for w in tokens[-max_len:]] or [UNK]
        ids[row, : len(kept)] = torch.tensor(kept)
        lengths[row] = len(kept)
    return ids, lengths
