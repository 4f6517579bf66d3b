"""The ``finetune`` regime: backbone and method trained end to end on augmented images.

The harness owns the backbone (registry ``BACKBONES``; ResNet-50/18 from mmpretrain with
``--backbone-weights``, or EfficientNet-Lite0), the augmentation and the backbone's
optimiser, so every method is fine-tuned the same way:

* augmentation (training only, seeded per image and epoch): shorter side resized to
  ``input_size * 256 / 224``, random ``input_size`` crop, horizontal flip with p = 0.5;
  a method's ``train_resolutions`` factor (drawn per sample and epoch) then shrinks and
  re-enlarges the crop, and ``batch["resolution"] = 1 / factor``;
* the backbone maps the batch to the input dict the method declared (``s8``, ``s16``,
  ``s32``, ``pooled`` and, for ``inputs = "images"``, ``images``), with gradients;
* backbone optimiser: SGD, lr 1e-3, momentum 0.9, weight decay 5e-4 (the recipe of the
  fine-grained hashing papers); the method's own parameters use its ``train_config``;
* encoding uses the centre crop (``features.Transform``), with the resolution protocol's
  downsampling for queries / database, in eval mode.

Unreadable images met while training or encoding are reported with their path and
either fail the run (``--on-bad-image fail``) or are dropped (``skip``).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

from .backbones import build_backbone
from .engine import TrainData, build_optimizer, input_names, seed_everything
from .errors import BenchmarkError, DataError
from .evaluation import binarise, evaluate_codes
from .features import Transform
from .method import HashMethod

BACKBONE_SGD = {"lr": 1e-3, "momentum": 0.9, "weight_decay": 5e-4}


def augment(img: Image.Image, size: int, rng: np.random.Generator, factor: int = 1) -> Image.Image:
    """Resize (shorter side size*256/224), random crop, flip; then the resolution factor."""
    short = round(size * 256 / 224)
    w, h = img.size
    scale = short / min(w, h)
    img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
    w, h = img.size
    left, top = int(rng.integers(0, w - size + 1)), int(rng.integers(0, h - size + 1))
    img = img.crop((left, top, left + size, top + size))
    if rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    if factor > 1:
        low = max(1, round(size / factor))
        img = img.resize((low, low), Image.BILINEAR).resize((size, size), Image.BILINEAR)
    return img


def to_tensor(img: Image.Image, mean, std) -> torch.Tensor:
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


class ImageLoader:
    """Loads dataset images, dropping (and remembering) unreadable ones under ``skip``."""

    def __init__(self, dataset, on_bad_image: str):
        self.dataset, self.on_bad_image, self.skipped = dataset, on_bad_image, {}

    def __call__(self, index: int):
        try:
            return self.dataset.load(int(index))
        except DataError as exc:
            if self.on_bad_image != "skip":
                raise
            self.skipped[int(index)] = str(exc)
            return None


class FinetuneRun:
    def __init__(self, method_cls, spec, dataset, split, request):
        self.method_cls, self.spec, self.dataset, self.split = method_cls, spec, dataset, split
        self.size, self.seed = spec["input_size"], spec["seed"]
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        kwargs = {"weights": request.backbone_weights} if request.backbone_weights else {}
        self.backbone = build_backbone(spec["backbone"], **kwargs).to(self.device)
        self.names = input_names(method_cls)
        self.loader = ImageLoader(dataset, request.on_bad_image)
        self.mean, self.std = self.backbone.mean, self.backbone.std

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.backbone(images.to(self.device))
        if "images" in self.names:
            out["images"] = images.to(self.device)
        return {n: out[n] for n in self.names}

    @torch.no_grad()
    def outputs(self, index: np.ndarray, downsample: float = 1, batch_size: int = 32):
        """Centre-crop backbone outputs for dataset images ``index`` (eval mode) and the
        positions kept (unreadable images dropped under ``skip``)."""
        self.backbone.eval()
        transform = Transform(self.size, float(downsample))
        chunks, kept = [], []
        for start in range(0, len(index), batch_size):
            tensors = []
            for pos in range(start, min(len(index), start + batch_size)):
                img = self.loader(index[pos])
                if img is not None:
                    tensors.append(transform(img, self.mean, self.std))
                    kept.append(pos)
            if tensors:
                chunks.append({k: v.float().cpu() for k, v in self.forward(torch.stack(tensors)).items()})
        if not chunks:
            raise DataError("no readable image to encode")
        return {n: torch.cat([c[n] for c in chunks]) for n in self.names}, np.array(kept, dtype=np.int64)

    def batches(self, order: torch.Tensor, epoch: int, batch_size: int, factors: tuple):
        """Augmented image batches of training positions in ``order`` (seeded per image)."""
        for start in range(0, len(order), batch_size):
            positions = order[start:start + batch_size]
            if len(positions) < 2 and len(order) >= 2:
                continue
            images, keep, ratios = [], [], []
            for pos in positions.tolist():
                img = self.loader(self.split.train_index[pos])
                if img is None:
                    continue
                rng = np.random.default_rng([self.seed, epoch, pos])
                factor = factors[int(rng.integers(len(factors)))] if len(factors) > 1 else 1
                images.append(to_tensor(augment(img, self.size, rng, factor), self.mean, self.std))
                keep.append(pos)
                ratios.append(1.0 / factor)
            if len(keep) >= 2:
                yield torch.stack(images), torch.tensor(keep), torch.tensor(ratios)


def run_finetune(method_cls, spec, dataset, split, request, metrics_fn=evaluate_codes) -> dict:
    """Train backbone + method end to end; return what ``engine.run_method`` returns."""
    seed_everything(spec["seed"])
    run = FinetuneRun(method_cls, spec, dataset, split, request)
    labels = torch.from_numpy(np.asarray(split.train_labels, dtype=np.int64))
    probe, _ = run.outputs(split.train_index[:2])
    shapes = {n: tuple(v.shape[1:]) for n, v in probe.items()}
    method = method_cls(bits=spec["bits"], num_classes=dataset.num_classes, input_shapes=shapes,
                        **spec["hparams"]).to(run.device)
    config = method_cls.train_config
    epochs = spec["epochs"] or config.get("epochs", 1)
    history, selection = [], {"rule": "last_epoch"}
    if not method_cls.trainable:
        inputs, kept = run.outputs(split.train_index)
        method.eval()
        with torch.no_grad():
            method.fit({k: v.to(run.device) for k, v in inputs.items()},
                       labels[kept].to(run.device) if method_cls.supervised else None)
        epochs = 0
    else:
        history, selection = train_end_to_end(run, method, labels, epochs, config)
    db_inputs, db_kept = run.outputs(split.db_index, spec["protocol"]["resolution_db"])
    query_inputs, query_kept = run.outputs(split.query_index, spec["protocol"]["resolution"])
    db_codes, query_codes = encode(method, db_inputs, run.device), encode(method, query_inputs, run.device)
    query_labels = dataset.labels[split.query_index[query_kept]]
    db_labels = dataset.labels[split.db_index[db_kept]]
    metrics = metrics_fn(query_codes, db_codes, query_labels, db_labels)
    if run.loader.skipped:
        metrics["skipped_images"] = sorted(run.loader.skipped.values())
    method.cpu()
    return {"method": method, "input_shapes": shapes, "metrics": metrics,
            "history": [round(v, 6) if math.isfinite(v) else None for v in history],
            "epochs": epochs, "selection": selection,
            "codes": {"query_codes": query_codes, "db_codes": db_codes,
                      "query_labels": query_labels, "db_labels": db_labels}}


@torch.no_grad()
def encode(method, inputs: dict, device, batch_size: int = 256) -> np.ndarray:
    method.eval()
    n = len(next(iter(inputs.values())))
    values = torch.cat([method.encode({k: v[s:s + batch_size].to(device) for k, v in inputs.items()})
                        for s in range(0, n, batch_size)])
    if values.shape != (n, method.bits) or not torch.isfinite(values).all():
        raise BenchmarkError(f"method {method.name!r}: encode returned shape {tuple(values.shape)} "
                             f"or non-finite values")
    return binarise(values)


def train_end_to_end(run: FinetuneRun, method, labels: torch.Tensor, epochs: int, config: dict):
    params = [p for p in run.backbone.parameters() if p.requires_grad]
    backbone_opt = torch.optim.SGD(params, **BACKBONE_SGD)
    method_opt = build_optimizer(method, config["optimizer"])
    generator = torch.Generator().manual_seed(run.seed)
    factors = tuple(getattr(run.method_cls, "train_resolutions", (1,)) or (1,))
    batch_size = int(config.get("batch_size", 64))
    refresh = type(method).on_epoch_start is not HashMethod.on_epoch_start
    history, val_history, best = [], [], {"map": -1.0}
    for epoch in range(epochs):
        if refresh:  # the method looks at all training inputs: give it this epoch's
            inputs, kept = run.outputs(run.split.train_index)
            data = TrainData({k: v.to(run.device) for k, v in inputs.items()},
                             labels[kept].to(run.device), batch_size)
            method.eval()
            with torch.no_grad():
                method.on_epoch_start(epoch, data)
        run.backbone.train()
        method.train()
        order = torch.randperm(len(labels), generator=generator)
        total, count = 0.0, 0
        for images, positions, ratios in run.batches(order, epoch, batch_size, factors):
            batch = {"inputs": run.forward(images), "labels": labels[positions].to(run.device),
                     "indices": positions.to(run.device)}
            if factors != (1,):
                batch["resolution"] = ratios.to(run.device)
            losses = method.loss(batch)
            loss = sum(losses.values())
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss at epoch {epoch}")
            backbone_opt.zero_grad(set_to_none=True)
            method_opt.zero_grad(set_to_none=True)
            loss.backward()
            backbone_opt.step()
            method_opt.step()
            total, count = total + loss.item(), count + 1
        history.append(total / max(count, 1))
        if len(run.split.val_index):
            score = validation_map(run, method, labels)
            val_history.append(round(score, 6))
            if score > best["map"]:
                best = {"map": score, "epoch": epoch + 1,
                        "state": ({k: v.clone() for k, v in run.backbone.state_dict().items()},
                                  {k: v.clone() for k, v in method.state_dict().items()})}
    if "state" not in best:
        return history, {"rule": "last_epoch"}
    run.backbone.load_state_dict(best["state"][0])
    method.load_state_dict(best["state"][1])
    return history, {"rule": "best_val_map", "val_map": val_history, "epoch": best["epoch"],
                     "best_val_map": round(best["map"], 6)}


def validation_map(run: FinetuneRun, method, labels: torch.Tensor) -> float:
    train_inputs, train_kept = run.outputs(run.split.train_index)
    val_inputs, val_kept = run.outputs(run.split.val_index)
    return evaluate_codes(encode(method, val_inputs, run.device),
                          encode(method, train_inputs, run.device),
                          np.asarray(run.split.val_labels)[val_kept],
                          labels.numpy()[train_kept])["map"]
