"""The one training loop, shared by both regimes.

Per epoch: ``epoch_indices(epoch, n, generator)`` (only when the method overrides it: the
positions the epoch covers), ``on_epoch_start(epoch, data)`` (eval mode, no gradients; only
when the method overrides it), then one pass over the training set's batches minimising
``sum(loss(batch).values())`` with every optimiser (the method's own, plus the backbone's
in the finetune regime), then ``after_epoch(epoch)`` (validation selection). What differs
between regimes is only where the batches come from: a :class:`TrainData` of cached
outputs (frozen) or augmented images through the trainable backbone (finetune,
:class:`benchmark.run.inputs.FinetuneTrainingSet`).
"""
from __future__ import annotations

import dataclasses
import itertools
import os
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import BenchmarkError
from ..method import HashMethod
from .device import Amp
from .schedule import Schedule


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    # cuBLAS is deterministic only with a fixed workspace (read when CUDA first uses it)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    # deterministic mode also fills every new tensor with NaN (a debugging aid that writes
    # each allocation once more); no kernel reads memory it has not written, so the values
    # are the same without it
    torch.utils.deterministic.fill_uninitialized_memory = False


def overrides(method, hook: str) -> bool:
    """Whether a method (class or instance) implements ``hook`` itself."""
    cls = method if isinstance(method, type) else type(method)
    return getattr(cls, hook) is not getattr(HashMethod, hook)


def epoch_order(n: int, generator: torch.Generator | None, positions=None) -> torch.Tensor:
    """An epoch's training positions in a seeded random order (sequential without a
    generator): all ``n``, or the given ``positions`` only."""
    if positions is None:
        return torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    return positions[torch.randperm(len(positions), generator=generator)] \
        if generator is not None else positions


def epoch_positions(method: HashMethod, epoch: int, n: int, generator) -> torch.Tensor | None:
    """The method's ``epoch_indices`` for this epoch, checked (1-D integers in 0..n-1);
    None when it has no sampler."""
    if not overrides(method, "epoch_indices"):
        return None
    with torch.no_grad():
        positions = method.epoch_indices(epoch, n, generator)
    if positions is None:
        return None
    positions = torch.as_tensor(positions).cpu()
    if positions.ndim != 1 or not len(positions) or positions.is_floating_point() \
            or positions.dtype == torch.bool or int(positions.min()) < 0 or int(positions.max()) >= n:
        raise BenchmarkError(f"method {method.name!r}: epoch_indices({epoch}) must give a "
                             f"non-empty 1-D integer tensor of positions in 0..{n - 1}")
    return positions.long()


def method_view(method: HashMethod, data):
    """``data`` (an epoch's ``TrainData``) as the method may see it: without labels for
    an unsupervised method."""
    return data if method.supervised else dataclasses.replace(data, labels=None)


def _visible(method: HashMethod, batch: dict) -> dict:
    return batch if method.supervised else {k: v for k, v in batch.items() if k != "labels"}


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
        return len(next(iter(self.inputs.values())))

    def epoch_data(self) -> "TrainData":
        return self

    def train_mode(self) -> None:
        """Nothing besides the method trains in the frozen regime."""

    def optimizers(self) -> list:
        return []

    def batches(self, generator: torch.Generator | None = None, epoch: int = 0,
                positions: torch.Tensor | None = None):
        """Mini-batches in a seeded random order (sequential when no generator) of every
        sample, or of ``positions`` only (a method's ``epoch_indices``)."""
        n = len(self)
        order = epoch_order(n, generator, positions)
        factors = sorted(self.resolution_inputs or {})
        if factors:  # one factor per sample and epoch, drawn after the order (seeded)
            choice = torch.randint(len(factors), (n,), generator=generator)
        for start in range(0, len(order), self.batch_size):
            index = order[start:start + self.batch_size]
            if len(index) < 2 and len(order) >= 2:
                continue  # pairwise losses need two samples; keep batches well-formed
            picked = choice[index] if factors else None
            batch = {"inputs": self._rows(index, picked, factors)}
            if self.labels is not None:  # None: an unsupervised method's view
                batch["labels"] = self.labels[index]
            batch["indices"] = index
            if factors:
                batch["resolution"] = 1.0 / torch.tensor(factors, dtype=torch.float32)[picked]
            yield batch

    def _rows(self, index: torch.Tensor, picked, factors: list) -> dict:
        """A batch's inputs at positions ``index``; with ``picked`` (each sample's slot in
        ``factors``) every sample's rows are read once, from its factor's inputs."""
        if picked is None:
            return {k: v[index] for k, v in self.inputs.items()}
        mixed = {}
        for slot, factor in enumerate(factors):
            rows = (picked == slot).nonzero().flatten()
            for k, v in self.resolution_inputs[factor].items():
                part = v[index[rows]]
                if k not in mixed:
                    mixed[k] = torch.empty((len(index),) + tuple(part.shape[1:]), dtype=part.dtype,
                                           device=part.device, memory_format=layout(part))
                mixed[k][rows] = part
        return {k: mixed[k] if k in mixed else v[index] for k, v in self.inputs.items()}


def layout(rows: torch.Tensor) -> torch.memory_format:
    """The memory format of a batch of rows: channels-last for 4-D rows laid out so
    (``HashMethod.channels_last_inputs``), else contiguous."""
    return torch.channels_last if rows.dim() == 4 \
        and rows.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of the module's first parameter or buffer (the CPU if it has none)."""
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        return tensor.device
    return torch.device("cpu")


def to_device(value, device: torch.device):
    """A batch (nested dicts of tensors) on ``device``."""
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    return value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value


def epoch_data(data, device: torch.device) -> "TrainData":
    """``data.epoch_data()`` with its tensors on ``device`` (frozen features are cached on
    the CPU; a method trained on a GPU gets them there)."""
    view = data.epoch_data()
    if device.type == "cpu":
        return view
    moved = {f.name: to_device(getattr(view, f.name), device) for f in dataclasses.fields(view)}
    return dataclasses.replace(view, **moved)


def _step(method, batch: dict, optimizers: list, epoch: int, amp: Amp) -> tuple[float, dict]:
    """One optimiser step on the summed loss (computed under ``amp``'s autocast);
    (summed loss, each component's value)."""
    with amp.autocast():
        losses = method.loss(batch)
        loss = sum(losses.values())
    if not torch.isfinite(loss):
        parts = ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items())
        raise FloatingPointError(f"non-finite loss at epoch {epoch}: {parts}")
    amp.backward_and_step(loss, optimizers)
    return loss.item(), {k: float(v.item()) for k, v in losses.items()}


def _run_epoch(method, data, generator, epoch: int, positions, optimizers, amp: Amp,
               device, plan: Schedule | None = None) -> tuple[list, int]:
    """One pass over the epoch's batches, each made (the finetune backbone's forward) and
    scored under autocast and moved to the method's device, the schedule's warm-up stepped
    after each optimiser step; (steps, images seen)."""
    steps, images, batches = [], 0, iter(data.batches(generator, epoch, positions))
    while True:
        with amp.autocast():
            batch = next(batches, None)
        if batch is None:
            return steps, images
        images += len(batch["indices"])
        steps.append(_step(method, _visible(method, to_device(batch, device)), optimizers, epoch, amp))
        if plan:
            plan.after_step()


def _epoch_facts(epoch: int, steps: list[tuple], seconds: float, lrs: list[float]) -> dict:
    """What ``epoch_log`` receives: the epoch (1-based), its mean summed loss, the mean of
    each loss component over its batches, the epoch's wall seconds and the lr of each
    optimiser (the method's first) at the epoch's first step."""
    names = sorted({k for _, parts in steps for k in parts})
    return {"epoch": epoch + 1, "loss": sum(t for t, _ in steps) / max(len(steps), 1),
            "components": {k: sum(p[k] for _, p in steps if k in p) / max(len(steps), 1)
                           for k in names},
            "seconds": seconds, "lr": lrs}


def train(method: HashMethod, data, epochs: int, seed: int, optimizer_config: dict,
          progress=None, after_epoch=None, epoch_log=None, checkpoint=None,
          stats: dict | None = None, schedule: tuple | None = None) -> list[float]:
    """Minimise the summed loss dict over ``data``'s batches; return each epoch's mean loss.
    ``schedule`` = (text, configured epochs): the lr schedule of every optimiser
    (:mod:`benchmark.run.schedule`; ``stats["lr"]`` then gets the method's lr per epoch);
    ``after_epoch(epoch)`` runs after each epoch (validation-based model selection);
    ``epoch_log(facts)`` gets each epoch's loss components and time (:func:`_epoch_facts`);
    ``checkpoint`` (a :class:`benchmark.run.checkpoint.Checkpoint`) resumes from a saved
    epoch and saves after each one; ``stats`` gets ``train_images_per_s``. Precision is the
    training set's ``amp`` (finetune) or fp32."""
    optimizers = [build_optimizer(method, optimizer_config), *data.optimizers()]
    generator = torch.Generator().manual_seed(seed)
    refresh = overrides(method, "on_epoch_start")
    history = []
    device = module_device(method)
    amp = getattr(data, "amp", None) or Amp(device)
    plan = Schedule(schedule[0], schedule[1], optimizers) if schedule else None
    state = {"optimizers": optimizers, "scaler": amp.scaler, "generator": generator,
             "history": history, "schedule": plan}
    start, images, seconds = checkpoint.resume(state) if checkpoint else 0, 0, 0.0
    for epoch in range(start, epochs):
        positions = epoch_positions(method, epoch, len(data), generator)
        if refresh:
            method.eval()
            with torch.no_grad():
                method.on_epoch_start(epoch, method_view(method, epoch_data(data, device)))
        data.train_mode()
        method.train()
        tick, lrs = time.perf_counter(), [float(o.param_groups[0]["lr"]) for o in optimizers]
        steps, seen = _run_epoch(method, data, generator, epoch, positions, optimizers, amp, device, plan)
        facts = _epoch_facts(epoch, steps, time.perf_counter() - tick, lrs)
        images, seconds = images + seen, seconds + facts["seconds"]
        history.append(facts["loss"])
        if plan:
            plan.after_epoch()
            if stats is not None:
                stats.setdefault("lr", []).append(lrs[0])
        if epoch_log:
            epoch_log(facts)
        if after_epoch:
            after_epoch(epoch)
        if checkpoint:
            checkpoint.save(epoch + 1, state)
        if progress:
            progress(epoch + 1, epochs, history[-1])
    if stats is not None and seconds > 0:
        stats["train_images_per_s"] = round(images / seconds, 2)
    return history
