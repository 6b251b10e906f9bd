import json
from dataclasses import asdict

import pytest
from click.testing import CliRunner

from cli import main
from imagenet_prep.errors import ImgnetError
from trainer.compare import compare_runs, format_table, plot_compare, read_run, run_settings
from trainer.train import TrainConfig


def settings(**kw):
    return asdict(TrainConfig(data="/data/imagenet", out="runs/x", **kw))


def env(device="cuda:0"):
    return {"imgnet": "0.1.0", "torch": "2.13.0", "device": device, "hostname": "gpu1", "argv": ["imgnet", "train"]}


def write_run(path, config, log=(), tests=None):
    (path / "checkpoints").mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config))
    (path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    for name, report in (tests or {}).items():
        (path / "checkpoints" / name).write_text(json.dumps(report))
    return path


def epoch(e, top1, top5, ips=1000.0):
    return {"epoch": e, "lr": 0.01, "train_loss": 2.0, "train_top1_err": 0.5, "val_top1_err": top1,
            "val_top5_err": top5, "images_per_s": ips, "seconds": 100.0}


@pytest.fixture
def runs(tmp_path):
    """base: flat config.json (today's format), three epochs, val and V2 tests with ReaL;
    nolrn: launch record + a resume record (as `imgnet train --resume` writes them), another device, workers and
    paths; no ten-crop test;
    pool: not started yet (no epochs, no tests)."""
    base = write_run(tmp_path / "base", {**settings(), "model_kwargs": {"num_classes": 1000, "lrn": "paper"},
                                         "parameters": 60965224, "val_source": "val", "environment": env()},
                     [epoch(1, 0.60, 0.35, 900), epoch(2, 0.45, 0.22, 1000), epoch(3, 0.46, 0.21, 1100)],
                     {"test-center.json": {"split": "val", "view": "center", "n": 50000, "top1_err": 0.44,
                                           "top5_err": 0.21, "real_n": 46837, "real_top1_err": 0.38,
                                           "real_top5_err": 0.15, "loss": 1.9, "mistake_severity": 2.1},
                      "test-ten-crop.json": {"split": "val", "view": "ten-crop", "n": 50000, "top1_err": 0.42,
                                             "top5_err": 0.195},
                      "test-v2-matched-frequency-center.json": {"split": "v2-matched-frequency", "view": "center",
                                                                "n": 10000, "top1_err": 0.55, "top5_err": 0.30}})
    launch = {**settings(lrn="none", workers=12, device="cuda"), "data": "/other/data", "out": "runs/nolrn",
              "model_kwargs": {"num_classes": 1000, "lrn": "none"}, "environment": env("cuda:1")}
    resume = {**launch, "epochs": 120, "resume": True, "environment": env("cuda:3")}
    nolrn = write_run(tmp_path / "nolrn", {**launch, "resumes": [resume]},
                      [epoch(1, 0.62, 0.37, 1200), epoch(2, 0.464, 0.232, 1300)],
                      {"test-center.json": {"split": "val", "view": "center", "n": 50000, "top1_err": 0.454,
                                            "top5_err": 0.222, "real_n": 46837, "real_top1_err": 0.39,
                                            "real_top5_err": 0.16}})
    pool = write_run(tmp_path / "pool", {**settings(pool="nonoverlap"), "model_kwargs": {"num_classes": 1000},
                                         "environment": env()})
    return base, nolrn, pool


def test_settings_ignore_paths_versions_device_and_workers(runs):
    base, nolrn, _ = runs
    r = compare_runs([base, nolrn])
    assert r["runs"][0]["differs"] == {}
    assert r["runs"][1]["differs"] == {"lrn": "none"}  # the launch record's, not the resume's epochs=120
    s = r["runs"][1]["settings"]
    assert s["num_classes"] == 1000 and "data" not in s and "device" not in s and "environment" not in s


def test_launch_record_with_resumes():
    flat = settings(lrn="caffe")
    with_resumes = run_settings({**flat, "resumes": [{**flat, "epochs": 120, "device": "cuda:1"}], "log": [{}]})
    assert with_resumes == run_settings(flat) and "lr_schedule" in with_resumes


def test_best_val_tests_deltas_epochs_and_speed(runs):
    base, nolrn, pool = runs
    r = compare_runs([base, nolrn, pool])
    b, n, p = r["runs"]
    assert (b["best_epoch"], b["epochs"], b["images_per_s"]) == (2, 3, 1000)  # top-5 of the best top-1 epoch
    assert b["figures"]["best_val_top1_err"] == 0.45 and b["figures"]["best_val_top5_err"] == 0.22
    assert b["figures"]["val/ten-crop/top1_err"] == 0.42 and b["figures"]["val/center/real_top1_err"] == 0.38
    assert b["figures"]["v2-matched-frequency/center/top5_err"] == 0.30
    assert n["delta"]["best_val_top1_err"] == pytest.approx(0.014)  # the paper's LRN figure, section 3.3
    assert n["delta"]["best_val_top5_err"] == pytest.approx(0.012)
    assert n["delta"]["val/center/real_top1_err"] == pytest.approx(0.01)
    assert "val/ten-crop/top1_err" not in n["figures"]
    assert p["epochs"] == 0 and p["best_epoch"] is None and p["images_per_s"] is None
    assert p["differs"] == {"pool": "nonoverlap"} and p["delta"]["best_val_top1_err"] is None
    assert r["figures"] == ["best_val_top1_err", "best_val_top5_err", "val/center/top1_err", "val/center/top5_err",
                            "val/center/real_top1_err", "val/center/real_top5_err", "val/ten-crop/top1_err",
                            "val/ten-crop/top5_err", "v2-matched-frequency/center/top1_err",
                            "v2-matched-frequency/center/top5_err"]


def test_text_and_markdown_tables(runs):
    r = compare_runs(runs)
    text = format_table(r)
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["run", "settings", "epochs", "val"]
    assert "test ten-crop top-1" in lines[0] and "test center ReaL top-1" in lines[0]
    row = next(line for line in lines if "lrn=none" in line)
    assert "46.40 (+1.40)" in row and "23.20 (+1.20)" in row and row.rstrip().endswith("1250")
    assert "(baseline)" in text and "pool=nonoverlap" in text
    md = format_table(r, markdown=True).splitlines()
    assert md[0].startswith("| run | settings | epochs | val top-1 | val top-5 |")
    assert md[1].startswith("|---|---|---:|") and len(md[2].split("|")) == len(md[0].split("|"))


def test_nested_label_set_figures(tmp_path):
    run = write_run(tmp_path / "r", settings(), [epoch(1, 0.5, 0.3)],
                    {"test-center.json": {"split": "val", "view": "center",
                                          "original": {"top1_err": 0.4, "top5_err": 0.2, "n": 10},
                                          "real": {"top1_err": 0.3, "top5_err": 0.1, "n": 9}}})
    f = read_run(run)["figures"]
    assert f["val/center/top1_err"] == 0.4 and f["val/center/real_top1_err"] == 0.3 and f["val/center/real_n"] == 9


def test_plot_overlays_the_val_curves(runs, tmp_path):
    from PIL import Image

    out = plot_compare(compare_runs(runs), tmp_path / "curves.png")
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size == (800, 500)


def test_cli_text_json_markdown_and_plot(runs, tmp_path):
    base, nolrn, pool = map(str, runs)
    cli = CliRunner()
    res = cli.invoke(main, ["compare", base, nolrn, pool])
    assert res.exit_code == 0, res.output
    assert "lrn=none" in res.output and "(+1.40)" in res.output
    res = cli.invoke(main, ["compare", base, nolrn, "--json", "--plot", str(tmp_path / "c.png")])
    assert res.exit_code == 0
    d = json.loads(res.stdout)
    assert d["runs"][1]["differs"] == {"lrn": "none"} and (tmp_path / "c.png").is_file()
    res = cli.invoke(main, ["compare", base, "--markdown"])
    assert res.exit_code == 0 and res.output.startswith("| run |")
    res = cli.invoke(main, ["compare", base, "--markdown", "--json"])
    assert res.exit_code == 2 and "exclude each other" in res.output


def test_bad_run_folders(tmp_path, runs):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImgnetError, match="config.json not found"):
        read_run(tmp_path / "empty")
    (tmp_path / "empty" / "config.json").write_text("{not json")
    with pytest.raises(ImgnetError, match="not readable JSON"):
        read_run(tmp_path / "empty")
    res = CliRunner().invoke(main, ["compare", str(runs[0]), str(tmp_path / "empty")])
    assert res.exit_code == 2 and res.output.count("\n") == 1 and res.output.startswith("error: ")
    with pytest.raises(ImgnetError, match="no runs"):
        compare_runs([])


def test_a_report_without_the_blacklist_gets_its_own_columns(tmp_path):
    cfg = {**settings(), "model_kwargs": {"num_classes": 1000}, "environment": env()}
    full = {"split": "val", "view": "center", "n": 50000, "top1_err": 0.44, "top5_err": 0.21, "exclude_blacklist": False}
    base = write_run(tmp_path / "base", cfg, [epoch(1, 0.5, 0.3)], {"test-center.json": full})
    excl = {**full, "n": 48238, "top1_err": 0.43, "exclude_blacklist": True, "excluded": 1762}
    other = write_run(tmp_path / "other", cfg, [epoch(1, 0.5, 0.3)], {"test-center.json": excl})
    r = compare_runs([base, other])
    assert "val/center/top1_err" in r["runs"][0]["figures"] and "val/center/top1_err" not in r["runs"][1]["figures"]
    assert r["runs"][1]["figures"]["val-no-blacklist/center/top1_err"] == 0.43
    assert "val-no-blacklist center top-1" in format_table(r)
