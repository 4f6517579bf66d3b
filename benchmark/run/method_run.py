"""One method on one materialised protocol: construct, train (or fit), select, encode.

The harness owns every step a method could tilt: which samples it sees (train split only,
labels after the protocol), the seed, the batch order, validation selection, the encode
path and the binarisation. With a validation split, the epoch with the best validation
mAP (validation images as queries against the training images, training labels) is kept;
otherwise the last. A reported run with a validation split is not that kept state: it is
retrained on the full training split for the selected number of epochs
(:func:`benchmark.run.execute.reported_run`, README "Protocols"). The regime only decides
where inputs come from (``run.inputs``).

When the database is the training split (seen at full resolution), its codes come from
the method's ``encode_database(inputs, indices)`` where it gives them (asymmetric methods;
validation selection scores the training side the same way), else from ``encode``;
queries always from ``encode``. Encoding must leave the model as it was: a hash of every
parameter and buffer is taken before and compared after (:func:`state_digest`).
"""
from __future__ import annotations

import hashlib
import math
import time

import numpy as np
import torch

from ..errors import BenchmarkError
from ..eval.metrics import evaluate_codes
from .encode import encode_all, encode_database_all, real_valued_all
from .loop import epoch_data, method_view, seed_everything, train
from .process import keep_freed_memory


def state_digest(module: torch.nn.Module) -> dict[str, str]:
    """Entry name -> SHA-256 of every ``state_dict`` entry and every buffer (persistent or
    not): dtype, shape and bytes of a tensor, ``repr`` of any other extra state."""
    items = module.state_dict()  # persistent buffers are in it; add the others once
    items.update({f"buffer {n}": b for n, b in module.named_buffers() if n not in items})
    digests = {}
    for name, value in items.items():
        h = hashlib.sha256(repr(type(value)).encode())
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous()
            h.update(f"{t.dtype} {tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        else:
            h.update(repr(value).encode())
        digests[name] = h.hexdigest()
    return digests


def check_unchanged(method, before: dict[str, str]) -> None:
    """Fail the run if the model's state differs from ``before`` (:func:`state_digest`)."""
    after = state_digest(method)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    if changed:
        shown = ", ".join(changed[:3]) + (f" and {len(changed) - 3} more" if len(changed) > 3 else "")
        raise BenchmarkError(f"method {method.name!r}: encoding changed the model ({shown}); "
                             f"encode / encode_database / real_valued must not modify "
                             f"parameters or buffers")


def database_codes(method, source, inputs, kept, role: str = "db"):
    """(0/1 codes, asymmetric?) of the ``role`` images (``inputs`` at positions ``kept``,
    from ``source.inputs(role)``) as a retrieval database: from ``encode_database`` when
    they are the training split at full resolution and the method gives codes for them,
    else from ``encode``."""
    split = source.split
    if role == "train" or (source.factors["db"] == 1
                           and np.array_equal(split.db_index, split.train_index)):
        codes = encode_database_all(method, inputs, kept, device=source.device)
        if codes is not None:
            return codes, True
    return encode_all(method, inputs, device=source.device), False


class BestOnValidation:
    """``after_epoch`` hook: score the epoch on the validation split, keep the best state
    of the method and of every harness-trained module (the finetune backbone)."""

    def __init__(self, method, source, labels: torch.Tensor):
        self.method, self.source, self.labels = method, source, labels
        self.modules = [method, *source.modules()]
        self.history: list[float] = []
        self.best: dict = {"map": -1.0}

    def __call__(self, epoch: int) -> None:
        device = self.source.device
        val_inputs, val_kept = self.source.inputs("val")
        train_inputs, train_kept = self.source.inputs("train")
        score = evaluate_codes(encode_all(self.method, val_inputs, device=device),
                               database_codes(self.method, self.source, train_inputs,
                                              train_kept, "train")[0],
                               np.asarray(self.source.split.val_labels)[val_kept],
                               self.labels.numpy()[train_kept])["map"]
        self.history.append(round(score, 6))
        if score > self.best["map"]:
            self.best = {"map": score, "epoch": epoch + 1,
                         "state": [{k: v.detach().clone() for k, v in m.state_dict().items()}
                                   for m in self.modules]}

    def restore(self) -> dict:
        """Load the best state; return the selection facts for the record."""
        selection = {"rule": "best_val_map", "val_map": self.history}
        if "state" in self.best:
            for module, state in zip(self.modules, self.best.pop("state")):
                module.load_state_dict(state)
            selection.update(epoch=self.best["epoch"], best_val_map=round(self.best["map"], 6))
        return selection

    def state_dict(self) -> dict:
        """The selection so far (for checkpoints)."""
        return {"history": list(self.history), "best": dict(self.best)}

    def load_state_dict(self, state: dict) -> None:
        self.history, self.best = list(state["history"]), dict(state["best"])


def _train_and_select(method, source, labels, epochs, seed, config, progress,
                      epoch_log=None, checkpoint=None, stats=None) -> tuple:
    data = source.training_set(labels, int(config.get("batch_size", 64)))
    select = BestOnValidation(method, source, labels) if len(source.split.val_index) else None
    if checkpoint:
        checkpoint.attach([method, *source.modules()], select)
    schedule = (config["schedule"], int(config.get("epochs", 1))) if config.get("schedule") else None
    history = train(method, data, epochs, seed, config["optimizer"], progress, select, epoch_log,
                    checkpoint, stats, schedule)
    selection = select.restore() if select else {"rule": "last_epoch"}
    method.eval()
    with torch.no_grad():
        method.on_train_end(method_view(method, epoch_data(data, source.device)))
    return history, selection


def run_method(method_cls, hparams: dict, source, labels: np.ndarray, num_classes: int,
               bits: int, seed: int, epochs: int | None = None, progress=None,
               epoch_log=None, checkpoint=None, train: dict | None = None,
               encode: bool = True) -> dict:
    """Train and encode one method; ``source`` is a ``FrozenInputs`` or ``FinetuneInputs``
    of the run's split, ``labels`` the dataset's clean labels (evaluation only);
    ``train`` the run's effective training config (the spec's; default the class's
    ``train_config``; its ``schedule`` spans its epochs), ``epochs`` an override of its
    epochs; ``encode=False``: train and select only (no codes);
    ``epoch_log`` receives each epoch's loss components and time (``loop.train``);
    ``checkpoint`` resumes and saves training (``run.checkpoint``)."""
    seed_everything(seed)
    keep_freed_memory()
    split, device = source.split, source.device
    shapes = source.shapes()
    method = method_cls(bits=bits, num_classes=num_classes, input_shapes=shapes, **hparams).to(device)
    given = torch.from_numpy(np.asarray(split.train_labels, dtype=np.int64))
    config = train or method_cls.train_config
    epochs = config.get("epochs", 1) if epochs is None else epochs
    history, selection, stats = [], {"rule": "last_epoch"}, {}
    if method_cls.trainable:
        history, selection = _train_and_select(method, source, given, epochs, seed, config,
                                               progress, epoch_log, checkpoint, stats)
    else:
        inputs, kept = source.inputs("train")
        method.eval()
        with torch.no_grad():
            method.fit({k: v.to(device) for k, v in inputs.items()},
                       given[kept].to(device) if method_cls.supervised else None)
    trained = {"history": [round(v, 6) if math.isfinite(v) else None for v in history],
               "epochs": epochs if method_cls.trainable else 0, "selection": selection, **stats}
    if not encode:
        return trained
    before = state_digest(method)
    tick = time.perf_counter()
    codes, real, asymmetric = encode_roles(method, source, labels)
    encode_seconds = time.perf_counter() - tick  # provenance.timing's encode step
    check_unchanged(method, before)
    return {"method": method.cpu(), "input_shapes": shapes, "codes": codes, "real": real,
            "skipped_images": source.skipped(), "asymmetric": asymmetric,
            "encode_seconds": encode_seconds, **trained}


def encode_roles(method, source, labels: np.ndarray) -> tuple[dict, dict | None, bool]:
    """(codes with clean labels, real-valued features or None, asymmetric?) of the queries
    and the database (see :func:`database_codes`)."""
    split, device = source.split, source.device
    db_inputs, db_kept = source.inputs("db")
    query_inputs, query_kept = source.inputs("query")
    db_codes, asymmetric = database_codes(method, source, db_inputs, db_kept)
    codes = {"db_codes": db_codes, "query_codes": encode_all(method, query_inputs, device=device),
             "query_labels": labels[split.query_index[query_kept]],
             "db_labels": labels[split.db_index[db_kept]]}
    real = None
    db_real = real_valued_all(method, db_inputs, device=device)
    if db_real is not None:
        real = {"db": db_real, "query": real_valued_all(method, query_inputs, device=device)}
    return codes, real, asymmetric
