"""OrthoHash: One Loss for All (Hoe, Ng, Huang, Chan & Wen, NeurIPS 2021).

A fixed binary codebook gives each class a target code c_k (balanced, near-orthogonal:
Hadamard rows when possible, else random Bernoulli codes kept at a large minimum
distance; the helper is CSQ's). The hash layer is a linear map followed by batch
normalisation, z = BN(W x); the loss is a cosine-similarity softmax with additive margin
(paper Eq. 9-10), scale s = 8 and margin m = 0.2:

    L = CE( s * (cos(z, c_k) - m [k = y]), y ).

The paper's optional quantisation term is off by default (its released configurations set
its weight to 0); ``quantisation`` adds (1 - cos(z, sign(z))) with that weight.
Departures: frozen regime: a two-layer head (1280 -> 1024 -> bits, ReLU) before the hash
layer on the pooled feature; Adam lr 1e-3 (the paper: 1e-4 with the backbone) for 30 epochs.
"""
import torch
from torch import nn
from torch.nn import functional as F

from benchmark.method import HashMethod, pooled_mlp_head
from plugins.csq import hash_centres
from registry import hookimpl


def orthohash_loss(z, codebook, labels, scale: float = 8.0, margin: float = 0.2):
    """Cross-entropy of the scaled cosine logits with an additive margin on the target."""
    cosine = F.normalize(z, dim=1) @ F.normalize(codebook, dim=1).T
    logits = scale * (cosine - margin * F.one_hot(labels, codebook.shape[0]))
    return F.cross_entropy(logits, labels)


class OrthoHash(HashMethod):
    name = "orthohash"
    train_config = {"epochs": 30, "batch_size": 64,
                    "optimizer": {"type": "Adam", "lr": 1e-3}}
    search_space = {"lr": ("log", 1e-4, 1e-2), "scale": ("float", 4.0, 16.0),
                    "margin": ("float", 0.0, 0.5)}

    def __init__(self, bits, num_classes, input_shapes, hidden: int = 1024, scale: float = 8.0,
                 margin: float = 0.2, quantisation: float = 0.0):
        super().__init__(bits, num_classes, input_shapes)
        self.scale, self.margin, self.quantisation = scale, margin, quantisation
        self.head = nn.Sequential(*pooled_mlp_head(input_shapes, bits, hidden),
                                  nn.BatchNorm1d(bits))
        self.codebook = hash_centres(num_classes, bits)  # training targets, not in encode

    def encode(self, inputs):
        return self.head(inputs["pooled"])

    def loss(self, batch):
        z = self.encode(batch["inputs"])
        codebook = self.codebook.to(z.device)  # a fixed target, kept out of the module's state
        losses = {"cosine_softmax": orthohash_loss(z, codebook, batch["labels"],
                                                   self.scale, self.margin)}
        if self.quantisation:
            sign = torch.where(z >= 0, 1.0, -1.0).detach()
            losses["quantisation"] = self.quantisation * (1 - F.cosine_similarity(z, sign)).mean()
        return losses


@hookimpl
def benchmark_methods():
    return [OrthoHash]
