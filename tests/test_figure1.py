"""imgnet figure1 (trainer/figure1.py): the pure parts (epochs to the target, the ratio or its bound, the pick of
the lr) on hand-made logs, and the command end to end on a tiny CIFAR-10 download prep'd at 32x32."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import cifar_downloads
from imagenet_prep.errors import ImgnetError
from trainer import figure1 as f1


def log(*errs):
    return [{"epoch": i, "train_top1_err": e} for i, e in enumerate(errs, 1)]


# ------------------------------------------------------------------------------------ pure parts
def test_outcome_reached_and_capped():
    assert f1.outcome(log(0.6, 0.3, 0.25, 0.2), 0.25, 40) == {"reached": True, "epochs": 3, "train_top1_err": 0.25}
    assert f1.outcome(log(0.6, 0.5, 0.4), 0.25, 3) == {"reached": False, "epochs": 3, "train_top1_err": 0.4}
    # epochs past the cap (a longer earlier invocation) do not count
    assert f1.outcome(log(0.6, 0.5, 0.2), 0.25, 2) == {"reached": False, "epochs": 2, "train_top1_err": 0.5}
    assert f1.outcome([], 0.25, 5)["reached"] is False


def test_ratio_measured_bounds_and_text():
    relu, tanh = f1.outcome(log(0.5, 0.3, 0.2), 0.25, 40), f1.outcome(log(*[0.5] * 17 + [0.24]), 0.25, 40)
    r = f1.epoch_ratio(relu, tanh)
    assert r == {"ratio": 6.0, "ratio_kind": "measured"} and f1.ratio_text(r) == "6.0x"
    capped = f1.outcome(log(*[0.5] * 10), 0.25, 10)  # tanh at the cap: it needs more than 10 epochs
    r = f1.epoch_ratio(relu, capped)
    assert r == {"ratio": 10 / 3, "ratio_kind": "lower_bound"} and f1.ratio_text(r) == ">= 3.3x"
    assert f1.epoch_ratio(capped, relu)["ratio_kind"] == "upper_bound"
    assert f1.epoch_ratio(capped, capped) == {"ratio": None, "ratio_kind": "undetermined"}


def test_pick_lr():
    assert f1.pick_lr({0.001: 0.6, 0.003: 0.5, 0.01: None}) == 0.003  # None: diverged
    assert f1.pick_lr({0.001: 0.5, 0.003: 0.5}) == 0.001  # a tie: the rate listed first
    with pytest.raises(ImgnetError, match="diverged"):
        f1.pick_lr({0.01: None})


def test_bad_options():
    for bad in (dict(lrs=()), dict(lrs=(0.1, 0.1)), dict(lrs=(-1,)), dict(target=1.5),
                dict(sweep_epochs=5, max_epochs=2), dict(jobs=3)):
        with pytest.raises(ImgnetError):
            f1.Figure1Config(data="D", out="O", **bad)


def test_divergence_is_recorded_and_not_repeated(tmp_path, monkeypatch):
    calls = []

    def diverging(cfg):
        calls.append(cfg.lr)
        raise ImgnetError("training loss became nan at step 3 (epoch 1, batch 3/500) and training stopped; ...")

    monkeypatch.setattr("trainer.train.train", diverging)
    monkeypatch.setattr(f1, "run_config", lambda *a: type("C", (), {"lr": a[2]})())
    fc = f1.Figure1Config(data="D", out=str(tmp_path), lrs=(0.1,))
    (tmp_path / "relu-lr0.1").mkdir()
    assert f1.advance(fc, "relu", 0.1, 2, 32) == []
    assert json.loads((tmp_path / "relu-lr0.1" / f1.DIVERGED).read_text())["after_epoch"] == 0
    assert f1.advance(fc, "relu", 0.1, 2, 32) == [] and calls == [0.1]  # the rerun skips it
    monkeypatch.setattr("trainer.train.train", lambda cfg: (_ for _ in ()).throw(ImgnetError("no train split")))
    with pytest.raises(ImgnetError, match="no train split"):  # other errors are the user's to see
        f1.advance(fc, "tanh", 0.1, 2, 32)


# ------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def cifar_data(tmp_path_factory):
    """A CIFAR-10 python download of 200 train and 40 test images, prep'd at 32x32 with its statistics."""
    from cli import main

    root = tmp_path_factory.mktemp("fig1")
    cifar_downloads.write(root / "src", "cifar-10-python", per_batch=40, n_test=40)
    r = CliRunner().invoke(main, ["prep", "--src", str(root / "src"), "--out", str(root / "DATA"), "--size", "32",
                                  "--workers", "1"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["pca-stats", "--data", str(root / "DATA"), "--workers", "1"])
    assert r.exit_code == 0, r.output
    return root / "DATA"


@pytest.fixture(scope="module")
def figure(cifar_data):
    from cli import main

    out = cifar_data.parent / "FIG"
    args = ["figure1", "--data", str(cifar_data), "--out", str(out), "--max-epochs", "2", "--sweep-epochs", "1",
            "--lrs", "0.001,0.01", "--device", "cpu"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    return out, args, r.output


def test_figure1_outputs(figure):
    out, _, output = figure
    assert (out / "figure1.png").stat().st_size > 0 and "tanh/ReLU epochs to 0.25" in output
    rec = json.loads((out / "figure1.json").read_text())
    for key in ("nets", "ratio", "ratio_kind", "data", "wall_seconds", "target", "max_epochs", "lrs", "settings"):
        assert key in rec
    assert rec["settings"]["norm"] == "off" and rec["settings"]["weight_decay"] == 0
    for act in ("relu", "tanh"):
        net = rec["nets"][act]
        assert set(net["sweep"]) == {"0.001", "0.01"}
        best = min(net["sweep"].values())
        assert net["sweep"][f"{net['lr']:g}"] == best and net["lr"] == f1.pick_lr(
            {float(k): v for k, v in net["sweep"].items()})
        assert net["run"].endswith(f"{act}-lr{net['lr']:g}") and 1 <= net["epochs"] <= 2
        assert [c["epoch"] for c in net["curve"]] == list(range(1, net["epochs"] + 1))
        assert net["reached"] == (net["train_top1_err"] <= 0.25)
    want = f1.epoch_ratio(rec["nets"]["relu"], rec["nets"]["tanh"])
    assert (rec["ratio"], rec["ratio_kind"]) == (want["ratio"], want["ratio_kind"])


def test_figure1_runs_compare(figure):
    from trainer.compare import compare_runs

    out = figure[0]
    runs = sorted(p for p in out.iterdir() if p.is_dir())
    assert [p.name for p in runs] == ["relu-lr0.001", "relu-lr0.01", "tanh-lr0.001", "tanh-lr0.01"]
    result = compare_runs(runs)
    differs = {r["run"].rsplit("/", 1)[-1]: r["differs"] for r in result["runs"]}
    assert differs["tanh-lr0.01"] == {"lr": 0.01, "activation": "tanh"}
    cfg = json.loads((runs[0] / "config.json").read_text())
    assert cfg["channels_last"] is True  # faster CPU steps, the same function
    assert (cfg["arch"], cfg["norm"], cfg["weight_decay"], cfg["flip"], cfg["lighting_std"], cfg["crop"],
            cfg["batch_size"], cfg["momentum"], cfg["max_lr_drops"]) == ("cifar-18pct", "off", 0.0, False, 0.0, 32,
                                                                        100, 0.9, 0)


def test_figure1_refuses_then_force_continues(figure):
    from cli import main

    out, args, _ = figure
    before = (out / "figure1.json").read_text()
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2 and "--force" in r.output and (out / "figure1.json").read_text() == before
    r = CliRunner().invoke(main, args + ["--force"])  # every run already there: nothing trains again
    assert r.exit_code == 0, r.output
    again = json.loads((out / "figure1.json").read_text())
    assert again["nets"]["relu"]["curve"] == json.loads(before)["nets"]["relu"]["curve"]


# ------------------------------------------------------------------------ bench/cifar.py's plain loop
def test_bench_plain_loop_smoke(cifar_data):
    """The plain PyTorch loop bench/cifar.py measures the trainer against: reads the packed split, one epoch."""
    import importlib.util
    from pathlib import Path

    import torch

    path = Path(__file__).resolve().parents[1] / "bench" / "cifar.py"
    spec = importlib.util.spec_from_file_location("bench_cifar", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    images, labels = bench.load_split(cifar_data)
    assert images.shape == (200, 32, 32, 3) and images.dtype == torch.uint8 and labels.shape == (200,)
    threads = torch.get_num_threads()
    try:
        r = bench.plain_run(cifar_data, threads=1)
    finally:
        torch.set_num_threads(threads)
    assert r["images"] == 200 and r["images_per_s"] > 0 and 0 <= r["train_top1_err"] <= 1
    assert bench.main(["--cifar", str(cifar_data.parent / "nowhere")])["skipped"]


@pytest.mark.slow  # two spawned processes: about 13 s here
def test_figure1_side_by_side(cifar_data, tmp_path):
    """--jobs 2: the two nets in two processes of one thread each; the same outputs."""
    from cli import main

    out = tmp_path / "FIG2"
    r = CliRunner().invoke(main, ["figure1", "--data", str(cifar_data), "--out", str(out), "--max-epochs", "1",
                                  "--sweep-epochs", "1", "--lrs", "0.01", "--jobs", "2", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    rec = json.loads((out / "figure1.json").read_text())
    assert rec["jobs"] == 2 and {n["lr"] for n in rec["nets"].values()} == {0.01}
    assert all((out / f"{a}-lr0.01" / "log.jsonl").is_file() for a in ("relu", "tanh"))
