"""CPU training steps in float32 against bf16 autocast (`--amp bf16`), side by side, for cifar-quick and AlexNet.

    OMP_NUM_THREADS=2 python bench/cpu_amp.py [--rounds 5] [--quick-batch 100] [--alexnet-batch 8]

One run measures full SGD steps (forward, loss, backward, momentum update; the trainer's optimizer with the
model's own parameter groups) on a fixed synthetic batch at the 0-255 mean-subtracted input scale:
  cifar-quick: batch 100 of 32x32 (Caffe's quick recipe), AlexNet: a small batch of 224x224 (the paper's net).
Each model's fp32 and bf16 steps alternate in rounds after a warm-up; each figure is the fastest round (on a
shared machine the other processes only ever slow a round down), the median beside it.
`bf16_logit_err`: ||bf16 - fp32|| / ||fp32 - mean|| over the logits of one forward pass of the same weights
(how far the bf16 forward moves from float32, against the spread of the logits). The CPU's bf16 support (avx512_bf16,
amx_bf16) is read from /proc/cpuinfo. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from trainer.amp import autocast
from trainer.config import config_for
from trainer.models import registry
from trainer.train import make_optimizer


def cpu_bf16_flags() -> list[str]:
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return []
    flags = set(next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), []))
    return sorted(f for f in ("avx512_bf16", "amx_bf16") if f in flags)


def setup(arch: str, batch: int, side: int, classes: int):
    """(model, optimizer, x, y): the registered model with its recipe's optimizer, one fixed batch."""
    cfg = config_for(arch=arch, data="-", out="-")
    values = {**vars(cfg), "num_classes": classes, "side": side}
    torch.manual_seed(0)
    model, _ = registry.build(arch, registry.settings_of(arch, values))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, side, side, generator=g) * 60  # 0-255 scale, mean subtracted
    y = torch.randint(0, classes, (batch,), generator=g)
    return model, make_optimizer(model, cfg), x, y


def step(model, opt, x, y, amp: str) -> None:
    with autocast(amp, "cpu"):
        loss = F.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.float().backward()
    opt.step()


def logit_err(model, x) -> float:
    model.eval()  # no dropout: the two passes differ by their arithmetic only
    with torch.no_grad():
        ref = model(x).float()
        with autocast("bf16", "cpu"):
            got = model(x).float()
    return float((got - ref).norm() / (ref - ref.mean()).norm().clamp_min(1e-12))


def measure(arch: str, batch: int, side: int, rounds: int, steps: int) -> dict:
    model, opt, x, y = setup(arch, batch, side, 10 if arch.startswith("cifar") else 1000)
    times = {"fp32": [], "bf16": []}
    for amp in ("off", "bf16"):  # warm-up: first calls pick kernels and allocate
        step(model, opt, x, y, amp)
    for _ in range(rounds):
        for amp, key in (("off", "fp32"), ("bf16", "bf16")):
            t0 = time.perf_counter()
            for _ in range(steps):
                step(model, opt, x, y, amp)
            times[key].append((time.perf_counter() - t0) / steps)
    fp32, bf16 = min(times["fp32"]), min(times["bf16"])
    med = {k: round(statistics.median(v) * 1e3, 2) for k, v in times.items()}
    return {"batch": batch, "side": side, "fp32_ms": round(fp32 * 1e3, 2), "bf16_ms": round(bf16 * 1e3, 2),
            "fp32_median_ms": med["fp32"], "bf16_median_ms": med["bf16"],
            "fp32_img_s": round(batch / fp32, 1), "bf16_img_s": round(batch / bf16, 1),
            "bf16_speedup": round(fp32 / bf16, 3), "bf16_logit_err": round(logit_err(model, x[:8]), 5)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--quick-batch", type=int, default=100)
    ap.add_argument("--alexnet-batch", type=int, default=8)
    a = ap.parse_args()
    out = {"device": "cpu", "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
           "cpu_bf16": cpu_bf16_flags(), "torch": torch.__version__,
           "cifar_quick": measure("cifar-quick", a.quick_batch, 32, a.rounds, 5),
           "alexnet": measure("alexnet", a.alexnet_batch, 224, a.rounds, 1)}
    for name in ("cifar_quick", "alexnet"):
        r = out[name]
        print(f"{name:12s} batch {r['batch']:4d}: fp32 {r['fp32_ms']:8.1f} ms/step, bf16 {r['bf16_ms']:8.1f} ms/step "
              f"({r['bf16_speedup']:.2f}x), bf16 logit error {r['bf16_logit_err']:.2e}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
