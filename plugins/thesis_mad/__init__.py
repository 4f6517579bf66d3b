"""thesis-mad: multi-semantic attribute disentanglement encoding, unsupervised (Mao, "Deep
Disentanglement Learning for Fine-Grained Visual Retrieval", PKU thesis, contribution 3).

A re-implementation from the thesis abstract (only the abstract is available). The abstract
states: the different layers of a conditional diffusion model carry different semantics,
so the network output is disentangled into multi-semantic features; information entropy
selects the informative parts, which are encoded into compact, discriminative binary codes
(CUB, 32 bits: 17.1% -> 30.1% mAP over its baseline). It does not say what the condition
is, what the denoiser predicts, how features are read out, or how codes are formed.

What we chose (each component is an ablation switch):

* ``diffusion``: a DDPM over the standardised pooled feature x0, conditioned on the
  standardised global-average-pooled stage maps (s8, s16, s32) of the same image; the
  denoiser is an MLP with ``layers`` hidden layers of width ``hidden`` (SiLU; sinusoidal
  timestep embedding added to each layer), trained with MSE. ``steps`` = 100 with DDPM's
  linear betas 1e-4..0.02 rescaled by 1000 / ``steps`` (so alpha_bar_T ~ 2e-5). ``False``:
  the candidates are the standardised backbone features themselves (pooled + pooled stage
  maps); the registered ablation ``thesis-mad-nodiff`` is then closed-form (``fit``).
* ``prediction``: what the denoiser regresses, ``"x0"`` (the clean feature, default) or
  ``"eps"`` (the noise, DDPM's usual parameterisation; ablation ``thesis-mad-eps``).
* ``multi_layer``: the candidates are the pre-activations of every hidden layer at the fixed
  timestep ``timestep * steps``, with noise-free x_t = sqrt(abar_t) x0 so codes are
  deterministic (the thesis' choice of noise at encoding is not stated); ``False``: the
  last hidden layer only.
* ``entropy_selection`` / ``decorrelation``: greedy choice of candidates by the binary
  entropy of their signs (for a pre-activation: whether the unit fires) over the training
  set minus ``decorrelation`` times the largest |correlation| with those already chosen
  (``plugins.thesis_blocks.select_dimensions``); with both off, the first candidates.
* ``encoding``: how the chosen parts become codes. ``"itq"`` (default): the selection keeps
  ``subset`` candidates (capped at their number), standardised on the training set, and
  ITQ (``plugins.classic.ITQ``: PCA to ``bits`` + learned orthogonal rotation,
  ``itq_iterations``) encodes them. ``"select"`` (ablation ``thesis-mad-direct``): the
  selection keeps ``bits`` candidates and each code bit is the sign of one of them.
* ``contrastive``: weight of an optional two-view InfoNCE (two noise draws of x_t, the
  concatenated normalised pre-activations, temperature 0.2) added to the denoising loss.

Selection and encoding are fitted by ``on_train_end`` on the training set (and, so that
mid-training encodes work, at each epoch start). Labels are never used.

How the defaults were chosen: the prediction target, the encoding, the subset size, the
layers, the encoding timestep and lr by a tune on a validation split (issue #12,
``configs/thesis-mad-tune.yaml``: 8 trials, 10 epochs, 32 bits, 20% of cub100's train split
as queries against the rest): it kept x0, ITQ and 512 from issue #6 (which had picked them
on the reported query set) and chose 4 layers, timestep 0.43 and lr 1.1e-3 (rounded).
"""
import math
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.method import HashMethod
from plugins.classic import ITQ
from plugins.thesis_blocks import ablation, select_dimensions
from registry import hookimpl

STAGES = ("s8", "s16", "s32")


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps (B,) -> (B, dim)."""
    freqs = torch.exp(-math.log(10000) * torch.arange(dim // 2, device=t.device) / (dim // 2))
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], 1)


class Denoiser(nn.Module):
    """MLP eps(x_t, c, t); ``forward`` also returns every hidden pre-activation."""

    def __init__(self, x_dim, c_dim, hidden, layers, t_dim=64):
        super().__init__()
        self.t_dim = t_dim
        self.hidden = nn.ModuleList([nn.Linear(x_dim + c_dim, hidden)] +
                                    [nn.Linear(hidden, hidden) for _ in range(layers - 1)])
        self.time = nn.ModuleList(nn.Linear(t_dim, hidden) for _ in range(layers))
        self.out = nn.Linear(hidden, x_dim)

    def forward(self, x_t, c, t):
        temb = timestep_embedding(t, self.t_dim)
        h, pre = torch.cat([x_t, c], 1), []
        for layer, time in zip(self.hidden, self.time):
            a = layer(h) + time(temb)
            pre.append(a)
            h = F.silu(a)
        return self.out(h), pre


def info_nce(a, b, temperature=0.2):
    a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
    logits = a @ b.T / temperature
    return F.cross_entropy(logits, torch.arange(len(a), device=a.device))


class ThesisMAD(HashMethod):
    name = "thesis-mad"
    supervised = False
    inputs = "stages"
    train_config = {"epochs": 30, "batch_size": 128,
                    "optimizer": {"type": "Adam", "lr": 1.1e-3, "weight_decay": 0.0}}
    search_space = {"lr": ("log", 1e-4, 1e-2), "prediction": ("choice", ["x0", "eps"]),
                    "encoding": ("choice", ["itq", "select"]),
                    "subset": ("choice", [256, 512, 1024]), "layers": ("int", 1, 4),
                    "timestep": ("float", 0.05, 0.5)}

    def __init__(self, bits, num_classes, input_shapes, diffusion: bool = True,
                 multi_layer: bool = True, entropy_selection: bool = True,
                 decorrelation: float = 1.0, contrastive: float = 0.0, timestep: float = 0.43,
                 steps: int = 100, hidden: int = 512, layers: int = 4, prediction: str = "x0",
                 encoding: str = "itq", subset: int = 512, itq_iterations: int = 50):
        super().__init__(bits, num_classes, input_shapes)
        if prediction not in ("x0", "eps"):
            raise ValueError(f"prediction must be 'x0' or 'eps', got {prediction!r}")
        if encoding not in ("itq", "select"):
            raise ValueError(f"encoding must be 'itq' or 'select', got {encoding!r}")
        x_dim = input_shapes["pooled"][0]
        c_dim = sum(input_shapes[s][0] for s in STAGES)
        self.diffusion, self.multi_layer, self.contrastive = diffusion, multi_layer, contrastive
        self.entropy_selection, self.decorrelation = entropy_selection, decorrelation
        self.prediction, self.encoding, self.itq_iterations = prediction, encoding, itq_iterations
        self.denoiser = Denoiser(x_dim, c_dim, hidden, layers)
        # DDPM's linear betas 1e-4..0.02 are for 1000 steps; rescaled to ``steps`` so that the
        # forward process still ends near pure noise (alpha_bar_T ~ 2e-5 at 100 steps, not 0.37)
        betas = (torch.linspace(1e-4, 0.02, steps) * (1000 / steps)).clamp(max=0.999)
        self.alpha_bar = torch.cumprod(1 - betas, 0)  # fixed schedule, not a parameter
        self.t_star = min(steps - 1, round(timestep * steps))
        for name, dim in (("x_mean", x_dim), ("x_std", x_dim), ("c_mean", c_dim), ("c_std", c_dim)):
            self.register_buffer(name, torch.zeros(dim) if "mean" in name else torch.ones(dim))
        n_candidates = (x_dim + c_dim if not diffusion else hidden * layers if multi_layer else hidden)
        if encoding == "select":
            self.register_buffer("selected", torch.arange(bits))
        else:
            keep = min(subset, n_candidates)
            if bits > keep:
                raise ValueError(f"thesis-mad: {bits} bits need at least {bits} candidates, "
                                 f"subset keeps {keep}")
            self.register_buffer("selected", torch.arange(keep))
            self.register_buffer("z_mean", torch.zeros(keep))
            self.register_buffer("z_std", torch.ones(keep))
            self.register_buffer("projection", torch.eye(keep, bits))
            self.register_buffer("offset", torch.zeros(bits))
        self.standardised = False

    def _x_c(self, inputs):
        c = torch.cat([inputs[s].mean((2, 3)) for s in STAGES], 1)
        return (inputs["pooled"] - self.x_mean) / self.x_std, (c - self.c_mean) / self.c_std

    def candidates(self, inputs):
        """Multi-semantic candidate features (B, D)."""
        x0, c = self._x_c(inputs)
        if not self.diffusion:
            return torch.cat([x0, c], 1)
        t = torch.full((len(x0),), self.t_star, dtype=torch.long, device=x0.device)
        abar = self.alpha_bar.to(x0.device)[self.t_star]
        _, pre = self.denoiser(abar.sqrt() * x0, c, t)
        return torch.cat(pre, 1) if self.multi_layer else pre[-1]

    def encode(self, inputs):
        chosen = self.candidates(inputs)[:, self.selected]
        if self.encoding == "select":
            return chosen  # the sign: the same quantity whose entropy chose the dimension
        return ((chosen - self.z_mean) / self.z_std) @ self.projection - self.offset

    def _fit_statistics(self, data):
        if not self.standardised:
            x = data.inputs["pooled"]
            c = torch.cat([data.inputs[s].mean((2, 3)) for s in STAGES], 1)
            self.x_mean.copy_(x.mean(0)), self.x_std.copy_(x.std(0).clamp(min=1e-6))
            self.c_mean.copy_(c.mean(0)), self.c_std.copy_(c.std(0).clamp(min=1e-6))
            self.standardised = True
        chunks = zip(*(data.inputs[n].split(512) for n in ("pooled",) + STAGES))
        values = torch.cat([self.candidates(dict(zip(("pooled",) + STAGES, c))) for c in chunks])
        chosen = select_dimensions(values, len(self.selected), self.decorrelation,
                                   self.entropy_selection)
        self.selected.copy_(chosen)
        if self.encoding == "itq":
            kept = values[:, chosen]
            self.z_mean.copy_(kept.mean(0)), self.z_std.copy_(kept.std(0).clamp(min=1e-6))
            z = (kept - self.z_mean) / self.z_std
            itq = ITQ(self.bits, self.num_classes, {"pooled": (z.shape[1],)},
                      self.itq_iterations).to(z.device)
            itq.fit({"pooled": z})
            self.projection.copy_(itq.projection)
            self.offset.copy_(itq.mean @ itq.projection)

    def on_epoch_start(self, epoch, data):
        self._fit_statistics(data)

    def on_train_end(self, data):
        self._fit_statistics(data)

    def loss(self, batch):
        x0, c = self._x_c(batch["inputs"])
        alpha_bar = self.alpha_bar.to(x0.device)  # the fixed schedule, kept out of the state
        t = torch.randint(len(alpha_bar), (len(x0),)).to(x0.device)  # CPU RNG, then moved
        abar = alpha_bar[t][:, None]
        noise = torch.randn_like(x0)
        predicted, _ = self.denoiser(abar.sqrt() * x0 + (1 - abar).sqrt() * noise, c, t)
        losses = {"denoise": F.mse_loss(predicted, x0 if self.prediction == "x0" else noise)}
        if self.contrastive:
            t_star = torch.full((len(x0),), self.t_star, dtype=torch.long, device=x0.device)
            a = alpha_bar[self.t_star]
            views = [torch.cat(self.denoiser(a.sqrt() * x0 + (1 - a).sqrt() * torch.randn_like(x0),
                                             c, t_star)[1], 1) for _ in range(2)]
            losses["contrastive"] = self.contrastive * info_nce(*views)
        return losses


class ThesisMADNoDiffusion(ThesisMAD):
    """Ablation of thesis-mad: diffusion=False. The candidates are the standardised backbone
    features, so there is nothing to train: entropy selection is fitted in closed form."""
    name = "thesis-mad-nodiff"
    trainable = False
    variant_hparams = {"diffusion": False}

    def fit(self, inputs, labels=None):
        self._fit_statistics(SimpleNamespace(inputs=inputs))


VARIANTS = [ThesisMADNoDiffusion,
            ablation(ThesisMAD, "lastlayer", multi_layer=False),
            ablation(ThesisMAD, "noent", entropy_selection=False),
            ablation(ThesisMAD, "nodecor", decorrelation=0.0),
            ablation(ThesisMAD, "contrast", contrastive=1.0),
            ablation(ThesisMAD, "direct", encoding="select"),
            ablation(ThesisMAD, "eps", prediction="eps")]


@hookimpl
def benchmark_methods():
    return [ThesisMAD, *VARIANTS]
