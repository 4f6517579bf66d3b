"""Retrieval metrics from binary codes: exact, named, and computed without sorting.

Ranking: database items ordered by Hamming distance to the query, ties broken by database
index (a stable order), so every metric is a deterministic function of the codes. All
metrics of a query set come from one pass (:func:`evaluate_retrieval`):

* ``map``: mean over queries of AP@all = (1/R) sum_k P(k) rel(k) over the full ranking
  (R = relevant items in the database).
* ``macro_map``: the mean over classes of the mean AP of that class's queries.
* ``map_tie_aware``: the expected AP when the order inside each group of equal distance is
  uniformly random (He et al., "Hashing as Tie-Aware Learning to Rank", CVPR 2018); closed
  form in :func:`benchmark.eval.ranking.tie_aware_ap`.
* ``map@k_retrieved``: AP over the top k divided by the relevant items *in the top k* (the
  hashing repositories' mAP@k); ``map@k_all``: the same sum divided by *all* R relevant
  items (mmpretrain's ``RetrievalAveragePrecision``).
* ``p@k``: relevant items among the first k, divided by k (even when k exceeds the database).
* ``p@r2``: precision of the items within Hamming radius 2; a query with an empty radius-2
  ball scores 0 and is counted in ``queries_empty_r2``.
* precision-recall by Hamming radius r = 0..bits (``RetrievalResult.pr``): mean precision
  over the queries that retrieve at least one item within r, mean recall over the queries
  with R > 0.
* A query with R = 0 scores AP 0 (in every mAP) and is counted in ``queries_without_relevant``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .ranking import harmonic_numbers, ranked_chunks, tie_aware_ap

PRECISION_AT = (10, 100)
MAP_AT = (100, 1000)
RADIUS = 2


def binarise(values: torch.Tensor) -> np.ndarray:
    """Real-valued outputs -> 0/1 uint8 codes (h >= 0 -> 1)."""
    return (values >= 0).to(torch.uint8).cpu().numpy()


@dataclass
class RetrievalResult:
    """Scalar metrics (JSON-ready), per-query AP@all, and precision-recall by radius."""
    metrics: dict
    per_query_ap: np.ndarray
    pr: dict = field(default_factory=dict)


def evaluate_retrieval(query_codes, db_codes, query_labels, db_labels) -> RetrievalResult:
    """Every metric of the module docstring from one ranking of each query."""
    n_query, bits = len(query_labels), np.asarray(db_codes).shape[1]
    per_query_ap = np.zeros(n_query)
    tie_sum = 0.0
    at_k = {k: {"p": 0.0, "retrieved": 0.0, "all": 0.0} for k in sorted(set(PRECISION_AT) | set(MAP_AT))}
    no_relevant = empty_ball = 0
    radius_precision = 0.0
    pr_precision = torch.zeros(bits + 1, dtype=torch.float64)
    pr_retrieving = torch.zeros(bits + 1, dtype=torch.int64)
    pr_recall = torch.zeros(bits + 1, dtype=torch.float64)
    harmonic = harmonic_numbers(len(db_labels))
    n_db = len(db_labels)
    for query_rows, ranked in ranked_chunks(query_codes, db_codes, query_labels, db_labels):
        rank = torch.sort(ranked.item_rank, dim=1).values  # padding (n_db + 1) sorts last
        found = rank <= n_db
        hits = torch.arange(1, rank.shape[1] + 1, dtype=torch.float64)
        precision = torch.where(found, hits / rank, 0.0)  # P(rank) at each relevant item
        counts = found.sum(1)
        relevant = counts.double()
        ap = precision.sum(1) / relevant.clamp(min=1)
        per_query_ap[query_rows] = ap.numpy()
        no_relevant += int((counts == 0).sum())
        for k, sums in at_k.items():
            inside = found & (rank <= k)
            hit_count = inside.sum(1).double()
            sum_k = (precision * inside).sum(1)
            sums["p"] += float(hit_count.sum()) / k
            sums["retrieved"] += float((sum_k / hit_count.clamp(min=1)).sum())
            sums["all"] += float((sum_k / relevant.clamp(min=1)).sum())
        relevant_hist = torch.zeros_like(ranked.hist).scatter_add_(
            1, ranked.item_distance, ranked.valid.long())
        tie_sum += float(tie_aware_ap(ranked.hist, relevant_hist, harmonic).sum())
        within = torch.cumsum(ranked.hist, 1)
        relevant_within = torch.cumsum(relevant_hist, 1)
        ball = within[:, min(RADIUS, bits)]
        empty_ball += int((ball == 0).sum())
        radius_precision += float((relevant_within[:, min(RADIUS, bits)].double() / ball.clamp(min=1)).sum())
        retrieving = within > 0
        pr_retrieving += retrieving.sum(0)
        pr_precision += (relevant_within.double() / within.clamp(min=1)).sum(0)
        pr_recall += (relevant_within.double() / relevant.clamp(min=1)[:, None]).sum(0)
    metrics = {"map": float(per_query_ap.mean()), "map_tie_aware": tie_sum / n_query,
               "macro_map": macro_average(per_query_ap, query_labels)}
    for k in MAP_AT:
        metrics[f"map@{k}_retrieved"] = at_k[k]["retrieved"] / n_query
        metrics[f"map@{k}_all"] = at_k[k]["all"] / n_query
    for k in PRECISION_AT:
        metrics[f"p@{k}"] = at_k[k]["p"] / n_query
    metrics.update({f"p@r{RADIUS}": radius_precision / n_query, "queries_empty_r2": empty_ball,
                    "queries_without_relevant": no_relevant, "queries": n_query})
    with_relevant = max(n_query - no_relevant, 1)
    pr = {"radius": np.arange(bits + 1),
          "precision": (pr_precision / pr_retrieving.clamp(min=1)).numpy(),
          "recall": (pr_recall / with_relevant).numpy(),
          "queries_retrieving": pr_retrieving.numpy()}
    return RetrievalResult(metrics, per_query_ap, pr)


def macro_average(per_query_ap: np.ndarray, query_labels) -> float:
    """``macro_map``: the mean over classes of the mean AP of that class's queries."""
    query_labels = np.asarray(query_labels)
    return float(np.mean([per_query_ap[query_labels == c].mean() for c in np.unique(query_labels)]))


def save_pr_curve(folder, pr: dict) -> None:
    """Write ``pr.npz`` (precision-recall by Hamming radius, see ``RetrievalResult.pr``)
    beside a run's ``codes.npz``; written to a temporary name first."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "pr.tmp.npz", **pr)
    os.replace(folder / "pr.tmp.npz", folder / "pr.npz")


def evaluate_codes(query_codes, db_codes, query_labels, db_labels) -> dict:
    """The scalar metrics of :func:`evaluate_retrieval`."""
    return evaluate_retrieval(query_codes, db_codes, query_labels, db_labels).metrics



def map_real_valued(query_vectors, db_vectors, query_labels, db_labels, chunk: int = 256) -> float:
    """mAP@all of real-valued features ranked by cosine similarity (ties by database index,
    a stable sort): the float counterpart of ``map`` for a method's ``real_valued`` feature."""
    query = torch.nn.functional.normalize(torch.as_tensor(query_vectors, dtype=torch.float32), dim=1)
    db = torch.nn.functional.normalize(torch.as_tensor(db_vectors, dtype=torch.float32), dim=1)
    query_labels, db_labels = torch.as_tensor(query_labels), torch.as_tensor(db_labels)
    positions = torch.arange(1, len(db_labels) + 1, dtype=torch.float64)
    total = 0.0
    for start in range(0, len(query), chunk):
        order = torch.sort(-(query[start:start + chunk] @ db.T), dim=1, stable=True).indices
        relevant = (db_labels[order] == query_labels[start:start + chunk, None]).double()
        hits = torch.cumsum(relevant, 1)
        total += float(((hits / positions * relevant).sum(1) / hits[:, -1].clamp(min=1)).sum())
    return total / len(query)
