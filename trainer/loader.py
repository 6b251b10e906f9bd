"""The multiprocess loader: a packed split as batches of AlexNet's network input (trainer/data.py).

Data path of `Loader`:
  main process  a generator seeded by (seed, epoch) draws the permutation and every image's offsets,
                flip and alphas (`EpochPlan`), so the batches do not depend on the number of workers;
  workers       the decoder (trainer/decoders/; the CPU one by default) fills a shared-memory batch slot:
                the CPU decoder copies the crop windows (224x224 of 256) (flipped where drawn) of the stored uint8 images
                straight from the LMDB buffer, uint8 (B, 224, 224, 3): no per-sample pickling, no
                intermediate full image for raw records;
  main process  slot -> pinned memory -> asynchronous copy to the GPU -> the decoder's finish (nothing for
                the CPU decoder) -> `InputTransform` on the device: float, minus the mean crop, plus the
                lighting offset (the same arithmetic on the CPU).

    split, transform = open_split(DATA, "train"), InputTransform(load_stats(DATA))
    loader = Loader(split, transform, batch_size=128, workers=15, device="cuda", seed=0)
    for epoch in range(90):
        loader.set_epoch(epoch)
        for x, y in loader:          # x float (128, 3, 224, 224) on the GPU, y int64 (128,)
            ...
"""

from __future__ import annotations

import dataclasses
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
from imagenet_prep.store import Split
from trainer.data import VIEWS, InputTransform, check_split, default_workers, log, to_device
from trainer.decoders.registry import decoder_class


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


def _worker_loop(wid: int, split: Split, decoder: type, crop: int, spec, shape, tasks, results, parent: int) -> None:
    """Serve (generation, slot, row, idx, tops, lefts, flips) tasks until a None or the parent's exit."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the main stops us
    results.cancel_join_thread()  # we only exit when told to or orphaned: never wait on an unread pipe
    keep, slots = _attach(spec, shape)
    reader = decoder(split, crop)
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
            reader.fill(slots[slot, row:row + len(idx)], idx, tops, lefts, flips)
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

    Slots: uint8 (n_slots, rows, *decoder.row_shape(crop)): (crop, crop, 3) rows for the CPU decoder. With fork they are an anonymous shared mapping made before
    the workers start: nothing in /dev/shm, and the kernel frees it with the last process whatever way
    it ends. With spawn/forkserver a named block that close() (or the resource tracker) unlinks."""

    def __init__(self, split: Split, decoder: type, crop: int, workers: int, n_slots: int, rows: int,
                 start_method: str, pin_device: torch.device | None):
        self.shape = (n_slots, rows, *decoder.row_shape(crop))
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
                                args=(w, split, decoder, crop, spec, self.shape, self.tasks, self.results,
                                      os.getpid()))
                p.start()
                self.procs.append(p)
        self.decoder = decoder(split, crop)  # fills the slot here with workers=0; finishes every batch

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


class RawBatch(NamedTuple):
    """A device-ready batch before the float transform (Loader.raw_batches())."""

    images: torch.Tensor  # uint8 (B * views, crop, crop, 3), on the device
    labels: torch.Tensor  # int64 (B,), on the device
    tops: np.ndarray  # (B * views,) crop offsets the images were cut at
    lefts: np.ndarray
    flips: np.ndarray  # bool (B * views,)
    alphas: np.ndarray | None  # float64 (B * views, 3), or None
    offsets: np.ndarray | None  # float32 (B * views, 3): 255 * eigvec @ (alpha * eigval)
    indices: np.ndarray  # int64 (B,) split indices


# ----------------------------------------------------------------------------------- the loader
@dataclass(frozen=True)
class LoaderTuning:
    """How a Loader runs, never what it delivers: the batches are the same under any tuning."""

    prefetch: int | None = None  # batch slots in flight (shared memory); None: 4, or 2 for ten-crop batches
    start_method: str | None = None  # of the worker processes; None: "fork" on Linux, else "spawn"
    timeout: float = 300.0  # seconds without any finished work before the workers count as stuck


class Loader:
    """Batches of network input from a packed split: `for x, y in loader`, x float (B, 3, 224, 224) on
    `device` ((B * 10, ...) for views="ten", image-major in ten_crop order), y int64 (B,).

    What is drawn: train=True shuffles with a fresh permutation each epoch and drops the last partial
    batch (evaluation, train=False, delivers every image once, in order); views "random" (default for
    training: random crop, flip, and PCA lighting at the transform's sigma), "center" or "ten"
    (evaluation); `indices` a subset of the split's records. Each iteration is one epoch: `set_epoch(e)`
    chooses it, otherwise epochs count on from 0. Deterministic for a seed whatever `workers` (0 reads in
    this process). `shard=(rank, world_size)` (data parallel: the caller's process group, passed in, never
    looked up) gives the ranks disjoint shares of one permutation: in training every rank gets len(loader)
    batches and the remainder is dropped (`dropped`, logged), never padded; in evaluation every image is
    delivered once, and the ranks' shares differ by at most one image.

    `transform` (trainer.data.InputTransform) turns the uint8 crops into the network input on `device`:
    its statistics, mean mode, lighting sigma and memory format. Checks of the split against a model, the
    statistics or a label map are the caller's (trainer.data.check_split). `raw_batches()` iterates the
    next epoch as RawBatch (the device-ready uint8 crops and their parameters) for callers that apply the
    transform themselves; on the CPU its images are a view of a batch slot, valid until the next batch.

    `decoder`: the name of a registered decoder (trainer/decoders/registry.py; None: the CPU crop copier), what
    fills the batch slots from the records; it never changes what is drawn.

    Workers are started on the first iteration and kept until close() (or garbage collection, or exit).
    A worker that raises or dies ends the iteration with WorkerError; Ctrl-C stops them all."""

    def __init__(self, split: Split, transform: InputTransform, batch_size: int = 128, *, train: bool = True,
                 views: str | None = None, indices=None, seed: int = 0, workers: int | None = None, device="cpu",
                 shard: tuple[int, int] = (0, 1), tuning: LoaderTuning = LoaderTuning(), decoder: str | None = None):
        if not isinstance(split, Split):
            raise ImgnetError(f"split is {type(split).__name__}; expected a Split (imagenet_prep.open_split)")
        if not isinstance(transform, InputTransform):
            raise ImgnetError(f"transform is {type(transform).__name__}; expected a trainer.data.InputTransform "
                              "(InputTransform(load_stats(DATA)))")
        check_split(split)
        views = views or ("random" if train else "center")
        if views not in VIEWS:
            raise ImgnetError(f"views={views!r}; expected one of {', '.join(VIEWS)}")
        if batch_size < 1:
            raise ImgnetError(f"batch_size={batch_size}; expected at least 1")
        self.rank, self.world_size = (int(v) for v in shard)
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
        self.split = split
        self.transform = transform
        self.batch_size = int(batch_size)
        self.train = bool(train)
        self.views = views
        self.drop_last = self.train  # training: equal batches on every rank; evaluation: every image once
        self.workers = default_workers() if workers is None else int(workers)
        self.seed = int(seed)
        self.device = torch.device(device)
        self.prefetch = max(2, int(tuning.prefetch or (4 if VIEWS[views] == 1 else 2)))
        self.start_method = tuning.start_method or ("fork" if sys.platform.startswith("linux") else "spawn")
        self.timeout = float(tuning.timeout)
        self.decoder = decoder_class(decoder)  # trainer/decoders/registry.py; None: the default
        self.crop = transform.crop  # side of the crops the transform takes (224 of 256; --crop)
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
        sigma = self.transform.lighting_std if self.views == "random" else None  # None: no random choices
        order, aug = self.transform.epoch_draws(self.seed, epoch, n, self.train, sigma is not None)
        mine, dropped = self._shares()
        if self.drop_last:
            # step s covers global positions [s*b*w, (s+1)*b*w); rank r takes the r-th block of b in it, so the
            # ranks' batches of one step together are the single-process batch of size b*w
            pos = np.arange(mine * w).reshape(-1, w, b)[:, r].reshape(-1)
        else:
            pos = np.arange(r, n, w)
        batches = [(lo, min(lo + b, mine)) for lo in range(0, mine, b)]
        idx = self.indices[order[pos]]
        tops, lefts, flips = self.transform.geometry(self.views, mine, aug, pos)
        alphas = aug.alphas[pos] if self.views == "random" and self.transform.lighting_std > 0 else None
        return EpochPlan(epoch, v, idx, tops, lefts, flips, alphas, batches, dropped, n)

    # ---- workers
    def _ensure_pool(self) -> _Pool:
        if self._pool is not None and not self._pool.alive():
            self.close()
        if self._pool is None:
            rows = self.batch_size * VIEWS[self.views]
            pin = self.device if self.device.type == "cuda" else None
            n_slots = self.prefetch if self.workers else 1
            self._pool = _Pool(self.split, self.decoder, self.crop, self.workers, n_slots, rows, self.start_method, pin)
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
        """The next epoch as (x, y): the network input and the labels on the device."""
        return self._run(raw=False)

    def raw_batches(self):
        """The next epoch as RawBatch: the uint8 crops on the device, before the transform."""
        return self._run(raw=True)

    def _run(self, raw: bool):
        epoch, start = self._epoch, self._start_batch
        self._epoch, self._start_batch = epoch + 1, 0
        plan = self.plan(epoch)
        if start:
            plan = dataclasses.replace(plan, batches=plan.batches[start:])
        if plan.dropped:
            log.info("epoch %d: %d of %d images left out by drop_last (%d batches of %d x %d ranks)",
                     epoch, plan.dropped, plan.total, len(plan.batches), self.batch_size, self.world_size)
        return _EpochRun(self, plan, self._ensure_pool(), raw).batches()


class _EpochRun:
    """One epoch's traffic: batches into slots, chunks to the workers, slots back to the caller in order."""

    def __init__(self, loader: Loader, plan: EpochPlan, pool: _Pool, raw: bool):
        self.ld, self.plan, self.pool, self.raw = loader, plan, pool, raw
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
                self.pool.decoder.fill(self.pool.array[slot, :vs.stop - vs.start], np.repeat(
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
            y = to_device(y, ld.device, torch.int64)
        else:
            u8 = self.pool.tensor[staged, :vs.stop - vs.start]
        u8 = self.pool.decoder.finish(u8, tops, lefts, flips)
        if self.raw:
            if not self.cuda:
                self.held = staged  # the caller looks at the slot itself until the next batch
            offsets = None if alphas is None else ld.transform.offsets(alphas)
            return RawBatch(u8, y, tops, lefts, flips, alphas, offsets, idx)
        x = ld.transform(u8, tops, lefts, flips, alphas)
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

