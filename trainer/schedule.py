"""The learning-rate schedule of section 5 (divide by 10 when the validation error stops improving), the step
schedule, and two knobs beside the paper's recipe: cosine decay and linear warmup, both per optimizer step."""

from __future__ import annotations

import math

from imagenet_prep.errors import ImgnetError


def parse_schedule(spec: str) -> tuple[str, list[int]]:
    """'plateau' -> ('plateau', []); 'step:30,60,80' -> ('step', [30, 60, 80]); 'cosine' -> ('cosine', [])."""
    if spec in ("plateau", "cosine"):
        return spec, []
    if spec.startswith("step:"):
        try:
            ms = [int(s) for s in spec[5:].split(",") if s.strip()]
        except ValueError:
            ms = []
        if ms and all(m > 0 for m in ms) and ms == sorted(set(ms)):
            return "step", ms
    raise ImgnetError(f"--lr-schedule {spec!r}; expected 'plateau', 'cosine' or 'step:E1,E2,...' "
                      "(increasing epochs after which the lr is divided by 10, e.g. step:30,60,80)")


class LrSchedule:
    """The learning rate of each epoch. plateau: multiply by `factor` when the val top-1 error has not
    improved for `patience` epochs, at most `max_drops` times (section 5 did this by hand "when the
    validation error rate stopped improving"); step: multiply after each listed epoch. One lr for the run: the
    trainer gives each optimizer group this lr times the group's "lr_mult" (a model's per-layer multipliers,
    ModelSpec.param_groups; 1 where a group has none), so every group follows the schedule.

    Per step (`per_step`, `lr_at(step)`), off unless asked for: cosine takes the lr from `base_lr` at the first
    step towards 0 after the run's last (`epochs` x `steps_per_epoch` steps; a resume with more --epochs
    stretches the rest of the curve); `warmup_epochs` multiplies the first warmup_epochs x steps_per_epoch steps
    by step / warmup_steps (from 1/warmup_steps of the lr up to all of it), whatever the schedule. Both are a
    function of the step count alone, so a resume continues them exactly."""

    def __init__(self, spec: str, base_lr: float, factor: float = 0.1, patience: int = 3, max_drops: int = 3,
                 *, warmup_epochs: float = 0.0, epochs: int = 1, steps_per_epoch: int = 1):
        self.kind, self.milestones = parse_schedule(spec)
        self.base_lr, self.factor, self.patience, self.max_drops = base_lr, factor, patience, max_drops
        self.total_steps = max(1, epochs * steps_per_epoch)  # cosine's horizon
        self.warmup_steps = max(1, round(warmup_epochs * steps_per_epoch)) if warmup_epochs > 0 else 0
        self.drops = 0
        self.best = math.inf  # lowest val top-1 error seen
        self.bad_epochs = 0  # epochs since `best` improved

    @property
    def lr(self) -> float:
        # 12 significant digits: 0.01 * 0.1**2 is 0.00010000000000000002 in binary; the run means 0.0001
        return float(f"{self.base_lr * self.factor ** self.drops:.12g}")

    @property
    def per_step(self) -> bool:
        """Whether the lr changes inside an epoch (cosine, warmup): the loop then sets it before every step."""
        return self.kind == "cosine" or self.warmup_steps > 0

    def lr_at(self, step: int) -> float:
        """The lr of optimizer step `step` (1-based, counted over the run): `lr`, times the cosine and warmup
        factors where they are on (the paper's recipe: `lr` itself, the same number for every step of an epoch)."""
        if not self.per_step:
            return self.lr
        f = 1.0
        if self.kind == "cosine":
            f = 0.5 * (1.0 + math.cos(math.pi * min(step - 1, self.total_steps) / self.total_steps))
        if step <= self.warmup_steps:
            f *= step / self.warmup_steps
        return float(f"{self.base_lr * self.factor ** self.drops * f:.12g}")

    def step(self, epoch: int, val_top1_err: float) -> bool:
        """Record the finished `epoch` (1-based); True when the next epoch runs at a lower lr."""
        before = self.drops
        if val_top1_err < self.best:
            self.best, self.bad_epochs = val_top1_err, 0
        else:
            self.bad_epochs += 1
        if self.kind == "step":
            self.drops = sum(m <= epoch for m in self.milestones)
        elif self.kind == "plateau" and self.bad_epochs >= self.patience and self.drops < self.max_drops:
            self.drops += 1
            self.bad_epochs = 0
        return self.drops != before

    def state_dict(self) -> dict:
        return {"kind": self.kind, "milestones": list(self.milestones), "base_lr": self.base_lr,
                "factor": self.factor, "patience": self.patience, "max_drops": self.max_drops,
                "drops": self.drops, "best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, s: dict) -> None:
        self.drops, self.best, self.bad_epochs = s["drops"], s["best"], s["bad_epochs"]
