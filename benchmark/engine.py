"""One run: features -> train (or fit) -> encode -> binarise -> evaluate -> profile.

The harness owns every step a method could tilt: which samples it sees (train split
only, labels after the protocol), the seed, the batch order, the binarisation, and the
evaluation (query = test split, database = train split, clean labels).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .errors import BenchmarkError
from .evaluation import binarise, evaluate_codes
from .features import Features
from .method import INPUT_NAMES, HashMethod


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    torch.use_deterministic_algorithms(True, warn_only=True)


@dataclass
class TrainData:
    """What a method may see at training time (handed to ``on_epoch_start``)."""
    inputs: dict[str, torch.Tensor]
    labels: torch.Tensor
    batch_size: int

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, generator: torch.Generator | None = None):
        """Mini-batches in a seeded random order (sequential when no generator)."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
        for start in range(0, n, self.batch_size):
            index = order[start:start + self.batch_size]
            if len(index) < 2 and n >= 2:
                continue  # pairwise losses need two samples; keep batches well-formed
            yield {"inputs": {k: v[index] for k, v in self.inputs.items()},
                   "labels": self.labels[index], "indices": index}


def input_names(method_cls) -> tuple[str, ...]:
    kind = getattr(method_cls, "inputs", "pooled")
    if kind not in INPUT_NAMES:
        raise BenchmarkError(f"method {method_cls.name!r} asks for inputs {kind!r}; "
                             f"supported: {', '.join(INPUT_NAMES)}")
    return INPUT_NAMES[kind]


def build_optimizer(method: HashMethod, config: dict) -> torch.optim.Optimizer:
    config = dict(config)
    kind = config.pop("type")
    if not hasattr(torch.optim, kind):
        raise BenchmarkError(f"method {method.name!r}: unknown optimizer {kind!r}")
    return getattr(torch.optim, kind)(method.parameters(), **config)


def train(method: HashMethod, data: TrainData, epochs: int, seed: int, optimizer_config: dict,
          progress=None) -> list[float]:
    """Minimise the summed loss dict; return the mean loss of each epoch."""
    optimizer = build_optimizer(method, optimizer_config)
    generator = torch.Generator().manual_seed(seed)
    history = []
    for epoch in range(epochs):
        method.eval()
        with torch.no_grad():
            method.on_epoch_start(epoch, data)
        method.train()
        total, count = 0.0, 0
        for batch in data.batches(generator):
            losses = method.loss(batch)
            loss = sum(losses.values())
            if not torch.isfinite(loss):
                parts = ", ".join(f"{k}={float(v):.4g}" for k, v in losses.items())
                raise FloatingPointError(f"non-finite loss at epoch {epoch}: {parts}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, count = total + loss.item(), count + 1
        history.append(total / max(count, 1))
        if progress:
            progress(epoch + 1, epochs, history[-1])
    return history


@torch.no_grad()
def encode_all(method: HashMethod, inputs: dict[str, torch.Tensor], batch_size: int = 256) -> np.ndarray:
    method.eval()
    n = len(next(iter(inputs.values())))
    outputs = [method.encode({k: v[s:s + batch_size] for k, v in inputs.items()})
               for s in range(0, n, batch_size)]
    values = torch.cat(outputs)
    if values.shape != (n, method.bits):
        raise BenchmarkError(f"method {method.name!r}: encode returned shape "
                             f"{tuple(values.shape)}, expected ({n}, {method.bits})")
    if not torch.isfinite(values).all():
        raise FloatingPointError("encode returned non-finite values")
    return binarise(values)


def run_method(method_cls, hparams: dict, features: Features, labels: np.ndarray,
               is_train: np.ndarray, num_classes: int, bits: int, seed: int,
               epochs: int | None = None, train_labels: np.ndarray | None = None,
               progress=None) -> dict:
    """Train and evaluate one method; return codes, metrics and training facts."""
    seed_everything(seed)
    names = input_names(method_cls)
    train_index, query_index = np.flatnonzero(is_train), np.flatnonzero(~is_train)
    train_inputs = features.select(names, train_index)
    shapes = {n: tuple(train_inputs[n].shape[1:]) for n in names}
    method = method_cls(bits=bits, num_classes=num_classes, input_shapes=shapes, **hparams)
    given = torch.from_numpy(labels[train_index] if train_labels is None else train_labels)
    history: list[float] = []
    config = method_cls.train_config
    epochs = config.get("epochs", 1) if epochs is None else epochs
    if method_cls.trainable:
        data = TrainData(train_inputs, given, int(config.get("batch_size", 64)))
        history = train(method, data, epochs, seed, config["optimizer"], progress)
    else:
        method.eval()
        with torch.no_grad():
            method.fit(train_inputs, given if method_cls.supervised else None)
    db_codes = encode_all(method, train_inputs)
    query_codes = encode_all(method, features.select(names, query_index))
    metrics = evaluate_codes(query_codes, db_codes, labels[query_index], labels[train_index])
    return {"method": method, "input_shapes": shapes, "metrics": metrics,
            "history": [round(v, 6) if math.isfinite(v) else None for v in history],
            "epochs": epochs if method_cls.trainable else 0,
            "codes": {"query_codes": query_codes, "db_codes": db_codes,
                      "query_labels": labels[query_index], "db_labels": labels[train_index]}}
