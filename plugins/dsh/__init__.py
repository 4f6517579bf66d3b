"""DSH: Deep Supervised Hashing (Liu, Wang, Shan & Chen, CVPR 2016).

Loss (METHODS.md, the original Caffe formulation) over the in-batch pairs i<j of real-valued
outputs b (no tanh), s_ij = 1 for the same label:

    L = 1/(N(N-1)) sum_{i<j} [ s_ij ||b_i - b_j||^2 + (1 - s_ij) max(m - ||b_i - b_j||^2, 0) ]
        + alpha / N sum_i || |b_i| - 1 ||_1,          m = 2 * bits, alpha = 0.01.

Departures: the paper trains a small CNN on 32x32 images from scratch; in the frozen regime
this plugin trains a two-layer head (1280 -> 1024 -> bits, ReLU) on the backbone's pooled
feature. The optimiser is the paper's (SGD, momentum 0.9, weight decay 0.004) with a larger
learning rate (1e-2) because only the head is trained.
"""
import torch
from torch import nn

from benchmark.method import HashMethod, pooled_mlp_head
from registry import hookimpl


def dsh_loss(outputs: torch.Tensor, labels: torch.Tensor, bits: int, alpha: float = 0.01):
    """Return (pairwise term, regulariser) of the DSH loss for one batch."""
    n = outputs.shape[0]
    sq_dist = torch.cdist(outputs, outputs).pow(2)
    same = (labels[:, None] == labels[None, :]).float()
    pair = same * sq_dist + (1 - same) * torch.clamp(2 * bits - sq_dist, min=0)
    upper = torch.triu(torch.ones(n, n, dtype=torch.bool, device=outputs.device), diagonal=1)
    pairwise = pair[upper].sum() / (n * (n - 1))
    regulariser = alpha * (outputs.abs() - 1).abs().sum(dim=1).mean()
    return pairwise, regulariser


class DSH(HashMethod):
    name = "dsh"
    train_config = {"epochs": 40, "batch_size": 64,
                    "optimizer": {"type": "SGD", "lr": 1e-2, "momentum": 0.9,
                                  "weight_decay": 0.004}}
    search_space = {"lr": ("log", 1e-3, 5e-1), "alpha": ("log", 1e-3, 1e-1),
                    "weight_decay": ("log", 1e-5, 1e-2)}

    def __init__(self, bits, num_classes, input_shapes, hidden: int = 1024, alpha: float = 0.01):
        super().__init__(bits, num_classes, input_shapes)
        self.alpha = alpha
        self.head = nn.Sequential(*pooled_mlp_head(input_shapes, bits, hidden))

    def encode(self, inputs):
        return self.head(inputs["pooled"])

    def loss(self, batch):
        pairwise, regulariser = dsh_loss(self.encode(batch["inputs"]), batch["labels"],
                                         self.bits, self.alpha)
        return {"pairwise": pairwise, "quantisation": regulariser}


@hookimpl
def benchmark_methods():
    return [DSH]
