"""Conditions read one side at a time: exact block classes from per-block summaries.

A ``separable`` condition (``ir.Separable``) compares a value of the key with a value of
the query, or looks one input up at a query index and a key index. Over a block of rows ×
keys its pairs are *every* row's value against *every* key's, so the block's class follows
from a summary of each side per block, without evaluating a pair:

- ``key < query`` (any order comparison): touched iff the keys' minimum is below the rows'
  maximum, FULL iff the keys' maximum is below the rows' minimum;
- ``key == query`` (ids in any order): FULL iff both sides hold one value, the same;
  touched iff they share a value — a join of the (block, value) pairs of each side, whose
  size is the number of (row block, key block) pairs sharing a value, about the output's;
  ``!=`` is its complement;
- a lookup ``table[query, key]``: over a block whose index values form a range on each
  side, the pairs are a rectangle of the table, counted from its 2-D prefix sums (cost: the
  table, once); a block whose values are not a range is left undecided.

A term is the AND of its row program, such conditions and its key set. ``combine`` gives
its exact classes wherever at most one part is PARTIAL on a block (FULL needs all FULL; a
part EMPTY empties it); the rest, where two parts cut the block at once, is left to the
element fallback (``maskspec.elements``).
"""

from __future__ import annotations

import itertools
import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from maskspec import elements, ir
from maskspec.context import BuildContext

JOIN_BUDGET = 1 << 22  # (row block, key block) pairs a join expands at a time
SUM_BUDGET = 1 << 22  # table entries a prefix sum reads at a time
_CMP = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


@dataclass(frozen=True)
class Cut:
    """One part of a term (a cut of its pairs) over the (B', H', Q_blocks, KV_blocks) grid
    (broadcastable): ``touched`` a superset of its touched blocks, ``full`` a subset of the
    blocks it allows whole (over their real pairs), both exact where ``exact``."""

    touched: Tensor
    full: Tensor
    exact: Tensor | bool = True


@dataclass(frozen=True)
class Sides:
    """Where the two sides are read: the rows' query positions (``lower.row_env``'s
    ``q_positions``, None for every row), their number, the grid's lead (B', H') and the
    block size."""

    ctx: BuildContext
    q_positions: Tensor | None
    n_rows: int
    lead: tuple[int, int]
    block_size: tuple[int, int]

    def values(self, e: ir.Expr, var: str) -> Tensor:
        """``e`` at every row (var "q") or key ("kv"): int64 (B', H', N)."""
        dev, (b, h) = self.ctx.device, self.lead
        if var == "kv":
            at = torch.arange(self.ctx.kv_len, device=dev).view(1, 1, -1)
        elif self.q_positions is None:
            at = torch.arange(self.n_rows, device=dev).view(1, 1, -1)
        else:
            at = self.q_positions.to(device=dev, dtype=torch.long).reshape(
                -1, 1, self.q_positions.shape[-1])
        env = ir.Env(vars={"b": torch.arange(b, device=dev).view(-1, 1, 1),
                           "h": torch.arange(h, device=dev).view(1, -1, 1), var: at},
                     sizes=self.ctx.sizes, inputs=self.ctx.inputs)
        n = at.shape[-1]
        return torch.as_tensor(ir.evaluate(e, env), device=dev).long().expand(b, h, n)

    def blocked(self, v: Tensor, var: str) -> Tensor:
        """(B', H', N) values as (B', H', blocks, block size), the last block completed by
        repeating its last real value (which changes no block's set of values)."""
        bs = self.block_size[0 if var == "q" else 1]
        pad = -v.shape[-1] % bs
        if pad:
            v = torch.cat([v, v[..., -1:].expand(*v.shape[:-1], pad)], -1)
        return v.reshape(*v.shape[:-1], -1, bs)


def parts(term: ir.Term, sides: Sides) -> list[Cut]:
    """The parts of a ``separable`` term beside its row program: one per separable
    condition, and its key set (the residual conditions reading no q) if it has one."""
    out = [_part(r.separable, sides) for r in term.residual if r.separable is not None]
    keyed = [r.cmp for r in term.residual if r.separable is None]
    if keyed:
        out.append(_key_set(keyed, sides))
    return out


def _part(sep: ir.Separable, sides: Sides) -> Cut:
    if sep.op == "lookup":
        return _looked_up(sep, sides)
    k = sides.blocked(sides.values(sep.key, "kv"), "kv")
    q = sides.blocked(sides.values(sep.query, "q"), "q")
    if sep.op in _CMP:
        return _ordered(sep.op, k, q)
    kmin, kmax, qmin, qmax = k.amin(-1), k.amax(-1), q.amin(-1), q.amax(-1)
    same = (kmin == kmax)[..., None, :] & (qmin == qmax)[..., :, None] \
        & (kmin[..., None, :] == qmin[..., :, None])
    shared = _shared(q, k)
    return Cut(shared, same) if sep.op == "==" else Cut(~same, ~shared)


def _ordered(op: str, k: Tensor, q: Tensor) -> Cut:
    """``key OP query`` over blocks of key values ``k`` and row values ``q``."""
    kmin, kmax = k.amin(-1)[..., None, :], k.amax(-1)[..., None, :]
    qmin, qmax = q.amin(-1)[..., :, None], q.amax(-1)[..., :, None]
    f = _CMP[op]
    if op in ("<", "<="):
        return Cut(f(kmin, qmax), f(kmax, qmin))
    return Cut(f(kmax, qmin), f(kmin, qmax))


def _distinct(v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The distinct (lead, block, value) triples of blocked values (L, blocks, size)."""
    s = v.sort(-1).values
    first = torch.ones_like(s, dtype=torch.bool)
    first[..., 1:] = s[..., 1:] != s[..., :-1]
    at = first.nonzero()
    return at[:, 0], at[:, 1], s[first]


def _shared(q: Tensor, k: Tensor) -> Tensor:
    """(B', H', Q_blocks, KV_blocks): whether a row block and a key block share a value.
    A join on (lead, value) of each side's distinct (block, value) pairs, expanded at most
    ``JOIN_BUDGET`` block pairs at a time."""
    lead = q.shape[:-2]
    n_q, n_kv = q.shape[-2], k.shape[-2]
    lq, bq, vq = _distinct(q.reshape(-1, *q.shape[-2:]))
    lk, bk, vk = _distinct(k.reshape(-1, *k.shape[-2:]))
    pairs = torch.cat([torch.stack([lq, vq], 1), torch.stack([lk, vk], 1)])
    inv = torch.unique(pairs, dim=0, return_inverse=True)[1]
    cq, ck = inv[:lq.numel()], inv[lq.numel():]
    order = ck.argsort()
    count = torch.bincount(ck, minlength=int(inv.max()) + 1 if inv.numel() else 1)
    start = count.cumsum(0) - count
    n = count[cq]
    ends = n.cumsum(0)
    out = torch.zeros(math.prod(lead), n_q, n_kv, dtype=torch.bool, device=q.device)
    total = int(ends[-1]) if ends.numel() else 0
    marks = torch.arange(JOIN_BUDGET, max(total, JOIN_BUDGET), JOIN_BUDGET, device=q.device)
    cuts = [0, *torch.searchsorted(ends, marks).tolist(), n.numel()]
    for a, b in itertools.pairwise(cuts):
        if a >= b:
            continue
        nn = n[a:b]
        rep = torch.repeat_interleave(torch.arange(a, b, device=q.device), nn)
        within = torch.arange(rep.numel(), device=q.device) - (nn.cumsum(0) - nn)[rep - a]
        key = order[start[cq[rep]] + within]
        out[lq[rep], bq[rep], bk[key]] = True
    return out.view(*lead, n_q, n_kv)


def _looked_up(sep: ir.Separable, sides: Sides) -> Cut:
    """``table[query, key]``: each block's rectangle of the table, counted from prefix sums
    taken only at the rectangles' edges; exact where both sides' values over the block are
    a range (as ``q // T``, ``q - P``), FULL and EMPTY sound everywhere."""
    assert sep.table is not None and sep.dims is not None
    name, qd, kd = sep.dims
    shape = sides.ctx.inputs[name].shape
    n_i, n_j = shape[qd], shape[kd]
    # the evaluator clamps indices into the input: so do the summaries
    f = sides.blocked(sides.values(sep.query, "q").clamp(0, n_i - 1), "q")
    g = sides.blocked(sides.values(sep.key, "kv").clamp(0, n_j - 1), "kv")
    fmin, fmax = f.amin(-1)[..., :, None], f.amax(-1)[..., :, None] + 1
    gmin, gmax = g.amin(-1)[..., None, :], g.amax(-1)[..., None, :] + 1
    rows, cols = torch.cat([fmin, fmax], -2).unique(), torch.cat([gmin, gmax], -1).unique()
    table = _table(sep, sides, n_i, n_j)
    wide = torch.int64 if n_i * n_j >= 2**31 else torch.int32
    # S[r, c] = entries of table[:r, :c], at the edges' rows and columns only
    q_bs, kv_bs = sides.block_size
    s = _prefix_at(_prefix_at(table, cols, -1, kv_bs, wide), rows, -2, q_bs, wide)
    s = s.flatten(-2).expand(*sides.lead, -1)

    def at(r: Tensor, c: Tensor) -> Tensor:
        i = (torch.searchsorted(rows, r.contiguous()) * cols.numel()
             + torch.searchsorted(cols, c.contiguous())).expand(*sides.lead, r.shape[-2],
                                                                 c.shape[-1])
        return s.gather(-1, i.flatten(-2)).view_as(i)
    rect = at(fmax, gmax) - at(fmin, gmax) - at(fmax, gmin) + at(fmin, gmin)
    return Cut(rect > 0, rect == (fmax - fmin) * (gmax - gmin),
                _ranged(f)[..., :, None] & _ranged(g)[..., None, :])


def _prefix_at(t: Tensor, edges: Tensor, dim: int, step: int, dtype: torch.dtype) -> Tensor:
    """Prefix sums of ``t`` along ``dim`` at the sorted positions ``edges`` (in [0, n]),
    without scanning it entry by entry: sums over runs of d entries (d the edges' greatest
    common divisor, else ``step``, the block size), a scan of those, and each edge off the
    runs' grid completed from its own run. ``SUM_BUDGET`` entries at a time (a reduction
    widens what it reads)."""
    t = t.movedim(dim, -1)
    lead, n = t.shape[:-1], t.shape[-1]
    d = math.gcd(*edges.tolist())
    d = d if d > 1 else step
    whole = n // d
    flat = t.reshape(-1, n)
    off = (edges % d).nonzero().flatten()
    at = (edges[off] // d * d)[:, None] + torch.arange(d, device=t.device)
    inside = at < edges[off][:, None]
    out = []
    for rows in flat.split(max(1, SUM_BUDGET // n)):
        runs = rows[:, :whole * d].unflatten(-1, (whole, d)).sum(-1, dtype=dtype)
        if n % d:
            runs = torch.cat([runs, rows[:, whole * d:].sum(-1, keepdim=True, dtype=dtype)], -1)
        prefix = torch.cat([torch.zeros_like(runs[:, :1]), runs.cumsum(-1, dtype=dtype)], -1)
        part = prefix[:, edges // d]
        if off.numel():
            part[:, off] += torch.where(inside, rows[:, at.clamp(max=n - 1)], 0).sum(
                -1, dtype=dtype)
        out.append(part)
    return torch.cat(out).view(*lead, -1).movedim(-1, dim)


_AXES = {"b": 0, "h": 1, "q": 2, "kv": 3}


def _table(sep: ir.Separable, sides: Sides, n_i: int, n_j: int) -> Tensor:
    """The lookup condition at every (query index, key index) of its input: bool
    (B'|1, H'|1, n_i, n_j). Where the input's other indices are b, h (over dimensions of
    B' or H' entries) or constants, the input is read by slicing rather than
    gathered entry by entry."""
    assert sep.table is not None and sep.dims is not None
    dev, (b, h) = sides.ctx.device, sides.lead
    name, qd, kd = sep.dims
    load = next(n for e in sep.table.exprs() for n in e.walk() if isinstance(n, ir.Load)
                and n.input == name and n.args[qd] == ir.Var("q") and n.args[kd] == ir.Var("kv"))
    t = sides.ctx.inputs[name]
    names = [a.name if isinstance(a, ir.Var) else a.value if isinstance(a, ir.Const) else None
             for a in load.args]
    # a dimension read at b or h must hold B' (H') entries to be sliced whole
    lengths_fit = all(t.shape[d] == sides.lead[_AXES[n]] for d, n in enumerate(names)
                      if n in ("b", "h"))
    env = ir.Env(vars={"b": torch.arange(b, device=dev).view(-1, 1, 1, 1),
                       "h": torch.arange(h, device=dev).view(1, -1, 1, 1),
                       "q": torch.arange(n_i, device=dev).view(1, 1, -1, 1),
                       "kv": torch.arange(n_j, device=dev).view(1, 1, 1, -1)},
                 sizes=sides.ctx.sizes, inputs=sides.ctx.inputs)
    cmp = sep.table
    if None not in names and len(set(names)) == len(names) and lengths_fit:
        t = t[tuple(slice(None) if isinstance(n, str) else min(max(n, 0), t.shape[d] - 1)
                    for d, n in enumerate(names))]
        axes = [_AXES[n] for n in names if isinstance(n, str)]
        for ax in range(4):
            if ax not in axes:
                t, axes = t.unsqueeze(-1), [*axes, ax]
        t = t.permute(*(axes.index(ax) for ax in range(4)))
        cmp = ir.Cmp(cmp.op, *(ir.substituted(e, load, ir.Var("_table")) for e in cmp.exprs()))
        if t.dtype == torch.bool and cmp == ir.Cmp("!=", ir.Var("_table"), ir.Const(0)):
            return t  # a bare flag
        env.vars["_table"] = t
    t = torch.as_tensor(ir.holds(cmp, env), device=dev)
    return t.reshape((1,) * (4 - t.dim()) + tuple(t.shape))


def _ranged(v: Tensor) -> Tensor:
    """Whether each block's values (…, blocks, size) are every integer of their range."""
    s = v.sort(-1).values
    distinct = 1 + (s[..., 1:] != s[..., :-1]).sum(-1)
    return distinct == s[..., -1] - s[..., 0] + 1


def _key_set(conds: Sequence[ir.Cmp], sides: Sides) -> Cut:
    """Conditions reading kv but no q: each key block's count of the keys they allow."""
    kv_bs = sides.block_size[1]
    keys = elements.key_set(conds, sides.ctx.sizes, sides.ctx.inputs, sides.lead,
                            sides.ctx.device)
    pad = -keys.shape[-1] % kv_bs
    count = torch.nn.functional.pad(keys, (0, pad)).view(*keys.shape[:-1], -1, kv_bs).sum(
        -1, dtype=torch.int32)[..., None, :]
    return Cut(count > 0, count == kv_bs)


def combine(parts: Sequence[Cut], shape: tuple[int, ...], device: torch.device) -> tuple[
        Tensor, Tensor, Tensor]:
    """A term, the AND of its parts: (touched, full, undecided) at ``shape``. Touched is
    exact where decided: some part leaves the block EMPTY, all make it FULL, or all but one
    do and that one is exact. Undecided is the rest of the blocks every part touches. (The
    row program's part is never FULL on a ragged edge block, so neither is the term.)"""
    touched = torch.ones(shape, dtype=torch.bool, device=device)
    loose = torch.zeros(shape, dtype=torch.int16, device=device)
    vague = torch.zeros(shape, dtype=torch.bool, device=device)
    for p in parts:
        touched &= p.touched
        loose += (~p.full).to(torch.int16)
        vague |= ~p.full & ~torch.as_tensor(p.exact, device=device)
    full = touched & (loose == 0)
    decided = ~touched | (loose == 0) | ((loose == 1) & ~vague)
    return touched & decided, full, touched & ~decided
