"""Augmentations and the input transform that turn a packed split into the network input (AlexNet's, any size).

The network input (docs/design.md; paper section 4.1), on the 0-255 scale with no division by a std:

    x = crop(P - M) + 255 * eigvec @ (alpha * eigval)

P is the stored uint8 (N, N, 3) image (N = 256 for the paper; prep --size), M the mean image (or mean
RGB) of stats.h5 cropped at the same offset and flipped with the image, alpha_i ~ N(0, 0.1) drawn for each
image each time it is used, eigval/eigvec from stats.json ([0, 1] scale, hence the 255). Training crops
(224 of 256, or the run's --crop) are uniform over all (N - crop + 1)^2 positions (33 x 33: offsets 0..32)
and flipped with probability 0.5 (--no-flip: never); evaluation uses alpha = 0 and the center crop or the
ten crops.

`ImageNetDataset` gives the inputs one sample at a time for a plain torch.utils.data loop; the
multiprocess `Loader` (trainer/loader.py) gives the same inputs as whole batches, fast.
"""

from __future__ import annotations

import logging
import math
import os
from typing import NamedTuple

import numpy as np
import torch

from imagenet_prep.errors import ImgnetError
from imagenet_prep.store import IMAGE_SHAPE, Split, open_split

log = logging.getLogger(__name__)

SIZE = IMAGE_SHAPE[0]  # 256: stored images are (256, 256, 3) uint8
CROP = 224  # network input side (section 3.5)
PAD = SIZE - CROP  # 32: crop offsets run 0..32 inclusive, 33 x 33 positions (section 4.1)
CENTER = PAD // 2  # 16
VIEWS = {"random": 1, "center": 1, "ten": 10}
# ten_crop order (docs/design.md): top-left, top-right, bottom-left, bottom-right, center, then the same mirrored


def ten_crop_offsets(pad: int = PAD) -> tuple:
    """The ten views' (top, left) for crops `pad` pixels smaller than the image: corners, center, twice."""
    c = pad // 2
    return ((0, 0), (0, pad), (pad, 0), (pad, pad), (c, c)) * 2


TEN_CROP_OFFSETS = ten_crop_offsets(PAD)  # (top, left) at 224 of 256
TEN_CROP_FLIPS = (False,) * 5 + (True,) * 5


def held_out_split(data_dir) -> str:
    """The split a run validates on and `imgnet test` scores by default: val where DATA holds it, else test (a
    CIFAR download's test batch), else val (whose absence the caller then reports)."""
    from imagenet_prep.store import split_path

    return "test" if split_path(data_dir, "val") is None and split_path(data_dir, "test") is not None else "val"


def resolve_crop(crop: int | None, size: int) -> int:
    """The crop side a run uses on size x size images: `crop`, or by default 224 of 256 (section 3.5) and
    7/8 of any other size (28 of 32, 56 of 64). ImgnetError for a crop the images cannot give."""
    if crop is None:
        return size * 7 // 8  # 224 of 256
    if isinstance(crop, bool) or not isinstance(crop, int) or not 1 <= crop <= size:
        raise ImgnetError(f"--crop {crop!r} does not fit the {size}x{size} images of DATA; expected a crop side "
                          f"in 1..{size}")
    return crop


# ------------------------------------------------------------------------------ augmentations
class Augment(NamedTuple):
    """Per-image random choices: int64 tops, lefts (n,) in 0..32, bool flips (n,), float64 alphas (n, 3)."""

    tops: np.ndarray
    lefts: np.ndarray
    flips: np.ndarray
    alphas: np.ndarray


def random_crop(img: np.ndarray, top: int, left: int, size: int = CROP) -> np.ndarray:
    """The size x size window of an HWC array at (top, left): a view, no copy."""
    h, w = img.shape[:2]
    if not (0 <= top <= h - size and 0 <= left <= w - size):
        raise ValueError(f"crop at ({top}, {left}) of size {size} leaves the {h}x{w} image; "
                         f"expected offsets in 0..{h - size} x 0..{w - size}")
    return img[top:top + size, left:left + size]


def center_crop(img: np.ndarray, size: int | None = None) -> np.ndarray:
    """The central size x size window (offset 16 for 224 of 256); size None: `resolve_crop`'s default."""
    h, w = img.shape[:2]
    size = resolve_crop(size, min(h, w))
    return random_crop(img, (h - size) // 2, (w - size) // 2, size)


def hflip(img: np.ndarray) -> np.ndarray:
    """Left-right mirror of an HWC array (a view)."""
    return img[:, ::-1]


def ten_crop(img: np.ndarray, size: int | None = None) -> np.ndarray:
    """uint8 (H, W, 3) -> (10, size, size, 3): the four corner crops and the center crop, then each of
    them mirrored left-right (views[5:] = views[:5][:, :, ::-1]), as docs/design.md orders them. size None:
    `resolve_crop`'s default (224 of 256, 28 of 32)."""
    h, w = img.shape[:2]
    size = resolve_crop(size, min(h, w))
    offsets = ((0, 0), (0, w - size), (h - size, 0), (h - size, w - size), ((h - size) // 2, (w - size) // 2))
    five = np.stack([random_crop(img, t, l, size) for t, l in offsets])
    return np.concatenate([five, five[:, :, ::-1]])


def lighting_offset(alpha, eigval, eigvec) -> np.ndarray:
    """Section 4.1: the RGB offset 255 * eigvec @ (alpha * eigval), float64 (3,) (or (n, 3) for alpha (n, 3)).

    eigval (3,) and eigvec (3, 3) are on the [0, 1] scale of stats.json (eigvec[:, j] belongs to
    eigval[j]); the 255 puts the offset on the 0-255 scale of the network input."""
    alpha = np.asarray(alpha, np.float64)
    eigval = np.asarray(eigval, np.float64)
    eigvec = np.asarray(eigvec, np.float64)
    return 255.0 * (alpha * eigval) @ eigvec.T


def pca_lighting(img: np.ndarray, alpha, eigval, eigvec) -> np.ndarray:
    """float32 img + lighting_offset(alpha): the same offset added to every pixel of one image."""
    return img.astype(np.float32) + lighting_offset(alpha, eigval, eigvec).astype(np.float32)


def draw_augment(rng: np.random.Generator, n: int, lighting_std: float = 0.1, pad: int = PAD,
                 flip: bool = True) -> Augment:
    """The random choices for n images: offsets uniform over 0..pad (all (pad + 1)^2 positions; 33 x 33 for
    224 of 256), a flip with probability 0.5 (none with flip=False), alpha ~ N(0, lighting_std) per channel.
    The draws do not depend on lighting_std or flip (they scale standard normals or mask the coin), so
    turning either off keeps the same crops."""
    tops = rng.integers(0, pad + 1, n)
    lefts = rng.integers(0, pad + 1, n)
    flips = rng.random(n) < 0.5
    if not flip:
        flips[:] = False
    alphas = float(lighting_std) * rng.standard_normal((n, 3))
    return Augment(tops, lefts, flips, alphas)


def view_geometry(views: str, n: int, aug: Augment | None = None, pos=slice(None), pad: int = PAD):
    """(tops int64, lefts int64, flips bool), one entry per view of n images, image-major: the one place that
    says what a view means. "random": the drawn choices `aug` at positions `pos`; "center": one view at
    (pad // 2, pad // 2) (16, 16 for 224 of 256), unmirrored; "ten": the ten_crop order (corners, center,
    then the same mirrored). `pad`: image side minus crop side."""
    if views == "random":
        return aug.tops[pos], aug.lefts[pos], aug.flips[pos]
    ten = views == "ten"
    off = np.array(ten_crop_offsets(pad) if ten else ((pad // 2, pad // 2),), np.int64)
    flips = np.array(TEN_CROP_FLIPS if ten else (False,))
    return np.tile(off[:, 0], n), np.tile(off[:, 1], n), np.tile(flips, n)


# ----------------------------------------------------------------------------- input transform
def _np(a) -> np.ndarray:
    return a.detach().cpu().numpy() if torch.is_tensor(a) else np.asarray(a)


class InputTransform:
    """uint8 crops (B, c, c, 3), already cropped and flipped, -> network input float (B, 3, c, c) (c = 224 for
    the paper): x = crop(P - M) + 255 * eigvec @ (alpha * eigval), on the device of the batch.

    `stats`: the dict of imagenet_prep.stats.load_stats (or the copy in a checkpoint; mean_image may be a
    torch tensor). mean="image" subtracts the mean image cropped at each image's (top, left) and flipped
    with it; mean="rgb" the mean RGB. `lighting_std` is the sigma of the lighting alphas (section 4.1: 0.1;
    0 for evaluation). channels_last: the output in NHWC memory format (same values). The images are N x N as
    the statistics' mean image (`size`); `crop` is the side of the crops (None: `resolve_crop`'s default) and
    `pad` = size - crop the range of the offsets; flip=False: training crops are never mirrored. `std`: None, or
    per-channel divisors (3,) on the 0-255 scale applied last (255 * torchvision's std for its weights'
    input, trainer/weights.py)."""

    def __init__(self, stats: dict, mean: str = "image", lighting_std: float = 0.1, channels_last: bool = False,
                 crop: int | None = None, flip: bool = True, std=None):
        if mean not in ("image", "rgb"):
            raise ImgnetError(f"mean={mean!r}; expected 'image' or 'rgb'")
        if lighting_std < 0 or not math.isfinite(lighting_std):
            raise ImgnetError(f"lighting_std={lighting_std}; expected a finite sigma >= 0 (the paper's is 0.1)")
        missing = [k for k in ("eigval", "eigvec", "mean_rgb", "mean_image") if k not in stats]
        if missing:
            raise ImgnetError(f"the statistics lack {', '.join(missing)}; rerun `imgnet pca-stats --data DATA`")
        self.mean = mean
        self.lighting_std = float(lighting_std)
        self.channels_last = bool(channels_last)
        self.eigval = _np(stats["eigval"]).astype(np.float64).reshape(3)
        self.eigvec = _np(stats["eigvec"]).astype(np.float64).reshape(3, 3)
        self.mean_image = np.ascontiguousarray(_np(stats["mean_image"]), dtype=np.float32)  # (N, N, 3), 0-255
        shape = self.mean_image.shape
        if len(shape) != 3 or shape[0] != shape[1] or shape[2] != 3:
            raise ImgnetError(f"mean_image has shape {shape}; expected (N, N, 3) (N = DATA's image size)")
        self.size = shape[0]
        self.crop = resolve_crop(crop, self.size)
        self.pad = self.size - self.crop  # offsets run 0..pad
        self.flip = bool(flip)
        self.mean_rgb = (255.0 * _np(stats["mean_rgb"]).astype(np.float64).reshape(3)).astype(np.float32)
        self._on = {}  # device -> mean (3, N, N) or (3,) float32 tensor; ("std", device) -> (1, 3, 1, 1)
        self.std = None if std is None else np.asarray(std, np.float32).reshape(3)

    def draw(self, rng: np.random.Generator, n: int) -> Augment:
        return draw_augment(rng, n, self.lighting_std, self.pad, self.flip)

    def epoch_draws(self, seed: int, epoch: int, n: int, shuffle: bool, random: bool):
        """`epoch_draws` with this transform's offsets range and flip rule; random=False: no random choices."""
        return epoch_draws(seed, epoch, n, shuffle, self.lighting_std if random else None, self.pad, self.flip)

    def geometry(self, views: str, n: int, aug: Augment | None = None, pos=slice(None)):
        """`view_geometry` for this transform's image and crop sizes."""
        return view_geometry(views, n, aug, pos, self.pad)

    def offsets(self, alphas) -> np.ndarray:
        """float32 (B, 3): the lighting offset of each image (computed in float64)."""
        return lighting_offset(_np(alphas).reshape(-1, 3), self.eigval, self.eigvec).astype(np.float32)

    def _mean_on(self, device: torch.device) -> torch.Tensor:
        key = str(device)
        if key not in self._on:
            m = self.mean_image.transpose(2, 0, 1) if self.mean == "image" else self.mean_rgb
            self._on[key] = torch.from_numpy(np.ascontiguousarray(m)).to(device)
        return self._on[key]

    def _std_on(self, device: torch.device) -> torch.Tensor:
        key = ("std", str(device))
        if key not in self._on:
            self._on[key] = torch.from_numpy(self.std).to(device).view(1, 3, 1, 1)
        return self._on[key]

    def __call__(self, images, tops, lefts, flips, alphas=None) -> torch.Tensor:
        """images uint8 (B, crop, crop, 3) (tensor on any device, or numpy); tops, lefts (B,) crop offsets and
        flips (B,) bool the images were cut with; alphas (B, 3) or None for none (evaluation)."""
        u8 = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
        assert u8.dtype == torch.uint8 and u8.shape[1:] == (self.crop, self.crop, 3), (u8.dtype, tuple(u8.shape))
        off = None if alphas is None else self.offsets(alphas)  # (B, 3) float32
        if u8.device.type == "cpu":
            x = torch.from_numpy(self._cpu(u8.numpy(), tops, lefts, flips, off))
        else:
            x = self._device(u8, tops, lefts, flips, off)
        if self.std is not None:
            x.div_(self._std_on(x.device))
        if self.channels_last:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def _device(self, u8: torch.Tensor, tops, lefts, flips, off) -> torch.Tensor:
        """The whole batch in three kernels: gather the mean crops, subtract, add the offsets."""
        dev = u8.device
        mean = self._mean_on(dev)
        if self.mean == "rgb":
            x = torch.sub(u8.permute(0, 3, 1, 2), mean.view(1, 3, 1, 1)).contiguous()  # (B, 3, 224, 224)
        else:
            x = _mean_crops_gather(mean, tops, lefts, flips, dev, self.crop)  # (B, 3, crop, crop)
            # (P - M) in float32: the uint8 operand is promoted inside the kernel; the result overwrites M
            torch.sub(u8.permute(0, 3, 1, 2), x, out=x)
        if off is not None:
            x.add_(to_device(off, dev, torch.float32).view(-1, 3, 1, 1))
        return x

    def _cpu(self, u8: np.ndarray, tops, lefts, flips, off) -> np.ndarray:
        """The same arithmetic in numpy, one image at a time: each mean window is a plain slice, and no
        intra-op thread pool competes with the loader's workers for the cores (float32 throughout)."""
        u = u8.transpose(0, 3, 1, 2)  # (B, 3, 224, 224) view
        x = np.empty(u.shape, np.float32)
        if self.mean == "rgb":
            np.subtract(u, self.mean_rgb[None, :, None, None], out=x)
        else:
            m, c = self.mean_image.transpose(2, 0, 1), self.crop  # (3, N, N) view
            for i, (t, l_, f) in enumerate(zip(_np(tops).tolist(), _np(lefts).tolist(), _np(flips).tolist())):
                w = m[:, t:t + c, l_:l_ + c]
                np.subtract(u[i], w[:, :, ::-1] if f else w, out=x[i])
        if off is not None:
            x += off[:, :, None, None]
        return x


def to_device(a, dev: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A small host array on `dev` without stalling the host: through pinned memory, asynchronously."""
    if torch.is_tensor(a) and a.device == dev:
        return a.to(dtype)
    t = torch.as_tensor(_np(a)).to(dtype)
    if dev.type == "cuda":
        t = t.pin_memory()
    return t.to(dev, non_blocking=True)


def _mean_crops_gather(mean_chw: torch.Tensor, tops, lefts, flips, dev: torch.device,
                       crop: int = CROP) -> torch.Tensor:
    """float32 (B, 3, crop, crop): the mean image cropped at each (top, left), mirrored where flipped; one
    gather kernel (the GPU path)."""
    t, l_, f = (to_device(a, dev, torch.int64) for a in (tops, lefts, flips))
    ar = torch.arange(crop, device=dev)
    rows = t[:, None] + ar  # (B, crop)
    cols = l_[:, None] + torch.where(f[:, None].bool(), crop - 1 - ar, ar)  # reversed where flipped
    ch = torch.arange(3, device=dev).view(1, 3, 1, 1)
    return mean_chw[ch, rows[:, None, :, None], cols[:, None, None, :]]


# ------------------------------------------------------------------------------- split checks
def as_stats(stats) -> dict:
    if isinstance(stats, (str, os.PathLike)):
        from imagenet_prep.stats import load_stats

        return load_stats(stats)  # missing -> ImgnetError: run `imgnet pca-stats --data DATA`
    if not isinstance(stats, dict):
        raise ImgnetError(f"stats is {type(stats).__name__}; expected the dict of load_stats(DATA) or a DATA folder")
    return stats


def check_split(split: Split, stats: dict | None = None, num_classes: int | None = None,
                labels: dict | None = None) -> None:
    """Refuse a split the model or the statistics do not fit, naming the reason."""
    shape, size = tuple(split.meta.get("image_shape") or ()), split.size
    if shape != (size, size, 3):
        raise ImgnetError(f"{split.path} holds images of shape {list(shape)}; expected {[size, size, 3]} "
                          "(rerun `imgnet prep`)")
    have_mean = tuple((stats or {}).get("mean_image", np.empty((size, size, 3))).shape)
    if have_mean[:2] != (size, size):
        raise ImgnetError(f"the statistics' mean image is {have_mean[0]}x{have_mean[1]} but {split.path} holds "
                          f"{size}x{size} images; expected stats of the same DATA: rerun `imgnet pca-stats`")
    if num_classes is not None and len(split.labels):
        top = int(split.labels.max())
        if top >= num_classes:
            raise ImgnetError(f"{split.path} holds labels up to {top} but the model has num_classes={num_classes} "
                              f"outputs; expected labels in 0..{num_classes - 1}")
    have = split.meta.get("labels_sha256")
    if labels is not None and have:
        from imagenet_prep.labels import labels_sha256

        if labels_sha256(labels) != have:
            raise ImgnetError(f"{split.path} was packed with another label map than the checkpoint's "
                              f"({len(labels.get('classes', []))} classes); expected the labels.json "
                              "the model was trained with")
    source = (stats or {}).get("source") or {}
    if have and source.get("labels_sha256") and source["labels_sha256"] != have:
        raise ImgnetError(f"the statistics were computed on a split with another label map than {split.path}; "
                          "expected stats from the same DATA folder: rerun `imgnet pca-stats --data DATA`")


def default_workers() -> int:
    """All cores but one (at least one)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:
        n = os.cpu_count() or 1
    return max(1, n - 1)


# ------------------------------------------------------------------------------- epoch draws
def epoch_draws(seed: int, epoch: int, n: int, shuffle: bool, lighting_std: float | None, pad: int = PAD,
                flip: bool = True):
    """(order, Augment | None): the permutation of n positions and each position's random choices, from a
    generator seeded by (seed, epoch) alone. The same on every rank and whatever the worker count."""
    rng = np.random.default_rng([int(seed), int(epoch)])
    order = rng.permutation(n) if shuffle else np.arange(n)
    aug = draw_augment(rng, n, lighting_std, pad, flip) if lighting_std is not None else None
    return order, aug


# ----------------------------------------------------------------------------------- dataset
class ImageNetDataset(torch.utils.data.Dataset):
    """The same network input one sample at a time, for torch.utils.data.DataLoader and your own loop:
    `ds[i] -> (x float (3, c, c) (or (10, 3, c, c) for views="ten"), label int)`, c the crop (224 of 256).

    For views="random" the choices of image i in an epoch are those `Loader` draws for it with the same
    seed (`set_epoch(e)` before iterating; DataLoader workers take the epoch with them when they start,
    so use persistent_workers=False). The shuffling itself is the sampler's job."""

    def __init__(self, split_or_path, stats, train: bool = True, views: str | None = None, seed: int = 0,
                 mean: str = "image", lighting_std: float = 0.1, indices=None, num_classes: int | None = None,
                 labels: dict | None = None, split: str | None = None, crop: int | None = None, flip: bool = True):
        if isinstance(split_or_path, (str, os.PathLike)):
            split_or_path = open_split(split_or_path, split or ("train" if train else "val"))
        self.split = split_or_path
        stats = as_stats(stats)
        check_split(self.split, stats, num_classes, labels)
        self.views = views or ("random" if train else "center")
        if self.views not in VIEWS:
            raise ImgnetError(f"views={self.views!r}; expected one of {', '.join(VIEWS)}")
        self.train = bool(train)
        self.seed = int(seed)
        self.lighting_std = float(lighting_std)
        self.transform = InputTransform(stats, mean=mean, lighting_std=lighting_std, crop=crop, flip=flip)
        self.indices = np.arange(len(self.split)) if indices is None else np.asarray(indices, np.int64)
        self.epoch = 0
        self._table = None  # (epoch, position of each subset entry, Augment)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.indices)

    def params(self, i: int):
        """(tops, lefts, flips, alphas | None) of subset entry i in the current epoch, one row per view."""
        if self.views != "random":
            return (*self.transform.geometry(self.views, 1), None)
        if self._table is None or self._table[0] != self.epoch:
            n = len(self.indices)
            order, aug = self.transform.epoch_draws(self.seed, self.epoch, n, self.train, True)
            where = np.empty(n, np.int64)
            where[order] = np.arange(n)  # entry -> its position in the epoch's permutation
            self._table = (self.epoch, where, aug)
        _, where, aug = self._table
        p = where[i]
        alphas = aug.alphas[p:p + 1] if self.lighting_std > 0 else None
        return (*self.transform.geometry("random", 1, aug, slice(p, p + 1)), alphas)

    def __getitem__(self, i: int):
        i = int(i)
        img = self.split.read_image(int(self.indices[i]))
        tops, lefts, flips, alphas = self.params(i)
        c = self.transform.crop
        crops = np.stack([hflip(random_crop(img, t, l_, c)) if f else random_crop(img, t, l_, c)
                          for t, l_, f in zip(tops.tolist(), lefts.tolist(), flips.tolist())])
        x = self.transform(crops, tops, lefts, flips, alphas)
        return (x if self.views == "ten" else x[0]), int(self.split.labels[self.indices[i]])
