"""`--arch cifar-18pct`: cuda-convnet's layers-18pct.cfg as Caffe's cifar10_full, the four learned layers with
response normalisation of section 3.3 and Figure 1 (net, init and recipes in trainer/cuda_convnet.py). Its
defaults are Caffe's full recipe: batch 100, lr 0.001 (bias lr x2 but conv3's), momentum 0.9, weight decay
0.004 (ip1's weights x250, its bias none), 140 epochs with the lr divided by 10 after 120 and 130, crop 32,
no flip, no lighting, mean image subtracted."""

from trainer.cuda_convnet import Cifar18pct, Cifar18pctSettings, recipe_groups, run_settings
from trainer.models.base import ModelSpec

SPEC = ModelSpec(Cifar18pct, Cifar18pctSettings, recipe=run_settings("cifar-18pct"),
                 param_groups=recipe_groups("cifar-18pct"))  # trainer/models/registry.py
