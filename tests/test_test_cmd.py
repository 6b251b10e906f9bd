"""`imgnet test` beyond the 2012 labels: ReaL figures end to end, the blacklist, center and ten-crop from one
pass, per-split report names and the printed table. Small models (tests/oracle_arch.py, whose predictions
are written into the images, and tests/tiny_arch.py) keep every test fast on a CPU."""

import json
from importlib import resources

import numpy as np
import pytest
import torch

from imagenet_prep.errors import ImgnetError
from imagenet_prep.labels import build_label_map, load_class_meta
from imagenet_prep.store import write_split
from oracle_arch import ranking, write_class
from trainer import checkpoint as ck
from trainer.data import InputTransform
from trainer.evaluate import REAL_FIGURES, center_view, evaluate, parse_views, report_name, run_test

# val numbers: 36, 50 and 56 are on the 2015 blacklist; the first 40 hold single-label, multi-label and
# empty ReaL lists (checked in real_cases)
NUMBERS = (*range(1, 41), 50, 56)
BLACKLISTED = (36, 50, 56)
FIGURES = ("n", "top1_err", "top5_err", "loss", *REAL_FIGURES)


def val(n: int) -> str:
    return f"ILSVRC2012_val_{n:08d}.JPEG"


def package_file(name: str) -> str:
    return resources.files("imagenet_prep").joinpath("data", name).read_text()


def wnid_labels(labels_json: dict, n: int) -> int:
    """The devkit label of val image n as an index of `labels_json` (through its wnid)."""
    ids = package_file("ILSVRC2012_validation_ground_truth.txt").split()
    wnid = load_class_meta().wnid_of_id[int(ids[n - 1])]
    return next(c["index"] for c in labels_json["classes"] if c["wnid"] == wnid)


def real_reference(labels_json: dict, n: int) -> set[int]:
    """ReaL classes of val image n as indices of `labels_json`, read straight from the shipped real.json."""
    lists = json.loads(package_file("real.json"))
    wnids = sorted(c["wnid"] for c in load_class_meta().classes)
    index = {c["wnid"]: c["index"] for c in labels_json["classes"]}
    return {index[wnids[i]] for i in lists[n - 1]}


def zero_stats() -> dict:
    """Statistics with a zero mean image: the network input is the stored pixels themselves."""
    return {"mean_rgb": [0.0, 0.0, 0.0], "std_rgb": [0.25] * 3, "cov": np.diag([0.06] * 3).tolist(),
            "eigval": [0.2175, 0.0188, 0.0045],
            "eigvec": [[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]],
            "n_pixels": 65536, "n_images": 1, "mean_image": torch.zeros(256, 256, 3)}


def save_ckpt(path, arch: str, labels: dict, stats: dict | None = None):
    from trainer.arch import build

    torch.manual_seed(0)
    net, kw = build(arch, {"num_classes": len(labels["classes"])}, init="module")
    return ck.save_checkpoint(path, {"format": ck.FORMAT, "version": ck.VERSION, "arch": arch,
                                     "model": ck.model_state(net), "model_kwargs": kw, "optimizer": {},
                                     "epoch": 7, "config": {"mean": "image"}, "labels": labels,
                                     "stats": stats or zero_stats(), "rng": [], "metrics": {}})


def choose(labels: dict, n: int, j: int) -> int:
    """The class the oracle is shown for val image n (the j-th record): right on the 2012 labels, right on
    ReaL only, top-5 right only, or wrong, in turn."""
    y, real = wnid_labels(labels, n), sorted(real_reference(labels, n))
    other_real = [c for c in real if c != y]
    picks = (y, other_real[0] if other_real else y, y + 1 if y < 990 else y - 1, (y + 500) % 1000)
    return picks[j % 4]


@pytest.fixture(scope="module")
def oracle_data(tmp_path_factory):
    """DATA in devkit label order (index = ILSVRC2012_ID - 1, so ReaL's sorted-wnid indices must be mapped)
    whose val records are ILSVRC2012_val_%08d.JPEG images with their devkit labels, each showing the oracle
    the class `choose` picks; a checkpoint of oracle_arch:make beside a run folder."""
    root = tmp_path_factory.mktemp("oracle")
    wnids = [c["wnid"] for c in load_class_meta().classes]
    labels = build_label_map(wnids, order="devkit").to_json()
    shown = {n: choose(labels, n, j) for j, n in enumerate(NUMBERS)}
    y = {n: wnid_labels(labels, n) for n in NUMBERS}
    write_split(root / "data", "val", [(write_class(shown[n]), y[n], val(n)) for n in NUMBERS], labels_json=labels)
    ckpt = save_ckpt(root / "run" / "checkpoints" / "best.pt", "oracle_arch:make", labels)
    return {"root": root, "data": root / "data", "labels": labels, "shown": shown, "y": y, "ckpt": ckpt}


def expected(w: dict, numbers) -> dict:
    """The figures by hand: plain loops over the oracle's rankings, the devkit labels and real.json."""
    top1 = top5 = real_n = real1 = real5 = 0
    for n in numbers:
        top = ranking(w["shown"][n], 1000)[:5]
        real = real_reference(w["labels"], n)
        top1 += top[0] != w["y"][n]
        top5 += w["y"][n] not in top
        if real:
            real_n += 1
            real1 += top[0] not in real
            real5 += not real & set(top)
    k = len(numbers)
    return {"n": k, "top1_err": top1 / k, "top5_err": top5 / k, "real_n": real_n, "real_top1_err": real1 / real_n,
            "real_top5_err": real5 / real_n}


def cli(*args):
    from click.testing import CliRunner

    from cli import main

    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_real_cases_hold_what_the_tests_need(oracle_data):
    w = oracle_data
    sizes = [len(real_reference(w["labels"], n)) for n in NUMBERS]
    assert 0 in sizes and max(sizes) >= 2  # empty lists and multi-label lists
    # the devkit order really differs from ReaL's sorted-wnid order, so an unmapped index would be caught
    assert any(real_reference(w["labels"], n) != set(json.loads(package_file("real.json"))[n - 1]) for n in NUMBERS)
    e = expected(w, NUMBERS)
    assert 0 < e["real_top1_err"] < e["top1_err"] < 1 and 0 < e["top5_err"] < e["top1_err"]


# ----------------------------------------------------------------------------------------- ReaL
def test_real_figures_end_to_end_next_to_the_original(oracle_data):
    w = oracle_data
    r = run_test(w["data"], w["ckpt"], workers=0, device="cpu", batch_size=5, progress=False, arch="oracle_arch:make")
    want = expected(w, NUMBERS)
    assert {k: r[k] for k in want} == pytest.approx(want)
    assert r["real_n"] == want["real_n"] < len(NUMBERS) and r["n"] == len(NUMBERS)
    assert r["real"] is True and r["real_reason"] is None and r["exclude_blacklist"] is False and r["excluded"] == 0
    saved = json.loads((w["ckpt"].parent / "test-best-center.json").read_text())
    assert {k: saved[k] for k in want} == pytest.approx(want) and saved["split"] == "val"


def test_a_subset_of_the_val_images_gets_real_over_the_images_present(oracle_data, tmp_path):
    w = oracle_data
    some = NUMBERS[3:17:2]  # as --per-class or rejected files leave it: some val images, any numbers
    write_split(tmp_path, "val", [(write_class(w["shown"][n]), w["y"][n], val(n)) for n in some],
                labels_json=w["labels"])
    r = run_test(tmp_path, w["ckpt"], workers=0, device="cpu", batch_size=4, progress=False, arch="oracle_arch:make",
                 report_dir=tmp_path / "reports")  # beside the checkpoint lies the report of the whole val
    want = expected(w, some)
    assert {k: r[k] for k in want} == pytest.approx(want)


def test_real_is_absent_with_its_reason_on_a_classes_subset_or_another_dataset(tmp_path):
    labels = build_label_map([c["wnid"] for c in load_class_meta().classes], classes=10).to_json()
    ckpt = save_ckpt(tmp_path / "run" / "best.pt", "tiny_arch:make", labels)
    write_split(tmp_path / "data", "val", [(write_class(i), i, val(i + 1)) for i in range(6)], labels_json=labels)
    write_split(tmp_path / "data", "v2-top-images", [(write_class(i), i, f"{i}/{i:x}a.jpeg") for i in range(6)],
                labels_json=labels)
    r = run_test(tmp_path / "data", ckpt, workers=0, device="cpu", progress=False, arch="tiny_arch:make")
    assert not any(k in r for k in REAL_FIGURES) and r["real"] is False
    assert "10 classes" in r["real_reason"] and "--classes subset" in r["real_reason"]
    out = cli("test", "--data", tmp_path / "data", "--ckpt", ckpt, "--device", "cpu", "--arch", "tiny_arch:make",
              "--split", "v2-top-images")
    assert out.exit_code == 0, out.output
    assert "ReaL: not computed: the label map has 10 classes" in out.stdout and "ReaL " not in out.stdout
    line = json.loads(out.stdout.splitlines()[-1])
    assert "real_top1_err" not in line and "10 classes" in line["real_reason"]
    # the blacklist numbers val images: a split of other images is refused in one line, before any work
    before = (ckpt.parent / "test-best-v2-top-images-center.json").read_text()
    out = cli("test", "--data", tmp_path / "data", "--ckpt", ckpt, "--device", "cpu", "--arch", "tiny_arch:make",
              "--split", "v2-top-images", "--exclude-blacklist")
    assert out.exit_code == 2 and len(out.stderr.strip().splitlines()) == 1
    assert "'0/0a.jpeg' is not an ILSVRC2012 val image" in out.stderr and "--exclude-blacklist" in out.stderr
    assert (ckpt.parent / "test-best-v2-top-images-center.json").read_text() == before


# ------------------------------------------------------------------------------------ blacklist
def test_exclude_blacklist_leaves_its_images_out_of_every_figure(oracle_data):
    w = oracle_data
    kw = dict(workers=0, device="cpu", batch_size=6, progress=False, arch="oracle_arch:make")
    full = run_test(w["data"], w["ckpt"], **kw)
    r = run_test(w["data"], w["ckpt"], exclude_blacklist=True, **kw)
    kept = [n for n in NUMBERS if n not in BLACKLISTED]
    want = expected(w, kept)
    assert {k: r[k] for k in want} == pytest.approx(want)
    assert r["n"] == len(NUMBERS) - 3 and r["excluded"] == 3 and r["exclude_blacklist"] is True
    assert r["real_n"] == want["real_n"]
    # the effect: the three left out change the figures (they are not all scored alike)
    assert (r["top1_err"], r["real_top1_err"]) != pytest.approx((full["top1_err"], full["real_top1_err"]))
    assert sum(c["n"] for c in r["per_class"]) == r["n"] and sum(c["n"] for c in full["per_class"]) == full["n"]
    saved = json.loads((w["ckpt"].parent / "test-best-val-no-blacklist-center.json").read_text())
    assert saved["exclude_blacklist"] is True and saved["excluded"] == 3 and saved["n"] == len(kept)
    kept_full = json.loads((w["ckpt"].parent / "test-best-center.json").read_text())  # the full run's stays
    assert kept_full["n"] == full["n"] and not kept_full.get("exclude_blacklist")
    from trainer.compare import read_tests

    tests = read_tests(w["ckpt"].parent)
    assert tests["val/center"]["n"] == full["n"] and tests["val-no-blacklist/center"]["n"] == len(kept)


def test_every_image_of_the_blacklist_left_out_is_an_error(oracle_data, tmp_path):
    w = oracle_data
    write_split(tmp_path, "val", [(write_class(1), 1, val(n)) for n in BLACKLISTED], labels_json=w["labels"])
    with pytest.raises(ImgnetError, match="every one of the 3 images was left out"):
        run_test(tmp_path, w["ckpt"], workers=0, device="cpu", progress=False, arch="oracle_arch:make",
                 exclude_blacklist=True, report_dir=tmp_path / "reports")


# ---------------------------------------------------------------------------- one pass, two views
def test_the_center_view_of_ten_crop_is_the_center_crop():
    from trainer.data import center_crop, ten_crop

    img = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    assert center_view() == 4
    assert np.array_equal(ten_crop(img)[center_view()], center_crop(img))
    assert not np.array_equal(ten_crop(img)[9], center_crop(img))  # its mirror image is another view


@pytest.fixture(scope="module")
def random_data(tmp_path_factory):
    """ILSVRC2012 val records of random pixels (every view differs) and a random tiny_arch checkpoint."""
    root = tmp_path_factory.mktemp("random")
    labels = build_label_map([c["wnid"] for c in load_class_meta().classes], order="sorted").to_json()
    rng = np.random.default_rng(3)
    numbers = (*range(30, 45), 50, 56)  # 36, 50, 56: blacklisted
    recs = [(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8), int(rng.integers(1000)), val(n)) for n in numbers]
    write_split(root / "data", "val", recs, labels_json=labels)
    stats = zero_stats()
    stats["mean_image"] = torch.from_numpy(rng.uniform(60, 160, (256, 256, 3)).astype(np.float32))
    ckpt = save_ckpt(root / "run" / "checkpoints" / "best.pt", "tiny_arch:make", labels, stats)
    return {"data": root / "data", "ckpt": ckpt, "n": len(numbers)}


@pytest.mark.parametrize("exclude", [False, True])
def test_center_from_the_ten_crop_pass_equals_a_center_run_exactly(random_data, exclude):
    w = random_data
    # batches of 4 over 17 images: the last holds one image, where kernels for one row round differently
    kw = dict(workers=0, device="cpu", batch_size=4, progress=False, arch="tiny_arch:make", exclude_blacklist=exclude)
    both = run_test(w["data"], w["ckpt"], views="center,ten-crop", **kw)["by_view"]
    center = run_test(w["data"], w["ckpt"], views="center", **kw)
    ten = run_test(w["data"], w["ckpt"], ten_crop=True, **kw)  # --ten-crop is --views ten-crop
    for k in FIGURES:
        assert both["center"][k] == center[k], k  # bit for bit, the loss included
        assert both["ten-crop"][k] == ten[k], k
    assert both["center"]["per_class"] == center["per_class"] and both["center"]["confusions"] == center["confusions"]
    assert both["center"]["loss"] != both["ten-crop"]["loss"]  # the views do differ on these images
    assert both["center"]["pass"] == "ten-crop" and center["pass"] == "center"
    assert both["center"]["n"] == w["n"] - 3 * exclude


def test_center_of_ten_needs_a_ten_view_loader(random_data):
    from imagenet_prep import open_split
    from trainer.loader import Loader

    model = ck.model_from_checkpoint(ck.load_checkpoint(random_data["ckpt"]), arch="tiny_arch:make")
    s = open_split(random_data["data"], "val")
    try:
        with Loader(s, InputTransform(zero_stats()), batch_size=4, train=False, views="center", workers=0) as loader:
            with pytest.raises(ImgnetError, match="center_of_ten needs the ten views"):
                evaluate(model, loader, center_of_ten=True)
    finally:
        s.close()


def test_label_sets_follow_the_split_indices_of_a_sharded_loader(random_data):
    """Two processes' shares (records 0, 2, 4, ... and 1, 3, 5, ...) sum to the one-process figures: each
    batch is scored against its own records' ReaL lists and blacklist flags."""
    from imagenet_prep import open_split
    from imagenet_prep.labels import read_labels_json
    from trainer.labelsets import label_sets
    from trainer.loader import Loader

    model = ck.model_from_checkpoint(ck.load_checkpoint(random_data["ckpt"]), arch="tiny_arch:make")
    s = open_split(random_data["data"], "val")
    try:
        sets = label_sets(s.names, read_labels_json(random_data["data"]), exclude_blacklist=True)
        runs = []
        for shard in ((0, 1), (0, 2), (1, 2)):
            with Loader(s, InputTransform(zero_stats()), batch_size=3, train=False, views="center", workers=0,
                        shard=shard) as ld:
                runs.append(evaluate(model, ld, label_sets=sets, return_predictions=True))
    finally:
        s.close()
    whole, a, b = runs
    assert a["index"].tolist() == list(range(0, random_data["n"], 2)) and b["index"][0] == 1
    for k in ("top1_err", "top5_err", *REAL_FIGURES):
        assert a["sums"][k] + b["sums"][k] == whole["sums"][k], k
    assert a["n"] + b["n"] == whole["n"] == random_data["n"] - 3 and whole["real_n"] > 0


def test_label_sets_need_a_loader_of_known_order(random_data):
    from trainer.labelsets import label_sets

    labels = build_label_map([c["wnid"] for c in load_class_meta().classes]).to_json()
    sets = label_sets([val(1)], labels)
    with pytest.raises(ImgnetError, match="known order"):
        evaluate(torch.nn.Linear(3, 1000), [(torch.zeros(1, 3), torch.tensor([0]))], label_sets=sets)


# -------------------------------------------------------------------------------- names and CLI
def test_views_and_report_names():
    assert parse_views() == ("center",) and parse_views(ten_crop=True) == ("ten-crop",)
    assert parse_views("ten-crop,center") == ("center", "ten-crop") == parse_views(["center", "ten-crop"])
    assert parse_views("center, ten-crop", ten_crop=True) == ("center", "ten-crop")
    for bad, msg in (("centre", "unknown view 'centre'"), ("", "unknown view ''")):
        with pytest.raises(ImgnetError, match=msg):
            parse_views(bad)
    with pytest.raises(ImgnetError, match="--ten-crop asks for the ten-crop view"):
        parse_views("center", ten_crop=True)
    assert report_name("val", "center") == "test-best-center.json"
    assert report_name("val", "ten-crop", checkpoint="RUN/checkpoints/last.pt") == "test-last-ten-crop.json"
    assert report_name("test", "center", held_out="test") == "test-best-center.json"  # a CIFAR download's
    assert report_name("v2-matched-frequency", "center") == "test-best-v2-matched-frequency-center.json"
    assert report_name("val", "center", exclude_blacklist=True) == "test-best-val-no-blacklist-center.json"


def test_another_split_writes_its_own_reports_and_leaves_val_alone(oracle_data, tmp_path):
    w = oracle_data
    data = tmp_path / "data"
    write_split(data, "val", [(write_class(w["shown"][n]), w["y"][n], val(n)) for n in NUMBERS[:6]],
                labels_json=w["labels"])
    v2 = [(write_class(w["y"][n]), w["y"][n], f"{w['y'][n]}/{n:040x}.jpeg") for n in NUMBERS[:5]]
    write_split(data, "v2-matched-frequency", v2, labels_json=w["labels"])
    ckpt = save_ckpt(tmp_path / "run" / "checkpoints" / "best.pt", "oracle_arch:make", w["labels"])
    kw = dict(workers=0, device="cpu", progress=False, arch="oracle_arch:make")
    run_test(data, ckpt, views="center,ten-crop", **kw)
    val_reports = {v: (ckpt.parent / f"test-best-{v}.json").read_text() for v in ("center", "ten-crop")}
    r = run_test(data, ckpt, split="v2-matched-frequency", views="center,ten-crop", **kw)
    names = sorted(p.name for p in ckpt.parent.glob("test-*.json"))
    assert names == ["test-best-center.json", "test-best-ten-crop.json", "test-best-v2-matched-frequency-center.json",
                     "test-best-v2-matched-frequency-ten-crop.json"]
    assert {v: (ckpt.parent / f"test-best-{v}.json").read_text() for v in ("center", "ten-crop")} == val_reports
    v2_center = json.loads((ckpt.parent / "test-best-v2-matched-frequency-center.json").read_text())
    assert v2_center["split"] == "v2-matched-frequency" and v2_center["n"] == 5 and v2_center["top1_err"] == 0
    assert "not an ILSVRC2012 val image" in v2_center["real_reason"] and "real_n" not in v2_center
    assert r["report_path"].endswith("test-best-v2-matched-frequency-ten-crop.json")


def test_cli_prints_one_table_and_one_json_line(oracle_data, tmp_path):
    w = oracle_data
    sub = tmp_path / "sub.txt"
    out = cli("test", "--data", w["data"], "--ckpt", w["ckpt"], "--device", "cpu", "--workers", 0,
              "--arch", "oracle_arch:make", "--views", "center,ten-crop", "--exclude-blacklist",
              "--batch-size", 8, "--submission", sub)
    assert out.exit_code == 0, out.output
    lines = out.stdout.splitlines()
    want = expected(w, [n for n in NUMBERS if n not in BLACKLISTED])  # uniform images: every view alike
    at = lines.index(next(x for x in lines if x.startswith("view ")))
    rows = [x.split() for x in lines[at + 1:at + 5]]
    assert [r[:2] for r in rows] == [["center", "ILSVRC2012"], ["center", "ReaL"], ["ten-crop", "ILSVRC2012"],
                                     ["ten-crop", "ReaL"]]
    assert rows[0][2:] == [f"{want['top1_err']:.4f}", f"{want['top5_err']:.4f}", f"{want['n']:,}"]
    assert rows[1][2:] == [f"{want['real_top1_err']:.4f}", f"{want['real_top5_err']:.4f}", f"{want['real_n']:,}"]
    assert lines[at + 5] == ("blacklist: 3 images of the ILSVRC2015 val blacklist left out of every figure")
    assert "center and ten-crop from one ten-crop pass" in lines[0]
    line = json.loads(lines[-1])
    assert line["view"] == "ten-crop" and line["excluded"] == 3 and line["real_n"] == want["real_n"]
    assert set(line["by_view"]) == {"center", "ten-crop"}
    assert line["by_view"]["center"]["real_top1_err"] == pytest.approx(want["real_top1_err"])
    assert f"({len(NUMBERS)} lines, ten-crop;" in out.stdout  # the submission lists every image, from ten-crop
    assert len(sub.read_text().splitlines()) == len(NUMBERS)
    bad = cli("test", "--data", w["data"], "--ckpt", w["ckpt"], "--device", "cpu", "--views", "center", "--ten-crop")
    assert bad.exit_code == 2 and "--ten-crop asks for the ten-crop view" in bad.stderr


# ------------------------------------------------------------------------------------- training
def test_training_validation_on_the_2012_val_logs_real_as_imgnet_test_reports_it(tmp_path):
    from imagenet_prep.stats import compute_stats
    from trainer.train import TrainConfig, train

    labels = build_label_map([c["wnid"] for c in load_class_meta().classes]).to_json()
    rng = np.random.default_rng(5)
    img = lambda: rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)  # noqa: E731
    data = tmp_path / "data"
    write_split(data, "train", [(img(), int(c), f"{labels['classes'][c]['wnid']}_{j}.JPEG")
                                for j, c in enumerate(rng.integers(0, 1000, 8))], labels_json=labels)
    write_split(data, "val", [(img(), wnid_labels(labels, n), val(n)) for n in NUMBERS], labels_json=labels)
    compute_stats(data, workers=1, progress=False)
    run = tmp_path / "run"
    train(TrainConfig(data=str(data), out=str(run), epochs=1, batch_size=4, workers=0, device="cpu", progress=False,
                      arch="tiny_arch:make", bias_init="caffe"))
    (row,) = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    r = run_test(data, run / "checkpoints" / "best.pt", workers=0, device="cpu", progress=False,
                 arch="tiny_arch:make", batch_size=3)
    assert row["val_real_n"] == r["real_n"] == sum(bool(real_reference(labels, n)) for n in NUMBERS)
    for k in ("top1_err", "top5_err", "real_top1_err", "real_top5_err"):
        assert row[f"val_{k}"] == pytest.approx(r[k]), k
