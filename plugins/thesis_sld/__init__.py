"""thesis-sld: sample-label disentanglement (Mao, "Deep Disentanglement Learning for
Fine-Grained Visual Retrieval", PKU thesis, contribution 2).

A re-implementation from the thesis abstract (only the abstract is available). The abstract
states: neighbourhood-attention label correction fuses the labels of a sample's neighbours
to break the one-to-one sample-label binding and predict better targets; feature-memory
sub-label learning learns several sub-labels, isolating noisy samples and balancing the
long tail (Market-1501, 50% noise: baseline 94.4 -> 69.2 rank-1, the method keeps 92.2).

What we chose (each component is an ablation switch; all off = a CSQ-style MLP head):

* Feature memory: the L2-normalised hidden embedding (1280 -> ``hidden``) of every training
  sample, refreshed at the start of each epoch (no gradients).
* ``label_correction``: soft targets Y (start one-hot). From epoch ``warmup`` on,
  Y_i <- beta * onehot(y_i) + (1 - beta) * sum_{j in kNN(i)} softmax_j(cos_ij / tau) Y_j over
  the ``neighbours`` nearest memory entries; beta decays linearly from 1 to ``beta_min``
  over ``decay_epochs``. Without it, Y = onehot(given label).
* ``sub_labels``: each class c (argmax of Y) is split by spherical k-means on the memory
  into S_c = clip(n_c // ``min_per_sub``, 1, ``sub_centres``) sub-centres; each sample's
  sub-label is its nearest sub-centre of its class, trained with a cosine-softmax over all
  sub-centres (temperature ``sub_temperature``) on its embedding.
* ``isolation``: a sample is isolated when it is nearer to another class's sub-centre than
  to every sub-centre of its own class, alone in its sub-cluster, or in a sub-cluster whose
  centre is nearer to a larger sub-cluster of another class than to its siblings (noisy
  samples of one source gather in their own sub-cluster); its sub-label is then its own memory entry (an
  instance prototype) and its weight in every loss is ``isolated_weight``.
* ``balance``: sample weights proportional to n_k^(-1/2), n_k the size of its sub-label
  (of its class without sub-labels), normalised to mean 1: the tail counts more.
* Hash loss: soft-target centre loss on tanh outputs (CSQ centres) + quantisation.

How the defaults were chosen: lr, ``beta_min``, ``isolated_weight``, ``sub_centres``,
``quantisation`` and the isolation thresholds ``neighbours`` and ``min_per_sub`` are the
equal-budget tune's choice (``configs/default-grid.yaml``, issue #12: 8 trials on a 20%
validation split of cub100's train split, 32 bits), rounded to two digits; the earlier values
(lr 1e-3, beta_min 0.3, isolated_weight 0.1, sub_centres 3, quantisation 0.1, neighbours 10,
min_per_sub 8) had no recorded selection. The validation split is clean, so the tune saw no
label noise: it chose an ``isolated_weight`` near 1 (isolation barely down-weights) and a
``beta_min`` above 1/2, where the given label always keeps the largest share of its soft
target, so label correction re-weights but never flips a label. The noise protocols may not
favour either. ``hidden``, the decay schedule and the temperatures
are the re-implementation's own, not tuned.
"""
import torch
import torch.nn.functional as F
from torch import nn

from benchmark.method import HashMethod
from plugins.csq import hash_centres
from plugins.thesis_blocks import ablation, centre_loss, one_hot, quantisation_loss
from registry import hookimpl


def neighbour_targets(memory, soft, k: int, tau: float) -> torch.Tensor:
    """Attention-weighted mean of the soft labels of each entry's k nearest neighbours."""
    sims = memory @ memory.T
    sims.fill_diagonal_(-float("inf"))
    top, index = sims.topk(min(k, len(memory) - 1), dim=1)
    weights = (top / tau).softmax(1)
    return (weights[:, :, None] * soft[index]).sum(1)


def spherical_kmeans(x, count: int, iterations: int = 10) -> torch.Tensor:
    """Deterministic spherical k-means (farthest-point init) on rows of unit norm x."""
    centres = [F.normalize(x.mean(0), dim=0)]
    centres[0] = x[(x @ centres[0]).argmax()]
    while len(centres) < count:
        nearest = (x @ torch.stack(centres).T).max(1).values
        centres.append(x[nearest.argmin()])
    centres = torch.stack(centres)
    for _ in range(iterations):
        assign = (x @ centres.T).argmax(1)
        for s in range(count):
            if (assign == s).any():
                centres[s] = F.normalize(x[assign == s].mean(0), dim=0)
    return centres


def sub_label_memory(memory, classes, num_classes, max_sub: int, min_per_sub: int):
    """Per-class sub-centres. Returns (centres (K, D), centre_class (K,), sub_label (N,))."""
    centres, owner = [], []
    for c in range(num_classes):
        members = memory[classes == c]
        if len(members):
            count = max(1, min(max_sub, len(members) // min_per_sub))
            centres.append(spherical_kmeans(members, count))
            owner += [c] * count
    centres, owner = torch.cat(centres), torch.tensor(owner, device=memory.device)
    sims = memory @ centres.T
    own = owner[None, :] == classes[:, None]
    sub_label = torch.where(own, sims, -float("inf")).argmax(1)
    return centres, owner, sub_label


def isolate(memory, classes, centres, owner, sub_label) -> torch.Tensor:
    """Boolean mask of suspected noisy samples (see the module docstring)."""
    sims = memory @ centres.T
    own = owner[None, :] == classes[:, None]
    best_own = torch.where(own, sims, -float("inf")).max(1).values
    best_other = torch.where(own, -float("inf"), sims).max(1).values
    support = torch.bincount(sub_label, minlength=len(centres))
    split = torch.bincount(owner, minlength=int(classes.max()) + 1)[owner] > 1
    alone = (support[sub_label] == 1) & split[sub_label]
    between = centres @ centres.T
    same = owner[:, None] == owner[None, :]
    eye = torch.eye(len(owner), dtype=torch.bool, device=owner.device)
    sibling = torch.where(same & ~eye, between, -2.0).max(1).values
    foreign, neighbour = torch.where(same, -2.0, between).max(1)
    # a (smaller) sub-cluster living in another class's region
    astray = split & (foreign > sibling) & (support < support[neighbour])
    return (best_other > best_own) | alone | astray[sub_label]


class SampleLabelState:
    """Soft targets, sub-labels, prototypes and weights of every training sample."""

    def __init__(self, num_classes, label_correction=True, sub_labels=True, isolation=True,
                 balance=True, neighbours=10, tau=0.1, beta_min=0.3, decay_epochs=10, warmup=2,
                 sub_centres=3, min_per_sub=8, isolated_weight=0.1):
        self.num_classes, self.correction, self.sub_labels = num_classes, label_correction, sub_labels
        self.isolation, self.balance, self.k, self.tau = isolation, balance, neighbours, tau
        self.beta_min, self.decay, self.warmup = beta_min, decay_epochs, warmup
        self.max_sub, self.min_per_sub, self.isolated_weight = sub_centres, min_per_sub, isolated_weight
        self.soft = None

    def refresh(self, epoch: int, memory, given):
        given_hot = one_hot(given, self.num_classes)
        if self.soft is None:
            self.soft = given_hot
        if self.correction and epoch >= self.warmup:
            progress = min(1.0, (epoch - self.warmup + 1) / self.decay)
            beta = 1 - (1 - self.beta_min) * progress
            self.soft = beta * given_hot + (1 - beta) * neighbour_targets(memory, self.soft, self.k, self.tau)
        classes = self.soft.argmax(1)
        n = len(memory)
        self.isolated = torch.zeros(n, dtype=torch.bool, device=memory.device)
        group = classes
        if self.sub_labels:
            centres, owner, sub = sub_label_memory(memory, classes, self.num_classes,
                                                   self.max_sub, self.min_per_sub)
            if self.isolation:
                self.isolated = isolate(memory, classes, centres, owner, sub)
            order = torch.cumsum(self.isolated.long(), 0) - 1
            self.sub_label = torch.where(self.isolated, len(centres) + order, sub)
            self.prototypes = torch.cat([centres, memory[self.isolated]])
            group = self.sub_label
        weights = torch.where(self.isolated, self.isolated_weight, 1.0)
        if self.balance:
            weights = weights * torch.bincount(group)[group].float().rsqrt()
        self.weights = weights / weights.mean()

    def losses(self, indices, u, embedding, centres, sub_temperature=0.1):
        w = self.weights[indices]
        out = {"centre": centre_loss(u, self.soft[indices], centres, w)}
        if self.sub_labels:
            logits = F.normalize(embedding, dim=1) @ self.prototypes.T / sub_temperature
            ce = F.cross_entropy(logits, self.sub_label[indices], reduction="none")
            out["sub_label"] = (w * ce).sum() / w.sum()
        return out


class ThesisSLD(HashMethod):
    name = "thesis-sld"
    train_config = {"epochs": 30, "batch_size": 64,
                    "optimizer": {"type": "Adam", "lr": 5.8e-4, "weight_decay": 1e-5}}
    search_space = {"lr": ("log", 1e-4, 1e-2), "beta_min": ("float", 0.1, 0.9),
                    "isolated_weight": ("float", 0.01, 1.0), "sub_centres": ("int", 1, 5),
                    "quantisation": ("log", 0.01, 1.0), "neighbours": ("int", 5, 20),
                    "min_per_sub": ("int", 4, 16)}

    def __init__(self, bits, num_classes, input_shapes, label_correction: bool = True,
                 sub_labels: bool = True, isolation: bool = True, balance: bool = True,
                 neighbours: int = 13, beta_min: float = 0.81, sub_centres: int = 5,
                 isolated_weight: float = 0.96, quantisation: float = 0.14, hidden: int = 1024,
                 min_per_sub: int = 14):
        super().__init__(bits, num_classes, input_shapes)
        self.embed = nn.Sequential(nn.Linear(input_shapes["pooled"][0], hidden), nn.ReLU())
        self.hash = nn.Linear(hidden, bits)
        self.quantisation = quantisation
        self.centres = hash_centres(num_classes, bits)  # training targets, not in encode
        self.state = SampleLabelState(num_classes, label_correction, sub_labels, isolation,
                                      balance, neighbours, beta_min=beta_min,
                                      sub_centres=sub_centres, min_per_sub=min_per_sub,
                                      isolated_weight=isolated_weight)

    def encode(self, inputs):
        return self.hash(self.embed(inputs["pooled"]))

    def real_valued(self, inputs):
        return self.embed(inputs["pooled"])

    def on_epoch_start(self, epoch, data):
        memory = F.normalize(torch.cat([self.embed(x) for x in data.inputs["pooled"].split(512)]), dim=1)
        self.state.refresh(epoch, memory, data.labels)

    def loss(self, batch):
        embedding = self.embed(batch["inputs"]["pooled"])
        u = torch.tanh(self.hash(embedding))
        centres = self.centres.to(u.device)  # a fixed target, kept out of the module's state
        losses = self.state.losses(batch["indices"], u, embedding, centres)
        losses["quantisation"] = self.quantisation * quantisation_loss(u)
        return losses


VARIANTS = [ablation(ThesisSLD, "nolc", label_correction=False),
            ablation(ThesisSLD, "nosub", sub_labels=False),
            ablation(ThesisSLD, "noiso", isolation=False),
            ablation(ThesisSLD, "nobal", balance=False),
            ablation(ThesisSLD, "none", label_correction=False, sub_labels=False, balance=False)]


@hookimpl
def benchmark_methods():
    return [ThesisSLD, *VARIANTS]
