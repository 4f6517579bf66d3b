"""What produced a measurement: package versions and a hardware id (CPU model, cores,
torch threads), stored with every record and printed by ``perf``."""
from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path

import torch


def versions() -> dict:
    out = {"python": platform.python_version()}
    for dist in ("torch", "numpy", "mmengine", "faiss-cpu", "pluggy", "fghashbench"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def hardware_id() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu} x{os.cpu_count()} threads={torch.get_num_threads()}"
