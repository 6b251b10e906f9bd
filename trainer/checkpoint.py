"""Self-contained training checkpoints: one dict that `torch.load(path, weights_only=True)` reads.

    {"format": "imgnet-checkpoint", "version": 1,
     "model": state_dict (one-device, grouped form: no "module." / "_orig_mod." prefixes),
     "model_kwargs": dict for AlexNet(**kw), "optimizer": ..., "scheduler": ..., "scaler": ... or None,
     "epoch": completed epochs, "best_val_top1_err": float, "config": the TrainConfig as a dict,
     "labels": the labels.json dict, "stats": {stats.json keys..., "mean_image": float32 (256, 256, 3)},
     "rng": [per-rank {"torch", "cuda", "numpy", "python"}], "metrics": the epoch's log.jsonl line,
     "interrupted": None or {"epoch", "step"} for a Ctrl-C checkpoint taken inside an epoch}

Only plain containers, numbers, strings and tensors go in, so loading never runs pickled code.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from imagenet_prep.errors import ImgnetError

FORMAT = "imgnet-checkpoint"
VERSION = 1


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


def save_checkpoint(path, ckpt: dict) -> Path:
    """Write `ckpt` to `path` atomically: a crash leaves either the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(ckpt, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)
    return path


def link_checkpoint(src, dst) -> Path:
    """Make `dst` the same checkpoint as `src` atomically; a hard link costs no copy (a later
    `save_checkpoint(src)` replaces src's name with a new file, so dst keeps the old content)."""
    src, dst = Path(src), Path(dst)
    tmp = dst.with_name(f".{dst.name}.tmp{os.getpid()}")
    if tmp.exists():
        tmp.unlink()
    try:
        os.link(src, tmp)
    except OSError:  # filesystems without hard links
        shutil.copyfile(src, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
    os.replace(tmp, dst)
    _fsync_dir(dst.parent)
    return dst


def load_checkpoint(path, map_location="cpu") -> dict:
    """Read a checkpoint written by `save_checkpoint`; ImgnetError when missing, corrupt or foreign."""
    path = Path(path)
    if not path.is_file():
        raise ImgnetError(f"checkpoint {path} not found; expected a file written by `imgnet train`")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError, zipfile errors...
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ImgnetError(f"checkpoint {path} is corrupt or not loadable with weights_only=True "
                          f"({reason[:200]}); expected a file written by `imgnet train`") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ImgnetError(f"{path} is not an imgnet checkpoint (no format={FORMAT!r} entry); "
                          "expected a file written by `imgnet train`")
    if ckpt.get("version") != VERSION:
        raise ImgnetError(f"{path} is checkpoint version {ckpt.get('version')}; this imgnet reads version {VERSION}")
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


def model_from_checkpoint(ckpt: dict, device="cpu") -> torch.nn.Module:
    """Rebuild the AlexNet of a checkpoint dict (from `load_checkpoint`) in eval mode on `device`."""
    from trainer.model import AlexNet

    try:
        with torch.device("meta"):  # no time spent drawing the initial weights that are replaced at once
            model = AlexNet(**ckpt["model_kwargs"])
    except TypeError as e:  # a keyword AlexNet does not take
        raise ImgnetError(f"checkpoint model settings {ckpt['model_kwargs']} do not fit AlexNet: {e}") from e
    try:
        model.load_state_dict(ckpt["model"], assign=True)
    except RuntimeError as e:
        raise ImgnetError(f"checkpoint weights do not fit AlexNet({ckpt['model_kwargs']}): "
                          f"{str(e).splitlines()[0]}") from e
    return model.to(device).eval()


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
