"""The build's block classes: whole row blocks at once where bounds allow, the rest row by
row; as a dense grid, or written straight into BlockMask's eight tensors.

``blocks.classify`` sums ranges over every (row block, key block). A row block classified
whole (``coarse``) keeps each sum as sorted events instead: its classes change only where
one of its ranges starts or ends, so they are read per run of key blocks between events,
O(B'·H'·Q_blocks·E log E) for E range ends per row block however many key blocks there are.
From runs, ``tensors`` writes the index tensors from spans of set blocks (``Spans``): each
row's offsets from ``arange``, constant between its spans' edges, repeated over their runs
give create_block_mask's layout, set blocks then the unset ones; the q direction's spans come
from the symmetric differences of adjacent rows' spans (``_transposed``). Both cost the
spans, not the blocks, and never pass over a boolean grid. Builds with many set blocks, or
few whole row blocks, take the dense grid and ``blocks.index_tensors``, whose temporaries
stay bounded by their chunks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from maskspec import blocks, elements, lower, rowblocks
from maskspec.blocks import BlockGrid, Decide, Ranges
from maskspec.caches import PerMask
from maskspec.context import BuildContext
from maskspec.lower import Rows
from maskspec.sorting import repeated, sorted_values, sorted_with_order

FIELD = 16  # bits per sum packed into an event's int64 weight (signed: |sum| < 2**15)
SPARSE = 8  # set blocks written one by one up to grid cells / SPARSE (else the dense grid)
WHOLE_BLOCKS = 128  # row blocks from which whole row blocks are classified at once
_FRUITLESS = PerMask(256)  # (mask, block size and sizes) where that found few exact blocks


@dataclass
class Runs:
    """Each whole row block's key blocks as runs [start, start + length), each PARTIAL,
    FULL or neither, (B', H', row blocks, E); runs of length 0 are padding."""

    start: Tensor
    length: Tensor
    partial: Tensor
    full: Tensor


def _runs(sums: list[Ranges], n_kv: int) -> tuple[Tensor, Tensor, list[Tensor]] | None:
    """The sorted ends of every range of a row, the run from each end to the next (the last
    to n_kv), and each sum's value over each run: the weights of all sums packed into one
    int64 a FIELD of bits each, so one sort and one cumulative sum serve them all. None
    where the ends outnumber the key blocks (dense sums then cost less, and runs would hold
    more than the grid) or a sum could leave its field. At most 64 // FIELD sums."""
    assert len(sums) * FIELD <= 64, "four sums at most"
    ends = 2 * sum(r[0].shape[-1] for r in sums)
    if ends > n_kv or any(r[0].shape[-1] * 4 >= 1 << (FIELD - 1) for r in sums):
        return None
    shape = torch.broadcast_shapes(*(r[0].shape[:-1] for r in sums))
    pos, weight = [], []
    for k, (first, last, w) in enumerate(sums):
        w = w.to(torch.long).expand(*shape, w.shape[-1]) * (1 << (FIELD * k))
        pos += [first.expand(*shape, first.shape[-1]), last.expand(*shape, last.shape[-1])]
        weight += [w, -w]
    pos, order = sorted_with_order(torch.cat(pos, -1))
    packed = torch.cat(weight, -1).gather(-1, order).cumsum(-1)
    length = torch.cat([pos[..., 1:], torch.full_like(pos[..., :1], n_kv)], -1) - pos
    half, values = 1 << (FIELD - 1), []
    for _ in sums:  # (bit operations: int64 ``%`` and ``//`` cost several times more)
        v = ((packed + half) & ((1 << FIELD) - 1)) - half  # the lowest field, signed
        values.append(v)
        packed = (packed - v) >> FIELD
    return pos, length, values


def _paired(r: Ranges) -> Ranges:
    """Ranges of rows 2i and 2i+1 as one row i's (the two end rows of a row block)."""
    return tuple(x.reshape(*x.shape[:-2], x.shape[-2] // 2, 2 * x.shape[-1])
                 for x in r)  # type: ignore[return-value]


def _stacked(a: Rows, b: Rows) -> Rows:
    """a's rows, then b's (slots laid out alike), under a family plan bounding both."""
    lead = torch.broadcast_shapes(a.lo.shape[:-2], b.lo.shape[:-2])
    both = (torch.cat([x.expand(*lead, *x.shape[-2:]), y.expand(*lead, *y.shape[-2:])], -2)
            for x, y in zip(a.tensors(), b.tensors(), strict=True))
    pa, pb = a.family, b.family
    plan = pa if pa.level is None else replace(
        pa, pieces=max(pa.pieces, pb.pieces),
        spans=(max(pa.spans[0], pb.spans[0]), max(pa.spans[1], pb.spans[1])))
    return Rows(*both, family=plan)


def _rows(r: Ranges, start: int, stop: int) -> Ranges:
    """Ranges of rows [start, stop)."""
    return tuple(x[..., start:stop, :] for x in r)  # type: ignore[return-value]


def coarse(ctx: BuildContext) -> tuple[Runs | BlockGrid, Tensor] | None:
    """Classes of the whole row blocks as runs (as a dense grid where their ranges have
    more ends than there are key blocks), and which row blocks they are exact for; None
    where the build has no whole row block of several rows.

    Per row block, four bounds: what its ``union`` slots touch (a superset of what the
    block touches) and what its first and last rows touch (a subset); what its ``common``
    slots cover (a subset of its FULL blocks) and what both end rows cover (a superset).
    Where both pairs agree on every run they are the block's classes, whatever the rows
    between do (``rowblocks``). Other row blocks (a condition turning within the block, a
    window narrower than it) go row by row."""
    q_bs, kv_bs = ctx.block_size
    n = ctx.q_len // q_bs  # the ragged last block, if any, always goes row by row
    if q_bs < 2 or n == 0 or ctx.mask.fallback:
        return None
    union, common = rowblocks.block_slots(ctx, n)
    first = torch.arange(n, device=ctx.device) * q_bs
    ends = torch.stack([first, first + q_bs - 1], -1).flatten()
    edge = lower.row_slots(ctx, ends)
    n_kv, kv_len = blocks.counts(ctx.q_len, ctx.kv_len, *ctx.block_size)[1], ctx.kv_len
    # The end rows' sums and the virtual rows' in one pass each (a tensor operation costs
    # the same for 2n rows as for 3n): full ranges weigh gaps -3 for both, which keeps
    # the virtual row's sum off 1 wherever a gap meets the block, as -2 would.
    touching, covering = _stacked(edge, union), _stacked(edge, common)
    touched = blocks.touched_ranges(touching, kv_bs, blocks.tighten(touching))
    full = blocks.full_ranges(covering, kv_len, kv_bs, 2, blocks.tighten(covering))
    sums = [_paired(_rows(touched, 0, 2 * n)), _paired(_rows(full, 0, 2 * n)),
            _rows(touched, 2 * n, 3 * n), _rows(full, 2 * n, 3 * n)]
    found = _runs(sums, n_kv)
    # (more range ends than key blocks: the dense sums, one value per key block, cost less)
    values = [blocks.tally(*r, 1, n, n_kv) for r in sums] if found is None else found[2]
    touch_lo, full_hi, touch_hi, full_lo = values
    touched, full = touch_lo > 0, full_lo == 1
    agree = (touched == (touch_hi > 0)) & (full == (full_hi == 2))
    if found is not None:
        agree |= found[1] == 0  # runs between equal ends hold no key block
    exact = agree.all(-1).flatten(0, -2).all(0)
    partial = touched & ~full
    if found is None:
        return BlockGrid(partial, full), exact
    return Runs(found[0], found[1], partial, full), exact


def dense(classes: Runs | BlockGrid, n_kv: int) -> BlockGrid:
    """``coarse``'s classes as a (B', H', row blocks, KV_blocks) grid."""
    if isinstance(classes, BlockGrid):
        return classes
    n, end = classes.start.shape[-2], classes.start + classes.length
    return BlockGrid(*(blocks.tally(classes.start, end, c, 1, n, n_kv) > 0
                       for c in (classes.partial, classes.full)))


def _todo(ctx: BuildContext, exact: Tensor | None) -> Tensor:
    """The row blocks left to classify row by row: all without ``coarse``, else the
    inexact whole ones and the ragged last."""
    n_q = blocks.counts(ctx.q_len, ctx.kv_len, *ctx.block_size)[0]
    todo = torch.arange(n_q, device=ctx.device)
    if exact is None:
        return todo
    n = exact.shape[0]
    return torch.cat([todo[:n][~exact], todo[n:]])


def _row_chunks(ctx: BuildContext, todo: Tensor, decide: Decide):
    """(row blocks, their classes) a chunk of row blocks at a time (``blocks.chunk_rows``)."""
    q_bs = ctx.block_size[0]
    per_chunk = max(1, blocks.chunk_rows(ctx.mask, ctx.sizes, ctx.block_size) // q_bs)
    for a in range(0, todo.numel(), per_chunk):
        at = todo[a:a + per_chunk]
        rows = (at.unsqueeze(-1) * q_bs + torch.arange(q_bs, device=ctx.device)).flatten()
        rows = rows[rows < ctx.q_len]
        yield at, blocks.classify_at(ctx, rows, rows.numel(), ctx.block_size, decide)


def _fast(ctx: BuildContext) -> tuple[Runs | BlockGrid, Tensor] | None:
    """``coarse``, where it pays: for builds of WHOLE_BLOCKS row blocks or more, or whose
    rows take more than one chunk (measured on a 2-core CPU: below both, row by row costs
    less than the pass's fixed small tensor operations), and not again for a mask and
    sizes where it found fewer than one row block in SPARSE exact (a window narrower than
    a row block, say), which only the rows can classify."""
    step = blocks.chunk_rows(ctx.mask, ctx.sizes, ctx.block_size)
    if step >= ctx.q_len and ctx.q_len < WHOLE_BLOCKS * ctx.block_size[0]:
        return None
    key = (ctx.block_size, tuple(sorted(ctx.sizes.items())))
    if _FRUITLESS.get(ctx.mask, key, False):
        return None
    fast = coarse(ctx)
    if fast is not None and int(fast[1].sum()) * SPARSE < fast[1].numel():
        _FRUITLESS.put(ctx.mask, key, True)
    return fast


def build_grid(ctx: BuildContext, decide: Decide = elements.decide) -> BlockGrid:
    """The build's block grid: whole row blocks at once where ``coarse`` is exact for them,
    the others from row slots, a chunk of row blocks at a time; undecided blocks of the
    element fallback by ``decide``."""
    return _grid(ctx, decide, _fast(ctx))


def _grid(ctx: BuildContext, decide: Decide,
          fast: tuple[Runs | BlockGrid, Tensor] | None) -> BlockGrid:
    """``build_grid`` given ``coarse``'s result."""
    q_len, kv_len, block_size = ctx.q_len, ctx.kv_len, ctx.block_size
    step = blocks.chunk_rows(ctx.mask, ctx.sizes, block_size)
    if fast is None and (step >= q_len or any(t.transposed is not None
                                              for t in ctx.mask.terms)):
        # (a transposed term is classified over all queries at once)
        return blocks.classify_at(ctx, None, q_len, block_size, decide)
    n_q, n_kv = blocks.counts(q_len, kv_len, *block_size)
    shape = (*lower.lead_shape(ctx.mask, ctx.sizes), n_q, n_kv)
    out = BlockGrid(*(torch.empty(shape, dtype=torch.bool, device=ctx.device)
                      for _ in range(2)))
    if fast is not None:
        grid = dense(fast[0], n_kv)
        n = fast[1].shape[0]
        out.partial[..., :n, :] = grid.partial
        out.full[..., :n, :] = grid.full
    for at, part in _row_chunks(ctx, _todo(ctx, None if fast is None else fast[1]), decide):
        out.partial[..., at, :] = part.partial
        out.full[..., at, :] = part.full
    return out


def tensors(ctx: BuildContext, decide: Decide = elements.decide) -> tuple[Tensor, ...]:
    """BlockMask's eight tensors of the build, in create_block_mask's layout: on the CPU
    written from the set blocks where ``coarse`` classifies most row blocks and few blocks
    are set (``SPARSE``), else ``blocks.index_tensors`` of ``build_grid`` (the route CUDA
    takes while its fused kernels compile: measured on the CPU only)."""
    fast = _fast(ctx)
    if fast is not None and isinstance(fast[0], Runs) and ctx.device.type == "cpu":
        runs, exact = fast
        n_q, n_kv = blocks.counts(ctx.q_len, ctx.kv_len, *ctx.block_size)
        lead = runs.start.shape[:-2]
        cells = lead.numel() * n_q * n_kv
        whole = exact.view(1, 1, -1, 1) & (runs.length > 0)
        n_set = int(torch.where(whole & (runs.partial | runs.full), runs.length, 0).sum())
        if n_set * SPARSE <= cells and (n_q - int(exact.sum())) * SPARSE <= n_q:
            return _from_entries(ctx, runs, exact, whole, decide)
    return blocks.index_tensors(_grid(ctx, decide, fast))


@dataclass
class Spans:
    """Set blocks as spans [start, start + length) of columns, per row of a flat (lead dims,
    rows) index: sorted by row, then start; disjoint; none empty. A row of a strided mask
    holds a few spans however many blocks they cover, so writers over spans cost the
    spans, not the blocks."""

    row: Tensor
    start: Tensor
    length: Tensor


def _of_runs(runs: Runs, which: Tensor, n_q: int) -> Spans:
    """The runs marked ``which`` (each already ascending in its row) as spans."""
    n, per_row = runs.start.shape[-2:]
    keep = (which & (runs.length > 0)).flatten()
    flat = torch.arange(keep.numel(), device=keep.device)[keep] // per_row
    return Spans(flat // n * n_q + flat % n, runs.start.flatten()[keep],
                 runs.length.flatten()[keep])


def _of_grid(grid: Tensor, at: Tensor, n_q: int) -> Spans:
    """The set blocks of a (B', H', len(at), KV_blocks) grid of row blocks ``at``, a span
    each (rows in ``at``'s order)."""
    b, h, r, col = grid.nonzero(as_tuple=True)
    return Spans((b * grid.shape[1] + h) * n_q + at[r], col, torch.ones_like(col))


def _in_order(parts: list[Spans], n_cols: int) -> Spans:
    """Spans of disjoint sets of blocks as one, sorted by row then start."""
    parts = [p for p in parts if p.row.numel()] or parts[:1]
    row, start, length = (torch.cat(x) for x in zip(*((p.row, p.start, p.length)
                                                       for p in parts), strict=True))
    if len(parts) > 1:
        order = sorted_with_order(row * (n_cols + 1) + start)[1]
        row, start, length = row[order], start[order], length[order]
    return Spans(row, start, length)


def _from_entries(ctx: BuildContext, runs: Runs, exact: Tensor, whole: Tensor,
                  decide: Decide) -> tuple[Tensor, ...]:
    """The eight tensors from the runs of the row blocks ``coarse`` is ``exact`` for
    (``whole``: those runs) and the other row blocks' grids, classified row by row."""
    n_q, n_kv = blocks.counts(ctx.q_len, ctx.kv_len, *ctx.block_size)
    lead = tuple(runs.start.shape[:-2])
    found = [[_of_runs(runs, whole & runs.partial, n_q)], [_of_runs(runs, whole & runs.full, n_q)]]
    for at, part in _row_chunks(ctx, _todo(ctx, exact), decide):
        for into, g in zip(found, (part.partial, part.full), strict=True):
            into.append(_of_grid(g.expand(*lead, *g.shape[-2:]), at, n_q))
    kv_side: list[Tensor] = []
    q_side: list[Tensor] = []
    for parts in found:  # PARTIAL, then FULL
        spans = _in_order(parts, n_kv)
        kv_side += _written(spans, (*lead, n_q), n_kv)
        q_side += _written(_transposed(spans, n_q, n_kv), (*lead, n_kv), n_q)
    return (*kv_side, *q_side)


def _enumerated(lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """(interval, value) for every value of each interval [lo, hi), in order."""
    width = hi - lo
    total = int(width.sum())
    which = torch.repeat_interleave(torch.arange(width.numel(), device=lo.device), width,
                                    output_size=total)
    value = lo[which] + torch.arange(total, device=lo.device) - (width.cumsum(0) - width)[which]
    return which, value


def _transposed(spans: Spans, n_q: int, n_kv: int) -> Spans:
    """Spans of rows per column: the same blocks, read down the columns.

    Column c's set rows change only at a boundary between rows i-1 and i (rows -1 and n_q
    empty) where c is set in exactly one of them: the columns flipping there are the
    symmetric difference of two unions of intervals, the ends of both rows' spans that
    occur an odd number of times, paired in order. Expanding those intervals gives each
    column's flips, and sorting them by column pairs each run's first row with its end.
    Costs the spans of both directions, never the blocks."""
    lead, i = spans.row // n_q, spans.row % n_q
    at = (lead * (n_q + 1) + i).repeat(2)
    x = torch.cat([spans.start, spans.start + spans.length])
    ends = sorted_values(torch.cat([at * (n_kv + 1) + x, (at + 1) * (n_kv + 1) + x]))
    ends, times = torch.unique_consecutive(ends, return_counts=True)
    ends = ends[times % 2 == 1]
    which, col = _enumerated(ends[0::2] % (n_kv + 1), ends[1::2] % (n_kv + 1))
    at = ends[0::2][which] // (n_kv + 1)
    flips = sorted_values((at // (n_q + 1) * n_kv + col) * (n_q + 1) + at % (n_q + 1))
    on, off = flips[0::2], flips[1::2]
    return Spans(on // (n_q + 1), on % (n_q + 1), off - on)


def _written(spans: Spans, rows: tuple[int, ...], n_cols: int) -> list[Tensor]:
    """(counts, indices) of the spans' blocks in create_block_mask's layout: each row's set
    columns ascending, then its unset ones ascending (padding entries are valid blocks,
    entry for entry create_block_mask's: torch's ``BlockMask._adjust`` reads them).

    A row's entries are ``arange`` plus an offset constant between events, so the indices
    are the offsets repeated over their runs (``sorting.repeated``: one pass over the
    output) plus ``arange``. A row of k spans has 2k + 1 events in ascending position: span
    j, at position P_j among the row's set columns, holds offset start_j - P_j from P_j; the
    unset columns start at position num with offset -num; the gap after span j starts at
    num + start_j - P_j with offset P_j + length_j - num. Laid out per row as [the k span
    events, the first gap, the k later gaps], the events of all rows are in order, and each
    runs to the next (an empty gap's run has length 0)."""
    n_rows = math.prod(rows)
    row, start, length = (x.long() for x in (spans.row, spans.start, spans.length))
    k = torch.zeros(n_rows, dtype=torch.long, device=row.device).index_add_(
        0, row, torch.ones_like(row))
    num = torch.zeros(n_rows, dtype=torch.long, device=row.device).index_add_(0, row, length)
    base = (2 * k + 1).cumsum(0) - (2 * k + 1)  # each row's first event
    first_span = k.cumsum(0) - k
    w = torch.arange(row.numel(), device=row.device) - first_span[row]  # rank in its row
    pos = length.cumsum(0) - length - (num.cumsum(0) - num)[row]  # P_j
    m = num[row]
    at = torch.empty(2 * row.numel() + n_rows, dtype=torch.long, device=row.device)
    offset = torch.empty_like(at)  # (at: flat positions, row · n_cols + position)
    span_at = base[row] + w
    gap_at, rest, shift = span_at + k[row] + 1, base + k, row * n_cols
    at[span_at], offset[span_at] = shift + pos, start - pos
    at[gap_at], offset[gap_at] = shift + m + start - pos, pos + length - m
    # a row's first gap (alone, at the row's start, in a row of none)
    at[rest] = torch.arange(n_rows, device=row.device) * n_cols + num
    offset[rest] = -num
    runs = torch.diff(at, append=at.new_full((1,), n_rows * n_cols))
    idx = repeated(offset.to(torch.int32), runs, n_rows * n_cols).view(n_rows, n_cols)
    idx += torch.arange(n_cols, dtype=torch.int32, device=row.device)
    return [num.to(torch.int32).view(rows), idx.view(*rows, n_cols)]
