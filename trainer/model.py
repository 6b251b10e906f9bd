"""The model names other code imports from here (docs/design.md): the models themselves live in
trainer/models/ (alexnet.py, alexnet_owt.py; which `--arch` builds which is trainer/models/registry.py)."""

from trainer.lrn import LocalResponseNorm
from trainer.models.alexnet import (ACTIVATIONS, CONVS, FC_WIDTH, FCS, INPUT_SIDE, LRNS, ONE_BIAS_LAYERS, POOLS,
                                    AlexNet, AlexNetSettings, ModelParallelAlexNet, conv_widths, feature_side,
                                    init_paper, model_settings)
from trainer.models.alexnet_owt import AlexNetOWT, AlexNetOWTSettings
from trainer.models.init import BIAS_INITS, WEIGHT_STD, init_by_position

__all__ = ["ACTIVATIONS", "BIAS_INITS", "CONVS", "FCS", "FC_WIDTH", "INPUT_SIDE", "LRNS", "ONE_BIAS_LAYERS", "POOLS",
           "WEIGHT_STD", "AlexNet", "AlexNetOWT", "AlexNetOWTSettings", "AlexNetSettings", "LocalResponseNorm",
           "ModelParallelAlexNet", "conv_widths", "feature_side", "init_by_position", "init_paper", "model_settings"]
