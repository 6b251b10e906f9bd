"""`--arch alexnet-owt`: torchvision's AlexNet variant ("one weird trick", Krizhevsky 2014), the usual
baseline, on this project's input and init."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from trainer import settings
from trainer.models.alexnet import FC_WIDTH
from trainer.models.base import ModelSpec, check_num_classes
from trainer.models.init import bias_init_setting, init_by_position
from trainer.settings import setting


@dataclass(frozen=True)
class AlexNetOWTSettings:
    """The settings `AlexNetOWT` takes (the AlexNet-only switches do not apply to it)."""

    num_classes: int = 1000
    dropout: float = setting(0.5, "Dropout in fc6 and fc7 (section 4.2); 0 turns it off.", low=0.0, high=1.0,
                             high_open=True)  # before fc6 and fc7, as torchvision places it
    bias_init: str = bias_init_setting()  # the paper's init rule by position (init_by_position)

    def __post_init__(self):
        check_num_classes(self.num_classes)
        settings.check(self)


class AlexNetOWT(nn.Module):
    """torchvision's `alexnet` ("one weird trick", Krizhevsky 2014): 64-192-384-256-256 kernels, no LRN, no
    groups, adaptive 6x6 average pooling; 61,100,840 parameters at 1000 classes, with torchvision's
    state_dict keys and shapes. Takes this project's input (224 crops, 0-255 scale, mean subtracted) and the
    paper's init; torchvision's pretrained weights (which expect [0, 1] inputs divided by a std) load as they are
    with their own input (`--weights FILE --input torchvision`, trainer/weights.py)."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.5, bias_init: str = "paper"):
        super().__init__()
        self.model_kwargs = asdict(AlexNetOWTSettings(num_classes, dropout, bias_init))
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),  # 0-2
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),  # 3-5
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),  # 6-7
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),  # 8-9
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2))  # 10-12
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))  # 6x6 already for 224 input: an identity there
        self.classifier = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(256 * 6 * 6, FC_WIDTH), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(FC_WIDTH, FC_WIDTH), nn.ReLU(inplace=True),
            nn.Linear(FC_WIDTH, num_classes))
        init_by_position(self, bias_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))  # (N, 256, 6, 6)
        return self.classifier(torch.flatten(x, 1))  # (N, num_classes)


SPEC = ModelSpec(AlexNetOWT, AlexNetOWTSettings)  # trainer/models/registry.py
