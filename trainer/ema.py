"""`imgnet train --ema DECAY`: an exponential moving average of the weights, updated after every optimizer step
(torch.optim.swa_utils.AveragedModel with get_ema_multi_avg_fn: w_ema <- decay * w_ema + (1 - decay) * w, the
first step's weights copied as they are). The parameters are averaged; buffers (batch-norm statistics, where a
model has any) follow the trained model's. Its state goes into every checkpoint (`state_dict`, the "ema" entry),
so a resume continues it exactly; `ema_checkpoint` turns a checkpoint into one whose weights are the average,
for `imgnet test` and `imgnet predict`."""

from __future__ import annotations

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from imagenet_prep.errors import ImgnetError
from trainer import checkpoint as ck

class Ema:
    """The moving average of `model`'s parameters (a copy of the model, on the same devices; `model` is the plain
    one, not a DistributedDataParallel or compiled wrapper)."""

    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0 < decay < 1:
            raise ImgnetError(f"ema decay {decay}; expected a number in (0, 1) such as 0.9998")
        self.source, self.decay = model, decay
        self.avg = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=False)

    @property
    def module(self) -> torch.nn.Module:
        """The averaged model, to validate (its buffers as of the last update)."""
        return self.avg.module

    @torch.no_grad()
    def update(self) -> None:
        """Average in the model's weights as they are now (after an optimizer step)."""
        self.avg.update_parameters(self.source)

    def state_dict(self) -> dict:
        """{"decay", "updates", "model"}: the weights in checkpoint form (trainer.checkpoint.model_state)."""
        return {"decay": self.decay, "updates": int(self.avg.n_averaged.item()), "model": ck.model_state(self.module)}

    def load_state_dict(self, s: dict) -> None:
        m = self.module
        (m.load_grouped_state_dict if hasattr(m, "load_grouped_state_dict") else m.load_state_dict)(s["model"])
        self.avg.n_averaged.fill_(int(s["updates"]))


def ema_checkpoint(ckpt: dict) -> dict:
    """The checkpoint `ckpt` (with an "ema" entry) with the averaged weights as its model and without the
    training state: what `imgnet test --ckpt RUN/checkpoints/ema/last.pt` reads."""
    return {**ck.lean(ckpt), "model": ckpt["ema"]["model"],
            "weights": {"ema": ckpt["ema"]["decay"], "updates": ckpt["ema"]["updates"]}}
