"""What produced a measurement: package versions and a hardware id (CPU model and
generation, torch's CPU kernel set, cores, torch threads), stored with every record and
printed by ``perf``."""
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
    """``<model name> (family F model M, <torch CPU kernels>) x<cores> threads=<torch threads>``:
    family and model tell apart CPU generations that share a model name (a virtual machine's
    plain "AMD EPYC"), the kernel set (e.g. AVX2, AVX512) the float code paths they take."""
    cpu, fields = platform.processor() or platform.machine(), {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = (part.strip() for part in line.partition(":"))
            if not key:
                break  # the first processor's block is enough
            fields.setdefault(key, value)
    except OSError:
        pass
    cpu = fields.get("model name", cpu)
    parts = [f"family {fields['cpu family']} model {fields['model']}"] \
        if "cpu family" in fields and "model" in fields else []
    parts.append(torch.backends.cpu.get_cpu_capability())
    return f"{cpu} ({', '.join(parts)}) x{os.cpu_count()} threads={torch.get_num_threads()}"
