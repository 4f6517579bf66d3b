"""HashNet: Deep Learning to Hash by Continuation (Cao, Long, Wang & Yu, ICCV 2017).

Weighted pairwise cross-entropy (paper Eq. 5, balanced weights of Eq. 6) on the in-batch
pairs of h = tanh(beta z), with s_ij = 1 for the same label:

    L = 1/|S| sum_ij w_ij [ log(1 + exp(alpha <h_i, h_j>)) - s_ij alpha <h_i, h_j> ],
    w_ij = |S| / |S_1| (similar), |S| / |S_0| (dissimilar),

alpha = 10 / bits (the authors' PyTorch code: sigmoid_param) and the continuation
beta_t = (1 + 0.005 t)^0.5 at training step t (their init_scale 1, gamma 0.005, power 0.5).
The sum runs over the whole batch x batch matrix, as in the authors' code.

Departures: frozen regime: a two-layer head (1280 -> 1024 -> bits, ReLU) on the pooled
feature replaces fine-tuning AlexNet/ResNet; SGD with lr 1e-2 (the paper's 3e-4 is for the
backbone; its hash layer uses 10x) for 30 epochs. ``encode`` returns z (sign(tanh(beta z)) =
sign(z)).
"""
import torch
from torch import nn
from torch.nn import functional as F

from benchmark.method import HashMethod, pooled_mlp_head
from registry import hookimpl


def hashnet_loss(h: torch.Tensor, labels: torch.Tensor, alpha: float) -> torch.Tensor:
    """Balanced weighted pairwise cross-entropy of HashNet over the batch x batch pairs."""
    inner = alpha * h @ h.T
    similar = (labels[:, None] == labels[None, :]).float()
    nll = F.softplus(inner) - similar * inner
    total, positives = similar.numel(), similar.sum()
    weights = torch.where(similar > 0, total / positives, total / (total - positives).clamp(min=1))
    return (weights * nll).sum() / total


class HashNet(HashMethod):
    name = "hashnet"
    train_config = {"epochs": 30, "batch_size": 64,
                    "optimizer": {"type": "SGD", "lr": 1e-2, "momentum": 0.9,
                                  "weight_decay": 5e-4}}

    def __init__(self, bits, num_classes, input_shapes, hidden: int = 1024,
                 gamma: float = 0.005, power: float = 0.5):
        super().__init__(bits, num_classes, input_shapes)
        self.alpha, self.gamma, self.power = 10.0 / bits, gamma, power
        self.step = 0
        self.head = nn.Sequential(*pooled_mlp_head(input_shapes, bits, hidden))

    def encode(self, inputs):
        return self.head(inputs["pooled"])

    def loss(self, batch):
        beta = (1.0 + self.gamma * self.step) ** self.power
        self.step += 1
        h = torch.tanh(beta * self.encode(batch["inputs"]))
        return {"pairwise": hashnet_loss(h, batch["labels"], self.alpha)}


@hookimpl
def benchmark_methods():
    return [HashNet]
