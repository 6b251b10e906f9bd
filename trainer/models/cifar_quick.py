"""`--arch cifar-quick`: cuda-convnet's layers-80sec.cfg as Caffe's cifar10_quick (the net, its init and both
recipes live in trainer/cuda_convnet.py). Its defaults are Caffe's quick recipe: batch 100, lr 0.001 (bias lr
x2), momentum 0.9, weight decay 0.004, 10 epochs with the lr divided by 10 after 8, the whole 32x32 image
(crop 32, no flip, no lighting), mean image subtracted; 75.3% test accuracy in Caffe."""

from trainer.cuda_convnet import CifarQuick, CifarQuickSettings, recipe_groups, run_settings
from trainer.models.base import ModelSpec

SPEC = ModelSpec(CifarQuick, CifarQuickSettings, recipe=run_settings("cifar-quick"),
                 param_groups=recipe_groups("cifar-quick"))  # trainer/models/registry.py
