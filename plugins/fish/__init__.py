"""FISH: Fine-grained Hashing with Double Filtering (Chen, Luo, Wang, Ma, Nie & Xu,
TIP 2022), after the authors' code (chenzhenduo/FISH).

On the last stage map F (C x H x W), with A = sum_c F (detached):

* feature filter: mask Phi = 1 where A > mean(A), 0.5 where A < mean(A);
  logits = W_c GAP(F * Phi);
* class filter: the logits are multiplied by 0.7 except the arg-max class (kept at 1),
  b = W_b (logits * filter);
* target codes B (one per training sample) are generated from the labels before training:
  15 alternations of B = sign(R V), U = L V^T (V V^T)^+, V = (U^T U + delta R^T R)^+
  (U^T L + delta R^T B), R = Procrustes(B V^T) (sigma = 1, delta = 1e-4);
* L = CE(logits, y) + MSE(b, B_i) + CE(logits of the erased input, y), the erased input
  zeroing the positions where A >= t * max(A), t ~ U(0.9, 1).

Departures (frozen regime): the erasing is applied to the cached last-stage map instead of
the image (the backbone is fixed, so only W_c and W_b are trained); SGD lr 0.01 momentum 0.9
as in the paper, 30 epochs instead of 90, no step decay; the hash layer's bias starts at
zero (PyTorch's default init gives every sample the same code for the first steps).
"""
import torch
from torch import nn
from torch.nn import functional as F

from benchmark.method import HashMethod
from registry import hookimpl


def target_codes(labels: torch.Tensor, num_classes: int, bits: int, iterations: int = 15,
                 sigma: float = 1.0, delta: float = 1e-4) -> torch.Tensor:
    """FISH's label-derived target codes, one +-1 row per sample."""
    onehot = F.one_hot(labels, num_classes).double().T              # classes x n
    v = torch.randn(bits, labels.numel(), dtype=torch.float64).to(onehot.device)  # CPU RNG
    b = torch.where(torch.randn(bits, labels.numel()).to(onehot.device) >= 0, 1.0, -1.0).double()

    def procrustes(b, v):
        left, _, right = torch.linalg.svd(b @ v.T)
        return left @ right

    rotation = procrustes(b, v)
    for _ in range(iterations):
        b = torch.where(rotation @ v >= 0, 1.0, -1.0).double()
        u = sigma * onehot @ v.T @ torch.linalg.pinv(sigma * v @ v.T)
        v = torch.linalg.pinv(sigma * u.T @ u + delta * rotation.T @ rotation) \
            @ (sigma * u.T @ onehot + delta * rotation.T @ b)
        rotation = procrustes(b, v)
    return b.T.float()


class FISH(HashMethod):
    name = "fish"
    inputs = "stages"
    train_config = {"epochs": 30, "batch_size": 64,
                    "optimizer": {"type": "SGD", "lr": 1e-2, "momentum": 0.9}}
    search_space = {"lr": ("log", 1e-3, 1e-1), "class_mask": ("float", 0.3, 1.0)}

    def __init__(self, bits, num_classes, input_shapes, class_mask: float = 0.7):
        super().__init__(bits, num_classes, input_shapes)
        self.class_mask = class_mask
        self.classifier = nn.Linear(input_shapes["s32"][0], num_classes)
        self.hash_layer = nn.Linear(num_classes, bits)
        nn.init.zeros_(self.hash_layer.bias)  # codes start from the logits, not a shared offset
        self.targets = None  # per-training-sample target codes (training state)

    def on_epoch_start(self, epoch, data):
        if epoch == 0:
            self.targets = target_codes(data.labels, self.num_classes, self.bits)

    def logits(self, fm):
        attention = fm.detach().sum(1, keepdim=True)
        mean = attention.mean(dim=(2, 3), keepdim=True)
        mask = (attention > mean).float() + 0.5 * (attention < mean).float()
        return self.classifier((fm * mask).mean(dim=(2, 3)))

    def codes(self, logits):
        keep = F.one_hot(logits.argmax(1), self.num_classes).bool()
        weights = torch.where(keep, 1.0, self.class_mask)
        return self.hash_layer(logits * weights)

    def encode(self, inputs):
        return self.codes(self.logits(inputs["s32"]))

    def loss(self, batch):
        fm, labels = batch["inputs"]["s32"], batch["labels"]
        logits = self.logits(fm)
        attention = fm.detach().sum(1, keepdim=True)
        peak = attention.amax(dim=(2, 3), keepdim=True)
        threshold = torch.empty(len(fm), 1, 1, 1).uniform_(0.9, 1.0).to(fm.device)  # CPU RNG
        erased = fm * (attention < threshold * peak).float()
        return {"classification": F.cross_entropy(logits, labels),
                "codes": F.mse_loss(self.codes(logits), self.targets[batch["indices"]]),
                "erased_classification": F.cross_entropy(self.logits(erased), labels)}


@hookimpl
def benchmark_methods():
    return [FISH]
