"""cuda-convnet's CIFAR-10 nets (Krizhevsky's cuda-convnet example-layers), as Caffe's examples/cifar10 has them.

Input: float (N, 3, side, side), side 32 for CIFAR, on the 0-255 scale with the mean image subtracted and no
other scaling (Caffe's `transform_param { mean_file }`; cuda-convnet's CIFAR data provider subtracts
`data_mean`). The initial weights below are tuned for that scale.

`CifarQuick`: layers-80sec.cfg ("26% error on CIFAR-10 in 80 seconds") / cifar10_quick_train_test.prototxt:

    conv1 32 5x5 pad 2, N(0, 1e-4) -> max pool 3/2 -> act            (N, 32, 16, 16)
    conv2 32 5x5 pad 2, N(0, 0.01) -> act -> avg pool 3/2            (N, 32, 8, 8)
    conv3 64 5x5 pad 2, N(0, 0.01) -> act -> avg pool 3/2            (N, 64, 4, 4)
    ip1 64, N(0, 0.1) [-> act: cuda-convnet's fc64 only]; ip2 10, N(0, 0.1)
    145,578 parameters (10 classes)

`Cifar18pct`: layers-18pct.cfg ("18% error on CIFAR-10 in 20 minutes") / cifar10_full_train_test.prototxt,
the four learned layers with response normalisation of section 3.3's CIFAR-10 remark and Figure 1:

    conv1 32 5x5 pad 2, N(0, 1e-4) -> max pool 3/2 -> act -> norm1   (N, 32, 16, 16)
    conv2 32 5x5 pad 2, N(0, 0.01) -> act -> avg pool 3/2 -> norm2   (N, 32, 8, 8)
    conv3 64 5x5 pad 2, N(0, 0.01) -> act -> avg pool 3/2            (N, 64, 4, 4)
    ip1 10, N(0, 0.01)
    89,578 parameters (10 classes)

Facts that are easy to get wrong:
- Pooling rounds the output size up (Caffe: ceil((32 - 3) / 2) + 1 = 16; cuda-convnet's layer.py: outputsX =
  ceil((imgSize - start - sizeX) / stride) + 1): `ceil_mode=True`. The last window of each row holds 2
  pixels, and average pooling divides by the pixels inside the image (Caffe without padding, cuda-convnet's
  AvgPooler(regionSize), PyTorch's avg_pool2d with padding 0 alike).
- All biases start at 0 (Caffe `bias_filler { type: "constant" }`, cuda-convnet's initB default 0).
- The 18pct net's normalisation is within each map over a 3x3 neighbourhood (cuda-convnet `type=rnorm`,
  Caffe `norm_region: WITHIN_CHANNEL`), not across maps as AlexNet's (`cmrnorm` / ACROSS_CHANNELS):
  b = a / (1 + alpha / n^2 * sum_{n x n window} a^2)^beta with n=3, alpha=5e-5 (`scale=0.00005`), beta 0.75
  (`pow=.75`), k 1. Both programs divide alpha by the window's n^2 pixels (cuda-convnet's layer.py: "scale
  /= size**2" for rnorm; Caffe's LRN WITHIN_CHANNEL: an average pooling of the squares, padded, always
  over n^2); `SpatialResponseNorm(convention="caffe")` does, "paper" would not (the AlexNet paper's rule
  of alpha on the plain sum, see trainer.lrn).
- ReLU after max pooling (cuda-convnet's `neuron=relu` on pool1, Caffe's relu1 on pool1) equals ReLU before
  it (both monotone; tanh too), so the order is the published one without changing the function.
- Caffe's cifar10_quick has no activation after ip1; cuda-convnet's layers-80sec.cfg has `neuron=relu` on
  fc64: `fc_act="on"` gives the latter. The default is Caffe's (its 75.3% is the anchor).
- `activation="tanh"` is plain tanh (cuda-convnet's `neuron=tanh[a,b]` would be a * tanh(b x)).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from imagenet_prep.errors import ImgnetError
from trainer.settings import setting

__all__ = ["CUDA_CONVNET_RECIPES", "Cifar18pct", "Cifar18pctSettings", "CifarQuick", "CifarQuickSettings",
           "RECIPES", "SpatialResponseNorm", "param_groups", "pooled_side", "recipe_groups", "run_settings"]

ACTIVATIONS = ("relu", "tanh")
SWITCH = ("on", "off")
NORM_CONVENTIONS = ("caffe", "paper")
CONV_WIDTHS = (32, 32, 64)  # conv1..conv3 filters, both nets
KERNEL, PAD = 5, 2  # filterSize=5 padding=2 / kernel_size: 5 pad: 2: the maps keep their size
POOL, POOL_STRIDE = 3, 2  # sizeX=3 stride=2 / kernel_size: 3 stride: 2, ceil mode
# weight init std per layer (initW= / weight_filler std); every bias starts at 0
QUICK_STD = {"conv1": 1e-4, "conv2": 0.01, "conv3": 0.01, "ip1": 0.1, "ip2": 0.1}
FULL_STD = {"conv1": 1e-4, "conv2": 0.01, "conv3": 0.01, "ip1": 0.01}
QUICK_HIDDEN = 64  # fc64 / ip1 num_output: 64
NORM_SIZE, NORM_ALPHA, NORM_BETA, NORM_K = 3, 5e-5, 0.75, 1.0  # rnorm size=3 scale=0.00005 pow=.75; k is 1


def pooled_side(side: int) -> int:
    """Side after one 3/2 pooling rounded up: ceil((side - 3) / 2) + 1 (32 -> 16 -> 8 -> 4)."""
    return -(-(side - POOL) // POOL_STRIDE) + 1


def feature_side(side: int) -> int:
    """Side of pool3's maps for a side x side input (4 for CIFAR's 32; ip1 reads 64 * 4 * 4 values)."""
    for _ in range(3):
        side = pooled_side(side)
    return side


def _check(settings) -> None:
    if not (isinstance(settings.num_classes, int) and settings.num_classes >= 1):
        raise ImgnetError(f"num_classes={settings.num_classes!r}; expected a positive integer")
    if not (isinstance(settings.side, int) and settings.side >= POOL):
        raise ImgnetError(f"side={settings.side!r}; expected an image side of at least {POOL} pixels (CIFAR: 32)")
    for f in fields(settings):
        v, choices = getattr(settings, f.name), f.metadata.get("choices")
        if choices is not None and v not in choices:
            raise ImgnetError(f"{f.name}={v!r}; expected one of {', '.join(choices)}")


@dataclass(frozen=True)
class CifarQuickSettings:
    """CifarQuick's settings (the keywords of CifarQuick(...))."""

    num_classes: int = 10  # ip2 outputs; taken from the data, not an option
    side: int = 32  # input side in pixels; taken from the data (ip1 reads 64 * feature_side(side)^2 values)
    activation: str = setting("relu", "Neuron after each conv (relu as published; tanh: Figure 1's comparison).",
                              choices=ACTIVATIONS)
    fc_act: str = setting("off", "cifar-quick: activation after ip1, off as Caffe's cifar10_quick, on as "
                          "cuda-convnet's layers-80sec.cfg (fc64 neuron=relu).", choices=SWITCH)

    def __post_init__(self):
        _check(self)


@dataclass(frozen=True)
class Cifar18pctSettings:
    """Cifar18pct's settings (the keywords of Cifar18pct(...))."""

    num_classes: int = 10  # ip1 outputs; taken from the data, not an option
    side: int = 32  # input side in pixels; taken from the data
    activation: str = setting("relu", "Neuron after each conv (relu as published; tanh: Figure 1's comparison).",
                              choices=ACTIVATIONS)
    norm: str = setting("on", "cifar-18pct: response normalisation after conv1 and conv2 (3x3 within each map, "
                        "layers-18pct.cfg); off removes both layers (section 3.3's CIFAR-10 comparison).",
                        choices=SWITCH)

    def __post_init__(self):
        _check(self)


class SpatialResponseNorm(nn.Module):
    """Response normalisation within each map over a size x size neighbourhood (cuda-convnet `rnorm`, Caffe LRN
    WITHIN_CHANNEL): b = a / (k + alpha' * sum_{window} a^2)^beta, the window centred on the pixel and clipped at
    the image edge (zeros outside). alpha' = alpha / size^2 ("caffe": Caffe and cuda-convnet) or alpha ("paper":
    alpha on the plain sum, the AlexNet paper's convention for its cross-map LRN)."""

    def __init__(self, size: int = NORM_SIZE, alpha: float = NORM_ALPHA, beta: float = NORM_BETA,
                 k: float = NORM_K, convention: str = "caffe"):
        super().__init__()
        if not (isinstance(size, int) and size >= 1 and size % 2 == 1):
            raise ImgnetError(f"response norm size {size!r} is not valid; expected an odd positive integer (3)")
        if convention not in NORM_CONVENTIONS:
            raise ImgnetError(f"response norm convention {convention!r}; expected one of {', '.join(NORM_CONVENTIONS)}")
        self.size, self.alpha, self.beta, self.k = size, float(alpha), float(beta), float(k)
        self.convention = convention

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> same
        alpha = self.alpha / self.size ** 2 if self.convention == "caffe" else self.alpha
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        # plain window sum of the squares: divisor 1, zero padding, so the edge windows count only the image
        window = F.avg_pool2d(xf * xf, self.size, stride=1, padding=self.size // 2, divisor_override=1)
        return (xf * (self.k + alpha * window).pow(-self.beta)).to(x.dtype)

    def extra_repr(self) -> str:
        return (f"size={self.size}, alpha={self.alpha:g}, beta={self.beta:g}, k={self.k:g}, "
                f"convention={self.convention!r}")


def _act(name: str) -> nn.Module:
    return nn.ReLU(inplace=True) if name == "relu" else nn.Tanh()


def _convs(activation: str, norm: bool) -> nn.Sequential:
    """conv1-conv3 with their pools and activations (and the 18pct net's two normalisations)."""
    c1, c2, c3 = CONV_WIDTHS
    layers = [
        ("conv1", nn.Conv2d(3, c1, KERNEL, padding=PAD)),
        ("pool1", nn.MaxPool2d(POOL, POOL_STRIDE, ceil_mode=True)), ("act1", _act(activation)),
        ("norm1", SpatialResponseNorm()),
        ("conv2", nn.Conv2d(c1, c2, KERNEL, padding=PAD)), ("act2", _act(activation)),
        ("pool2", nn.AvgPool2d(POOL, POOL_STRIDE, ceil_mode=True)),
        ("norm2", SpatialResponseNorm()),
        ("conv3", nn.Conv2d(c2, c3, KERNEL, padding=PAD)), ("act3", _act(activation)),
        ("pool3", nn.AvgPool2d(POOL, POOL_STRIDE, ceil_mode=True)),
    ]
    return nn.Sequential(OrderedDict((n, m) for n, m in layers if norm or not n.startswith("norm")))


def init_published(model: nn.Module, std: dict) -> None:
    """Weights ~ N(0, std[layer]) as the cfg's initW / the prototxt's gaussian weight_filler; biases 0."""
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, std[name.rsplit(".", 1)[-1]])
            nn.init.zeros_(m.bias)


class CifarQuick(nn.Module):
    """cuda-convnet's layers-80sec.cfg / Caffe's cifar10_quick (module docstring); state_dict keys
    features.conv1-3.*, classifier.ip1.*, classifier.ip2.* (Caffe's layer names)."""

    def __init__(self, num_classes: int = 10, side: int = 32, activation: str = "relu", fc_act: str = "off"):
        super().__init__()
        self.model_kwargs = asdict(CifarQuickSettings(num_classes, side, activation, fc_act))
        self.features = _convs(activation, norm=False)
        fs = feature_side(side)
        head = [("ip1", nn.Linear(CONV_WIDTHS[2] * fs * fs, QUICK_HIDDEN))]
        if fc_act == "on":
            head.append(("act4", _act(activation)))
        head.append(("ip2", nn.Linear(QUICK_HIDDEN, num_classes)))
        self.classifier = nn.Sequential(OrderedDict(head))
        init_published(self, QUICK_STD)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (N, 64, 4, 4)
        return self.classifier(torch.flatten(x, 1))  # (N, num_classes)


class Cifar18pct(nn.Module):
    """cuda-convnet's layers-18pct.cfg / Caffe's cifar10_full (module docstring); state_dict keys
    features.conv1-3.*, classifier.ip1.* (Caffe's layer names)."""

    def __init__(self, num_classes: int = 10, side: int = 32, activation: str = "relu", norm: str = "on"):
        super().__init__()
        self.model_kwargs = asdict(Cifar18pctSettings(num_classes, side, activation, norm))
        self.features = _convs(activation, norm=norm == "on")
        fs = feature_side(side)
        self.classifier = nn.Sequential(OrderedDict([("ip1", nn.Linear(CONV_WIDTHS[2] * fs * fs, num_classes))]))
        init_published(self, FULL_STD)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (N, 64, 4, 4)
        return self.classifier(torch.flatten(x, 1))  # (N, num_classes)


# ------------------------------------------------------------------------------------- recipes
# The published recipes as plain data, to be applied as a net's defaults. Keys named as TrainConfig's
# settings where it has one; "lr_mult" / "decay_mult" are per layer (weight, bias) multipliers of lr and
# weight_decay (Caffe's param { lr_mult decay_mult }; param_groups() turns them into optimizer groups);
# "source" says where the numbers come from. run_settings() gives the TrainConfig part (a ModelSpec's recipe).
# Epochs count passes over the 50,000 train images at batch 100 (500 iterations an epoch). No augmentation:
# the examples feed the whole mean-subtracted 32x32 image (no crop, no mirror, no lighting).
# Caffe's SGD keeps the lr inside the momentum buffer (v = m v + lr g) where PyTorch keeps it outside
# (v = m v + g; w -= lr v): the same steps except just after an lr drop.
_QUICK_MULT = {layer: (1, 2) for layer in QUICK_STD}  # param { lr_mult: 1 } param { lr_mult: 2 } in every layer
RECIPES = {
    "cifar-quick": {
        "source": "Caffe examples/cifar10: cifar10_quick_solver.prototxt (4000 iterations at 0.001) then "
                  "cifar10_quick_solver_lr1.prototxt (to 5000 at 0.0001), batch_size 100 in "
                  "cifar10_quick_train_test.prototxt; 75.3% test accuracy (examples/cifar10/readme.md)",
        "batch_size": 100,
        "lr": 0.001,  # base_lr
        "momentum": 0.9,
        "weight_decay": 0.004,
        "bias_decay": True,  # no decay_mult in the prototxt: Caffe's default 1 decays the biases too
        "lr_mult": _QUICK_MULT,
        "decay_mult": {layer: (1, 1) for layer in QUICK_STD},
        "epochs": 10,  # 5000 iterations
        "lr_schedule": "step:8",  # 4000 iterations: "reduce the learning rate after 8 epochs"
        "lr_factor": 0.1,
        "crop": 32, "flip": False, "lighting_std": 0.0, "mean": "image",
    },
    "cifar-18pct": {
        "source": "Caffe examples/cifar10: cifar10_full_solver.prototxt (60000 iterations at 0.001), _lr1 (to "
                  "65000 at 0.0001), _lr2 (to 70000 at 0.00001), batch_size 100 in cifar10_full_train_test.prototxt",
        "batch_size": 100,
        "lr": 0.001,
        "momentum": 0.9,
        "weight_decay": 0.004,
        "bias_decay": True,  # conv biases decayed (default decay_mult 1); ip1's bias not (decay_mult 0)
        # conv3 has no param blocks in cifar10_full_train_test.prototxt: lr_mult 1 for its bias too
        # (cuda-convnet's epsB=0.002 gives 2 there, as in the other layers)
        "lr_mult": {"conv1": (1, 2), "conv2": (1, 2), "conv3": (1, 1), "ip1": (1, 2)},
        "decay_mult": {"conv1": (1, 1), "conv2": (1, 1), "conv3": (1, 1), "ip1": (250, 0)},  # 250 x 0.004 = wc=1
        "epochs": 140,  # 70000 iterations
        "lr_schedule": "step:120,130",  # 60000 and 65000 iterations
        "lr_factor": 0.1,
        "crop": 32, "flip": False, "lighting_std": 0.0, "mean": "image",
    },
}
# cuda-convnet's own layer-params files, for reference: epsW (lr) 0.001 and epsB 0.002 (bias lr x2), momW =
# momB = 0.9, wc (weight decay) on the weights only, per layer; its default minibatch is 128 (convnet.py
# --mini), and its files give the lr drops in epochs but not the total (taken here as Caffe's).
CUDA_CONVNET_RECIPES = {
    "cifar-quick": {
        "source": "cuda-convnet example-layers/layer-params-80sec.cfg: wc=0.004 on conv1-3, wc=.03 on fc64 and "
                  "fc10; 'reduce the learning rate after 8 epochs by a factor of 10'; use with fc_act='on'",
        "batch_size": 128, "lr": 0.001, "momentum": 0.9, "weight_decay": 0.004, "bias_decay": False,
        "lr_mult": _QUICK_MULT,
        "decay_mult": {"conv1": (1, 0), "conv2": (1, 0), "conv3": (1, 0), "ip1": (7.5, 0), "ip2": (7.5, 0)},
        "epochs": 10, "lr_schedule": "step:8", "lr_factor": 0.1,
        "crop": 32, "flip": False, "lighting_std": 0.0, "mean": "image",
    },
    "cifar-18pct": {
        "source": "cuda-convnet example-layers/layer-params-18pct.cfg: wc=0.004 on conv1-3, wc=1 on fc10; 'Reduce "
                  "all learning rates by factor of 10 after 120 epochs. Then another factor of 10 after 10 more'",
        "batch_size": 128, "lr": 0.001, "momentum": 0.9, "weight_decay": 0.004, "bias_decay": False,
        "lr_mult": {"conv1": (1, 2), "conv2": (1, 2), "conv3": (1, 2), "ip1": (1, 2)},
        "decay_mult": {"conv1": (1, 0), "conv2": (1, 0), "conv3": (1, 0), "ip1": (250, 0)},
        "epochs": 140, "lr_schedule": "step:120,130", "lr_factor": 0.1,
        "crop": 32, "flip": False, "lighting_std": 0.0, "mean": "image",
    },
}


NOT_SETTINGS = ("source", "lr_mult", "decay_mult")  # recipe keys that are no TrainConfig fields


def run_settings(name: str) -> dict:
    """The TrainConfig defaults of a recipe of RECIPES (batch, lr, schedule, crop, ...): a ModelSpec's recipe."""
    return {k: v for k, v in RECIPES[name].items() if k not in NOT_SETTINGS}


def param_groups(model: nn.Module, recipe: dict, lr: float | None = None, weight_decay: float | None = None,
                 bias_decay: bool = True) -> list[dict]:
    """torch.optim parameter groups, one per parameter, with the recipe's per-layer multipliers applied to
    `lr` and `weight_decay` (the recipe's own when None): lr * lr_mult, weight_decay * decay_mult, the
    weight's multiplier for a 2-d+ parameter and the bias's for a 1-d one. A layer the recipe does not name
    gets 1 and 1. Each group keeps its multiplier as "lr_mult": the trainer's schedule sets a group's lr to
    the epoch's lr times it. bias_decay=False: no decay on any bias (--no-bias-decay)."""
    lr = recipe["lr"] if lr is None else lr
    wd = recipe["weight_decay"] if weight_decay is None else weight_decay
    groups = []
    for name, p in model.named_parameters():
        layer = name.rsplit(".", 2)[-2] if "." in name else name
        which = 0 if p.dim() > 1 else 1
        lm = recipe.get("lr_mult", {}).get(layer, (1, 1))[which]
        dm = recipe.get("decay_mult", {}).get(layer, (1, 1))[which] if which == 0 or bias_decay else 0
        groups.append({"params": [p], "name": name, "lr": lr * lm, "lr_mult": float(lm), "weight_decay": wd * dm})
    return groups


def recipe_groups(name: str):
    """A ModelSpec's `param_groups(model, lr, weight_decay, bias_decay)` with RECIPES[name]'s multipliers."""
    def groups(model: nn.Module, lr: float, weight_decay: float, bias_decay: bool) -> list[dict]:
        return param_groups(model, RECIPES[name], lr, weight_decay, bias_decay)
    return groups
