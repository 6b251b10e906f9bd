"""Top-k error, the one definition: a guess list misses when none of its first k classes is right."""

from __future__ import annotations


def topk_wrong(top, right, k: int | None = None):
    """bool (B,): True where the first k classes of `top` (int (B, >=k), best first; None: all of them) miss
    every right class. `right`: int (B,) one label per row, or int (B, L) lists of right classes padded with -1
    (a multi-label set such as ReaL). numpy arrays or torch tensors alike (same ops, any device)."""
    guesses = top[:, :k]
    if right.ndim == 1:
        return (guesses != right.reshape(-1, 1)).all(1)
    return ~(guesses[:, :, None] == right[:, None, :]).any(2).any(1)
