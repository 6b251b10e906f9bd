"""Which network a run trains: `--arch alexnet` (the paper's, the default), `alexnet-owt` (torchvision's
variant, the usual baseline) or `module:callable`, the user's own factory `callable(num_classes=N)` that
returns an `nn.Module` taking float (N, 3, 224, 224) on the paper's 0-255 mean-subtracted scale.

    model, kwargs = build("alexnet", {"num_classes": 1000, "towers": 2, ...})
    model = build(ckpt_arch, ckpt["model_kwargs"])[0]     # what checkpoints rebuild

User code is imported only when the user names it (`--arch pkg.mod:fn`); a checkpoint that records such
an arch is rebuilt only when the caller passes the same name again (`trusted`), never because the file says so.
"""

from __future__ import annotations

import importlib
from dataclasses import asdict, fields

from torch import nn

from imagenet_prep.errors import ImgnetError
from trainer.model import ALEXNET_ONLY, AlexNet, AlexNetOWT, AlexNetOWTSettings, AlexNetSettings, init_by_position

DEFAULT = "alexnet"
BUILTIN = {"alexnet": (AlexNet, AlexNetSettings), "alexnet-owt": (AlexNetOWT, AlexNetOWTSettings)}


def check_arch(arch: str) -> str:
    """`arch` if it names a built-in or has the form module:callable; ImgnetError otherwise."""
    if arch in BUILTIN:
        return arch
    mod, _, fn = arch.partition(":")
    if mod and fn and all(p.isidentifier() for p in mod.split(".") + fn.split(".")):
        return arch
    raise ImgnetError(f"--arch {arch!r}; expected {', '.join(BUILTIN)} or module:callable "
                      "(a factory called with num_classes that returns an nn.Module), e.g. mypkg.nets:resnet18")


def settings_of(arch: str, values: dict) -> dict:
    """The model keywords `arch` takes from `values` (a TrainConfig as a dict plus num_classes), checked.
    ImgnetError when an AlexNet-only switch (or, for a user's model, --dropout) is set away from its default."""
    if arch == DEFAULT:
        return asdict(AlexNetSettings(**{f.name: values[f.name] for f in fields(AlexNetSettings)}))
    defaults = AlexNetSettings()
    own = ALEXNET_ONLY + (() if arch in BUILTIN else ("dropout",))  # a user's model has its own dropout
    changed = [n for n in own if n in values and values[n] != getattr(defaults, n)]
    if changed:
        raise ImgnetError(f"{', '.join('--' + n.replace('_', '-') for n in changed)}: --arch {arch} does not take "
                          "this setting (the AlexNet-only switches, and --dropout for a module:callable model, "
                          "stay at their defaults)")
    if arch in BUILTIN:
        kind = BUILTIN[arch][1]
        return asdict(kind(**{f.name: values[f.name] for f in fields(kind) if f.name in values}))
    return {"num_classes": values["num_classes"]}


def _factory(arch: str):
    mod, _, name = check_arch(arch).partition(":")
    try:
        obj = importlib.import_module(mod)
        for part in name.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise ImgnetError(f"--arch {arch}: cannot import it ({e}); expected an importable module:callable") from e
    if not callable(obj):
        raise ImgnetError(f"--arch {arch}: {name} is not callable; expected a factory returning an nn.Module")
    return obj


def build(arch: str, kwargs: dict, init: str = "paper", bias_init: str = "paper") -> tuple[nn.Module, dict]:
    """(freshly initialised model, the kwargs that rebuild it). Built-ins take the paper's init themselves;
    a user factory's model gets it too (`init_by_position`) unless init="module" keeps its own."""
    if arch in BUILTIN:
        try:
            model = BUILTIN[arch][0](**kwargs)
        except TypeError as e:  # a keyword the class does not take (a foreign checkpoint)
            raise ImgnetError(f"model settings {kwargs} do not fit --arch {arch}: {e}") from e
        return model, dict(model.model_kwargs)
    model = _factory(arch)(num_classes=kwargs["num_classes"])
    if not isinstance(model, nn.Module):
        raise ImgnetError(f"--arch {arch} returned {type(model).__name__}; expected an nn.Module")
    if init == "paper":
        init_by_position(model, bias_init)
    return model, {"num_classes": kwargs["num_classes"]}


def checkpoint_arch(ckpt: dict, trusted: str | None = None) -> str:
    """The arch a checkpoint records ("alexnet" for format version 1). A module:callable arch is refused
    unless the caller names it (`trusted`, the user's --arch): loading a file never imports code by itself."""
    arch = ckpt.get("arch") or DEFAULT
    if arch in BUILTIN or arch == trusted:
        return arch
    raise ImgnetError(f"the checkpoint's model is user code ({arch}); pass --arch {arch} to import it "
                      "(a checkpoint never makes imgnet import code on its own)")
