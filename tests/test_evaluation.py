import itertools

import numpy as np
import pytest
import torch

from benchmark.eval import metrics as evaluation, ranking, reid
from benchmark.eval.metrics import binarise, evaluate_codes
from benchmark.eval.ranking import hamming_distances


def brute_force_ap(dist_row, relevant_row):
    order = sorted(range(len(dist_row)), key=lambda j: (dist_row[j], j))
    hits, total = 0, 0.0
    for rank, j in enumerate(order, start=1):
        if relevant_row[j]:
            hits += 1
            total += hits / rank
    return total / hits if hits else 0.0


def test_binarise_maps_zero_to_one():
    codes = binarise(torch.tensor([[-1.0, 0.0, 2.0], [-0.0, -1e-9, 1e-9]]))
    assert codes.dtype == np.uint8
    assert codes.tolist() == [[0, 1, 1], [1, 0, 1]]


def test_hamming_distances_exact():
    rng = np.random.default_rng(0)
    q, d = rng.integers(0, 2, (7, 48), dtype=np.uint8), rng.integers(0, 2, (11, 48), dtype=np.uint8)
    expected = (q[:, None, :] != d[None, :, :]).sum(-1)
    assert np.array_equal(hamming_distances(q, d), expected)


def test_map_hand_computed_with_index_tie_break():
    # one query, 4-bit codes; database distances 1, 0, 1, 2; relevant items 0 and 3.
    query = np.array([[0, 0, 0, 0]], dtype=np.uint8)
    db = np.array([[1, 0, 0, 0], [0, 0, 0, 0], [0, 1, 0, 0], [1, 1, 0, 0]], dtype=np.uint8)
    # ranking by (distance, index): 1, 0, 2, 3 -> relevant at ranks 2 and 4
    metrics = evaluate_codes(query, db, np.array([5]), np.array([5, 1, 1, 5]))
    assert metrics["map"] == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert metrics["p@10"] == pytest.approx(2 / 10)  # P@k divides by k, even past the database


def test_map_matches_brute_force_on_random_codes():
    rng = np.random.default_rng(1)
    q, d = rng.integers(0, 2, (40, 12), dtype=np.uint8), rng.integers(0, 2, (300, 12), dtype=np.uint8)
    ql, dl = rng.integers(0, 5, 40), rng.integers(0, 5, 300)
    dist = (q[:, None, :] != d[None, :, :]).sum(-1)
    expected = np.mean([brute_force_ap(dist[i], dl == ql[i]) for i in range(40)])
    metrics = evaluate_codes(q, d, ql, dl)
    assert metrics["map"] == pytest.approx(expected, abs=1e-12)


def test_query_without_relevant_item_counts_as_zero():
    q = np.zeros((2, 4), dtype=np.uint8)
    d = np.zeros((3, 4), dtype=np.uint8)
    metrics = evaluate_codes(q, d, np.array([0, 9]), np.array([0, 1, 0]))
    assert metrics["queries_without_relevant"] == 1
    assert metrics["map"] == pytest.approx((1 + 2 / 3) / 2 / 2)


# ---------------------------------------------------------------- brute-force references

def sorted_relevance(dist_row, relevant_row):
    order = sorted(range(len(dist_row)), key=lambda j: (dist_row[j], j))
    return [bool(relevant_row[j]) for j in order]


def ap_of(relevance, cutoff=None, divide_by="all"):
    """AP of a 0/1 list: sum of precision at hits within the cut-off, divided by all hits
    ('all') or by the hits within the cut-off ('retrieved')."""
    total_relevant = sum(relevance)
    shown = relevance[:cutoff] if cutoff else relevance
    hits, total = 0, 0.0
    for rank, rel in enumerate(shown, start=1):
        if rel:
            hits += 1
            total += hits / rank
    denominator = total_relevant if divide_by == "all" else hits
    return total / denominator if denominator else 0.0


def random_case(seed, n_query=30, n_db=200, bits=8, classes=6):
    rng = np.random.default_rng(seed)
    q = rng.integers(0, 2, (n_query, bits), dtype=np.uint8)
    d = rng.integers(0, 2, (n_db, bits), dtype=np.uint8)
    ql, dl = rng.integers(0, classes + 1, n_query), rng.integers(0, classes, n_db)
    return q, d, ql, dl, (q[:, None, :] != d[None, :, :]).sum(-1)


@pytest.mark.parametrize("seed,bits,n_db,n_query,classes,small", [
    (2, 4, 150, 30, 6, False), (3, 12, 400, 30, 6, False), (4, 48, 300, 30, 6, False),
    (5, 6, 500, 30, 6, True), (6, 64, 333, 40, 20, True), (7, 130, 200, 120, 3, True),
    (8, 16, 300, 120, 3, False)])
def test_every_ranking_metric_matches_brute_force(seed, bits, n_db, n_query, classes, small,
                                                  monkeypatch):
    if small:  # several database tiles, query chunks and blocks
        monkeypatch.setattr(ranking, "TILE_COLUMNS", 16)
        monkeypatch.setattr(ranking, "OFFSET_ELEMENTS", 512)
        monkeypatch.setattr(ranking, "COUNT_ELEMENTS", 256)
        monkeypatch.setattr(ranking, "BLOCK_ELEMENTS", 100)
    q, d, ql, dl, dist = random_case(seed, n_query=n_query, n_db=n_db, bits=bits, classes=classes)
    lists = [sorted_relevance(dist[i], dl == ql[i]) for i in range(len(q))]
    result = evaluation.evaluate_retrieval(q, d, ql, dl)
    m = result.metrics
    assert m["map"] == pytest.approx(np.mean([ap_of(r) for r in lists]), abs=1e-12)
    assert result.per_query_ap == pytest.approx([ap_of(r) for r in lists], abs=1e-12)
    for k in evaluation.MAP_AT:
        assert m[f"map@{k}_retrieved"] == pytest.approx(
            np.mean([ap_of(r, k, "retrieved") for r in lists]), abs=1e-12)
        assert m[f"map@{k}_all"] == pytest.approx(np.mean([ap_of(r, k, "all") for r in lists]), abs=1e-12)
    for k in evaluation.PRECISION_AT:
        assert m[f"p@{k}"] == pytest.approx(np.mean([sum(r[:k]) / k for r in lists]), abs=1e-12)
    relevant = dl[None, :] == ql[:, None]
    ball = dist <= 2
    expected_r2 = [(relevant[i] & ball[i]).sum() / ball[i].sum() if ball[i].any() else 0.0
                   for i in range(len(q))]
    assert m["p@r2"] == pytest.approx(np.mean(expected_r2), abs=1e-12)
    assert m["queries_empty_r2"] == int((~ball.any(1)).sum())
    assert m["queries_without_relevant"] == int((~relevant.any(1)).sum())
    for r in range(bits + 1):
        within = dist <= r
        retrieving = within.any(1)
        precision = [(relevant[i] & within[i]).sum() / within[i].sum() for i in np.flatnonzero(retrieving)]
        recall = [(relevant[i] & within[i]).sum() / relevant[i].sum() for i in range(len(q)) if relevant[i].any()]
        assert result.pr["precision"][r] == pytest.approx(np.mean(precision) if precision else 0.0, abs=1e-12)
        assert result.pr["recall"][r] == pytest.approx(np.mean(recall), abs=1e-12)
        assert result.pr["queries_retrieving"][r] == retrieving.sum()


def test_map_at_k_names_its_normalisation():
    # relevant at ranks 1 and 3 of 4, a third relevant item at rank 4; k = 3 would give
    # (1/1 + 2/3)/2 (retrieved) vs (1/1 + 2/3)/3 (all); MAP_AT holds k >= 100, so check via ranks.
    relevance = [True, False, True, True]
    assert ap_of(relevance, 3, "retrieved") == pytest.approx((1 + 2 / 3) / 2)
    assert ap_of(relevance, 3, "all") == pytest.approx((1 + 2 / 3) / 3)
    q = np.zeros((1, 4), dtype=np.uint8)
    d = np.array([[0, 0, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0]], dtype=np.uint8)
    m = evaluate_codes(q, d, np.array([1]), np.array([1, 0, 1, 1]))
    assert m["map@100_retrieved"] == m["map@100_all"] == m["map"] == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)


def all_tie_orders_ap(dist_row, relevant_row):
    """Exact expected AP over every order inside each distance group (tiny inputs)."""
    groups = [[j for j in range(len(dist_row)) if dist_row[j] == v] for v in sorted(set(dist_row))]
    total, count = 0.0, 0
    for orders in itertools.product(*[itertools.permutations(g) for g in groups]):
        ranking = [j for group in orders for j in group]
        total += ap_of([bool(relevant_row[j]) for j in ranking])
        count += 1
    return total / count


def test_tie_aware_map_equals_exact_expectation_over_tie_orders():
    rng = np.random.default_rng(7)
    for _ in range(20):
        n_db = int(rng.integers(1, 8))
        q = rng.integers(0, 2, (1, 2), dtype=np.uint8)  # 2 bits: at most 3 groups, many ties
        d = rng.integers(0, 2, (n_db, 2), dtype=np.uint8)
        dl = rng.integers(0, 2, n_db)
        dist = (q[:, None, :] != d[None, :, :]).sum(-1)[0]
        expected = all_tie_orders_ap(list(dist), dl == 0)
        assert evaluate_codes(q, d, np.array([0]), dl)["map_tie_aware"] == pytest.approx(expected, abs=1e-12)


def test_tie_aware_map_is_the_limit_of_random_tie_orders():
    q, d, ql, dl, dist = random_case(8, n_query=5, n_db=60, bits=3, classes=3)
    rng = np.random.default_rng(9)
    samples = []
    for _ in range(3000):
        shuffle = rng.random(dist.shape[1])  # a random order inside every tie group
        aps = []
        for i in range(len(q)):
            order = np.lexsort((shuffle, dist[i]))
            aps.append(ap_of(list(dl[order] == ql[i])))
        samples.append(np.mean(aps))
    tie_aware = evaluate_codes(q, d, ql, dl)["map_tie_aware"]
    stderr = np.std(samples) / np.sqrt(len(samples))
    assert abs(np.mean(samples) - tie_aware) < 4 * stderr + 1e-12
    # and the index tie break is one of those orders, not their mean
    assert evaluate_codes(q, d, ql, dl)["map"] != pytest.approx(tie_aware, abs=1e-6)


def test_bad_shapes_raise_value_error():
    q = np.zeros((2, 8), dtype=np.uint8)
    with pytest.raises(ValueError, match="equal bits"):
        evaluate_codes(q, np.zeros((3, 12), dtype=np.uint8), np.zeros(2), np.zeros(3))
    with pytest.raises(ValueError, match="one label per code"):
        evaluate_codes(q, np.zeros((3, 8), dtype=np.uint8), np.zeros(2), np.zeros(2))


# ---------------------------------------------------------------- re-identification

def test_reid_hand_computed_fixture():
    # gallery: (id, camera, 4-bit code); query A = 0000 (id 1, cam 1), B = 0000 (id 2, cam 2),
    # C = 1110 (id 3, cam 2)
    gallery = [(1, 1, "0000"),   # 0: same id + camera as A -> junk for A
               (-1, 2, "0000"),  # 1: id -1 -> junk for everyone
               (2, 2, "1000"),   # 2: negative for A; same id + camera as B -> junk for B
               (1, 2, "0100"),   # 3: good for A (distance 1, after item 2 by index)
               (0, 3, "0010"),   # 4: distractor (id 0): a negative
               (1, 3, "1100"),   # 5: good for A (distance 2)
               (3, 1, "1110")]   # 6: good for C (distance 0)
    codes = lambda texts: np.array([[int(c) for c in t] for t in texts], dtype=np.uint8)
    g_codes = codes([g[2] for g in gallery])
    q_codes = codes(["0000", "0000", "1110"])
    m = reid.evaluate_reid(q_codes, g_codes, np.array([1, 2, 3]), np.array([g[0] for g in gallery]),
                                 np.array([1, 2, 2]), np.array([g[1] for g in gallery]))
    # A: junk removed, ranking 2, 3, 4, 5, 6 -> good at ranks 2 and 4: AP (1/2 + 2/4)/2, first hit 2
    # B: its only same-id item is junk -> no good match: AP 0, counted
    # C: item 6 at rank 1: AP 1
    assert m["map"] == pytest.approx((0.5 + 0 + 1) / 3)
    assert m["rank-1"] == pytest.approx(1 / 3)
    assert m["rank-5"] == m["rank-10"] == pytest.approx(2 / 3)
    assert m["queries_without_relevant"] == 1


def small_tiles(monkeypatch):
    """Ranking buffers so small that every database column is its own tile and every
    query its own chunk and block."""
    monkeypatch.setattr(ranking, "TILE_COLUMNS", 1)
    monkeypatch.setattr(ranking, "OFFSET_ELEMENTS", 1)
    monkeypatch.setattr(ranking, "COUNT_ELEMENTS", 1)
    monkeypatch.setattr(ranking, "BLOCK_ELEMENTS", 1)


@pytest.mark.parametrize("small", [False, True])
def test_reid_hand_computed_cmc_map_and_macro_map(small, monkeypatch):
    if small:
        small_tiles(monkeypatch)
    # gallery (id, camera, code) as in the fixture above; queries A = 0000 (id 1, cam 1),
    # A2 = 0100 (id 1, cam 3), B = 0000 (id 2, cam 2), C = 1110 (id 3, cam 2)
    gallery = [(1, 1, "0000"), (-1, 2, "0000"), (2, 2, "1000"), (1, 2, "0100"), (0, 3, "0010"),
               (1, 3, "1100"), (3, 1, "1110")]
    codes = lambda texts: np.array([[int(c) for c in t] for t in texts], dtype=np.uint8)
    m = reid.evaluate_reid(codes(["0000", "0100", "0000", "1110"]), codes([g[2] for g in gallery]),
                           np.array([1, 1, 2, 3]), np.array([g[0] for g in gallery]),
                           np.array([1, 3, 2, 2]), np.array([g[1] for g in gallery]))
    # A: junk 0 and 1 removed -> 2, 3, 4, 5, 6: good at ranks 2 and 4, AP 1/2, first hit 2
    # A2: junk 1 and 5 removed -> 3 (d0), 0 (d1), 2, 4, 6 (d2): good at 1 and 2, AP 1
    # B: its only same-id item is junk: AP 0, no hit.  C: item 6 at rank 1: AP 1
    assert m["map"] == pytest.approx((0.5 + 1 + 0 + 1) / 4, abs=1e-15)
    assert m["macro_map"] == pytest.approx(((0.5 + 1) / 2 + 0 + 1) / 3, abs=1e-15)
    assert (m["rank-1"], m["rank-5"], m["rank-10"]) == (2 / 4, 3 / 4, 3 / 4)
    assert m["queries_without_relevant"] == 1 and m["queries"] == 4


@pytest.mark.parametrize("small", [False, True])
def test_reid_matches_a_sorting_implementation_of_the_protocol(small, monkeypatch):
    if small:
        small_tiles(monkeypatch)
    rng = np.random.default_rng(11)
    q, g = rng.integers(0, 2, (25, 10), dtype=np.uint8), rng.integers(0, 2, (300, 10), dtype=np.uint8)
    qid, gid = rng.integers(1, 8, 25), rng.integers(-1, 8, 300)
    qcam, gcam = rng.integers(0, 3, 25), rng.integers(0, 3, 300)
    dist = (q[:, None, :] != g[None, :, :]).sum(-1)
    aps, firsts = [], []
    for i in range(25):
        order = [j for j in np.lexsort((np.arange(300), dist[i]))
                 if gid[j] != -1 and not (gid[j] == qid[i] and gcam[j] == qcam[i])]
        good = [bool(gid[j] == qid[i]) for j in order]
        aps.append(ap_of(good))
        firsts.append(good.index(True) + 1 if any(good) else np.inf)
    m = reid.evaluate_reid(q, g, qid, gid, qcam, gcam)
    assert m["map"] == pytest.approx(np.mean(aps), abs=1e-12)
    assert m["macro_map"] == pytest.approx(np.mean([np.mean(np.array(aps)[qid == i]) for i in np.unique(qid)]),
                                           abs=1e-12)
    for k in (1, 5, 10):
        assert m[f"rank-{k}"] == pytest.approx(np.mean(np.array(firsts) <= k), abs=1e-12)
    assert m["queries_without_relevant"] == int(np.isinf(firsts).sum())


def test_real_valued_map_hand_computed_with_index_tie_break():
    # cosine similarities to the query: 0.6, 1.0, 0.6, -1.0; relevant items 0 and 3
    query = np.array([[1.0, 0.0]])
    db = np.array([[3.0, 4.0], [2.0, 0.0], [3.0, -4.0], [-1.0, 0.0]])
    # ranking by (-similarity, index): 1, 0, 2, 3 -> relevant at ranks 2 and 4
    value = evaluation.map_real_valued(query, db, np.array([5]), np.array([5, 1, 1, 5]))
    assert value == pytest.approx((1 / 2 + 2 / 4) / 2)


def test_real_valued_map_equals_hamming_map_for_sign_vectors():
    # for +-1 vectors, cosine = 1 - 2 d_H / bits: the same ranking as Hamming distance
    rng = np.random.default_rng(3)
    q, d = rng.integers(0, 2, (30, 16), dtype=np.uint8), rng.integers(0, 2, (200, 16), dtype=np.uint8)
    ql, dl = rng.integers(0, 4, 30), rng.integers(0, 4, 200)
    value = evaluation.map_real_valued(2.0 * q - 1, 2.0 * d - 1, ql, dl, chunk=7)
    assert value == pytest.approx(evaluate_codes(q, d, ql, dl)["map"], abs=1e-12)


def test_large_database_counts_in_32_bits_and_matches_brute_force():
    """Over 2**15 database items the per-distance counters are int32 (int16 would wrap:
    here one distance holds 36,000 items) and the database is cut into several tiles."""
    rng = np.random.default_rng(5)
    n_db, bits = 40_000, 6
    d = np.zeros((n_db, bits), dtype=np.uint8)
    d[:4_000] = rng.integers(0, 2, (4_000, bits), dtype=np.uint8)
    dl = rng.integers(0, 3, n_db)
    q, ql = rng.integers(0, 2, (5, bits), dtype=np.uint8), np.array([0, 1, 2, 0, 1])
    assert ranking._Ranker(d, dl).count_type == torch.int32 and n_db > 4 * ranking.TILE_COLUMNS
    dist = (q[:, None, :] != d[None, :, :]).sum(-1)
    expected = []
    for i in range(len(q)):
        relevant = (dl == ql[i])[np.lexsort((np.arange(n_db), dist[i]))]
        hits = np.cumsum(relevant)
        expected.append((hits / np.arange(1, n_db + 1))[relevant].sum() / relevant.sum())
    assert evaluation.evaluate_retrieval(q, d, ql, dl).per_query_ap == pytest.approx(expected, abs=1e-12)


def test_a_label_with_too_many_members_is_refused(monkeypatch):
    monkeypatch.setattr(ranking, "MAX_COUNT_ELEMENTS", 9 * 20)  # 19 members at 8 bits
    codes = np.zeros((20, 8), dtype=np.uint8)
    with pytest.raises(ValueError, match="20 database items share one label: too many for exact "
                                         "8-bit evaluation \\(at most 19\\)"):
        evaluate_codes(codes[:1], codes, np.zeros(1), np.zeros(20))
    assert evaluate_codes(codes[:1], codes[:19], np.zeros(1), np.zeros(19))["map"] == 1.0
