"""Training images/s of AlexNet with our LRN, side by side with (b) no LRN and (c) torch's LRN.

    python bench/train_step.py                     # CUDA if present, else a small CPU run
    python bench/train_step.py --data DATA         # also the end-to-end rate of `imgnet train`

One run measures, on synthetic batches already on the device, full SGD steps (forward, loss,
backward, momentum update) of
  (a) ours:      AlexNet() with trainer.lrn.LocalResponseNorm (the fused Triton kernels on CUDA),
  (b) no_lrn:    AlexNet(lrn="none"), the upper bound the LRN layers can approach,
  (c) torch_lrn: AlexNet() with torch.nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2) (eager) in
                 place of ours: alpha/n = the paper's 1e-4; its windows cross the tower boundary,
                 a slightly cheaper function than the paper's, so the comparison favours it.
CUDA: batch 128, bf16 autocast, channels_last (the target on an H100: ours >= 0.95x no_lrn).
CPU: batch 8, float32, a few steps: a smoke run of the same code; the fused kernels do not run
there (the plain path does), and on a shared machine its ratios are mostly noise.
Variants are measured in interleaved rounds; each figure is the median over rounds. A small LRN-only
fwd+bwd timing at conv1 and conv2 shapes is reported too (lrn_ms_ours, lrn_ms_torch).

With --data, `imgnet train --data DATA --out TMP --epochs 1 --batch-size B --device D` (plus
`--amp bf16 --channels-last` on CUDA, plus --train-args) runs in a subprocess and the images_per_s
of its epoch (RUN/log.jsonl) is end_to_end_img_s; without --data it is null.
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from trainer.model import AlexNet

VARIANTS = ("ours", "no_lrn", "torch_lrn")


def build(variant: str, device: torch.device, channels_last: bool) -> torch.nn.Module:
    model = AlexNet(lrn="none" if variant == "no_lrn" else "paper")
    if variant == "torch_lrn":
        for name in ("lrn1", "lrn2"):
            setattr(model.features, name, torch.nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0))
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(model, x, y, amp_dtype):
    # section 5: SGD, momentum 0.9, weight decay 5e-4, lr 0.01
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    model.train()

    def step():
        with torch.autocast(x.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def images_per_s(step, batch: int, steps: int, device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return batch * steps / (time.perf_counter() - t0)


def lrn_ms(module, shapes, device, dtype, channels_last, reps) -> float:
    """Milliseconds of one forward + backward over all `shapes` (the LRN layers of one step)."""
    xs = []
    for shape in shapes:
        x = torch.randn(shape, device=device, dtype=dtype) * 30
        xs.append((x.contiguous(memory_format=torch.channels_last) if channels_last else x).requires_grad_())
    gs = [torch.randn_like(x) for x in xs]

    def once():
        for x, g in zip(xs, gs):
            module(x).backward(g)

    once()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        once()
    sync(device)
    return (time.perf_counter() - t0) / reps * 1e3


def end_to_end(data: str, extra: list[str]) -> float | None:
    """images_per_s of one epoch of `imgnet train` on a packed split (None when it fails)."""
    with tempfile.TemporaryDirectory(prefix="imgnet-bench-") as tmp:
        run = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "cli", "train", "--data", data, "--out", str(run), "--epochs", "1", *extra]
        print("end to end:", shlex.join(cmd), flush=True)
        r = subprocess.run(cmd, cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True)
        log = run / "log.jsonl"
        if r.returncode != 0 or not log.is_file():
            print(f"imgnet train failed (exit {r.returncode}):\n{r.stderr[-2000:]}", file=sys.stderr)
            return None
        lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        return float(lines[-1]["images_per_s"]) if lines else None


def main(argv=None) -> dict:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    p.add_argument("--batch-size", type=int, default=None, help="[default: 128 on CUDA, 8 on CPU]")
    p.add_argument("--steps", type=int, default=None, help="timed steps per round [default: 50 on CUDA, 2 on CPU]")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first [default: 10 on CUDA, 1 on CPU]")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (the median counts) [default: 3]")
    p.add_argument("--data", default=None, help="packed data folder: also time `imgnet train` end to end")
    p.add_argument("--train-args", default="", help="extra options for `imgnet train`, e.g. \"--workers 8\"")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    batch = args.batch_size or (128 if on_gpu else 8)
    steps = args.steps or (50 if on_gpu else 2)
    warmup = args.warmup if args.warmup is not None else (10 if on_gpu else 1)
    rounds = args.rounds or 3
    amp_dtype = torch.bfloat16 if on_gpu else None
    channels_last = on_gpu
    if on_gpu:
        torch.backends.cudnn.benchmark = True
        name = f"cuda: {torch.cuda.get_device_name(device)}"
    else:
        name = f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(f"device {name}; batch {batch}, {steps} steps x {rounds} rounds after {warmup} warmup; "
          f"{'bf16 autocast, channels_last' if on_gpu else 'float32'}", flush=True)

    torch.manual_seed(0)
    x = torch.randn(batch, 3, 224, 224, device=device) * 60  # 0-255 scale minus the mean
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), device=device)
    models = {v: build(v, device, channels_last) for v in VARIANTS}
    steps_fn = {v: make_step(m, x, y, amp_dtype) for v, m in models.items()}
    lrn_path = "triton" if models["ours"].features.lrn1.fused(torch.empty(1, 96, 1, 1, device=device)) else "plain"
    for v in VARIANTS:
        for _ in range(warmup):
            steps_fn[v]()
    rates = {v: [] for v in VARIANTS}
    for r in range(rounds):
        for v in VARIANTS:
            rates[v].append(images_per_s(steps_fn[v], batch, steps, device))
            print(f"round {r + 1} {v:>9}: {rates[v][-1]:9.1f} img/s", flush=True)
    med = {v: statistics.median(rates[v]) for v in VARIANTS}

    ours_lrn = models["ours"].features.lrn1  # groups=2 like lrn2; conv1 and conv2 output shapes
    shapes = [(batch, 96, 55, 55), (batch, 256, 27, 27)]
    lrn_dtype = amp_dtype or torch.float32
    reps = 20 if on_gpu else 2
    ms_ours = lrn_ms(ours_lrn, shapes, device, lrn_dtype, channels_last, reps)
    ms_torch = lrn_ms(torch.nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0), shapes, device, lrn_dtype,
                      channels_last, reps)
    print(f"LRN layers alone, fwd+bwd per step: ours {ms_ours:.2f} ms, torch {ms_torch:.2f} ms ({lrn_path} path)")
    del models, steps_fn

    e2e = None
    if args.data:
        train_args = ["--batch-size", str(batch), "--device", args.device]
        train_args += ["--amp", "bf16", "--channels-last"] if on_gpu else []
        e2e = end_to_end(args.data, train_args + shlex.split(args.train_args))
    result = {
        "ours_img_s": round(med["ours"], 1),
        "no_lrn_img_s": round(med["no_lrn"], 1),
        "torch_lrn_img_s": round(med["torch_lrn"], 1),
        "ratio_vs_no_lrn": round(med["ours"] / med["no_lrn"], 4),
        "ratio_vs_torch_lrn": round(med["ours"] / med["torch_lrn"], 4),
        "end_to_end_img_s": None if e2e is None else round(e2e, 1),
        "device": name,
        "batch_size": batch,
        "dtype": "bf16-autocast" if amp_dtype else "float32",
        "lrn_path": lrn_path,
        "lrn_ms_ours": round(ms_ours, 3),
        "lrn_ms_torch": round(ms_torch, 3),
    }
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
