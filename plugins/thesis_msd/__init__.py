"""thesis-msd: multi-scale feature disentanglement (Mao, "Deep Disentanglement Learning for
Fine-Grained Visual Retrieval", PKU thesis, contribution 1).

A re-implementation from the thesis abstract (only the abstract is available) and the
author's earlier RIPR code (IJCAI 2019) for the dual-path design. The abstract states: a
dual-path network processes high- and low-resolution images separately, improving detail
and cross-resolution matching; text-guided global-local learning uses part prompts to focus
on discriminative local regions without part annotations (+15.6% rank-1 on SOP).

What we chose (each component is an ablation switch):

* ``dual_path``: RIPR-style cascade over the backbone stages s8 -> s16 -> s32 -> pooled
  (s8 average-pooled to the s16 grid first, to keep CPU training affordable).
  Each stage has two paths (1x1 conv + BN + ReLU) on the same input (the stage map
  concatenated with the pooled previous fused map); scalar gates
  a_k = sigmoid(FC(ReLU(FC(GAP(f_k))))) (RIPR's ``attentionlinear``) fuse f = a1 f1 + a2 f2.
  ``False`` keeps one path and no gates (the single-path baseline).
* ``gate_supervision``: RIPR's loss ``sum_stages MSE(a1, r) + MSE(a2, 1 - r)``, r the
  sample's resolution ratio (``batch["resolution"]``; 1 when the harness gives none),
  weighted by ``gate_weight`` (RIPR 0.01 beside a cross-entropy; 0.1 here beside the
  smaller centre loss). Training draws each sample's resolution from
  ``train_resolutions = (1, 2, 4)`` (harness-owned).
* ``parts``: ``"text"`` - P part prompts (``prompts``: bird/car/aircraft/object) embedded
  once by all-MiniLM-L6-v2 (``prompts.npz``, made by ``make_prompt_embeddings.py``),
  linearly projected to queries that attend (softmax over the 7x7 positions) over the last
  fused map -> P local features; ``"learned"`` - the same with free query vectors (the
  fallback when no text encoder is available); ``"none"`` - global feature only.
  ``diversity`` weights the mean pairwise cosine between part attention maps.
* Hash head and loss: [global, locals] -> linear -> ``bits``; CSQ-style centre loss on
  tanh outputs plus quantisation (the thesis' retrieval loss is not in the abstract).

Frozen regime: the backbone is fixed, so the two "paths" are trainable heads on the
cached stage maps of the (randomly downsampled) image, not two backbones as in RIPR; RIPR's
super-resolution sub-network needs pixels and is left out.
"""
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmark.method import HashMethod
from plugins.csq import hash_centres
from plugins.thesis_blocks import ablation, centre_loss, one_hot, quantisation_loss
from registry import hookimpl

PROMPT_FILE = Path(__file__).with_name("prompts.npz")


def load_prompt_embeddings(kind: str) -> torch.Tensor:
    """(P, 384) sentence embeddings of the part prompts for ``kind``."""
    stored = np.load(PROMPT_FILE)
    if kind not in stored.files or kind.endswith("_text") or kind == "encoder":
        kinds = [k for k in stored.files if not k.endswith("_text") and k != "encoder"]
        raise ValueError(f"unknown prompts {kind!r}; available: {', '.join(kinds)}")
    return torch.from_numpy(stored[kind])


class DualPathStage(nn.Module):
    """Two 1x1-conv paths (conv + BN + ReLU) on one input, fused by scalar gates (one path,
    no gates if not dual). The input is the concatenation of parts (``in_channels``: one
    width per part, e.g. a stage map and the previous stage's output); its convolution runs
    as one per part, summed (no concatenated copy, and no input gradient for a frozen map).
    The paths run side by side in those convolutions and in one batch norm (batch norm is
    per channel: the same as separate layers); each path's weights start as its own
    ``Conv2d`` on the whole input would."""

    def __init__(self, in_channels, out_channels: int, dual: bool, gate_hidden: int = 16):
        super().__init__()
        widths = (in_channels,) if isinstance(in_channels, int) else tuple(in_channels)
        paths = [nn.Conv2d(sum(widths), out_channels, 1) for _ in range(2 if dual else 1)]
        self.out_channels = out_channels
        weight = torch.cat([p.weight.detach() for p in paths])
        self.weights = nn.ParameterList(w.contiguous() for w in weight.split(widths, dim=1))
        self.bias = nn.Parameter(torch.cat([p.bias.detach() for p in paths]))
        self.norm = nn.BatchNorm2d(out_channels * len(paths))
        self.gates = nn.ModuleList(
            nn.Sequential(nn.Linear(out_channels, gate_hidden), nn.ReLU(),
                          nn.Linear(gate_hidden, 1), nn.Sigmoid()) for _ in range(2 if dual else 0))

    def forward(self, *parts):
        """Return (fused map, gates (B, 2) or None) of the parts' concatenation."""
        if parts[0].shape[2:] == (1, 1):  # on a 1x1 map a convolution is a linear layer (faster)
            y = self.bias
            for x, w in zip(parts, self.weights):
                y = torch.addmm(y, x.flatten(1), w.flatten(1).t())
            y = y[:, :, None, None]
        else:
            y = F.conv2d(parts[0], self.weights[0], self.bias)
            for x, w in zip(parts[1:], self.weights[1:]):
                y = y + F.conv2d(x, w)
        outputs = F.relu(self.norm(y)).split(self.out_channels, dim=1)
        if not self.gates:
            return outputs[0], None
        gates = torch.cat([g(f.mean((2, 3))) for g, f in zip(self.gates, outputs)], 1)
        fused = gates[:, 0, None, None, None] * outputs[0] + gates[:, 1, None, None, None] * outputs[1]
        return fused, gates


class PartAttention(nn.Module):
    """P queries attend over a (B, C, H, W) map -> (B, P, C) local features and (B, P, HW) maps."""

    def __init__(self, channels: int, queries: torch.Tensor | int, query_dim: int = 384):
        super().__init__()
        if isinstance(queries, int):
            self.query = nn.Parameter(torch.randn(queries, channels) * channels ** -0.5)
        else:
            self.register_buffer("prompts", queries.float())
            self.project = nn.Linear(queries.shape[1], channels)
        self.key = nn.Conv2d(channels, channels, 1)

    def queries(self):
        return self.project(self.prompts) if hasattr(self, "prompts") else self.query

    def forward(self, x):
        keys = self.key(x).flatten(2)                                   # (B, C, HW)
        logits = torch.einsum("pc,bcn->bpn", self.queries(), keys) / keys.shape[1] ** 0.5
        attention = logits.softmax(-1)
        return torch.einsum("bpn,bcn->bpc", attention, x.flatten(2)), attention


def diversity_loss(attention: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity between the attention maps of different parts."""
    a = F.normalize(attention, dim=-1)
    gram = a @ a.transpose(1, 2)
    p = gram.shape[1]
    off_diagonal = gram.sum((1, 2)) - gram.diagonal(dim1=1, dim2=2).sum(1)
    return (off_diagonal / (p * (p - 1))).mean()


def gate_loss(gates: list[torch.Tensor], ratio: torch.Tensor) -> torch.Tensor:
    """RIPR's gate supervision: sum over stages of MSE(a1, r) + MSE(a2, 1 - r)."""
    return sum(F.mse_loss(g[:, 0], ratio) + F.mse_loss(g[:, 1], 1 - ratio) for g in gates)


class MultiScaleNet(nn.Module):
    """Dual-path cascade over (s8, s16, s32, pooled) + optional part attention -> feature."""

    def __init__(self, input_shapes, dual_path=True, parts="text", prompts="bird",
                 num_parts=6, widths=(32, 64, 128, 512), local_dim=64):
        super().__init__()
        if parts not in ("text", "learned", "none"):
            raise ValueError(f"parts must be 'text', 'learned' or 'none', got {parts!r}")
        c8, c16, c32, cp = (input_shapes[n][0] for n in ("s8", "s16", "s32", "pooled"))
        w8, w16, w32, wp = widths
        self.stages = nn.ModuleList([DualPathStage(c8, w8, dual_path),
                                     DualPathStage((c16, w8), w16, dual_path),
                                     DualPathStage((c32, w16), w32, dual_path),
                                     DualPathStage((cp, w32), wp, dual_path)])
        self.parts = None
        if parts != "none":
            queries = load_prompt_embeddings(prompts) if parts == "text" else num_parts
            self.parts = PartAttention(w32, queries)
            self.local = nn.Linear(w32, local_dim)
        self.dim = wp + (len(self.parts.queries()) * local_dim if self.parts else 0)

    def forward(self, inputs):
        """Return (feature (B, dim), gates per stage, part attention or None). The maps go
        through the 1x1 convolutions and s8 through its average pooling channels-last (the
        same values, several times faster on a CPU; the harness delivers them so to the
        methods below, ``channels_last_inputs``, and other inputs are converted here)."""
        s16, s32 = channels_last(inputs["s16"]), channels_last(inputs["s32"])
        g8, a8 = self.stages[0](pool_to(channels_last(inputs["s8"]), s16))
        g16, a16 = self.stages[1](s16, pool_to(g8, s16))
        g32, a32 = self.stages[2](s32, pool_to(g16, s32))
        top, ap = self.stages[3](inputs["pooled"][:, :, None, None], g32.mean((2, 3), keepdim=True))
        features, attention = [top.flatten(1)], None
        if self.parts is not None:
            local, attention = self.parts(g32)
            features.append(self.local(local).flatten(1))
        gates = [a for a in (a8, a16, a32, ap) if a is not None]
        return torch.cat(features, 1), gates, attention


def channels_last(x):
    return x.contiguous(memory_format=torch.channels_last)


def pool_to(x, like):
    """Average-pool ``x`` to the spatial size of ``like`` (``x`` itself at that size; plain
    average pooling when the sizes divide, which gives the same windows)."""
    size, have = tuple(like.shape[2:]), tuple(x.shape[2:])
    if have == size:
        return x
    if all(h % s == 0 for h, s in zip(have, size)):
        return F.avg_pool2d(x, tuple(h // s for h, s in zip(have, size)))
    return F.adaptive_avg_pool2d(x, size)


class ThesisMSD(HashMethod):
    name = "thesis-msd"
    inputs = "stages"
    train_resolutions = (1, 2, 4)
    channels_last_inputs = True  # the stage maps' 1x1 convolutions run channels-last
    train_config = {"epochs": 20, "batch_size": 64,
                    "optimizer": {"type": "Adam", "lr": 1e-3, "weight_decay": 1e-5}}
    search_space = {"lr": ("log", 1e-4, 1e-2), "gate_weight": ("log", 0.01, 1.0),
                    "diversity": ("log", 0.01, 1.0), "quantisation": ("log", 0.01, 1.0)}

    def __init__(self, bits, num_classes, input_shapes, dual_path: bool = True,
                 gate_supervision: bool = True, gate_weight: float = 0.1, parts: str = "text",
                 prompts: str = "bird", diversity: float = 0.1, quantisation: float = 0.1):
        super().__init__(bits, num_classes, input_shapes)
        self.net = MultiScaleNet(input_shapes, dual_path, parts, prompts)
        self.hash = nn.Linear(self.net.dim, bits)
        self.gate_weight = gate_weight if (gate_supervision and dual_path) else 0.0
        self.diversity = diversity if parts != "none" else 0.0
        self.quantisation = quantisation
        self.centres = hash_centres(num_classes, bits)  # training targets, not in encode

    def encode(self, inputs):
        return self.hash(self.net(inputs)[0])

    def real_valued(self, inputs):
        return self.net(inputs)[0]

    def loss(self, batch):
        features, gates, attention = self.net(batch["inputs"])
        u = torch.tanh(self.hash(features))
        labels = batch["labels"]
        centres = self.centres.to(u.device)  # a fixed target, kept out of the module's state
        losses = {"centre": centre_loss(u, one_hot(labels, self.num_classes), centres),
                  "quantisation": self.quantisation * quantisation_loss(u)}
        if self.gate_weight:
            ratio = batch.get("resolution", torch.ones(len(labels), device=u.device)).float()
            losses["gates"] = self.gate_weight * gate_loss(gates, ratio)
        if self.diversity:
            losses["diversity"] = self.diversity * diversity_loss(attention)
        return losses


#: the single-path baseline (same heads, one path, no gates, no parts) and one row per switch
VARIANTS = [ablation(ThesisMSD, "single", dual_path=False, parts="none"),
            ablation(ThesisMSD, "nogate", gate_supervision=False),
            ablation(ThesisMSD, "learned", parts="learned"),
            ablation(ThesisMSD, "noparts", parts="none")]


@hookimpl
def benchmark_methods():
    return [ThesisMSD, *VARIANTS]
