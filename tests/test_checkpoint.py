import os
import pickle
import random

import numpy as np
import pytest
import torch

from imagenet_prep.errors import ImgnetError
from trainer import checkpoint as ck


def small_ckpt(**extra) -> dict:
    return {"format": ck.FORMAT, "version": ck.VERSION, "model": {"w": torch.arange(6.0).view(2, 3)},
            "model_kwargs": {"num_classes": 2}, "labels": {"classes": [{"wnid": "a"}, {"wnid": "b"}]},
            "stats": {"eigval": [0.2, 0.02, 0.005], "mean_image": torch.zeros(256, 256, 3)},
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.01, "params": [0]}]}, "epoch": 3,
            "config": {"lr": 0.01, "resume": False, "workers": None}, "rng": [ck.rng_state()],
            "metrics": {"epoch": 3, "val_top1_err": 0.5}, **extra}


def test_round_trip_loads_with_weights_only(tmp_path):
    path = ck.save_checkpoint(tmp_path / "c" / "last.pt", small_ckpt())
    plain = torch.load(path, weights_only=True)  # what any consumer may do, not only load_checkpoint
    assert torch.equal(plain["model"]["w"], torch.arange(6.0).view(2, 3))
    back = ck.load_checkpoint(path)
    assert back["epoch"] == 3 and back["config"]["workers"] is None
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary file left behind


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), RuntimeError(
    "[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0\nPytorchStreamWriter failed writing file "
    "data/0: file write failed")])
def test_failed_save_keeps_the_previous_file_and_says_so_in_one_line(tmp_path, monkeypatch, error):
    path = ck.save_checkpoint(tmp_path / "last.pt", small_ckpt(epoch=1))

    def dies_half_way(obj, f, *a, **k):  # a full disk: as the OS says it, and as torch's zip writer does
        f.write(b"PK\x03\x04 half a zip")
        raise error

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(ImgnetError, match=r"cannot write the checkpoint .*last\.pt .*the previous last\.pt is "
                                          r"intact.*--resume") as e:
        ck.save_checkpoint(path, small_ckpt(epoch=2))
    assert "\n" not in str(e.value) and ("No space left" in str(e.value) or "file write failed" in str(e.value))
    monkeypatch.undo()
    assert ck.load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


@pytest.mark.parametrize("damage", ["missing", "truncated", "garbage", "not-a-checkpoint", "pickled-code", "future"])
def test_refuses_bad_files_with_the_reason(tmp_path, damage):
    path = tmp_path / "last.pt"
    if damage != "missing":
        ck.save_checkpoint(path, small_ckpt())
    if damage == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00\x01 this is not a torch file" * 10)
    elif damage == "not-a-checkpoint":
        torch.save({"state_dict": {"w": torch.zeros(1)}}, path)
    elif damage == "pickled-code":  # an arbitrary object: weights_only=True must refuse to build it
        torch.save({"format": ck.FORMAT, "version": 1, "x": pickle.PickleError("boom")}, path)
    elif damage == "future":
        ck.save_checkpoint(path, small_ckpt(version=ck.VERSION + 1))
    expected = {"missing": "not found", "truncated": "corrupt", "garbage": "corrupt",
                "not-a-checkpoint": "not an imgnet checkpoint", "pickled-code": "weights_only",
                "future": "version"}[damage]
    with pytest.raises(ImgnetError, match=expected) as e:
        ck.load_checkpoint(path)
    assert str(path) in str(e.value)


def test_model_state_strips_wrapper_prefixes():
    net = torch.nn.Sequential(torch.nn.Linear(3, 2))

    class Wrapper(torch.nn.Module):  # stands for DistributedDataParallel (attribute `module`)
        def __init__(self, m):
            super().__init__()
            self.module = m

    wrapped = Wrapper(torch.compile(net))
    assert any(k.startswith("module._orig_mod.") for k in wrapped.state_dict())
    state = ck.model_state(wrapped)
    assert list(state) == ["0.weight", "0.bias"]
    assert ck.unwrap(wrapped) is net


def test_rng_state_round_trip(tmp_path):
    path = ck.save_checkpoint(tmp_path / "r.pt", small_ckpt(rng=[ck.rng_state()]))
    first = (torch.rand(3), np.random.rand(3), random.random())
    torch.rand(5), np.random.rand(5), random.random()  # move every stream on
    ck.set_rng_state(ck.load_checkpoint(path)["rng"][0])
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]


def test_model_from_checkpoint_rebuilds_the_network(tmp_path):
    from trainer.model import AlexNet

    kw = {"num_classes": 3, "towers": 1, "dropout": 0.5}
    torch.manual_seed(0)
    net = AlexNet(**kw).eval()
    path = ck.save_checkpoint(tmp_path / "m.pt", small_ckpt(model=ck.model_state(net), model_kwargs=kw))
    rebuilt = ck.model_from_checkpoint(ck.load_checkpoint(path))
    assert not rebuilt.training
    x = torch.randn(2, 3, 224, 224) * 50
    with torch.no_grad():
        assert torch.equal(net(x), rebuilt(x))
    with pytest.raises(ImgnetError, match="do not fit"):
        ck.model_from_checkpoint(dict(ck.load_checkpoint(path), model_kwargs={**kw, "num_classes": 4}))


# ------------------------------------------------------------------------------ hostile runs
def test_a_killed_save_leaves_a_temp_file_that_the_next_save_removes(tmp_path):
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()  # a pid that no longer runs: the writer killed mid-save
    stale = tmp_path / f".last.pt.tmp{p.pid}"
    stale.write_bytes(b"PK\x03\x04 half of a large checkpoint")
    live = tmp_path / f".best.pt.tmp{os.getppid()}"  # a writer that still runs keeps its file
    live.write_bytes(b"in progress")
    ck.save_checkpoint(tmp_path / "last.pt", small_ckpt())
    assert not stale.exists() and live.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["last.pt", live.name])


def test_truncated_checkpoint_message_is_whole_and_says_what_to_do(tmp_path):
    path = ck.save_checkpoint(tmp_path / "last.pt", small_ckpt())
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ImgnetError) as e:
        ck.load_checkpoint(path)
    msg = str(e.value)
    assert "truncated" in msg and str(tmp_path / "best.pt") in msg and "new --out" in msg
    assert msg.count("(") == msg.count(")")  # nothing cut in the middle


def test_repair_best_rewrites_a_missing_or_stale_best(tmp_path):
    last = ck.save_checkpoint(tmp_path / "last.pt", small_ckpt(epoch=2, best_epoch=2))
    assert "missing" in ck.repair_best(tmp_path, ck.load_checkpoint(last))  # crash before the link
    best = ck.load_checkpoint(tmp_path / "best.pt")  # the lean form: weights and record, no optimizer
    assert best["epoch"] == 2 and best["lean"] and "optimizer" not in best and "rng" not in best
    assert ck.repair_best(tmp_path, ck.load_checkpoint(last)) is None  # nothing more to do
    ck.save_checkpoint(tmp_path / "best.pt", small_ckpt(epoch=1, best_epoch=1))  # an older best
    assert "stale" in ck.repair_best(tmp_path, ck.load_checkpoint(last))
    assert ck.load_checkpoint(tmp_path / "best.pt")["epoch"] == 2
    (tmp_path / "best.pt").unlink()
    older = ck.save_checkpoint(tmp_path / "last.pt", small_ckpt(epoch=3, best_epoch=2))
    assert "cannot be rebuilt" in ck.repair_best(tmp_path, ck.load_checkpoint(older))


def test_restore_reads_a_version_1_checkpoint(tmp_path):
    from trainer.schedule import LrSchedule

    v1 = small_ckpt(version=1, scheduler=LrSchedule("plateau", 0.01).state_dict(), best_val_top1_err=0.4,
                    best_epoch=2, interrupted=None, scaler=None)
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    v1["optimizer"] = opt.state_dict()
    path = ck.save_checkpoint(tmp_path / "last.pt", v1)
    loaded = ck.load_checkpoint(path)
    assert "arch" not in loaded and "step" not in loaded
    state = ck.RunState(LrSchedule("plateau", 0.01))
    note = ck.restore(loaded, state, optimizer=opt, scaler=torch.amp.GradScaler("cuda", enabled=False), rank=0,
                      world=1, steps_per_epoch=5)
    assert note is None and (state.epoch, state.step, state.best_epoch) == (3, 15, 2)  # step: 3 epochs of 5
    assert ck.saved_config(loaded)["arch"] == "alexnet" and ck.saved_config(loaded)["bias_decay"] is True


@pytest.mark.parametrize("kind", ["folder", "fifo", "device"])
def test_a_checkpoint_path_that_is_not_a_file_is_named(tmp_path, kind):
    """test/predict on /dev/null, --resume over a last.pt that became a folder or FIFO: one line, no block."""
    from trainer import runfolder

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    last = run / "checkpoints" / "last.pt"
    if kind == "folder":
        last.mkdir()
    elif kind == "fifo":
        os.mkfifo(last)
    else:
        last.symlink_to("/dev/null")
    with pytest.raises(ImgnetError, match="is not a regular file"):
        ck.load_checkpoint(last)
    with pytest.raises(ImgnetError, match=r"--resume: .*last\.pt is not a file.*another --out"):
        runfolder.prepare(run, True, {}, set())
