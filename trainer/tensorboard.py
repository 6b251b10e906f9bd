"""`imgnet train --tensorboard`: the numbers of each log.jsonl line, also as TensorBoard scalars in event files
in the run folder (`tensorboard --logdir RUN`), written by rank 0: each under its log key at step = the epoch,
and at every host sync (every step on the CPU, every 16 on CUDA) the training loss since the last one and the
lr, as step/train_loss and step/lr at step = the optimizer step. The tensorboard package is an extra
(pip install 'imgnet[tensorboard]'); a run that asks for it where it is missing refuses to start."""

from __future__ import annotations

from pathlib import Path

from imagenet_prep.errors import ImgnetError

INSTALL = "pip install 'imgnet[tensorboard]' (or pip install tensorboard)"


def check_available() -> None:
    """ImgnetError, one line saying how to install it, where torch's SummaryWriter cannot be imported."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401 - imports the tensorboard package
    except ImportError as e:
        raise ImgnetError(f"--tensorboard needs the tensorboard package, which is not installed here "
                          f"({(str(e).strip().splitlines() or ['ImportError'])[0]}); "
                          f"install it with: {INSTALL}") from None


class RunScalars:
    """A SummaryWriter in RUN: `add(line)` writes every number of an epoch's log line (booleans left out) as
    the scalar of that name at step = the epoch; `add_step(step, loss)` the training loss and `optimizer`'s lr
    (of a group without a multiplier) at an optimizer step. A context manager: leaving it closes the files."""

    def __init__(self, run: Path, optimizer):
        check_available()
        from torch.utils.tensorboard import SummaryWriter

        self.writer, self.optimizer = SummaryWriter(log_dir=str(run)), optimizer

    def add_step(self, step: int, loss: float) -> None:
        g = self.optimizer.param_groups[0]
        self.writer.add_scalar("step/train_loss", loss, global_step=step)
        self.writer.add_scalar("step/lr", g["lr"] / g.get("lr_mult", 1.0), global_step=step)

    def add(self, line: dict) -> None:
        for key, v in line.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and key != "epoch":
                self.writer.add_scalar(key, v, global_step=line["epoch"])
        self.writer.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.writer.close()
        return False
