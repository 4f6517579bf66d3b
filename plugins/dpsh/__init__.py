"""DPSH: Deep Supervised Hashing with Pairwise Labels (Li, Wang & Kang, IJCAI 2016).

Pairwise likelihood (paper Eq. 4) between the batch outputs u_i and a memory U of the
outputs of every training sample (as the authors' code does), Theta_ij = u_i^T U_j / 2:

    L = - mean_ij [ s_ij Theta_ij - log(1 + exp(Theta_ij)) ] + eta * mean_ik (b_ik - u_ik)^2,

b = sign(u), eta = 0.1; the memory starts at zero and row i is overwritten with u_i
(detached) after each step, as in the authors' PyTorch code.

Departures: means instead of sums (the scale DeepHash-pytorch uses, where eta = 0.1 is the
default; the paper's eta depends on its sum normalisation); frozen regime: a two-layer head
(1280 -> 1024 -> bits, ReLU) on the pooled feature, SGD lr 1e-2 for 30 epochs.
"""
import torch
from torch import nn
from torch.nn import functional as F

from benchmark.method import HashMethod, pooled_mlp_head
from registry import hookimpl


def dpsh_loss(u, labels, memory, memory_labels, eta: float = 0.1):
    """Return (negative log-likelihood, quantisation) of DPSH for a batch against a memory."""
    theta = u @ memory.T / 2
    similar = (labels[:, None] == memory_labels[None, :]).float()
    likelihood = -(similar * theta - F.softplus(theta)).mean()
    binary = torch.where(u >= 0, 1.0, -1.0).detach()
    quantisation = eta * (binary - u).pow(2).mean()
    return likelihood, quantisation


class DPSH(HashMethod):
    name = "dpsh"
    train_config = {"epochs": 30, "batch_size": 64,
                    "optimizer": {"type": "SGD", "lr": 1e-2, "momentum": 0.9,
                                  "weight_decay": 5e-4}}

    def __init__(self, bits, num_classes, input_shapes, hidden: int = 1024, eta: float = 0.1):
        super().__init__(bits, num_classes, input_shapes)
        self.eta = eta
        self.head = nn.Sequential(*pooled_mlp_head(input_shapes, bits, hidden))
        self.memory = self.memory_labels = None  # training state, not part of the model

    def on_epoch_start(self, epoch, data):
        if epoch == 0:
            self.memory = torch.zeros(len(data), self.bits)
            self.memory_labels = data.labels.clone()

    def encode(self, inputs):
        return self.head(inputs["pooled"])

    def loss(self, batch):
        u = self.encode(batch["inputs"])
        self.memory[batch["indices"]] = u.detach()
        likelihood, quantisation = dpsh_loss(u, batch["labels"], self.memory,
                                             self.memory_labels, self.eta)
        return {"likelihood": likelihood, "quantisation": quantisation}


@hookimpl
def benchmark_methods():
    return [DPSH]
