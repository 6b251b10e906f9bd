"""Augmentations and the multiprocess loader that turn a packed split into AlexNet's network input.

The network input (DESIGN.md; paper section 4.1), on the 0-255 scale with no division by a std:

    x = crop(P - M) + 255 * eigvec @ (alpha * eigval)

P is the stored uint8 (256, 256, 3) image, M the mean image (or mean RGB) of stats.h5 cropped at the
same offset and flipped with the image, alpha_i ~ N(0, 0.1) drawn for each image each time it is used,
eigval/eigvec from stats.json ([0, 1] scale, hence the 255). Training crops are uniform over all
33 x 33 positions (offsets 0..32) and flipped with probability 0.5; evaluation uses alpha = 0 and the
center crop or the ten crops.

Data path of `Loader`:
  main process  a generator seeded by (seed, epoch) draws the permutation and every image's offsets,
                flip and alphas (`EpochPlan`), so the batches do not depend on the number of workers;
  workers       copy the 224x224 windows (flipped where drawn) of the stored uint8 images straight from
                the LMDB buffer into a shared-memory batch slot, uint8 (B, 224, 224, 3): no per-sample
                pickling, no intermediate full image for raw records;
  main process  slot -> pinned memory -> asynchronous copy to the GPU -> `InputTransform` on the device:
                float, minus the mean crop, plus the lighting offset (the same arithmetic on the CPU).

`ImageNetDataset` gives the same inputs one sample at a time for a plain torch.utils.data loop.

    split, stats = open_split(DATA, "train"), load_stats(DATA)
    loader = Loader(split, stats, batch_size=128, workers=15, device="cuda", seed=0)
    for epoch in range(90):
        loader.set_epoch(epoch)
        for x, y in loader:          # x float (128, 3, 224, 224) on the GPU, y int64 (128,)
            ...
"""

from __future__ import annotations

import dataclasses
import logging
import math
import mmap
import multiprocessing as mp
import os
import queue
import signal
import sys
import time
import traceback
import weakref
from collections import deque
from dataclasses import dataclass
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
# ten_crop order (DESIGN.md): top-left, top-right, bottom-left, bottom-right, center, then the same mirrored
TEN_CROP_OFFSETS = ((0, 0), (0, PAD), (PAD, 0), (PAD, PAD), (CENTER, CENTER)) * 2  # (top, left)
TEN_CROP_FLIPS = (False,) * 5 + (True,) * 5


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


def center_crop(img: np.ndarray, size: int = CROP) -> np.ndarray:
    """The central size x size window (offset 16 for 224 of 256)."""
    h, w = img.shape[:2]
    return random_crop(img, (h - size) // 2, (w - size) // 2, size)


def hflip(img: np.ndarray) -> np.ndarray:
    """Left-right mirror of an HWC array (a view)."""
    return img[:, ::-1]


def ten_crop(img: np.ndarray, size: int = CROP) -> np.ndarray:
    """uint8 (H, W, 3) -> (10, size, size, 3): the four corner crops and the center crop, then each of
    them mirrored left-right (views[5:] = views[:5][:, :, ::-1]), as DESIGN.md orders them."""
    h, w = img.shape[:2]
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


def draw_augment(rng: np.random.Generator, n: int, lighting_std: float = 0.1) -> Augment:
    """The random choices for n images: offsets uniform over 0..32 (all 33 x 33 positions), a flip with
    probability 0.5, alpha ~ N(0, lighting_std) per channel. The draws do not depend on lighting_std
    (it only scales standard normals), so turning lighting off keeps the same crops and flips."""
    tops = rng.integers(0, PAD + 1, n)
    lefts = rng.integers(0, PAD + 1, n)
    flips = rng.random(n) < 0.5
    alphas = float(lighting_std) * rng.standard_normal((n, 3))
    return Augment(tops, lefts, flips, alphas)


# ----------------------------------------------------------------------------- input transform
def _np(a) -> np.ndarray:
    return a.detach().cpu().numpy() if torch.is_tensor(a) else np.asarray(a)


class InputTransform:
    """uint8 crops (B, 224, 224, 3), already cropped and flipped, -> network input float (B, 3, 224, 224):
    x = crop(P - M) + 255 * eigvec @ (alpha * eigval), on the device of the batch.

    `stats`: the dict of imagenet_prep.stats.load_stats (or the copy in a checkpoint; mean_image may be a
    torch tensor). mean="image" subtracts the mean image cropped at each image's (top, left) and flipped
    with it; mean="rgb" the mean RGB. `lighting_std` is the sigma that `draw` uses (section 4.1: 0.1)."""

    def __init__(self, stats: dict, mean: str = "image", lighting_std: float = 0.1):
        if mean not in ("image", "rgb"):
            raise ImgnetError(f"mean={mean!r}; expected 'image' or 'rgb'")
        if lighting_std < 0 or not math.isfinite(lighting_std):
            raise ImgnetError(f"lighting_std={lighting_std}; expected a finite sigma >= 0 (the paper's is 0.1)")
        missing = [k for k in ("eigval", "eigvec", "mean_rgb", "mean_image") if k not in stats]
        if missing:
            raise ImgnetError(f"the statistics lack {', '.join(missing)}; rerun `imgnet pca-stats --data DATA`")
        self.mean = mean
        self.lighting_std = float(lighting_std)
        self.eigval = _np(stats["eigval"]).astype(np.float64).reshape(3)
        self.eigvec = _np(stats["eigvec"]).astype(np.float64).reshape(3, 3)
        self.mean_image = np.ascontiguousarray(_np(stats["mean_image"]), dtype=np.float32)  # (256, 256, 3), 0-255
        if self.mean_image.shape != IMAGE_SHAPE:
            raise ImgnetError(f"mean_image has shape {self.mean_image.shape}; expected {IMAGE_SHAPE}")
        self.mean_rgb = (255.0 * _np(stats["mean_rgb"]).astype(np.float64).reshape(3)).astype(np.float32)
        self._on = {}  # device -> mean (3, 256, 256) or (3,) float32 tensor

    def draw(self, rng: np.random.Generator, n: int) -> Augment:
        return draw_augment(rng, n, self.lighting_std)

    def offsets(self, alphas) -> np.ndarray:
        """float32 (B, 3): the lighting offset of each image (computed in float64)."""
        return lighting_offset(_np(alphas).reshape(-1, 3), self.eigval, self.eigvec).astype(np.float32)

    def _mean_on(self, device: torch.device) -> torch.Tensor:
        key = str(device)
        if key not in self._on:
            m = self.mean_image.transpose(2, 0, 1) if self.mean == "image" else self.mean_rgb
            self._on[key] = torch.from_numpy(np.ascontiguousarray(m)).to(device)
        return self._on[key]

    def __call__(self, images, tops, lefts, flips, alphas=None, channels_last: bool = False) -> torch.Tensor:
        """images uint8 (B, 224, 224, 3) (tensor on any device, or numpy); tops, lefts (B,) crop offsets and
        flips (B,) bool the images were cut with; alphas (B, 3) or None for none (evaluation)."""
        u8 = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
        assert u8.dtype == torch.uint8 and u8.shape[1:] == (CROP, CROP, 3), (u8.dtype, tuple(u8.shape))
        off = None if alphas is None else self.offsets(alphas)  # (B, 3) float32
        if u8.device.type == "cpu":
            x = torch.from_numpy(self._cpu(u8.numpy(), tops, lefts, flips, off))
        else:
            x = self._device(u8, tops, lefts, flips, off)
        if channels_last:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def _device(self, u8: torch.Tensor, tops, lefts, flips, off) -> torch.Tensor:
        """The whole batch in three kernels: gather the mean crops, subtract, add the offsets."""
        dev = u8.device
        mean = self._mean_on(dev)
        if self.mean == "rgb":
            x = torch.sub(u8.permute(0, 3, 1, 2), mean.view(1, 3, 1, 1)).contiguous()  # (B, 3, 224, 224)
        else:
            x = _mean_crops_gather(mean, tops, lefts, flips, dev)  # (B, 3, 224, 224)
            # (P - M) in float32: the uint8 operand is promoted inside the kernel; the result overwrites M
            torch.sub(u8.permute(0, 3, 1, 2), x, out=x)
        if off is not None:
            x.add_(_to_device(off, dev, torch.float32).view(-1, 3, 1, 1))
        return x

    def _cpu(self, u8: np.ndarray, tops, lefts, flips, off) -> np.ndarray:
        """The same arithmetic in numpy, one image at a time: each mean window is a plain slice, and no
        intra-op thread pool competes with the loader's workers for the cores (float32 throughout)."""
        u = u8.transpose(0, 3, 1, 2)  # (B, 3, 224, 224) view
        x = np.empty(u.shape, np.float32)
        if self.mean == "rgb":
            np.subtract(u, self.mean_rgb[None, :, None, None], out=x)
        else:
            m = self.mean_image.transpose(2, 0, 1)  # (3, 256, 256) view
            for i, (t, l_, f) in enumerate(zip(_np(tops).tolist(), _np(lefts).tolist(), _np(flips).tolist())):
                w = m[:, t:t + CROP, l_:l_ + CROP]
                np.subtract(u[i], w[:, :, ::-1] if f else w, out=x[i])
        if off is not None:
            x += off[:, :, None, None]
        return x


def _to_device(a, dev: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A small host array on `dev` without stalling the host: through pinned memory, asynchronously."""
    if torch.is_tensor(a) and a.device == dev:
        return a.to(dtype)
    t = torch.as_tensor(_np(a)).to(dtype)
    if dev.type == "cuda":
        t = t.pin_memory()
    return t.to(dev, non_blocking=True)


def _mean_crops_gather(mean_chw: torch.Tensor, tops, lefts, flips, dev: torch.device) -> torch.Tensor:
    """float32 (B, 3, 224, 224): the mean image cropped at each (top, left), mirrored where flipped; one
    gather kernel (the GPU path)."""
    t, l_, f = (_to_device(a, dev, torch.int64) for a in (tops, lefts, flips))
    ar = torch.arange(CROP, device=dev)
    rows = t[:, None] + ar  # (B, 224)
    cols = l_[:, None] + torch.where(f[:, None].bool(), CROP - 1 - ar, ar)  # reversed where flipped
    ch = torch.arange(3, device=dev).view(1, 3, 1, 1)
    return mean_chw[ch, rows[:, None, :, None], cols[:, None, None, :]]


# ------------------------------------------------------------------------------- split checks
def _as_stats(stats) -> dict:
    if isinstance(stats, (str, os.PathLike)):
        from imagenet_prep.stats import load_stats

        return load_stats(stats)  # missing -> ImgnetError: run `imgnet pca-stats --data DATA`
    if not isinstance(stats, dict):
        raise ImgnetError(f"stats is {type(stats).__name__}; expected the dict of load_stats(DATA) or a DATA folder")
    return stats


def check_split(split: Split, stats: dict | None = None, num_classes: int | None = None,
                labels: dict | None = None) -> None:
    """Refuse a split the model or the statistics do not fit, naming the reason."""
    shape = tuple(split.meta.get("image_shape") or ())
    if shape != IMAGE_SHAPE:
        raise ImgnetError(f"{split.path} holds images of shape {list(shape)}; expected {list(IMAGE_SHAPE)} "
                          "(rerun `imgnet prep`)")
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


# ----------------------------------------------------------------------------------- crop reader
class _CropReader:
    """Copies 224x224 windows of stored images into a slot; lives in one process (a worker or the main)."""

    def __init__(self, split: Split):
        self.split = split
        self.raw_lmdb = split.format == "lmdb" and split.encoding == "raw"
        self.img = np.empty(IMAGE_SHAPE, np.uint8)  # decoded image of the non-raw paths
        self.last = -1

    def copy(self, dst: np.ndarray, idx, tops, lefts, flips) -> None:
        """dst uint8 (k, 224, 224, 3) <- image idx[j] cut at (tops[j], lefts[j]), mirrored where flips[j]."""
        # a pixel as one 3-byte item: the mirrored copy then moves whole pixels (about 3x faster than bytes)
        d3 = dst.view("V3")[..., 0]  # (k, 224, 224)
        if self.raw_lmdb:
            with self.split.raw_views() as view:  # zero-copy views of the memory map
                for j, (i, t, l_, f) in enumerate(zip(idx.tolist(), tops.tolist(), lefts.tolist(), flips.tolist())):
                    win = view(i).view("V3")[..., 0][t:t + CROP, l_:l_ + CROP]
                    np.copyto(d3[j], win[:, ::-1] if f else win)
            return
        src = self.img.view("V3")[..., 0]
        for j, (i, t, l_, f) in enumerate(zip(idx.tolist(), tops.tolist(), lefts.tolist(), flips.tolist())):
            if i != self.last:  # ten-crop views of one image decode it once
                self.split.read_image(i, out=self.img)
                self.last = i
            win = src[t:t + CROP, l_:l_ + CROP]
            np.copyto(d3[j], win[:, ::-1] if f else win)


# ----------------------------------------------------------------------------------- workers
class WorkerError(RuntimeError):
    """A loader worker raised or died; the message carries its traceback or exit status."""


def _attach(spec, shape):
    if isinstance(spec, str):  # spawn/forkserver: a named block
        from multiprocessing import shared_memory

        try:
            shm = shared_memory.SharedMemory(name=spec, track=False)  # the main process owns and unlinks it
        except TypeError:  # Python < 3.13
            shm = shared_memory.SharedMemory(name=spec)
        return shm, np.ndarray(shape, np.uint8, buffer=shm.buf)
    return spec, np.frombuffer(spec, np.uint8).reshape(shape)  # fork: the inherited anonymous mapping


def _worker_loop(wid: int, split: Split, spec, shape, tasks, results, parent: int) -> None:
    """Serve (generation, slot, row, idx, tops, lefts, flips) tasks until a None or the parent's exit."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the main stops us
    results.cancel_join_thread()  # we only exit when told to or orphaned: never wait on an unread pipe
    keep, slots = _attach(spec, shape)
    reader = _CropReader(split)
    while True:
        try:
            task = tasks.get(timeout=1.0)
        except queue.Empty:
            if os.getppid() != parent:  # the main process is gone (killed): nobody will read our results
                return
            continue
        if task is None:
            return
        gen, slot, row, idx, tops, lefts, flips = task
        try:
            reader.copy(slots[slot, row:row + len(idx)], idx, tops, lefts, flips)
            results.put((gen, slot, len(idx), None))
        except BaseException:
            results.put((gen, slot, len(idx), f"loader worker {wid} (pid {os.getpid()}) failed on records "
                                              f"{idx[:4].tolist()}...:\n{traceback.format_exc()}"))


def _exit_status(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"{name}" + (" (killed: out of memory?)" if -code == signal.SIGKILL else "")
    return f"exit code {code}"


class _Pool:
    """The worker processes, their two queues and the shared batch slots of one Loader.

    Slots: uint8 (n_slots, rows, 224, 224, 3). With fork they are an anonymous shared mapping made before
    the workers start: nothing in /dev/shm, and the kernel frees it with the last process whatever way
    it ends. With spawn/forkserver a named block that close() (or the resource tracker) unlinks."""

    def __init__(self, split: Split, workers: int, n_slots: int, rows: int, start_method: str,
                 pin_device: torch.device | None):
        self.shape = (n_slots, rows, CROP, CROP, 3)
        nbytes = int(np.prod(self.shape))
        self.shm = spec = None
        self.pinned = False
        if not workers:  # one slot filled in this process
            pin = pin_device is not None and pin_device.type == "cuda"
            self.tensor = torch.empty(self.shape, dtype=torch.uint8, pin_memory=pin)
            self.array = self.tensor.numpy()
        else:
            if start_method != "fork":
                from multiprocessing import shared_memory

                self.shm = shared_memory.SharedMemory(create=True, size=nbytes)
                spec, buf = self.shm.name, self.shm.buf
            else:
                buf = spec = mmap.mmap(-1, nbytes)  # MAP_SHARED | MAP_ANONYMOUS, inherited by the forked workers
            self.array = np.ndarray(self.shape, np.uint8, buffer=buf)
            self.tensor = torch.from_numpy(self.array)
        if workers and pin_device is not None and pin_device.type == "cuda":
            # page-locked in place, so the host-to-device copy is asynchronous and reads the slot directly
            err = int(torch.cuda.cudart().cudaHostRegister(self.tensor.data_ptr(), nbytes, 0))
            self.pinned = err == 0
            if not self.pinned:
                log.warning("could not pin the loader's %d MB of batch slots (cudaError %d); host-to-device "
                            "copies will be synchronous", nbytes >> 20, err)
        self.procs = []
        self.tasks = self.results = None
        self.gen = 0
        self.outstanding = 0  # crops handed out and not yet reported
        self.owner = None  # the _EpochRun reading from the slots now
        if workers:
            ctx = mp.get_context(start_method)
            self.tasks, self.results = ctx.Queue(), ctx.Queue()
            for w in range(workers):
                p = ctx.Process(target=_worker_loop, name=f"imgnet-loader-{w}", daemon=True,
                                args=(w, split, spec, self.shape, self.tasks, self.results, os.getpid()))
                p.start()
                self.procs.append(p)
        self.reader = None if workers else _CropReader(split)

    def alive(self) -> bool:
        return all(p.exitcode is None for p in self.procs)

    def check(self) -> None:
        for w, p in enumerate(self.procs):
            if p.exitcode is not None:
                raise WorkerError(f"loader worker {w} (pid {p.pid}) exited unexpectedly with "
                                  f"{_exit_status(p.exitcode)}; the epoch cannot complete")

    def close(self) -> None:
        """Stop the workers (politely, then SIGTERM, then SIGKILL) and free the slots."""
        procs, self.procs = self.procs, []
        if procs:
            for _ in procs:
                try:
                    self.tasks.put_nowait(None)
                except Exception:
                    pass
            deadline = time.monotonic() + 2.0
            for p in procs:
                p.join(max(0.0, deadline - time.monotonic()))
            for p in procs:
                if p.exitcode is None:
                    p.terminate()
            for p in procs:
                p.join(1.0)
                if p.exitcode is None:
                    p.kill()
                    p.join(1.0)
            for q in (self.tasks, self.results):
                q.cancel_join_thread()  # never block the exit on a feeder thread writing to a dead reader
                q.close()
        if self.pinned:
            try:
                torch.cuda.cudart().cudaHostUnregister(self.tensor.data_ptr())
            except Exception:  # at interpreter exit CUDA may already be gone; the mapping goes with the process
                pass
            self.pinned = False
        self.tensor = self.array = None
        if self.shm is not None:
            shm, self.shm = self.shm, None
            try:
                shm.close()
            except BufferError:  # a caller still holds a slot view; the name goes now, the memory with the view
                pass
            try:
                shm.unlink()
            except FileNotFoundError:
                pass


# ----------------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class EpochPlan:
    """What one rank delivers in one epoch. Image arrays have n entries; view arrays n * views (image-major)."""

    epoch: int
    views: int
    indices: np.ndarray  # int64 (n,): split indices in delivery order
    tops: np.ndarray  # int64 (n * views,)
    lefts: np.ndarray  # int64 (n * views,)
    flips: np.ndarray  # bool (n * views,)
    alphas: np.ndarray | None  # float64 (n * views, 3), or None: no lighting
    batches: list  # [(lo, hi)] image ranges, one per batch
    dropped: int  # images of the epoch that no rank sees (drop_last)
    total: int  # images in the epoch over all ranks


def epoch_draws(seed: int, epoch: int, n: int, shuffle: bool, lighting_std: float | None):
    """(order, Augment | None): the permutation of n positions and each position's random choices, from a
    generator seeded by (seed, epoch) alone. The same on every rank and whatever the worker count."""
    rng = np.random.default_rng([int(seed), int(epoch)])
    order = rng.permutation(n) if shuffle else np.arange(n)
    aug = draw_augment(rng, n, lighting_std) if lighting_std is not None else None
    return order, aug


class RawBatch(NamedTuple):
    """A device-ready batch before the float transform (Loader(output="uint8"))."""

    images: torch.Tensor  # uint8 (B * views, 224, 224, 3), on the device
    labels: torch.Tensor  # int64 (B,), on the device
    tops: np.ndarray  # (B * views,) crop offsets the images were cut at
    lefts: np.ndarray
    flips: np.ndarray  # bool (B * views,)
    alphas: np.ndarray | None  # float64 (B * views, 3), or None
    offsets: np.ndarray | None  # float32 (B * views, 3): 255 * eigvec @ (alpha * eigval)
    indices: np.ndarray  # int64 (B,) split indices


# ----------------------------------------------------------------------------------- the loader
def _dist_default(rank, world_size):
    if rank is None or world_size is None:
        import torch.distributed as dist

        on = dist.is_available() and dist.is_initialized()
        rank = (dist.get_rank() if on else 0) if rank is None else rank
        world_size = (dist.get_world_size() if on else 1) if world_size is None else world_size
    return int(rank), int(world_size)


class Loader:
    """Batches of network input from a packed split: `for x, y in loader`, x float (B, 3, 224, 224) on
    `device` ((B * 10, ...) for views="ten", image-major in ten_crop order), y int64 (B,).

    train=True shuffles with a fresh permutation each epoch and drops the last partial batch; views
    "random" (default for training: random crop, flip, PCA lighting), "center" or "ten" (evaluation,
    alpha = 0). Each iteration is one epoch: `set_epoch(e)` chooses it, otherwise epochs count on from
    0. Deterministic for a seed whatever `workers` (0 reads in this process). Under torch.distributed
    (rank/world_size default from the initialised group) the ranks take disjoint shares of one
    permutation: with drop_last every rank gets len(loader) batches and the remainder is dropped
    (`dropped`, logged), never padded; without it every image is delivered once, and the ranks' shares
    differ by at most one image. output="uint8" yields RawBatch (the device-ready uint8 crops and their
    parameters) for callers that apply `loader.transform` themselves; on the CPU its images are a view of
    a batch slot, valid until the next batch is asked for.

    Workers are started on the first iteration and kept until close() (or garbage collection, or exit).
    A worker that raises or dies ends the iteration with WorkerError; Ctrl-C stops them all."""

    def __init__(self, split, stats, batch_size: int = 128, train: bool = True, views: str | None = None,
                 workers: int | None = None, seed: int = 0, device="cpu", drop_last: bool | None = None,
                 rank: int | None = None, world_size: int | None = None, mean: str = "image",
                 lighting_std: float = 0.1, channels_last: bool = False, indices=None,
                 num_classes: int | None = None, labels: dict | None = None, output: str = "float",
                 prefetch: int | None = None, start_method: str | None = None, timeout: float = 300.0):
        if isinstance(split, (str, os.PathLike)):
            split = open_split(split, "train" if train else "val")
        self.split = split
        self.stats = _as_stats(stats)
        check_split(split, self.stats, num_classes, labels)
        views = views or ("random" if train else "center")
        if views not in VIEWS:
            raise ImgnetError(f"views={views!r}; expected one of {', '.join(VIEWS)}")
        if batch_size < 1:
            raise ImgnetError(f"batch_size={batch_size}; expected at least 1")
        if output not in ("float", "uint8"):
            raise ImgnetError(f"output={output!r}; expected 'float' or 'uint8'")
        self.rank, self.world_size = _dist_default(rank, world_size)
        if not 0 <= self.rank < self.world_size:
            raise ImgnetError(f"rank {self.rank} outside 0..{self.world_size - 1} of world_size {self.world_size}")
        if indices is None:
            self.indices = np.arange(len(split), dtype=np.int64)
        else:
            self.indices = np.asarray(indices, dtype=np.int64).reshape(-1)
            if len(self.indices) and (self.indices.min() < 0 or self.indices.max() >= len(split)):
                raise ImgnetError(f"indices run {self.indices.min()}..{self.indices.max()}; "
                                  f"expected 0..{len(split) - 1}")
            if len(np.unique(self.indices)) != len(self.indices):
                raise ImgnetError("indices repeat some images; expected each image at most once per epoch")
        self.batch_size = int(batch_size)
        self.train = bool(train)
        self.views = views
        self.drop_last = self.train if drop_last is None else bool(drop_last)
        self.workers = default_workers() if workers is None else int(workers)
        self.seed = int(seed)
        self.device = torch.device(device)
        self.lighting_std = float(lighting_std)
        self.channels_last = bool(channels_last)
        self.output = output
        self.transform = InputTransform(self.stats, mean=mean, lighting_std=lighting_std)
        v = VIEWS[views]
        self.prefetch = max(2, int(prefetch or (4 if v == 1 else 2)))  # batches in flight: slots of shared memory
        self.start_method = start_method or ("fork" if sys.platform.startswith("linux") else "spawn")
        self.timeout = float(timeout)
        self._epoch, self._start_batch = 0, 0
        self._pool: _Pool | None = None
        self._finalizer = None

    # ---- sizes
    def _shares(self) -> tuple[int, int]:
        """(images this rank delivers, images nobody sees) per epoch."""
        n, w, b = len(self.indices), self.world_size, self.batch_size
        if self.drop_last:
            used = n // (b * w) * b * w
            return used // w, n - used
        return len(range(self.rank, n, w)), 0

    def __len__(self) -> int:
        mine, _ = self._shares()
        return mine // self.batch_size if self.drop_last else -(-mine // self.batch_size)

    @property
    def dropped(self) -> int:
        """Images of each epoch left out by drop_last (over all ranks)."""
        return self._shares()[1]

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """The next iteration delivers this epoch (its permutation and random choices), from batch
        `start_batch` on (a run resumed inside an epoch gets exactly the batches it had not seen)."""
        self._epoch, self._start_batch = int(epoch), int(start_batch)

    # ---- the plan
    def plan(self, epoch: int) -> EpochPlan:
        """Everything this rank delivers in `epoch`: a pure function of (seed, epoch, rank, world_size)."""
        n, w, b, r = len(self.indices), self.world_size, self.batch_size, self.rank
        v = VIEWS[self.views]
        sigma = self.lighting_std if self.views == "random" else None  # None: no random choices to draw
        order, aug = epoch_draws(self.seed, epoch, n, self.train, sigma)
        mine, dropped = self._shares()
        if self.drop_last:
            # step s covers global positions [s*b*w, (s+1)*b*w); rank r takes the r-th block of b in it, so the
            # ranks' batches of one step together are the single-process batch of size b*w
            pos = np.arange(mine * w).reshape(-1, w, b)[:, r].reshape(-1)
        else:
            pos = np.arange(r, n, w)
        batches = [(lo, min(lo + b, mine)) for lo in range(0, mine, b)]
        idx = self.indices[order[pos]]
        if self.views == "random":
            tops, lefts, flips = aug.tops[pos], aug.lefts[pos], aug.flips[pos]
            alphas = aug.alphas[pos] if self.lighting_std > 0 else None
        elif self.views == "center":
            tops = lefts = np.full(mine, CENTER, np.int64)
            flips, alphas = np.zeros(mine, bool), None
        else:
            off = np.array(TEN_CROP_OFFSETS, np.int64)
            tops, lefts = np.tile(off[:, 0], mine), np.tile(off[:, 1], mine)
            flips, alphas = np.tile(np.array(TEN_CROP_FLIPS), mine), None
        return EpochPlan(epoch, v, idx, tops, lefts, flips, alphas, batches, dropped, n)

    # ---- workers
    def _ensure_pool(self) -> _Pool:
        if self._pool is not None and not self._pool.alive():
            self.close()
        if self._pool is None:
            rows = self.batch_size * VIEWS[self.views]
            pin = self.device if self.device.type == "cuda" else None
            n_slots = self.prefetch if self.workers else 1
            self._pool = _Pool(self.split, self.workers, n_slots, rows, self.start_method, pin)
            self._finalizer = weakref.finalize(self, self._pool.close)
        return self._pool

    def close(self) -> None:
        """Stop the workers and free the shared memory (a later iteration starts new ones)."""
        if self._finalizer is not None:
            self._finalizer()  # runs _pool.close once
            self._finalizer = None
        self._pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    # ---- iteration
    def __iter__(self):
        epoch, start = self._epoch, self._start_batch
        self._epoch, self._start_batch = epoch + 1, 0
        plan = self.plan(epoch)
        if start:
            plan = dataclasses.replace(plan, batches=plan.batches[start:])
        if plan.dropped:
            log.info("epoch %d: %d of %d images left out by drop_last (%d batches of %d x %d ranks)",
                     epoch, plan.dropped, plan.total, len(plan.batches), self.batch_size, self.world_size)
        run = _EpochRun(self, plan, self._ensure_pool())
        return run.batches()


class _EpochRun:
    """One epoch's traffic: batches into slots, chunks to the workers, slots back to the caller in order."""

    def __init__(self, loader: Loader, plan: EpochPlan, pool: _Pool):
        self.ld, self.plan, self.pool = loader, plan, pool
        self.v = plan.views
        self.cuda = loader.device.type == "cuda"
        self.stream = torch.cuda.Stream(loader.device) if self.cuda else None
        self.gen = -1  # set when reading starts
        n_workers = len(pool.procs)
        # images per task: enough tasks per batch to keep every worker busy, few enough to keep the queues quiet
        self.chunk = max(1, min(-(-loader.batch_size // max(1, n_workers)), max(1, 32 // self.v)))
        self.free = deque(range(pool.shape[0]))
        self.submitted = 0
        self.slot_of = {}  # batch -> slot while it is being filled
        self.left = {}  # slot -> rows still to be written
        self.staged = {}  # batch -> device tensor and event (cuda), or slot (cpu)
        self.copying = deque()  # (slot, event): slots whose host-to-device copy is in flight
        self.held = None  # cpu uint8 output: the slot the caller is looking at

    # -- slots
    def _release_copied(self, wait: bool = False) -> None:
        while self.copying and (wait or self.copying[0][1].query()):
            slot, ev = self.copying.popleft()
            ev.synchronize()
            self.free.append(slot)
            wait = False

    def _submit(self) -> None:
        nb = len(self.plan.batches)
        while self.free and self.submitted < nb:
            k, slot = self.submitted, self.free.popleft()
            lo, hi = self.plan.batches[k]
            self.slot_of[k] = slot
            self.submitted += 1
            if not self.pool.procs:  # workers=0: read here, now
                vs = slice(lo * self.v, hi * self.v)
                self.pool.reader.copy(self.pool.array[slot, :vs.stop - vs.start], np.repeat(
                    self.plan.indices[lo:hi], self.v), self.plan.tops[vs], self.plan.lefts[vs], self.plan.flips[vs])
                self._complete(k, slot)
                continue
            self.left[slot] = (hi - lo) * self.v
            for c in range(lo, hi, self.chunk):
                e = min(c + self.chunk, hi)
                vs = slice(c * self.v, e * self.v)
                self.pool.tasks.put((self.gen, slot, (c - lo) * self.v, np.repeat(self.plan.indices[c:e], self.v),
                                     self.plan.tops[vs], self.plan.lefts[vs], self.plan.flips[vs]))
                self.pool.outstanding += vs.stop - vs.start

    def _complete(self, k: int, slot: int) -> None:
        """Batch k is whole in `slot`: start its device copy at once, so it overlaps the caller's work."""
        del self.slot_of[k]
        lo, hi = self.plan.batches[k]
        if not self.cuda:
            self.staged[k] = slot
            return
        with torch.cuda.stream(self.stream):
            dev = self.pool.tensor[slot, :(hi - lo) * self.v].to(self.ld.device, non_blocking=True)
            ev = torch.cuda.Event()
            ev.record(self.stream)
        self.copying.append((slot, ev))
        self.staged[k] = (dev, ev)

    # -- results
    def _collect(self, until: int | None) -> None:
        """Handle finished chunks; block until batch `until` is staged (None: only what is there now)."""
        slot_batch = {s: k for k, s in self.slot_of.items()}
        deadline = time.monotonic() + self.ld.timeout
        while until is None or until not in self.staged:
            try:
                if until is None:
                    msg = self.pool.results.get_nowait()
                else:
                    msg = self.pool.results.get(timeout=0.1)
            except queue.Empty:
                self.pool.check()
                if until is None:
                    return
                if time.monotonic() > deadline:
                    raise WorkerError(f"no loader worker finished any work in {self.ld.timeout:.0f} s while batch "
                                      f"{until} was awaited; the workers look stuck (slow or hung storage?)")
                continue
            gen, slot, rows, err = msg
            self.pool.outstanding -= rows
            if gen != self.gen:
                continue
            if err is not None:
                raise WorkerError(err)
            deadline = time.monotonic() + self.ld.timeout
            self.left[slot] -= rows
            if self.left[slot] == 0:
                del self.left[slot]
                k = slot_batch.pop(slot)
                self._complete(k, slot)

    def _drain(self) -> None:
        """Wait for every chunk handed out, so no worker writes into a slot the next epoch reuses."""
        deadline = time.monotonic() + self.ld.timeout
        while self.pool.outstanding > 0:
            try:
                _, _, rows, _ = self.pool.results.get(timeout=0.1)
                self.pool.outstanding -= rows
            except queue.Empty:
                self.pool.check()
                if time.monotonic() > deadline:
                    raise WorkerError("loader workers did not finish their tasks while the epoch was closed")

    # -- delivery
    def _deliver(self, k: int):
        plan, ld = self.plan, self.ld
        lo, hi = plan.batches[k]
        vs = slice(lo * self.v, hi * self.v)
        tops, lefts, flips = plan.tops[vs], plan.lefts[vs], plan.flips[vs]
        alphas = None if plan.alphas is None else plan.alphas[vs]
        idx = plan.indices[lo:hi]
        y = torch.from_numpy(self.ld.split.labels[idx])
        staged = self.staged.pop(k)
        if self.cuda:
            dev, ev = staged
            cur = torch.cuda.current_stream(ld.device)
            cur.wait_event(ev)
            dev.record_stream(cur)  # allocated on the copy stream, used on this one
            u8 = dev
            y = _to_device(y, ld.device, torch.int64)
        else:
            u8 = self.pool.tensor[staged, :vs.stop - vs.start]
        if ld.output == "uint8":
            if not self.cuda:
                self.held = staged  # the caller looks at the slot itself until the next batch
            offsets = None if alphas is None else ld.transform.offsets(alphas)
            return RawBatch(u8, y, tops, lefts, flips, alphas, offsets, idx)
        x = ld.transform(u8, tops, lefts, flips, alphas, channels_last=ld.channels_last)
        if not self.cuda:
            self.free.append(staged)
        return x, y

    def batches(self):
        pool = self.pool
        if pool.outstanding:  # an earlier epoch of this loader was left mid-way: let its chunks land first
            self._drain()
        pool.owner = self
        pool.gen += 1
        self.gen = pool.gen
        failed = False
        try:
            for k in range(len(self.plan.batches)):
                if pool.owner is not self:
                    raise RuntimeError("this loader started another epoch while this one was being read; "
                                       "expected one iteration at a time")
                pool.check()  # a dead worker ends the epoch even when the others could cover for it
                if self.held is not None:
                    self.free.append(self.held)
                    self.held = None
                self._release_copied()
                if not self.free and k not in self.staged and k not in self.slot_of:
                    self._release_copied(wait=True)  # every slot is in a host-to-device copy
                self._submit()
                if pool.procs:
                    self._collect(until=k)
                out = self._deliver(k)
                self._release_copied()
                self._submit()  # keep the workers busy while the caller works on this batch
                if pool.procs:
                    self._collect(until=None)  # stage what is ready: its device copy overlaps the caller's step
                yield out
            pool.check()  # a worker lost after its last task still fails the epoch
        except GeneratorExit:
            raise
        except BaseException:  # a worker failed, Ctrl-C, or any error: stop the workers, free the memory
            failed = True
            self.ld.close()
            raise
        finally:
            if not failed and pool.procs and pool.owner is self:
                try:
                    self._drain()
                except BaseException:
                    self.ld.close()
                    raise
            while self.copying:
                self._release_copied(wait=True)


# ----------------------------------------------------------------------------------- dataset
class ImageNetDataset(torch.utils.data.Dataset):
    """The same network input one sample at a time, for torch.utils.data.DataLoader and your own loop:
    `ds[i] -> (x float (3, 224, 224) (or (10, 3, 224, 224) for views="ten"), label int)`.

    For views="random" the choices of image i in an epoch are those `Loader` draws for it with the same
    seed (`set_epoch(e)` before iterating; DataLoader workers take the epoch with them when they start,
    so use persistent_workers=False). The shuffling itself is the sampler's job."""

    def __init__(self, split_or_path, stats, train: bool = True, views: str | None = None, seed: int = 0,
                 mean: str = "image", lighting_std: float = 0.1, indices=None, num_classes: int | None = None,
                 labels: dict | None = None, split: str | None = None):
        if isinstance(split_or_path, (str, os.PathLike)):
            split_or_path = open_split(split_or_path, split or ("train" if train else "val"))
        self.split = split_or_path
        stats = _as_stats(stats)
        check_split(self.split, stats, num_classes, labels)
        self.views = views or ("random" if train else "center")
        if self.views not in VIEWS:
            raise ImgnetError(f"views={self.views!r}; expected one of {', '.join(VIEWS)}")
        self.train = bool(train)
        self.seed = int(seed)
        self.lighting_std = float(lighting_std)
        self.transform = InputTransform(stats, mean=mean, lighting_std=lighting_std)
        self.indices = np.arange(len(self.split)) if indices is None else np.asarray(indices, np.int64)
        self.epoch = 0
        self._table = None  # (epoch, position of each subset entry, Augment)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.indices)

    def params(self, i: int):
        """(tops, lefts, flips, alphas | None) of subset entry i in the current epoch, one row per view."""
        if self.views == "center":
            return np.array([CENTER]), np.array([CENTER]), np.array([False]), None
        if self.views == "ten":
            off = np.array(TEN_CROP_OFFSETS)
            return off[:, 0], off[:, 1], np.array(TEN_CROP_FLIPS), None
        if self._table is None or self._table[0] != self.epoch:
            n = len(self.indices)
            order, aug = epoch_draws(self.seed, self.epoch, n, self.train, self.lighting_std)
            where = np.empty(n, np.int64)
            where[order] = np.arange(n)  # entry -> its position in the epoch's permutation
            self._table = (self.epoch, where, aug)
        _, where, aug = self._table
        p = where[i]
        alphas = aug.alphas[p:p + 1] if self.lighting_std > 0 else None
        return aug.tops[p:p + 1], aug.lefts[p:p + 1], aug.flips[p:p + 1], alphas

    def __getitem__(self, i: int):
        i = int(i)
        img = self.split.read_image(int(self.indices[i]))
        tops, lefts, flips, alphas = self.params(i)
        crops = np.stack([hflip(random_crop(img, t, l_)) if f else random_crop(img, t, l_)
                          for t, l_, f in zip(tops.tolist(), lefts.tolist(), flips.tolist())])
        x = self.transform(crops, tops, lefts, flips, alphas)
        return (x if self.views == "ten" else x[0]), int(self.split.labels[self.indices[i]])
