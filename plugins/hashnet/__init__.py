"""HashNet: Deep Learning to Hash by Continuation (Cao, Long, Wang & Yu, ICCV 2017).

Weighted maximum likelihood (paper Sec. 3.2) on the codes h = tanh(beta z):

    L = 1/|S| sum_{(i,j) in S} w_ij [ log(1 + exp(alpha <h_i, h_j>)) - s_ij alpha <h_i, h_j> ],
    w_ij = |S| / |S_1| if s_ij = 1,   |S| / |S_0| if s_ij = 0,

S holds the pairs: every ordered pair (i, j), i != j, of the batch. s_ij = 1 for the same
label. S_1 and S_0 are its similar and dissimilar pairs, counted per batch as in the
authors' PyTorch ``pairwise_loss_updated`` and DeepHash-pytorch. The paper's c_ij is 1 for
single-label data. alpha = 10 / bits (the authors' ``sigmoid_param``). A sample is never
paired with itself. A batch with no similar pair has only the dissimilar term.

Continuation (paper Sec. 3.3; the authors' ``ScaleTanH`` layer and ``AlexNetFc``): beta
starts at init_scale = 1. Every step_size = 200 iterations t it becomes
init_scale * (1 + gamma t)^power, with gamma = 0.005 and power = 0.5. Over their 10,000
iterations that is 50 steps, ending at (1 + 0.005 * 9800)^0.5 = 7.07 (7.14 for the last
forward). Our frozen regime runs far fewer iterations (about 47 per epoch on cub100), so one
epoch stands for one 200-iteration step: in epoch k (from 0),

    beta_k = init_scale * (1 + gamma * step_size * k)^power = (1 + k)^0.5,

and the default 50 epochs end at the paper's final beta: 7.07 in epoch 49. With ``--epochs
N`` beta keeps growing one step per epoch (``epochs_per_step`` > 1 spreads each step over
that many epochs).

Departures, each named:

* frozen regime: a two-layer head (1280 -> 1024 -> bits, ReLU) on the pooled feature
  replaces fine-tuning AlexNet/ResNet under a new hash layer.
* pairs: one harness batch of 64 paired with itself (i != j). The authors draw two
  independent batches (36 + 36 in PyTorch, 256 + 256 in Caffe) and use their cross pairs.
  Pairing the two halves of our batch was measured on the validation split and was worse.
* continuation counted in epochs, not iterations (above).
* optimiser: the authors' PyTorch SGD (momentum 0.9, Nesterov, weight decay 5e-4) at a
  constant lr 1e-2. The authors use 3e-4 for the backbone and 10x (3e-3) for the hash layer,
  halved every 2,000 iterations; the harness has no lr schedule. The lr was chosen on a 20%
  validation split (per class, carved from train) from {3e-3, 1e-2, 3e-2}. The criterion was
  the mean validation mAP at 12 and 48 bits at the last epoch, the epoch a default run keeps.
  The epoch count (50, 100, 150 at 1, 2, 3 epochs per continuation step) was chosen the
  same way: 50 and 100 tied, and 50 was kept.
* the authors replace log(1 + e^x) by x above x = 15 (``l_threshold``). With alpha = 10 /
  bits and |h| <= 1, |alpha <h_i, h_j>| <= 10, so that branch never fires; softplus is used.
* normalised by |S|, so L = mean loss over similar pairs + mean over dissimilar pairs. The
  paper writes the plain sum. The authors' Caffe divides by the weighted pair count and
  weights similar pairs by a constant ``class_num``, not by |S|/|S_1|. No quantisation term,
  as in the authors' code (``q_weight`` 0).

``encode`` returns z: sign(tanh(beta z)) = sign(z) for every beta > 0.
"""
import torch
from torch import nn
from torch.nn import functional as F

from benchmark.method import HashMethod, pooled_mlp_head
from registry import hookimpl


def continuation_beta(step: int, init_scale: float = 1.0, gamma: float = 0.005,
                      power: float = 0.5, step_size: int = 200) -> float:
    """beta after ``step`` continuation steps of ``step_size`` iterations each:
    ``init_scale * (1 + gamma * step_size * step) ** power`` (1, sqrt(2), sqrt(3), ...)."""
    return init_scale * (1.0 + gamma * step_size * step) ** power


def pair_weights(similar: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """HashNet's balancing weights: |S|/|S_1| for similar pairs and |S|/|S_0| for dissimilar
    ones, where S = the pairs selected by ``mask``; 0 outside ``mask``."""
    total = mask.sum()
    positives = (similar.bool() & mask).sum()
    negatives = total - positives
    weights = torch.where(similar > 0, total / positives.clamp(min=1),
                          total / negatives.clamp(min=1))
    return weights * mask


def hashnet_loss(h: torch.Tensor, labels: torch.Tensor, alpha: float) -> torch.Tensor:
    """Weighted pairwise cross-entropy of HashNet over the ordered in-batch pairs i != j."""
    inner = alpha * h @ h.T
    similar = (labels[:, None] == labels[None, :]).to(h.dtype)
    mask = ~torch.eye(len(h), dtype=torch.bool, device=h.device)  # no self-pairs
    nll = F.softplus(inner) - similar * inner
    return (pair_weights(similar, mask) * nll).sum() / mask.sum()


class HashNet(HashMethod):
    name = "hashnet"
    train_config = {"epochs": 50, "batch_size": 64,
                    "optimizer": {"type": "SGD", "lr": 1e-2, "momentum": 0.9, "nesterov": True,
                                  "weight_decay": 5e-4}}
    search_space = {"lr": ("log", 1e-3, 1e-1), "weight_decay": ("log", 1e-5, 1e-2),
                    "gamma": ("log", 1e-3, 2e-2)}

    def __init__(self, bits, num_classes, input_shapes, hidden: int = 1024,
                 init_scale: float = 1.0, gamma: float = 0.005, power: float = 0.5,
                 step_size: int = 200, epochs_per_step: int = 1):
        super().__init__(bits, num_classes, input_shapes)
        self.alpha = 10.0 / bits
        self.schedule = {"init_scale": init_scale, "gamma": gamma, "power": power,
                         "step_size": step_size}
        self.epochs_per_step = epochs_per_step
        self.beta = init_scale
        self.head = nn.Sequential(*pooled_mlp_head(input_shapes, bits, hidden))

    def on_epoch_start(self, epoch, data):
        self.beta = continuation_beta(epoch // self.epochs_per_step, **self.schedule)

    def encode(self, inputs):
        return self.head(inputs["pooled"])

    def loss(self, batch):
        h = torch.tanh(self.beta * self.encode(batch["inputs"]))
        return {"pairwise": hashnet_loss(h, batch["labels"].to(h.device), self.alpha)}


@hookimpl
def benchmark_methods():
    return [HashNet]
