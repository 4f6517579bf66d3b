"""Learning-rate schedules: mmengine's parameter schedulers on every optimiser of a run.

A method's ``schedule`` (a training hyperparameter, ``train_config["schedule"]``, settable
like any other: ``--hparams dsh.schedule=cosine+warmup:50``) is text, parts joined by ``+``:

* ``step:S:G``: ``StepLR``, the lr is multiplied by G after every S epochs,
* ``multistep:M1/M2/...:G``: ``MultiStepLR``, multiplied by G after epochs M1, M2, ...,
* ``cosine`` / ``cosine:ETA``: ``CosineAnnealingLR`` over the run's configured epochs E
  (``T_max = E``): epoch e (0-based) uses ``ETA + (lr - ETA)(1 + cos(pi e / E)) / 2``,
* ``warmup:I`` / ``warmup:I:F``: ``LinearLR`` over the first I optimiser steps: step i
  (0-based) uses ``lr (F + (1 - F) min(i, I) / I)``, F = 0.1 unless given,
* ``none``: a constant lr (the default; no ``schedule`` key in the run's spec then).

At most one epoch part (step, multistep or cosine) and one warm-up. Epoch parts are stepped
after each epoch, the warm-up after each optimiser step; where both act their factors
multiply (mmengine's chainable form). Every optimiser of a run (the method's and, in the
finetune regime, the backbone's) gets the same schedule relative to its own lr. A run that
stops early (``val_rule = "retrain"`` at the selected epoch) follows the schedule of its
configured epochs up to that epoch.
"""
from __future__ import annotations

import math
from collections import Counter

from ..errors import BenchmarkError

EPOCH_KINDS = ("step", "multistep", "cosine")
WARMUP_START = 0.1


def _number(method: str, text: str, part: str, kind=float, low=0.0, open_low=False):
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not math.isfinite(value) or value < low or (open_low and value == low):
        raise BenchmarkError(f"{method}.schedule {part!r}: {text!r} is not a valid "
                             f"{'integer' if kind is int else 'number'} (see README Schedules)")
    return value


def parse(method: str, text) -> list[tuple]:
    """``[(kind, args), ...]`` of a schedule text (epoch part first); a one-line error for
    anything else."""
    if text in (None, "", "none"):
        return []
    parts = []
    for part in str(text).split("+"):
        kind, *args = part.strip().split(":")
        shapes = {"step": (2, 2), "multistep": (2, 2), "cosine": (0, 1), "warmup": (1, 2)}
        if kind not in shapes or not shapes[kind][0] <= len(args) <= shapes[kind][1]:
            raise BenchmarkError(f"{method}.schedule {part!r}: expected step:S:G, "
                                 f"multistep:M1/M2:G, cosine[:ETA] or warmup:I[:F]")
        if kind == "step":
            values = (_number(method, args[0], part, int, 1), _number(method, args[1], part, open_low=True))
        elif kind == "multistep":
            milestones = tuple(_number(method, m, part, int, 1) for m in args[0].split("/"))
            if list(milestones) != sorted(set(milestones)):
                raise BenchmarkError(f"{method}.schedule {part!r}: milestones must increase")
            values = (milestones, _number(method, args[1], part, open_low=True))
        elif kind == "cosine":
            values = (_number(method, args[0], part) if args else 0.0,)
        else:
            start = _number(method, args[1], part, open_low=True) if len(args) > 1 else WARMUP_START
            values = (_number(method, args[0], part, int, 1), min(start, 1.0))
        parts.append((kind, values))
    kinds = [k for k, _ in parts]
    if sum(k in EPOCH_KINDS for k in kinds) > 1 or kinds.count("warmup") > 1:
        raise BenchmarkError(f"{method}.schedule {text!r}: at most one of step/multistep/cosine "
                             f"and one warmup")
    return sorted(parts, key=lambda p: p[0] == "warmup")


def canonical(method: str, text) -> str:
    """The schedule in one spelling (what a run's spec records), e.g. ``step:70:0.1``."""
    out = []
    for kind, values in parse(method, text):
        shown = [("/".join(map(str, v)) if isinstance(v, tuple) else f"{v:g}") for v in values]
        out.append(":".join([kind, *shown]))
    return "+".join(out) or "none"


class Schedule:
    """The schedulers of one run: ``after_step`` after every optimiser step, ``after_epoch``
    after every epoch; ``lrs()`` is each optimiser's current lr."""

    def __init__(self, text: str, epochs: int, optimizers: list):
        from mmengine.optim import CosineAnnealingLR, LinearLR, MultiStepLR, StepLR
        self.optimizers, self.by_epoch, self.by_step = list(optimizers), [], []
        for kind, values in parse("schedule", text):
            for optimizer in self.optimizers:
                if kind == "step":
                    self.by_epoch.append(StepLR(optimizer, step_size=values[0], gamma=values[1]))
                elif kind == "multistep":
                    self.by_epoch.append(MultiStepLR(optimizer, milestones=list(values[0]),
                                                     gamma=values[1]))
                elif kind == "cosine":
                    self.by_epoch.append(CosineAnnealingLR(optimizer, T_max=epochs, eta_min=values[0]))
                else:  # mmengine's LinearLR reaches end_factor after end - begin - 1 steps
                    self.by_step.append(LinearLR(optimizer, start_factor=values[1], end_factor=1.0,
                                                 begin=0, end=values[0] + 1, by_epoch=False))

    def after_step(self) -> None:
        for scheduler in self.by_step:
            scheduler.step()

    def after_epoch(self) -> None:
        for scheduler in self.by_epoch:
            scheduler.step()

    def lrs(self) -> list[float]:
        return [float(o.param_groups[0]["lr"]) for o in self.optimizers]

    def state_dict(self) -> list[dict]:
        """The schedulers' states in types ``torch.load(weights_only=True)`` reads (MultiStepLR's
        milestone ``Counter`` as a dict)."""
        return [{k: dict(v) if isinstance(v, Counter) else v for k, v in s.state_dict().items()}
                for s in self.by_epoch + self.by_step]

    def load_state_dict(self, states: list[dict]) -> None:
        for scheduler, state in zip(self.by_epoch + self.by_step, states):
            scheduler.load_state_dict({k: Counter(v) if k == "milestones" else v
                                       for k, v in state.items()})
