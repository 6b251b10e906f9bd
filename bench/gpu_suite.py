"""The CUDA paths proven in one short run: one command, its own data, one suite.json and one logs.tar.gz.

    python bench/gpu_suite.py --out OUT                  # on a CUDA machine: under 4.5 minutes
    python bench/gpu_suite.py --out OUT --dry-run        # any machine: every part, tiny, on the CPU
    python bench/gpu_suite.py --out OUT --dry-run --jobs 2   # the same, two parts side by side (CI)
    python bench/gpu_suite.py --out OUT --parts train,test   # rerun some parts (merged into OUT/suite.json)

Parts, in order, each in its own subprocess with its own time limit (a CUDA fault ruins the process
for every later part), a failure recorded with the tail of its log instead of stopping the rest:
  env         GPU, driver, torch, triton, cudnn, cores, Pillow flavour
  pytest      `pytest -m gpu`: passed, failed, skipped (and the names of the failures)
  data        generated 256x256 photo-like images, 1000 classes: raw train/val splits and a jpeg
              train split, stats (work folder; reused by a rerun)
  train_step  SGD steps, batch 128, bf16 autocast, channels_last, eager: ours (fused LRN) vs no LRN
              vs torch.nn.LocalResponseNorm (bench/train_step.py's variants, interleaved rounds)
  compiled    the same step under torch.compile (fullgraph first, so a graph break is recorded):
              ours and no LRN
  loader      the Loader delivering the float network input on the GPU, all cores but one; raw and jpeg
  train       `imgnet train` end to end, --amp bf16 --channels-last, two epochs: the second epoch's
              images_per_s (training steps only: no warm-up, validation or checkpoint writes)
  test        `imgnet test`, center and ten-crop, on the run's best.pt
  two_tower   the model-parallel AlexNet (cuda:0 and cuda:1, or both towers on cuda:0) against
              groups=2: forward and gradients equal; its step rate beside the grouped model's
  demo        `imgnet demo` on CUDA: its ten-crop top-1 error (goal <= 0.10)
Goals: ratio_vs_no_lrn >= 0.95 (eager), end_to_end_ratio = end_to_end_img_s / ours_img_s >= 0.9.
--dry-run runs the same code at tiny sizes on the CPU (float32; the compiled part uses the aot_eager
backend with IMGNET_LRN=fused, so the graph holds the LRN operator with its plain CPU kernel).

On the lent GPU machine (Python 3.12, torch and triton, h5py, joblib, click, tqdm, scipy, matplotlib,
pyarrow, stock Pillow; no lmdb and no package registry, so `pip install -e .` fails there), run from
source with PYTHONPATH and carry only the lmdb wheel. Here, once:

    pip download lmdb --only-binary=:all: --no-deps --python-version 3.12 \\
        --platform manylinux2014_x86_64 -d wheels/

(`wheels/` is git-ignored, so it is not committed; the device tool copies it over when named in its
carry list: carry=["wheels"]). There, in the repository root:

    for w in wheels/*.whl; do python3 -m zipfile -e "$w" /tmp/pydeps; done && \\
    PYTHONPATH=$PWD:/tmp/pydeps python3 bench/gpu_suite.py --out $OUT

A wheel is a zip: extracting it is the whole install; every subprocess of the suite inherits the
PYTHONPATH and runs the CLI's commands from this tree. The pytest part needs pytest there
too; should it be missing, carry its pure-Python wheels in wheels/ as well (pip download pytest -d
wheels/). About 4 minutes when every part passes: give the command a limit of some 330 s, so that
the device time left allows one rerun of the failed parts with `--parts`.

The last line printed is suite.json's flat figures as one JSON object. A rerun of failed parts,
`--parts a,b --out OUT`, keeps the other parts' records (from OUT/suite.json, or from the work
folder's copy when OUT is a fresh folder, as the device tool's $OUT is on each call).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

# part -> (seconds allowed on a GPU, seconds allowed in a dry run: generous, for a loaded CI machine)
LIMITS = {"env": (30, 60), "pytest": (120, 90), "data": (90, 60), "train_step": (60, 90), "compiled": (150, 120),
          "loader": (45, 60), "train": (90, 120), "test": (45, 90), "two_tower": (40, 90), "demo": (90, 120)}
PARTS = tuple(LIMITS)
NEEDS = {"loader": ("data",), "train": ("data",), "test": ("train",)}  # parts that use another's output


# ------------------------------------------------------------------------------------ sizes
def sizes(dry: bool) -> dict:
    """Every size the parts use; a dry run is tiny, so the whole suite runs on a 2-core CPU in seconds."""
    if dry:
        return dict(classes=10, train=8, val=4, jpeg=8, pool=4, batch=2, steps=1, warmup=1, rounds=1,
                    epochs=1, loader_batches=4, mp_batch=2, workers=1, amp=None)
    cores = os.cpu_count() or 2
    # 24,576 raw train images (4.8 GB): 192 steps of 128 per epoch, long enough for the rate to settle
    return dict(classes=1000, train=24576, val=4096, jpeg=4096, pool=256, batch=128, steps=30, warmup=10,
                rounds=3, epochs=2, loader_batches=160, mp_batch=128, workers=max(1, cores - 1), amp="bf16")


def device_of(dry: bool):
    import torch

    return torch.device("cpu" if dry else "cuda")


def make_loader(split, stats, channels_last: bool = False, **kw):
    """The one place this script builds a trainer.loader.Loader (the training input: lighting on)."""
    from trainer.data import InputTransform
    from trainer.loader import Loader

    return Loader(split, InputTransform(stats, channels_last=channels_last), **kw)


# ------------------------------------------------------------------------------------ parts
def part_env(work: Path, dry: bool) -> dict:
    import torch

    out = {"torch": torch.__version__, "cuda": torch.version.cuda, "cores": os.cpu_count(),
           "python": sys.version.split()[0], "cuda_available": torch.cuda.is_available()}
    try:
        import triton

        out["triton"] = triton.__version__
    except ImportError as e:
        out["triton"] = f"not importable: {e}"
    from imagenet_prep.resize import pillow_flavour

    try:
        out["pillow"] = pillow_flavour()
    except Exception as e:  # stock Pillow on the lent machine is fine for these checks
        out["pillow"] = f"unknown ({e})"
    if torch.cuda.is_available():
        out["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        p = torch.cuda.get_device_properties(0)
        out.update(capability=f"{p.major}.{p.minor}", gpu_mem_gib=round(p.total_memory / 2**30, 1),
                   cudnn=torch.backends.cudnn.version())
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        out["driver"] = smi.stdout.strip().splitlines()[0] if smi.returncode == 0 and smi.stdout.strip() else None
    except (OSError, subprocess.TimeoutExpired):
        out["driver"] = None
    return out


def part_pytest(work: Path, dry: bool) -> dict:
    import importlib.util

    if importlib.util.find_spec("pytest") is None:
        raise RuntimeError("pytest is not importable here; carry its pure-Python wheels too (pip download pytest "
                           "-d wheels/) and extract each into the PYTHONPATH folder like lmdb's")
    # the files that hold gpu-marked tests (collecting the rest only to deselect it costs seconds)
    files = [str(f) for f in sorted((ROOT / "tests").glob("test_*.py")) if "mark.gpu" in f.read_text()]
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rfE", "-p", "no:cacheprovider", *files]
    r = subprocess.run(cmd, cwd=ROOT, env=child_env(), capture_output=True, text=True)
    print(r.stdout[-20000:], r.stderr[-5000:], sep="\n")
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", r.stdout)}
    failures = re.findall(r"^(?:FAILED|ERROR) (\S+)", r.stdout, re.M)
    if r.returncode not in (0, 1, 5) or not counts:  # 1: some failed (counted); 5: nothing collected
        raise RuntimeError(f"pytest exited {r.returncode} without a summary line")
    return {"pytest_passed": counts.get("passed", 0), "pytest_failed": counts.get("failed", 0)
            + counts.get("error", 0) + counts.get("errors", 0), "pytest_skipped": counts.get("skipped", 0),
            "pytest_failures": failures[:30]}


def part_data(work: Path, dry: bool) -> dict:
    return ensure_data(work, dry)


def ensure_data(work: Path, dry: bool) -> dict:
    """work/data (raw train + val, 1000 classes), work/jpeg (jpeg train); made once, reused by reruns."""
    import numpy as np

    from imagenet_prep.atomic import write_json
    from imagenet_prep.stats import compute_stats
    from imagenet_prep.store import write_split
    from loader_throughput import photo_like

    done = work / "data.json"
    if done.is_file():
        return json.loads(done.read_text())
    s = sizes(dry)
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    pool = [photo_like(rng) for _ in range(s["pool"])]  # distinct pictures, reused under many labels

    def records(n, prefix):
        return [(pool[i % len(pool)], i % s["classes"], f"{prefix}_{i:08d}.JPEG") for i in range(n)]

    for d in (work / "data", work / "jpeg"):
        shutil.rmtree(d, ignore_errors=True)
    write_split(work / "data", "train", records(s["train"], "train"), num_classes=s["classes"])
    write_split(work / "data", "val", records(s["val"], "val"), num_classes=s["classes"])
    compute_stats(work / "data", sample=min(s["train"], 2048), workers=s["workers"], progress=False)
    write_split(work / "jpeg", "train", records(s["jpeg"], "train"), encoding="jpeg", quality=90,
                num_classes=s["classes"])
    for f in ("stats.json", "stats.h5"):
        shutil.copy(work / "data" / f, work / "jpeg" / f)
    info = {"data_train_images": s["train"], "data_val_images": s["val"], "data_jpeg_images": s["jpeg"],
            "data_classes": s["classes"], "data_build_s": round(time.perf_counter() - t0, 1),
            "data_disk_gb": round(sum(f.stat().st_size for f in work.rglob("*") if f.is_file()) / 1e9, 2)}
    write_json(done, info)
    return info


def part_train_step(work: Path, dry: bool) -> dict:
    import statistics

    import torch

    import train_step as ts

    s, dev = sizes(dry), device_of(dry)
    x, y, amp = _batch(s, dev)
    models = {v: ts.build(v, dev, channels_last=True) for v in ts.VARIANTS}
    steps = {v: ts.make_step(m, x, y, amp) for v, m in models.items()}
    lrn1 = models["ours"].features.lrn1
    lrn_path = "triton" if lrn1.fused(torch.empty(1, 96, 1, 1, device=dev).contiguous(
        memory_format=torch.channels_last)) else "plain"
    for v in ts.VARIANTS:
        for _ in range(s["warmup"]):
            steps[v]()
    rates = {v: [] for v in ts.VARIANTS}
    for _ in range(s["rounds"]):  # interleaved: a drift of the clock or the load hits every variant alike
        for v in ts.VARIANTS:
            rates[v].append(ts.images_per_s(steps[v], s["batch"], s["steps"], dev))
    med = {v: statistics.median(r) for v, r in rates.items()}
    return {"ours_img_s": round(med["ours"], 1), "no_lrn_img_s": round(med["no_lrn"], 1),
            "torch_lrn_img_s": round(med["torch_lrn"], 1), "ratio_vs_no_lrn": round(med["ours"] / med["no_lrn"], 4),
            "ratio_vs_torch_lrn": round(med["ours"] / med["torch_lrn"], 4), "lrn_path": lrn_path,
            "step_batch": s["batch"], "step_dtype": f"{amp}-autocast" if amp else "float32", "step_channels_last": True}


def _batch(s: dict, dev):
    import torch

    torch.manual_seed(0)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    x = (torch.randn(s["batch"], 3, 224, 224, device=dev) * 60).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (s["batch"],), device=dev)
    return x, y, (torch.bfloat16 if s["amp"] == "bf16" else None)


def part_compiled(work: Path, dry: bool) -> dict:
    import torch

    import train_step as ts

    s, dev = sizes(dry), device_of(dry)
    x, y, amp = _batch(s, dev)
    backend = "aot_eager" if dry else "inductor"
    out = {"compile_backend": backend}
    for v, key in (("ours", "compiled_img_s"), ("no_lrn", "compiled_no_lrn_img_s")):
        model = ts.build(v, dev, channels_last=True)
        t0 = time.perf_counter()
        try:
            step = ts.make_step(torch.compile(model, fullgraph=True, backend=backend), x, y, amp)
            step()
            out[f"compiled_{v}_fullgraph"] = True
        except Exception as e:  # a graph break: record it, then time the model compiled with breaks
            out[f"compiled_{v}_fullgraph"] = f"{type(e).__name__}: {str(e)[:300]}"
            torch._dynamo.reset()
            step = ts.make_step(torch.compile(model, backend=backend), x, y, amp)
            step()
        out[f"compiled_{v}_compile_s"] = round(time.perf_counter() - t0, 1)
        for _ in range(s["warmup"]):
            step()
        out[key] = round(ts.images_per_s(step, s["batch"], s["steps"] * s["rounds"], dev), 1)
    return out


def part_loader(work: Path, dry: bool) -> dict:
    import torch

    from imagenet_prep import open_split
    from imagenet_prep.stats import load_stats

    ensure_data(work, dry)
    s, dev = sizes(dry), device_of(dry)
    out = {"loader_workers": s["workers"], "loader_batch": s["batch"]}
    for enc, folder in (("raw", work / "data"), ("jpeg", work / "jpeg")):
        ld = make_loader(open_split(folder, "train"), load_stats(folder), batch_size=s["batch"],
                         workers=s["workers"], seed=0, device=dev, channels_last=True)
        try:
            for _ in ld:  # warm-up epoch: starts the workers, fills the page cache
                pass
            n, t0 = 0, time.perf_counter()
            while n < s["loader_batches"]:
                for x, _y in ld:
                    n += 1
                    if n == s["loader_batches"]:
                        break
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            out[f"loader_{enc}_img_s"] = round(n * s["batch"] / (time.perf_counter() - t0), 1)
            out[f"loader_{enc}_output"] = f"{x.dtype} {tuple(x.shape)} on {x.device}"
        finally:
            ld.close()
    return out


def part_train(work: Path, dry: bool) -> dict:
    from trainer.plot import read_log

    ensure_data(work, dry)
    s = sizes(dry)
    run = work / "run"
    shutil.rmtree(run, ignore_errors=True)
    cmd = ["train", "--data", str(work / "data"), "--out", str(run), "--epochs", str(s["epochs"]),
           "--batch-size", str(s["batch"]), "--workers", str(s["workers"]), "--channels-last"]
    cmd += ["--device", "cpu"] if dry else ["--device", "cuda", "--amp", "bf16"]
    cli(cmd)
    log = read_log(run / "log.jsonl")
    last = log[-1]  # the last epoch: its loader and cudnn are warm; its rate counts training steps only
    return {"end_to_end_img_s": round(last["images_per_s"], 1), "e2e_epochs": len(log),
            "e2e_first_epoch_img_s": round(log[0]["images_per_s"], 1),
            "e2e_train_seconds": round(last["train_seconds"], 2), "e2e_n_train": last["n_train"],
            "e2e_val_top1_err": last["val_top1_err"]}


def part_test(work: Path, dry: bool) -> dict:
    s = sizes(dry)
    ckpt = work / "run" / "checkpoints" / "best.pt"
    if not ckpt.is_file():
        raise RuntimeError(f"{ckpt} is missing: the train part must succeed first")
    out = {}
    for view, flag in (("center", []), ("ten_crop", ["--ten-crop"])):
        cmd = ["test", "--data", str(work / "data"), "--ckpt", str(ckpt), "--batch-size", str(s["batch"]),
               "--workers", str(s["workers"]), *flag]
        cmd += ["--device", "cpu"] if dry else ["--device", "cuda", "--amp", "bf16"]
        cli(cmd)
        report = json.loads((ckpt.parent / f"test-{ckpt.stem}-{view.replace('_', '-')}.json").read_text())
        out[f"test_{view}_img_s"] = round(report["images_per_s"], 1)
        out[f"test_{view}_n"] = report["n"]
    return out


def part_two_tower(work: Path, dry: bool) -> dict:
    import torch
    import torch.nn.functional as F

    from trainer.model import CONVS, FCS, AlexNet, ModelParallelAlexNet

    import train_step as ts

    s, dev = sizes(dry), device_of(dry)
    devices = (dev, torch.device("cuda:1")) if dev.type == "cuda" and torch.cuda.device_count() > 1 else (dev, dev)
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # exact float32 compare
    torch.manual_seed(0)
    grouped = AlexNet(dropout=0.0).to(dev)  # no dropout: both nets compute one deterministic function
    mp = ModelParallelAlexNet.from_grouped(grouped, devices)
    x = torch.randn(s["mp_batch"], 3, 224, 224, device=dev) * 60
    y = torch.randint(0, 1000, (s["mp_batch"],), device=dev)
    outs = []
    for net in (grouped, mp):
        logits = net(x)
        F.cross_entropy(logits, y).backward()
        outs.append(logits.detach())
    fwd = (outs[0] - outs[1]).abs().max().item() / outs[0].abs().max().item()
    grad = 0.0
    for layer in CONVS + FCS:
        g_ref = grouped.get_submodule(("features." if layer in CONVS else "classifier.") + layer).weight.grad
        g_mp = torch.cat([t.layer(layer).weight.grad.to(dev) for t in mp.towers], 0)
        grad = max(grad, (g_ref - g_mp).abs().max().item() / g_ref.abs().max().item())
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32  # the rates as trained
    x, y, amp = _batch({**s, "batch": s["mp_batch"]}, dev)
    rates = {name: ts.images_per_s(ts.make_step(net, x, y, amp), s["mp_batch"], s["steps"], dev)
             for name, net in (("grouped", grouped), ("model_parallel", mp))}
    return {"two_tower_devices": [str(d) for d in devices], "two_tower_forward_rel_err": fwd,
            "two_tower_grad_rel_err": grad, "two_tower_equal": fwd < 1e-4 and grad < 1e-4, "two_tower_img_s": round(rates["model_parallel"], 1),
            "grouped_img_s": round(rates["grouped"], 1)}


def part_demo(work: Path, dry: bool) -> dict:
    from trainer.demo import DemoConfig, run_demo

    out = work / "demo"
    shutil.rmtree(out, ignore_errors=True)
    cfg = DemoConfig(out=str(out))  # `imgnet demo`'s defaults; device auto: CUDA where present
    if dry:
        cfg = DemoConfig(out=str(out), classes=2, train_per_class=4, val_per_class=2, epochs=1, batch_size=2)
    r = run_demo(cfg)
    return {"demo_top1_err": r["test"]["top1_err"], "demo_top5_err": r["test"]["top5_err"],
            "demo_n": r["test"]["n"], "demo_seconds": round(r["seconds"], 1), "demo_classes": cfg.classes}


# ------------------------------------------------------------------------------------ plumbing
def child_env() -> dict:
    """The environment of every subprocess: this source tree first on PYTHONPATH (no install needed)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env


def cli(args: list[str]) -> None:
    """Run `imgnet ARGS` from source in this part's process (cli.py's click group, as `python -m cli` runs
    it, without a second interpreter start), its output into this part's log."""
    import cli as imgnet

    print("$ imgnet " + " ".join(args), flush=True)
    try:
        imgnet.main.main(args, prog_name="imgnet", standalone_mode=False)
    except SystemExit as e:  # the commands' one-line errors exit 2, Ctrl-C 130
        if e.code:
            raise RuntimeError(f"imgnet {args[0]} exited {e.code}") from None
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


def run_child(part: str, work: Path, dry: bool) -> None:
    """In the part's own process: run it and write work/results/PART.json."""
    if dry and part == "compiled":
        os.environ["IMGNET_LRN"] = "fused"  # the LRN operator in the CPU graph (its plain kernel)
    result = globals()[f"part_{part}"](work, dry)
    from imagenet_prep.atomic import write_json

    write_json(work / "results" / f"{part}.json", result)
    print(json.dumps(result))


def run_part(part: str, work: Path, logs: Path, dry: bool, scale: float) -> dict:
    """Run one part in a subprocess under its time limit; a record, whatever happens."""
    limit = max(0.1, LIMITS[part][1 if dry else 0] * scale)
    res_file = work / "results" / f"{part}.json"
    res_file.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", part, "--work", str(work)]
    cmd += ["--dry-run"] if dry else []
    t0 = time.perf_counter()
    with open(logs / f"{part}.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=child_env(), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)  # its own group: a timeout ends its children too
        try:
            code = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
            code = None
    rec = {"seconds": round(time.perf_counter() - t0, 1), "limit_s": round(limit, 1)}
    if code == 0 and res_file.is_file():
        return {"ok": True, **rec, "result": json.loads(res_file.read_text())}
    tail = (logs / f"{part}.log").read_text(errors="replace")[-1500:]
    why = f"timed out after {limit:.0f} s" if code is None else f"exit code {code}"
    return {"ok": False, **rec, "error": why, "log_tail": tail}


def run_parts(parts: list[str], jobs: int, run, record) -> None:
    """run(part) for each part, `jobs` at a time, each once the parts it NEEDS (among those asked) have
    ended, in the order given otherwise; record(part, result) in this thread as each one ends."""
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    pending, running, ended = list(parts), {}, set()
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        while pending or running:
            for part in list(pending):
                if len(running) < jobs and all(n in ended or n not in parts for n in NEEDS.get(part, ())):
                    pending.remove(part)
                    running[pool.submit(run, part)] = part
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for f in done:
                part = running.pop(f)
                record(part, f.result())
                ended.add(part)


def flat(parts: dict) -> dict:
    """The figures of every successful part in one dict, plus the cross-part ratio."""
    out = {}
    for rec in parts.values():
        if rec.get("ok"):
            out.update({k: v for k, v in rec["result"].items() if not isinstance(v, (dict, list))})
    if out.get("end_to_end_img_s") and out.get("ours_img_s"):
        out["end_to_end_ratio"] = round(out["end_to_end_img_s"] / out["ours_img_s"], 4)
    return out


GOALS = {"ratio_vs_no_lrn": (">=", 0.95), "end_to_end_ratio": (">=", 0.9), "demo_top1_err": ("<=", 0.10),
         "two_tower_equal": ("==", True), "pytest_failed": ("==", 0), "compiled_ours_fullgraph": ("==", True)}


def goals(fig: dict) -> dict:
    """Each goal of the issue: met (true), missed (false) or not measured (null)."""
    ops = {">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b, "==": lambda a, b: a == b}
    return {f"{k} {op} {ref}": (None if k not in fig else bool(ops[op](fig[k], ref))) for k, (op, ref) in GOALS.items()}


def write_outputs(out: Path, suite: dict, logs: Path) -> None:
    from imagenet_prep.atomic import write_json

    write_json(out / "suite.json", suite)
    write_json(logs.parent / "suite.json", suite)  # the work folder's copy, for a later --parts rerun
    with tarfile.open(out / "logs.tar.gz", "w:gz") as tar:
        tar.add(logs, arcname="logs")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=None, help="folder for suite.json and logs.tar.gz (required)")
    p.add_argument("--dry-run", action="store_true", help="every part at tiny sizes on the CPU")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    p.add_argument("--work", default=None, help="data, runs and logs [default: a folder in the temp dir]")
    p.add_argument("--timeout-scale", type=float, default=1.0, help="multiply every part's time limit")
    p.add_argument("--jobs", type=int, default=1,
                   help="with --dry-run: parts run side by side, a part after those it needs (on a GPU each "
                        "part runs alone, so that its timings are its own)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child is None and not args.out:
        p.error("--out is required")
    bad = [x for x in args.parts.split(",") if x not in PARTS]
    if bad:
        p.error(f"unknown part(s) {', '.join(bad)}; expected some of {', '.join(PARTS)}")
    if args.jobs < 1 or args.jobs > 1 and not args.dry_run:
        p.error(f"--jobs {args.jobs}: expected 1, or more only with --dry-run (GPU timings need each part alone)")
    return args


def main(argv=None) -> dict | None:
    args = parse_args(argv)
    dry = args.dry_run
    work = Path(args.work or Path(tempfile.gettempdir()) / f"imgnet-gpu-suite{'-dry' if dry else ''}")
    if args.child:
        return run_child(args.child, work, dry)
    out = Path(args.out)
    logs = work / "logs"
    for d in (out, logs, work / "results"):
        d.mkdir(parents=True, exist_ok=True)
    # a rerun starts from the last record: OUT's, or the work folder's copy (the device tool's $OUT starts empty)
    old = next((f for f in (out / "suite.json", work / "suite.json") if f.is_file()), None)
    suite = json.loads(old.read_text()) if old else {}
    if suite.get("dry_run", dry) != dry:
        suite = {}  # a dry run's records never mix with a real run's
    suite.update(dry_run=dry, started=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    suite.setdefault("parts", {})
    t0 = time.perf_counter()

    def record(part: str, rec: dict) -> None:
        suite["parts"][part] = rec
        print(f"{part:>10}: {'ok' if rec['ok'] else 'FAILED (' + rec['error'] + ')'} in {rec['seconds']} s", flush=True)
        suite["figures"] = flat(suite["parts"])
        suite["goals"] = goals(suite["figures"])
        suite["seconds"] = round(time.perf_counter() - t0, 1)
        write_outputs(out, suite, logs)  # after every part: a kill of the whole run keeps what was done

    run_parts([x for x in PARTS if x in args.parts.split(",")], args.jobs,
              lambda part: run_part(part, work, logs, dry, args.timeout_scale), record)
    suite["parts"] = {p: suite["parts"][p] for p in PARTS if p in suite["parts"]}  # the suite's order
    suite["failed"] = sorted(p for p, r in suite["parts"].items() if not r["ok"])
    write_outputs(out, suite, logs)
    missed = sorted(g for g, ok in suite["goals"].items() if ok is False)
    print(json.dumps({**suite["figures"], "failed": suite["failed"], "goals_missed": missed, "seconds": suite["seconds"]}))
    return suite


if __name__ == "__main__":
    main()
