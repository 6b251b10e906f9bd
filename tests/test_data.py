"""trainer/data.py: the pure augmentations against the paper's formulas, and the loader's contract
(exact input, determinism over worker counts, epoch coverage, rank shares, failures that surface)."""

import dataclasses
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from imagenet_prep import ImgnetError
from imagenet_prep.labels import read_labels_json
from imagenet_prep.stats import compute_stats, load_stats
from imagenet_prep.store import write_split
from trainer import data as D
from trainer import loader as L
from trainer.data import (CROP, ImageNetDataset, InputTransform, center_crop, check_split, draw_augment, hflip,
                          lighting_offset, pca_lighting, random_crop, ten_crop, view_geometry)
from trainer.decoders import registry as decoders
from trainer.decoders.base import Decoder
from trainer.decoders.cpu import CpuCropDecoder
from trainer.loader import Loader, LoaderTuning, WorkerError

N = 40  # images in the test split
ROOT = Path(__file__).resolve().parents[1]


def _images(n, seed):
    """Noise around a per-image colour with a left-right gradient, so crops and flips are distinguishable."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 60, 256)[None, :, None]
    return [np.clip(rng.integers(0, 190, 3) + ramp + rng.normal(0, 25, (256, 256, 3)), 0, 255).astype(np.uint8)
            for _ in range(n)]


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    imgs = _images(N, 0)
    split = write_split(d, "train", [(im, i % 5, f"n{i:03d}.JPEG") for i, im in enumerate(imgs)])
    compute_stats(d, workers=1, progress=False)
    return d, split, load_stats(d), np.stack(imgs)


def _reference_x(img, stats, top, left, flip, alpha, mean="image"):
    """The network input of DESIGN.md written out in numpy: crop(P - M), flipped, + 255 eigvec @ (alpha eigval)."""
    p = img[top:top + CROP, left:left + CROP].astype(np.float32)
    if mean == "image":
        m = np.asarray(stats["mean_image"], np.float32)[top:top + CROP, left:left + CROP]
    else:
        m = (255.0 * np.asarray(stats["mean_rgb"])).astype(np.float32)[None, None, :]
    x = p - m
    if flip:
        x = x[:, ::-1]
    if alpha is not None:
        ev, V = np.asarray(stats["eigval"]), np.asarray(stats["eigvec"])
        off = np.array([255.0 * sum(V[c][j] * alpha[j] * ev[j] for j in range(3)) for c in range(3)])
        x = x + off.astype(np.float32)
    return x.transpose(2, 0, 1)


def _epoch(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


# ---------------------------------------------------------------------------------- augmentations
def test_random_crop_is_the_exact_slice_and_stays_inside():
    img = np.arange(256 * 256 * 3, dtype=np.int64).reshape(256, 256, 3)
    for top, left in [(0, 0), (32, 32), (5, 17), (32, 0)]:
        c = random_crop(img, top, left)
        assert c.shape == (224, 224, 3)
        np.testing.assert_array_equal(c, img[top:top + 224, left:left + 224])
        assert c[0, 0, 0] == (top * 256 + left) * 3
    with pytest.raises(ValueError):
        random_crop(img, 33, 0)  # offsets run 0..32: a 33rd row would leave the image
    np.testing.assert_array_equal(center_crop(img), img[16:240, 16:240])


def test_hflip_mirrors_columns_and_keeps_channels():
    img = np.random.default_rng(1).integers(0, 256, (4, 7, 3)).astype(np.uint8)
    f = hflip(img)
    for j in range(7):
        np.testing.assert_array_equal(f[:, j], img[:, 6 - j])  # RGB order within a pixel unchanged
    np.testing.assert_array_equal(hflip(f), img)


def test_ten_crop_order():
    img = np.random.default_rng(2).integers(0, 256, (256, 256, 3)).astype(np.uint8)
    v = ten_crop(img)
    assert v.shape == (10, 224, 224, 3) and v.dtype == np.uint8
    corners = [(0, 0), (0, 32), (32, 0), (32, 32), (16, 16)]  # TL, TR, BL, BR, center
    for i, (t, l) in enumerate(corners):
        np.testing.assert_array_equal(v[i], img[t:t + 224, l:l + 224])
        np.testing.assert_array_equal(v[5 + i], img[t:t + 224, l:l + 224][:, ::-1])
    assert D.TEN_CROP_OFFSETS == tuple(corners) * 2 and D.TEN_CROP_FLIPS == (False,) * 5 + (True,) * 5


def test_lighting_offset_equals_the_formula():
    rng = np.random.default_rng(4)
    eigval = np.array([0.2175, 0.0188, 0.0045])
    eigvec = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    for alpha in (np.array([0.1, -0.2, 0.05]), np.array([1.0, 0.0, 0.0])):
        want = [255 * sum(eigvec[c][j] * alpha[j] * eigval[j] for j in range(3)) for c in range(3)]
        np.testing.assert_allclose(lighting_offset(alpha, eigval, eigvec), want, rtol=1e-12)
    # alpha = e_0: the offset is 255 * eigval_0 * the first eigenvector (the column, not the row)
    np.testing.assert_allclose(lighting_offset([1, 0, 0], eigval, eigvec), 255 * eigval[0] * eigvec[:, 0])
    alphas = rng.normal(0, 0.1, (5, 3))
    np.testing.assert_allclose(lighting_offset(alphas, eigval, eigvec),
                               [lighting_offset(a, eigval, eigvec) for a in alphas], rtol=1e-12)
    img = np.full((2, 2, 3), 100, np.uint8)
    np.testing.assert_allclose(pca_lighting(img, alphas[0], eigval, eigvec),
                               np.broadcast_to(100 + lighting_offset(alphas[0], eigval, eigvec), (2, 2, 3)), rtol=1e-6)


def test_draws_have_the_paper_distributions():
    n = 200_000
    aug = draw_augment(np.random.default_rng(5), n, lighting_std=0.1)
    assert aug.alphas.shape == (n, 3)
    np.testing.assert_allclose(aug.alphas.std(axis=0), 0.1, rtol=0.01)  # section 4.1: sigma 0.1
    np.testing.assert_allclose(aug.alphas.mean(axis=0), 0, atol=0.001)
    assert abs(np.corrcoef(aug.alphas.T)[0, 1]) < 0.01  # independent per channel
    for offs in (aug.tops, aug.lefts):
        counts = np.bincount(offs, minlength=34)
        assert counts[33] == 0 and offs.min() == 0  # 0..32 inclusive: all 33 positions
        np.testing.assert_allclose(counts[:33] / n, 1 / 33, rtol=0.05)
    assert abs(aug.flips.mean() - 0.5) < 0.005
    off = draw_augment(np.random.default_rng(5), n, lighting_std=0.0)  # lighting off keeps crops and flips
    np.testing.assert_array_equal(off.tops, aug.tops)
    np.testing.assert_array_equal(off.flips, aug.flips)
    assert not off.alphas.any()


@pytest.mark.parametrize("mean", ["image", "rgb"])
def test_input_transform_equals_numpy_formula(packed, mean):
    _, _, stats, imgs = packed
    rng = np.random.default_rng(6)
    b = 6
    tops, lefts = rng.integers(0, 33, b), rng.integers(0, 33, b)
    flips = np.array([0, 1, 0, 1, 1, 0], bool)
    alphas = rng.normal(0, 0.1, (b, 3))
    crops = np.stack([hflip(random_crop(imgs[i], t, l)) if f else random_crop(imgs[i], t, l)
                      for i, (t, l, f) in enumerate(zip(tops, lefts, flips))])
    tf = InputTransform(stats, mean=mean)
    x = tf(torch.from_numpy(crops), tops, lefts, flips, alphas)
    assert x.shape == (b, 3, 224, 224) and x.dtype == torch.float32 and x.is_contiguous()
    want = np.stack([_reference_x(imgs[i], stats, tops[i], lefts[i], flips[i], alphas[i], mean) for i in range(b)])
    np.testing.assert_allclose(x.numpy(), want, rtol=0, atol=1e-4)
    ev = tf(crops, tops, lefts, flips)  # evaluation: alpha = 0
    want = np.stack([_reference_x(imgs[i], stats, tops[i], lefts[i], flips[i], None, mean) for i in range(b)])
    np.testing.assert_allclose(ev.numpy(), want, rtol=0, atol=1e-4)
    nhwc = InputTransform(stats, mean=mean, channels_last=True)
    assert nhwc(crops, tops, lefts, flips, alphas).is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("mean", ["image", "rgb"])
def test_device_path_equals_cpu_path(packed, mean):
    """The GPU path (one gather for the mean crops, torch kernels), run here on the CPU, gives the same
    numbers as the numpy path."""
    _, _, stats, imgs = packed
    rng = np.random.default_rng(7)
    tops, lefts, flips = rng.integers(0, 33, 8), rng.integers(0, 33, 8), rng.random(8) < 0.5
    tf = InputTransform(stats, mean=mean)
    u8 = np.stack([random_crop(imgs[i], tops[i], lefts[i]) for i in range(8)])
    off = tf.offsets(rng.normal(0, 0.1, (8, 3)))
    a = tf._cpu(u8, tops, lefts, flips, off)
    g = tf._device(torch.from_numpy(u8), torch.from_numpy(tops), torch.from_numpy(lefts), torch.from_numpy(flips), off)
    assert g.is_contiguous()
    torch.testing.assert_close(g, torch.from_numpy(a), rtol=0, atol=0)


# ----------------------------------------------------------------------------------------- loader
@pytest.mark.parametrize("workers", [0, 2])
def test_loader_input_is_the_formula_for_the_drawn_choices(packed, workers):
    d, split, stats, imgs = packed
    with Loader(split, InputTransform(stats), batch_size=8, workers=workers, seed=11) as ld:
        ld.set_epoch(3)
        plan = ld.plan(3)
        got = _epoch(ld)
    assert len(got) == len(plan.batches) == 5
    for (x, y), (lo, hi) in zip(got, plan.batches):
        want = np.stack([_reference_x(imgs[plan.indices[j]], stats, plan.tops[j], plan.lefts[j], plan.flips[j],
                                      plan.alphas[j]) for j in range(lo, hi)])
        np.testing.assert_allclose(x.numpy(), want, rtol=0, atol=1e-4)
        np.testing.assert_array_equal(y.numpy(), split.labels[plan.indices[lo:hi]])
        assert y.dtype == torch.int64
    assert plan.flips.any() and not plan.flips.all() and len(set(plan.tops.tolist())) > 5


def test_same_seed_same_batches_whatever_the_worker_count(packed):
    _, split, stats, _ = packed
    runs = {}
    for w in (0, 1, 2):
        with Loader(split, InputTransform(stats), batch_size=8, workers=w, seed=5) as ld:
            runs[w] = [_epoch(ld), _epoch(ld)]  # epochs 0 and 1
    for w in (1, 2):
        for e in (0, 1):
            for (xa, ya), (xb, yb) in zip(runs[0][e], runs[w][e]):
                assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(runs[0][0][0][0], runs[0][1][0][0])  # a fresh permutation and draws each epoch
    with Loader(split, InputTransform(stats), batch_size=8, workers=0, seed=6) as other:
        assert not torch.equal(_epoch(other)[0][0], runs[0][0][0][0])


def test_every_image_at_most_once_and_the_drop_is_logged(packed, caplog):
    _, split, stats, _ = packed
    with Loader(split, InputTransform(stats), batch_size=6, workers=2, seed=1) as ld:
        with caplog.at_level(logging.INFO, logger="trainer.data"):
            seen = [b.indices.copy() for b in ld.raw_batches()]
        assert ld.dropped == N % 6 == 4 and len(ld) == 6
    seen = np.concatenate(seen)
    assert len(seen) == 36 and len(np.unique(seen)) == 36  # only the N mod B left over are missed
    assert "4 of 40 images left out by drop_last" in caplog.text
    with Loader(split, InputTransform(stats), batch_size=6, train=False, workers=2) as ev:  # no drop: all, in order
        idx = np.concatenate([b.indices.copy() for b in ev.raw_batches()])
    np.testing.assert_array_equal(idx, np.arange(N))
    assert ev.dropped == 0 and len(ev) == 7


def test_ranks_get_disjoint_equal_shares(packed):
    _, split, stats, _ = packed
    b, w = 3, 2
    plans = [Loader(split, InputTransform(stats), batch_size=b, workers=0, shard=(r, w), seed=2).plan(0) for r in range(w)]
    single = Loader(split, InputTransform(stats), batch_size=b * w, workers=0, seed=2).plan(0)
    assert len(plans[0].batches) == len(plans[1].batches) == N // (b * w)
    a, c = plans[0].indices, plans[1].indices
    assert not set(a) & set(c) and len(a) == len(c) == 18  # disjoint, no padding
    assert plans[0].dropped == N - 36 == 4
    for s in range(len(single.batches)):  # one step of the two ranks = the single-process batch of b * w
        mine, whole = slice(s * b, (s + 1) * b), slice(s * b * w, (s + 1) * b * w)
        np.testing.assert_array_equal(np.concatenate([a[mine], c[mine]]), single.indices[whole])
        np.testing.assert_array_equal(np.concatenate([plans[0].tops[mine], plans[1].tops[mine]]), single.tops[whole])
    ev = [Loader(split, InputTransform(stats), batch_size=4, train=False, workers=0, shard=(r, 3)).plan(0).indices
          for r in range(3)]
    np.testing.assert_array_equal(np.sort(np.concatenate(ev)), np.arange(N))  # without drop_last: all, once


def test_eval_views_and_uint8_output(packed):
    d, split, stats, imgs = packed
    with Loader(split, InputTransform(stats), batch_size=4, train=False, views="ten", workers=2) as ld:
        x, y = next(iter(ld))
    assert x.shape == (40, 3, 224, 224) and y.tolist() == [0, 1, 2, 3]
    tf = InputTransform(stats)
    for i in range(4):  # image-major, ten_crop order
        v = ten_crop(imgs[i])
        offs = np.array(D.TEN_CROP_OFFSETS)
        want = tf(v, offs[:, 0], offs[:, 1], np.array(D.TEN_CROP_FLIPS))
        torch.testing.assert_close(x[10 * i:10 * i + 10], want, rtol=0, atol=0)
    with Loader(split, InputTransform(stats), batch_size=4, train=False, workers=0) as ld:
        x, _ = next(iter(ld))
    np.testing.assert_allclose(x[1].numpy(), _reference_x(imgs[1], stats, 16, 16, False, None), atol=1e-4)
    with Loader(split, InputTransform(stats), batch_size=8, workers=2, seed=9) as raw, \
            Loader(split, InputTransform(stats), batch_size=8, workers=0, seed=9) as flt:
        for rb, (x, _) in zip(raw.raw_batches(), flt):
            for j in range(8):
                c = random_crop(imgs[rb.indices[j]], rb.tops[j], rb.lefts[j])
                np.testing.assert_array_equal(rb.images[j].numpy(), hflip(c) if rb.flips[j] else c)
            torch.testing.assert_close(raw.transform(rb.images, rb.tops, rb.lefts, rb.flips, rb.alphas), x,
                                       rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("workers", [0, 2])
def test_cuda_path_equals_cpu_path(packed, workers):
    """Pinned slots, asynchronous copies on a side stream and the gather transform give the CPU's numbers."""
    _, split, stats, _ = packed
    with Loader(split, InputTransform(stats), batch_size=8, workers=workers, seed=3, device="cuda") as gpu, \
            Loader(split, InputTransform(stats), batch_size=8, workers=0, seed=3) as cpu:
        pairs = list(zip(gpu, cpu))
        assert len(pairs) == len(cpu) == 5
        for (xg, yg), (xc, yc) in pairs:
            assert xg.is_cuda and yg.is_cuda and xg.shape == xc.shape
            torch.testing.assert_close(xg.cpu(), xc, rtol=0, atol=1e-4)
            assert torch.equal(yg.cpu(), yc)


@pytest.mark.parametrize("fmt,enc", [("lmdb", "jpeg"), ("hdf5", "raw"), ("hdf5", "jpeg")])
def test_other_formats_give_slices_of_the_decoded_image(tmp_path, fmt, enc):
    imgs = _images(10, 3)
    split = write_split(tmp_path, "train", [(im, i % 2, f"i{i}") for i, im in enumerate(imgs)],
                        format=fmt, encoding=enc)
    compute_stats(tmp_path, workers=1, progress=False)
    with Loader(split, InputTransform(load_stats(tmp_path)), batch_size=5, workers=2, seed=4) as ld:
        for rb in ld.raw_batches():
            for j in range(5):
                c = random_crop(split.read_image(int(rb.indices[j])), rb.tops[j], rb.lefts[j])
                np.testing.assert_array_equal(rb.images[j].numpy(), hflip(c) if rb.flips[j] else c)


def test_dataset_gives_the_loaders_inputs(packed):
    d, split, stats, _ = packed
    ds = ImageNetDataset(split, stats, seed=8)
    ds.set_epoch(2)
    with Loader(split, InputTransform(stats), batch_size=8, workers=0, seed=8) as ld:
        ld.set_epoch(2)
        plan = ld.plan(2)
        x, y = next(iter(ld))
    for j in range(3):
        xi, yi = ds[int(plan.indices[j])]
        torch.testing.assert_close(xi, x[j], rtol=0, atol=0)
        assert yi == int(y[j])
    split.close()  # LMDB refuses a second open of one environment in a process
    dl = torch.utils.data.DataLoader(ImageNetDataset(d, stats, train=False, split="train"), batch_size=8, num_workers=2)
    xb, yb = next(iter(dl))  # an ordinary DataLoader over the path, with forked workers
    assert xb.shape == (8, 3, 224, 224) and yb.tolist() == split.labels[:8].tolist()
    ten, _ = ImageNetDataset(split, stats, views="ten")[0]
    assert ten.shape == (10, 3, 224, 224)


def test_view_geometry_is_what_the_loader_the_dataset_and_ten_crop_use(packed):
    d, split, stats, _ = packed
    img = split[0].image
    tops, lefts, flips = view_geometry("ten", 1)
    cut = np.stack([hflip(random_crop(img, t, l_)) if f else random_crop(img, t, l_)
                    for t, l_, f in zip(tops.tolist(), lefts.tolist(), flips.tolist())])
    np.testing.assert_array_equal(cut, ten_crop(img))  # the contract's order, from the one definition
    assert [a.tolist() for a in view_geometry("center", 2)] == [[16, 16], [16, 16], [False, False]]
    for views in ("center", "ten"):
        plan = Loader(split, InputTransform(stats), batch_size=4, train=False, views=views, workers=0).plan(0)
        want = view_geometry(views, len(plan.indices))
        for got, w in zip((plan.tops, plan.lefts, plan.flips), want):
            np.testing.assert_array_equal(got, w)
        ds_params = ImageNetDataset(split, stats, train=False, views=views).params(3)[:3]
        for got, w in zip(ds_params, view_geometry(views, 1)):
            np.testing.assert_array_equal(got, w)


# --------------------------------------------------------------------------------------- refusals
def test_refusals_name_the_reason(packed, tmp_path):
    d, split, stats, _ = packed
    with pytest.raises(ImgnetError, match="expected a trainer.data.InputTransform"):
        Loader(split, stats, workers=0)  # the statistics themselves, not the transform made of them
    with pytest.raises(ImgnetError, match="expected a Split"):
        Loader(str(d), InputTransform(stats), workers=0)
    with pytest.raises(ImgnetError, match="num_classes=3"):
        check_split(split, stats, num_classes=3)  # labels run to 4: the caller's check (train, test)
    other = read_labels_json(d)
    other["classes"] = [dict(c, wnid=f"z{i}") for i, c in enumerate(other["classes"])]  # same size, other classes
    with pytest.raises(ImgnetError, match="another label map"):
        check_split(split, stats, labels=other)
    with pytest.raises(ImgnetError, match="statistics were computed"):
        check_split(split, dict(stats, source={"labels_sha256": "0" * 64}))
    bad = dataclasses.replace(split, meta=dict(split.meta, image_shape=[128, 128, 3]))
    with pytest.raises(ImgnetError, match=r"shape \[128, 128, 3\]"):
        Loader(bad, InputTransform(stats), workers=0)
    with pytest.raises(ImgnetError, match="repeat"):
        Loader(split, InputTransform(stats), workers=0, indices=[1, 2, 2])
    check_split(split, stats, num_classes=5, labels=read_labels_json(d))  # the matching ones pass


# --------------------------------------------------------------------------------------- failures
def test_a_killed_worker_raises_instead_of_hanging(packed):
    _, split, stats, _ = packed
    ld = Loader(split, InputTransform(stats), batch_size=4, workers=2, seed=0)
    it = iter(ld)
    next(it)
    procs = list(ld._pool.procs)
    os.kill(procs[0].pid, signal.SIGKILL)
    procs[0].join(5)  # dead for sure (the survivor could otherwise finish this tiny epoch first)
    t0 = time.monotonic()
    with pytest.raises(WorkerError, match="SIGKILL"):
        for _ in it:
            pass
    assert time.monotonic() - t0 < 10
    assert all(p.exitcode is not None for p in procs)  # the survivor was stopped too
    assert len(_epoch(ld)) == 10  # the next epoch starts fresh workers
    ld.close()


def test_a_worker_exception_carries_its_traceback(packed, monkeypatch):
    _, split, stats, _ = packed

    def broken(self, dst, idx, *a):
        raise ValueError(f"cannot read record {int(idx[0])}")

    monkeypatch.setattr(CpuCropDecoder, "fill", broken)  # the forked workers inherit it
    with Loader(split, InputTransform(stats), batch_size=4, workers=2) as ld:
        with pytest.raises(WorkerError, match=r"(?s)Traceback.*ValueError: cannot read record"):
            _epoch(ld)


def test_stuck_workers_end_the_epoch_after_the_tuning_timeout(packed, monkeypatch):
    """A worker that never finishes (hung storage) is reported once `timeout` passes with no work done;
    the tuning changes when that happens, never what a batch holds."""
    _, split, stats, _ = packed

    def hung(self, dst, idx, *a):
        time.sleep(60)

    with Loader(split, InputTransform(stats), batch_size=4, workers=2, seed=1,
                tuning=LoaderTuning(prefetch=3, timeout=1.0)) as ld:
        same = [x for x, _ in ld]
    with Loader(split, InputTransform(stats), batch_size=4, workers=0, seed=1) as ref:
        assert all(torch.equal(a, b) for a, (b, _) in zip(same, ref, strict=True))
    monkeypatch.setattr(CpuCropDecoder, "fill", hung)  # the forked workers inherit it
    with Loader(split, InputTransform(stats), batch_size=4, workers=2, tuning=LoaderTuning(timeout=1.0)) as ld:
        t0 = time.monotonic()
        with pytest.raises(WorkerError, match="no loader worker finished any work in 1 s"):
            _epoch(ld)
        assert time.monotonic() - t0 < 20


@pytest.mark.parametrize("method", ["fork", pytest.param("spawn", marks=pytest.mark.slow)])
def test_ctrl_c_stops_workers_and_leaves_no_shared_memory(packed, method):
    d, _, _, _ = packed
    script = textwrap.dedent(f"""
        import signal, sys, time
        signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, even where launched in the background
        from imagenet_prep import open_split
        from imagenet_prep.stats import load_stats
        from trainer.data import InputTransform
        from trainer.loader import Loader, LoaderTuning
        ld = Loader(open_split({str(d)!r}, "train"), InputTransform(load_stats({str(d)!r})), batch_size=4, workers=2,
                    tuning=LoaderTuning(start_method=sys.argv[1]))
        for epoch in range(1000):
            for i, (x, y) in enumerate(ld):
                if epoch == 0 and i == 0:
                    shm = ld._pool.shm.name if ld._pool.shm is not None else "-"
                    print(shm, *[p.pid for p in ld._pool.procs], flush=True)
                time.sleep(0.01)
    """)
    p = subprocess.Popen([sys.executable, "-c", script, method], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, cwd=ROOT)
    shm, *pids = p.stdout.readline().split()
    pids = [int(x) for x in pids]
    assert len(pids) == 2
    # fork: the slots are anonymous shared memory, nothing named; spawn: a named block to unlink
    assert (shm == "-") == (method == "fork")
    time.sleep(0.3)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode != 0 and "KeyboardInterrupt" in err
    deadline = time.monotonic() + 5
    while [q for q in pids if _running(q)] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [q for q in pids if _running(q)]
    if shm != "-":
        assert not Path("/dev/shm", shm.lstrip("/")).exists()


def _running(pid):
    return Path(f"/proc/{pid}").exists() and _state(pid) != "Z"


def _state(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return "Z"


class WholeImageDecoder(Decoder):
    """A decoder of the shape a GPU decoder takes: the slot rows hold whole stored images (filled in the
    workers), cropped and mirrored only in `finish`, on the loader's device."""

    @staticmethod
    def row_shape(crop):
        return (256, 256, 3)

    def fill(self, dst, idx, tops, lefts, flips):
        for j, i in enumerate(idx.tolist()):
            self.split.read_image(i, out=dst[j])

    def finish(self, rows, tops, lefts, flips):
        c = self.crop
        out = [r[t:t + c, l_:l_ + c] for r, t, l_ in zip(rows, tops.tolist(), lefts.tolist())]
        return torch.stack([o.flip(1) if f else o for o, f in zip(out, flips.tolist())])


@pytest.mark.parametrize("workers", [0, 2])
def test_a_decoder_registered_from_outside_gives_the_same_batches(packed, monkeypatch, workers):
    _, split, stats, _ = packed
    monkeypatch.setitem(decoders.DECODERS, "whole", f"{__name__}:WholeImageDecoder")
    with Loader(split, InputTransform(stats), batch_size=4, workers=workers, seed=3) as ref, \
            Loader(split, InputTransform(stats), batch_size=4, workers=workers, seed=3, decoder="whole") as ld:
        assert all(torch.equal(a, b) and torch.equal(ya, yb) for (a, ya), (b, yb) in zip(ref, ld, strict=True))
    with pytest.raises(ImgnetError, match="decoder='nope'; expected one of cpu"):
        Loader(split, InputTransform(stats), decoder="nope")
