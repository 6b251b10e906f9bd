"""The test views: the center crop or the ten views of section 4.1, and the softmax averaged over them."""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F

from imagenet_prep.errors import ImgnetError
from trainer.data import TEN_CROP_FLIPS, TEN_CROP_OFFSETS, center_crop, ten_crop, view_geometry

VIEWS = 10
VIEW_NAMES = ("center", "ten-crop")  # `imgnet test --views`, in the order they are reported


def eval_views(image: np.ndarray, ten: bool, crop: int | None = None) -> np.ndarray:
    """uint8 (N, N, 3) -> the ten views (10, crop, crop, 3), or the center crop as (1, crop, crop, 3) (crop None:
    224 of 256, else 7/8 of N)."""
    return ten_crop(image, crop) if ten else center_crop(image, crop)[None]


@functools.cache
def center_view() -> int:
    """Which of the ten views is the plain center crop: the row of TEN_CROP_OFFSETS/TEN_CROP_FLIPS that cuts
    where a center-crop loader cuts (view_geometry("center")), unmirrored. Its figures then equal those of a
    center-crop pass over the same batches."""
    tops, lefts, flips = view_geometry("center", 1)
    at = [i for i, (o, f) in enumerate(zip(TEN_CROP_OFFSETS, TEN_CROP_FLIPS))
          if tuple(o) == (int(tops[0]), int(lefts[0])) and bool(f) == bool(flips[0])]
    assert len(at) == 1, at
    return at[0]


def average_views(logits: torch.Tensor, views: int) -> torch.Tensor:
    """logits (B*views, C), image-major -> log of the mean softmax over each image's views, (B, C).

    log(mean_v softmax(z_v)) = logsumexp_v(log_softmax(z_v)) - log(views), computed without underflow."""
    logp = F.log_softmax(logits.float(), dim=1)
    if views == 1:
        return logp
    b = logp.shape[0] // views
    assert b * views == logp.shape[0], (logp.shape, views)
    return torch.logsumexp(logp.view(b, views, -1), dim=1) - math.log(views)


def parse_views(views=None, ten_crop: bool = False) -> tuple[str, ...]:
    """The views to score, in VIEW_NAMES order: `views` "center", "ten-crop" or "center,ten-crop" (or a
    sequence of those names); None: ten-crop with `ten_crop` (the --ten-crop switch), else center."""
    if views is None:
        return ("ten-crop",) if ten_crop else ("center",)
    asked = [v.strip() for v in views.split(",")] if isinstance(views, str) else [str(v) for v in views]
    bad = [v for v in asked if v not in VIEW_NAMES] or ([] if asked else [""])
    if bad:
        raise ImgnetError(f"--views {','.join(asked)}: unknown view {bad[0]!r}; expected center, ten-crop or "
                          "center,ten-crop")
    if ten_crop and "ten-crop" not in asked:
        raise ImgnetError(f"--ten-crop asks for the ten-crop view but --views {','.join(asked)} leaves it out; "
                          "expected --views with ten-crop, or one of the two options")
    return tuple(v for v in VIEW_NAMES if v in asked)

