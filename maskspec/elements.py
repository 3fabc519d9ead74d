"""The element fallback: the exact class of chosen blocks, from the element meaning.

Where a term has conditions with no interval form in kv (``ir.Residual``), its row program
allows a superset of its keys, and ``blocks`` cannot tell from it alone whether a block it
touches is EMPTY, PARTIAL or FULL. Those blocks (and only those) are decided here: the
mask's element meaning (``ir.element_mask``, what dense and mask_mod evaluate) on every
(q, kv) pair of the block, ``BUDGET`` pairs at a time, so memory stays bounded whatever the
number of blocks. Exact always; the cost is the chosen blocks' elements. ``key_set``
evaluates conditions that read kv but not q on every key once: ``blocks`` classifies the
terms they cut exactly from those per-key sets.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import Tensor

from maskspec import ir

BUDGET = 1 << 21  # (q, kv) pairs evaluated at a time: ~16 MB per int64 temporary


def _chunks(
    mask: ir.MaskIR, sizes: Mapping[str, int], inputs: Mapping[str, Tensor], where: Tensor,
    q_positions: Tensor | None, n_rows: int, block_size: tuple[int, int],
) -> Iterator[tuple[Tensor, Tensor]]:
    """For the blocks at ``where`` ((n, 4): b, h, row block, key block), a chunk at a
    time: (the chunk's rows of ``where``, the mask on its pairs (c, Q_BS, KV_BS), False
    past the rows and keys there are). Row r of a block is query ``q_positions[.., r]``
    (None: query r), as ``lower.row_env`` reads them."""
    q_bs, kv_bs = block_size
    dev = where.device
    step = max(1, BUDGET // (q_bs * kv_bs))
    pos = None if q_positions is None else q_positions.reshape(-1, q_positions.shape[-1]).to(dev)
    for a in range(0, where.shape[0], step):
        w = where[a:a + step]
        b, h, rb, kb = (x.view(-1, 1, 1) for x in w.unbind(-1))
        rows = rb * q_bs + torch.arange(q_bs, device=dev).view(1, -1, 1)
        keys = kb * kv_bs + torch.arange(kv_bs, device=dev).view(1, 1, -1)
        q = rows if pos is None else pos[b if pos.shape[0] > 1 else 0,
                                         rows.clamp(max=n_rows - 1)]
        env = ir.Env(vars={"b": b, "h": h, "q": q, "kv": keys}, sizes=sizes, inputs=inputs)
        real = (rows < n_rows) & (keys < sizes["KV_LEN"])
        yield w, ir.element_mask(mask, env) & real


def key_set(conds: Sequence[ir.Cmp], sizes: Mapping[str, int], inputs: Mapping[str, Tensor],
            lead: tuple[int, int], device: torch.device) -> Tensor:
    """The keys conditions reading kv but not q allow (a ``keyed`` term's residual), per
    (b', h'): bool (B', H', KV_LEN), their element meaning on every key (O(B'·H'·KV_LEN),
    no pair)."""
    def ar(n: int, dim: int) -> Tensor:
        shape = [1, 1, 1]
        shape[dim] = n
        return torch.arange(n, device=device).view(shape)
    env = ir.Env(vars={"b": ar(lead[0], 0), "h": ar(lead[1], 1), "kv": ar(sizes["KV_LEN"], 2)},
                 sizes=sizes, inputs=inputs)
    ok = env.vars["kv"] >= 0
    for c in conds:
        ok = ok & ir.holds(c, env)
    return ok.expand(*lead, sizes["KV_LEN"])


def decide(
    mask: ir.MaskIR, sizes: Mapping[str, int], inputs: Mapping[str, Tensor],
    partial: Tensor, full: Tensor, undecided: Tensor, q_positions: Tensor | None,
    n_rows: int, block_size: tuple[int, int],
) -> None:
    """Set the ``undecided`` blocks of the (B', H', Q_blocks, KV_blocks) grids ``partial``
    and ``full`` in place to their exact classes: FULL where every pair of the block is
    allowed (a ragged edge block never is), PARTIAL where some are, else EMPTY."""
    where = undecided.nonzero()
    for w, ok in _chunks(mask, sizes, inputs, where, q_positions, n_rows, block_size):
        flat = ok.flatten(1)
        every, some = flat.all(1), flat.any(1)
        at = tuple(w.unbind(-1))
        full[at] = every
        partial[at] = some & ~every


def allowed(
    mask: ir.MaskIR, sizes: Mapping[str, int], inputs: Mapping[str, Tensor], partial: Tensor,
    full: Tensor, block_size: tuple[int, int],
) -> Tensor:
    """Exact count of allowed pairs per (b', h'): every pair of a FULL block, and the
    allowed pairs of each PARTIAL block, evaluated (``explain``'s density of a mask whose
    row programs are supersets)."""
    area = block_size[0] * block_size[1]
    out = full.sum((-1, -2)) * area
    for w, ok in _chunks(mask, sizes, inputs, partial.nonzero(), None, sizes["Q_LEN"],
                         block_size):
        out.index_put_((w[:, 0], w[:, 1]), ok.flatten(1).sum(1), accumulate=True)
    return out
