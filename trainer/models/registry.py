"""Which network a run trains: a registered model by name (`--arch alexnet`, the paper's, the default;
`alexnet-owt`, torchvision's variant) or `module:callable`, the user's own factory `callable(num_classes=N)`
returning an `nn.Module` that takes float (N, 3, 224, 224) on the paper's 0-255 mean-subtracted scale.

    model, kwargs = build("alexnet", settings_of("alexnet", {"num_classes": 1000, "towers": 2, ...}))
    model = build(ckpt_arch, ckpt["model_kwargs"], init="module")[0]    # what checkpoints rebuild

A built-in model is one module under trainer/models/ that defines `SPEC = ModelSpec(...)` (base.py) and one
line in MODELS below. Its settings dataclass makes its switches: `switch_fields()` collects them for
TrainConfig and `imgnet train`; a switch of another model stays at its default (`settings_of`).

User code is imported only when the user names it (`--arch pkg.mod:fn`); a checkpoint that records such
an arch is rebuilt only when the caller passes the same name again (`trusted`), never because the file says so.
"""

from __future__ import annotations

import importlib
from dataclasses import asdict, fields

from torch import nn

from imagenet_prep.errors import ImgnetError
from trainer.models.base import ModelSpec, UserModelSettings
from trainer.models.init import init_by_position

# name -> the module that defines its SPEC, in the order `--arch` lists them
MODELS = {
    "alexnet": "trainer.models.alexnet",
    "alexnet-owt": "trainer.models.alexnet_owt",
    "cifar-quick": "trainer.models.cifar_quick",
    "cifar-18pct": "trainer.models.cifar_18pct",
}
DEFAULT = "alexnet"
USER = ModelSpec(build=None, settings=UserModelSettings)  # any module:callable


def check_arch(arch: str) -> str:
    """`arch` if it names a registered model or has the form module:callable; ImgnetError otherwise."""
    if arch in MODELS:
        return arch
    mod, _, fn = arch.partition(":")
    if mod and fn and all(p.isidentifier() for p in mod.split(".") + fn.split(".")):
        return arch
    raise ImgnetError(f"--arch {arch!r}; expected {', '.join(MODELS)} or module:callable "
                      "(a factory called with num_classes that returns an nn.Module), e.g. mypkg.nets:resnet18")


def spec_of(arch: str) -> ModelSpec:
    """The ModelSpec of a registered model, or USER for a module:callable (imports no user code)."""
    check_arch(arch)
    return importlib.import_module(MODELS[arch]).SPEC if arch in MODELS else USER


def switch_fields() -> list:
    """The settings fields of every model, each name once (the first model's where two share it), in
    registration order: the model switches of TrainConfig and `imgnet train`."""
    out = {}
    for spec in [spec_of(name) for name in MODELS] + [USER]:
        for f in fields(spec.settings):
            if f.metadata.get("option"):
                out.setdefault(f.name, f)
    return list(out.values())


def recipe(arch: str) -> dict:
    """The model's own defaults of TrainConfig fields ({} where the paper's recipe applies)."""
    return dict(spec_of(arch).recipe)


def settings_of(arch: str, values: dict) -> dict:
    """The model keywords `arch` takes from `values` (a TrainConfig as a dict plus num_classes), checked.
    ImgnetError when a switch the model does not have (another model's) is set away from its default."""
    kind = spec_of(arch).settings
    own = {f.name for f in fields(kind)}
    changed = [f.name for f in switch_fields() if f.name not in own and values.get(f.name, f.default) != f.default]
    if changed:
        raise ImgnetError(f"{', '.join('--' + n.replace('_', '-') for n in changed)}: --arch {arch} does not take "
                          "this setting (the switches of other models, such as the AlexNet-only ones and --dropout "
                          "for a module:callable model, stay at their defaults)")
    return asdict(kind(**{n: values[n] for n in own if n in values}))


def check_crop(arch: str, crop: int) -> None:
    """ImgnetError where `arch` takes only one crop side (ModelSpec.crop) and the run's `crop` is another."""
    want = spec_of(arch).crop
    if want is not None and crop != want:
        raise ImgnetError(f"--crop {crop}: --arch {arch} takes {want}x{want} crops; expected --crop {want} "
                          f"on DATA of size {want} or more (prep --size), or an arch that takes {crop}x{crop}")


def optimizer_groups(arch: str, model: nn.Module, lr: float, weight_decay: float, bias_decay: bool) -> list | None:
    """The parameter groups of `arch`'s own recipe (ModelSpec.param_groups), or None where it has none."""
    groups = spec_of(arch).param_groups
    return None if groups is None else groups(model, lr, weight_decay, bias_decay)


def check_model_parallel(arch: str, kwargs: dict | None = None) -> None:
    """ImgnetError unless `arch` (with these settings, when given) can be split over two devices
    (--model-parallel)."""
    check = spec_of(arch).model_parallel
    if check is None:
        raise ImgnetError(f"--model-parallel splits AlexNet's two towers; --arch {arch} has none")
    if kwargs is not None:
        check(kwargs)


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


def build(arch: str, kwargs: dict, init: str = "paper", bias_init: str | None = None) -> tuple[nn.Module, dict]:
    """(freshly initialised model, the kwargs that rebuild it). Registered models take the paper's init
    themselves; a user factory's model gets it too (`init_by_position`, with kwargs' bias_init, or
    `bias_init` where given) unless init="module" keeps its own."""
    spec = spec_of(arch)
    if spec is not USER:
        try:
            model = spec.build(**kwargs)
        except TypeError as e:  # a keyword the class does not take (a foreign checkpoint)
            raise ImgnetError(f"model settings {kwargs} do not fit --arch {arch}: {e}") from e
        return model, dict(getattr(model, "model_kwargs", kwargs))
    model = _factory(arch)(num_classes=kwargs["num_classes"])
    if not isinstance(model, nn.Module):
        raise ImgnetError(f"--arch {arch} returned {type(model).__name__}; expected an nn.Module")
    if init == "paper":
        init_by_position(model, bias_init or kwargs.get("bias_init", "paper"))
    return model, {"num_classes": kwargs["num_classes"]}


def checkpoint_arch(ckpt: dict, trusted: str | None = None) -> str:
    """The arch a checkpoint records ("alexnet" for format version 1). A module:callable arch is refused
    unless the caller names it (`trusted`, the user's --arch): loading a file never imports code by itself."""
    arch = ckpt.get("arch") or DEFAULT
    if arch in MODELS or arch == trusted:
        return arch
    raise ImgnetError(f"the checkpoint's model is user code ({arch}); pass --arch {arch} to import it "
                      "(a checkpoint never makes imgnet import code on its own)")
