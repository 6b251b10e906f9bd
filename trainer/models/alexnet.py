"""`--arch alexnet`: AlexNet exactly as Krizhevsky, Sutskever, Hinton (2012), section 3.5 and figure 2.

Input: float (N, 3, 224, 224) on the 0-255 scale, mean image subtracted (the caller prepares it).
One device: the two GPU towers become `groups=2` in conv2, conv4, conv5 and in both LRNs.
Two devices: `ModelParallelAlexNet` (or `AlexNet.to_model_parallel`) puts each tower on its own
device and exchanges activations only where the paper does (into conv3, fc6, fc7, fc8): the same
function for the same weights.

    conv1  96 11x11/4 pad 2 -> act -> LRN -> pool     (N, 96, 55, 55) -> (N, 96, 27, 27)
    conv2 256  5x5 pad 2, 2 groups -> act -> LRN -> pool                 -> (N, 256, 13, 13)
    conv3 384  3x3 pad 1, all maps -> act
    conv4 384  3x3 pad 1, 2 groups -> act
    conv5 256  3x3 pad 1, 2 groups -> act -> pool                        -> (N, 256, 6, 6)
    fc6 4096 -> act -> dropout; fc7 4096 -> act -> dropout; fc8 num_classes
    60,965,224 parameters for 1000 classes.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass, fields
from typing import Sequence

import torch
from torch import nn

from imagenet_prep.errors import ImgnetError
from trainer import settings
from trainer.lrn import LocalResponseNorm
from trainer.models.init import BIAS_INITS, WEIGHT_STD, bias_init_setting
from trainer.models.base import ModelSpec, check_num_classes
from trainer.settings import setting

INPUT_SIDE = 224
LRNS = ("paper", "caffe", "none")
POOLS = {"overlap": (3, 2), "nonoverlap": (2, 2)}  # (window, stride): section 3.4, z=3 s=2 against z=s=2
ACTIVATIONS = ("relu", "tanh")
ONE_BIAS_LAYERS = ("conv2", "conv4", "conv5", "fc6", "fc7")  # section 5; conv1, conv3, fc8 start at 0
CONVS = ("conv1", "conv2", "conv3", "conv4", "conv5")
FCS = ("fc6", "fc7", "fc8")
FC_WIDTH = 4096


def conv_widths(towers: int) -> tuple[int, int, int, int, int]:
    """Kernels in conv1..conv5.

    towers=2: the paper's net (figure 2). towers=1: the one-GPU net section 3.2 compares it with, "a
    net with half as many kernels in each convolutional layer trained on one GPU": one GPU's share
    of conv1-conv4, but the footnote keeps "the final convolutional layer" at full size ("nor the
    fully-connected layers which follow"), since fc6 reads it and holds most of the parameters.
    """
    return (96, 256, 384, 384, 256) if towers == 2 else (48, 128, 192, 192, 256)


def feature_side(pool: str = "overlap", side: int = INPUT_SIDE) -> int:
    """Side of conv5's pooled maps (fc6 reads 256 * side^2 values): 6 for either pooling."""
    window, stride = POOLS[pool]
    side = (side + 2 * 2 - 11) // 4 + 1  # conv1: 224 -> 55
    for _ in range(3):  # pool1, pool2, pool5; conv2-conv5 keep the size (padding = kernel // 2)
        side = (side - window) // stride + 1
    return side


def _activation(name: str) -> nn.Module:
    return nn.ReLU(inplace=True) if name == "relu" else nn.Tanh()


def _lrn(name: str, groups: int) -> nn.Module:
    # section 3.3: k=2, n=5, alpha=1e-4, beta=0.75. "caffe" keeps these constants and divides alpha
    # by n (the convention alone; Caffe's bvlc_alexnet also sets k=1, which is not applied here)
    if name == "none":
        return nn.Identity()
    return LocalResponseNorm(5, 1e-4, 0.75, 2.0, convention=name, groups=groups)


def _pool(name: str) -> nn.Module:
    window, stride = POOLS[name]
    return nn.MaxPool2d(window, stride)


@dataclass(frozen=True)
class AlexNetSettings:
    """AlexNet's settings, checked once here: the keywords of AlexNet(...), and through the model registry
    (trainer/models/registry.py) the fields of TrainConfig and the `imgnet train` switches (the paper's
    ablations). Each field's metadata is its option (trainer/settings.py)."""

    num_classes: int = 1000  # fc8 outputs; taken from the data, not an option
    towers: int = setting(2, "2: the two-GPU net; 1: the paper's one-GPU net.", choices=(1, 2))
    lrn: str = setting("paper", "Local response normalisation: the paper's alpha, Caffe's alpha/n, or none "
                       "(section 3.3).", choices=LRNS)
    pool: str = setting("overlap", "Max pooling 3/2 or 2/2 (section 3.4).", choices=tuple(POOLS))
    activation: str = setting("relu", "Section 3.1.", choices=ACTIVATIONS)
    dropout: float = setting(0.5, "Dropout in fc6 and fc7 (section 4.2); 0 turns it off.", low=0.0, high=1.0,
                             high_open=True)
    bias_init: str = bias_init_setting()

    def __post_init__(self):
        check_num_classes(self.num_classes)
        settings.check(self)


def model_settings(**model_kwargs) -> dict:
    """AlexNet's keyword arguments with defaults filled in, checked (ImgnetError names a bad one)."""
    names = [f.name for f in fields(AlexNetSettings)]
    unknown = sorted(set(model_kwargs) - set(names))
    if unknown:
        raise ImgnetError(f"unknown model setting(s) {', '.join(unknown)}; expected some of {', '.join(names)}")
    return asdict(AlexNetSettings(**model_kwargs))


def check_model_parallel(kwargs: dict) -> None:
    """--model-parallel puts one tower on each of two GPUs: the two-tower net only."""
    if kwargs["towers"] != 2:
        raise ImgnetError(f"--model-parallel needs --towers 2 (one tower per GPU); got --towers {kwargs['towers']}")


def init_paper(model: nn.Module, bias_init: str = "paper") -> None:
    """Section 5: every weight ~ N(0, 0.01); biases 1 (or Caffe's 0.1) in ONE_BIAS_LAYERS, else 0."""
    one = BIAS_INITS[bias_init]
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, WEIGHT_STD)
            nn.init.constant_(m.bias, one if name.rsplit(".", 1)[-1] in ONE_BIAS_LAYERS else 0.0)


class AlexNet(nn.Module):
    """The paper's net on one device; `towers=2` keeps the two-GPU connectivity as groups=2."""

    def __init__(self, num_classes: int = 1000, towers: int = 2, lrn: str = "paper", pool: str = "overlap",
                 activation: str = "relu", dropout: float = 0.5, bias_init: str = "paper"):
        super().__init__()
        self.model_kwargs = asdict(AlexNetSettings(num_classes, towers, lrn, pool, activation, dropout,
                                                   bias_init))  # checked; AlexNet(**model_kwargs) rebuilds it
        c1, c2, c3, c4, c5 = conv_widths(towers)
        g = towers  # conv2, conv4, conv5 and the LRNs see only their own tower's maps
        self.features = nn.Sequential(OrderedDict([
            # 224 + 2*2 padding: (224 + 4 - 11) // 4 + 1 = 55, the paper's 55x55 (Caffe crops 227 instead)
            ("conv1", nn.Conv2d(3, c1, 11, stride=4, padding=2)),
            ("act1", _activation(activation)), ("lrn1", _lrn(lrn, g)), ("pool1", _pool(pool)),
            ("conv2", nn.Conv2d(c1, c2, 5, padding=2, groups=g)),
            ("act2", _activation(activation)), ("lrn2", _lrn(lrn, g)), ("pool2", _pool(pool)),
            ("conv3", nn.Conv2d(c2, c3, 3, padding=1)),  # reads both towers
            ("act3", _activation(activation)),
            ("conv4", nn.Conv2d(c3, c4, 3, padding=1, groups=g)),
            ("act4", _activation(activation)),
            ("conv5", nn.Conv2d(c4, c5, 3, padding=1, groups=g)),
            ("act5", _activation(activation)), ("pool5", _pool(pool)),
        ]))
        side = feature_side(pool)
        self.classifier = nn.Sequential(OrderedDict([
            ("fc6", nn.Linear(c5 * side * side, FC_WIDTH)), ("act6", _activation(activation)), ("drop6", nn.Dropout(dropout)),
            ("fc7", nn.Linear(FC_WIDTH, FC_WIDTH)), ("act7", _activation(activation)), ("drop7", nn.Dropout(dropout)),
            ("fc8", nn.Linear(FC_WIDTH, num_classes)),
        ]))
        init_paper(self, bias_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (N, 256, 6, 6)
        return self.classifier(torch.flatten(x, 1))  # (N, num_classes)

    def to_model_parallel(self, devices: Sequence[str | torch.device] = ("cuda:0", "cuda:1")) -> "ModelParallelAlexNet":
        """The same net with tower t on devices[t] (a copy of the weights)."""
        return ModelParallelAlexNet.from_grouped(self, devices)


# ------------------------------------------------------------------------------- model parallel
class _Tower(nn.Module):
    """One of the paper's two GPUs: half of every layer's kernels (figure 2)."""

    def __init__(self, kw: dict, fc8_out: int):
        super().__init__()
        c1, c2, c3, c4, c5 = (w // 2 for w in conv_widths(2))  # 48, 128, 192, 192, 128
        act, lrn, pool = kw["activation"], kw["lrn"], kw["pool"]
        self.lower = nn.Sequential(OrderedDict([  # own maps only
            ("conv1", nn.Conv2d(3, c1, 11, stride=4, padding=2)),
            ("act1", _activation(act)), ("lrn1", _lrn(lrn, 1)), ("pool1", _pool(pool)),
            ("conv2", nn.Conv2d(c1, c2, 5, padding=2)),
            ("act2", _activation(act)), ("lrn2", _lrn(lrn, 1)), ("pool2", _pool(pool)),
        ]))
        self.upper = nn.Sequential(OrderedDict([  # conv3 reads both towers; conv4, conv5 their own
            ("conv3", nn.Conv2d(2 * c2, c3, 3, padding=1)), ("act3", _activation(act)),
            ("conv4", nn.Conv2d(c3, c4, 3, padding=1)), ("act4", _activation(act)),
            ("conv5", nn.Conv2d(c4, c5, 3, padding=1)), ("act5", _activation(act)), ("pool5", _pool(pool)),
        ]))
        side = feature_side(pool)
        half = FC_WIDTH // 2
        self.fc6 = nn.Sequential(OrderedDict([("fc6", nn.Linear(2 * c5 * side * side, half)),
                                              ("act6", _activation(act)), ("drop6", nn.Dropout(kw["dropout"]))]))
        self.fc7 = nn.Sequential(OrderedDict([("fc7", nn.Linear(FC_WIDTH, half)),
                                              ("act7", _activation(act)), ("drop7", nn.Dropout(kw["dropout"]))]))
        self.fc8 = nn.Sequential(OrderedDict([("fc8", nn.Linear(FC_WIDTH, fc8_out))]))

    def layer(self, name: str) -> nn.Module:
        for block in (self.lower, self.upper, self.fc6, self.fc7, self.fc8):
            if name in block._modules:
                return block._modules[name]
        raise KeyError(name)


class ModelParallelAlexNet(nn.Module):
    """AlexNet split over two devices as in the paper: tower t (half of every layer) on devices[t].

    The towers exchange activations only into conv3, fc6, fc7 and fc8; the logits are gathered on
    devices[0]. Equal to the grouped `AlexNet` with the same weights: `from_grouped` splits its
    weights, `grouped_state_dict` joins them back under AlexNet's keys (for checkpoints).
    """

    def __init__(self, devices: Sequence[str | torch.device] = ("cuda:0", "cuda:1"), **model_kwargs):
        """A freshly initialised (section 5) two-device net; `model_kwargs` as for AlexNet."""
        super().__init__()
        self._build(devices, model_settings(**model_kwargs))
        init_paper(self, self.model_kwargs["bias_init"])

    def _build(self, devices, kw: dict) -> None:
        if kw["towers"] != 2:
            raise ImgnetError(f"model parallel needs towers=2, got towers={kw['towers']}; "
                              "expected the paper's two-tower net")
        if kw["num_classes"] < 2:
            raise ImgnetError(f"model parallel needs num_classes >= 2 (fc8 is split over the towers), got {kw['num_classes']}")
        if len(devices) != 2:
            raise ImgnetError(f"model parallel takes two devices, got {list(devices)}; expected e.g. ('cuda:0', 'cuda:1')")
        self.model_kwargs = kw
        self.devices = tuple(torch.device(d) for d in devices)
        n = kw["num_classes"]
        self.fc8_split = ((n + 1) // 2, n // 2)  # logits computed by tower 0 and tower 1
        self.towers = nn.ModuleList(_Tower(kw, out).to(d) for out, d in zip(self.fc8_split, self.devices))

    @classmethod
    def from_grouped(cls, model: AlexNet, devices: Sequence[str | torch.device] = ("cuda:0", "cuda:1")):
        """Split a grouped (towers=2) AlexNet's weights over two devices."""
        mp = cls.__new__(cls)
        nn.Module.__init__(mp)
        mp._build(devices, model_settings(**model.model_kwargs))  # no initialisation: the weights are copied
        mp.to(dtype=next(model.parameters()).dtype)
        mp.load_grouped_state_dict(model.state_dict())
        mp.train(model.training)
        return mp

    def _split_sizes(self, layer: str) -> tuple[int, int]:
        if layer == "fc8":
            return self.fc8_split
        width = dict(zip(CONVS + FCS[:2], conv_widths(2) + (FC_WIDTH, FC_WIDTH)))[layer]
        return (width // 2, width // 2)

    @staticmethod
    def _key(layer: str, what: str) -> str:
        return f"{'features' if layer in CONVS else 'classifier'}.{layer}.{what}"

    def grouped_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights under AlexNet's keys and shapes, on devices[0]: AlexNet(**model_kwargs).load_state_dict(...) takes it."""
        out = {}
        for layer in CONVS + FCS:
            for what in ("weight", "bias"):
                parts = [getattr(t.layer(layer), what).detach().to(self.devices[0]) for t in self.towers]
                out[self._key(layer, what)] = torch.cat(parts, 0)
        return out

    @torch.no_grad()
    def load_grouped_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Copy a grouped AlexNet state dict into the towers (each tower takes its rows of every layer)."""
        for layer in CONVS + FCS:
            for what in ("weight", "bias"):
                key = self._key(layer, what)
                if key not in state:
                    raise ImgnetError(f"state dict has no {key!r}; expected the keys of AlexNet(towers=2)")
                parts = state[key].split(self._split_sizes(layer), 0)
                for tower, part in zip(self.towers, parts):
                    param = getattr(tower.layer(layer), what)
                    if param.shape != part.shape:
                        raise ImgnetError(f"{key} has shape {tuple(state[key].shape)} that does not split into "
                                          f"{tuple(param.shape)} per tower; expected AlexNet(**{self.model_kwargs})")
                    param.copy_(part)

    def to_grouped(self) -> AlexNet:
        """The equivalent single-device AlexNet, on devices[0]."""
        model = AlexNet(**self.model_kwargs).to(self.devices[0])
        model.load_state_dict(self.grouped_state_dict())
        return model.train(self.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        def exchange(h):  # each tower reads both halves, in the grouped model's map order
            return [torch.cat([h[0].to(d), h[1].to(d)], 1) for d in self.devices]

        h = [t.lower(x.to(d)) for t, d in zip(self.towers, self.devices)]  # (N, 128, 13, 13) each
        h = [torch.flatten(t.upper(hb), 1) for t, hb in zip(self.towers, exchange(h))]  # (N, 4608) each
        h = [t.fc6(hb) for t, hb in zip(self.towers, exchange(h))]  # (N, 2048) each
        h = [t.fc7(hb) for t, hb in zip(self.towers, exchange(h))]
        logits = [t.fc8(hb) for t, hb in zip(self.towers, exchange(h))]
        return torch.cat([logits[0], logits[1].to(self.devices[0])], 1)  # (N, num_classes) on devices[0]


SPEC = ModelSpec(AlexNet, AlexNetSettings, model_parallel=check_model_parallel, crop=INPUT_SIDE)  # trainer/models/registry.py
