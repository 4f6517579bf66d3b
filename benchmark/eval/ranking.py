"""The Hamming ranking behind every metric, exact and without sorting.

How it avoids sorting: distances are integers in [0, bits]. The rank of database item j is
``#{i: d_i < d_j} + #{i < j: d_i = d_j} + 1``. The first term comes from a per-query
histogram over distances. Only relevant items need ranks, and they are found from the
labels, not by scanning: cut the database at the relevant items into segments and count
items per (segment, distance); the items tied with j that come before it are then a
prefix sum over segments (details in :class:`_Ranker`). The work per query-item pair is
one int8 multiply-add per bit (``torch._int_mm``, exact int32 Hamming distances) and one
scatter-add; per query, a prefix sum over (segment, distance) counters. Queries go in
chunks and the database in tiles, so memory is bounded for any database size.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

OFFSET_ELEMENTS = 1 << 22  # (label, database column) segment offsets per chunk of queries
TILE_COLUMNS = 8192  # database columns per tile when the database is larger than 4 tiles
BLOCK_ELEMENTS = 1 << 18  # query-item pairs whose keys are made and counted at once
COUNT_ELEMENTS = 1 << 21  # (query, segment, distance) counters per chunk of queries
MAX_COUNT_ELEMENTS = 1 << 27  # a label with more members than this allows is refused


def hamming_distances(query: np.ndarray, database: np.ndarray) -> np.ndarray:
    """(Q, bits) x (N, bits) 0/1 codes -> (Q, N) integer distances (exact in float32)."""
    q = torch.from_numpy(query.astype(np.float32) * 2 - 1)
    d = torch.from_numpy(database.astype(np.float32) * 2 - 1)
    bits = query.shape[1]
    return ((bits - q @ d.T) / 2).round().to(torch.int16).numpy()


class _SameLabel:
    """Database items sharing a label, listed without scanning the database."""

    def __init__(self, db_labels: np.ndarray):
        labels = np.asarray(db_labels, dtype=np.int64)
        self.order = torch.from_numpy(np.argsort(labels, kind="stable"))  # by label, then index
        self.values, self.sizes = np.unique(labels, return_counts=True)
        self.starts = np.cumsum(self.sizes) - self.sizes

    def counts(self, labels: np.ndarray) -> np.ndarray:
        """Number of database items with each of ``labels``."""
        slot = np.minimum(np.searchsorted(self.values, labels), len(self.values) - 1)
        return np.where(self.values[slot] == labels, self.sizes[slot], 0)

    def members(self, label: int) -> torch.Tensor:
        """Sorted database indices with this label (empty if none)."""
        slot = min(int(np.searchsorted(self.values, label)), len(self.values) - 1)
        if self.values[slot] != label:
            return self.order[:0]
        return self.order[self.starts[slot]:self.starts[slot] + self.sizes[slot]]


@dataclass
class _Ranked:
    """One query chunk: per-query distance histogram and the ranks of each query's
    same-label items, in (rows, most members) arrays padded on the right."""
    hist: torch.Tensor  # (rows, bits+1) int64: database items at each distance
    item_db: torch.Tensor  # database index (ascending in each row)
    item_distance: torch.Tensor  # Hamming distance
    item_rank: torch.Tensor  # 1-based rank, ties broken by database index; padding: n_db + 1
    valid: torch.Tensor  # False on padding


def _int8_operands(codes: np.ndarray, query_side: bool) -> torch.Tensor:
    """0/1 codes -> int8 rows whose products give Hamming distances exactly:
    [q, |q| parts, 1 ...] . [-2x, 1 ..., |x| parts] = |q| + |x| - 2 q.x = d(q, x).
    Popcounts are split into parts of at most 127 bits so that each fits in an int8."""
    codes = torch.from_numpy(np.ascontiguousarray(codes, dtype=np.uint8)).to(torch.int8)
    parts = [codes[:, i:i + 127].sum(1, dtype=torch.int8)[:, None] for i in range(0, codes.shape[1], 127)]
    ones = torch.ones(len(codes), len(parts), dtype=torch.int8)
    if query_side:
        return torch.cat([codes] + parts + [ones], dim=1)
    return torch.cat([-2 * codes, ones] + parts, dim=1)


def _words(codes: np.ndarray) -> np.ndarray:
    """0/1 codes -> (N, words) uint64, zero-padded: popcount(x ^ y) summed = distance."""
    packed = np.packbits(np.asarray(codes, dtype=np.uint8), axis=1)
    padded = np.zeros((len(packed), -(-packed.shape[1] // 8) * 8), dtype=np.uint8)
    padded[:, :packed.shape[1]] = packed
    return padded.view(np.uint64)


def _runs(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Values and lengths of the runs of equal consecutive values."""
    starts = np.flatnonzero(np.concatenate([[True], values[1:] != values[:-1]]))
    return values[starts], np.diff(np.append(starts, len(values)))


class _Ranker:
    """Ranks of same-label database items for chunks of label-sorted queries.

    For label g with sorted members L_g, segment s_g(i) = #{l in L_g : l < i}. Member
    L_g[k] lies in segment k, and the items before it are those of segments <= k except
    itself, so the items tied with it that precede it are a prefix sum over segments of a
    per-(segment, distance) count. The count key ``distance + (bits+1) s_g(i)`` of every
    (query, item) pair is an int8 matrix product (exact int32 distances, see
    :func:`_int8_operands`) plus the label's offset row ``(bits+1) s_g(i)``; blocks of
    ``BLOCK_ELEMENTS`` pairs keep the intermediate keys in cache.
    """

    def __init__(self, db_codes: np.ndarray, db_labels: np.ndarray):
        self.n_db, self.bits = db_codes.shape
        self.width = self.bits + 1
        self.same = _SameLabel(db_labels)
        most = int(self.same.sizes.max())
        if (most + 1) * self.width > MAX_COUNT_ELEMENTS:
            raise ValueError(f"{most} database items share one label: too many for exact "
                             f"{self.bits}-bit evaluation (at most {MAX_COUNT_ELEMENTS // self.width - 1})")
        self.tile = self.n_db if self.n_db <= 4 * TILE_COLUMNS else TILE_COLUMNS
        self.db_tiles = [_int8_operands(db_codes[start:start + self.tile], False).T.contiguous()
                         for start in range(0, self.n_db, self.tile)]
        self.db_words = _words(db_codes)
        # reused buffers: fresh large allocations page-fault on every call
        self.block_rows = max(1, BLOCK_ELEMENTS // self.tile)
        block = self.block_rows * self.tile
        self.distance = torch.empty(block, dtype=torch.int32)
        self.index = torch.empty(block, dtype=torch.int64)
        self.gathered = torch.empty(block, dtype=torch.int32)
        self.marks = torch.empty(max(OFFSET_ELEMENTS, self.tile), dtype=torch.int32)
        self.offsets = torch.empty(max(OFFSET_ELEMENTS, self.tile), dtype=torch.int32)
        # counters hold at most n_db: 16 bits suffice for small databases (half the traffic)
        self.count_type = torch.int16 if self.n_db < 2 ** 15 else torch.int32
        self.counts = torch.empty(max(COUNT_ELEMENTS, (most + 1) * self.width), dtype=self.count_type)

    def chunks(self, grouped_labels: np.ndarray) -> list[tuple[int, int]]:
        """Row ranges of label-grouped queries whose (segment, distance) counts and label
        offset rows fit the preallocated buffers."""
        labels, sizes = _runs(grouped_labels)
        max_groups = max(1, len(self.offsets) // self.tile)
        chunks, lo, pos, groups, most = [], 0, 0, 0, 0
        for size, count in zip(sizes, self.same.counts(labels)):
            bins = (int(count) + 1) * self.width
            left = int(size)
            while left:
                cap = len(self.counts) // max(most, bins)
                if groups == max_groups or pos - lo >= cap:
                    chunks.append((lo, pos))
                    lo, groups, most = pos, 0, 0
                    cap = len(self.counts) // bins
                take = min(left, cap - (pos - lo))
                pos, left, groups, most = pos + take, left - take, groups + 1, max(most, bins)
        if pos > lo:
            chunks.append((lo, pos))
        return chunks

    def rank(self, query_codes: np.ndarray, query_labels: np.ndarray) -> _Ranked:
        """Ranks of every same-label database item of each query (labels grouped).

        One long function on purpose: the tile loop shares a dozen index tensors (segments,
        offsets, per-distance counters) whose layouts only make sense read together."""
        rows, width = len(query_codes), self.width
        labels, group_rows = _runs(query_labels)
        lists = [self.same.members(label) for label in labels]
        sizes = torch.tensor([len(m) for m in lists], dtype=torch.int64)
        segments = int(sizes.max()) + 1
        groups = len(labels)
        group = torch.repeat_interleave(torch.arange(groups), torch.from_numpy(group_rows))
        row_starts = np.concatenate([[0], np.cumsum(group_rows)])
        query = _int8_operands(query_codes, True)
        # listed items of row r: members of its label; item k lies in segment k
        table = torch.zeros(groups, segments - 1, dtype=torch.int64)
        for g, member in enumerate(lists):
            table[g, :len(member)] = member
        item_db = table[group]
        valid = torch.arange(segments - 1) < sizes[group][:, None]
        members_all = torch.cat(lists)
        # members of the chunk's labels ordered by (tile, label, index), for segment offsets
        tiles = len(self.db_tiles)
        member_group = torch.repeat_interleave(torch.arange(groups), sizes)
        member_key = (members_all // self.tile) * groups + member_group
        if tiles > 1:
            by_tile = torch.argsort(member_key, stable=True)
            members_all, member_group, member_key = members_all[by_tile], member_group[by_tile], member_key[by_tile]
        tile_of_member = torch.searchsorted(member_key, torch.arange(tiles + 1) * groups)
        earlier = torch.bincount(member_key, minlength=tiles * groups).view(tiles, groups)
        earlier = (torch.cumsum(earlier, 0) - earlier).to(torch.int32)  # members in earlier tiles
        counts = self.counts[:rows * segments * width].view(rows, segments * width).zero_()
        ones = torch.ones(1, dtype=self.count_type)
        for t, start in enumerate(range(0, self.n_db, self.tile)):
            columns = self.db_tiles[t].shape[1]
            # offsets[g, i] = (bits+1) s_g(start + i)
            marks = self.marks[:groups * columns].view(groups, columns).zero_()
            inside = slice(int(tile_of_member[t]), int(tile_of_member[t + 1]))
            marks.view(-1)[member_group[inside] * columns + members_all[inside] - start] = 1
            offsets = self.offsets[:groups * columns].view(groups, columns)
            torch.cumsum(marks, 1, out=offsets)
            offsets.sub_(marks).add_(earlier[t][:, None]).mul_(width)
            for lo in range(0, rows, self.block_rows):
                hi = min(rows, lo + self.block_rows)
                distance = self.distance[:(hi - lo) * columns].view(hi - lo, columns)
                torch._int_mm(query[lo:hi], self.db_tiles[t], out=distance)
                first, last = int(group[lo]), int(group[hi - 1])
                if (hi - lo) >= 8 * (last - first + 1):  # few labels: add each label's row
                    for g in range(first, last + 1):
                        a, b = max(lo, row_starts[g]) - lo, min(hi, row_starts[g + 1]) - lo
                        distance[a:b].add_(offsets[g])
                else:
                    gathered = self.gathered[:(hi - lo) * columns].view(hi - lo, columns)
                    distance.add_(torch.index_select(offsets, 0, group[lo:hi], out=gathered))
                index = self.index[:(hi - lo) * columns].view(hi - lo, columns)
                index.copy_(distance)
                counts[lo:hi].scatter_add_(1, index, ones.expand(hi - lo, columns))
        xor = _words(query_codes)[:, None] ^ self.db_words[item_db.numpy()]
        distance = torch.from_numpy(np.bitwise_count(xor).sum(2, dtype=np.int64))
        counts = counts.view(rows, segments, width)
        # items before the end of each segment, per distance (a prefix sum over segments;
        # slice by slice when slices are large: faster than cumsum along a middle axis)
        if rows * width >= 4096:
            for segment in range(1, segments):
                counts[:, segment].add_(counts[:, segment - 1])
        else:
            counts.cumsum_(1)
        hist = counts[:, -1].long()  # the last segment ends after the database
        segment_key = torch.arange(segments - 1) * width + distance
        tie_before = counts.view(rows, -1).gather(1, segment_key).long() - 1
        smaller = torch.cumsum(hist, 1) - hist
        rank = torch.where(valid, smaller.gather(1, distance) + tie_before + 1, self.n_db + 1)
        return _Ranked(hist, item_db, distance, rank, valid)


def ranked_chunks(query_codes, db_codes, query_labels, db_labels):
    """Yield (query indices, _Ranked) over chunks of queries grouped by label."""
    query_codes, db_codes = np.asarray(query_codes), np.asarray(db_codes)
    query_labels = np.asarray(query_labels)
    if query_codes.ndim != 2 or db_codes.ndim != 2 or query_codes.shape[1] != db_codes.shape[1]:
        raise ValueError(f"codes must be (Q, bits) and (N, bits) with equal bits, got "
                         f"{query_codes.shape} and {db_codes.shape}")
    if len(query_codes) != len(query_labels) or len(db_codes) != len(db_labels):
        raise ValueError("one label per code is needed")
    if len(db_codes) == 0 or len(query_codes) == 0:
        raise ValueError("evaluation needs at least one query and one database item")
    ranker = _Ranker(db_codes, db_labels)
    # queries grouped by label, labels with similar member counts side by side (less padding)
    members = ranker.same.counts(query_labels)
    order = np.lexsort((query_labels, members))
    for lo, hi in ranker.chunks(query_labels[order]):
        rows = order[lo:hi]
        yield rows, ranker.rank(query_codes[rows], query_labels[rows])


# ---------------------------------------------------------------- metrics

def harmonic_numbers(n: int) -> torch.Tensor:
    """H[m] = sum_{i=1..m} 1/i for m = 0..n (float64)."""
    return torch.cat([torch.zeros(1, dtype=torch.float64),
                      torch.cumsum(1.0 / torch.arange(1, n + 1, dtype=torch.float64), 0)])


def tie_aware_ap(hist: torch.Tensor, relevant_hist: torch.Tensor, harmonic: torch.Tensor):
    """Expected AP under a random order inside each distance group (He et al. 2018).

    Group d holds n_d items (r_d relevant) after N_d items (R_d relevant). Position i of
    the group is relevant with probability r_d/n_d and then has on average
    (i-1)(r_d-1)/(n_d-1) relevant items before it inside the group, so
    AP = (1/R) sum_d (r_d/n_d) sum_{i=1..n_d} (R_d + 1 + (i-1)(r_d-1)/(n_d-1)) / (N_d + i).
    With dH = H(N_d+n_d) - H(N_d) and sum_i (i-1)/(N_d+i) = n_d - (N_d+1) dH, the inner sum
    is (R_d+1) dH + (r_d-1)/(n_d-1) (n_d - (N_d+1) dH).
    """
    before = torch.cumsum(hist, 1) - hist
    dh = harmonic[before + hist] - harmonic[before]
    n, r, before = hist.double(), relevant_hist.double(), before.double()
    relevant_before = torch.cumsum(r, 1) - r
    # groups with n_d <= 1 have no pairs inside (their factor below is 0 up to rounding)
    spread = (r - 1) / (n - 1).clamp(min=1)
    inner = (relevant_before + 1) * dh + spread * (n - (before + 1) * dh)
    total = (r / n.clamp(min=1) * inner).sum(1)  # 0 where r_d = 0
    return total / r.sum(1).clamp(min=1)
