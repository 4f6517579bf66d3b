"""Efficiency of a run: parameters and MACs of the inference path, parameters used only
in training, encode latency and throughput, and Hamming search latency.

* The inference path is the backbone plus the method tensors (parameters and fixed
  buffers, e.g. LSH's projection) that ``encode`` touches, found by watching every torch
  call of one ``encode``; the method's other tensors are train-only (auxiliary heads).
* MACs are counted by ``mmengine.analysis`` (fvcore's convention: one fused multiply-add
  = 1), for one image at the run's input size.
* Latency is wall-clock on this machine (the record's ``provenance.hardware``): the backbone at batch 1
  (median of ``LATENCY_REPEATS`` forwards) and batch ``THROUGHPUT_BATCH`` (one timed batch),
  measured once per process, backbone and input size, plus the method's ``encode`` on
  inputs of the backbone's output shapes, measured per run.
* Search latency: exact top-``SEARCH_K`` Hamming search (faiss ``IndexBinaryFlat``, codes
  padded to 64 bits) over the run's database codes, one query at a time on one thread; for
  a method with ``real_valued`` features, also exact cosine search over them
  (``real_search_latency_ms``), so the binary speed-up is a ratio from the same run.
"""
from __future__ import annotations

import logging
import statistics
import time
from functools import lru_cache

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from ..features.backbones import build_backbone

LATENCY_REPEATS = 10
THROUGHPUT_BATCH = 64
SEARCH_K = 100


def _quiet_mmengine():
    from mmengine.logging import MMLogger
    MMLogger.get_current_instance().setLevel(logging.ERROR)


def count_macs(module: nn.Module, inputs: tuple) -> int:
    from mmengine.analysis import FlopAnalyzer
    _quiet_mmengine()
    analyzer = FlopAnalyzer(module, inputs)
    analyzer.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    return int(analyzer.total())


def count_params(module: nn.Module, buffers: bool = False) -> int:
    """Learned parameters; with ``buffers``, also fixed tensors (e.g. LSH's projection)."""
    tensors = list(module.parameters()) + (list(module.buffers()) if buffers else [])
    return sum(t.numel() for t in tensors)


class _Encode(nn.Module):
    def __init__(self, method, names):
        super().__init__()
        self.method, self.names = method, names

    def forward(self, *tensors):
        return self.method.encode(dict(zip(self.names, tensors)))


@lru_cache(maxsize=None)
def backbone_cost(backbone: str, input_size: int) -> tuple[int, int]:
    model = build_backbone(backbone, pretrained=False).eval()
    with torch.no_grad():
        return count_params(model), count_macs(model, (torch.zeros(1, 3, input_size, input_size),))


class _WatchTensors(TorchFunctionMode):
    """Records which of the watched tensors any torch call receives."""

    def __init__(self, watched: dict[int, str]):
        super().__init__()
        self.watched, self.seen = watched, set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for value in tree_flatten((args, kwargs))[0]:
            if isinstance(value, torch.Tensor) and id(value) in self.watched:
                self.seen.add(self.watched[id(value)])
        return func(*args, **kwargs)


def encode_tensors(method: nn.Module, inputs: dict) -> set[str]:
    """Names of the method's parameters and buffers that one ``encode(inputs)`` uses."""
    named = dict(method.named_parameters()) | dict(method.named_buffers())
    watch = _WatchTensors({id(t): name for name, t in named.items()})
    was_training = method.training
    method.eval()
    try:
        with torch.no_grad(), watch:
            method.encode(inputs)
    finally:
        method.train(was_training)
    return watch.seen


def profile_inference(method: nn.Module, input_shapes: dict, backbone: str,
                      input_size: int) -> dict:
    """Parameters (inference path and train-only) and MACs (FMA = 1) for one image."""
    names = list(input_shapes)
    example = tuple(torch.zeros((1,) + tuple(input_shapes[n])) for n in names)
    was_training = method.training
    method.eval()
    with torch.no_grad():
        head_macs = count_macs(_Encode(method, names), example)
    method.train(was_training)
    used = encode_tensors(method, dict(zip(names, example)))
    named = dict(method.named_parameters()) | dict(method.named_buffers())
    head_params = sum(t.numel() for name, t in named.items() if name in used)
    train_only = sum(t.numel() for name, t in named.items() if name not in used)
    backbone_params, backbone_macs = backbone_cost(backbone, input_size)
    return {"params": backbone_params + head_params, "macs": backbone_macs + head_macs,
            "params_backbone": backbone_params, "params_method": head_params,
            "params_train_only": train_only,
            "macs_backbone": backbone_macs, "macs_method": head_macs}


def _median_seconds(run, repeats: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeats):
        tick = time.perf_counter()
        run()
        times.append(time.perf_counter() - tick)
    return statistics.median(times)


@lru_cache(maxsize=None)
def backbone_timing(backbone: str, input_size: int, threads: int) -> tuple[float, float]:
    """(seconds per image at batch 1, seconds per batch of ``THROUGHPUT_BATCH``) of the
    backbone in eval mode, channels-last, as feature extraction runs it."""
    model = build_backbone(backbone, pretrained=False).eval().to(memory_format=torch.channels_last)
    one = torch.zeros(1, 3, input_size, input_size).contiguous(memory_format=torch.channels_last)
    batch = torch.zeros(THROUGHPUT_BATCH, 3, input_size, input_size).contiguous(
        memory_format=torch.channels_last)
    with torch.inference_mode():
        per_image = _median_seconds(lambda: model(one), LATENCY_REPEATS)
        tick = time.perf_counter()  # one batch (the batch-1 runs warmed the model up)
        model(batch)
        return per_image, time.perf_counter() - tick


def encode_timing(method: nn.Module, input_shapes: dict) -> tuple[float, float]:
    """(seconds at batch 1, seconds per batch of ``THROUGHPUT_BATCH``) of ``encode``."""
    def inputs(n):
        return {name: torch.randn((n,) + tuple(shape)) for name, shape in input_shapes.items()}
    one, batch = inputs(1), inputs(THROUGHPUT_BATCH)
    was_training = method.training
    method.eval()
    try:
        with torch.inference_mode():
            return (_median_seconds(lambda: method.encode(one), LATENCY_REPEATS),
                    _median_seconds(lambda: method.encode(batch), 3))
    finally:
        method.train(was_training)


def search_latency(db_codes: np.ndarray, query_codes: np.ndarray) -> dict:
    """Median batch-1, one-thread top-``SEARCH_K`` Hamming search time over the database."""
    from .search import BinaryIndex, query_latency
    index = BinaryIndex(db_codes)
    k = min(SEARCH_K, len(db_codes))
    return query_latency(index, query_codes[:LATENCY_REPEATS], k, min_queries=LATENCY_REPEATS,
                         budget_s=0.5)


def real_search_latency(db_vectors: np.ndarray, query_vectors: np.ndarray) -> dict:
    """Median batch-1, one-thread top-``SEARCH_K`` cosine search (faiss ``IndexFlatIP`` on
    L2-normalised float32 vectors) over the database: the float side of a speed-up."""
    from .search import FloatIndex, query_latency

    def unit(v):
        return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    index = FloatIndex(unit(db_vectors))
    return query_latency(index, unit(query_vectors[:LATENCY_REPEATS]), min(SEARCH_K, len(db_vectors)),
                         min_queries=LATENCY_REPEATS, budget_s=0.5)


_MEASURED: dict = {}  # profile_run's key -> its measurement, in this process


def profile_run(method: nn.Module, input_shapes: dict, backbone: str, input_size: int,
                db_codes: np.ndarray, query_codes: np.ndarray, real: dict | None = None,
                key: str | None = None) -> dict:
    """:func:`profile_inference` plus encode and search timings (on the machine that the
    record's ``provenance.hardware`` names); with ``real`` (the method's real-valued
    features, ``{"db", "query"}``), also their dimension and float search latency.
    Counts and timings depend on the architecture, the input shapes and the database size,
    not on trained values: with ``key`` (naming the method, its code and resolved hparams,
    bits, class count, backbone and input size) a later call with the same key, database
    size and real-valued dimension reuses the first measurement (``profile_reused``)."""
    if key is not None:
        key = (key, len(db_codes), None if real is None else int(real["db"].shape[1]),
               torch.get_num_threads())
        if key in _MEASURED:
            return dict(_MEASURED[key], profile_reused=True)
    out = profile_inference(method, input_shapes, backbone, input_size)
    if real is not None:
        out.update(real_dim=int(real["db"].shape[1]),
                   real_search_latency_ms=real_search_latency(real["db"], real["query"])["median_ms"])
    backbone_one, backbone_batch = backbone_timing(backbone, input_size, torch.get_num_threads())
    head_one, head_batch = encode_timing(method, input_shapes)
    search = search_latency(db_codes, query_codes)
    out.update(encode_latency_ms=1000 * (backbone_one + head_one),
               encode_throughput=THROUGHPUT_BATCH / (backbone_batch + head_batch),
               search_latency_ms=search["median_ms"], search_db=len(db_codes))
    if key is not None:
        _MEASURED[key] = dict(out)
    return out
