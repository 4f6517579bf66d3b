"""A2-Net (Wei, Shen, Wang, Xie & Wu, NeurIPS 2021) and A2-Net++ (TPAMI 2023): attribute-aware
hashing, after the authors' re-implementation (aassxun/DSH_Analysis, models/A_2_net*.py).

* Features: a global feature f_g (own last stage + GAP) and M = 4 attention maps a_m from the
  shared middle stage (bottleneck convs -> 1x1 conv -> BN -> ReLU); each a_m (.) F goes
  through a shared last stage + GAP -> f_m; x = [f_1 .. f_M, f_g].
* Attribute-aware hash layer (no bias): v = W x, u = tanh(v), b = sign(u); decoder x_hat = W^T u.
* ADSH training: database codes V of every training sample, refreshed every epoch by
  discrete cyclic coordinate descent (DCC) from the outputs U of all of them; soft similarity
  S~ = 1 (same class) or -#similar/#dissimilar; the authors' normalisation (gamma = 200):
    L_hash = sum (bits S~ - u V^T)^2 / (B n) * 12 / bits,
    L_quant = gamma * sum (u - V_i)^2 / (B n) * 12 / bits,
  plus, from half of training on, L_rec = MSE(W^T u, x) and
  L_dec = MSE(U^T U, B I) / (B bits) on the batch's u.
* ``a2netpp`` adds the self-consistency path: encoders (FC to 256) + transposed-conv
  generators reconstruct the input from x (weight 0.1) and from W^T u (weight 0.01), the
  released code's weights; the exact TPAMI weights were not found.

Departures (frozen regime): the paper's ResNet-50 layer3 is the cached middle stage s16; the
global branch's own layer4 is a trainable 1x1 conv + BN on the cached last stage s32 (no final
ReLU: with it x has a large shared positive mean and every code collapsed to one in short
training);
the shared local layer4 is a trainable 1x1 conv (no bias) + ReLU on the attended s16 maps,
computed as a_m (.) ReLU(conv(F)), which equals ReLU(conv(a_m (.) F)) because a_m >= 0; the
self-consistency generators reconstruct the earliest cached map s8 in place of the image
(no pixels exist in this regime). The ADSH outer loop (sample 2,000 images, 3 epochs, then DCC)
becomes one epoch over all training samples per DCC update, with U computed by the network
at the update (the authors keep each batch's U from the last epoch); the databases are encoded by the
network (the authors use the learned V for the database). SGD lr 1e-2, momentum 0.9,
weight decay 1e-5 for 15 epochs (the authors: lr 2.5e-4 on the backbone, 40+ iterations).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from benchmark.method import HashMethod
from registry import hookimpl


def balanced_similarity(labels, all_labels):
    """S~: 1 for the same label, -(#similar / #dissimilar) over the whole set otherwise."""
    similar = labels[:, None] == all_labels[None, :]
    counts = torch.bincount(all_labels).float()
    pairs = (counts ** 2).sum()
    ratio = pairs / (len(all_labels) ** 2 - pairs)
    return torch.where(similar, 1.0, -ratio)


def adsh_losses(u, database, similarity, indices, gamma: float = 200.0):
    """A2-Net's ADSH hash and quantisation terms (the authors' normalisation)."""
    bits, n = u.shape[1], database.shape[0]
    hash_loss = ((bits * similarity - u @ database.T) ** 2).sum() / (len(u) * n) / bits * 12
    quant = ((u - database[indices]) ** 2).sum() / (len(u) * n) * gamma / bits * 12
    return hash_loss, quant


def decorrelation_loss(u):
    batch, bits = u.shape
    return F.mse_loss(u.T @ u, batch * torch.eye(bits, device=u.device)) / batch / bits


def solve_dcc(database, outputs, similarity, gamma: float = 200.0):
    """ADSH's discrete cyclic coordinate descent for V given U (all samples in the batch)."""
    bits = outputs.shape[1]
    q = (bits * similarity).T @ outputs + gamma * outputs
    database = database.clone()
    for k in range(bits):
        rest = [j for j in range(bits) if j != k]
        value = q[:, k] - database[:, rest] @ (outputs[:, rest].T @ outputs[:, k])
        database[:, k] = torch.where(value >= 0, 1.0, -1.0)
    return database


class Generator(nn.Module):
    """FC-encoded vector -> transposed convolutions -> a (C, 4h, 4w) map from an (h, w) seed."""

    def __init__(self, in_dim, seed_hw, out_channels, dim: int = 256):
        super().__init__()
        self.encoder = nn.Linear(in_dim, dim)
        self.net = nn.Sequential(
            nn.ConvTranspose2d(dim, 128, seed_hw, bias=False), nn.BatchNorm2d(128), nn.ReLU(),
            nn.ConvTranspose2d(128, 64, 4, 2, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
            nn.ConvTranspose2d(64, out_channels, 4, 2, 1))

    def forward(self, x):
        """The first transposed convolution reads a 1x1 map, so it is a matrix product with
        its weight (C_in, C_out * h * w): the same values, without the convolution kernel."""
        seed = self.net[0].weight
        first = (self.encoder(x) @ seed.flatten(1)).view(len(x), *seed.shape[1:])
        return self.net[1:](first)


class A2Net(HashMethod):
    name = "a2net"
    inputs = "stages"
    self_consistency = False
    train_config = {"epochs": 15, "batch_size": 32,
                    "optimizer": {"type": "SGD", "lr": 1e-2, "momentum": 0.9,
                                  "weight_decay": 1e-5}}
    search_space = {"lr": ("log", 1e-3, 1e-1), "gamma": ("log", 10.0, 1000.0)}

    def __init__(self, bits, num_classes, input_shapes, attention_maps: int = 4,
                 dim: int = 256, gamma: float = 200.0, late_epoch: int | None = None,
                 epochs_per_update: int = 1):
        super().__init__(bits, num_classes, input_shapes)
        mid, last = input_shapes["s16"][0], input_shapes["s32"][0]
        self.gamma, self.epochs_per_update = gamma, epochs_per_update
        self.late_epoch = self.train_config["epochs"] // 2 if late_epoch is None else late_epoch
        self.attention = nn.Sequential(
            nn.Conv2d(mid, 64, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
            nn.Conv2d(64, attention_maps, 1, bias=False), nn.BatchNorm2d(attention_maps),
            nn.ReLU())
        self.local_stage = nn.Conv2d(mid, dim, 1, bias=False)
        self.global_stage = nn.Sequential(nn.Conv2d(last, dim, 1, bias=False),
                                          nn.BatchNorm2d(dim))
        self.W = nn.Parameter(torch.empty(bits, (attention_maps + 1) * dim))
        nn.init.kaiming_uniform_(self.W, a=math.sqrt(5))
        if self.self_consistency:  # training only
            s8, seed = input_shapes["s8"], input_shapes["s32"][1:]
            self.from_features = Generator(self.W.shape[1], seed, s8[0])
            self.from_codes = Generator(self.W.shape[1], seed, s8[0])
        self.late = False
        self.database = self.labels = None  # ADSH training state

    def features(self, inputs):
        """x = [GAP(a_m (.) ReLU(conv F)) for m, f_g]. The middle stage runs channels-last,
        where its convolutions are faster on a CPU, and GAP(a_m (.) R) over all m is one
        product (B, M, hw) @ (B, hw, C) with R read in that layout."""
        mid = inputs["s16"].contiguous(memory_format=torch.channels_last)
        maps = self.attention(mid).flatten(2)                        # (B, M, hw)
        local = F.relu(self.local_stage(mid)).permute(0, 2, 3, 1).flatten(1, 2)  # (B, hw, C)
        local = maps @ local / maps.shape[-1]                        # GAP
        glob = self.global_stage(inputs["s32"]).mean(dim=(2, 3))
        return torch.cat([local.flatten(1), glob], dim=1)

    def encode(self, inputs):
        return F.linear(self.features(inputs), self.W)

    @torch.no_grad()
    def on_epoch_start(self, epoch, data):
        """Every ``epochs_per_update`` epochs: DCC update of the training codes V from the
        network's current outputs U (the authors: 3 epochs on 2,000 samples per update)."""
        self.late = epoch >= self.late_epoch
        if epoch == 0:  # the authors' start: random V
            self.labels = data.labels.clone()
            self.database = torch.randn(len(data), self.bits).to(self.W.device)  # CPU RNG draw
        if epoch % self.epochs_per_update:
            return
        outputs = torch.cat([torch.tanh(self.encode(b["inputs"])) for b in data.batches()])
        similarity = balanced_similarity(self.labels, self.labels)
        self.database = solve_dcc(self.database, outputs, similarity, self.gamma)

    def loss(self, batch):
        x = self.features(batch["inputs"])
        u = torch.tanh(F.linear(x, self.W))
        similarity = balanced_similarity(batch["labels"], self.labels)
        hash_loss, quant = adsh_losses(u, self.database, similarity, batch["indices"], self.gamma)
        losses = {"hash": hash_loss, "quantisation": quant}
        decoded = F.linear(u, self.W.T)
        if self.late:
            losses["reconstruction"] = F.mse_loss(decoded, x)
            losses["decorrelation"] = decorrelation_loss(u)
        if self.self_consistency:
            target = batch["inputs"]["s8"]
            losses["self_consistency"] = (0.1 * F.mse_loss(self.from_features(x), target)
                                          + 0.01 * F.mse_loss(self.from_codes(decoded), target))
        return losses


class A2NetPP(A2Net):
    name = "a2netpp"
    self_consistency = True


@hookimpl
def benchmark_methods():
    return [A2Net, A2NetPP]
