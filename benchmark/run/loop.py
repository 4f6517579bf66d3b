"""The one training loop, shared by both regimes.

Per epoch: ``on_epoch_start(epoch, data)`` (eval mode, no gradients; only when the method
overrides it), then one pass over the training set's batches minimising
``sum(loss(batch).values())`` with every optimiser (the method's own, plus the backbone's
in the finetune regime), then ``after_epoch(epoch)`` (validation selection). What differs
between regimes is only where the batches come from: a :class:`TrainData` of cached
outputs (frozen) or augmented images through the trainable backbone (finetune,
:class:`benchmark.run.inputs.FinetuneTrainingSet`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import BenchmarkError
from ..method import HashMethod


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    torch.use_deterministic_algorithms(True, warn_only=True)


def overrides(method, hook: str) -> bool:
    """Whether a method (class or instance) implements ``hook`` itself."""
    cls = method if isinstance(method, type) else type(method)
    return getattr(cls, hook) is not getattr(HashMethod, hook)


def build_optimizer(method: HashMethod, config: dict) -> torch.optim.Optimizer:
    config = dict(config)
    kind = config.pop("type")
    if not hasattr(torch.optim, kind):
        raise BenchmarkError(f"method {method.name!r}: unknown optimizer {kind!r}")
    return getattr(torch.optim, kind)(method.parameters(), **config)


@dataclass
class TrainData:
    """What a method may see at training time (handed to ``on_epoch_start``); in the
    frozen regime also the training set the loop draws its batches from."""
    inputs: dict[str, torch.Tensor]
    labels: torch.Tensor
    batch_size: int
    #: factor -> inputs at that downsampling factor (a method's ``train_resolutions``)
    resolution_inputs: dict[int, dict[str, torch.Tensor]] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def epoch_data(self) -> "TrainData":
        return self

    def train_mode(self) -> None:
        """Nothing besides the method trains in the frozen regime."""

    def optimizers(self) -> list:
        return []

    def batches(self, generator: torch.Generator | None = None, epoch: int = 0):
        """Mini-batches in a seeded random order (sequential when no generator)."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
        factors = sorted(self.resolution_inputs or {})
        if factors:  # one factor per sample and epoch, drawn after the order (seeded)
            choice = torch.randint(len(factors), (n,), generator=generator)
        for start in range(0, n, self.batch_size):
            index = order[start:start + self.batch_size]
            if len(index) < 2 and n >= 2:
                continue  # pairwise losses need two samples; keep batches well-formed
            batch = {"inputs": {k: v[index] for k, v in self.inputs.items()},
                     "labels": self.labels[index], "indices": index}
            if factors:
                picked = choice[index]
                for slot, factor in enumerate(factors):
                    rows = (picked == slot).nonzero().flatten()
                    for k, v in self.resolution_inputs[factor].items():
                        batch["inputs"][k][rows] = v[index[rows]]
                batch["resolution"] = 1.0 / torch.tensor(factors, dtype=torch.float32)[picked]
            yield batch


def _step(method, batch: dict, optimizers: list, epoch: int) -> tuple[float, dict]:
    """One optimiser step on the summed loss; (summed loss, each component's value)."""
    losses = method.loss(batch)
    loss = sum(losses.values())
    if not torch.isfinite(loss):
        parts = ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items())
        raise FloatingPointError(f"non-finite loss at epoch {epoch}: {parts}")
    for optimizer in optimizers:
        optimizer.zero_grad(set_to_none=True)
    loss.backward()
    for optimizer in optimizers:
        optimizer.step()
    return loss.item(), {k: float(v.item()) for k, v in losses.items()}


def _epoch_facts(epoch: int, steps: list[tuple], seconds: float) -> dict:
    """What ``epoch_log`` receives: the epoch (1-based), its mean summed loss, the mean of
    each loss component over its batches, and the epoch's wall seconds."""
    names = sorted({k for _, parts in steps for k in parts})
    return {"epoch": epoch + 1, "loss": sum(t for t, _ in steps) / max(len(steps), 1),
            "components": {k: sum(p[k] for _, p in steps if k in p) / max(len(steps), 1)
                           for k in names},
            "seconds": seconds}


def train(method: HashMethod, data, epochs: int, seed: int, optimizer_config: dict,
          progress=None, after_epoch=None, epoch_log=None) -> list[float]:
    """Minimise the summed loss dict over ``data``'s batches; return each epoch's mean loss.
    ``after_epoch(epoch)`` runs after each epoch (validation-based model selection);
    ``epoch_log(facts)`` gets each epoch's loss components and time (:func:`_epoch_facts`)."""
    optimizers = [build_optimizer(method, optimizer_config), *data.optimizers()]
    generator = torch.Generator().manual_seed(seed)
    refresh = overrides(method, "on_epoch_start")
    history = []
    for epoch in range(epochs):
        if refresh:
            method.eval()
            with torch.no_grad():
                method.on_epoch_start(epoch, data.epoch_data())
        data.train_mode()
        method.train()
        tick = time.perf_counter()
        steps = [_step(method, batch, optimizers, epoch) for batch in data.batches(generator, epoch)]
        history.append(sum(total for total, _ in steps) / max(len(steps), 1))
        if epoch_log:
            epoch_log(_epoch_facts(epoch, steps, time.perf_counter() - tick))
        if after_epoch:
            after_epoch(epoch)
        if progress:
            progress(epoch + 1, epochs, history[-1])
    return history
