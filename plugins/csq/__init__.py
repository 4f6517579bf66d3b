"""CSQ: Central Similarity Quantization (Yuan, Wang, Fei, Guo & Li, CVPR 2020).

Each class has a fixed hash centre c_y in {-1, 1}^bits (paper Sec. 3.2): the rows of a
Sylvester Hadamard matrix H and of -H when bits is a power of two and 2 * bits >= classes,
otherwise random Bernoulli(0.5) codes. With u = tanh(z) the loss (paper Eq. 5-6) is

    L = mean BCE( (u + 1)/2, (c_y + 1)/2 ) + lambda * mean( (|u| - 1)^2 ),  lambda = 1e-4.

Departures: the paper samples Bernoulli centres without a guarantee; here they are drawn
greedily with the largest minimum Hamming distance reached (starting at bits/2 and lowered
until every class has a centre), so no two classes share or nearly share a centre.
Frozen regime: a two-layer head (1280 -> 1024 -> bits, ReLU) on the pooled feature; RMSprop
as in the paper with lr 1e-3 (the paper's 1e-5 is for fine-tuning) for 30 epochs.
"""
import torch
from torch import nn
from torch.nn import functional as F

from benchmark.method import HashMethod, pooled_mlp_head
from registry import hookimpl


def hadamard(n: int) -> torch.Tensor:
    """Sylvester Hadamard matrix of order n (a power of two)."""
    matrix = torch.ones(1, 1)
    while matrix.shape[0] < n:
        matrix = torch.cat([torch.cat([matrix, matrix], 1), torch.cat([matrix, -matrix], 1)])
    return matrix


def random_centres(count: int, bits: int, max_rejections: int = 2000) -> torch.Tensor:
    """``count`` random +-1 codes, greedily kept only if at least d bits from every kept
    one, with d the largest value (from bits // 2 down) for which ``count`` codes are found."""
    for min_distance in range(max(bits // 2, 1), 0, -1):
        kept, rejections = [], 0
        while len(kept) < count and rejections < max_rejections:
            code = torch.randint(0, 2, (bits,)).float() * 2 - 1
            if all(((code != k).sum() >= min_distance) for k in kept):
                kept.append(code)
            else:
                rejections += 1
        if len(kept) == count:
            return torch.stack(kept)
    raise ValueError(f"cannot draw {count} distinct {bits}-bit centres")


def hash_centres(num_classes: int, bits: int) -> torch.Tensor:
    """CSQ's centres: Hadamard rows (and their negations) when possible, else random."""
    if bits & (bits - 1) == 0 and num_classes <= 2 * bits:
        matrix = hadamard(bits)
        return torch.cat([matrix, -matrix])[:num_classes]
    return random_centres(num_classes, bits)


def csq_loss(u, centres, lam: float = 1e-4):
    """Return (central BCE, quantisation) of CSQ for relaxed codes u in (-1, 1)."""
    central = F.binary_cross_entropy((u + 1) / 2, (centres + 1) / 2)
    return central, lam * (u.abs() - 1).pow(2).mean()


class CSQ(HashMethod):
    name = "csq"
    train_config = {"epochs": 30, "batch_size": 64,
                    "optimizer": {"type": "RMSprop", "lr": 1e-3, "weight_decay": 1e-5}}
    search_space = {"lr": ("log", 1e-4, 1e-2), "lam": ("log", 1e-5, 1e-2),
                    "weight_decay": ("log", 1e-6, 1e-3)}

    def __init__(self, bits, num_classes, input_shapes, hidden: int = 1024, lam: float = 1e-4):
        super().__init__(bits, num_classes, input_shapes)
        self.lam = lam
        self.head = nn.Sequential(*pooled_mlp_head(input_shapes, bits, hidden))
        self.centres = hash_centres(num_classes, bits)  # training targets, not in encode

    def encode(self, inputs):
        return self.head(inputs["pooled"])

    def loss(self, batch):
        u = torch.tanh(self.encode(batch["inputs"])).clamp(-1 + 1e-6, 1 - 1e-6)
        centres = self.centres.to(u.device)  # a fixed target, kept out of the module's state
        central, quantisation = csq_loss(u, centres[batch["labels"]], self.lam)
        return {"central": central, "quantisation": quantisation}


@hookimpl
def benchmark_methods():
    return [CSQ]
