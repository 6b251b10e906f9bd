"""Plain weights in: state dicts from anywhere, for `imgnet test/predict --weights` and `imgnet train --init-from`.

A weights file is what `torch.save(model.state_dict())` writes, a dict holding one under "state_dict" (timm's
training checkpoints), or a checkpoint of this project (its "model"). It is read with
`torch.load(weights_only=True)`: data, never code. Keys are the model's own: `--arch alexnet-owt` has
torchvision's names already (features.0.weight ... classifier.6.bias, the same shapes), so torchvision's
`alexnet-owt-7be5be79.pth` loads as it is; the one renaming is dropping the "module." (DistributedDataParallel)
and "_orig_mod." (torch.compile) prefixes.

Input conventions (`--input`), the network input those weights were trained on:

    paper         x = crop(P - M), 0-255 scale, M the mean image or mean RGB of DATA (this project's input)
    torchvision   x = (P / 255 - mean) / std, mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225)

The torchvision input is the paper's arithmetic with a constant mean RGB of 255 * mean and a division by
255 * std (`InputTransform(std=...)`), so both go through the same transform and loader.

`imgnet export` (trainer/export.py) writes FILE and FILE's sidecar (`sidecar_path`): arch, model settings,
input convention, labels; `load_weights` reads it back when it is there.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from imagenet_prep.errors import ImgnetError
from trainer import checkpoint as ck

TORCHVISION_MEAN = (0.485, 0.456, 0.406)  # [0, 1] scale: torchvision.transforms.Normalize of its ImageNet weights
TORCHVISION_STD = (0.229, 0.224, 0.225)
CONVENTIONS = ("paper", "torchvision")
PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel, torch.compile
SIDECAR_FORMAT = "imgnet-weights"
MAX_SIDECAR_BYTES = 16 << 20  # 1000 classes: about 60 kB


def check_convention(name) -> str:
    if name not in CONVENTIONS:
        raise ImgnetError(f"--input {name!r}; expected paper (0-255, mean subtracted) or torchvision ([0, 1] pixels, "
                          "per-channel mean and std)")
    return name


def file_sha256(path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks: what the export record and the launch record keep."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _shape(t) -> tuple:
    return tuple(t.shape)


def _plain(key: str) -> str:
    for p in PREFIXES:
        while key.startswith(p):
            key = key[len(p):]
    return key


def read_state_dict(path) -> dict[str, torch.Tensor]:
    """The state dict in `path` (float tensors as float32, wrapper prefixes dropped); ImgnetError when the file
    is missing, not loadable as data, or holds something else."""
    path = Path(path)
    if not path.is_file():
        raise ImgnetError(f"{path} not found (or not a file); expected a state dict file "
                          "(torch.save(model.state_dict()))")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickled code, a truncated zip, not a torch file at all
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ImgnetError(f"{path} is not loadable as data with torch.load(weights_only=True) ({reason}); expected "
                          "a state dict saved with torch.save(model.state_dict())") from None
    if isinstance(obj, dict) and obj.get("format") == ck.FORMAT:
        obj = obj.get("model")  # a checkpoint of this project
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]  # timm's (and Lightning's) training checkpoints
    tensors = isinstance(obj, dict) and all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items())
    if not tensors or not obj:
        raise ImgnetError(f"{path} is not a state dict; expected a dict of parameter names to tensors, as "
                          "torch.save(model.state_dict()) writes (or such a dict under 'state_dict')")
    return {_plain(k): (v.float() if v.is_floating_point() else v) for k, v in obj.items()}


def check_fits(state: dict, expected: dict, path, arch: str, free=()) -> None:
    """ImgnetError naming the first key, in the model's order, that `state` lacks or holds in another shape than
    `expected` (a state dict of the --arch model), then the first key the model does not have. `free`: keys whose
    shape may differ (a final layer re-initialised for fine-tuning)."""
    for k, v in expected.items():
        if k not in state:
            raise ImgnetError(f"{path} has no {k}; --arch {arch} expects {k} of shape {_shape(v)} (the first key "
                              f"missing of its {len(expected)})")
        if _shape(state[k]) != _shape(v) and k not in free:
            raise ImgnetError(f"{path}: {k} has shape {_shape(state[k])}; --arch {arch} expects {_shape(v)}")
    extra = [k for k in state if k not in expected]
    if extra:
        raise ImgnetError(f"{path} has {extra[0]}" + (f" (and {len(extra) - 1} more keys)" if len(extra) > 1 else "")
                          + f", which --arch {arch} has not; expected its {len(expected)} keys, "
                            f"{next(iter(expected))} first")


def _meta_state(arch: str, kwargs: dict) -> dict:
    """The state dict of `arch` built with `kwargs` on the meta device: keys and shapes, no memory."""
    from trainer.models.registry import build

    with torch.device("meta"):
        model, _ = build(arch, kwargs, init="module")
    return model.state_dict()


def head_keys(model: torch.nn.Module) -> list[str]:
    """The state dict keys of the module that holds the model's last parameter (its final layer)."""
    last = [name for name, _ in model.named_parameters()][-1]
    prefix = last.rpartition(".")[0] + "."
    return [k for k in model.state_dict() if k.startswith(prefix) and "." not in k[len(prefix):]]


# ----------------------------------------------------------------------------------- --init-from
def init_state(path, arch: str, model: torch.nn.Module) -> tuple[dict, str | None]:
    """(the state dict to start a run from, a note or None): the weights of `path` (a state dict or a checkpoint
    of this project) for the freshly built `model`, whose final layer is kept (re-initialised) where `path`'s has
    another number of outputs. ImgnetError naming the first key or shape that does not fit otherwise."""
    state, fresh = read_state_dict(path), model.state_dict()
    head = head_keys(model)
    free = [k for k in head if k in state and _shape(state[k])[1:] == _shape(fresh[k])[1:]]
    check_fits(state, fresh, path, arch, free=free)
    redo = [k for k in free if _shape(state[k]) != _shape(fresh[k])]
    if not redo:
        return state, None
    was, now = _shape(state[redo[0]])[0], _shape(fresh[redo[0]])[0]
    state.update({k: fresh[k] for k in redo})
    return state, (f"--init-from {path}: the final layer {redo[0].rpartition('.')[0]} is re-initialised ({was} "
                   f"outputs in the file, {now} classes here); every other layer starts from the file")


# -------------------------------------------------------------------------------- test and predict
def sidecar_path(path) -> Path:
    """The JSON `imgnet export` writes beside a weights file: alexnet.pth -> alexnet.json."""
    return Path(path).with_suffix(".json")


def read_sidecar(path) -> dict | None:
    """The export record beside weights file `path`, or None where there is none."""
    from imagenet_prep.atomic import read_json

    side = sidecar_path(path)
    if side == Path(path) or not side.is_file():
        return None
    meta = read_json(side, MAX_SIDECAR_BYTES, f"the JSON `imgnet export` writes beside {Path(path).name}")
    if not isinstance(meta, dict) or meta.get("format") != SIDECAR_FORMAT:
        raise ImgnetError(f"{side} is not an export record (no format={SIDECAR_FORMAT!r}); expected the JSON "
                          f"`imgnet export` writes beside {Path(path).name}, or no file of that name")
    lab = meta.get("labels")
    if not (isinstance(lab, dict) and isinstance(lab.get("wnids"), list) and isinstance(lab.get("names"), list)
            and len(lab["wnids"]) == len(lab["names"]) > 0):
        raise ImgnetError(f"{side} has no labels {{'wnids': [...], 'names': [...]}} of equal length; expected the "
                          "JSON `imgnet export` writes")
    return meta


def labels_of(meta: dict) -> dict:
    """A labels.json-shaped dict of an export record's labels (wnids and names, in label order)."""
    lab = meta["labels"]
    return {"order": "sorted", "classes": [{"index": i, "wnid": w, "words": n} for i, (w, n) in
                                           enumerate(zip(lab["wnids"], lab["names"]))]}


def _shipped_labels() -> dict:
    """The 1000 ILSVRC2012 classes in sorted-wnid order: torchvision's and timm's class indices."""
    from imagenet_prep.labels import build_label_map, sorted_wnids

    return build_label_map(sorted_wnids()).to_json()


def rgb_stats(mean_rgb, size: int, eigval=(0.0, 0.0, 0.0), eigvec=np.eye(3)) -> dict:
    """Statistics of a constant mean: the mean image of `size` filled with the mean RGB ([0, 1] scale)."""
    m = np.asarray(mean_rgb, np.float64).reshape(3)
    image = np.broadcast_to((255.0 * m).astype(np.float32), (size, size, 3)).copy()
    return {"mean_rgb": m.tolist(), "eigval": list(eigval), "eigvec": np.asarray(eigvec).tolist(),
            "mean_image": torch.from_numpy(image), "size": size}


def eval_transform(ckpt: dict):
    """The evaluation InputTransform of a checkpoint dict (or `load_weights`' form): its input convention."""
    from trainer.data import InputTransform

    crop = ck.input_geometry(ckpt)[1]
    if ckpt.get("input", "paper") == "torchvision":
        return InputTransform(ckpt["stats"], mean="rgb", lighting_std=0.0, crop=crop,
                              std=255.0 * np.asarray(TORCHVISION_STD))
    return InputTransform(ckpt["stats"], mean=ck.mean_mode(ckpt), lighting_std=0.0, crop=crop)


def _agree(name: str, given, recorded, side: Path):
    if given is not None and recorded is not None and given != recorded:
        raise ImgnetError(f"--{name} {given} but {side} records {recorded}; expected the same, or leave --{name} out")
    return given if given is not None else recorded


def _data_size(data_dir) -> int:
    from imagenet_prep import open_split
    from trainer.data import held_out_split

    s = open_split(data_dir, held_out_split(data_dir))
    try:
        return s.size
    finally:
        s.close()


def load_weights(path, arch: str | None = None, input: str | None = None, data_dir=None) -> dict:
    """Plain weights as the checkpoint-shaped dict `imgnet test` and `predict` read ("arch", "model_kwargs",
    "model", "labels", "stats", "size", "crop", "config", "input"). What `path`'s export record (sidecar) holds
    fills in what is not given; `data_dir` (DATA) gives the labels and, for the paper input, the mean.
    Without either, the labels are the 1000 ILSVRC2012 classes in sorted-wnid order (torchvision's)."""
    path = Path(path)
    meta, side = read_sidecar(path), sidecar_path(path)
    arch = _agree("arch", arch, (meta or {}).get("arch"), side)
    if arch is None:
        raise ImgnetError(f"--weights {path}: which network? expected --arch (alexnet-owt for torchvision's "
                          "alexnet weights)")
    rec = (meta or {}).get("input") or {}
    convention = _agree("input", input, rec.get("convention"), side)
    if convention is None:
        raise ImgnetError(f"--weights {path}: which input were the weights trained on? expected --input paper "
                          "(0-255, mean subtracted) or --input torchvision ([0, 1], per-channel mean and std)")
    check_convention(convention)
    labels = _weights_labels(meta, side, data_dir)
    size = _data_size(data_dir) if data_dir is not None else int(rec.get("size", 256))
    mean = rec.get("mean", "image")
    if convention == "torchvision":
        stats = rgb_stats(TORCHVISION_MEAN, size)
    elif data_dir is not None:
        from imagenet_prep.stats import load_stats

        stats = load_stats(data_dir)
    elif mean == "rgb" and "mean_rgb" in rec:
        stats = rgb_stats(rec["mean_rgb"], size)
    else:
        raise ImgnetError(f"--weights {path} with --input paper needs the mean image it was trained with: "
                          "expected --data DATA (its stats.json and stats.h5)")
    from trainer.models.registry import settings_of

    kwargs = {**settings_of(arch, {}), **(meta or {}).get("model_kwargs", {}), "num_classes": len(labels["classes"])}
    state = read_state_dict(path)
    check_fits(state, _meta_state(arch, kwargs), path, arch)
    crop = int(rec["crop"]) if "crop" in rec else size * 7 // 8
    return {"format": ck.FORMAT, "version": ck.VERSION, "arch": arch, "model_kwargs": kwargs, "model": state,
            "labels": labels, "stats": stats, "size": size, "crop": crop, "config": {"mean": mean},
            "input": convention, "epoch": (meta or {}).get("epoch")}


def _weights_labels(meta: dict | None, side: Path, data_dir) -> dict:
    """DATA's labels.json (checked against the export record's wnids), else the record's, else the shipped 1000."""
    if data_dir is not None:
        from imagenet_prep.labels import read_labels_json

        labels = read_labels_json(data_dir)
        if meta is not None:
            have, want = meta["labels"]["wnids"], [c["wnid"] for c in labels["classes"]]
            if have != want:
                at = next((i for i, (a, b) in enumerate(zip(have, want)) if a != b), min(len(have), len(want)))
                raise ImgnetError(f"{side} lists {len(have)} classes, {Path(data_dir) / 'labels.json'} {len(want)}, "
                                  f"differing from index {at}; expected the classes the weights were trained on")
        return labels
    return labels_of(meta) if meta is not None else _shipped_labels()
