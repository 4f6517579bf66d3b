"""GreedyHash (Su, Zhang, Zhou & Tian, NeurIPS 2018).

The hash layer outputs u; the forward pass uses b = sign(u) and the backward pass copies the
gradient of b to u unchanged (paper Eq. 7-8, the greedy straight-through step). A linear
classifier on b gives the cross-entropy; a cubic penalty pulls |u| to 1:

    L = CE(W^T b, y) + alpha * mean( | |u| - 1 |^3 ),      alpha = 0.1.

Departures: frozen regime: a two-layer head (1280 -> 1024 -> bits, ReLU) on the pooled
feature; SGD lr 1e-2 (the paper: 1e-3 when fine-tuning the network) for 30 epochs.
"""
import torch
from torch import nn
from torch.nn import functional as F

from benchmark.method import HashMethod, pooled_mlp_head
from registry import hookimpl


class SignStraightThrough(torch.autograd.Function):
    """b = sign(u) (sign(0) = +1) forward; identity gradient backward."""

    @staticmethod
    def forward(ctx, u):
        return torch.where(u >= 0, 1.0, -1.0).to(u.dtype)

    @staticmethod
    def backward(ctx, grad):
        return grad


def greedyhash_loss(u, logits_of, labels, alpha: float = 0.1):
    """Return (cross-entropy on sign(u), cubic penalty); ``logits_of`` is the classifier."""
    b = SignStraightThrough.apply(u)
    return F.cross_entropy(logits_of(b), labels), alpha * (u.abs() - 1).abs().pow(3).mean()


class GreedyHash(HashMethod):
    name = "greedyhash"
    train_config = {"epochs": 30, "batch_size": 64,
                    "optimizer": {"type": "SGD", "lr": 1e-2, "momentum": 0.9,
                                  "weight_decay": 5e-4}}
    search_space = {"lr": ("log", 1e-3, 5e-1), "alpha": ("log", 1e-2, 1.0),
                    "weight_decay": ("log", 1e-5, 1e-2)}

    def __init__(self, bits, num_classes, input_shapes, hidden: int = 1024, alpha: float = 0.1):
        super().__init__(bits, num_classes, input_shapes)
        self.alpha = alpha
        self.head = nn.Sequential(*pooled_mlp_head(input_shapes, bits, hidden))
        self.classifier = nn.Linear(bits, num_classes)  # training only

    def encode(self, inputs):
        return self.head(inputs["pooled"])

    def loss(self, batch):
        ce, penalty = greedyhash_loss(self.encode(batch["inputs"]), self.classifier,
                                      batch["labels"], self.alpha)
        return {"classification": ce, "quantisation": penalty}


@hookimpl
def benchmark_methods():
    return [GreedyHash]
