"""Per-epoch checkpoints of a training run, so that a killed run resumes exactly.

At the end of an epoch (every epoch in the finetune regime; in the frozen regime when the
last save is ``every_s`` seconds old) :class:`Checkpoint` writes ``checkpoints/<run id>.pt``
in the results folder (beside ``runs/``, whose folders belong to stored rows), atomically (a temporary file, fsync, rename): the state of every trained
module (``state_dict`` plus the training state a method keeps in plain attributes:
tensors, arrays, numbers, strings, generators, and lists, tuples, dicts and plain objects
of them), every optimiser, the gradient scaler, the generator of the batch order, the
global torch / CUDA / numpy / ``random`` RNG states, the loss history and the validation
selection's state. Resuming restores all of it, so the epochs after it run as they would
have without the interruption. Files are read with ``torch.load(weights_only=True)``: a
checkpoint never runs code. One from another run, device or epoch count is ignored.
"""
from __future__ import annotations

import enum
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

FOLDER = "checkpoints"
#: the frozen regime saves at most this often (its runs mostly take seconds)
FROZEN_EVERY_S = 300.0
#: attributes every ``nn.Module`` has (parameters, buffers, hooks, ...): not training state
MODULE_INTERNALS = frozenset(vars(nn.Module()))


def pack(value):
    """``value`` as something ``weights_only`` loading accepts (None: not training state)."""
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, (bool, int, float, str, bytes)) or value is None:
        return value
    if isinstance(value, np.ndarray) and value.dtype != object:
        return {"__ndarray__": torch.from_numpy(value.copy())}
    if isinstance(value, np.generic):
        return {"__npscalar__": torch.from_numpy(np.asarray(value).copy())}
    if isinstance(value, torch.Generator):
        return {"__generator__": value.get_state()}
    if type(value) in (list, tuple):
        return type(value)(pack(v) for v in value)
    if type(value) is dict:
        return {k: pack(v) for k, v in value.items()}
    if not isinstance(value, (nn.Module, type, enum.Enum)) and hasattr(value, "__dict__") \
            and type(value).__module__ != "builtins" and not callable(value):
        return {"__object__": {k: pack(v) for k, v in vars(value).items()}}
    return None


def unpack(packed, current=None):
    """The value :func:`pack` stored; generators and plain objects are restored into
    ``current`` (the attribute as the freshly built method holds it)."""
    if type(packed) in (list, tuple):
        return type(packed)(unpack(v) for v in packed)
    if type(packed) is not dict:
        return packed
    if "__ndarray__" in packed:
        return packed["__ndarray__"].numpy()
    if "__npscalar__" in packed:
        return packed["__npscalar__"].numpy()[()]
    if "__generator__" in packed:
        if isinstance(current, torch.Generator):
            current.set_state(packed["__generator__"])
        return current
    if "__object__" in packed:
        if hasattr(current, "__dict__"):
            for key, value in packed["__object__"].items():
                setattr(current, key, unpack(value, getattr(current, key, None)))
        return current
    return {k: unpack(v) for k, v in packed.items()}


def module_state(module: nn.Module) -> dict:
    """``state_dict`` plus the training state a module keeps outside it: plain attributes and
    non-persistent buffers (e.g. DPSH's memory of network outputs), of it and its children."""
    extra, transient = {}, {}
    for name, sub in module.named_modules():
        attrs = {k: pack(v) for k, v in vars(sub).items() if k not in MODULE_INTERNALS}
        extra[name] = {k: v for k, v in attrs.items() if v is not None}
        transient[name] = {k: sub._buffers[k] for k in sub._non_persistent_buffers_set
                           if sub._buffers.get(k) is not None}
    return {"state_dict": module.state_dict(), "attributes": extra, "buffers": transient}


def load_module_state(module: nn.Module, state: dict) -> None:
    module.load_state_dict(state["state_dict"])
    subs = dict(module.named_modules())
    for name, buffers in state.get("buffers", {}).items():
        for key, value in buffers.items():
            old = subs[name]._buffers.get(key)
            subs[name]._buffers[key] = value.to(old.device if old is not None else value.device)
    for name, attrs in state["attributes"].items():
        for key, value in attrs.items():
            setattr(subs[name], key, unpack(value, getattr(subs[name], key, None)))


def rng_states() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": pack(np.random.get_state()),
             "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_states(state: dict) -> None:
    torch.set_rng_state(state["torch"].cpu())
    np.random.set_state(unpack(state["numpy"]))
    random.setstate(state["python"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def checkpoint_path(out, run_id: str) -> Path:
    return Path(out) / FOLDER / f"{run_id}.pt"


class Checkpoint:
    """The checkpoint file of one run at ``path``; ``tag`` (run id, device) must match for
    a saved one to be resumed. The loop calls :meth:`resume` and :meth:`save`."""

    def __init__(self, path: Path, tag: dict, every_s: float = 0.0, log=print):
        self.path, self.tag, self.every_s, self.log = Path(path), dict(tag), every_s, log
        self.modules: list[nn.Module] = []
        self.selection = None
        self.resumed_from: int | None = None
        self._last = time.monotonic()

    def attach(self, modules: list[nn.Module], selection=None) -> None:
        """What the run trains (method, backbone) and its validation selection, if any."""
        self.modules, self.selection = list(modules), selection

    def save(self, epochs_done: int, loop: dict) -> bool:
        """Write the state after ``epochs_done`` epochs (``loop``: optimizers, scaler,
        generator, history); False when skipped (younger than ``every_s``)."""
        if time.monotonic() - self._last < self.every_s:
            return False
        state = {"tag": self.tag, "epochs_done": epochs_done, "rng": rng_states(),
                 "modules": [module_state(m) for m in self.modules],
                 "optimizers": [o.state_dict() for o in loop["optimizers"]],
                 "scaler": loop["scaler"].state_dict() if loop.get("scaler") else None,
                 "generator": loop["generator"].get_state(), "history": list(loop["history"]),
                 "selection": self.selection.state_dict() if self.selection else None,
                 "schedule": loop["schedule"].state_dict() if loop.get("schedule") else None}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)
        self._last = time.monotonic()
        return True

    def load(self) -> dict | None:
        """The saved state if there is a usable one for this run (else None, with a note)."""
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, weights_only=True)
        except Exception as exc:  # noqa: BLE001 - a damaged checkpoint only costs time
            self.log(f"warning: ignoring unreadable checkpoint {self.path}: {type(exc).__name__}")
            return None
        if state.get("tag") != self.tag:
            self.log(f"warning: ignoring checkpoint {self.path} of another setting "
                     f"({state.get('tag')} != {self.tag})")
            return None
        return state

    def resume(self, loop: dict) -> int:
        """Restore the saved state into the run (``loop`` as for :meth:`save`); return the
        number of epochs already done (0: nothing to resume)."""
        state = self.load()
        if state is None:
            return 0
        for module, saved in zip(self.modules, state["modules"]):
            load_module_state(module, saved)
        for optimizer, saved in zip(loop["optimizers"], state["optimizers"]):
            optimizer.load_state_dict(saved)
        if loop.get("scaler") and state["scaler"]:
            loop["scaler"].load_state_dict(state["scaler"])
        if loop.get("schedule") and state.get("schedule"):  # the lr schedulers' steps
            loop["schedule"].load_state_dict(state["schedule"])
        loop["generator"].set_state(state["generator"])
        loop["history"][:] = state["history"]
        if self.selection and state["selection"]:
            self.selection.load_state_dict(state["selection"])
        set_rng_states(state["rng"])
        self.resumed_from = int(state["epochs_done"])
        self.log(f"resuming run {self.path.stem} after epoch {self.resumed_from}")
        return self.resumed_from


def for_run(out, run_id: str, regime: str, device, log=print) -> Checkpoint:
    """The checkpoint of run ``run_id`` in results folder ``out``."""
    return Checkpoint(checkpoint_path(out, run_id), {"run_id": run_id, "device": str(device)},
                      0.0 if regime == "finetune" else FROZEN_EVERY_S, log)


def discard(out, run_id: str) -> None:
    """Remove a run's checkpoint (once its record is written)."""
    path = checkpoint_path(out, run_id)
    for file in (path, path.with_suffix(".tmp")):
        file.unlink(missing_ok=True)
    try:
        path.parent.rmdir()  # the folder goes with the last checkpoint
    except OSError:
        pass
