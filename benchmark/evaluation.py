"""Retrieval metrics from binary codes, exact and named.

Ranking: database items sorted by Hamming distance to the query, ties broken by database
index (a stable order), so every metric is a deterministic function of the codes.

* ``map``: mean over queries of AP@all = (1/R) sum_k P(k) rel(k) over the full ranking
  (R = relevant items in the database). A query with R = 0 scores AP 0 and is counted in
  ``queries_without_relevant``.
* ``p@k``: fraction of relevant items among the first k of the ranking.
"""
from __future__ import annotations

import numpy as np
import torch

PRECISION_AT = (10, 100)


def binarise(values: torch.Tensor) -> np.ndarray:
    """Real-valued outputs -> 0/1 uint8 codes (h >= 0 -> 1)."""
    return (values >= 0).to(torch.uint8).cpu().numpy()


def hamming_distances(query: np.ndarray, database: np.ndarray) -> np.ndarray:
    """(Q, bits) x (N, bits) 0/1 codes -> (Q, N) integer distances (exact in float32)."""
    q = torch.from_numpy(query.astype(np.float32) * 2 - 1)
    d = torch.from_numpy(database.astype(np.float32) * 2 - 1)
    bits = query.shape[1]
    return ((bits - q @ d.T) / 2).round().to(torch.int16).numpy()


def evaluate_codes(query_codes, db_codes, query_labels, db_labels, chunk: int = 512) -> dict:
    """mAP@all and P@k with the stable (index) tie order."""
    ap_sum = 0.0
    prec_sum = {k: 0.0 for k in PRECISION_AT}
    no_relevant = 0
    n_db = len(db_labels)
    for start in range(0, len(query_labels), chunk):
        labels = query_labels[start:start + chunk]
        dist = hamming_distances(query_codes[start:start + chunk], db_codes)
        order = np.argsort(dist, axis=1, kind="stable")
        relevant = db_labels[order] == labels[:, None]
        hits = np.cumsum(relevant, axis=1)
        total = hits[:, -1]
        no_relevant += int((total == 0).sum())
        ranks = np.arange(1, n_db + 1)
        ap = (hits / ranks * relevant).sum(axis=1) / np.maximum(total, 1)
        ap_sum += float(ap.sum())
        for k in PRECISION_AT:
            prec_sum[k] += float(hits[:, min(k, n_db) - 1].sum() / k)
    n = len(query_labels)
    metrics = {"map": ap_sum / n, "queries_without_relevant": no_relevant}
    metrics.update({f"p@{k}": prec_sum[k] / n for k in PRECISION_AT})
    return metrics
