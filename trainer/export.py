"""`imgnet export CKPT --to FILE`: a checkpoint's weights for other tools, with a small JSON record beside them.

    --format pt     the plain state dict (`torch.save(model.state_dict())`; torchvision's keys for alexnet-owt)
    --format onnx   the network as ONNX (needs the `onnx` extra: pip install 'imgnet[onnx]'), input float
                    (N, 3, crop, crop), the network input of the record's convention, output logits (N, classes)

The record, FILE with the suffix .json (trainer.weights.sidecar_path), holds what a user of the weights needs:
arch, model settings, the run's settings, the input convention (paper: 0-255 minus DATA's mean image or mean
RGB, with mean_rgb listed; size, crop), the labels (wnids in label order and their names) and the weights
file's SHA-256. FILE and its record are written together atomically.
"""

from __future__ import annotations

import importlib.util
import json
import warnings
from pathlib import Path

import torch

from imagenet_prep.atomic import replacing
from imagenet_prep.errors import ImgnetError
from trainer import checkpoint as ck
from trainer.eval.mistakes import class_names
from trainer.weights import SIDECAR_FORMAT, file_sha256, sidecar_path

FORMATS = ("pt", "onnx")
ONNX_OPSET = 17


def export_format(to, fmt: str | None) -> str:
    """`fmt`, or by the suffix of `to`: onnx for .onnx, else pt."""
    fmt = fmt or ("onnx" if Path(to).suffix.lower() == ".onnx" else "pt")
    if fmt not in FORMATS:
        raise ImgnetError(f"--format {fmt!r}; expected {' or '.join(FORMATS)}")
    if fmt == "onnx" and not all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime")):
        raise ImgnetError("--format onnx needs the onnx extra (onnx, onnxruntime): pip install 'imgnet[onnx]'")
    if Path(to).suffix.lower() == ".json":
        raise ImgnetError(f"--to {to}: the .json name is the record written beside the weights; expected another "
                          "suffix (.pth, .pt, .onnx)")
    return fmt


def record(ckpt: dict, arch: str, fmt: str) -> dict:
    """The JSON record of an export (sha256 added once the file is written)."""
    size, crop = ck.input_geometry(ckpt)
    cfg, stats = ck.saved_config(ckpt), ckpt["stats"]
    wnids, names = class_names(ckpt["labels"])
    convention = ckpt.get("input", "paper")
    inp = {"convention": convention, "size": size, "crop": crop, "scale": "0-255" if convention == "paper" else "0-1"}
    if convention == "paper":
        inp.update(mean=ck.mean_mode(ckpt), mean_rgb=[float(v) for v in stats["mean_rgb"]])
    return {"format": SIDECAR_FORMAT, "version": 1, "weights_format": fmt, "arch": arch,
            "model_kwargs": ckpt["model_kwargs"], "input": inp, "labels": {"wnids": wnids, "names": names},
            "epoch": ckpt.get("epoch"), "best_val_top1_err": ckpt.get("best_val_top1_err"), "settings": cfg}


def export(ckpt_path, to, fmt: str | None = None, arch: str | None = None) -> dict:
    """Write checkpoint `ckpt_path`'s weights to `to` (plain state dict or ONNX) and the record beside it;
    returns {"path", "record", "format", "bytes", "sha256"}. `arch`: the user's --arch, for a checkpoint of a
    module:callable model."""
    from trainer.models.registry import checkpoint_arch

    fmt, to = export_format(to, fmt), Path(to)
    if to.exists() and to.resolve() == Path(ckpt_path).resolve():
        raise ImgnetError(f"--to {to} is the checkpoint itself; expected another file name")
    ckpt = ck.load_checkpoint(ckpt_path, map_location="cpu")
    ck.check_labels(ckpt, ckpt_path)
    name = checkpoint_arch(ckpt, arch)
    meta = record(ckpt, name, fmt)
    to.parent.mkdir(parents=True, exist_ok=True)
    with replacing(to, sidecar_path(to)) as (tmp, tmp_json):
        if fmt == "pt":
            torch.save(ckpt["model"], tmp)  # the one-device state dict: the model's own (torchvision's) keys
        else:
            write_onnx(ck.model_from_checkpoint(ckpt, arch=arch), ck.input_geometry(ckpt)[1], tmp)
        meta["sha256"] = file_sha256(tmp)
        tmp_json.write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return {"path": str(to), "record": str(sidecar_path(to)), "format": fmt, "bytes": to.stat().st_size,
            "sha256": meta["sha256"]}


def write_onnx(model: torch.nn.Module, crop: int, path) -> None:
    """`model` (eval mode, CPU) as ONNX: input "input" float (N, 3, crop, crop), output "logits", N dynamic."""
    x = torch.zeros(1, 3, crop, crop)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(model, (x,), str(path), input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=ONNX_OPSET,
                          dynamo=False)

