"""Where a run computes (``--device``) and in which precision (``--precision``).

``auto`` is the first GPU when torch sees one, else the CPU. Precision is for the finetune
regime: ``bf16``/``fp16`` run the forward passes (backbone and method loss) under
``torch.autocast``; ``fp16`` also scales the loss with a ``GradScaler`` (its dynamic range
is too small for raw gradients). The backward pass and optimiser steps run outside autocast.
"""
from __future__ import annotations

import contextlib
import os
import re

import torch

from ..errors import BenchmarkError

DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_device(name: str) -> None:
    """One-line error unless ``name`` is auto, cpu, cuda or cuda:N of a GPU present here."""
    if not DEVICE_PATTERN.match(name or ""):
        raise BenchmarkError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise BenchmarkError(f"--device {name}: no CUDA GPU is available to torch "
                                 f"{torch.__version__} here (use --device cpu or auto)")
        index = int(name.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise BenchmarkError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) "
                                 f"(cuda:0..cuda:{torch.cuda.device_count() - 1})")


def resolve_device(name: str = "auto") -> torch.device:
    """The torch device of ``--device`` (checked with :func:`check_device`)."""
    check_device(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        name = f"cuda:{torch.cuda.current_device()}"
    return torch.device(name)


def device_label(device: torch.device) -> str:
    """What the record says about the device: ``cpu`` or ``cuda:0 (NVIDIA H200)``."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def default_workers(device: torch.device) -> int:
    """Image-loading worker processes when ``--workers`` is not given: none on the CPU
    (decoding is a few percent of a CPU step), up to 8 beside a GPU."""
    return 0 if device.type == "cpu" else min(8, os.cpu_count() or 1)


class Amp:
    """Autocast context and (fp16 only) gradient scaler of one run."""

    def __init__(self, device: torch.device, precision: str = "fp32"):
        if precision not in PRECISIONS:
            raise BenchmarkError(f"--precision must be one of {', '.join(PRECISIONS)}, "
                                 f"got {precision!r}")
        self.device, self.precision, self.dtype = torch.device(device), precision, PRECISIONS[precision]
        self.scaler = torch.amp.GradScaler(self.device.type) if precision == "fp16" else None

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward_and_step(self, loss: torch.Tensor, optimizers: list) -> None:
        """``loss.backward()`` then every optimiser's step (through the scaler for fp16)."""
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            for optimizer in optimizers:
                optimizer.step()
            return
        self.scaler.scale(loss).backward()
        for optimizer in optimizers:
            self.scaler.step(optimizer)
        self.scaler.update()
