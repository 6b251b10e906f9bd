"""Plain weights in and out: torchvision-keyed state dicts for test and predict (with torchvision's input),
`train --init-from` (fine-tuning), `imgnet export` (state dict and ONNX, with its JSON record) and the lean best.pt."""

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from cli import main
from imagenet_prep.errors import ImgnetError
from imagenet_prep.labels import build_label_map, sorted_wnids
from imagenet_prep.resize import prepare_image
from imagenet_prep.store import write_split
from trainer import checkpoint as ck
from trainer import weights as wt
from trainer.config import TrainConfig, check_config
from trainer.data import center_crop
from trainer.evaluate import predict, run_test
from trainer.export import export
from trainer.models.alexnet_owt import AlexNetOWT
from trainer.models.registry import build

from test_arch import TORCHVISION_ALEXNET  # the keys and shapes of alexnet-owt-7be5be79.pth

WNIDS = sorted_wnids()[:4]


def labels4() -> dict:
    return build_label_map(WNIDS).to_json()


def owt_weights(num_classes: int = 4, seed: int = 0) -> dict:
    """alexnet-owt weights with He-scaled draws, so that the logits differ by whole units (the paper's N(0, 0.01)
    gives near-uniform outputs, which could not tell two input conventions apart)."""
    torch.manual_seed(seed)
    net = AlexNetOWT(num_classes=num_classes)
    for p in net.parameters():
        if p.dim() > 1:
            torch.nn.init.kaiming_normal_(p)
    return {k: v.clone() for k, v in net.state_dict().items()}


def torchvision_reference(state: dict, image_file) -> torch.Tensor:
    """Softmax of torchvision's recipe written out: Resize(256) + CenterCrop(224) (here prep's resize, the same
    up to the filter), ToTensor, Normalize(mean, std), the model."""
    img, _ = prepare_image(open(image_file, "rb").read(), 256)
    x = torch.from_numpy(center_crop(img, 224).copy()).permute(2, 0, 1).float() / 255
    mean, std = torch.tensor(wt.TORCHVISION_MEAN).view(3, 1, 1), torch.tensor(wt.TORCHVISION_STD).view(3, 1, 1)
    net = AlexNetOWT(num_classes=state["classifier.6.bias"].shape[0]).eval()
    net.load_state_dict(state)
    with torch.no_grad():
        return net(((x - mean) / std)[None]).softmax(1)[0]


def image(path, seed: int = 0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (300, 340, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def owt(tmp_path_factory):
    """torchvision-keyed alexnet-owt weights of 1000 classes saved as a plain state dict, and DATA: 4 val records
    of the 1000-class label map, two labelled with the reference's top class and two with its last."""
    root = tmp_path_factory.mktemp("owt")
    state = owt_weights(1000)
    torch.save(state, root / "alexnet-owt.pth")
    labels, rng, recs = build_label_map(sorted_wnids()).to_json(), np.random.default_rng(1), []
    for j in range(4):
        img = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
        Image.fromarray(img).save(root / f"r{j}.png")
        p = torchvision_reference(state, root / f"r{j}.png")
        recs.append((img, int(p.argmax() if j < 2 else p.argmin()), f"r{j}.png"))
    for split in ("train", "val"):
        write_split(root / "data", split, recs, labels_json=labels)
    return {"path": root / "alexnet-owt.pth", "state": state, "root": root, "data": root / "data"}


def test_alexnet_owt_has_torchvision_keys_and_shapes():
    with torch.device("meta"):
        mine = AlexNetOWT(num_classes=1000).state_dict()
    assert {k: tuple(v.shape) for k, v in mine.items()} == TORCHVISION_ALEXNET  # no key map needed
    assert list(mine) == list(TORCHVISION_ALEXNET)


def test_predict_with_torchvision_weights_follows_torchvision_recipe(owt, tmp_path):
    img = image(tmp_path / "a.png")
    src = wt.load_weights(owt["path"], arch="alexnet-owt", input="torchvision")  # no DATA: the 1000 classes
    (r,) = predict(src, [img], device="cpu", topk=5)
    want = torchvision_reference(owt["state"], img)
    p, idx = want.topk(5)
    assert [t["index"] for t in r["top"]] == idx.tolist()
    assert [t["wnid"] for t in r["top"]] == [sorted_wnids()[i] for i in idx.tolist()]
    assert [t["prob"] for t in r["top"]] == pytest.approx(p.tolist(), abs=1e-5)
    assert p[0] > 0.05  # the logits differ by units: another input convention would change them


def test_imgnet_test_with_a_torchvision_state_dict(owt):
    from imagenet_prep.stats import compute_stats

    args = ["test", "--data", str(owt["data"]), "--weights", str(owt["path"]), "--arch", "alexnet-owt",
            "--input", "torchvision", "--device", "cpu", "--workers", "0"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    line = json.loads(r.output.strip().splitlines()[-1])
    assert line["n"] == 4 and line["top1_err"] == 0.5  # records 0, 1 are right, 2, 3 the reference's last class
    assert (owt["root"] / f"test-{Path(owt['path']).stem}-center.json").is_file()  # beside the weights, named after them
    compute_stats(owt["data"], workers=1, progress=False)  # the paper input needs DATA's mean
    r = run_test(owt["data"], owt["path"], workers=0, device="cpu", progress=False,
                 weights=wt.load_weights(owt["path"], "alexnet-owt", "paper", owt["data"]))
    assert r["n"] == 4 and abs(r["loss"] - line["loss"]) > 1e-3  # the same weights on another input


@pytest.mark.parametrize("case", ["wrapped", "prefixed"])
def test_timm_and_ddp_forms_read_as_the_plain_state_dict(tmp_path, case):
    state = {"conv.weight": torch.ones(2, 3), "fc.bias": torch.zeros(2, dtype=torch.float16)}
    prefixed = {f"module.{k}": v for k, v in state.items()}
    obj = {"state_dict": state, "epoch": 3, "arch": "x"} if case == "wrapped" else prefixed
    torch.save(obj, tmp_path / "w.pth")
    got = wt.read_state_dict(tmp_path / "w.pth")
    assert list(got) == list(state) and got["fc.bias"].dtype == torch.float32


def _one_line_error(args) -> str:
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2 and r.output.startswith("error: ") and r.output.count("\n") == 1, r.output
    return r.output


def test_weights_that_do_not_fit_name_the_first_key_and_its_shape(owt, tmp_path):
    torch.save({**owt["state"], "classifier.6.weight": torch.zeros(100, 4096), "classifier.6.bias": torch.zeros(100)},
               tmp_path / "c100.pth")
    base = ["test", "--data", str(owt["data"]), "--arch", "alexnet-owt", "--input", "torchvision", "--weights"]
    msg = _one_line_error(base + [str(tmp_path / "c100.pth")])
    assert "classifier.6.weight has shape (100, 4096); --arch alexnet-owt expects (1000, 4096)" in msg
    with torch.device("meta"):
        paper, _ = build("alexnet", {"num_classes": 1000})
    torch.save({k: torch.zeros(v.shape[:1]) for k, v in paper.state_dict().items()}, tmp_path / "paper.pth")
    msg = _one_line_error(base + [str(tmp_path / "paper.pth")])  # the paper's net under another arch
    assert "has no features.0.weight; --arch alexnet-owt expects features.0.weight of shape (64, 3, 11, 11)" in msg
    short = dict(owt["state"])
    del short["classifier.4.bias"]
    torch.save(short, tmp_path / "short.pth")
    assert "has no classifier.4.bias" in _one_line_error(base + [str(tmp_path / "short.pth")])
    torch.save({**owt["state"], "extra.weight": torch.zeros(1)}, tmp_path / "extra.pth")
    assert "has extra.weight, which --arch alexnet-owt has not" in _one_line_error(base + [str(tmp_path / "extra.pth")])
    torch.save([1, 2], tmp_path / "list.pth")
    assert "is not a state dict" in _one_line_error(base + [str(tmp_path / "list.pth")])


class _Boom:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_a_file_with_code_is_refused_without_running_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"features.0.weight": _Boom()}, f, protocol=2)
    msg = _one_line_error(["predict", "--weights", str(tmp_path / "evil.pth"), "--arch", "alexnet-owt", "--input",
                           "torchvision", str(image(tmp_path / "a.png"))])
    assert "not loadable as data" in msg and not (tmp_path / "PWNED").exists()


def test_weights_need_arch_input_and_one_source(owt, tmp_path):
    img = str(image(tmp_path / "a.png"))
    assert "expected --arch" in _one_line_error(["predict", "--weights", str(owt["path"]), img])
    msg = _one_line_error(["predict", "--weights", str(owt["path"]), "--arch", "alexnet-owt", img])
    assert "expected --input" in msg
    assert "exactly one of --ckpt" in _one_line_error(["predict", img])
    ckpt = str(owt["root"] / "alexnet-owt.pth")
    assert "--input goes with --weights" in _one_line_error(["predict", "--ckpt", ckpt, "--input", "paper", img])


def test_onnx_without_the_extra_is_one_line(run, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnx" else real(name, *a))
    msg = _one_line_error(["export", str(run["best"]), "--to", str(tmp_path / "m.onnx")])
    assert "pip install 'imgnet[onnx]'" in msg and not any(tmp_path.iterdir())


# ------------------------------------------------------------------ a small run: best.pt, export, --init-from
def _train(data, out, **kw):
    from trainer.train import config_for, train

    return train(config_for(data=str(data), out=str(out), arch="cifar-quick", epochs=1, batch_size=16, workers=0,
                            device="cpu", progress=False, **kw))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from sized_data import make_sized_data

    root = tmp_path_factory.mktemp("run")
    data = make_sized_data(root / "data", 32, classes=4)
    _train(data, root / "run", mean="rgb")
    return {"data": data, "run": root / "run", "best": root / "run" / "checkpoints" / "best.pt", "root": root}


def test_best_pt_is_lean_and_last_pt_resumes(run):
    best, last = (torch.load(run["run"] / "checkpoints" / n, weights_only=True) for n in ("best.pt", "last.pt"))
    assert best["lean"] and "optimizer" not in best and last["optimizer"]["state"]
    key = "features.conv1.weight"
    assert best["epoch"] == last["epoch"] == 1 and torch.equal(best["model"][key], last["model"][key])
    with pytest.raises(ImgnetError, match="no optimizer state"):
        ck.restore(best, ck.RunState(None), optimizer=None, scaler=None, rank=0, world=1, steps_per_epoch=1)
    r = run_test(run["data"], run["best"], workers=0, device="cpu", progress=False)
    assert r["n"] == 16


def test_export_state_dict_and_record_predict_the_same(run, tmp_path):
    out = export(run["best"], tmp_path / "quick.pth")
    meta = json.loads((tmp_path / "quick.json").read_text())
    ckpt = ck.load_checkpoint(run["best"])
    assert meta["arch"] == "cifar-quick" and meta["input"]["convention"] == "paper" and meta["input"]["mean"] == "rgb"
    assert meta["labels"]["wnids"] == [c["wnid"] for c in ckpt["labels"]["classes"]]
    assert len(meta["labels"]["names"]) == 4
    plain = torch.load(tmp_path / "quick.pth", weights_only=True)
    assert list(plain) == list(ckpt["model"]) and all(torch.equal(plain[k], ckpt["model"][k]) for k in plain)
    assert out["sha256"] == meta["sha256"] and sorted(p.name for p in tmp_path.iterdir()) == ["quick.json", "quick.pth"]
    img = str(image(tmp_path / "a.png"))
    a = predict(run["best"], [img], device="cpu")[0]["top"]
    b = predict(wt.load_weights(tmp_path / "quick.pth"), [img], device="cpu")[0]["top"]  # arch, input: the record
    assert [t["wnid"] for t in a] == [t["wnid"] for t in b]
    assert [t["prob"] for t in a] == pytest.approx([t["prob"] for t in b])
    r = run_test(run["data"], tmp_path / "quick.pth", workers=0, device="cpu", progress=False,
                 weights=wt.load_weights(tmp_path / "quick.pth", data_dir=run["data"]))
    assert r["top1_err"] == run_test(run["data"], run["best"], workers=0, device="cpu", progress=False)["top1_err"]


def test_export_onnx_matches_onnxruntime(run, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    r = CliRunner().invoke(main, ["export", str(run["best"]), "--to", str(tmp_path / "quick.onnx")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "quick.json").read_text())["weights_format"] == "onnx"
    net = ck.model_from_checkpoint(ck.load_checkpoint(run["best"]))
    x = torch.randn(5, 3, 32, 32) * 60
    with torch.no_grad():
        want = net(x).numpy()
    got = ort.InferenceSession(str(tmp_path / "quick.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"input": x.numpy()})[0]
    assert got.shape == (5, 4) and np.allclose(got, want, atol=1e-4, rtol=1e-4)


def test_init_from_fine_tunes_with_a_new_final_layer(run, capfd):
    from sized_data import make_sized_data

    from trainer.train import build_model

    data3 = make_sized_data(run["root"] / "data3", 32, classes=3)
    cfg = TrainConfig(data=str(data3), out=str(run["root"] / "ft"), arch="cifar-quick", init_from=str(run["best"]))
    check_config(cfg)
    model, _ = build_model(cfg, 3, torch.device("cpu"), crop=32)
    src = ck.load_checkpoint(run["best"])["model"]
    assert "final layer" in capfd.readouterr().err
    fresh, _ = build_model(TrainConfig(data=str(data3), out="x", arch="cifar-quick"), 3, torch.device("cpu"), crop=32)
    state, head = model.state_dict(), wt.head_keys(model)
    assert head and all(torch.equal(state[k], fresh.state_dict()[k]) for k in head)  # the new layer: fresh init
    assert all(torch.equal(state[k], src[k]) for k in state if k not in head)  # every other layer: the file's
    s = _train(data3, run["root"] / "ft", init_from=str(run["best"]))
    rec = json.loads((run["root"] / "ft" / "config.json").read_text())
    assert rec["init_from"] == str(run["best"]) and rec["init_from_sha256"] == wt.file_sha256(run["best"])
    assert s["epochs"] == 1


def test_init_from_a_file_that_does_not_fit(run, tmp_path):
    torch.save(owt_weights(4), tmp_path / "owt.pth")
    from trainer.train import build_model

    cfg = TrainConfig(data=str(run["data"]), out="x", arch="cifar-quick", init_from=str(tmp_path / "owt.pth"))
    key = r"features\.conv1\.weight"
    with pytest.raises(ImgnetError, match=rf"has no {key}; --arch cifar-quick expects {key} of shape"):
        build_model(cfg, 4, torch.device("cpu"), crop=32)
    with pytest.raises(ImgnetError, match="--init-from .* not found"):
        check_config(TrainConfig(data="d", out="o", init_from=str(tmp_path / "nope.pth")))



def torchvision_center_224(img: Image.Image) -> np.ndarray:
    """torchvision's Resize(256) + CenterCrop(224) on a PIL image, as torchvision.transforms.functional computes
    them: the long side int(256 * long / short), PIL's bilinear filter, the crop at round((side - 224) / 2)."""
    w, h = img.size
    size = (256, int(256 * h / w)) if w <= h else (int(256 * w / h), 256)
    r = img.resize(size, Image.BILINEAR)
    top, left = int(round((size[1] - 224) / 2.0)), int(round((size[0] - 224) / 2.0))
    return np.asarray(r)[top:top + 224, left:left + 224]


@pytest.mark.parametrize("wh", [(500, 375), (375, 500), (640, 427), (256, 256)])
def test_the_center_crop_of_a_256_pack_is_torchvisions_up_to_the_filter(tmp_path, wh):
    w, h = wh
    y, x = np.mgrid[0:h, 0:w] / max(w, h)
    photo = np.stack([128 + 100 * np.sin(6 * x + 2 * y), 128 + 90 * np.cos(5 * y - 3 * x), 255 * x * y], -1)
    Image.fromarray(photo.clip(0, 255).astype(np.uint8)).save(tmp_path / "p.png")
    ours = center_crop(prepare_image((tmp_path / "p.png").read_bytes(), 256)[0], 224).astype(float)
    theirs = torchvision_center_224(Image.open(tmp_path / "p.png").convert("RGB")).astype(float)
    assert ours.shape == theirs.shape == (224, 224, 3)
    assert np.abs(ours - theirs).mean() < 0.5  # levels: the filters differ (0.02-0.3); a crop one pixel off gives 0.6
