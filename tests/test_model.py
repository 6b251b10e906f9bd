"""AlexNet as in section 3.5: shapes, parameter count, initialisation, switches, model parallelism."""

import pytest
import torch
from torch import nn

from imagenet_prep.errors import ImgnetError
from trainer.model import AlexNet, LocalResponseNorm, ModelParallelAlexNet, conv_widths, feature_side

CONVS = ("conv1", "conv2", "conv3", "conv4", "conv5")
FCS = ("fc6", "fc7", "fc8")
needs_two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def paper_model():
    torch.manual_seed(0)
    return AlexNet().eval()


def layer(model, name):
    return getattr(model.features if name in CONVS else model.classifier, name)


def input_batch(n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 224, 224, generator=g) * 60  # 0-255 scale, mean subtracted


def feature_shapes(model, x):
    shapes = {}
    hooks = [m.register_forward_hook(lambda m, i, o, name=name: shapes.__setitem__(name, tuple(o.shape)))
             for name, m in model.features.named_children()]
    with torch.no_grad():
        logits = model(x)
    for h in hooks:
        h.remove()
    return shapes, logits


def test_layer_output_shapes(paper_model):
    shapes, logits = feature_shapes(paper_model, input_batch(1))
    assert shapes["conv1"] == (1, 96, 55, 55)  # 224 with padding 2
    assert shapes["pool1"] == (1, 96, 27, 27)
    assert shapes["conv2"] == (1, 256, 27, 27)
    assert shapes["pool2"] == (1, 256, 13, 13)
    assert shapes["conv3"] == (1, 384, 13, 13)
    assert shapes["conv4"] == (1, 384, 13, 13)
    assert shapes["conv5"] == (1, 256, 13, 13)
    assert shapes["pool5"] == (1, 256, 6, 6)
    assert logits.shape == (1, 1000) and torch.isfinite(logits).all()


def test_parameter_count(paper_model):
    assert sum(p.numel() for p in paper_model.parameters()) == 60_965_224
    # one-GPU net: 48, 128, 192, 192, 256 kernels, no groups
    one = 48 * 3 * 121 + 48 + 128 * 48 * 25 + 128 + 192 * 128 * 9 + 192 + 192 * 192 * 9 + 192 + 256 * 192 * 9 + 256
    fc = 9216 * 4096 + 4096 + 4096 * 4096 + 4096 + 4096 * 1000 + 1000
    assert one + fc == 59_798_312
    assert sum(p.numel() for p in AlexNet(towers=1).parameters()) == 59_798_312


def test_two_tower_connectivity(paper_model):
    f = paper_model.features
    assert [getattr(f, n).groups for n in CONVS] == [1, 2, 1, 2, 2]  # conv3 reads both towers
    assert [getattr(f, n).out_channels for n in CONVS] == [96, 256, 384, 384, 256]
    assert (f.conv1.kernel_size, f.conv1.stride, f.conv1.padding) == ((11, 11), (4, 4), (2, 2))
    assert f.conv2.kernel_size == (5, 5) and f.conv2.padding == (2, 2)
    assert all(getattr(f, n).kernel_size == (3, 3) and getattr(f, n).padding == (1, 1) for n in CONVS[2:])
    assert [getattr(paper_model.classifier, n).out_features for n in FCS] == [4096, 4096, 1000]
    assert paper_model.classifier.fc6.in_features == 256 * 6 * 6
    order = [n for n, _ in paper_model.classifier.named_children()]
    assert order == ["fc6", "act6", "drop6", "fc7", "act7", "drop7", "fc8"]  # dropout after fc6 and fc7
    assert paper_model.classifier.drop6.p == 0.5 and paper_model.classifier.drop7.p == 0.5


def test_lrn_is_the_papers_and_per_tower(paper_model):
    for name in ("lrn1", "lrn2"):
        m = getattr(paper_model.features, name)
        assert isinstance(m, LocalResponseNorm)
        assert (m.size, m.alpha, m.beta, m.k, m.convention, m.groups) == (5, 1e-4, 0.75, 2.0, "paper", 2)
    # conv1's maps 0-47 and 48-95 are normalised apart
    x = torch.rand(1, 96, 4, 4) * 50
    x2 = x.clone()
    x2[:, 47] += 200.0
    y, y2 = paper_model.features.lrn1(x), paper_model.features.lrn1(x2)
    assert torch.equal(y[:, 48:], y2[:, 48:])
    assert not torch.allclose(y[:, 45:47], y2[:, 45:47])


def test_lrn_class_is_reexported():
    from trainer import lrn

    assert LocalResponseNorm is lrn.LocalResponseNorm


@pytest.mark.parametrize("bias_init, one", [("paper", 1.0), ("caffe", 0.1)])
def test_initialisation(bias_init, one):
    torch.manual_seed(1)
    model = AlexNet(bias_init=bias_init)
    for name in CONVS + FCS:
        m = layer(model, name)
        w = m.weight.detach()
        assert abs(w.std().item() - 0.01) < 0.0005, name  # conv1 has 34,848 weights: sd of the estimate 0.4%
        assert abs(w.mean().item()) < 0.0005, name
        expected = one if name in ("conv2", "conv4", "conv5", "fc6", "fc7") else 0.0
        assert torch.equal(m.bias.detach(), torch.full_like(m.bias, expected)), name


def test_one_tower_net():
    model = AlexNet(towers=1, num_classes=10)
    f = model.features
    assert [getattr(f, n).out_channels for n in CONVS] == list(conv_widths(1)) == [48, 128, 192, 192, 256]
    assert all(getattr(f, n).groups == 1 for n in CONVS)
    assert f.lrn1.groups == 1 and f.lrn2.groups == 1
    assert model.classifier.fc6.in_features == 9216 and model.classifier.fc8.out_features == 10
    shapes, logits = feature_shapes(model, input_batch(1))
    assert shapes["pool5"] == (1, 256, 6, 6) and logits.shape == (1, 10)


def test_switches_change_the_modules():
    model = AlexNet(num_classes=10, lrn="none", pool="nonoverlap", activation="tanh", dropout=0.3)
    f, c = model.features, model.classifier
    assert isinstance(f.lrn1, nn.Identity) and isinstance(f.lrn2, nn.Identity)
    assert all(getattr(f, p).kernel_size == 2 and getattr(f, p).stride == 2 for p in ("pool1", "pool2", "pool5"))
    acts = [m for m in model.modules() if isinstance(m, (nn.ReLU, nn.Tanh))]
    assert len(acts) == 7 and all(isinstance(m, nn.Tanh) for m in acts)
    assert c.drop6.p == 0.3 and c.drop7.p == 0.3
    assert feature_side("nonoverlap") == 6 and feature_side("overlap") == 6  # 55 -> 27 -> 13 -> 6 either way
    assert c.fc6.in_features == 256 * feature_side("nonoverlap") ** 2
    shapes, logits = feature_shapes(model, input_batch(1))
    assert shapes["pool1"] == (1, 96, 27, 27) and shapes["pool2"] == (1, 256, 13, 13)
    assert shapes["pool5"] == (1, 256, 6, 6) and logits.shape == (1, 10)
    caffe = AlexNet(num_classes=10, lrn="caffe")
    assert caffe.features.lrn1.convention == "caffe" and caffe.features.lrn1.groups == 2
    assert feature_side("overlap", side=227) == 6 and feature_side("nonoverlap", side=240) == 7  # computed, not fixed


def test_model_kwargs_rebuild_the_same_net():
    kw = dict(num_classes=10, towers=1, lrn="caffe", pool="nonoverlap", activation="tanh", dropout=0.2, bias_init="caffe")
    model = AlexNet(**kw)
    assert model.model_kwargs == kw
    rebuilt = AlexNet(**model.model_kwargs)
    rebuilt.load_state_dict(model.state_dict())  # strict: same keys and shapes
    assert repr(rebuilt) == repr(model)
    assert AlexNet(num_classes=10).model_kwargs == dict(num_classes=10, towers=2, lrn="paper", pool="overlap",
                                                        activation="relu", dropout=0.5, bias_init="paper")


@pytest.mark.parametrize("kwargs", [dict(towers=3), dict(lrn="torch"), dict(pool="max"), dict(activation="gelu"),
                                    dict(dropout=1.0), dict(bias_init="zero"), dict(num_classes=0)])
def test_bad_settings_raise(kwargs):
    with pytest.raises(ImgnetError):
        AlexNet(**kwargs)


def test_channels_last_and_bf16_autocast(paper_model):
    x = input_batch(1)
    with torch.no_grad():
        ref = paper_model(x)
        model = paper_model.to(memory_format=torch.channels_last)
        try:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = model(x.contiguous(memory_format=torch.channels_last))
        finally:
            paper_model.to(memory_format=torch.contiguous_format)
    assert out.shape == (1, 1000)
    torch.testing.assert_close(out.float(), ref, rtol=0.1, atol=0.1 * ref.abs().max().item())


# ---------------------------------------------------------------------------------- model parallel
def grouped_grads(mp):
    return {f"{n}.{what}": torch.cat([getattr(t.layer(n), what).grad.to(mp.devices[0]) for t in mp.towers])
            for n in CONVS + FCS for what in ("weight", "bias")}


def check_same_function(model, mp, x, rtol, atol):
    """Forward and backward of the grouped net and its two-tower split agree."""
    model.zero_grad()
    mp.zero_grad()
    y = model(x)
    y_mp = mp(x)
    assert y_mp.device == mp.devices[0]
    torch.testing.assert_close(y_mp.to(y.device), y, rtol=rtol, atol=atol)
    g = torch.randn_like(y)
    y.backward(g)
    y_mp.backward(g.to(y_mp.device))
    ours = grouped_grads(mp)
    for key, p in model.named_parameters():
        short = key.split(".", 1)[1]
        ref = p.grad
        torch.testing.assert_close(ours[short].to(ref.device), ref, rtol=rtol, atol=atol * ref.abs().max().item() + 1e-12)


@pytest.fixture(scope="module")
def grouped_11():
    torch.manual_seed(3)
    return AlexNet(num_classes=11, dropout=0.0)  # odd: fc8 splits 6 + 5; dropout off: nothing random


def test_model_parallel_on_two_cpu_towers_is_the_same_function(grouped_11):
    mp = grouped_11.to_model_parallel(("cpu", "cpu"))
    assert sum(p.numel() for p in mp.parameters()) == sum(p.numel() for p in grouped_11.parameters())
    t0 = mp.towers[0]
    assert t0.layer("conv1").out_channels == 48 and t0.layer("conv3").in_channels == 256
    assert t0.layer("conv4").in_channels == 192 and t0.layer("fc6").in_features == 9216
    assert t0.lower.lrn1.groups == 1 and mp.fc8_split == (6, 5)
    check_same_function(grouped_11, mp, input_batch(1, seed=4), rtol=1e-4, atol=1e-5)  # train mode


def test_model_parallel_state_dict_round_trip(grouped_11):
    mp = ModelParallelAlexNet.from_grouped(grouped_11, ("cpu", "cpu"))
    state = mp.grouped_state_dict()
    assert state.keys() == grouped_11.state_dict().keys()
    for key, value in grouped_11.state_dict().items():
        assert torch.equal(state[key], value), key
    with torch.no_grad():  # change the split weights; joining them back gives the same function
        for p in mp.parameters():
            p.add_(torch.randn_like(p) * 1e-3)
    back = mp.to_grouped().eval()
    assert back.model_kwargs == grouped_11.model_kwargs
    assert not torch.equal(back.features.conv1.weight, grouped_11.features.conv1.weight)
    x = input_batch(1, seed=6)
    with torch.no_grad():
        torch.testing.assert_close(mp.eval()(x), back(x), rtol=1e-4, atol=1e-5)


def test_model_parallel_needs_two_towers():
    with pytest.raises(ImgnetError, match="towers=2"):
        ModelParallelAlexNet(("cpu", "cpu"), towers=1)
    with pytest.raises(ImgnetError, match="two devices"):
        ModelParallelAlexNet(("cpu",))
    with pytest.raises(ImgnetError, match="unknown model setting"):
        ModelParallelAlexNet(("cpu", "cpu"), width=3)


# --------------------------------------------------------------------------------------- on a GPU
@pytest.mark.gpu
@needs_two_gpus
def test_model_parallel_on_two_gpus_is_the_same_function():
    torch.manual_seed(7)
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        model = AlexNet(num_classes=100, dropout=0.0).cuda(0)
        mp = model.to_model_parallel(("cuda:0", "cuda:1"))
        assert mp.towers[1].layer("conv1").weight.device == torch.device("cuda:1")
        check_same_function(model, mp, input_batch(4, seed=8).cuda(0), rtol=1e-3, atol=1e-4)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32


@pytest.mark.gpu
@needs_cuda
def test_gpu_train_step_fused_lrn_matches_plain(monkeypatch):
    """The whole net, bf16 autocast and channels_last: the fused LRN and the plain one agree."""
    torch.manual_seed(9)
    model = AlexNet(num_classes=100, dropout=0.0).cuda().to(memory_format=torch.channels_last)
    x = input_batch(8, seed=10).cuda().contiguous(memory_format=torch.channels_last)

    def run():
        model.zero_grad()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y = model(x)
        y.float().square().mean().backward()
        return y.float(), model.features.conv1.weight.grad.clone()

    assert model.features.lrn1.fused(torch.empty(1, 96, 1, 1, device="cuda"))
    y_fused, g_fused = run()
    monkeypatch.setenv("IMGNET_LRN", "plain")
    y_plain, g_plain = run()
    torch.testing.assert_close(y_fused, y_plain, rtol=3e-2, atol=3e-2 * y_plain.abs().max().item())
    torch.testing.assert_close(g_fused, g_plain, rtol=5e-2, atol=5e-2 * g_plain.abs().max().item())
