"""CMBH: Characteristics Matching Based Hash Codes Generation (Chen, Zhao, Zhang, Luo & Xu,
CVPR 2024). No public code; written from the paper (analysis in seeds/001, Sec. 4-6).

* Stage features (Eq. 1-2): f^j = N_sub-j(F^j), two convolutions + global max pooling + FC
  to d, for the last L = 3 stages; the hash path uses stage l (``hash_stage``, see below).
* C-vectors C (y x k x d, k = 2) and matching M_i(a, b) = cos(C_ab, f_i^l) (Eq. 3).
* Codes (Eq. 4, or Eq. 12 with the transfer module): u = tanh(W_h vec(softmax(y^l) (.) M)),
  b = sign(u); ``encode`` returns W_h vec(...) (same sign).
* L_hash (Eq. 5-7) = mean (u_i^T b_j^(t-1) - bits S^p_ij)^2 + mean (u_i^T c_j^(t-1) - bits S^c_ij)^2
  over the batch x all training samples / classes; S's zeros become -sum(S)/sum(1-S);
  b^(t-1) = sign(u), c^(t-1) = class means of u, both from the network at the start of the
  epoch.
* ``layers`` (+L, Eq. 8-10): f^0 = N_con(concat f^1..f^3), M^con = cos(C, f^0);
  L_cls = sum_j CE(y^j), y^0 = alpha sum_k M^con, y^l = alpha sum_k M, y^j = N_cls-j(f^j).
* ``transfer`` (+T, Eq. 11-12): L_trans = CE(softmax(sum_j y^j), y^l) (teacher detached), and
  the codes use Eq. 12's softmax(y^l) weighting.
* ``regions`` (+R, Algorithm 1, Eq. 13-14): M = 4 boxes from the channel mean of the stage
  maps (positive part) resized to the last stage's size; each crop goes through the same
  path with y^{m,0} = alpha max_k M^{m,con}, y^{m,l} = alpha max_k M^m; L_region = sum_m L_cls^m + L_trans^m.
* Inference: N_sub-l, C and W_h only; N_sub-1/3, N_con, N_cls-j and the regions are
  training-only (``encode`` never touches them).

Hyper-parameters: k = 2, M = 4, alpha = 16 (paper: 12 or 16), SGD momentum 0.9,
weight decay 5e-4, batch 16 (paper's CUB setting). ``cmbh-b``, ``cmbh-l``, ``cmbh-lt`` are the
ablation rows B, B+L, B+L+T of Table 4; ``cmbh`` is the full method (B+L+T+R).

Departures: d = 256 and N_sub-j = 1x1 conv (width 32) + BN + ReLU + 3x3 conv + BN + ReLU (the
paper gives neither d nor the convolution sizes). b^(0), c^(0) are the untrained network's
codes (the paper: random). A_i (Algorithm 1) averages the positive part of the stage maps:
ResNet's stage outputs are post-ReLU heat maps, but EfficientNet-Lite0's end in a linear
projection with about half of their values negative (the positive part is a no-op on ResNet).

Frozen regime (the defaults): N_sub-j are trainable heads on the cached EfficientNet-Lite0
stage maps, and
* the hash path uses the last stage, s32 (``hash_stage=2``), not the paper's penultimate
  one (l = 2 of L = 3, i.e. ``hash_stage=1``, the setting for ``--regime finetune``): the
  paper fine-tunes the backbone, so its penultimate stage learns what the cross-layer
  transfer pushes into it; frozen, EfficientNet-Lite0's s16 map is a mid-network block that
  a linear probe on the training images classifies far worse than s32;
* the image crops of Algorithm 1 become bilinear crops of the cached maps at half each
  stage's resolution (a crop of a frozen map holds no more detail than its cells), computed
  as two interpolation-matrix products, exactly as ``roi_align(aligned=True,
  sampling_ratio=1)`` would; each training image's boxes are found once (its maps are fixed);
* lr 3.2e-3 for 21 epochs without the x0.1 step (the paper: lr 1e-3 for 100 epochs, step at
  70). With ``--regime finetune`` the defaults are the paper's recipe (``regime_hparams``):
  lr 1e-3, 100 epochs, lr x0.1 after epoch 70 (``schedule = "step:70:0.1"``).
How these defaults were chosen: on a validation split (issue #12), cub100's train split with
20% of each class held out as queries. First, at 12 bits, 30 epochs per hash stage:
``hash_stage=2`` scored far higher at every epoch than ``hash_stage=1``. Then the
equal-budget tune of the default grid (``configs/default-grid.yaml``: 8 trials at 32 bits
over lr, epochs, hash stage, alpha and ``positive_maps``) chose lr 3.2e-3 (rounded), 21
epochs, hash stage 2, alpha 16 and the positive-part map; these replace the lr and the map
that issue #5 had picked with the test-split mAP in view.
The measured ablation rows are in ``leaderboards/ablations``.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from benchmark.method import HashMethod
from registry import hookimpl

STAGES = ("s8", "s16", "s32")


def largest_components(hot: torch.Tensor) -> torch.Tensor:
    """The largest 8-connected component of each boolean map in a (B, h, w) batch.

    Components are found by propagating the largest cell index through 3x3 neighbourhoods
    until nothing changes; on equal sizes the component with the smallest such index wins."""
    batch, height, width = hot.shape
    mask = hot.float()
    ids = torch.arange(1, height * width + 1, dtype=torch.float32,
                       device=hot.device).view(1, height, width) * mask
    while True:
        grown = F.max_pool2d(ids.unsqueeze(1), 3, stride=1, padding=1).squeeze(1) * mask
        if torch.equal(grown, ids):
            break
        ids = grown
    flat = ids.long().view(batch, -1)
    sizes = torch.zeros(batch, height * width + 1, device=hot.device).scatter_add_(
        1, flat, mask.view(batch, -1))
    sizes[:, 0] = -1  # background
    return (ids == sizes.argmax(1).view(batch, 1, 1).float()) & hot


def bounding_boxes(mask: torch.Tensor) -> torch.Tensor:
    """(B, 4) inclusive cell boxes (x1, y1, x2, y2) of non-empty (B, h, w) masks."""
    rows, cols = mask.any(2), mask.any(1)
    first = lambda m: m.float().argmax(1)  # noqa: E731
    last = lambda m: m.shape[1] - 1 - m.flip(1).float().argmax(1)  # noqa: E731
    return torch.stack([first(cols), first(rows), last(cols), last(rows)], dim=1)


def locate_regions(activation: torch.Tensor, count: int = 4) -> torch.Tensor:
    """Algorithm 1 on a (B, h, w) batch of maps A_i: (B, count, 4) boxes (x1, y1, x2, y2),
    inclusive cell indices. Step m thresholds at a (0.9 - 0.05 m), keeps the largest
    connected component's box, then sets A <- A (1 - H) + (H a - H A)."""
    a_map = activation.float().clone()
    boxes = []
    for m in range(1, count + 1):
        peak = a_map.amax(dim=(1, 2), keepdim=True)
        hot = a_map > peak * (0.9 - 0.05 * m)
        boxes.append(bounding_boxes(largest_components(hot)))
        h = hot.float()
        a_map = a_map * (1 - h) + (h * peak - h * a_map)
    return torch.stack(boxes, dim=1)


def sample_weights(low: torch.Tensor, high: torch.Tensor, cells: int, size: int) -> torch.Tensor:
    """(N, cells, size) linear-interpolation weights of ``cells`` samples at the centres of
    equal parts of [low, high] (N fractions of an axis of ``size`` cells), positions clamped
    to the axis (``grid_sample``'s border padding, ``align_corners=False``)."""
    centres = (torch.arange(cells, device=low.device, dtype=low.dtype) + 0.5) / cells
    position = ((low[:, None] + (high - low)[:, None] * centres) * size - 0.5).clamp(0, size - 1)
    left = position.floor()
    right_share = position - left
    left = left.long()
    weights = torch.zeros(len(low), cells, size, device=low.device, dtype=low.dtype)
    weights.scatter_add_(2, left[..., None], (1 - right_share)[..., None])
    return weights.scatter_add_(2, (left + 1).clamp(max=size - 1)[..., None], right_share[..., None])


def crop(maps: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear crops of (B, C, H, W) maps: ``boxes`` (B, R, 4) in [0, 1] image fractions
    (x1, y1, x2, y2) -> (B * R, C, *size) channels-last, one sample at each output cell's
    centre (= ``torchvision.ops.roi_align(aligned=True, sampling_ratio=1)``). Bilinear
    sampling of an axis-aligned box is separable: crop = W_y . map . W_x^T, two matrix
    products per crop."""
    batch, regions = boxes.shape[:2]
    channels, height, width = maps.shape[1:]
    x1, y1, x2, y2 = boxes.reshape(-1, 4).to(maps.dtype).unbind(1)
    rows = sample_weights(y1, y2, size[0], height).view(batch, regions * size[0], height)
    cols = sample_weights(x1, x2, size[1], width)                     # (B * R, w, W)
    pixels = maps.permute(0, 2, 3, 1).reshape(batch, height, width * channels)
    picked = (rows @ pixels).view(batch * regions, size[0], width, channels)
    return (cols[:, None] @ picked).permute(0, 3, 1, 2)              # (B * R, C, h, w)


def activation_map(maps: list[torch.Tensor], positive: bool = True) -> torch.Tensor:
    """A_i: channel mean of the stage maps resized to the last one's size (B, h, w), over
    their positive part: ResNet's stage outputs (post-ReLU) are activations already, while
    EfficientNet's end in a linear projection whose signed channel mean is no heat map.
    Each map's channel sum is resized (resizing is linear: the same as resizing every channel)."""
    size = maps[-1].shape[-2:]
    summed = [(m.clamp(min=0) if positive else m).sum(1, keepdim=True) for m in maps]
    total = sum(s if s.shape[-2:] == size else F.adaptive_avg_pool2d(s, size) for s in summed)
    return total.squeeze(1) / sum(m.shape[1] for m in maps)


class StageEncoder(nn.Module):
    """N_sub-j: two convolutions, global max pooling, a fully connected layer to d;
    ``reduce`` is the first (1x1, no bias) convolution, ``head`` the rest."""

    def __init__(self, channels: int, width: int, dim: int):
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(channels, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.fc = nn.Linear(width, dim)

    def reduce(self, x):
        """The 1x1 convolution, channels-last (the same values; the convolutions, batch
        norms and crops that follow run several times faster in that layout on a CPU)."""
        return self.convs[0](x.contiguous(memory_format=torch.channels_last))

    def head(self, reduced):
        """The rest of N_sub-j; global max pooling by ``adaptive_max_pool2d``, whose
        gradient goes to the maximum's index (``amax``'s builds a mask of the whole map)."""
        return self.fc(F.adaptive_max_pool2d(self.convs[1:](reduced), 1).flatten(1))

    def forward(self, x):
        return self.head(self.reduce(x))


class CMBH(HashMethod):
    name = "cmbh"
    inputs = "stages"
    train_config = {"epochs": 21, "batch_size": 16,
                    "optimizer": {"type": "SGD", "lr": 3.2e-3, "momentum": 0.9,
                                  "weight_decay": 5e-4}}
    regime_hparams = {"finetune": {"lr": 1e-3, "epochs": 100, "schedule": "step:70:0.1"}}
    search_space = {"lr": ("log", 1e-3, 3e-2), "epochs": ("int", 6, 30),
                    "hash_stage": ("choice", [1, 2]), "alpha": ("choice", [12.0, 16.0]),
                    "positive_maps": ("choice", [True, False])}

    def __init__(self, bits, num_classes, input_shapes, layers: bool = True,
                 transfer: bool = True, regions: bool = True, k: int = 2, dim: int = 256,
                 width: int = 32, alpha: float = 16.0, num_regions: int = 4, hash_stage: int = 2,
                 positive_maps: bool = True):
        super().__init__(bits, num_classes, input_shapes)
        self.layers, self.transfer, self.regions = bool(layers), bool(transfer), bool(regions)
        self.k, self.alpha, self.num_regions, self.l = k, alpha, num_regions, hash_stage
        self.positive_maps = bool(positive_maps)
        channels = [input_shapes[s][0] for s in STAGES]
        self.c_vectors = nn.Parameter(torch.randn(num_classes, k, dim))
        self.sub = nn.ModuleList(StageEncoder(c, width, dim) for c in channels)
        self.hash_layer = nn.Linear(num_classes * k, bits, bias=False)  # W_h
        self.fusion = nn.Linear(len(STAGES) * dim, dim)                  # N_con (train only)
        self.stage_classifiers = nn.ModuleList(                         # N_cls-j (train only)
            nn.Linear(dim, num_classes) for _ in STAGES)
        self.previous = None  # (b^(t-1), c^(t-1), S^p ratio, labels): training state
        self.boxes = None     # Algorithm 1's boxes per training position (frozen maps)

    # --- the inference path: N_sub-l, matching, W_h ------------------------------------
    def matching(self, f):
        """Eq. 3: cosine of every C-vector with f -> (B, classes, k)."""
        c = F.normalize(self.c_vectors, dim=-1)
        return torch.einsum("ykd,bd->byk", c, F.normalize(f, dim=-1))

    def code_logits(self, m):
        """Eq. 4 / Eq. 12: W_h vec(M), class-weighted by softmax(alpha sum_k M) with T."""
        if self.transfer:
            m = torch.softmax(self.alpha * m.sum(-1), dim=1).unsqueeze(-1) * m
        return self.hash_layer(m.flatten(1))

    def encode(self, inputs):
        return self.code_logits(self.matching(self.sub[self.l](inputs[STAGES[self.l]])))

    # --- training ----------------------------------------------------------------------
    @torch.no_grad()
    def on_epoch_start(self, epoch, data):
        stage = STAGES[self.l]  # encode reads the hash stage only
        u = torch.cat([torch.tanh(self.encode({stage: x})) for x in data.inputs[stage].split(256)])
        labels = data.labels
        onehot = F.one_hot(labels, self.num_classes).float()
        class_means = (onehot.T @ u) / onehot.sum(0).clamp(min=1)[:, None]
        counts = onehot.sum(0)
        similar_pairs = (counts ** 2).sum()
        ratio = similar_pairs / (len(labels) ** 2 - similar_pairs)
        self.previous = (torch.where(u >= 0, 1.0, -1.0), class_means, ratio, labels.clone())

    def hash_loss(self, u, labels):
        """Eq. 5-7 against the previous epoch's codes b and class proxies c."""
        codes, proxies, ratio, all_labels = self.previous
        s_pair = torch.where(labels[:, None] == all_labels[None, :], 1.0, -ratio)
        s_class = torch.where(F.one_hot(labels, self.num_classes) > 0, 1.0,
                              -1.0 / max(self.num_classes - 1, 1))
        pair = ((u @ codes.T - self.bits * s_pair) ** 2).mean()
        proxy = ((u @ proxies.T - self.bits * s_class) ** 2).mean()
        return pair, proxy

    def class_vectors(self, reduced, pool):
        """Eq. 10 / 13: the class vectors y^0..y^L of one input and M^l; ``reduced``
        holds each stage's map after its N_sub-j's first convolution (``reduce_maps``)."""
        if not self.layers:
            m = self.matching(self.sub[self.l].head(reduced[self.l]))
            return [self.alpha * pool(m)], m
        feats = [sub.head(x) for sub, x in zip(self.sub, reduced)]
        m = self.matching(feats[self.l])
        fused = self.matching(self.fusion(torch.cat(feats, dim=1)))
        vectors = [self.alpha * pool(fused)]
        for j, f in enumerate(feats):
            vectors.append(self.alpha * pool(m) if j == self.l else self.stage_classifiers[j](f))
        return vectors, m

    def semantic_losses(self, vectors, labels):
        """Eq. 10 (sum of CE over the class vectors) and Eq. 11 (KD into y^l)."""
        cls = sum(F.cross_entropy(v, labels) for v in vectors)
        student = vectors[1 + self.l] if self.layers else vectors[0]
        teacher = torch.softmax(sum(vectors).detach(), dim=1)
        trans = -(teacher * F.log_softmax(student, dim=1)).sum(1).mean()
        return cls, trans

    def reduce_maps(self, maps):
        """Each stage map through its N_sub-j's first convolution (only the hash stage's
        without ``layers``; None for the others)."""
        return [sub.reduce(x) if self.layers or j == self.l else None
                for j, (sub, x) in enumerate(zip(self.sub, maps))]

    def region_boxes(self, maps, indices):
        """Algorithm 1's boxes (B, M, 4) in image fractions. They depend on the stage maps
        alone, so maps without gradients (the frozen regime's cached outputs, the same at a
        training position every epoch) have them computed once per position."""
        if any(m.requires_grad for m in maps):  # finetune: the maps change with the backbone
            return self.locate(maps)
        end = int(indices.max()) + 1
        if self.boxes is None or len(self.boxes) < end:
            grown = torch.full((end, self.num_regions, 4), -1.0, device=maps[0].device)
            if self.boxes is not None:
                grown[:len(self.boxes)] = self.boxes
            self.boxes = grown
        missing = indices[self.boxes[indices, 0, 0] < 0]
        if len(missing):
            rows = torch.isin(indices, missing)
            self.boxes[indices[rows]] = self.locate([m[rows] for m in maps])
        return self.boxes[indices]

    def locate(self, maps):
        activation = activation_map([m.detach() for m in maps], self.positive_maps)
        h, w = activation.shape[-2:]
        cells = locate_regions(activation, self.num_regions).float()
        scale = torch.tensor([w, h, w, h], dtype=torch.float32, device=cells.device)
        return (cells + torch.tensor([0.0, 0.0, 1.0, 1.0], device=cells.device)) / scale

    def region_maps(self, boxes, reduced):
        """Bilinear crops of the ``boxes`` at half each stage's resolution of the
        ``reduced`` maps: the first convolution is 1x1 without bias, so cropping its output
        equals convolving the crops of the input."""
        return [None if x is None else crop(x, boxes, (max(x.shape[-2] // 2, 1),
                                                       max(x.shape[-1] // 2, 1)))
                for x in reduced]

    def loss(self, batch):
        maps = [batch["inputs"][s] for s in STAGES]
        labels = batch["labels"]
        reduced = self.reduce_maps(maps)
        vectors, m = self.class_vectors(reduced, lambda t: t.sum(-1))
        u = torch.tanh(self.code_logits(m))
        pair, proxy = self.hash_loss(u, labels)
        losses = {"hash_pair": pair, "hash_proxy": proxy}
        if self.layers:
            cls, trans = self.semantic_losses(vectors, labels)
            losses["cls"] = cls
            if self.transfer:
                losses["trans"] = trans
        if self.regions:
            boxes = self.region_boxes(maps, batch["indices"])
            region_vectors, _ = self.class_vectors(self.region_maps(boxes, reduced),
                                                   lambda t: t.amax(-1))
            cls, trans = self.semantic_losses(region_vectors,
                                              labels.repeat_interleave(self.num_regions))
            # Eq. 14 sums over the M regions; the CE means above average over B * M crops
            losses["region"] = self.num_regions * (cls + (trans if self.transfer else 0))
        return losses


class CMBHBase(CMBH):
    """Ablation row B of Table 4: C-vector matching and L_hash only."""
    name = "cmbh-b"
    variant_hparams = {"layers": False, "transfer": False, "regions": False}


class CMBHLayers(CMBH):
    """Ablation row B+L of Table 4: adds early fusion and the per-layer classification."""
    name = "cmbh-l"
    variant_hparams = {"transfer": False, "regions": False}


class CMBHLayersTransfer(CMBH):
    """Ablation row B+L+T of Table 4: adds the cross-layer transfer (Eq. 11-12)."""
    name = "cmbh-lt"
    variant_hparams = {"regions": False}


@hookimpl
def benchmark_methods():
    return [CMBH, CMBHBase, CMBHLayers, CMBHLayersTransfer]
