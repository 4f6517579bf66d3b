"""Small building blocks shared by the thesis plugins (thesis-msd, -sld, -mad, -ddl).

The supervised thesis methods train against CSQ's hash centres (``plugins.csq``, Yuan et
al., CVPR 2020) with a centre loss that also takes a *soft* label ``Y`` (rows sum to 1):
``sum_c Y_ic BCE((u_i + 1) / 2, (c_c + 1) / 2)``, CSQ's central loss for one-hot rows.
"""
from __future__ import annotations

import math

import torch


def centre_loss(u: torch.Tensor, targets: torch.Tensor, centres: torch.Tensor,
                weights: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted mean over samples of ``sum_c targets_ic * BCE(u_i, centre_c)``; u in (-1, 1)."""
    p = ((u + 1) / 2).clamp(1e-6, 1 - 1e-6)
    t = (centres + 1) / 2
    bce = -(torch.log(p) @ t.T + torch.log(1 - p) @ (1 - t).T) / u.shape[1]  # (B, classes)
    per_sample = (targets * bce).sum(1)
    if weights is None:
        return per_sample.mean()
    return (weights * per_sample).sum() / weights.sum().clamp(min=1e-8)


def quantisation_loss(u: torch.Tensor) -> torch.Tensor:
    """CSQ's quantisation term, mean over entries of (|u| - 1)^2."""
    return (u.abs() - 1).pow(2).mean()


def one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(labels, num_classes).float()


def binary_entropy(p: torch.Tensor) -> torch.Tensor:
    """Entropy in bits of a Bernoulli(p), elementwise (0 at p in {0, 1})."""
    p = p.clamp(0, 1)
    h = -(p * torch.log2(p.clamp(min=1e-12)) + (1 - p) * torch.log2((1 - p).clamp(min=1e-12)))
    return torch.where((p <= 0) | (p >= 1), torch.zeros_like(h), h)


def select_dimensions(values: torch.Tensor, k: int, decorrelation: float = 1.0,
                      entropy: bool = True) -> torch.Tensor:
    """Greedy entropy-based selection of ``k`` columns of ``values`` (N, D) (thesis-mad).

    score_d = H(mean_n [values_nd > 0]) - decorrelation * max_{j chosen} |corr(d, j)|,
    with H the binary entropy in bits and corr the Pearson correlation of the raw values.
    ``entropy=False`` scores every dimension 1 (selection by decorrelation alone; with
    ``decorrelation=0`` too, the first ``k`` columns). Returns the chosen column indices.
    """
    n, d = values.shape
    if k > d:
        raise ValueError(f"cannot select {k} dimensions from {d}")
    device = values.device
    scores = (binary_entropy((values > 0).double().mean(0)) if entropy
              else torch.ones(d, dtype=torch.float64, device=device))
    centred = values.double() - values.double().mean(0)
    std = centred.pow(2).mean(0).sqrt().clamp(min=1e-12)
    standardised = centred / std
    # |corr| of every column with every other, once (one matmul) when the (D, D) matrix is
    # small enough; else one matrix-vector product per chosen column (same values)
    gram = (standardised.T @ standardised / n).abs() if d <= 4096 else None
    rows = standardised.T.contiguous() if gram is None else None
    chosen: list[int] = []
    max_corr = torch.zeros(d, dtype=torch.float64, device=device)
    available = torch.ones(d, dtype=torch.bool, device=device)
    for _ in range(k):
        score = torch.where(available, scores - decorrelation * max_corr, -math.inf)
        best = int(score.argmax())
        chosen.append(best)
        available[best] = False
        corr = gram[best] if gram is not None else (rows @ standardised[:, best] / n).abs()
        max_corr = torch.maximum(max_corr, corr)
    return torch.tensor(chosen, dtype=torch.long, device=device)


def ablation(cls, suffix: str, **overrides):
    """A named variant (``benchmark.method``, "Variants") of ``cls`` called
    ``{cls.name}-{suffix}`` whose hparam defaults are ``overrides`` (one ablation row of the
    leaderboard per component switched off)."""
    settings = ", ".join(f"{k}={v!r}" for k, v in overrides.items())
    return type(f"{cls.__name__}_{suffix.replace('-', '_')}", (cls,),
                {"name": f"{cls.name}-{suffix}", "variant_hparams": overrides,
                 "__module__": cls.__module__,
                 "__doc__": f"Ablation of {cls.name}: {settings} (see {cls.__name__})."})
