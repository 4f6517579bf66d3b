"""Inputs -> codes, the same path for validation, queries and the database in both
regimes: ``encode`` in eval mode without gradients, batch by batch on the method's device,
checked for shape and finiteness, binarised by the harness (``h >= 0`` -> 1)."""
from __future__ import annotations

import numpy as np
import torch

from ..errors import BenchmarkError
from ..eval.metrics import binarise
from ..method import HashMethod


@torch.no_grad()
def in_batches(fn, inputs: dict[str, torch.Tensor], batch_size: int, device=None) -> list:
    """``fn`` over consecutive batches of ``inputs`` (moved to ``device``), without gradients."""
    n = len(next(iter(inputs.values())))
    return [fn({k: v[s:s + batch_size].to(device) if device is not None else v[s:s + batch_size]
                for k, v in inputs.items()}) for s in range(0, n, batch_size)]


def encode_all(method: HashMethod, inputs: dict[str, torch.Tensor], batch_size: int = 256,
               device=None) -> np.ndarray:
    """0/1 uint8 codes (N, bits) of ``inputs``."""
    method.eval()
    n = len(next(iter(inputs.values())))
    values = torch.cat(in_batches(method.encode, inputs, batch_size, device))
    if values.shape != (n, method.bits):
        raise BenchmarkError(f"method {method.name!r}: encode returned shape "
                             f"{tuple(values.shape)}, expected ({n}, {method.bits})")
    if not torch.isfinite(values).all():
        raise FloatingPointError("encode returned non-finite values")
    return binarise(values)


def real_valued_all(method: HashMethod, inputs: dict[str, torch.Tensor], batch_size: int = 256,
                    device=None) -> np.ndarray | None:
    """The method's ``real_valued`` features as float32 (N, D), or None if it has none."""
    method.eval()
    parts = in_batches(method.real_valued, inputs, batch_size, device)
    if any(p is None for p in parts):
        return None
    return torch.cat(parts).float().cpu().numpy()
