"""The decoder seam of the loader (trainer/loader.py): what turns stored records into a batch of crops.

A batch goes through a decoder in two stages:
  `fill`    in a loader worker (or the main process with workers=0): write rows of a shared-memory batch
            slot from the records. Each row is `row_shape(crop)` uint8; the CPU decoder writes the finished
            crop there, a device decoder could write the encoded bytes instead;
  `finish`  in the main process, on the slot's rows once they are on the loader's device: the uint8 crops
            (B, crop, crop, 3) the InputTransform takes. The CPU decoder has nothing left to do.

A decoder object lives in one process; it is made there as `cls(split, crop)`, so its class must be
importable by name (spawned workers pickle it). `crop` is the side of the square crops.
"""

from __future__ import annotations

import numpy as np
import torch


class Decoder:
    """Base of every decoder (registered in trainer/decoders/registry.py)."""

    def __init__(self, split, crop: int):
        self.split, self.crop = split, int(crop)

    @staticmethod
    def row_shape(crop: int) -> tuple[int, ...]:
        """Shape of one uint8 row of a batch slot: by default the finished crop (crop, crop, 3)."""
        return (crop, crop, 3)

    def fill(self, dst: np.ndarray, idx, tops, lefts, flips) -> None:
        """dst uint8 (k, *row_shape) <- rows for record idx[j], cut at (tops[j], lefts[j]), mirrored where
        flips[j] (int64, int64, int64, bool arrays of k entries)."""
        raise NotImplementedError

    def finish(self, rows: torch.Tensor, tops, lefts, flips) -> torch.Tensor:
        """The filled rows on the loader's device -> uint8 crops (k, crop, crop, 3) on that device."""
        return rows
