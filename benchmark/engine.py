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
from .evaluation import binarise, evaluate_codes, map_real_valued
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
    #: factor -> inputs at that downsampling factor (a method's ``train_resolutions``)
    resolution_inputs: dict[int, dict[str, torch.Tensor]] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, generator: torch.Generator | None = None):
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
          progress=None, after_epoch=None) -> list[float]:
    """Minimise the summed loss dict; return the mean loss of each epoch.
    ``after_epoch(epoch)`` runs after each epoch (validation-based model selection)."""
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
                parts = ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items())
                raise FloatingPointError(f"non-finite loss at epoch {epoch}: {parts}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, count = total + loss.item(), count + 1
        history.append(total / max(count, 1))
        if after_epoch:
            after_epoch(epoch)
        if progress:
            progress(epoch + 1, epochs, history[-1])
    return history


@torch.no_grad()
def _in_batches(fn, inputs: dict[str, torch.Tensor], batch_size: int) -> list:
    """``fn`` over consecutive batches of ``inputs``, without gradients."""
    n = len(next(iter(inputs.values())))
    return [fn({k: v[s:s + batch_size] for k, v in inputs.items()}) for s in range(0, n, batch_size)]


def encode_all(method: HashMethod, inputs: dict[str, torch.Tensor], batch_size: int = 256) -> np.ndarray:
    method.eval()
    n = len(next(iter(inputs.values())))
    values = torch.cat(_in_batches(method.encode, inputs, batch_size))
    if values.shape != (n, method.bits):
        raise BenchmarkError(f"method {method.name!r}: encode returned shape "
                             f"{tuple(values.shape)}, expected ({n}, {method.bits})")
    if not torch.isfinite(values).all():
        raise FloatingPointError("encode returned non-finite values")
    return binarise(values)


def real_valued_all(method: HashMethod, inputs: dict[str, torch.Tensor],
                    batch_size: int = 256) -> np.ndarray | None:
    """The method's ``real_valued`` features as float32 (N, D), or None if it has none."""
    method.eval()
    parts = _in_batches(method.real_valued, inputs, batch_size)
    if any(p is None for p in parts):
        return None
    return torch.cat(parts).float().numpy()


def run_method(method_cls, hparams: dict, features: Features, labels: np.ndarray,
               is_train: np.ndarray, num_classes: int, bits: int, seed: int,
               epochs: int | None = None, train_labels: np.ndarray | None = None,
               progress=None, *, split=None, query_features: Features | None = None,
               db_features: Features | None = None,
               resolution_features: dict[int, Features] | None = None,
               metrics_fn=evaluate_codes) -> dict:
    """Train and evaluate one method; return codes, metrics and training facts.

    ``split`` (a ``protocols.Split``) says which images train, validate, query and form
    the database, and the (noisy) training labels; without it, train = database =
    ``is_train`` and query = the rest. ``query_features``/``db_features`` replace
    ``features`` for encoding queries / the database (the resolution protocol);
    ``resolution_features`` maps each of the method's ``train_resolutions`` factors to
    features at that factor. With a validation split, the epoch with the best validation
    mAP (val queries against the training set, noisy labels) is kept; otherwise the last.
    """
    from .protocols import materialise, Protocol
    seed_everything(seed)
    names = input_names(method_cls)
    absent = [n for n in names if n not in features.arrays]
    if absent:
        raise BenchmarkError(f"method {method_cls.name!r} needs {', '.join(absent)}, which "
                             f"cached frozen features do not hold (use --regime finetune)")
    if split is None:
        split = materialise(labels, is_train, num_classes, Protocol(), seed)
        if train_labels is not None:
            split.train_labels = train_labels
    train_inputs = features.select(names, split.train_index)
    shapes = {n: tuple(train_inputs[n].shape[1:]) for n in names}
    method = method_cls(bits=bits, num_classes=num_classes, input_shapes=shapes, **hparams)
    given = torch.from_numpy(np.asarray(split.train_labels, dtype=np.int64))
    history: list[float] = []
    selection = {"rule": "last_epoch"}
    config = method_cls.train_config
    epochs = config.get("epochs", 1) if epochs is None else epochs
    if method_cls.trainable:
        factors = tuple(getattr(method_cls, "train_resolutions", (1,)) or (1,))
        by_factor = None
        if factors != (1,):
            missing = [f for f in factors if f != 1 and f not in (resolution_features or {})]
            if missing:
                raise BenchmarkError(f"method {method_cls.name!r}: no features at training "
                                     f"resolution factor(s) {missing}")
            by_factor = {f: train_inputs if f == 1 else
                         resolution_features[f].select(names, split.train_index) for f in factors}
        data = TrainData(train_inputs, given, int(config.get("batch_size", 64)), by_factor)
        after_epoch = None
        if len(split.val_index):
            val_inputs = features.select(names, split.val_index)
            val_labels = np.asarray(split.val_labels)
            best = {"map": -1.0}
            val_history = []

            def after_epoch(epoch):
                score = evaluate_codes(encode_all(method, val_inputs), encode_all(method, train_inputs),
                                       val_labels, given.numpy())["map"]
                val_history.append(round(score, 6))
                if score > best["map"]:
                    best.update(map=score, epoch=epoch + 1,
                                state={k: v.detach().clone() for k, v in method.state_dict().items()})
            selection = {"rule": "best_val_map", "val_map": val_history}
        history = train(method, data, epochs, seed, config["optimizer"], progress, after_epoch)
        if after_epoch is not None and "state" in best:
            method.load_state_dict(best.pop("state"))
            selection.update(epoch=best["epoch"], best_val_map=round(best["map"], 6))
        method.eval()
        with torch.no_grad():
            method.on_train_end(data)
    else:
        method.eval()
        with torch.no_grad():
            method.fit(train_inputs, given if method_cls.supervised else None)
    db_source = db_features or features
    db_inputs = (train_inputs if db_source is features and np.array_equal(split.db_index, split.train_index)
                 else db_source.select(names, split.db_index))
    query_inputs = (query_features or features).select(names, split.query_index)
    db_codes, query_codes = encode_all(method, db_inputs), encode_all(method, query_inputs)
    query_labels, db_labels = labels[split.query_index], labels[split.db_index]
    metrics = metrics_fn(query_codes, db_codes, query_labels, db_labels)
    real = None
    db_real = real_valued_all(method, db_inputs)
    if db_real is not None:
        real = {"db": db_real, "query": real_valued_all(method, query_inputs)}
        metrics["map_real"] = map_real_valued(real["query"], db_real, query_labels, db_labels)
    return {"method": method, "input_shapes": shapes, "metrics": metrics,
            "history": [round(v, 6) if math.isfinite(v) else None for v in history],
            "epochs": epochs if method_cls.trainable else 0, "selection": selection,
            "real": real,
            "codes": {"query_codes": query_codes, "db_codes": db_codes,
                      "query_labels": query_labels, "db_labels": db_labels}}
