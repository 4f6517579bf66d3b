"""One method on one materialised protocol: construct, train (or fit), select, encode.

The harness owns every step a method could tilt: which samples it sees (train split only,
labels after the protocol), the seed, the batch order, validation selection, the encode
path and the binarisation. With a validation split, the epoch with the best validation
mAP (validation images as queries against the training images, training labels) is kept;
otherwise the last. The regime only decides where inputs come from (``run.inputs``).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..eval.metrics import evaluate_codes
from .encode import encode_all, real_valued_all
from .loop import seed_everything, train


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
                               encode_all(self.method, train_inputs, device=device),
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


def _train_and_select(method, source, labels, epochs, seed, config, progress,
                      epoch_log=None) -> tuple:
    data = source.training_set(labels, int(config.get("batch_size", 64)))
    select = BestOnValidation(method, source, labels) if len(source.split.val_index) else None
    history = train(method, data, epochs, seed, config["optimizer"], progress, select, epoch_log)
    selection = select.restore() if select else {"rule": "last_epoch"}
    method.eval()
    with torch.no_grad():
        method.on_train_end(data.epoch_data())
    return history, selection


def run_method(method_cls, hparams: dict, source, labels: np.ndarray, num_classes: int,
               bits: int, seed: int, epochs: int | None = None, progress=None,
               epoch_log=None) -> dict:
    """Train and encode one method; ``source`` is a ``FrozenInputs`` or ``FinetuneInputs``
    of the run's split, ``labels`` the dataset's clean labels (evaluation only);
    ``epoch_log`` receives each epoch's loss components and time (``loop.train``)."""
    seed_everything(seed)
    split, device = source.split, source.device
    shapes = source.shapes()
    method = method_cls(bits=bits, num_classes=num_classes, input_shapes=shapes, **hparams).to(device)
    given = torch.from_numpy(np.asarray(split.train_labels, dtype=np.int64))
    config = method_cls.train_config
    epochs = config.get("epochs", 1) if epochs is None else epochs
    history, selection = [], {"rule": "last_epoch"}
    if method_cls.trainable:
        history, selection = _train_and_select(method, source, given, epochs, seed, config,
                                               progress, epoch_log)
    else:
        inputs, kept = source.inputs("train")
        method.eval()
        with torch.no_grad():
            method.fit({k: v.to(device) for k, v in inputs.items()},
                       given[kept].to(device) if method_cls.supervised else None)
    db_inputs, db_kept = source.inputs("db")
    query_inputs, query_kept = source.inputs("query")
    codes = {"db_codes": encode_all(method, db_inputs, device=device),
             "query_codes": encode_all(method, query_inputs, device=device),
             "query_labels": labels[split.query_index[query_kept]],
             "db_labels": labels[split.db_index[db_kept]]}
    real = None
    db_real = real_valued_all(method, db_inputs, device=device)
    if db_real is not None:
        real = {"db": db_real, "query": real_valued_all(method, query_inputs, device=device)}
    return {"method": method.cpu(), "input_shapes": shapes, "codes": codes, "real": real,
            "history": [round(v, 6) if math.isfinite(v) else None for v in history],
            "epochs": epochs if method_cls.trainable else 0, "selection": selection,
            "skipped_images": source.skipped()}
