"""Row intervals → exact FULL / PARTIAL block classification, and ordered block indices.

For a block of rows [r0, r0+Q_BS) and keys [k0, k0+KV_BS):
  touched ⇔ some row has an interval reaching into [k0, k1);
  full    ⇔ every row has a merged interval covering [k0, k1) (ragged edge blocks never).
Both are counted with difference arrays over (row block, key block): each row
adds +1/-1 at the ends of the key-block ranges its intervals touch or cover, and
a cumulative sum gives per-block counts. Exact for any union of intervals, in
O(B·H·Q·K + B·H·Q_blocks·KV_blocks) time and memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from maskspec import ir, lower
from maskspec.lower import Rows


@dataclass
class BlockGrid:
    """Block classes, each (B', H', Q_blocks, KV_blocks) bool; EMPTY is neither."""

    partial: torch.Tensor
    full: torch.Tensor


def _count(
    first: torch.Tensor, last: torch.Tensor, weight: torch.Tensor, q_bs: int, n_q: int, n_kv: int
) -> torch.Tensor:
    """Per (row block, key block): how many rows' key-block ranges [first, last) contain it."""
    lead = first.shape[:-2]
    q = first.shape[-2]
    qb = (torch.arange(q, device=first.device) // q_bs).view(q, 1) * (n_kv + 1)
    w = weight.to(torch.int32).flatten(-2)
    diff = torch.zeros(*lead, n_q * (n_kv + 1), dtype=torch.int32, device=first.device)
    diff.scatter_add_(-1, (qb + first).flatten(-2), w)
    diff.scatter_add_(-1, (qb + last).flatten(-2), -w)
    return diff.view(*lead, n_q, n_kv + 1).cumsum(-1, dtype=torch.int32)[..., :n_kv]


def _running_max(x: torch.Tensor) -> torch.Tensor:
    """cummax along the last (short) dim, scanned as an outer dim: CUDA's innermost-dim scan
    with indices is ~20× slower on rows of a few intervals."""
    return x.mT.contiguous().cummax(-2).values.mT


def _merged(rows: Rows) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Merge each row's overlapping or touching intervals.

    Returns (start, end, is_last): for the last interval of every merged group,
    the group's start and end; other positions are marked not last.
    """
    lo, hi = rows.lo, rows.hi
    if lo.shape[-1] == 1:
        return lo, hi, torch.ones_like(lo, dtype=torch.bool)
    lo, order = lo.sort(-1)
    hi = hi.gather(-1, order)
    reach = _running_max(hi)
    before = torch.cat([torch.full_like(reach[..., :1], -1), reach[..., :-1]], -1)
    starts = lo > before
    start = _running_max(torch.where(starts, lo, -1))
    is_last = torch.cat([starts[..., 1:], torch.ones_like(starts[..., :1])], -1)
    return start, reach, is_last


def allowed_per_row(rows: Rows) -> torch.Tensor:
    """Exact count of allowed keys in every row: the merged intervals' total length."""
    start, end, is_last = _merged(rows)
    return torch.where(is_last, end - start, 0).sum(-1)


def counts(q_len: int, kv_len: int, q_bs: int, kv_bs: int) -> tuple[int, int]:
    """Row blocks and key blocks covering the lengths (the last of each may be partial)."""
    return -(-q_len // q_bs), -(-kv_len // kv_bs)


def classify(rows: Rows, q_len: int, kv_len: int, q_bs: int, kv_bs: int) -> BlockGrid:
    """Exact FULL and PARTIAL blocks from per-row intervals (torch's semantics, ragged edges)."""
    n_q, n_kv = counts(q_len, kv_len, q_bs, kv_bs)
    lo, hi = rows.lo, rows.hi
    nonempty = lo < hi
    touched = _count(lo // kv_bs, -(-hi // kv_bs), nonempty, q_bs, n_q, n_kv) > 0
    start, end, is_last = _merged(rows)
    f0 = -(-start // kv_bs)
    f1 = (end // kv_bs).clamp(max=kv_len // kv_bs)  # no host-made tensor: graph-capturable
    covering = is_last & (f0 < f1)
    f0, f1 = torch.where(covering, f0, 0), torch.where(covering, f1, 0)
    full = _count(f0, f1, covering, q_bs, n_q, n_kv) == q_bs
    return BlockGrid(partial=touched & ~full, full=full)


def ordered(grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(counts, indices) along the last dim: set columns first, ascending, then the unset ones.

    Each row of indices is a permutation of the columns, so padding entries are valid block
    indices and the scatter writes the output in place (no spill column, no copy).
    """
    n = grid.shape[-1]
    seen = grid.cumsum(-1, dtype=torch.int32)  # set columns up to and including each one
    counts = seen[..., -1].contiguous()
    cols = torch.arange(n, dtype=torch.int32, device=grid.device)
    slot = torch.where(grid, seen - 1, counts.unsqueeze(-1) + cols - seen)
    out = torch.empty_like(seen)
    out.scatter_(-1, slot.long(), cols.expand_as(slot))
    return counts, out


def build_grid(
    mask: ir.MaskIR, sizes: dict[str, int], inputs: dict[str, torch.Tensor],
    device: torch.device, block_size: tuple[int, int],
) -> BlockGrid:
    """The spec's block grid at these sizes and bound inputs: row intervals, then classes."""
    rows = lower.row_intervals(mask, sizes, inputs, device)
    return classify(rows, sizes["Q_LEN"], sizes["KV_LEN"], *block_size)
