"""Mixed precision of the forward pass, for training and evaluation alike (`--amp`)."""

from __future__ import annotations

import contextlib

import torch


def autocast(amp: str, device_type: str):
    """amp "off": float32; "bf16" or "fp16": autocast on the device (training and evaluation alike)."""
    if amp == "off":
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)

