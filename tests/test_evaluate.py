"""trainer/evaluate.py: the ten views, view averaging, top-k error, mistake severity, and `imgnet test` /
`imgnet predict` end to end on a small checkpoint and the real fixture images."""

import json
import math

import numpy as np
import pytest
import torch

from imagenet_prep.errors import ImgnetError
from trainer.evaluate import (TEN_CROP_FLIPS, TEN_CROP_OFFSETS, average_views, evaluate, mistake_severity,
                              ten_crop, topk_wrong, upward_distances, wordnet_distance)

SEA_SNAKE, WATER_SNAKE, SPORTS_CAR = "n01751748", "n01737021", "n04285008"


# ---------------------------------------------------------------------------------------- views
def coordinate_image() -> np.ndarray:
    """256x256x3 whose pixel (r, c) is (r, c, (r * 7 + c * 3) % 256): every position is identifiable."""
    r, c = np.mgrid[0:256, 0:256]
    return np.stack([r, c, (r * 7 + c * 3) % 256], axis=-1).astype(np.uint8)


def test_ten_crop_positions_and_mirroring_pixel_for_pixel():
    img = coordinate_image()
    views = ten_crop(img)
    assert views.shape == (10, 224, 224, 3) and views.dtype == np.uint8
    # top-left, top-right, bottom-left, bottom-right, center: (top, left) of each 224 crop
    expected = [(0, 0), (0, 32), (32, 0), (32, 32), (16, 16)]
    assert list(TEN_CROP_OFFSETS[:5]) == expected and list(TEN_CROP_OFFSETS[5:]) == expected
    assert TEN_CROP_FLIPS == (False,) * 5 + (True,) * 5
    i, j = np.mgrid[0:224, 0:224]
    for v, (top, left) in enumerate(expected):
        assert np.array_equal(views[v], img[top + i, left + j]), v
        # mirrored: column j of the flipped view is column 223 - j of the plain crop
        assert np.array_equal(views[v + 5], img[top + i, left + 223 - j]), v + 5
    # spot checks written out by hand: the first pixel of each view
    assert tuple(views[1, 0, 0, :2]) == (0, 32)      # top-right starts at column 32
    assert tuple(views[2, 0, 0, :2]) == (32, 0)      # bottom-left starts at row 32
    assert tuple(views[4, 0, 0, :2]) == (16, 16)     # center
    assert tuple(views[5, 0, 0, :2]) == (0, 223)     # top-left mirrored: its left edge is column 223
    assert tuple(views[8, 0, 0, :2]) == (32, 255)    # bottom-right mirrored
    assert np.array_equal(views[5:], views[:5, :, ::-1])


# ------------------------------------------------------------------------------------ averaging
def test_average_views_is_mean_softmax_by_hand():
    # two views of one image: softmax([0, 0]) = (1/2, 1/2); softmax([ln 3, 0]) = (3/4, 1/4) -> mean (5/8, 3/8)
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    p = average_views(logits, 2).exp()
    assert torch.allclose(p, torch.tensor([[0.625, 0.375]]), atol=1e-6)


def test_average_views_matches_numpy_on_ten_views_and_extreme_logits():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 30, size=(3 * 10, 7))  # large logits: a naive exp would overflow
    e = np.exp(z - z.max(axis=1, keepdims=True))
    ref = (e / e.sum(axis=1, keepdims=True)).reshape(3, 10, 7).mean(axis=1)
    got = average_views(torch.tensor(z, dtype=torch.float32), 10).exp().numpy()
    np.testing.assert_allclose(got, ref, atol=1e-5)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)


class Identity(torch.nn.Module):
    """A 'model' whose logits are its input, to drive `evaluate` with hand-made logits."""

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return x


def test_evaluate_averages_softmax_not_logits():
    # one image, ten views: one view sure of class 0 (logits [20, 0]), nine mildly for class 1 ([0, 0.5]).
    # mean softmax: p0 = (1 + 9 * sigmoid(-0.5)) / 10 = 0.4398 -> class 1; mean logits would pick class 0.
    x = torch.tensor([[20.0, 0.0]] + [[0.0, 0.5]] * 9)
    p0 = (1 / (1 + math.exp(-20)) + 9 / (1 + math.exp(0.5))) / 10
    for label, top1 in ((1, 0.0), (0, 1.0)):
        m = Identity()
        m.train()
        r = evaluate(m, [(x, torch.tensor([label]))], ten_crop=True)
        assert r["views"] == 10 and r["n"] == 1
        assert r["top1_err"] == top1 and r["top5_err"] == 0.0
        assert r["loss"] == pytest.approx(-math.log(p0 if label == 0 else 1 - p0), rel=1e-5)
        assert m.training  # the model's mode is restored for the training loop


def test_evaluate_rejects_loader_views_that_contradict_ten_crop():
    with pytest.raises(ImgnetError, match="views"):
        evaluate(Identity(), [(torch.zeros(2, 3), torch.tensor([0, 1]))], ten_crop=True)


# ------------------------------------------------------------------------------------- top-k
def topk_errors(logits, y, ks=(1, 5)):
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    return tuple(topk_wrong(top, y, k).float().mean().item() for k in ks)


def test_topk_errors_on_hand_made_logits():
    # 6 classes; the true class ranks 1st, 3rd, 5th and 6th in the four rows
    logits = torch.tensor([
        [9.0, 1.0, 2.0, 3.0, 4.0, 5.0],   # y=0 rank 1
        [1.0, 2.0, 9.0, 8.0, 3.0, 4.0],   # y=5 rank 3 (after classes 2 and 3)
        [6.0, 5.0, 4.0, 3.0, 2.0, 1.0],   # y=4 rank 5
        [6.0, 5.0, 4.0, 3.0, 2.0, 1.0],   # y=5 rank 6
    ])
    y = torch.tensor([0, 5, 4, 5])
    top1, top5 = topk_errors(logits, y)
    assert top1 == pytest.approx(3 / 4) and top5 == pytest.approx(1 / 4)
    assert topk_errors(logits, y, ks=(3,)) == pytest.approx((2 / 4,))
    # fewer classes than k: top-5 over 3 classes can never miss
    assert topk_errors(torch.randn(5, 3), torch.tensor([0, 1, 2, 0, 1]), ks=(5,)) == (0.0,)
    # multi-label rows (ReaL's form, padded with -1), numpy alike
    top = np.array([[3, 1], [2, 0], [4, 0]])
    lists = np.array([[1, -1], [5, 6], [4, 2]])
    assert topk_wrong(top, lists, 1).tolist() == [True, True, False]
    assert topk_wrong(top, lists).tolist() == [False, True, False]


def test_evaluate_top_k_matches_topk_errors_over_batches():
    torch.manual_seed(0)
    batches = [(torch.randn(b, 12), torch.randint(0, 12, (b,))) for b in (7, 5, 1)]
    r = evaluate(Identity(), batches, return_predictions=True)
    logits, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    assert (r["top1_err"], r["top5_err"]) == pytest.approx(topk_errors(logits, y))
    assert r["n"] == 13 and r["views"] == 1
    assert r["loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, y).item(), rel=1e-5)
    assert np.array_equal(r["top5"], logits.topk(5, dim=1).indices.numpy()) and np.array_equal(r["y"], y.numpy())


# --------------------------------------------------------------------------------- severity
def wordnet_is_a(shared_data) -> dict:
    h: dict = {}
    for line in (shared_data / "wordnet" / "wordnet.is_a.txt").read_text().split("\n"):
        if line.strip():
            parent, child = line.split()
            h.setdefault(child, []).append(parent)
    return h


def test_severity_sea_snake_on_the_real_wordnet(shared_data):
    from imagenet_prep.labels import load_hierarchy

    for h in (wordnet_is_a(shared_data), load_hierarchy()):
        near = wordnet_distance(SEA_SNAKE, WATER_SNAKE, h)
        far = wordnet_distance(SEA_SNAKE, SPORTS_CAR, h)
        assert near is not None and far is not None and 0 < near < far
        # both snakes: sea snake < elapid, water snake < colubrid, both < snake
        assert near == 2
    r = mistake_severity(np.array([0, 0, 0, 1]), np.array([1, 2, 0, 1]), [SEA_SNAKE, WATER_SNAKE, SPORTS_CAR],
                         load_hierarchy())
    assert r["severity_n"] == 2
    assert r["mistake_severity"] == pytest.approx((near + far) / 2)


# a DAG where t has two parents: t -> {c1, u1}; p -> {p1, v1}
#   via c1:  d(t, c1) = 1, d(p, c1) = 4 (p -> p1 -> p2 -> p3 -> c1)         max 4
#   via u3:  d(t, u3) = 3 (t -> u1 -> u2 -> u3), d(p, u3) = 3 (p -> v1 -> v2 -> u3)   max 3  <- the answer
#   via root: 2 (t -> c1 -> root) and 4                                      max 4
# the nearest ancestor of t (c1, smallest sum 5) is not the one with the smallest max
DAG = {"t": ["c1", "u1"], "p": ["p1", "v1"], "p1": ["p2"], "p2": ["p3"], "p3": ["c1"], "v1": ["v2"],
       "v2": ["u3"], "u1": ["u2"], "u2": ["u3"], "c1": ["root"], "u3": ["root"], "root": [],
       "q": ["u2"], "lone": []}


def test_severity_takes_min_over_common_ancestors_of_max_distance():
    assert upward_distances("t", DAG) == {"t": 0, "c1": 1, "u1": 1, "root": 2, "u2": 2, "u3": 3}
    assert wordnet_distance("t", "p", DAG) == 3
    assert wordnet_distance("p", "t", DAG) == 3
    assert wordnet_distance("t", "q", DAG) == 2   # common u2: d(t)=2, d(q)=1
    assert wordnet_distance("t", "t", DAG) == 0
    assert wordnet_distance("t", "lone", DAG) is None  # no common ancestor
    r = mistake_severity(np.array([0, 0, 0, 0]), np.array([1, 2, 0, 3]), ["t", "p", "q", "lone"], DAG)
    assert r["severity_n"] == 2 and r["mistake_severity"] == pytest.approx((3 + 2) / 2)
    assert r["distances"] == {(0, 1): 3, (0, 2): 2, (0, 3): None}


# ------------------------------------------------------------------------------------ submission
def test_submission_maps_label_indices_to_ilsvrc2012_ids_in_file_name_order(tmp_path, shared_data):
    from imagenet_prep.labels import build_label_map, load_ilsvrc_classes
    from trainer.evaluate import write_submission

    wnids = [c["wnid"] for c in load_ilsvrc_classes()]
    labels = build_label_map(wnids, order="sorted").to_json()
    # sorted index 65 is sea snake, ILSVRC2012_ID 490 (line 1 of the devkit ground truth); index 0 is tench, ID 449
    assert labels["classes"][65]["wnid"] == SEA_SNAKE
    names = ["ILSVRC2012_val_00000003.JPEG", "ILSVRC2012_val_00000001.JPEG", "ILSVRC2012_val_00000002.JPEG"]
    top5 = np.array([[0, 1, 2, 3, 4], [65, 0, 1, 2, 3], [999, 998, 997, 996, 995]])
    out = tmp_path / "pred.txt"
    assert write_submission(out, names, top5, labels) == 3
    lines = out.read_text().split("\n")
    assert lines[-1] == "" and len(lines) == 4
    ids = [[int(t) for t in line.split()] for line in lines[:3]]
    assert ids[0][:2] == [490, 449]   # val_00000001 first: best guess sea snake
    assert ids[2][0] == 449          # val_00000003 last
    by_index = {c["index"]: c["ilsvrc2012_id"] for c in labels["classes"]}
    assert ids[1] == [by_index[i] for i in top5[2]]
    # the devkit's own example file has the same shape: five IDs, each followed by a space
    demo = (shared_data / "devkit_t12" / "evaluation" / "demo.val.pred.txt").read_text().split("\n")[0] + "\n"
    pattern = r"^(\d+ ){5}\n$"
    import re

    assert re.match(pattern, demo) and all(re.match(pattern, line + "\n") for line in lines[:3])
    # an ImageFolder label map has no IDs: refused with a clear error
    folder = build_label_map(["cat", "dog", "emu", "fox", "gnu"]).to_json()
    with pytest.raises(ImgnetError, match="no ILSVRC2012_ID"):
        write_submission(tmp_path / "x.txt", names, top5 % 5, folder)
    assert not (tmp_path / "x.txt").exists()


# ----------------------------------------------------------------------------------- end to end
VAL = (1, 2, 3, 4, 5, 6, 7, 8, 34)  # fixture val images; 34 is greyscale
TINY = (1, 34)                       # a second split for ten-crop (ten forward passes per image)
SPREAD = 0.5                         # std of the image-dependent part of the logits, well below the bias steps
BIAS_STEPS = (16.0, 13.0, 10.0, 7.0, 4.0)


def asymmetric_mean_image() -> np.ndarray:
    """A mean image that differs under every crop offset and mirror, so a wrong crop of M changes x."""
    r, c = np.mgrid[0:256, 0:256].astype(np.float32)
    return np.stack([90 + 0.3 * c, 100 + 0.2 * r, 80 + 0.1 * r + 0.05 * c], axis=-1).astype(np.float32)


@pytest.fixture(scope="module")
def fixture_data(tmp_path_factory, shared_data):
    """DATA holding real fixture val images with their devkit labels (1000-class labels.json): splits
    `val` (VAL) and `tiny` (TINY)."""
    from imagenet_prep.labels import build_label_map, load_class_meta
    from imagenet_prep.resize import prepare_image
    from imagenet_prep.store import write_split

    root = tmp_path_factory.mktemp("evaluate")
    meta = load_class_meta()
    labels = build_label_map([c["wnid"] for c in meta.classes], order="sorted").to_json()
    index = {c["wnid"]: c["index"] for c in labels["classes"]}
    gt = (shared_data / "devkit_t12" / "data" / "ILSVRC2012_validation_ground_truth.txt").read_text().split()
    images, y, names = {}, {}, {}
    for n in VAL:
        names[n] = f"ILSVRC2012_val_{n:08d}.JPEG"
        images[n], _ = prepare_image((shared_data / "images" / "val_original" / names[n]).read_bytes())
        y[n] = index[meta.wnid_of_id[int(gt[n - 1])]]
    assert y[1] == 65  # sea snake
    data = root / "data"
    write_split(data, "val", [(images[n], y[n], names[n]) for n in VAL], labels_json=labels)
    write_split(data, "tiny", [(images[n], y[n], names[n]) for n in TINY], labels_json=labels)
    return {"root": root, "data": data, "labels": labels, "index": index, "images": images, "y": y,
            "names": names, "shared": shared_data}


@pytest.fixture(scope="module")
def world(fixture_data):
    """fixture_data plus a 'trained' AlexNet checkpoint whose fc8 biases make five known classes its top five
    for every image (image-dependent logits on top), and per-image reference log-probabilities computed by
    hand (crop(P - M), no loader, no InputTransform)."""
    from trainer.checkpoint import model_state, save_checkpoint
    from trainer.model import AlexNet

    w = dict(fixture_data)
    root, labels, index, images, y = w["root"], w["labels"], w["index"], w["images"], w["y"]
    mean_image = asymmetric_mean_image()
    stats = {"mean_rgb": (mean_image.reshape(-1, 3).mean(0) / 255).tolist(), "std_rgb": [0.27, 0.26, 0.28],
             "cov": np.diag([0.073, 0.068, 0.078]).tolist(), "eigval": [0.2175, 0.0188, 0.0045],
             "eigvec": [[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]],
             "n_pixels": 65536 * 9, "n_images": 9, "mean_image": torch.from_numpy(mean_image)}
    favoured = [y[1], y[2], y[3], y[34], index[SPORTS_CAR]]
    assert len(set(favoured)) == 5
    torch.manual_seed(0)
    model = AlexNet(num_classes=1000).eval()
    # a random AlexNet barely looks at its input (fc7's output varies by about 1% between images), so fc8
    # reads the deviation of fc7's output from its mean over these images, amplified to SPREAD
    center_x = np.stack([(images[n].astype(np.float32) - mean_image)[16:240, 16:240] for n in VAL])
    with torch.inference_mode():
        conv = model.features(torch.from_numpy(center_x.transpose(0, 3, 1, 2).copy()))
        f = model.classifier[:-1](torch.flatten(conv, 1))  # fc7's output, (9, 4096)
    with torch.no_grad():
        fc8 = model.classifier.fc8
        dev = (f - f.mean(0)) @ fc8.weight.T
        fc8.weight.mul_(SPREAD / dev.std())
        fc8.bias.copy_(-fc8.weight @ f.mean(0))
        fc8.bias[favoured] += torch.tensor(BIAS_STEPS)
    ckpt = {"format": "imgnet-checkpoint", "version": 1, "model": model_state(model),
            "model_kwargs": dict(model.model_kwargs), "optimizer": {}, "scheduler": {}, "epoch": 3,
            "best_val_top1_err": 0.5, "config": {"mean": "image"}, "labels": labels, "stats": stats,
            "rng": [], "metrics": {}}
    ckpt_path = save_checkpoint(root / "run" / "checkpoints" / "best.pt", ckpt)

    def ref_logp(img: np.ndarray, ten: bool) -> np.ndarray:
        """log of the mean softmax over the views, by hand: crop(P) - crop(M) per view."""
        if ten:
            x = ten_crop(img).astype(np.float32) - ten_crop(mean_image)
        else:
            x = (img.astype(np.float32) - mean_image)[None, 16:240, 16:240]
        with torch.inference_mode():
            p = torch.softmax(model(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))), 1).mean(0)
        return p.log().numpy()

    center = {n: ref_logp(images[n], False) for n in VAL}
    ten = {n: ref_logp(images[n], True) for n in TINY}
    for n in VAL:  # the biases fix the top five whatever the image
        assert list(np.argsort(-center[n])[:5]) == favoured
    w.update(ckpt=ckpt_path, favoured=favoured, center=center, ten=ten)
    return w


def cli(*args):
    from click.testing import CliRunner

    from cli import main

    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def expected_errors(w, ns) -> tuple[float, float]:
    fav = w["favoured"]
    return (sum(w["y"][n] != fav[0] for n in ns) / len(ns), sum(w["y"][n] not in fav for n in ns) / len(ns))


@pytest.mark.slow  # AlexNet on the CPU: a few seconds per test, 15 s for the shared checkpoint
def test_imgnet_test_center_end_to_end(world):
    w = world
    sub = w["root"] / "center.pred.txt"
    r = cli("test", "--data", w["data"], "--ckpt", w["ckpt"], "--workers", 0, "--device", "cpu",
            "--batch-size", 4, "--submission", sub)
    assert r.exit_code == 0, r.output
    assert "top-1 err" in r.stdout and "top-5 err" in r.stdout and "mistake severity" in r.stdout
    rep = json.loads((w["ckpt"].parent / "test-best-center.json").read_text())
    top1, top5 = expected_errors(w, VAL)
    assert rep["n"] == len(VAL) and rep["view"] == "center" and rep["split"] == "val"
    assert rep["top1_err"] == pytest.approx(top1) and rep["top5_err"] == pytest.approx(top5)
    assert 0 < rep["top1_err"] < 1 and 0 < rep["top5_err"] < rep["top1_err"]
    # the loss pins every image's probabilities: the whole input pipeline agrees with the hand computation
    ref_loss = np.mean([-w["center"][n][w["y"][n]] for n in VAL])
    assert rep["loss"] == pytest.approx(ref_loss, rel=1e-4)
    # per class: sea snake (index 65) is always the top guess, so its images are right; the others wrong
    per = {c["index"]: c for c in rep["per_class"]}
    assert len(per) == 1000 and per[65]["wnid"] == SEA_SNAKE and per[65]["words"].startswith("sea snake")
    for n in VAL:
        assert per[w["y"][n]]["top1_err"] == (0.0 if w["y"][n] == 65 else 1.0)
    assert per[w["favoured"][4]]["top1_err"] is None and per[w["favoured"][4]]["n"] == 0
    # confusions and mistake severity: every mistake is 'taken for a sea snake'
    h = w["labels"]["hierarchy"]  # the WordNet parents travel in labels.json, hence in the checkpoint
    wn = {c["index"]: c["wnid"] for c in w["labels"]["classes"]}
    wrong = [n for n in VAL if w["y"][n] != 65]
    assert sum(c["count"] for c in rep["confusions"]) == len(wrong)
    assert all(c["pred"] == 65 and c["pred_words"].startswith("sea snake") for c in rep["confusions"])
    dists = [wordnet_distance(wn[w["y"][n]], SEA_SNAKE, h) for n in wrong]
    assert rep["mistake_severity"] == pytest.approx(np.mean(dists)) and rep["severity_n"] == len(wrong)
    # the submission: one line per image, five ILSVRC2012_IDs best first
    ids = [w["labels"]["classes"][i]["ilsvrc2012_id"] for i in w["favoured"]]
    assert ids[0] == 490
    assert sub.read_text() == "".join(" ".join(map(str, ids)) + " \n" for _ in VAL)


@pytest.mark.slow  # AlexNet on the CPU: a few seconds per test, 15 s for the shared checkpoint
def test_imgnet_test_ten_crop_end_to_end(world):
    w = world
    r = cli("test", "--data", w["data"], "--ckpt", w["ckpt"], "--ten-crop", "--split", "tiny", "--workers", 0,
            "--device", "cpu", "--batch-size", 2)
    assert r.exit_code == 0, r.output
    rep = json.loads((w["ckpt"].parent / "test-best-tiny-ten-crop.json").read_text())  # not val: the split in the name
    assert rep["n"] == len(TINY) and rep["view"] == "ten-crop" and rep["split"] == "tiny"
    assert (rep["top1_err"], rep["top5_err"]) == pytest.approx(expected_errors(w, TINY))
    ref_ten = np.mean([-w["ten"][n][w["y"][n]] for n in TINY])
    ref_center = np.mean([-w["center"][n][w["y"][n]] for n in TINY])
    assert rep["loss"] == pytest.approx(ref_ten, rel=1e-4)
    assert abs(ref_ten - ref_center) > 1e-2  # the ten views really differ from the center crop here


@pytest.mark.slow  # AlexNet on the CPU: a few seconds per test, 15 s for the shared checkpoint
def test_imgnet_predict_end_to_end(world, tmp_path):
    w = world
    val = w["shared"] / "images" / "val_original"
    broken = tmp_path / "broken.JPEG"
    broken.write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    files = [val / w["names"][1], broken, val / w["names"][34], val / w["names"][2]]
    r = cli("predict", "--ckpt", w["ckpt"], "--device", "cpu", *files)
    assert r.exit_code == 1  # some file failed: documented, after every good one is printed
    assert "broken.JPEG" in r.stderr and "cannot decode" in r.stderr
    assert "broken.JPEG" not in r.stdout
    blocks = r.stdout.strip().split("\n")
    for n in (1, 34, 2):
        at = next(i for i, line in enumerate(blocks) if line.startswith(str(val / w["names"][n])))
        rows = blocks[at + 1:at + 6]
        got = [(int(row.split()[0].rstrip(".")), float(row.split()[1]), row.split()[2]) for row in rows]
        want_idx = np.argsort(-w["center"][n])[:5]
        assert [g[0] for g in got] == [1, 2, 3, 4, 5]
        assert [g[2] for g in got] == [w["labels"]["classes"][i]["wnid"] for i in want_idx]
        np.testing.assert_allclose([g[1] for g in got], np.exp(w["center"][n][want_idx]), atol=1e-4)
    assert "(converted from L)" in blocks[next(i for i, b in enumerate(blocks) if w["names"][34] in b)]


@pytest.mark.slow  # AlexNet on the CPU: a few seconds per test, 15 s for the shared checkpoint
def test_imgnet_predict_json_ten_crop(world, tmp_path):
    w = world
    val = w["shared"] / "images" / "val_original"
    broken = tmp_path / "empty.JPEG"
    broken.write_bytes(b"")
    missing = tmp_path / "missing.JPEG"
    r = cli("predict", "--ckpt", w["ckpt"], "--device", "cpu", "--ten-crop", "--json",
            val / w["names"][34], broken, missing)
    assert r.exit_code == 1
    out = json.loads(r.stdout)
    assert [o["file"] for o in out] == [str(val / w["names"][34]), str(broken), str(missing)]
    assert out[0]["from_mode"] == "L"
    idx = np.argsort(-w["ten"][34])[:5]
    assert [t["index"] for t in out[0]["top"]] == list(idx)
    np.testing.assert_allclose([t["prob"] for t in out[0]["top"]], np.exp(w["ten"][34][idx]), atol=1e-5)
    assert "error" in out[1] and "cannot decode" in out[1]["error"]
    assert "error" in out[2] and "cannot read" in out[2]["error"]
    assert "empty.JPEG" in r.stderr and "missing.JPEG" in r.stderr


# ------------------------------------------------------------------------------------ bad input
def fake_checkpoint(path, labels: dict, num_classes: int | None = None):
    """A checkpoint whose label map is what matters: the checks run before any weights are loaded."""
    from trainer.checkpoint import save_checkpoint

    return save_checkpoint(path, {"format": "imgnet-checkpoint", "version": 1, "model": {},
                                  "model_kwargs": {"num_classes": num_classes or len(labels["classes"])},
                                  "labels": labels, "stats": {}, "config": {}})


def test_checkpoint_for_other_classes_or_label_map_is_refused(fixture_data, tmp_path):
    from trainer.evaluate import run_test

    w = fixture_data
    swapped = json.loads(json.dumps(w["labels"]))
    a, b = swapped["classes"][3], swapped["classes"][4]
    a["wnid"], b["wnid"] = b["wnid"], a["wnid"]
    ck = fake_checkpoint(tmp_path / "swapped.pt", swapped)
    with pytest.raises(ImgnetError) as e:
        run_test(w["data"], ck, device="cpu", workers=0)
    msg = str(e.value)
    assert "swapped.pt" in msg and "labels.json" in msg and "index 3" in msg
    ten = {"order": "sorted", "classes": w["labels"]["classes"][:10], "hierarchy": {}}
    ck = fake_checkpoint(tmp_path / "ten.pt", ten)
    r = cli("test", "--data", w["data"], "--ckpt", ck, "--device", "cpu")
    assert r.exit_code == 2 and "10 classes" in r.stderr and "lists 1000" in r.stderr
    ck = fake_checkpoint(tmp_path / "odd.pt", ten, num_classes=12)
    r = cli("predict", "--ckpt", ck, "--device", "cpu", w["shared"] / "images" / "val_original" / w["names"][1])
    assert r.exit_code == 2 and "12 outputs" in r.stderr and "10 classes" in r.stderr


def test_split_without_labels_is_refused(fixture_data, tmp_path, monkeypatch):
    import imagenet_prep
    from imagenet_prep.store import write_split
    from trainer.evaluate import run_test

    w = fixture_data
    ck = fake_checkpoint(tmp_path / "ok.pt", w["labels"])
    real_open = imagenet_prep.open_split

    def unlabelled(data_dir, split):
        s = real_open(data_dir, split)
        s.labels = np.full_like(s.labels, -1)
        return s

    monkeypatch.setattr(imagenet_prep, "open_split", unlabelled)
    with pytest.raises(ImgnetError, match="no labels for 9 of 9 images"):
        run_test(w["data"], ck, device="cpu", workers=0)
    monkeypatch.undo()
    # a split packed with label -1 on disk: the reader already refuses it, naming the file and the label
    img = np.zeros((256, 256, 3), np.uint8)
    try:
        write_split(w["data"], "unlabelled", [(img, -1, "a.JPEG"), (img, -1, "b.JPEG")], labels_json=w["labels"])
    except ImgnetError:
        pass
    r = cli("test", "--data", w["data"], "--ckpt", ck, "--split", "unlabelled", "--device", "cpu")
    assert r.exit_code == 2 and "unlabelled" in r.stderr and "-1" in r.stderr
    r = cli("test", "--data", w["data"], "--ckpt", ck, "--split", "test", "--device", "cpu")
    assert r.exit_code == 2 and "no test split" in r.stderr


def test_submission_without_ilsvrc_ids_is_refused_before_evaluating(tmp_path):
    from imagenet_prep.store import write_split
    from trainer.evaluate import run_test

    img = np.zeros((256, 256, 3), np.uint8)
    s = write_split(tmp_path / "data", "val", [(img, 0, "a.JPEG"), (img, 1, "b.JPEG")], num_classes=6)
    labels = json.loads((tmp_path / "data" / "labels.json").read_text())
    assert labels["classes"][0]["ilsvrc2012_id"] is None and len(s) == 2
    ck = fake_checkpoint(tmp_path / "folder.pt", labels)
    with pytest.raises(ImgnetError, match="no ILSVRC2012_ID"):
        run_test(tmp_path / "data", ck, device="cpu", workers=0, submission=tmp_path / "sub.txt")
    assert not (tmp_path / "sub.txt").exists()
