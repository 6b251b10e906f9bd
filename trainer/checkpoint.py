"""Self-contained training checkpoints: the one home of their schema, their checks and their restore.

A checkpoint is one dict that `torch.load(path, weights_only=True)` reads:

    {"format": "imgnet-checkpoint", "version": 3,
     "arch": "alexnet" | "alexnet-owt" | "module:callable" (version 1 has none: alexnet),
     "model": state_dict (one-device, grouped form: no "module." / "_orig_mod." prefixes),
     "model_kwargs": the keywords that rebuild the model, "optimizer": ..., "scaler": ... or None,
     "config": the TrainConfig as a dict, "labels": the labels.json dict,
     "stats": {stats.json keys..., "mean_image": float32 (N, N, 3)},
     "size": N, the side of DATA's images, "crop": the side of the crops the model takes (version 3; versions
     1 and 2 have neither: 256 and 224, `input_geometry`),
     and the run's state (`RunState`): "epoch" (completed), "step", "best_val_top1_err", "best_epoch",
     "scheduler", "metrics" (the epoch's log.jsonl line), "interrupted" (None, or where inside an epoch a
     stop request saved it), "rng" ([per-rank {"torch", "cuda", "numpy", "python"}])}

last.pt holds all of it, for --resume; best.pt is its lean form (`lean`: no optimizer, scaler, RNG states or
interrupt position; "lean": True), half the size for AlexNet, which is all test, predict and export read.

Only plain containers, numbers, strings and tensors go in, so loading never runs pickled code. Version 1
(written before `arch`, `step` and the bias-decay switch existed) loads as arch alexnet with weight decay on
every parameter, the rule it was trained with; versions 1 and 2 (written before sizes other than 256) load as
size 256 with 224 crops.
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from imagenet_prep.errors import ImgnetError

FORMAT = "imgnet-checkpoint"
VERSION = 3
READS = (1, 2, 3)
BEFORE_SIZES = {"size": 256, "crop": 224}  # what a version 1 or 2 checkpoint was trained on (no such keys)
# settings added with version 3, as every run before had them: a --resume of such a run compares equal
V2_CONFIG = {"crop": None, "flip": True, "fc_act": "off", "norm": "on"}
V1_CONFIG = {"arch": "alexnet", "bias_decay": True, "init": "paper"}  # what a version-1 run did (no such keys)
# the knobs beside the paper's recipe (trainer/config.py), off in every run written before they existed
KNOBS_OFF = {"warmup_epochs": 0.0, "label_smoothing": 0.0, "ema": 0.0, "limit_batches": None}
RESUME_ONLY = ("optimizer", "scaler", "rng", "interrupted", "ema")  # what best.pt leaves out (`lean`)


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:  # some filesystems do not open folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_temps(folder) -> list[Path]:
    """Delete the `.NAME.tmpPID` files of writers that no longer run (a kill -9 in the middle of a save
    leaves one, hundreds of MB): the next save or resume clears them."""
    gone = []
    for tmp in Path(folder).glob(".*.tmp*"):
        pid = tmp.name.rpartition(".tmp")[2]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)
            gone.append(tmp)
    return gone


def save_checkpoint(path, ckpt: dict) -> Path:
    """Write `ckpt` to `path` atomically: a crash leaves either the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(ckpt, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch's zip writer reports a failed write as RuntimeError
        why = e.strerror if isinstance(e, OSError) and e.strerror else (str(e).strip().splitlines() or ["?"])[-1]
        kept = f"the previous {path.name} is intact" if path.exists() else f"no {path.name} was written"
        raise ImgnetError(f"cannot write the checkpoint {path} ({why[:200]}); {kept}: free space in {path.parent} "
                          "(or fix the disk) and rerun with --resume") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)
    return path


def lean(ckpt: dict) -> dict:
    """What `imgnet test`, `predict`, `export` and `train --init-from` read of a checkpoint: everything but the
    state only a resume needs (RESUME_ONLY; the optimizer's momentum is as large as the weights)."""
    return {**{k: v for k, v in ckpt.items() if k not in RESUME_ONLY}, "lean": True}


def save_best(ckdir, ckpt: dict) -> Path:
    """Write the lean form of `ckpt` as ckdir/best.pt, atomically (last.pt keeps the full state for --resume)."""
    return save_checkpoint(Path(ckdir) / "best.pt", lean(ckpt))


def _epoch_of(path: Path):
    """The "epoch" entry of a checkpoint file (read lazily: the tensors stay on disk), or None when unreadable."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("epoch")
    except Exception:  # missing, truncated, foreign: not the current best in any case
        return None


def load_checkpoint(path, map_location="cpu") -> dict:
    """Read a checkpoint written by `save_checkpoint`; ImgnetError when missing, corrupt or foreign."""
    path = Path(path)
    if os.path.lexists(path) and not path.is_file():
        raise ImgnetError(f"checkpoint {path} is not a regular file (a folder, device or FIFO, or a link to one); "
                          "expected a file written by `imgnet train`")
    if not path.is_file():
        raise ImgnetError(f"checkpoint {path} not found; expected a file written by `imgnet train`")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError, zipfile errors...
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if len(reason) > 300:  # cut at a word, and say so, rather than mid-sentence
            reason = reason[:300].rsplit(" ", 1)[0] + " ..."
        hint = (f"; the run cannot resume: start a new --out from the best weights (imgnet train --init-from "
                f"{path.parent / 'best.pt'})" if path.name == "last.pt"
                else "; expected a file written by `imgnet train` (is the copy complete?)")
        raise ImgnetError(f"checkpoint {path} is corrupt or truncated: not loadable with weights_only=True "
                          f"({reason}){hint}") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ImgnetError(f"{path} is not an imgnet checkpoint (no format={FORMAT!r} entry); "
                          "expected a file written by `imgnet train`")
    if ckpt.get("version") not in READS:
        raise ImgnetError(f"{path} is checkpoint version {ckpt.get('version')}; this imgnet reads versions "
                          f"{', '.join(map(str, READS))}")
    missing = [k for k in ("model", "model_kwargs", "labels", "stats") if k not in ckpt]
    if missing:
        raise ImgnetError(f"{path} lacks {', '.join(missing)}; expected a complete imgnet checkpoint")
    return ckpt


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside DistributedDataParallel and/or torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def model_state(model: torch.nn.Module) -> dict:
    """state_dict on the CPU with wrapper prefixes removed, so any process and device can load it."""
    model = unwrap(model)
    # a model-parallel net saves its weights joined back under the one-device AlexNet's keys
    state = model.grouped_state_dict() if hasattr(model, "grouped_state_dict") else model.state_dict()
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}  # the plain layout, whatever the memory format


def model_from_checkpoint(ckpt: dict, device="cpu", arch: str | None = None) -> torch.nn.Module:
    """Rebuild the model of a checkpoint dict (from `load_checkpoint`) in eval mode on `device`. `arch`: the
    user's --arch, needed (and only then imported) when the checkpoint's model is user code."""
    from trainer.models.registry import build, checkpoint_arch

    name = checkpoint_arch(ckpt, arch)
    with torch.device("meta"):  # no time spent drawing the initial weights that are replaced at once
        model, _ = build(name, ckpt["model_kwargs"], init="module")
    try:
        model.load_state_dict(ckpt["model"], assign=True)
    except RuntimeError as e:
        raise ImgnetError(f"checkpoint weights do not fit {name}({ckpt['model_kwargs']}): "
                          f"{str(e).splitlines()[0]}") from e
    return model.to(device).eval()


# ------------------------------------------------------------------------------------- checks
def saved_config(ckpt: dict) -> dict:
    """The run's settings, with what a version-1 or -2 run did for the keys it did not have yet."""
    return {**V1_CONFIG, **V2_CONFIG, **KNOBS_OFF, **(ckpt.get("config") or {})}


def input_geometry(ckpt: dict) -> tuple[int, int]:
    """(size, crop): the side of the images the checkpoint's model was trained on and of its crops."""
    return int(ckpt.get("size", BEFORE_SIZES["size"])), int(ckpt.get("crop", BEFORE_SIZES["crop"]))


def mean_mode(ckpt: dict) -> str:
    """"image" or "rgb": which mean the model's input had subtracted."""
    mode = saved_config(ckpt).get("mean", "image")
    if mode not in ("image", "rgb"):
        raise ImgnetError(f"the checkpoint's config has mean={mode!r}; expected 'image' or 'rgb'")
    return mode


def check_labels(ckpt: dict, ckpt_path, data_labels: dict | None = None, data_dir=None) -> None:
    """The checkpoint's label map must fit its model and, when given, DATA/labels.json (same classes,
    same order): otherwise an ImgnetError naming both sides."""
    from imagenet_prep.labels import labels_sha256

    labels = ckpt.get("labels")
    if not isinstance(labels, dict) or not labels.get("classes"):
        raise ImgnetError(f"{ckpt_path} holds no label map ('labels'); expected a checkpoint written by `imgnet train`")
    n_model, n_labels = (ckpt.get("model_kwargs") or {}).get("num_classes", 1000), len(labels["classes"])
    if n_model != n_labels:
        raise ImgnetError(f"{ckpt_path}: the model has {n_model} outputs but its label map lists {n_labels} classes")
    if data_labels is None:
        return
    n_data = len(data_labels["classes"])
    lj = Path(data_dir) / "labels.json"
    if n_data != n_labels:
        raise ImgnetError(f"{ckpt_path} was trained on {n_labels} classes but {lj} lists {n_data}; "
                          "expected the DATA folder the checkpoint was trained from (same classes)")
    a, b = labels_sha256(labels), labels_sha256(data_labels)
    if a != b:
        first = next((i for i, (c, d) in enumerate(zip(labels["classes"], data_labels["classes"]))
                      if c.get("wnid") != d.get("wnid")), None)
        where = (f" (index {first}: {labels['classes'][first]['wnid']} in the checkpoint, "
                 f"{data_labels['classes'][first]['wnid']} in labels.json)" if first is not None else "")
        raise ImgnetError(f"{ckpt_path} has another label map (labels_sha256 {a[:12]}) than {lj} "
                          f"(labels_sha256 {b[:12]}){where}; expected the same classes in the same order")


# ---------------------------------------------------------------------------------- run state
@dataclass
class RunState:
    """Where a run stands between steps: everything a checkpoint holds beyond weights and optimizer.
    `schedule` is the LrSchedule (its state_dict goes in); `inside` the position in an interrupted epoch
    {"epoch", "batch", "step", "loss_sum", "wrong", "seen"}, consumed by the epoch it resumes."""

    schedule: object  # trainer.schedule.LrSchedule
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    best_err: float = math.inf  # lowest val top-1 error so far
    best_epoch: int | None = None
    metrics: dict | None = None  # the last completed epoch's log line
    inside: dict | None = None


def to_checkpoint(state: RunState, *, run: dict, model, optimizer, scaler, rng: list) -> dict:
    """The checkpoint dict of `state`. `run`: what stays fixed over a run, {"arch", "model_kwargs",
    "config", "labels", "stats", "size", "crop"}; `rng`: every process's RNG states (rank order)."""
    return {"format": FORMAT, "version": VERSION, **run, "model": model_state(model),
            "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() if scaler.is_enabled() else None,
            "scheduler": state.schedule.state_dict(), "epoch": state.epoch, "step": state.step,
            "best_val_top1_err": state.best_err, "best_epoch": state.best_epoch, "metrics": state.metrics,
            "interrupted": state.inside, "rng": rng}


def restore(ckpt: dict, state: RunState, *, optimizer, scaler, rank: int, world: int,
            steps_per_epoch: int) -> str | None:
    """Load a checkpoint's optimizer, scaler, schedule, counters and this rank's RNG streams into the run;
    returns a note for the log when the resume is not bit-exact (or starts inside an epoch)."""
    if ckpt.get("optimizer") is None:
        raise ImgnetError("the checkpoint to resume from holds no optimizer state (a best.pt keeps the weights "
                          "only); expected the run's last.pt, or start a new --out with --init-from")
    optimizer.load_state_dict(ckpt["optimizer"])
    if ckpt.get("scaler") and scaler.is_enabled():
        scaler.load_state_dict(ckpt["scaler"])
    state.schedule.load_state_dict(ckpt["scheduler"])
    state.epoch, state.best_err, state.best_epoch = ckpt["epoch"], ckpt["best_val_top1_err"], ckpt.get("best_epoch")
    state.metrics, state.inside = ckpt.get("metrics"), ckpt.get("interrupted")
    # version 1 kept no step count: it is the epochs' batches, or the interrupt's own count
    state.step = (state.inside or {}).get("step") or ckpt.get("step") or state.epoch * steps_per_epoch
    rngs = ckpt.get("rng") or []
    if len(rngs) == world:
        set_rng_state(rngs[rank])
    else:
        return f"resumed with {world} processes from a run with {len(rngs)}: random streams reseeded"
    if state.inside:
        return (f"resumed inside epoch {state.inside['epoch']} after batch {state.inside['batch']} of "
                f"{steps_per_epoch}, from the checkpoint its interrupt saved")
    return None


def repair_best(ckdir, ckpt: dict) -> str | None:
    """Make best.pt agree with `ckpt`, last.pt's record, after a crash between saving last.pt and writing best.pt
    (best.pt missing, unreadable or an older one): the lean form of last.pt. Returns what was done, or None when
    nothing needed doing."""
    best = Path(ckdir) / "best.pt"
    if ckpt.get("best_epoch") is None:
        return None
    if ckpt["best_epoch"] == ckpt["epoch"] and not ckpt.get("interrupted"):  # last.pt is the best one
        if best.is_file() and _epoch_of(best) == ckpt["epoch"]:
            return None
        was = "stale" if best.exists() else "missing"
        save_best(ckdir, ckpt)
        return f"repaired {best}: it was {was} (epoch {ckpt['epoch']} is the best)"
    if not best.is_file():
        return (f"warning: {best} is missing and cannot be rebuilt (the best epoch {ckpt['best_epoch']} is not "
                f"the last); it is written again at the next new best")
    return None


# ----------------------------------------------------------------------------- RNG states
def rng_state() -> dict:
    """Every random generator the training step touches, in a weights_only-loadable form."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "python": random.getstate(),
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
