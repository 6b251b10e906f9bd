"""The step loop's parts: one epoch of training (`train_epoch`), the every-N-steps host sync (`HostSync`), the
stop request that Ctrl-C or SIGTERM makes (`StopRequest`), and what the knobs beside the paper's recipe change in
a step (`StepKnobs`) or an epoch (`LimitedLoader`, --limit-batches)."""

from __future__ import annotations

import dataclasses
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from imagenet_prep.errors import ImgnetError
from trainer.amp import autocast
from trainer.eval.topk import topk_wrong


class StopRequest:
    """Ctrl-C or SIGTERM (cluster pre-emption, `kill`) asks training to stop: the loop finishes the step
    in flight, saves an exact checkpoint and stops. A second signal stops at once, without saving."""

    def __init__(self):
        self.signum = None
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def _handler(self, signum, frame):
        if self.signum is not None:
            raise KeyboardInterrupt(f"signal {signum} (second)")
        self.signum = signum
        print(f"\n{signal.Signals(signum).name}: stopping after this step with a checkpoint "
              "(again to stop at once, without one)", file=sys.stderr)

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


class HostSync:
    """The step loop's one host sync, every `every` steps (each is a GPU pipeline stall): did any process
    see a non-finite loss or a stop request (one all_reduce across ranks), and the progress bar.
    `diverged(value, step, epoch, batch, batches, lr)` words the error a non-finite loss raises; `report(step,
    loss)`, where given, receives the mean loss of the steps since the last sync (--tensorboard)."""

    def __init__(self, device: torch.device, world: int, stop: StopRequest, every: int, diverged, report=None):
        self.device, self.world, self.stop, self.every, self.diverged = device, world, stop, every, diverged
        self.report = report

    def begin(self, epoch: int, batches: int, lr: float, bar) -> None:
        self.epoch, self.batches, self.lr, self.bar = epoch, batches, lr, bar
        self.t0 = time.perf_counter()
        self.bad_step = torch.full((), -1, dtype=torch.int64, device=self.device)  # first non-finite loss: step
        self.bad_val = torch.zeros((), dtype=torch.float64, device=self.device)  # and value
        self.window = torch.zeros((), dtype=torch.float64, device=self.device)  # loss sum since the last sync

    def record(self, loss: torch.Tensor, step: int) -> torch.Tensor:
        """Note step `step`'s loss on the device (no sync); returns it as float64 on the device."""
        lv = loss.detach().double()
        first = (self.bad_step < 0) & ~lv.isfinite()
        self.bad_step, self.bad_val = torch.where(first, step, self.bad_step), torch.where(first, lv, self.bad_val)
        lv = lv.to(self.device)
        self.window += lv
        return lv

    def __call__(self, batch: int, step: int, images: int, force: bool = False) -> bool:
        """After `batch` (1-based) of the epoch: True when the loop is to stop before the epoch's end. Syncs
        only every `every` batches, at the last and where `force`d; ImgnetError when any process's loss went
        non-finite."""
        if batch % self.every and batch < self.batches and not force:
            return False
        stop = torch.tensor(float(self.stop.signum is not None), dtype=torch.float64, device=self.device)
        flags = torch.stack([(self.bad_step >= 0).double(), stop, self.window])
        if self.world > 1:
            dist.all_reduce(flags)
        diverged, stopping, window_sum = flags.tolist()
        self.window.zero_()
        if diverged:
            self.bar.close()  # the message then starts on a line of its own
            at, value = int(self.bad_step.item()), self.bad_val.item()
            if at < 0:  # another process diverged (here it shows from the next step on)
                at, value = step, float("nan")
            raise ImgnetError(self.diverged(value, at, self.epoch, batch - (step - at), self.batches, self.lr))
        n_win = (batch - 1) % self.every + 1
        rate = images * self.world / (time.perf_counter() - self.t0)
        loss = window_sum / self.world / n_win
        self.bar.set_postfix_str(f"loss {loss:.3f} lr {self.lr:g} {rate:.0f} img/s", refresh=False)
        if self.report is not None:
            self.report(step, loss)
        self.bar.update(n_win)
        return bool(stopping) and batch < self.batches

    def stop_requested(self) -> bool:
        """Whether any process was asked to stop (one all_reduce across ranks)."""
        flag = torch.tensor(float(self.stop.signum is not None), dtype=torch.float64, device=self.device)
        if self.world > 1:
            dist.all_reduce(flag)
        return bool(flag.item())


@dataclass(frozen=True)
class StepKnobs:
    """What the knobs beside the paper's recipe change in a step; the defaults are the recipe (one lr for the
    epoch, plain cross-entropy, no average, no step limit)."""

    lr_at: Callable[[int], float] | None = None  # lr of a step (1-based; cosine, warmup); None: the epoch's lr
    label_smoothing: float = 0.0  # of the training loss (torch's cross_entropy label_smoothing)
    ema: object = None  # trainer.ema.Ema, updated after every step
    max_steps: int | None = None  # the run stops once it has taken this many steps


def set_lr(optimizer, lr: float) -> None:
    """Give every optimizer group `lr` times its "lr_mult" (a recipe's per-layer multiplier; 1 where none)."""
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_mult", 1.0)


class LimitedLoader:
    """--limit-batches: at most `n` batches of each epoch of `loader`, the first n of its plan (a resumed epoch
    still gets exactly the ones it had not seen). Everything else is the loader's."""

    def __init__(self, loader, n: int):
        self.loader, self.n, self._start = loader, n, 0

    def __len__(self) -> int:
        return min(len(self.loader), self.n)

    def __getattr__(self, name):
        return getattr(self.loader, name)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self._start = start_batch
        self.loader.set_epoch(epoch, start_batch)

    def plan(self, epoch: int):
        """The loader's plan cut to the batches delivered (an evaluation's record order)."""
        p = self.loader.plan(epoch)
        batches = p.batches[:self.n]
        return dataclasses.replace(p, indices=p.indices[:batches[-1][1] if batches else 0], batches=batches)

    def __iter__(self):
        start, self._start = self._start, 0
        it = iter(self.loader)
        try:
            for _, batch in zip(range(len(self) - start), it):  # range first: no batch is read past the last
                yield batch
        finally:
            it.close()  # the loader's workers finish the chunks they were given

    def __enter__(self):
        self.loader.__enter__()
        return self

    def __exit__(self, *exc):
        return self.loader.__exit__(*exc)


@dataclass
class EpochTotals:
    """This process's sums over the epoch's batches so far (a resumed epoch starts from the saved ones)."""

    loss_sum: float = 0.0  # sum of per-image cross-entropy
    wrong: int = 0  # top-1 mistakes
    seen: int = 0  # images
    seen_before: int = 0  # images counted before this process resumed the epoch
    batch: int = 0  # batches of the epoch done
    stopped: bool = False  # a stop request (or --max-steps) ended the epoch early
    at_max_steps: bool = False  # --max-steps did


def train_epoch(net, loader, optimizer, scaler, sync: HostSync, state, amp: str, start: EpochTotals,
                knobs: StepKnobs = StepKnobs()) -> EpochTotals:
    """One epoch of SGD from batch `start.batch` on; `state.step` counts the steps. Returns the totals."""
    dev = sync.device
    loss_sum = torch.tensor(start.loss_sum, dtype=torch.float64, device=dev)  # running sums stay on the device
    wrong = torch.tensor(start.wrong, dtype=torch.int64, device=dev)
    seen, i = start.seen, start.batch
    net.train()
    for i, (x, y) in enumerate(loader, start=start.batch + 1):  # i: batches of the epoch done after this one
        if knobs.lr_at is not None:
            set_lr(optimizer, knobs.lr_at(state.step + 1))
        with autocast(amp, dev.type):
            logits = net(x)  # (B, num_classes)
        y = y.to(logits.device)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=knobs.label_smoothing)
        state.step += 1
        lv = sync.record(loss, state.step)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if knobs.ema is not None:
            knobs.ema.update()
        loss_sum += lv * y.shape[0]
        wrong += topk_wrong(logits.detach().argmax(1, keepdim=True), y, 1).sum().to(dev)
        seen += y.shape[0]
        at_max = knobs.max_steps is not None and state.step >= knobs.max_steps and i < sync.batches
        if sync(i, state.step, seen - start.seen, force=at_max) or at_max:
            return EpochTotals(loss_sum.item(), int(wrong.item()), seen, start.seen, i, stopped=True,
                               at_max_steps=at_max)
    return EpochTotals(loss_sum.item(), int(wrong.item()), seen, start.seen, i)
