"""Re-identification metrics (Market-1501 protocol) on a Hamming ranking."""
from __future__ import annotations

import numpy as np
import torch

from .metrics import macro_average
from .ranking import ranked_chunks

CMC_AT = (1, 5, 10)


def evaluate_reid(query_codes, db_codes, query_ids, db_ids, query_cameras, db_cameras) -> dict:
    """Market-1501 protocol on a Hamming ranking (ties broken by gallery index).

    For each query, gallery items with the query's identity *and* camera are junk, and so
    is every gallery item with identity -1; junk is removed from the ranking. The good
    matches are the same identity from another camera; everything else (distractors with
    identity 0 included) is a negative. ``rank-k`` (CMC) is the fraction of queries whose
    first good match is within the first k; ``map`` is the mean of AP = (1/G) sum over good
    matches of (good matches so far) / (rank without junk), as torchreid and fast-reid
    compute it. (Zheng et al.'s MATLAB code instead averages the precision just before
    and at each hit, which reads slightly higher.) A query with no good match scores AP 0
    and rank-k 0 and is counted in ``queries_without_relevant``. ``macro_map`` averages the
    same per-query APs (junk removed) per identity.
    """
    db_ids, db_cameras = np.asarray(db_ids), np.asarray(db_cameras)
    query_cameras = np.asarray(query_cameras)
    if len(query_cameras) != len(query_ids) or len(db_cameras) != len(db_ids):
        raise ValueError("one camera id per code is needed")
    keep = db_ids != -1
    db_codes, db_ids, db_cameras = np.asarray(db_codes)[keep], db_ids[keep], db_cameras[keep]
    n_query, n_db = len(query_ids), len(db_ids)
    per_query_ap, first_hits, no_good = np.zeros(n_query), {k: 0 for k in CMC_AT}, 0
    db_cameras = torch.from_numpy(db_cameras)
    for query_rows, ranked in ranked_chunks(query_codes, db_codes, query_ids, db_ids):
        rank, order = torch.sort(ranked.item_rank, dim=1)
        cameras = torch.from_numpy(query_cameras[query_rows])[:, None]
        junk = (db_cameras[ranked.item_db.gather(1, order)] == cameras) & (rank <= n_db)
        good = (rank <= n_db) & ~junk
        clean_rank = (rank - (torch.cumsum(junk, 1) - junk.long())).double()  # junk removed
        good_count = good.sum(1)
        precision = torch.where(good, torch.cumsum(good, 1) / clean_rank, 0.0)
        per_query_ap[query_rows] = (precision.sum(1) / good_count.clamp(min=1)).numpy()
        no_good += int((good_count == 0).sum())
        never = torch.full((len(query_rows), 1), torch.inf, dtype=torch.float64)
        first = torch.cat([torch.where(good, clean_rank, torch.inf), never], 1).amin(1)
        for k in CMC_AT:
            first_hits[k] += int((first <= k).sum())
    metrics = {f"rank-{k}": first_hits[k] / n_query for k in CMC_AT}
    metrics.update({"map": float(per_query_ap.mean()),
                    "macro_map": macro_average(per_query_ap, query_ids),
                    "queries_without_relevant": no_good,
                    "queries": n_query})
    return metrics
