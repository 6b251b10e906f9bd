"""The knobs beside the paper's recipe (trainer/config.py: --lr-schedule cosine, --warmup-epochs,
--label-smoothing, --ema, --max-steps, --limit-batches, --tensorboard; predict --topk). Off by default: a run
with none of them is the plain SGD loop written out here, weight for weight; with them, the same loop with
their formulas; a run with them stopped, killed and resumed ends where the run straight through does."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from imagenet_prep.errors import ImgnetError
from test_train import _optimizer_equal, _weights_equal, make_data, tiny
from trainer import checkpoint as ck
from trainer import train as tr
from trainer.loop import StepKnobs
from trainer.schedule import LrSchedule

ARCH = "tiny_arch:make"  # tests/tiny_arch.py: trains in a fraction of a second on a CPU
KNOBS = dict(lr_schedule="cosine", warmup_epochs=1.0, ema=0.9, label_smoothing=0.1)
REPO = Path(__file__).resolve().parents[1]


def small(data: Path, out: Path, **kw):
    return tiny(data, out, arch=ARCH, **kw)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_data(tmp_path_factory.mktemp("data"))  # 2 classes: 8 train images (2 steps of 4), 4 val


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory) -> dict:
    """A run with no knob and one with cosine, warmup, label smoothing and EMA, straight through."""
    root = tmp_path_factory.mktemp("runs")
    tr.train(small(data, root / "plain", epochs=2))
    tr.train(small(data, root / "knobs", epochs=3, **KNOBS))
    return {"plain": root / "plain", "knobs": root / "knobs"}


def _log(run: Path) -> list[dict]:
    return [json.loads(s) for s in (run / "log.jsonl").read_text().splitlines()]


def _last(run: Path) -> dict:
    return ck.load_checkpoint(run / "checkpoints" / "last.pt")


# ------------------------------------------------------------------------------------ schedules
def test_cosine_goes_from_the_lr_to_zero_step_by_step_and_never_drops():
    s = LrSchedule("cosine", 0.1, epochs=2, steps_per_epoch=5)
    lrs = [s.lr_at(k) for k in range(1, 11)]
    assert s.per_step and lrs == pytest.approx([0.05 * (1 + math.cos(math.pi * k / 10)) for k in range(10)])
    assert lrs[0] == 0.1 and lrs[5] == pytest.approx(0.05) and 0 < lrs[-1] < 0.003  # 0 after the last step
    for epoch in range(1, 6):  # a val error that never improves: the cosine does not divide
        s.step(epoch, 0.9)
    assert s.drops == 0 and s.lr_at(1) == 0.1


def test_warmup_ramps_the_first_steps_of_any_schedule():
    w = LrSchedule("plateau", 0.1, warmup_epochs=1, steps_per_epoch=4)
    assert [w.lr_at(k) for k in range(1, 7)] == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1, 0.1])
    step = LrSchedule("step:1", 0.1, warmup_epochs=0.5, steps_per_epoch=4)  # half an epoch: 2 steps
    assert [step.lr_at(k) for k in (1, 2, 3)] == pytest.approx([0.05, 0.1, 0.1])
    step.step(1, 0.5)
    assert step.lr_at(5) == pytest.approx(0.01)  # the step schedule's drop still applies
    both = LrSchedule("cosine", 0.1, warmup_epochs=1, epochs=2, steps_per_epoch=4)
    assert both.lr_at(2) == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi / 8)) * 2 / 4)


def test_without_knobs_the_schedule_and_the_step_are_the_papers():
    p = LrSchedule("plateau", 0.01, 0.1, 3, 3, epochs=90, steps_per_epoch=10009)
    assert not p.per_step and all(p.lr_at(k) == p.lr == 0.01 for k in (1, 5000, 10 ** 6))
    cfg = tr.TrainConfig(data="DATA", out="RUN")
    state = ck.RunState(p)
    assert tr._knobs(cfg, None, state, None) == StepKnobs()  # no per-step lr, plain loss, no EMA, no limit


@pytest.mark.parametrize("bad, says", [
    (dict(ema=1.0), "ema=1.0; expected a number in [0, 1)"),
    (dict(label_smoothing=-0.1), "label_smoothing=-0.1; expected a number in [0, 1)"),
    (dict(warmup_epochs=-1.0), "warmup_epochs=-1.0; expected a number in [0"),
    (dict(max_steps=0), "max_steps=0; expected a whole number >= 1"),
    (dict(limit_batches=2.5), "limit_batches=2.5; expected a whole number >= 1"),
    (dict(lr_schedule="cosine:3"), "expected 'plateau', 'cosine' or 'step:E1,E2,...'"),
])
def test_knob_values_no_run_can_use_are_refused(bad, says):
    with pytest.raises(ImgnetError) as e:
        tr.check_config(tr.TrainConfig(data="DATA", out="RUN", **bad))
    assert says in str(e.value)


def test_cli_refuses_an_ema_decay_of_one(tmp_path):
    from cli import main

    r = CliRunner().invoke(main, ["train", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--ema", "1"])
    assert r.exit_code == 2 and "--ema" in r.output and "Traceback" not in r.output


# ------------------------------------------------------------------------------ the step loop
def _by_hand(cfg, on_step) -> torch.nn.Module:
    """The run of `cfg` as a plain loop: the trainer's loaders, model and optimizer, then for every batch
    cross-entropy, backward, SGD step; `on_step(step, model, optimizer)` before each step returns the kwargs of
    the loss, and after it (with step negated) does what else a knob does."""
    device = torch.device("cpu")
    data = tr.open_data(cfg)
    train_loader, val_loader = tr.make_loaders(cfg, data, tr.Dist(), device)
    with train_loader, val_loader:
        model, _ = tr.build_model(cfg, data["num_classes"], device, crop=data["crop"])
        opt = tr.make_optimizer(model, cfg)
        tr._seed_process(cfg.seed, 0)
        step = 0
        for epoch in range(1, cfg.epochs + 1):
            train_loader.set_epoch(epoch)
            model.train()
            for x, y in train_loader:
                step += 1
                loss = F.cross_entropy(model(x), y, **on_step(step, model, opt))
                opt.zero_grad()
                loss.backward()
                opt.step()
                on_step(-step, model, opt)
    for split in (data["train"], data["val"]):
        split.close()
    return model


def test_a_run_with_no_knob_is_the_plain_sgd_loop_bit_for_bit(data, runs):
    cfg = small(data, runs["plain"], epochs=2)
    lrs = []
    model = _by_hand(cfg, lambda step, m, opt: lrs.append(opt.param_groups[0]["lr"]) or {})
    assert set(lrs) == {0.01}
    saved = _last(runs["plain"])
    assert _weights_equal(ck.model_state(model), saved["model"])  # the recipe's weights, bit for bit
    assert "ema" not in saved and not (runs["plain"] / "checkpoints" / "ema").exists()
    assert [r["lr"] for r in _log(runs["plain"])] == [0.01, 0.01]
    assert not any(k.startswith("val_ema_") for r in _log(runs["plain"]) for k in r)


def test_cosine_warmup_smoothing_and_ema_are_their_formulas(data, runs):
    cfg = small(data, runs["knobs"], epochs=3, **KNOBS)
    total, warm = 3 * 2, 2  # 3 epochs of 2 steps; a warmup of one epoch
    ema: dict = {}

    def on_step(step, model, opt):
        if step > 0:  # before the step: its lr
            lr = 0.01 * 0.5 * (1 + math.cos(math.pi * (step - 1) / total)) * min(1.0, step / warm)
            for g in opt.param_groups:
                g["lr"] = lr
            return {"label_smoothing": 0.1}
        w = {k: v.detach().clone() for k, v in model.named_parameters()}
        for k, v in w.items():  # after it: the average (the first step's weights as they are)
            ema[k] = v if step == -1 else 0.9 * ema[k] + 0.1 * v

    model = _by_hand(cfg, on_step)
    saved = _last(runs["knobs"])
    for k, v in ck.model_state(model).items():
        torch.testing.assert_close(saved["model"][k], v, rtol=1e-5, atol=1e-8)
    assert saved["ema"]["updates"] == total and saved["ema"]["decay"] == 0.9
    for k, v in ema.items():
        torch.testing.assert_close(saved["ema"]["model"][k], v, rtol=1e-5, atol=1e-8)
    rows = _log(runs["knobs"])
    assert [r["lr"] for r in rows] == pytest.approx([0.005, 0.0075, 0.0025])  # each epoch's first step
    assert all({"val_ema_top1_err", "val_ema_top5_err", "val_ema_loss"} <= r.keys() for r in rows)


def test_ema_weights_are_a_checkpoint_of_their_own_for_test_and_predict(data, runs):
    from trainer.evaluate import run_test

    saved = _last(runs["knobs"])
    path = runs["knobs"] / "checkpoints" / "ema" / "last.pt"
    ema = ck.load_checkpoint(path)
    assert _weights_equal(ema["model"], saved["ema"]["model"]) and ema["weights"] == {"ema": 0.9, "updates": 6}
    assert "optimizer" not in ema and ema["epoch"] == 3
    r = run_test(data, path, workers=0, device="cpu", progress=False, arch=ARCH)
    assert r["top1_err"] == pytest.approx(_log(runs["knobs"])[-1]["val_ema_top1_err"])  # the logged EMA figure
    assert (path.parent / "test-last-center.json").is_file()  # its report beside it, not over the raw last.pt's
    assert not (runs["knobs"] / "checkpoints" / "test-last-center.json").exists()


# -------------------------------------------------------------------------------------- resume
def test_max_steps_stops_with_a_checkpoint_and_resume_with_knobs_is_exact(data, runs, tmp_path, capsys):
    run = tmp_path / "split"
    s = tr.train(small(data, run, epochs=3, max_steps=2, **KNOBS))  # at the end of epoch 1
    assert s["epochs"] == 1 and _last(run)["step"] == 2 and len(_log(run)) == 1
    assert "stopped at step 2 (--max-steps 2)" in capsys.readouterr().err
    tr.train(small(data, run, epochs=3, max_steps=3, resume=True, **KNOBS))  # inside epoch 2
    mid = _last(run)
    assert mid["interrupted"]["batch"] == 1 and mid["step"] == 3 and mid["ema"]["updates"] == 3
    tr.train(small(data, run, epochs=3, resume=True, **KNOBS))  # and on to the end

    a, b = _last(runs["knobs"]), _last(run)
    assert a["step"] == b["step"] == 6 and b["interrupted"] is None
    assert _weights_equal(a["model"], b["model"]) and _optimizer_equal(a["optimizer"], b["optimizer"])
    assert _weights_equal(a["ema"]["model"], b["ema"]["model"]) and a["ema"]["updates"] == b["ema"]["updates"]
    keys = ("epoch", "lr", "next_lr", "step", "train_loss", "val_top1_err", "val_loss", "val_ema_loss")
    assert [[r[k] for k in keys] for r in _log(runs["knobs"])] == [[r[k] for k in keys] for r in _log(run)]
    records = json.loads((run / "config.json").read_text())
    assert records["max_steps"] == 2 and [r["max_steps"] for r in records["resumes"]] == [3, None]


def test_a_run_with_knobs_refuses_a_resume_without_them(data, runs, tmp_path):
    run = tmp_path / "r"
    tr.train(small(data, run, epochs=2, max_steps=1, **KNOBS))
    with pytest.raises(ImgnetError, match=r"--resume with other settings .*ema 0.9 -> 0.0"):
        tr.train(small(data, run, epochs=2, resume=True, **{**KNOBS, "ema": 0.0}))


def test_a_checkpoint_from_before_the_knobs_resumes(data, runs, tmp_path):
    import shutil

    run = tmp_path / "old"
    shutil.copytree(runs["plain"], run)
    last = run / "checkpoints" / "last.pt"
    old = torch.load(last, weights_only=True)
    for k in ("warmup_epochs", "label_smoothing", "ema", "limit_batches", "max_steps", "tensorboard"):
        del old["config"][k]
    ck.save_checkpoint(last, old)
    assert tr.train(small(data, run, epochs=3, resume=True))["epochs"] == 3


@pytest.mark.slow
def test_kill_9_and_resume_with_knobs_ends_where_the_straight_run_does(data, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests")]))
    opts = ["-m", "cli", "train", "--data", str(data), "--epochs", "8", "--batch-size", "4", "--workers", "0",
            "--device", "cpu", "--arch", ARCH, "--lr-schedule", "cosine", "--warmup-epochs", "1.5",
            "--ema", "0.9", "--label-smoothing", "0.1"]

    def cli(*extra, out):
        return subprocess.Popen([sys.executable, *opts, *extra, "--out", str(out)], env=env, cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    assert cli(out=tmp_path / "straight").wait(timeout=600) == 0
    killed = cli(out=tmp_path / "killed")
    log = tmp_path / "killed" / "log.jsonl"
    deadline = time.monotonic() + 600
    while not (log.is_file() and log.read_text().count("\n") >= 2) and killed.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait(timeout=60) == -signal.SIGKILL and len(_log(tmp_path / "killed")) < 8
    resumed = cli("--resume", out=tmp_path / "killed")
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()[-2000:]
    b_run = tmp_path / "killed"
    a, b = _last(tmp_path / "straight"), _last(b_run)
    assert a["step"] == b["step"] == 16
    assert _weights_equal(a["model"], b["model"]) and _weights_equal(a["ema"]["model"], b["ema"]["model"])
    assert [r["train_loss"] for r in _log(tmp_path / "straight")] == [r["train_loss"] for r in _log(b_run)]


# ------------------------------------------------------------------------------- smoke runs, logs
def test_limit_batches_caps_train_and_validation_and_is_a_setting_of_the_run(data, tmp_path):
    run = tmp_path / "r"
    tr.train(small(data, run, epochs=2, batch_size=2, limit_batches=1))  # 4 train and 2 val batches uncapped
    rows = _log(run)
    assert [(r["step"], r["n_train"], r["n_val"]) for r in rows] == [(1, 2, 2), (2, 2, 2)]
    with pytest.raises(ImgnetError, match="limit_batches 1 -> None"):
        tr.train(small(data, run, epochs=3, batch_size=2, resume=True))


def test_knobs_are_in_the_launch_record_and_compare_shows_the_defining_ones(runs):
    from trainer.compare import compare_runs, format_table

    record = json.loads((runs["knobs"] / "config.json").read_text())
    assert {k: record[k] for k in KNOBS} == KNOBS
    assert record["max_steps"] is None and record["limit_batches"] is None and record["tensorboard"] is False
    result = compare_runs([runs["plain"], runs["knobs"]])
    differs = result["runs"][1]["differs"]
    assert {k: differs[k] for k in KNOBS} == KNOBS
    assert not {"max_steps", "tensorboard"} & differs.keys()  # where and how long, not what is learned
    assert "cosine" in format_table(result)


def test_tensorboard_refuses_to_start_where_the_package_is_missing(data, tmp_path, monkeypatch):
    from cli import main

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # what an absent package looks like
    with pytest.raises(ImgnetError, match=r"pip install 'imgnet\[tensorboard\]'"):
        tr.train(small(data, tmp_path / "r", tensorboard=True))
    assert not (tmp_path / "r").exists()  # refused before anything was written
    r = CliRunner().invoke(main, ["train", "--data", str(data), "--out", str(tmp_path / "r"), "--tensorboard"])
    assert r.exit_code == 2 and "--tensorboard needs the tensorboard package" in r.output
    assert "Traceback" not in r.output


def test_tensorboard_writes_each_log_line_beside_log_jsonl(data, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "r"
    tr.train(small(data, run, epochs=2, lr_schedule="cosine", tensorboard=True))
    assert list(run.glob("events.out.tfevents.*"))
    events = EventAccumulator(str(run))
    events.Reload()
    rows = _log(run)
    for key in ("train_loss", "val_top1_err", "lr"):
        got = [(e.step, e.value) for e in events.Scalars(key)]
        assert got == [(r["epoch"], pytest.approx(r[key], rel=1e-6)) for r in rows]
    cosine = LrSchedule("cosine", 0.01, epochs=2, steps_per_epoch=2)
    lrs = [(e.step, e.value) for e in events.Scalars("step/lr")]  # every step on the CPU
    assert lrs == [(k, pytest.approx(cosine.lr_at(k), rel=1e-6)) for k in (1, 2, 3, 4)]
    losses = [e.value for e in events.Scalars("step/train_loss")]
    assert [(a + b) / 2 for a, b in (losses[:2], losses[2:])] == pytest.approx([r["train_loss"] for r in rows])


# ------------------------------------------------------------------------------------- predict
def test_predict_topk_lists_k_classes(runs, tmp_path):
    from PIL import Image

    from cli import main
    from trainer.evaluate import predict

    img = tmp_path / "a.png"
    Image.fromarray(np.full((40, 60, 3), 128, np.uint8)).save(img)
    best = runs["plain"] / "checkpoints" / "best.pt"
    for k, n in (("1", 1), ("9", 2)):  # at most the checkpoint's 2 classes
        r = CliRunner().invoke(main, ["predict", "--ckpt", str(best), "--arch", ARCH, "--device", "cpu",
                                      "--topk", k, "--json", str(img)])
        assert r.exit_code == 0, r.output
        (res,) = json.loads(r.output)
        assert [t["rank"] for t in res["top"]] == list(range(1, n + 1))
    assert len(predict(best, [img], device="cpu", arch=ARCH)[0]["top"]) == 2  # the default, top-5, capped
    r = CliRunner().invoke(main, ["predict", "--ckpt", str(best), "--topk", "0", str(img)])
    assert r.exit_code == 2 and "--topk" in r.output
    with pytest.raises(ImgnetError, match="topk=0; expected a whole number"):
        predict(best, [img], device="cpu", arch=ARCH, topk=0)
