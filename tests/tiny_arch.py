"""A user's own model factory for the --arch module:callable tests (imported as tiny_arch:make)."""

from torch import nn


def make(num_classes: int) -> nn.Module:
    # 224 -> 4x4 after a stride-16 conv and a 14x14 pool: small enough to train in a second on a CPU
    return nn.Sequential(nn.Conv2d(3, 8, 16, stride=16), nn.ReLU(), nn.MaxPool2d(14), nn.Flatten(),
                         nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, num_classes))


NOT_A_FACTORY = 3


# --------------------------------------------------------------- the same net as a registered model
from dataclasses import dataclass  # noqa: E402

from trainer import settings  # noqa: E402
from trainer.models.base import ModelSpec  # noqa: E402
from trainer.settings import setting  # noqa: E402


@dataclass(frozen=True)
class TinySettings:
    num_classes: int = 1000
    dropout: float = setting(0.5, "Dropout in fc6 and fc7 (section 4.2); 0 turns it off.", low=0.0, high=1.0,
                             high_open=True)
    width: int = setting(16, "Hidden units (a switch of this model alone).", choices=(8, 16))

    def __post_init__(self):
        settings.check(self)


def tiny_registered(num_classes: int = 1000, dropout: float = 0.5, width: int = 16) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 16, stride=16), nn.ReLU(), nn.MaxPool2d(14), nn.Flatten(),
                         nn.Dropout(dropout), nn.Linear(8, width), nn.ReLU(), nn.Linear(width, num_classes))


# what a module under trainer/models/ defines; a test registers it as MODELS["tiny"] = "tiny_arch"
SPEC = ModelSpec(tiny_registered, TinySettings, recipe={"batch_size": 64, "lr": 0.02, "lr_schedule": "step:5"})
