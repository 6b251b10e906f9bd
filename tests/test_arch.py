import json

import pytest
import torch

from imagenet_prep.errors import ImgnetError
from trainer import arch
from trainer import checkpoint as ck
from trainer.model import AlexNetOWT

# torchvision.models.alexnet().state_dict(): keys and shapes (torchvision is not a dependency)
TORCHVISION_ALEXNET = {
    "features.0.weight": (64, 3, 11, 11), "features.0.bias": (64,),
    "features.3.weight": (192, 64, 5, 5), "features.3.bias": (192,),
    "features.6.weight": (384, 192, 3, 3), "features.6.bias": (384,),
    "features.8.weight": (256, 384, 3, 3), "features.8.bias": (256,),
    "features.10.weight": (256, 256, 3, 3), "features.10.bias": (256,),
    "classifier.1.weight": (4096, 9216), "classifier.1.bias": (4096,),
    "classifier.4.weight": (4096, 4096), "classifier.4.bias": (4096,),
    "classifier.6.weight": (1000, 4096), "classifier.6.bias": (1000,),
}


def test_alexnet_owt_has_torchvisions_keys_shapes_and_count():
    torch.manual_seed(0)
    net = AlexNetOWT()
    state = net.state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == TORCHVISION_ALEXNET
    assert list(state) == list(TORCHVISION_ALEXNET)
    assert sum(p.numel() for p in net.parameters()) == 61_100_840
    assert isinstance(net.avgpool, torch.nn.AdaptiveAvgPool2d) and net.avgpool.output_size == (6, 6)
    assert not any(m.__class__.__name__ == "LocalResponseNorm" for m in net.modules())
    assert all(m.groups == 1 for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    with torch.no_grad():
        assert net.eval()(torch.randn(2, 3, 224, 224) * 50).shape == (2, 1000)


@pytest.mark.parametrize("bias_init, one", [("paper", 1.0), ("caffe", 0.1)])
def test_paper_init_by_position_on_the_owt_layers(bias_init, one):
    state = AlexNetOWT(num_classes=10, bias_init=bias_init).state_dict()
    ones = {"features.3", "features.8", "features.10", "classifier.1", "classifier.4"}  # conv2, 4, 5, fc6, fc7
    for k, v in state.items():
        layer, what = k.rsplit(".", 1)
        if what == "bias":
            assert torch.all(v == (one if layer in ones else 0.0)), k
        else:
            assert abs(v.std().item() - 0.01) < 0.002 and abs(v.mean().item()) < 0.002, k


def test_arch_names_and_alexnet_only_switches():
    assert arch.check_arch("alexnet-owt") == "alexnet-owt"
    assert arch.check_arch("tiny_arch:make") == "tiny_arch:make"
    for bad in ("resnet", "a b:c", ":make", "mod:"):
        with pytest.raises(ImgnetError, match="expected alexnet, alexnet-owt, cifar-quick, cifar-18pct or module:callable"):
            arch.check_arch(bad)
    values = {"num_classes": 5, "towers": 2, "lrn": "none", "pool": "overlap", "activation": "relu",
              "dropout": 0.5, "bias_init": "paper"}
    with pytest.raises(ImgnetError, match="--lrn: --arch alexnet-owt does not take"):
        arch.settings_of("alexnet-owt", values)
    with pytest.raises(ImgnetError, match="--dropout: --arch tiny_arch:make does not take"):  # a user's model brings its own
        arch.settings_of("tiny_arch:make", {**values, "lrn": "paper", "dropout": 0.2})
    assert arch.settings_of("alexnet-owt", {**values, "lrn": "paper", "dropout": 0.2}) == {
        "num_classes": 5, "dropout": 0.2, "bias_init": "paper"}
    assert arch.settings_of("alexnet", values)["lrn"] == "none"


def test_user_factory_gets_the_paper_init_unless_it_keeps_its_own():
    net, kw = arch.build("tiny_arch:make", {"num_classes": 3}, init="paper")
    assert kw == {"num_classes": 3}
    first, hidden, last = net[0], net[4], net[6]
    assert torch.all(first.bias == 0) and torch.all(hidden.bias == 1) and torch.all(last.bias == 0)
    assert abs(hidden.weight.std().item() - 0.01) < 0.003
    own, _ = arch.build("tiny_arch:make", {"num_classes": 3}, init="module")
    assert not torch.all(own[4].bias == 1)  # torch's default init left alone
    with pytest.raises(ImgnetError, match="not callable"):
        arch.build("tiny_arch:NOT_A_FACTORY", {"num_classes": 3})
    with pytest.raises(ImgnetError, match="cannot import"):
        arch.build("no_such_module_here:make", {"num_classes": 3})


def test_a_checkpoint_never_imports_user_code_by_itself(tmp_path):
    net, kw = arch.build("tiny_arch:make", {"num_classes": 2})
    c = {"format": ck.FORMAT, "version": ck.VERSION, "arch": "tiny_arch:make", "model": ck.model_state(net),
         "model_kwargs": kw, "labels": {"classes": [{"wnid": "a"}, {"wnid": "b"}]}, "stats": {}}
    with pytest.raises(ImgnetError, match="user code .*pass --arch tiny_arch:make"):
        ck.model_from_checkpoint(c)
    with pytest.raises(ImgnetError, match="user code"):
        ck.model_from_checkpoint(c, arch="tiny_arch:other")
    back = ck.model_from_checkpoint(c, arch="tiny_arch:make")
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(back(x), net.eval()(x))


@pytest.mark.slow
def test_train_test_predict_a_user_model_and_a_new_metric_reaches_log_and_report(tmp_path, monkeypatch):
    from PIL import Image

    from test_train import make_data, tiny
    from trainer import evaluate as ev
    from trainer.train import train

    # one new entry in METRICS, nothing else: it must reach the log and the test JSON
    monkeypatch.setitem(ev.METRICS, "top2_err", lambda s: (s.top[:, :2] != s.y.view(-1, 1)).all(1).sum())
    data = make_data(tmp_path / "data", classes=3)
    run = tmp_path / "run"
    with pytest.raises(ImgnetError, match="--towers: --arch tiny_arch:make does not take"):
        train(tiny(data, run, arch="tiny_arch:make", towers=1))
    s = train(tiny(data, run, arch="tiny_arch:make", epochs=2, bias_init="caffe"))
    assert s["epochs"] == 2 and s["main"]
    rows = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert all(0 <= r["val_top2_err"] <= r["val_top1_err"] for r in rows)
    best = ck.load_checkpoint(run / "checkpoints" / "best.pt")
    assert best["arch"] == "tiny_arch:make" and best["model_kwargs"] == {"num_classes": 3}
    with pytest.raises(ImgnetError, match="pass --arch"):
        ev.run_test(data, run / "checkpoints" / "best.pt", workers=0, device="cpu", progress=False)
    r = ev.run_test(data, run / "checkpoints" / "best.pt", workers=0, device="cpu", progress=False,
                    arch="tiny_arch:make")
    assert r["n"] == 6 and 0 <= r["top2_err"] <= r["top1_err"]
    assert json.loads(open(r["report_path"]).read())["top2_err"] == r["top2_err"]
    img = tmp_path / "x.png"
    Image.new("RGB", (300, 260), (200, 30, 30)).save(img)
    (p,) = ev.predict(run / "checkpoints" / "best.pt", [img], device="cpu", arch="tiny_arch:make")
    assert len(p["top"]) == 3
    s2 = train(tiny(data, run, arch="tiny_arch:make", epochs=3, bias_init="caffe", resume=True))
    assert s2["epochs"] == 3


# ------------------------------------------------------------------------------------ the registry
def test_registered_switches_are_the_model_settings_fields():
    from trainer.config import TrainConfig

    assert [f.name for f in arch.switch_fields()] == ["towers", "lrn", "pool", "activation", "dropout", "bias_init",
                                                    "fc_act", "norm"]  # the CIFAR nets add two, share activation
    cfg = TrainConfig(lrn="none")
    assert cfg.lrn == "none" and cfg.towers == 2 and cfg.bias_init == "paper"


def test_a_model_registered_with_one_line_gets_its_switches_and_recipe(monkeypatch, tmp_path):
    from click.testing import CliRunner

    import trainer.train
    from cli import main
    from trainer.config import config_for
    from trainer.models import registry

    monkeypatch.setitem(registry.MODELS, "tiny", "tiny_arch")  # the one registry line
    assert arch.check_arch("tiny") == "tiny" and "width" in [f.name for f in arch.switch_fields()]
    assert arch.settings_of("tiny", {"num_classes": 3, "width": 8, "dropout": 0.1}) == {
        "num_classes": 3, "dropout": 0.1, "width": 8}
    with pytest.raises(ImgnetError, match="--lrn: --arch tiny does not take"):
        arch.settings_of("tiny", {"num_classes": 3, "lrn": "none"})
    net, kw = arch.build("tiny", {"num_classes": 3, "dropout": 0.1, "width": 8})
    assert kw == {"num_classes": 3, "dropout": 0.1, "width": 8} and net[-1].out_features == 3
    cfg = config_for(data="D", out="R", arch="tiny")
    assert (cfg.batch_size, cfg.lr, cfg.lr_schedule, cfg.momentum) == (64, 0.02, "step:5", 0.9)  # the recipe
    assert config_for(data="D", out="R", arch="tiny", lr=0.01).lr == 0.01  # what the user gives wins
    assert config_for(data="D", out="R").batch_size == 128  # alexnet: the paper's recipe

    seen = []
    monkeypatch.setattr(trainer.train, "train", lambda cfg: seen.append(cfg) or {"main": False})
    base = ["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--arch", "tiny"]
    for extra, batch in (([], 64), (["--batch-size", "128"], 128)):  # an option given at its default still wins
        assert CliRunner().invoke(main, base + extra).exit_code == 0
        assert seen[-1].batch_size == batch and seen[-1].arch == "tiny"
