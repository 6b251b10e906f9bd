"""The trainer at any image size and cuda-convnet's CIFAR nets as registered models (issue 19): crop, flip and
views at 32 and 64, the nets' switches, recipes and parameter groups, a short CPU run of `imgnet train
--arch cifar-quick` that learns, `imgnet test` and `imgnet predict` on it, the crop check, older checkpoints."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from imagenet_prep.errors import ImgnetError
from sized_data import make_sized_data
from trainer import checkpoint as ck
from trainer.config import config_for
from trainer.data import (InputTransform, center_crop, draw_augment, resolve_crop, ten_crop, ten_crop_offsets,
                          view_geometry)
from trainer.models import registry
from trainer.train import make_optimizer


def _stats(size: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"eigval": np.array([0.2, 0.02, 0.005]), "eigvec": np.linalg.qr(rng.normal(size=(3, 3)))[0],
            "mean_rgb": np.array([0.5, 0.45, 0.4]), "mean_image": rng.uniform(0, 255, (size, size, 3))}


# ---------------------------------------------------------------------------------- geometry
@pytest.mark.parametrize("size", [32, 64])
def test_random_crops_cover_every_offset_and_no_flip_keeps_the_draws(size):
    crop = resolve_crop(None, size)
    assert crop == size * 7 // 8 and resolve_crop(None, 256) == 224 and resolve_crop(size, size) == size
    pad = size - crop
    aug = draw_augment(np.random.default_rng(0), 4000, 0.1, pad)
    assert set(aug.tops.tolist()) == set(range(pad + 1)) == set(aug.lefts.tolist())  # all (pad + 1)^2 offsets
    assert 0.45 < aug.flips.mean() < 0.55
    still = draw_augment(np.random.default_rng(0), 4000, 0.1, pad, flip=False)
    assert not still.flips.any() and np.array_equal(still.tops, aug.tops) and np.array_equal(still.alphas, aug.alphas)
    for bad in (0, size + 1, True, 2.5):
        with pytest.raises(ImgnetError, match=f"--crop .* does not fit the {size}x{size} images"):
            resolve_crop(bad, size)


@pytest.mark.parametrize("size,crop", [(32, 28), (64, 56), (64, 48), (256, 224)])
def test_center_and_ten_crop_views_at_any_size(size, crop):
    pad = size - crop
    img = np.random.default_rng(1).integers(0, 256, (size, size, 3), dtype=np.uint8)
    tops, lefts, flips = view_geometry("center", 2, pad=pad)
    assert tops.tolist() == lefts.tolist() == [pad // 2] * 2 and not flips.any()
    assert np.array_equal(center_crop(img, crop), img[pad // 2:pad // 2 + crop, pad // 2:pad // 2 + crop])
    ten = ten_crop(img, crop)
    tops, lefts, flips = view_geometry("ten", 1, pad=pad)
    assert ten.shape == (10, crop, crop, 3) and flips.tolist() == [False] * 5 + [True] * 5
    assert list(zip(tops.tolist(), lefts.tolist())) == list(ten_crop_offsets(pad))
    for v, (t, l_, f) in enumerate(zip(tops, lefts, flips)):
        win = img[t:t + crop, l_:l_ + crop]
        assert np.array_equal(ten[v], win[:, ::-1] if f else win)
    if size == 256 and crop == 224:  # the ImageNet call keeps its default
        assert np.array_equal(ten_crop(img), ten) and center_crop(img).shape == (224, 224, 3)


def test_input_transform_takes_the_crop_and_the_mean_image_of_the_data_size():
    stats = _stats(32)
    tf = InputTransform(stats, lighting_std=0.0, crop=28)
    assert (tf.size, tf.crop, tf.pad) == (32, 28, 4)
    crops = np.random.default_rng(2).integers(0, 256, (2, 28, 28, 3), dtype=np.uint8)
    x = tf(crops, np.array([0, 4]), np.array([4, 1]), np.array([False, True]))
    m = stats["mean_image"].astype(np.float32)
    want0 = crops[0].astype(np.float32) - m[0:28, 4:32]
    want1 = crops[1].astype(np.float32) - m[4:32, 1:29][:, ::-1]
    assert x.shape == (2, 3, 28, 28)
    assert torch.allclose(x[0], torch.from_numpy(want0.transpose(2, 0, 1).copy()))
    assert torch.allclose(x[1], torch.from_numpy(want1.transpose(2, 0, 1).copy()))
    with pytest.raises(ImgnetError, match="--crop 33 does not fit the 32x32"):
        InputTransform(stats, crop=33)


# ------------------------------------------------------------------------- models and recipes
def test_cifar_nets_are_registered_with_their_switches():
    assert {"cifar-quick", "cifar-18pct"} <= set(registry.MODELS)
    values = {**asdict(config_for(data="d", out="o")), "num_classes": 10, "side": 32}
    for arch in ("alexnet", "cifar-quick", "cifar-18pct"):  # the shared --activation works for each
        assert registry.settings_of(arch, {**values, "activation": "tanh"})["activation"] == "tanh"
    assert registry.settings_of("cifar-18pct", {**values, "norm": "off"})["norm"] == "off"
    with pytest.raises(ImgnetError, match="--towers: --arch cifar-quick does not take"):
        registry.settings_of("cifar-quick", {**values, "towers": 1})
    with pytest.raises(ImgnetError, match="--norm: --arch alexnet does not take"):
        registry.settings_of("alexnet", {**values, "norm": "off"})
    with pytest.raises(ImgnetError, match="--fc-act: --arch cifar-18pct does not take"):
        registry.settings_of("cifar-18pct", {**values, "fc_act": "on"})
    model, kwargs = registry.build("cifar-quick", registry.settings_of("cifar-quick", {**values, "side": 56}))
    assert kwargs["side"] == 56 and model(torch.zeros(1, 3, 56, 56)).shape == (1, 10)


def test_recipes_are_the_defaults_and_the_user_wins():
    quick = config_for(data="d", out="o", arch="cifar-quick")
    assert (quick.batch_size, quick.lr, quick.momentum, quick.weight_decay, quick.bias_decay) == (100, 0.001, 0.9,
                                                                                                 0.004, True)
    assert (quick.epochs, quick.lr_schedule, quick.lr_factor) == (10, "step:8", 0.1)
    assert (quick.crop, quick.flip, quick.lighting_std, quick.mean) == (32, False, 0.0, "image")
    full = config_for(data="d", out="o", arch="cifar-18pct")
    assert (full.epochs, full.lr_schedule, full.batch_size) == (140, "step:120,130", 100)
    mine = config_for(data="d", out="o", arch="cifar-quick", lr=0.01, flip=True, crop=28, epochs=2)
    assert (mine.lr, mine.flip, mine.crop, mine.epochs, mine.batch_size) == (0.01, True, 28, 2, 100)
    paper = config_for(data="d", out="o")
    assert (paper.crop, paper.flip, paper.lighting_std, paper.batch_size) == (None, True, 0.1, 128)


def test_the_optimizer_takes_the_per_layer_multipliers():
    cfg = config_for(data="d", out="o", arch="cifar-18pct")
    model, _ = registry.build("cifar-18pct", registry.settings_of("cifar-18pct", {**asdict(cfg), "num_classes": 10}))
    names = dict((id(p), n) for n, p in model.named_parameters())
    groups = {names[id(g["params"][0])]: g for g in make_optimizer(model, cfg).param_groups}
    assert len(groups) == 8
    assert (groups["features.conv1.bias"]["lr"], groups["features.conv1.bias"]["lr_mult"]) == (0.002, 2.0)
    assert groups["classifier.ip1.weight"]["weight_decay"] == pytest.approx(1.0)  # x250: cuda-convnet's wc=1
    assert groups["classifier.ip1.bias"]["weight_decay"] == 0.0
    no_bias = make_optimizer(model, config_for(data="d", out="o", arch="cifar-18pct", bias_decay=False))
    assert all(g["weight_decay"] == 0 for g in no_bias.param_groups if g["params"][0].ndim == 1)
    plain = make_optimizer(model, config_for(data="d", out="o", arch="alexnet-owt"))  # no groups of its own
    assert len(plain.param_groups) == 1 and "lr_mult" not in plain.param_groups[0]


# ------------------------------------------------------------------------------ runs on data
@pytest.fixture
def data32(tmp_path, monkeypatch) -> Path:
    return make_sized_data(tmp_path / "data", 32)


def _run(args: list) -> object:
    from cli import main

    return CliRunner().invoke(main, args)


def test_cifar_quick_learns_through_imgnet_train_then_test_and_predict(data32, tmp_path):
    run = tmp_path / "run"
    r = _run(["train", "--data", str(data32), "--out", str(run), "--arch", "cifar-quick", "--epochs", "3",
              "--batch-size", "8", "--lr-schedule", "step:2", "--workers", "0", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    log = [json.loads(s) for s in (run / "log.jsonl").read_text().splitlines()]
    assert log[-1]["train_loss"] < log[0]["train_loss"] and log[-1]["train_top1_err"] < 0.25  # chance: 0.75
    assert log[0]["val_source"] == "test" and log[-1]["lr"] == pytest.approx(1e-4)
    cfg = json.loads((run / "config.json").read_text())
    assert (cfg["weight_decay"], cfg["momentum"], cfg["crop"], cfg["flip"], cfg["lighting_std"]) == (0.004, 0.9, 32,
                                                                                                      False, 0.0)
    assert cfg["input"] == {"size": 32, "crop": 32} and cfg["model_kwargs"]["side"] == 32
    raw = ck.load_checkpoint(run / "checkpoints" / "last.pt")
    assert (raw["version"], raw["size"], raw["crop"]) == (3, 32, 32)
    lrs = sorted({(g["lr_mult"], g["lr"]) for g in raw["optimizer"]["param_groups"]})
    assert lrs == [(1.0, pytest.approx(1e-4)), (2.0, pytest.approx(2e-4))]  # the schedule scales every group

    t = _run(["test", "--data", str(data32), "--ckpt", str(run / "checkpoints" / "best.pt"), "--views",
              "center,ten-crop", "--workers", "0", "--device", "cpu"])
    assert t.exit_code == 0, t.output
    rep = json.loads((run / "checkpoints" / "test-best-center.json").read_text())
    assert rep["split"] == "test" and rep["n"] == 16 and rep["top1_err"] < 0.5

    from PIL import Image

    img = np.zeros((48, 40, 3), np.uint8)
    img[..., 0] = 210  # class 0's colour, any size: resized to 32 by the image policy
    Image.fromarray(img).save(tmp_path / "red.png")
    p = _run(["predict", "--ckpt", str(run / "checkpoints" / "best.pt"), "--device", "cpu", "--json",
              str(tmp_path / "red.png")])
    assert p.exit_code == 0, p.output
    assert json.loads(p.output)[0]["top"][0]["index"] == 0


def test_alexnet_refuses_a_crop_it_cannot_take_in_one_line(data32, tmp_path):
    r = _run(["train", "--data", str(data32), "--out", str(tmp_path / "run"), "--epochs", "1", "--workers", "0",
              "--device", "cpu"])
    assert r.exit_code != 0
    line = r.output.strip()
    assert "\n" not in line and "--crop 28: --arch alexnet takes 224x224 crops" in line, line


def test_a_model_too_deep_for_the_crop_is_one_line_before_training(data32, tmp_path):
    # alexnet-owt declares no crop of its own: its layers cannot take 16x16, found by a dry forward pass
    run = tmp_path / "run"
    r = _run(["train", "--data", str(data32), "--out", str(run), "--arch", "alexnet-owt", "--crop", "16",
              "--epochs", "1", "--batch-size", "8", "--workers", "0", "--device", "cpu"])
    assert r.exit_code != 0
    line = r.output.strip()
    assert "\n" not in line and line.startswith("error: --crop 16: --arch alexnet-owt cannot take 16x16 inputs"), line
    assert not (run / "log.jsonl").exists()


def test_cifar_18pct_at_size_64_takes_its_recipes_crop_and_a_crop_given(tmp_path, monkeypatch):
    data = make_sized_data(tmp_path / "data", 64, classes=3, train_per_class=4, held_per_class=2, held_out="val")
    run = tmp_path / "run"
    r = _run(["train", "--data", str(data), "--out", str(run), "--arch", "cifar-18pct", "--epochs", "1",
              "--batch-size", "4", "--activation", "tanh", "--flip", "--workers", "0", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    raw = ck.load_checkpoint(run / "checkpoints" / "last.pt")
    assert (raw["size"], raw["crop"], raw["model_kwargs"]["side"], raw["model_kwargs"]["activation"]) == (64, 32, 32,
                                                                                                          "tanh")
    assert json.loads((run / "log.jsonl").read_text())["val_source"] == "val"  # val where DATA has it
    r = _run(["train", "--data", str(data), "--out", str(tmp_path / "run56"), "--arch", "cifar-18pct", "--epochs", "1",
              "--batch-size", "4", "--crop", "56", "--workers", "0", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    raw = ck.load_checkpoint(tmp_path / "run56" / "checkpoints" / "last.pt")
    assert (raw["crop"], raw["model_kwargs"]["side"]) == (56, 56)


def test_checkpoints_before_sizes_load_as_256_and_224(tmp_path):
    for version in (1, 2):
        path = tmp_path / f"v{version}.pt"
        torch.save({"format": ck.FORMAT, "version": version, "model": {}, "model_kwargs": {}, "labels": {},
                    "stats": {}}, path)
        assert ck.input_geometry(ck.load_checkpoint(path)) == (256, 224)
        saved = ck.saved_config(ck.load_checkpoint(path))  # what --resume compares: the settings added since
        assert (saved["crop"], saved["flip"], saved["norm"], saved["fc_act"]) == (None, True, "on", "off")
