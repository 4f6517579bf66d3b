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
def in_batches(fn, inputs: dict[str, torch.Tensor], batch_size: int, device=None,
               positions: torch.Tensor | None = None) -> list:
    """``fn`` over consecutive batches of ``inputs`` (moved to ``device``), without gradients;
    with ``positions``, ``fn(batch, positions of the batch)``."""
    n = len(next(iter(inputs.values())))
    move = (lambda v: v.to(device)) if device is not None else (lambda v: v)
    return [fn({k: move(v[s:s + batch_size]) for k, v in inputs.items()},
               *(() if positions is None else (move(positions[s:s + batch_size]),)))
            for s in range(0, n, batch_size)]


def _binarised(method: HashMethod, values: torch.Tensor, n: int, hook: str) -> np.ndarray:
    """Check a hook's real values (shape (n, bits), finite) and binarise them."""
    if values.shape != (n, method.bits):
        raise BenchmarkError(f"method {method.name!r}: {hook} returned shape "
                             f"{tuple(values.shape)}, expected ({n}, {method.bits})")
    if not torch.isfinite(values).all():
        raise FloatingPointError(f"{hook} returned non-finite values")
    return binarise(values)


def encode_all(method: HashMethod, inputs: dict[str, torch.Tensor], batch_size: int = 256,
               device=None) -> np.ndarray:
    """0/1 uint8 codes (N, bits) of ``inputs``."""
    method.eval()
    n = len(next(iter(inputs.values())))
    return _binarised(method, torch.cat(in_batches(method.encode, inputs, batch_size, device)),
                      n, "encode")


def encode_database_all(method: HashMethod, inputs: dict[str, torch.Tensor], positions,
                        batch_size: int = 256, device=None) -> np.ndarray | None:
    """0/1 uint8 codes (N, bits) of training-split database samples (``inputs`` at training
    positions ``positions``) from the method's ``encode_database``; None when it gives none
    (the database is then encoded with ``encode``)."""
    method.eval()
    positions = torch.as_tensor(np.asarray(positions), dtype=torch.long)
    parts = in_batches(method.encode_database, inputs, batch_size, device, positions)
    if all(p is None for p in parts):
        return None
    if any(p is None for p in parts):
        raise BenchmarkError(f"method {method.name!r}: encode_database returned None for "
                             f"some batches only")
    return _binarised(method, torch.cat(parts), len(positions), "encode_database")


def real_valued_all(method: HashMethod, inputs: dict[str, torch.Tensor], batch_size: int = 256,
                    device=None) -> np.ndarray | None:
    """The method's ``real_valued`` features as float32 (N, D), or None if it has none."""
    method.eval()
    parts = in_batches(method.real_valued, inputs, batch_size, device)
    if any(p is None for p in parts):
        return None
    return torch.cat(parts).float().cpu().numpy()
