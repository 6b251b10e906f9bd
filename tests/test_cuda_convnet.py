"""trainer.cuda_convnet: cuda-convnet's CIFAR nets against their published definitions."""

import math

import pytest
import torch
from torch import nn

from imagenet_prep.errors import ImgnetError
from trainer.cuda_convnet import (CUDA_CONVNET_RECIPES, RECIPES, Cifar18pct, Cifar18pctSettings, CifarQuick,
                                  SpatialResponseNorm, param_groups, pooled_side)

torch.set_num_threads(1)


def _count(m):
    return sum(p.numel() for p in m.parameters())


def test_shapes_for_cifar_input():
    x = torch.randn(2, 3, 32, 32) * 60
    for net in (CifarQuick(), Cifar18pct(), Cifar18pct(norm="off"), CifarQuick(fc_act="on")):
        f = net.features
        assert f[:3](x).shape == (2, 32, 16, 16)  # conv1, pool1 (ceil: 32 -> 16), act1
        assert f(x).shape == (2, 64, 4, 4)  # 16 -> 8 -> 4
        assert net(x).shape == (2, 10)
    assert CifarQuick(num_classes=100)(x).shape == (2, 100)
    assert [pooled_side(s) for s in (32, 16, 8, 64, 31, 3)] == [16, 8, 4, 32, 15, 1]
    assert Cifar18pct(side=64)(torch.randn(1, 3, 64, 64)).shape == (1, 10)


def test_parameter_counts_from_the_published_definitions():
    conv1 = 32 * 3 * 5 * 5 + 32  # 2,432: filters=32 filterSize=5 channels=3, shared biases
    conv2 = 32 * 32 * 5 * 5 + 32  # 25,632
    conv3 = 64 * 32 * 5 * 5 + 64  # 51,264
    fc_in = 64 * 4 * 4  # pool3: 64 maps of 4 x 4 = 1,024
    quick = conv1 + conv2 + conv3 + (fc_in * 64 + 64) + (64 * 10 + 10)  # fc64: 65,600; fc10: 650
    full = conv1 + conv2 + conv3 + (fc_in * 10 + 10)  # fc10: 10,250
    assert (quick, full) == (145_578, 89_578)
    assert _count(CifarQuick()) == _count(CifarQuick(fc_act="on", activation="tanh")) == quick
    assert _count(Cifar18pct()) == _count(Cifar18pct(norm="off")) == full  # normalisation has no parameters


def test_layers_as_published():
    net = Cifar18pct()
    names = [n for n, _ in net.features.named_children()]
    assert names == ["conv1", "pool1", "act1", "norm1", "conv2", "act2", "pool2", "norm2", "conv3", "act3", "pool3"]
    f = dict(net.features.named_children())
    for c in ("conv1", "conv2", "conv3"):
        assert f[c].kernel_size == (5, 5) and f[c].padding == (2, 2) and f[c].stride == (1, 1)
    assert isinstance(f["pool1"], nn.MaxPool2d) and isinstance(f["pool2"], nn.AvgPool2d)
    for p in ("pool1", "pool2", "pool3"):
        assert f[p].kernel_size in (3, (3, 3)) and f[p].stride in (2, (2, 2)) and f[p].ceil_mode
    n = f["norm1"]
    assert (n.size, n.alpha, n.beta, n.k, n.convention) == (3, 5e-5, 0.75, 1.0, "caffe")
    quick = [n for n, _ in CifarQuick().named_modules() if "." in n]
    assert not any("norm" in n for n in quick) and "classifier.act4" not in quick
    assert "classifier.act4" in [n for n, _ in CifarQuick(fc_act="on").named_modules()]


def test_initialisation_as_published():
    torch.manual_seed(0)
    for net, stds in ((CifarQuick(), {"conv1": 1e-4, "conv2": 0.01, "conv3": 0.01, "ip1": 0.1, "ip2": 0.1}),
                      (Cifar18pct(), {"conv1": 1e-4, "conv2": 0.01, "conv3": 0.01, "ip1": 0.01})):
        layers = {n.rsplit(".", 1)[-1]: m for n, m in net.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
        assert layers.keys() == stds.keys()
        for name, m in layers.items():
            assert abs(m.weight.std().item() / stds[name] - 1) < 0.15, name  # >= 640 weights each
            assert abs(m.weight.mean().item()) < stds[name] * 0.15
            assert torch.all(m.bias == 0)


def _caffe_pool(x, kind):
    """Caffe's PoolingLayer (pad 0, kernel 3, stride 2): pooled = ceil((H - 3) / 2) + 1; AVE divides by the
    window clipped to the image (hend = min(hstart + 3, H))."""
    n, c, h, w = x.shape
    oh, ow = math.ceil((h - 3) / 2) + 1, math.ceil((w - 3) / 2) + 1
    out = torch.empty(n, c, oh, ow, dtype=x.dtype)
    for i in range(oh):
        for j in range(ow):
            win = x[:, :, 2 * i:min(2 * i + 3, h), 2 * j:min(2 * j + 3, w)]
            out[:, :, i, j] = win.amax((2, 3)) if kind == "max" else win.sum((2, 3)) / (win.shape[2] * win.shape[3])
    return out


def test_pooling_rounds_up_and_averages_over_the_image_as_caffe():
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    f = dict(Cifar18pct().features.named_children())
    torch.testing.assert_close(f["pool1"](x), _caffe_pool(x, "max"))
    torch.testing.assert_close(f["pool2"](x), _caffe_pool(x, "avg"))
    assert f["pool2"](x).shape == (2, 3, 4, 4)  # floor mode would give 3
    corner = x[:, :, 6:8, 6:8].mean((2, 3))  # the last window holds 2 x 2 pixels, divided by 4
    torch.testing.assert_close(f["pool2"](x)[:, :, 3, 3], corner)


def _cuda_convnet_rnorm(x, size, scale, power):
    """cuda-convnet's kCNorm_fewfilter: denom = 1 + addScale * sum of squares over the size x size window
    starting at -size/2, clipped to the image; addScale = scale / size^2 (layer.py); out = a * denom^-pow."""
    n, c, h, w = x.shape
    add_scale = scale / size ** 2
    out = torch.empty_like(x)
    for y in range(h):
        for xx in range(w):
            y0, x0 = y - size // 2, xx - size // 2
            win = x[:, :, max(0, y0):min(h, y0 + size), max(0, x0):min(w, x0 + size)]
            out[:, :, y, xx] = x[:, :, y, xx] * (1 + add_scale * win.square().sum((2, 3))) ** -power
    return out


def test_response_norm_within_maps_matches_cuda_convnet_and_caffe():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64) * 80  # post-ReLU scale of the 0-255 input
    norm = SpatialResponseNorm()
    torch.testing.assert_close(norm(x), _cuda_convnet_rnorm(x, 3, 5e-5, 0.75))
    # a worked value: one map, pixel (1, 1) of [[1, 2, 0], [3, 4, 0], [0, 0, 0]] * 100 sees all four non-zero values
    a = torch.tensor([[[[100.0, 200, 0], [300, 400, 0], [0, 0, 0]]]], dtype=torch.float64)
    s = 100.0 ** 2 * (1 + 4 + 9 + 16)  # 300,000
    caffe = 400 / (1 + 5e-5 / 9 * s) ** 0.75  # 400 / 2.6667^0.75 = 191.34
    paper = 400 / (1 + 5e-5 * s) ** 0.75  # alpha on the plain sum: 400 / 16^0.75 = 50
    assert norm(a)[0, 0, 1, 1].item() == pytest.approx(caffe, rel=1e-12)
    assert SpatialResponseNorm(convention="paper")(a)[0, 0, 1, 1].item() == pytest.approx(paper, rel=1e-12)
    assert abs(caffe - paper) > 100
    # within each map: another map's values do not matter (AlexNet's LRN would mix them)
    y = x.clone()
    y[:, 1:] = 0
    torch.testing.assert_close(norm(y)[:, 0], norm(x)[:, 0])


def test_activation_and_norm_switches_change_the_function():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32) * 60
    relu, tanh = Cifar18pct(), Cifar18pct(activation="tanh")
    tanh.load_state_dict(relu.state_dict())
    def kinds(m):
        return [type(x).__name__ for x in m.modules() if isinstance(x, (nn.ReLU, nn.Tanh))]
    assert kinds(relu) == ["ReLU"] * 3 and kinds(tanh) == ["Tanh"] * 3
    # conv2's input: tanh squashes what ReLU passes (or zeroes)
    h_relu, h_tanh = relu.features[:4](x), tanh.features[:4](x)
    assert (h_relu >= 0).all() and (h_tanh < 0).any() and not torch.allclose(relu(x), tanh(x))
    off = Cifar18pct(norm="off")
    assert not any(isinstance(m, SpatialResponseNorm) for m in off.modules())
    assert sum(isinstance(m, SpatialResponseNorm) for m in relu.modules()) == 2
    off.load_state_dict(relu.state_dict())  # the same parameters
    with torch.no_grad():
        for m in (relu, off):
            m.features.conv1.weight.mul_(1000)  # large enough activations for the normalisation to act
        assert not torch.allclose(relu(x), off(x))


def test_settings_are_checked():
    assert Cifar18pctSettings().norm == "on"
    for bad in ({"activation": "sigmoid"}, {"norm": "yes"}, {"num_classes": 0}, {"side": 2}):
        with pytest.raises(ImgnetError):
            Cifar18pct(**bad)
    with pytest.raises(ImgnetError, match="fc_act='maybe'; expected one of on, off"):
        CifarQuick(fc_act="maybe")
    assert CifarQuick(num_classes=100).model_kwargs == {"num_classes": 100, "side": 32, "activation": "relu",
                                                        "fc_act": "off"}
    assert Cifar18pct(**Cifar18pct(activation="tanh").model_kwargs).model_kwargs["activation"] == "tanh"


def test_recipes_are_the_published_schedules():
    per_epoch = 50_000 // 100  # iterations of batch 100
    quick, full = RECIPES["cifar-quick"], RECIPES["cifar-18pct"]
    assert (quick["batch_size"], quick["lr"], quick["momentum"], quick["weight_decay"]) == (100, 0.001, 0.9, 0.004)
    assert quick["epochs"] * per_epoch == 5000 and quick["lr_schedule"] == "step:8"  # 8 * 500 = 4000 at 0.001
    assert full["epochs"] * per_epoch == 70000 and full["lr_schedule"] == "step:120,130"  # 60000, 65000
    assert full["lr_factor"] == quick["lr_factor"] == 0.1
    for r in (*RECIPES.values(), *CUDA_CONVNET_RECIPES.values()):
        assert r["crop"] == 32 and not r["flip"] and r["lighting_std"] == 0.0


def test_param_groups_apply_the_per_layer_multipliers():
    g = {x["name"]: (x["lr"], x["weight_decay"]) for x in param_groups(Cifar18pct(), RECIPES["cifar-18pct"])}
    assert g["features.conv1.weight"] == (0.001, 0.004)
    assert g["features.conv1.bias"] == (0.002, 0.004)  # lr_mult 2, Caffe's default decay_mult 1
    assert g["features.conv3.bias"] == (0.001, 0.004)  # no param block for conv3 in cifar10_full
    assert g["classifier.ip1.weight"] == pytest.approx((0.001, 1.0))  # decay_mult 250: cuda-convnet's wc=1
    assert g["classifier.ip1.bias"] == (0.002, 0.0)
    q = {x["name"]: (x["lr"], x["weight_decay"]) for x in param_groups(CifarQuick(), RECIPES["cifar-quick"], lr=0.01)}
    assert q["classifier.ip2.bias"] == (0.02, 0.004) and len(q) == 10
    cc = {x["name"]: x["weight_decay"]
          for x in param_groups(CifarQuick(fc_act="on"), CUDA_CONVNET_RECIPES["cifar-quick"])}
    assert cc["classifier.ip1.weight"] == pytest.approx(0.03) and cc["features.conv2.bias"] == 0.0


@pytest.mark.parametrize("net", [CifarQuick, Cifar18pct])
def test_a_few_sgd_steps_on_random_data_lower_the_loss(net):
    torch.manual_seed(0)
    model = net()
    x, y = torch.randn(16, 3, 32, 32) * 60, torch.randint(0, 10, (16,))  # 0-255 scale, mean subtracted
    recipe = RECIPES["cifar-quick" if net is CifarQuick else "cifar-18pct"]
    opt = torch.optim.SGD(param_groups(model, recipe, lr=0.01), momentum=recipe["momentum"])
    losses = []
    for _ in range(6):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(math.log(10), abs=0.05)  # tiny init: uniform predictions at first
    assert losses[-1] < losses[0] - 0.01
