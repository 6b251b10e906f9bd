"""A user's own model factory for the --arch module:callable tests (imported as tiny_arch:make)."""

from torch import nn


def make(num_classes: int) -> nn.Module:
    # 224 -> 4x4 after a stride-16 conv and a 14x14 pool: small enough to train in a second on a CPU
    return nn.Sequential(nn.Conv2d(3, 8, 16, stride=16), nn.ReLU(), nn.MaxPool2d(14), nn.Flatten(),
                         nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, num_classes))


NOT_A_FACTORY = 3
