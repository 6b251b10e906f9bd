"""What a registered model is (`ModelSpec`), and the settings of a user's `module:callable` model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from imagenet_prep.errors import ImgnetError
from trainer import settings
from trainer.models.init import bias_init_setting


@dataclass(frozen=True)
class ModelSpec:
    """A model `--arch NAME` trains (one module under trainer/models/, one line in registry.MODELS).

    `build(**kwargs)` makes the model, initialised (section 5's init, trainer.models.init); the model's
    `model_kwargs` attribute, when it has one, is what checkpoints keep to rebuild it (else the kwargs).
    `settings`: a frozen dataclass of num_classes and the model's switches, fields made with
    trainer.settings.setting: they become TrainConfig fields and `imgnet train` options. `recipe`: this
    model's own defaults of TrainConfig fields (batch_size, lr, momentum, weight_decay, lr_schedule, ...),
    used where the user sets none (trainer.train.config_for). `model_parallel(kwargs)`: raises ImgnetError
    where `--model-parallel` cannot split these settings; None: the model has no two-device form.

    `crop`: the one crop side the model takes (AlexNet: 224); None: any crop (a model whose settings have a
    `side` field gets the run's crop there, as num_classes gets the class count). `param_groups(model, lr,
    weight_decay, bias_decay)`: the optimizer's parameter groups (per-layer lr and decay multipliers; a group's
    "lr_mult" scales the schedule's lr for it); None: one lr and decay for all (no decay on biases with
    --no-bias-decay). A registered model's `build` gives its own init (the paper's for AlexNet, the published
    one for the CIFAR nets): `--init` concerns module:callable models only."""

    build: Callable
    settings: type
    recipe: dict = field(default_factory=dict)
    model_parallel: Callable[[dict], None] | None = None
    crop: int | None = None
    param_groups: Callable | None = None


@dataclass(frozen=True)
class UserModelSettings:
    """What a `module:callable` model takes from the run: its class count (the factory's keyword), and the
    bias value of the paper's init by position (unless `--init module` keeps the model's own)."""

    num_classes: int = 1000
    bias_init: str = bias_init_setting()

    def __post_init__(self):
        check_num_classes(self.num_classes)
        settings.check(self)


def check_num_classes(n) -> None:
    """ImgnetError unless `n` (a model's output count, taken from the data) is a positive integer."""
    if not (isinstance(n, int) and n >= 1):
        raise ImgnetError(f"num_classes={n!r}; expected a positive integer")
