"""Row slots → exact FULL / PARTIAL block classification, and ordered block indices.

For a block of rows [r0, r0+Q_BS) and keys [k0, k0+KV_BS):
  touched ⇔ some row allows a key in [k0, k1);
  full    ⇔ every row allows every key of [k0, k1) (ragged edge blocks never).
Both are counted with difference arrays over (row block, key block): each row adds +1/-1
at the ends of key-block ranges, and a cumulative sum gives per-block counts.

A slot's keys are a strided family (``lower.Rows``). The key blocks its pieces touch are
one range when its gaps are shorter than a block (or it has one piece), else one range
per piece; likewise the blocks its gaps touch. A block is full for a row when the merged
hulls of the row's slots cover it and no gap of a strided slot that the row's intervals
leave open falls in it: exact for any union, since a mask keeps at most one term's
families whole and their hulls are disjoint. Time and memory
O(B·H·Q·K·P + B·H·Q_blocks·KV_blocks) for K slots of P enumerated pieces (P = 1 unless
pieces or gaps are a key block or more apart).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from maskspec import elements, ir, lower, separable
from maskspec.context import BuildContext
from maskspec.lower import Rows
from maskspec.sorting import sorted_with_order


@dataclass
class BlockGrid:
    """Block classes, each (B', H', Q_blocks, KV_blocks) bool; EMPTY is neither."""

    partial: torch.Tensor
    full: torch.Tensor


Ranges = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # first, last, weight: (..., rows, E)
Tight = tuple[torch.Tensor, ...]  # (lo, hi, live, q_lo, q_hi): ``tighten``'s


def tally(
    first: torch.Tensor, last: torch.Tensor, weight: torch.Tensor, q_bs: int, n_q: int, n_kv: int
) -> torch.Tensor:
    """Per (row block, key block): the summed weights of the rows' key-block ranges
    [first, last) that contain it (a count where the weights are flags)."""
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


def _merged(lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Merge each row's overlapping or touching intervals.

    Returns (start, end, is_last): for the last interval of every merged group,
    the group's start and end; other positions are marked not last.
    """
    if lo.shape[-1] == 1:
        return lo, hi, torch.ones_like(lo, dtype=torch.bool)
    lo, order = sorted_with_order(lo)
    hi = hi.gather(-1, order)
    reach = _running_max(hi)
    before = torch.cat([torch.full_like(reach[..., :1], -1), reach[..., :-1]], -1)
    starts = lo > before
    start = _running_max(torch.where(starts, lo, -1))
    is_last = torch.cat([starts[..., 1:], torch.ones_like(starts[..., :1])], -1)
    return start, reach, is_last


def tighten(rows: Rows) -> Tight:
    """Every slot's first allowed key, one past its last, whether it allows any, and (for a
    family) the periods of those keys; plain intervals, with no family, are their own hulls."""
    if rows.family.level is None:
        return rows.lo, rows.hi, rows.lo < rows.hi, rows.lo, rows.lo
    return _tighten(*rows.tensors())


def _tighten(lo: torch.Tensor, hi: torch.Tensor, ph: torch.Tensor, st: torch.Tensor,
             ln: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``tighten``, plus the periods of the first and of the last allowed key."""
    qa = torch.div(lo - ph, st, rounding_mode="floor")
    r = lo - ph - qa * st  # lo's place in its period: in the window when < ln
    inside = r < ln
    first = torch.where(inside, lo, lo - r + st)
    qe = torch.div(hi - 1 - ph, st, rounding_mode="floor")
    e = hi - 1 - ph - qe * st
    end = torch.where(e < ln, hi, hi - 1 - e + ln)
    live = (lo < hi) & (ln > 0) & (first < end)
    return first, end, live, torch.where(inside, qa, qa + 1), qe


def family_ranges(
    lo: torch.Tensor, hi: torch.Tensor, ph: torch.Tensor, st: torch.Tensor, ln: torch.Tensor,
    live: torch.Tensor, kv_bs: int, pieces: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The key-block ranges [first, last) a family's pieces touch, with a trailing dim: the
    whole hull where no block fits between pieces (or there is one piece), else one range
    per piece (at most ``pieces``; enumerated only if some slot needs it). The third tensor
    marks real ranges."""
    lo, hi, ok, q_lo, q_hi = _tighten(lo, hi, ph, st, ln)
    return _tight_ranges(lo, hi, ph, st, ln, ok & live, q_lo, q_hi, kv_bs, pieces)


def _tight_ranges(
    lo: torch.Tensor, hi: torch.Tensor, ph: torch.Tensor, st: torch.Tensor, ln: torch.Tensor,
    ok: torch.Tensor, q_lo: torch.Tensor, q_hi: torch.Tensor, kv_bs: int, pieces: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``family_ranges`` of tightened slots (first and last keys in periods q_lo, q_hi)."""
    fine = ok & ((st - ln < kv_bs) | (q_lo == q_hi))
    first, last, real = lo // kv_bs, -(-hi // kv_bs), fine
    first, last, real = first.unsqueeze(-1), last.unsqueeze(-1), real.unsqueeze(-1)
    coarse = ok & ~fine
    if pieces > 0 and bool(coarse.any()):
        j = torch.arange(pieces, device=lo.device)
        start = (ph + q_lo * st).unsqueeze(-1) + j * st.unsqueeze(-1)
        a = torch.maximum(lo.unsqueeze(-1), start)
        b = torch.minimum(hi.unsqueeze(-1), start + ln.unsqueeze(-1))
        coarse = coarse.unsqueeze(-1) & (start < hi.unsqueeze(-1))
        first = torch.cat([first.expand_as(a), a // kv_bs], -1)
        last = torch.cat([last.expand_as(b), -(-b // kv_bs)], -1)
        real = torch.cat([real.expand_as(coarse), coarse], -1)
    return torch.where(real, first, 0), torch.where(real, last, 0), real


def _open_gaps(rows: Rows, live: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
               kv_len: int) -> tuple[torch.Tensor, ...]:
    """The gaps of the family slots that the row's intervals leave open: for each family slot
    (dim -2) and each gap [u, v) between the row's merged intervals (dim -1), that slot's
    gap window clipped to it, as (lo, hi, phase, stride, length, live)."""
    c0, c1 = rows.family.cols
    strided = live & (rows.length < rows.stride)
    plain = live & ~strided
    sentinel = torch.zeros_like(lo[..., :1])  # [0, 0): the gap before the first interval
    if lo.device.type == "cpu" and not bool(plain.any()):  # no intervals: one gap, all keys
        il = ih = sentinel
    else:
        il = torch.cat([sentinel, torch.where(plain, lo, 0)], -1)
        ih = torch.cat([sentinel, torch.where(plain, hi, 0)], -1)
    il, order = sorted_with_order(il)
    reach = _running_max(ih.gather(-1, order))
    nxt = torch.cat([il[..., 1:], torch.full_like(il[..., :1], kv_len)], -1)
    u, v = reach.unsqueeze(-2), nxt.unsqueeze(-2)
    f = (slice(None),) * (lo.dim() - 1) + (slice(c0, c1),)
    ph, st, ln = (x[f].unsqueeze(-1) for x in (rows.phase, rows.stride, rows.length))
    glo = torch.maximum(u, lo[f].unsqueeze(-1))
    ghi = torch.minimum(v, hi[f].unsqueeze(-1))
    ok = strided[f].unsqueeze(-1) & (v > u)
    return glo, ghi, ph + ln, st, st - ln, ok


def _family_keys(lo: torch.Tensor, hi: torch.Tensor, ph: torch.Tensor, st: torch.Tensor,
                 ln: torch.Tensor) -> torch.Tensor:
    """How many keys of [lo, hi) lie in the window: closed form, no enumeration."""
    def below(x: torch.Tensor) -> torch.Tensor:
        return ((x - ph) // st) * ln + torch.minimum((x - ph) % st, ln)
    return torch.where(lo < hi, below(hi) - below(lo), 0)


def allowed_per_row(rows: Rows, kv_len: int) -> torch.Tensor:
    """Exact count of allowed keys in every row: the merged hulls' total length less the
    family gaps the row's intervals leave open."""
    lo, hi, live = tighten(rows)[:3]
    lo, hi = torch.where(live, lo, 0), torch.where(live, hi, 0)
    start, end, is_last = _merged(lo, hi)
    out = torch.where(is_last, end - start, 0).sum(-1)
    if rows.family.level is not None:
        glo, ghi, ph, st, ln, ok = _open_gaps(rows, live, lo, hi, kv_len)
        out = out - torch.where(ok, _family_keys(glo, ghi, ph, st, ln), 0).sum((-1, -2))
    return out


def counts(q_len: int, kv_len: int, q_bs: int, kv_bs: int) -> tuple[int, int]:
    """Row blocks and key blocks covering the lengths (the last of each may be partial)."""
    return -(-q_len // q_bs), -(-kv_len // kv_bs)


def _flat(first: torch.Tensor, last: torch.Tensor, ok: torch.Tensor) -> Ranges:
    """Ranges with their trailing dims after the row dim flattened into one."""
    flat = (*first.shape[:3], -1)
    return first.reshape(flat), last.reshape(flat), ok.reshape(flat)


def _joined(a: Ranges, b: Ranges) -> Ranges:
    """Two rows' worth of ranges side by side (broadcast to one shape)."""
    shape = torch.broadcast_shapes(a[0].shape[:-1], b[0].shape[:-1])
    return tuple(torch.cat([x.expand(*shape, x.shape[-1]), y.expand(*shape, y.shape[-1])], -1)
                 for x, y in zip(a, b, strict=True))  # type: ignore[return-value]


def _covering(lo: torch.Tensor, hi: torch.Tensor, kv_len: int, kv_bs: int) -> Ranges:
    """The key blocks each row's merged intervals [lo, hi) (dead slots [0, 0)) hold whole
    (a ragged edge block never)."""
    start, end, is_last = _merged(lo, hi)
    f0 = -(-start // kv_bs)
    f1 = (end // kv_bs).clamp(max=kv_len // kv_bs)  # no host-made tensor: graph-capturable
    covering = is_last & (f0 < f1)
    return torch.where(covering, f0, 0), torch.where(covering, f1, 0), covering


def _covered(lo: torch.Tensor, hi: torch.Tensor, kv_len: int, q_bs: int, kv_bs: int, n_q: int,
             n_kv: int) -> torch.Tensor:
    """Per (row block, key block): whether every row's merged intervals cover the block."""
    return tally(*_covering(lo, hi, kv_len, kv_bs), q_bs, n_q, n_kv) == q_bs


def touched_ranges(rows: Rows, kv_bs: int, t: Tight) -> Ranges:
    """The key-block ranges of each row a block is touched in (``t``: ``tighten(rows)``)."""
    lo, hi, live, q_lo, q_hi = t
    if rows.family.level is None:  # plain intervals: one range of blocks each
        return _flat(lo // kv_bs, -(-hi // kv_bs), live)
    c0, c1 = rows.family.cols  # only the family's slots can have pieces to enumerate
    fields = (lo, hi, rows.phase, rows.stride, rows.length, live, q_lo, q_hi)
    touched = _flat(*_tight_ranges(*fields, kv_bs, 0))
    if rows.family.pieces > 0:  # enumerated wherever a slot needs it (_tight_ranges checks)
        fam = [x[..., c0:c1] for x in fields]
        touched = _joined(touched, _flat(*_tight_ranges(*fam, kv_bs, rows.family.pieces)))
    return touched


def full_ranges(rows: Rows, kv_len: int, kv_bs: int, per_block: int, t: Tight) -> Ranges:
    """Ranges whose weights, summed over a block of ``per_block`` rows, reach ``per_block``
    exactly on its full blocks: each row's merged intervals' whole blocks weighing 1 (a row
    covers a block at most once), the family gaps they leave open ``-(per_block + 1)``."""
    lo, hi, live = t[:3]
    lo, hi = torch.where(live, lo, 0), torch.where(live, hi, 0)
    c0, c1, covering = _covering(lo, hi, kv_len, kv_bs)
    covered = (c0, c1, covering.to(torch.int32))
    if rows.family.level is None:
        return covered
    glo, ghi, ph, st, ln, ok = _open_gaps(rows, live, lo, hi, kv_len)
    g0, g1, real = _flat(*family_ranges(glo, ghi, ph, st, ln, ok, kv_bs, rows.family.pieces))
    return _joined(covered, (g0, g1, real.to(torch.int32) * -(per_block + 1)))


def classify(rows: Rows, q_len: int, kv_len: int, q_bs: int, kv_bs: int) -> BlockGrid:
    """Exact FULL and PARTIAL blocks from per-row slots (torch's semantics, ragged edges)."""
    n_q, n_kv = counts(q_len, kv_len, q_bs, kv_bs)
    t = tighten(rows)
    touched = tally(*touched_ranges(rows, kv_bs, t), q_bs, n_q, n_kv) > 0
    full = tally(*full_ranges(rows, kv_len, kv_bs, q_bs, t), q_bs, n_q, n_kv) == q_bs
    return BlockGrid(partial=touched & ~full, full=full)


Decide = Callable[..., None]  # ``elements.decide``'s signature

ORDER_CHUNK = 1 << 18  # grid entries ``ordered`` processes at a time (bounds its temporaries)


def ordered(grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(counts, indices) along the last dim: set columns first, ascending, then the unset ones.

    Each row of indices is a permutation of the columns, so padding entries are valid block
    indices and the scatter writes the output in place (no spill column, no copy). Rows are
    taken ORDER_CHUNK entries at a time: the temporaries (an int64 scatter index among them)
    stay a bounded few MB however large the grid, next to the int32 output.
    """
    n = grid.shape[-1]
    flat = grid.reshape(-1, n)
    counts = torch.zeros(flat.shape[0], dtype=torch.int32, device=grid.device)
    out = torch.empty(flat.shape, dtype=torch.int32, device=grid.device)
    cols = torch.arange(n, dtype=torch.int32, device=grid.device)
    step = max(1, ORDER_CHUNK // max(n, 1))
    for a in range(0, flat.shape[0] if n else 0, step):
        g = flat[a:a + step]
        seen = g.cumsum(-1, dtype=torch.int32)  # set columns up to and including each one
        c = counts[a:a + step]
        c.copy_(seen[:, -1])
        unset = (c.unsqueeze(-1) + cols).sub_(seen)
        slot = torch.where(g, seen.sub_(1), unset)
        out[a:a + step].scatter_(-1, slot.long(), cols.expand_as(slot))
    return counts.view(grid.shape[:-1]), out.view(grid.shape)


ROW_BUDGET = 1 << 17  # slot entries (rows × slots × pieces) a chunk of rows evaluates at once


def chunk_rows(mask: ir.MaskIR, sizes: dict[str, int], block_size: tuple[int, int]) -> int:
    """Rows evaluated together: whole row blocks, as many as keep the chunk's slot entries
    (slots per row times the family pieces enumerated at this key block size) within
    ROW_BUDGET, at least one block. The per-row temporaries are then about 30 MB however
    long Q_LEN is, beside the output; most specs take one chunk up to Q_LEN = 32K."""
    pieces = max(lower.family_plan(mask, sizes).enumerated(block_size[1]))
    width = max(1, lower.slot_count(mask, sizes)) * (1 + pieces)
    return max(1, ROW_BUDGET // (width * block_size[0])) * block_size[0]


def classify_at(ctx: BuildContext, q_positions: torch.Tensor | None, n_rows: int,
                block_size: tuple[int, int], decide: Decide = elements.decide) -> BlockGrid:
    """Exact classes of the rows at ``q_positions`` (None: every row; see
    ``lower.row_env``) against all keys. A mask whose terms leave conditions to the element
    fallback is classified in parts (``split``), and the blocks left undecided are decided
    from the element meaning by ``decide`` (``elements.decide``'s signature: the CUDA
    stage passes its generated kernel)."""
    if not ctx.mask.fallback:
        rows = lower.row_slots(ctx, q_positions)
        return classify(rows, n_rows, ctx.kv_len, *block_size)
    grid, undecided = split(ctx, q_positions, n_rows, block_size)
    decide(ctx.mask, ctx.sizes, ctx.inputs, grid.partial, grid.full, undecided, q_positions,
           n_rows, block_size)
    return grid


def split(ctx: BuildContext, q_positions: torch.Tensor | None, n_rows: int,
          block_size: tuple[int, int]) -> tuple[BlockGrid, torch.Tensor]:
    """A fallback mask classified by parts, and the blocks no part decides alone.

    The analytic terms are classified exactly together; each ``keyed``, transposed or
    ``separable`` term alone (a separable term exactly except where two of its own parts
    cut a block, or a lookup's indices over a block are no range: undecided); the other
    terms as the supersets their row programs allow. A block's class is then known unless
    such a superset touches it, or a term classified alone and another part both touch it
    and no part alone makes it FULL (together they might): those are undecided.
    Returned at the whole mask's (B', H', Q_blocks, KV_blocks)."""
    mask, (q_bs, kv_bs) = ctx.mask, block_size
    per_batch = q_positions is not None and q_positions.dim() > 1 and q_positions.shape[0] > 1
    lead = lower.lead_shape(mask, ctx.sizes, per_batch)
    shape = (*lead, *counts(n_rows, ctx.kv_len, q_bs, kv_bs))

    def rows_of(which: Callable[[ir.Term], bool]) -> Rows | None:
        part = mask.part(which)
        return lower.row_slots(dataclasses.replace(ctx, mask=part), q_positions) \
            if part.terms else None

    def grid_of(rows: Rows | None) -> tuple[torch.Tensor, torch.Tensor]:
        if rows is None:
            return (torch.zeros(shape, dtype=torch.bool, device=ctx.device),) * 2
        g = classify(rows, n_rows, ctx.kv_len, q_bs, kv_bs)
        return (g.partial | g.full).expand(shape), g.full.expand(shape)

    alone = [t for t in mask.terms if t.keyed or t.separable or (
        t.transposed is not None and q_positions is None)]
    touched, full = grid_of(rows_of(lambda t: t.analytic))
    over = grid_of(rows_of(lambda t: not t.analytic and not any(t is a for a in alone)))[0]
    parts, full = touched.to(torch.int32), full.clone()
    exact_touch = torch.zeros(shape, dtype=torch.bool, device=ctx.device)
    for term in alone:
        if term.transposed is not None and q_positions is None and not term.keyed:
            tk, fk = transposed(ctx, term, shape, block_size)
        elif term.keyed:
            keys = elements.key_set([r.cmp for r in term.residual], ctx.sizes, ctx.inputs,
                                    lead, ctx.device)
            tk, fk = keyed(rows_of(lambda t, term=term: t is term), keys, shape, n_rows,
                           ctx.kv_len, block_size)
        else:
            tk, fk, uk = _separable(ctx, term, rows_of(lambda t, term=term: t is term),
                                    q_positions, n_rows, lead, block_size)
            over = over | uk
        parts += tk
        exact_touch |= tk
        full |= fk
    undecided = ~full & (over | (exact_touch & (parts >= 2)))
    return BlockGrid((touched | exact_touch) & ~full, full), undecided


def _separable(ctx: BuildContext, term: ir.Term, rows: Rows, q_positions: torch.Tensor | None,
               n_rows: int, lead: tuple[int, int], block_size: tuple[int, int]) -> tuple[
                   torch.Tensor, torch.Tensor, torch.Tensor]:
    """(touched, full, undecided) of a ``separable`` term alone: its row program's classes
    and its conditions' (``maskspec.separable``) combined."""
    sides = separable.Sides(ctx, q_positions, n_rows, lead, block_size)
    g = classify(rows, n_rows, ctx.kv_len, *block_size)
    own = [separable.Cut(g.partial | g.full, g.full), *separable.parts(term, sides)]
    shape = (*lead, *counts(n_rows, ctx.kv_len, *block_size))
    return separable.combine(own, shape, ctx.device)


def transposed(ctx: BuildContext, term: ir.Term, shape: tuple[int, ...],
               block_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(touched, full) of a term alone from its ``transposed`` program: its queries per key
    (a key's row of the transposed grid), classified like any rows, then transposed back."""
    alone = dataclasses.replace(term, program=term.transposed, residual=(), transposed=None)
    sizes = {**ctx.sizes, "Q_LEN": ctx.kv_len, "KV_LEN": ctx.q_len}
    rows = lower.row_slots(dataclasses.replace(
        ctx, mask=dataclasses.replace(ctx.mask, terms=(alone,)), sizes=sizes))
    g = classify(rows, ctx.kv_len, ctx.q_len, block_size[1], block_size[0])
    return (g.partial | g.full).mT.expand(shape), g.full.mT.expand(shape)


def keyed(rows: Rows, keys: torch.Tensor, shape: tuple[int, ...], n_rows: int, kv_len: int,
          block_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(touched, full) of one keyed term alone: each row's plain intervals cut by the key
    set ``keys`` (B', H', KV_LEN). A block inside a row's interval is touched if the set
    holds a key in it and full if it holds all (per-block counts); the two edge blocks of
    each interval are counted from prefix sums of the set. O(rows · slots + output)."""
    q_bs, kv_bs = block_size
    n_q, n_kv = shape[-2:]
    lead = shape[:-2]
    lo, hi = (x.expand(*lead, *x.shape[-2:]) for x in (rows.lo, rows.hi))
    live = lo < hi
    lo, hi = torch.where(live, lo, 0), torch.where(live, hi, 0)
    keys = keys.expand(*lead, kv_len)
    prefix = torch.nn.functional.pad(keys.cumsum(-1, dtype=torch.int32), (1, 0))
    per_block = torch.nn.functional.pad(keys, (0, n_kv * kv_bs - kv_len)).view(
        *lead, n_kv, kv_bs).sum(-1, dtype=torch.int32).unsqueeze(-2)

    def at(i: torch.Tensor) -> torch.Tensor:
        return prefix.gather(-1, i.flatten(-2)).view_as(i)
    inner0, inner1 = -(-lo // kv_bs), hi // kv_bs
    inside = live & (inner0 < inner1)
    touched = (tally(torch.where(inside, inner0, 0), torch.where(inside, inner1, 0), inside,
                      q_bs, n_q, n_kv) > 0) & (per_block > 0)
    first, last = lo // kv_bs, torch.where(live, hi - 1, 0) // kv_bs
    for b, n in ((first, at(torch.minimum(hi, (first + 1) * kv_bs)) - at(lo)),
                 (last, at(hi) - at(torch.maximum(lo, last * kv_bs)))):
        touched |= tally(b, b + 1, live & (n > 0), q_bs, n_q, n_kv) > 0
    return touched, _covered(lo, hi, kv_len, q_bs, kv_bs, n_q, n_kv) & (per_block == kv_bs)


def index_tensors(grid: BlockGrid) -> tuple[Tensor, ...]:
    """BlockMask's eight tensors, in its constructor's order.

    kv_* from the grid's rows, q_* from its columns (copied transposed first, a byte per
    block: ordering contiguous rows takes half the time of strided ones on a CPU), with no
    dense argsort pass.
    """
    kv_num, kv_idx = ordered(grid.partial)
    full_kv_num, full_kv_idx = ordered(grid.full)
    q_num, q_idx = ordered(grid.partial.mT.contiguous())
    full_q_num, full_q_idx = ordered(grid.full.mT.contiguous())
    return kv_num, kv_idx, full_kv_num, full_kv_idx, q_num, q_idx, full_q_num, full_q_idx
