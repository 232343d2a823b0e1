"""Dominant sub-network: the channels that would be kept if the network were pruned now to a budget.

Widths are per channel group (one group = channels that are kept or removed together, see surgery/graph.py).
The cost of a width vector comes from a cost model (the `Cost` protocol of costs/model.py): for FLOPs and
parameters a CostModel (costs/counting.py), per-layer dense costs scaled by the fraction of input and output
channels kept, which is exact for convolutions, linear layers and batch norms; for latency the measured tables of
costs/latency_model.py. Selection only needs cost(widths) to be monotone in every width. Budget, BudgetError,
BUDGET_KINDS, Cost and CostModel live in the costs package (costs/budget.py, costs/model.py).
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Sequence

import numpy as np

from epiprune.costs.budget import BudgetError
from epiprune.costs.model import Cost
from epiprune.policy.bounds import check_at_least


def normalise_per_group(scores: list[np.ndarray]) -> list[np.ndarray]:
    """Divide each group's scores by their mean, so that groups of different scale rank together."""
    return [s / (float(np.mean(s)) + 1e-12) if s.size else s for s in scores]


def floor_widths(dense_widths: np.ndarray | list[int], min_channels: int = 1, channel_multiple: int = 1,
                 blocks: Sequence[int] | None = None) -> np.ndarray:
    """The narrowest widths selection can return: per group `min_channels` rounded up to a multiple of
    `channel_multiple` (and of the group's block count, blocks[g]: a group spread over the B groups of grouped
    convolutions keeps a multiple of B), or the whole group where it is narrower than that (selection keeps those
    channels always)."""
    check_at_least("channel_multiple", channel_multiple)
    check_at_least("min_channels", min_channels)
    dense = np.asarray(dense_widths, dtype=np.int64)
    units = np.asarray([math.lcm(channel_multiple, int(b)) for b in blocks] if blocks is not None else
                       [channel_multiple] * len(dense), dtype=np.int64)
    first = -(-min_channels // units) * units
    return np.minimum(dense, first)


def check_budget(cost: Cost, target: float, min_channels: int = 1, channel_multiple: int = 1,
                 budget: str = "", blocks: Sequence[int] | None = None) -> None:
    """Raise BudgetError unless `target` (units of `cost`) can be met by selection, i.e. unless the floor widths
    (see floor_widths) cost at most `target`. The policy calls this at construction and select_subnetwork at every
    selection, so a budget is refused up front exactly when selection would refuse it later. blocks: per group,
    the count its kept channels must be a multiple of (grouped convolutions; see floor_widths)."""
    widths = floor_widths(cost.dense_widths, min_channels, channel_multiple, blocks)
    floor = cost(widths)
    if floor > target:
        ratio = floor / cost.dense
        lo, hi = int(widths.min()), int(widths.max())
        kept = f"{hi} channel(s) per layer" if blocks is None or max(blocks) == 1 else \
            f"{lo if lo == hi else f'{lo}-{hi}'} channel(s) per layer (grouped convolutions keep the same number " \
            "in each group)"
        if channel_multiple > 1:
            kept += f" (channel multiple {channel_multiple})"
        accepted = f"a fraction >= {math.ceil(ratio * 1000) / 1000:.3f}"
        if channel_multiple > 1:
            accepted += " or a smaller channel multiple"
        name = f"budget {budget}" if budget else "budget"
        raise BudgetError(f"{name} cannot be met: keeping {kept} already costs {ratio:.3f} of the dense model "
                          f"(accepted: {accepted})")


def select_subnetwork(scores: list[np.ndarray], cost: Cost, target: float, min_channels: int = 1,
                      channel_multiple: int = 1, partitions: Sequence[np.ndarray | None] | None = None
                      ) -> list[np.ndarray]:
    """Keep the globally most important channels whose cost fits `target` (same units as `cost`).

    Long on purpose: one algorithm (blocks ranked, dropped by a binary search over the ranking, then regrown)
    whose steps share the ranking and the floor; mutation testing covers it as one unit (docs/DEVELOPMENT.md).

    scores: one 1-D array per group (already normalised), lengths = cost.dense_widths.
    channel_multiple: kept channels per group are a multiple of this (or the whole group); channels then move in
    blocks of that many (a group's channels sorted by score, cut from the top), ranked by their mean score. Use
    8 or 16 where kernels block channels (oneDNN on CPUs, tensor cores), at the price of a coarser budget.
    partitions: per group None, or the block id (0..B-1, equal block sizes) of each channel: the group's channels
    belong to the B groups of grouped convolutions, and every block keeps the same number. Such a group's
    channels move in rows: row r holds the r-th best channel of every block (so which channels a block keeps is
    chosen by importance within the block), and kept counts are multiples of lcm(B, channel_multiple).
    Returns one boolean keep-mask per group; every group keeps at least `min_channels` (its best ones).
    Blocks are dropped in ascending score until the cost fits (binary search over the drop count, the cost being
    monotone in every width), then the dropped blocks are offered back, best first, wherever they still fit, so
    the cost ends just under the target.
    """
    if len(scores) != len(cost.dense_widths):
        raise ValueError(f"{len(scores)} score vectors for {len(cost.dense_widths)} groups")
    parts = list(partitions) if partitions is not None else [None] * len(scores)
    counts = [1 if p is None else int(np.max(p)) + 1 for p in parts]
    firsts = floor_widths([len(s) for s in scores], min_channels, channel_multiple, counts)
    blocks: list[np.ndarray] = []  # channel indices of each block
    block_group, block_rank, block_score, protected = [], [], [], []
    for g, s in enumerate(scores):
        n_blocks = counts[g]
        if parts[g] is None:
            rows = np.argsort(-s, kind="stable")[:, None]  # (size, 1): one channel per row
        else:  # (size / B, B): column b = block b's channels, best first
            rows = np.stack([np.flatnonzero(parts[g] == b)[np.argsort(-s[parts[g] == b], kind="stable")]
                             for b in range(n_blocks)], axis=1)
        first, step = int(firsts[g]) // n_blocks, math.lcm(channel_multiple, n_blocks) // n_blocks
        cuts = [0, first, *range(first + step, len(rows), step), len(rows)]
        for rank, (a, b) in enumerate(itertools.pairwise(cuts)):
            if a >= b:
                continue
            blocks.append(rows[a:b].reshape(-1))
            block_group.append(g)
            block_rank.append(rank)
            block_score.append(float(np.mean(s[blocks[-1]])))
            protected.append(rank == 0)
    block_group_arr, block_size = np.asarray(block_group), np.asarray([len(b) for b in blocks])
    # ascending score; on ties the later block of a group goes first, so groups always shrink from the tail
    order = np.lexsort((-np.asarray(block_rank), np.asarray(block_score)))
    droppable = order[~np.asarray(protected)[order]]
    dense = np.asarray(cost.dense_widths, dtype=np.int64)

    def widths_after(k: int) -> np.ndarray:
        dropped = droppable[:k]
        return dense - np.bincount(block_group_arr[dropped], weights=block_size[dropped],
                                   minlength=len(dense)).astype(np.int64)

    check_budget(cost, target, min_channels, channel_multiple, blocks=counts)  # the floor: widths_after(all)
    # the smallest drop count k that fits (len(droppable) if none smaller does: the floor fits, checked above);
    # the standard library's binary search, not a hand-written loop: the same probes, and no edit of the loop
    # bounds can make it endless (such mutants each cost mutation testing a 20-minute timeout)
    lo = bisect.bisect_left(range(len(droppable)), True, key=lambda k: bool(cost(widths_after(k)) <= target))
    kept_blocks = np.ones(len(blocks), dtype=bool)
    kept_blocks[droppable[:lo]] = False
    widths = widths_after(lo)
    block_rank_arr = np.asarray(block_rank)
    next_rank = {g: block_rank_arr[droppable[:lo]][block_group_arr[droppable[:lo]] == g].min()
                 for g in set(block_group_arr[droppable[:lo]].tolist())}  # a group regrows from its best dropped block
    for b in droppable[:lo][::-1]:  # best dropped blocks first
        g = block_group_arr[b]
        if block_rank_arr[b] != next_rank[g]:
            continue
        widths[g] += block_size[b]
        if cost(widths) <= target:
            kept_blocks[b] = True
            next_rank[g] += 1
        else:
            widths[g] -= block_size[b]
    masks = [np.zeros(len(s), dtype=bool) for s in scores]
    for b in np.flatnonzero(kept_blocks):
        masks[block_group_arr[b]][blocks[b]] = True
    return masks


def widths_of(masks: list[np.ndarray]) -> list[int]:
    """Kept channels per group."""
    return [int(m.sum()) for m in masks]
