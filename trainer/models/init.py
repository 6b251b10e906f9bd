"""Section 5's initialisation, shared by every model: weights N(0, 0.01); biases 1 (or Caffe's 0.1, the
`bias_init` setting) in AlexNet's conv2, conv4, conv5, fc6 and fc7, 0 elsewhere."""

from __future__ import annotations

from torch import nn

from trainer.settings import setting

BIAS_INITS = {"paper": 1.0, "caffe": 0.1}  # the value of the non-zero biases (section 5; Caffe's bvlc_alexnet)
WEIGHT_STD = 0.01  # section 5: weights ~ N(0, 0.01)


def bias_init_setting():
    """The `bias_init` field of a model's settings (the `--bias-init` switch). A loss that turns non-finite
    suggests Caffe's 0.1 (`divergence_hint`): with 1 the loss can sit at ln 1000 or blow up."""
    return setting("paper", "Bias of conv2, conv4, conv5, fc6, fc7: 1 (paper) or 0.1 (Caffe).",
                   choices=tuple(BIAS_INITS), divergence_hint="caffe")


def init_by_position(model: nn.Module, bias_init: str = "paper") -> None:
    """Section 5's rule for a network without AlexNet's layer names: every Conv2d/Linear weight ~ N(0, 0.01);
    bias 1 (or Caffe's 0.1) in the 2nd, 4th and 5th convolution and in every linear layer but the last
    (AlexNet's conv2, conv4, conv5, fc6, fc7), else 0."""
    one = BIAS_INITS[bias_init]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    ones = {id(m) for i, m in enumerate(convs, 1) if i in (2, 4, 5)} | {id(m) for m in linears[:-1]}
    for m in convs + linears:
        nn.init.normal_(m.weight, 0.0, WEIGHT_STD)
        if m.bias is not None:
            nn.init.constant_(m.bias, one if id(m) in ones else 0.0)
