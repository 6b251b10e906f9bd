"""trainer/hostmem.py: freed step-sized blocks stay in the process, so a step does not fault its pages in again."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STEPS = """
import resource, sys, torch
import torch.nn.functional as F
if sys.argv[1] == "keep":
    from trainer.hostmem import keep_freed_memory
    assert keep_freed_memory()
from trainer.cuda_convnet import CifarQuick
torch.manual_seed(0)
net = CifarQuick(num_classes=10, side=32).to(memory_format=torch.channels_last)
x = torch.randn(100, 3, 32, 32).contiguous(memory_format=torch.channels_last)
y = torch.randint(0, 10, (100,))
def step():  # cifar-quick's training step at its batch of 100: conv1's output alone is 13 MB
    net.zero_grad(set_to_none=True)
    F.cross_entropy(net(x), y).backward()
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    r = subprocess.run([sys.executable, "-c", STEPS, mode], cwd=ROOT, capture_output=True, text=True, check=True,
                       env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    return int(r.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc thresholds")
def test_freed_step_blocks_are_reused_not_faulted_in_again():
    pages = 100 * 32 * 32 * 32 * 4 // 4096  # conv1's output: 3,200 pages
    default, kept = _faults("default"), _faults("keep")
    assert default > 10 * pages  # glibc gives the step's blocks back and faults them in again, step after step
    assert kept * 10 < default  # kept: they come back from the heap, already mapped (about 20x fewer here)
