"""Cached features read on demand: :class:`FeatureView`, the rows of one output that a run
uses, as float32 tensors a batch at a time.

A run never holds a whole split's stage maps as float32: training batches, encoding,
validation and ``on_epoch_start`` read the rows they need from the cache file. The rows are
read with ordinary file reads at their offsets, not through the memory map's pages: pages a
process touches in a map count towards its resident memory, so a run that walked the
whole map would grow to the file's size (the kernel's page cache still caches the file).
Values are exactly those of ``np.asarray(array[rows], dtype=np.float32)``; a view made with
``channels_last`` lays 4-D rows out channels-last (``HashMethod.channels_last_inputs``), the
same values written in that order by the one float16 -> float32 conversion.
"""
from __future__ import annotations

import math

import numpy as np
import torch

CHUNK = 512  # rows per read for the view's own reductions


def read_rows(array: np.memmap, rows: np.ndarray, channels_last: bool = False) -> np.ndarray:
    """``array[rows]`` as float32, from a file-backed ``.npy`` memory map: positioned
    reads (one per run of consecutive rows, in file order) straight into one buffer, then
    one conversion into the rows' order (and, for 4-D rows with ``channels_last``, into
    that layout). A fixed number of allocations per call however scattered the rows are
    (an array per run fragmented the C heap: resident memory grew with the reads)."""
    row_shape = tuple(array.shape[1:])
    row_bytes = math.prod(row_shape) * array.dtype.itemsize
    channels_last = channels_last and len(row_shape) == 3
    if channels_last:  # (N, H, W, C) memory seen as (N, C, H, W)
        out = np.empty((len(rows),) + row_shape[1:] + row_shape[:1], dtype=np.float32)
        out = out.transpose(0, 3, 1, 2)
    else:
        out = np.empty((len(rows),) + row_shape, dtype=np.float32)
    if not len(rows):
        return out
    if rows.min() < 0 or rows.max() >= len(array):
        raise IndexError(f"rows outside 0..{len(array) - 1} of {array.filename}")
    order = np.argsort(rows, kind="stable")
    ordered = rows[order]
    packed = np.empty((len(rows),) + row_shape, dtype=array.dtype)
    view = memoryview(packed.reshape(-1).view(np.uint8))
    starts = np.flatnonzero(np.diff(ordered, prepend=-2) != 1)
    with open(array.filename, "rb", buffering=0) as f:
        for first, stop in zip(starts, [*starts[1:], len(rows)]):
            f.seek(array.offset + int(ordered[first]) * row_bytes)
            done, want = first * row_bytes, stop * row_bytes
            while done < want:
                got = f.readinto(view[done:want])
                if not got:
                    raise OSError(f"{array.filename}: file ends before row {ordered[stop - 1]}")
                done += got
    # fp16 -> fp32 is exact; torch's conversion is several times faster than numpy's
    if np.any(order[1:] < order[:-1]):  # rows not in file order: put them in their order
        packed = packed[np.argsort(order, kind="stable")]
    torch.from_numpy(out).copy_(torch.from_numpy(packed))
    return out


def take(array, rows: np.ndarray, channels_last: bool = False) -> torch.Tensor:
    """float32 rows of a cached array: a file-backed memory map (positioned reads), an
    in-memory array or a tensor; 4-D rows channels-last with ``channels_last``."""
    if isinstance(array, np.memmap) and getattr(array, "filename", None):
        return torch.from_numpy(read_rows(array, rows, channels_last))
    if torch.is_tensor(array):
        values = array[torch.as_tensor(rows)].float()
    else:
        values = torch.from_numpy(np.asarray(array[rows], dtype=np.float32))
    return values.contiguous(memory_format=torch.channels_last) \
        if channels_last and values.dim() == 4 else values


def _materialised(value):
    if isinstance(value, FeatureView):
        return value.materialise()
    if isinstance(value, (list, tuple)):
        return type(value)(_materialised(v) for v in value)
    if isinstance(value, dict):
        return {k: _materialised(v) for k, v in value.items()}
    return value


class FeatureView:
    """Rows ``index`` of a cached output ``array`` (N, ...), as a float32 tensor-like.

    Indexing (``view[i]``, ``view[a:b]``, ``view[positions]``), ``len``, ``shape``,
    ``split(n)`` and ``mean`` over non-batch dimensions read only the rows they need. Any
    other tensor operation reads the whole view once (``materialise``) and applies to that,
    so a method doing whole-tensor arithmetic gets the same numbers, at the memory cost of
    the whole tensor. ``to(device)`` gives a view whose reads land on ``device``. With
    ``channels_last``, 4-D rows come channels-last (same values)."""

    dtype = torch.float32

    def __init__(self, array, index, device=None, channels_last: bool = False):
        self.array = array
        self.index = np.asarray(index, dtype=np.int64)
        self.device = torch.device(device or "cpu")
        self.channels_last = channels_last
        self.shape = torch.Size((len(self.index),) + tuple(array.shape[1:]))

    def __len__(self) -> int:
        return len(self.index)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def dim(self) -> int:
        return self.ndim

    def size(self, dim: int | None = None):
        return self.shape if dim is None else self.shape[dim]

    def rows(self, positions) -> torch.Tensor:
        """The view's rows at ``positions`` (a slice, integers, a boolean mask)."""
        if torch.is_tensor(positions):
            positions = positions.cpu().numpy()
        values = take(self.array, self.index[positions], self.channels_last)
        return values if self.device.type == "cpu" else values.to(self.device)

    def __getitem__(self, key):
        rest = ()
        if isinstance(key, tuple):
            key, rest = key[0], key[1:]
        single = isinstance(key, (int, np.integer)) or (torch.is_tensor(key) and key.ndim == 0)
        values = self.rows([int(key)])[0] if single else self.rows(key)
        if rest:
            values = values[rest] if single else values[(slice(None),) + rest]
        return values

    def split(self, size: int):
        """Consecutive chunks of ``size`` rows (like ``torch.split`` along dimension 0)."""
        return (self.rows(slice(s, s + size)) for s in range(0, len(self), size))

    def mean(self, dim=None, keepdim: bool = False):
        dims = (dim,) if isinstance(dim, int) else tuple(dim or ())
        if not dims or any(d % self.ndim == 0 for d in dims):
            return self.materialise().mean(*(() if dim is None else (dim,)), keepdim=keepdim)
        return torch.cat([chunk.mean(dim, keepdim=keepdim) for chunk in self.split(CHUNK)])

    def to(self, device=None, *args, **kwargs) -> "FeatureView":
        if not isinstance(device, (str, torch.device)) or args or kwargs:
            return self.materialise().to(device, *args, **kwargs)
        return FeatureView(self.array, self.index, device, self.channels_last)

    def cpu(self) -> "FeatureView":
        return self.to("cpu")

    def float(self) -> "FeatureView":
        return self

    def materialise(self) -> torch.Tensor:
        """Every row of the view as one tensor."""
        return self.rows(slice(None))

    def __getattr__(self, name):
        if name.startswith("_") or name in ("array", "index", "device", "shape", "channels_last"):
            raise AttributeError(name)
        return getattr(self.materialise(), name)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        return func(*_materialised(args), **_materialised(kwargs or {}))

    def __repr__(self) -> str:
        return f"FeatureView(shape={tuple(self.shape)}, device={self.device})"


def _on_whole(name: str):
    def operator(self, *args):
        return getattr(self.materialise(), name)(*args)
    operator.__name__ = name
    return operator


for _name in ("__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__",
              "__truediv__", "__rtruediv__", "__matmul__", "__rmatmul__", "__pow__", "__neg__",
              "__abs__", "__lt__", "__le__", "__gt__", "__ge__", "__array__"):
    setattr(FeatureView, _name, _on_whole(_name))
