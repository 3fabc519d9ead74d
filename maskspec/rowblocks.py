"""IR → block slots: each term's row program evaluated once per block of rows, as bounds.

``lower`` evaluates a row program at every row; this evaluates it over a whole block of rows
[r0, r1] at once. Every expression becomes a ``Span``: sound inclusive bounds over the
block's rows, and, where the expression is provably affine in q there (``exact``), its
values at the two ends. Affine spans keep their bounds tight through sums and differences
(``q % P + 1 - q % P`` is 1, not an interval of width 2·block), min/max of which one side
dominates at both ends, and ``//`` / ``%`` whose quotient is constant over the block.
Lookups at indices constant over the block are read once; document ids (non-decreasing) at
a monotone index are bounded by their two ends.

From the spans, two virtual rows per block: ``union``, slots that hold every key any row of
the block allows in that slot, and ``common``, slots that every row of the block allows.
Both are bounds, never guesses: ``assemble.coarse`` classifies them and the block's two end
rows, and keeps a row block's classes only where those bounds meet. O(B·H·Q/Q_BS·K).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from maskspec import ir, lower
from maskspec.analysis import loop_counts
from maskspec.context import BuildContext
from maskspec.lower import FamilyPlan, Rows

BIG = 1 << 40  # beyond every key, size and input value: bounds are clamped to ±BIG


class Span:
    """An expression over a block of rows: bounds ``lo`` ≤ value ≤ ``hi`` on every row;
    where ``exact``, the value is affine in q over the block, ``v0`` at its first row and
    ``v1`` at its last (then lo and hi are the smaller and larger of them). ``point``: the
    one build-time number it is on every block, where it is one (sizes and constants,
    folded in Python: no tensor operation for them). A span exact on every block (the
    shared True of ``_true``) takes its bounds from its ends when they are first read: most
    such spans are sums feeding other sums, whose bounds nobody reads."""

    __slots__ = ("_hi", "_lo", "exact", "point", "v0", "v1")

    def __init__(self, lo: Tensor | None, hi: Tensor | None, v0: Tensor, v1: Tensor,
                 exact: Tensor, point: int | None = None) -> None:
        self._lo, self._hi, self.v0, self.v1, self.exact, self.point = lo, hi, v0, v1, exact, \
            point

    @property
    def lo(self) -> Tensor:
        if self._lo is None:
            self._lo = torch.minimum(self.v0, self.v1)
        return self._lo

    @property
    def hi(self) -> Tensor:
        if self._hi is None:
            self._hi = torch.maximum(self.v0, self.v1)
        return self._hi

    @classmethod
    def affine(cls, v0: Tensor, v1: Tensor) -> Span:
        return cls(None, None, v0, v1, _true(v0.device))

    @classmethod
    def of(cls, lo: Tensor | None, hi: Tensor | None, v0: Tensor, v1: Tensor,
           exact: Tensor) -> Span:
        """Bounds where not exact, the ends' order where exact; clamped to ±BIG. Exact on
        every block: the ends' order, taken when read (``lo`` and ``hi`` may be None); no
        clamp, the ends being the expression's own values, as the element meaning's."""
        if exact is _TRUES.get(v0.device):
            return cls(None, None, v0, v1, exact)
        assert lo is not None and hi is not None
        one = v0 is v1  # (a value read at the first row only: its own order)
        lo = torch.where(exact, v0 if one else torch.minimum(v0, v1), lo)
        hi = torch.where(exact, v0 if one else torch.maximum(v0, v1), hi)
        return cls(lo.clamp(-BIG, BIG), hi.clamp(-BIG, BIG), v0, v1, exact)

    def map(self, f: Callable[[Tensor], Tensor]) -> Span:
        """The span with ``f`` (a view: unsqueeze, expand ...) applied to every tensor, no
        longer a point; bounds not yet taken stay so, the shared True stays itself."""
        return Span(*(None if t is None else f(t) for t in (self._lo, self._hi)),
                    f(self.v0), f(self.v1),
                    self.exact if self.exact is _TRUES.get(self.exact.device)
                    else f(self.exact))

    def constant(self) -> Tensor:
        """Where the value is one number on every row of the block."""
        return self.exact & (self.v0 == self.v1)


_TRUES: dict[torch.device, Tensor] = {}


def _true(device: torch.device) -> Tensor:
    """A 0-dim True on the device, made once (spans only read it)."""
    if device not in _TRUES:
        _TRUES[device] = torch.ones((), dtype=torch.bool, device=device)
    return _TRUES[device]


@dataclass
class _Env:
    """The block's rows: ``r0``/``r1`` its first and last row as q, for evaluation at
    either end; b and h as in ``lower.row_env``."""

    at0: ir.Env
    at1: ir.Env
    sorted_inputs: tuple[str, ...]
    ranges: Mapping[str, tuple[int, int]]


def _both(x: Tensor, y: Tensor) -> Tensor:
    """x & y, keeping the shared True (``_true``) where both are it."""
    return x if y is _TRUES.get(y.device) else y if x is _TRUES.get(x.device) else x & y


def _point(v: ir.Value, like: Tensor) -> Span:
    """A value the same on every block: ``Span.point`` where it is a Python int."""
    t = torch.as_tensor(v, dtype=torch.long, device=like.device)
    return Span(t, t, t, t, _true(like.device), v if isinstance(v, int) else None)


def _loose(lo: Tensor, hi: Tensor) -> Span:
    false = torch.zeros((), dtype=torch.bool, device=lo.device)
    return Span.of(lo, hi, lo, hi, false)


def span(e: ir.Expr, env: _Env) -> Span:
    """The ``Span`` of ``e`` over each block of rows (broadcast like ``lower.row_env``)."""
    q0 = env.at0.vars["q"]
    if isinstance(e, ir.Const):
        return _point(e.value, q0)
    if isinstance(e, ir.Size):
        return _point(env.at0.sizes[e.name], q0)
    if isinstance(e, ir.Var):
        return Span.affine(env.at0.vars[e.name], env.at1.vars[e.name])
    if isinstance(e, ir.Bin):
        return _bin(e.op, span(e.a, env), span(e.b, env))
    if isinstance(e, ir.Load):
        return _load(e, env)
    if isinstance(e, ir.DocEdge):
        return _edge_span(e, env)
    raise TypeError(f"cannot bound {e!r}")


def _bin(op: str, a: Span, b: Span) -> Span:
    if a.point is not None and b.point is not None \
            and not (op in ("//", "%") and b.point == 0):
        return _point(ir.BIN_OPS[op](a.point, b.point), a.v0)
    both = _both(a.exact, b.exact)
    if op in ("+", "-"):
        f = torch.add if op == "+" else torch.sub
        v0, v1 = f(a.v0, b.v0), f(a.v1, b.v1)
        if both is _TRUES.get(v0.device):
            return Span.affine(v0, v1)
        lo = f(a.lo, b.lo if op == "+" else b.hi)
        hi = f(a.hi, b.hi if op == "+" else b.lo)
        return Span.of(lo, hi, v0, v1, both)
    if op in ("min", "max"):
        f = torch.minimum if op == "min" else torch.maximum
        first = (a.v0 <= b.v0) & (a.v1 <= b.v1) if op == "min" else \
            (a.v0 >= b.v0) & (a.v1 >= b.v1)
        second = (b.v0 <= a.v0) & (b.v1 <= a.v1) if op == "min" else \
            (b.v0 >= a.v0) & (b.v1 >= a.v1)
        v0 = torch.where(first, a.v0, b.v0)
        v1 = torch.where(first, a.v1, b.v1)
        return Span.of(f(a.lo, b.lo), f(a.hi, b.hi), v0, v1, both & (first | second))
    if op == "*":
        return _mul(a, b)
    if op in ("//", "%"):
        return _div(op, a, b)
    return _folded(op, a, b)


def _mul(a: Span, b: Span) -> Span:
    """A product with one factor constant over the block stays affine; else bounds from
    the four corner products (in float64: exact below 2⁵³, clamped to ±BIG above)."""
    for x, c in ((a, b), (b, a)):
        if c.point is not None or bool(c.constant().all()):
            k = c.v0
            lo, hi = x.lo * k, x.hi * k
            return Span.of(torch.minimum(lo, hi), torch.maximum(lo, hi), x.v0 * k, x.v1 * k,
                           x.exact)
    corners = torch.stack(torch.broadcast_tensors(
        *(x.double() * y.double() for x in (a.lo, a.hi) for y in (b.lo, b.hi))))
    lo = corners.amin(0).clamp(-BIG, BIG).floor().long()
    hi = corners.amax(0).clamp(-BIG, BIG).ceil().long()
    v = a.v0 * b.v0
    return Span.of(lo, hi, v, v, a.constant() & b.constant())


def _div(op: str, a: Span, b: Span) -> Span:
    """``a // d`` and ``a % d`` for a divisor constant and positive over the block: affine
    where a's quotient is one number on the block (then ``%`` is a minus a constant)."""
    if not (b.point >= 1 if b.point is not None else bool((b.constant() & (b.v0 >= 1)).all())):
        return _folded(op, a, b)
    d = b.v0
    k0, k1 = torch.div(a.v0, d, rounding_mode="floor"), torch.div(a.v1, d, rounding_mode="floor")
    same = a.exact & (k0 == k1)
    klo = torch.div(a.lo, d, rounding_mode="floor")
    khi = torch.div(a.hi, d, rounding_mode="floor")
    if op == "//":
        return Span.of(klo, khi, k0, k0, same)
    one = klo == khi  # every value in one period: the remainders are a minus k·d
    lo = torch.where(one, a.lo - klo * d, 0)
    hi = torch.where(one, a.hi - klo * d, d - 1)
    return Span.of(lo, hi, a.v0 - k0 * d, a.v1 - k0 * d, same)


def _folded(op: str, a: Span, b: Span) -> Span:
    """Any other operation: exact where both operands are one number on the block, else
    the interval arithmetic of ``ir.bounds`` (bit operations), clamped."""
    const = a.constant() & b.constant()
    v = ir.BIN_OPS[op](a.v0, b.v0)
    v = torch.as_tensor(v, device=a.v0.device).to(torch.long)
    lo, hi = torch.full_like(v, -BIG), torch.full_like(v, BIG)
    if op == "&":  # the one bit operation with a bound worth keeping: 0 ≤ a & b ≤ min
        nonneg = (a.lo >= 0) & (b.lo >= 0)
        lo = torch.where(nonneg, 0, lo)
        hi = torch.where(nonneg, torch.minimum(a.hi, b.hi), hi)
    return Span.of(lo, hi, v, v, const)


def _monotone(args: list[Span]) -> Tensor:
    """Where a read of document ids (non-decreasing along their last dim) at these indices
    is monotone over the block: its last index affine, the others one number."""
    ok = args[-1].exact
    for a in args[:-1]:
        ok = ok & a.constant()
    return ok


def _load(e: ir.Load, env: _Env) -> Span:
    """An input read: exact where every index is one number on the block (the read at the
    first row); for document ids read at a monotone index, bounded by the reads at the
    block's two ends (ids never decrease), exact where those are equal; else the input's
    value range."""
    args = [span(a, env) for a in e.args]
    v0 = _long(ir.evaluate(e, env.at0), env)
    const = torch.ones((), dtype=torch.bool, device=v0.device)
    for a in args:
        const = const & a.constant()
    lo_r, hi_r = env.ranges.get(e.input, (-BIG, BIG))
    lo, hi = torch.full_like(v0, lo_r), torch.full_like(v0, hi_r)
    if e.input in env.sorted_inputs:
        monotone = _monotone(args)
        v1 = _long(ir.evaluate(e, env.at1), env)
        lo = torch.where(monotone, torch.minimum(v0, v1), lo)
        hi = torch.where(monotone, torch.maximum(v0, v1), hi)
        const = const | (monotone & (v0 == v1))
    return Span.of(lo, hi, v0, v0, const)


def _edge_span(e: ir.DocEdge, env: _Env) -> Span:
    """A document's start or end: one number where the ids are one number on the block;
    else, where the ids are read at a monotone index (so are themselves monotone, and so
    is the edge), between its values at the block's two ends."""
    args = [span(a, env) for a in e.ids.args]
    ids = _load(e.ids, env)
    v0, v1 = _long(ir.evaluate(e, env.at0), env), _long(ir.evaluate(e, env.at1), env)
    monotone = _monotone(args) & (e.ids.input in env.sorted_inputs)
    lo = torch.where(monotone, torch.minimum(v0, v1), -BIG)
    hi = torch.where(monotone, torch.maximum(v0, v1), BIG)
    return Span.of(lo, hi, v0, v0, ids.constant())


def _long(v: ir.Value, env: _Env) -> Tensor:
    return torch.as_tensor(v, device=env.at0.vars["q"].device).to(torch.long)


# ---------------------------------------------------------------- block slots


def _holds(c: ir.Cmp, env: _Env) -> tuple[Tensor, Tensor]:
    """Whether the condition holds on every row of the block, and whether it may hold on
    some row (False only where it holds on none)."""
    d = _bin("-", span(c.left, env), span(c.right, env))
    lo, hi = d.lo, d.hi
    if c.op in ("<", "<="):
        strict = c.op == "<"
        return (hi < 0, lo < 0) if strict else (hi <= 0, lo <= 0)
    if c.op in (">", ">="):
        return (lo > 0, hi > 0) if c.op == ">" else (lo >= 0, hi >= 0)
    zero = (lo == 0) & (hi == 0)
    if c.op == "==":
        return zero, (lo <= 0) & (hi >= 0)
    return (lo > 0) | (hi < 0), ~zero


def _unsqueezed(x: Span) -> Span:
    return x.map(lambda t: t.unsqueeze(-1) if t.dim() else t)


def _expanded(x: Span, shape: torch.Size) -> Span:
    return x.map(lambda t: t.expand(shape))


def _flattened(x: Span, shape: torch.Size) -> Span:
    return x.map(lambda t: t.expand(shape).flatten(-2))


def _term(prog: ir.RowProgram, env: _Env, counts: list[int]) -> tuple[tuple[Tensor, ...], ...]:
    """One term's ``union`` and ``common`` slots per block: (lo, hi, phase, stride, length)
    each, slots along the last dim, as ``lower._term_rows`` lays them out."""
    q0 = env.at0.vars["q"]
    every = some = torch.ones((), dtype=torch.bool, device=q0.device)
    for c in prog.guards:
        a, s = _holds(c, env)
        every, some = every & a, some & s
    lo, hi = _point(0, q0), _point(env.at0.sizes["KV_LEN"], q0)
    for e in prog.lows:
        lo = _bin("max", lo, span(e, env))
    for e in prog.highs:
        hi = _bin("min", hi, span(e, env))
    for lv, n in zip(prog.loops, counts, strict=True):
        rows = torch.broadcast_shapes(lo.lo.shape, hi.lo.shape, q0.shape)
        lo, hi = _expanded(lo, rows), _expanded(hi, rows)
        period = _point(ir.const_value(lv.stride, env.at0.sizes), q0)
        ph, ln = _unsqueezed(span(lv.phase, env)), _unsqueezed(span(lv.length, env))
        j = _point(torch.arange(n, device=q0.device), q0)
        base = _bin("*", _bin("+", _bin("//", _unsqueezed(lo), period), j), period)
        start = _bin("+", base, ph)
        lo2 = _bin("max", _unsqueezed(lo), start)
        hi2 = _bin("min", _unsqueezed(hi), _bin("+", start, ln))
        shape = torch.broadcast_shapes(lo2.lo.shape, hi2.lo.shape)
        lo, hi = _flattened(lo2, shape), _flattened(hi2, shape)
    if prog.family is None:
        one = _point(1, q0)
        ph, ln, end, stride = _point(0, q0), one, one, 1
    else:
        ph, ln = span(prog.family.phase, env), span(prog.family.length, env)
        end = _bin("+", ph, ln)
        stride = ir.const_value(prog.family.stride, env.at0.sizes)
    u_end = torch.clamp(end.hi, max=stride) if prog.family is not None else end.hi
    union = (some & (lo.lo < hi.hi) & (ln.hi > 0), lo.lo, hi.hi, ph.lo, u_end - ph.lo)
    common = (every & (lo.hi < hi.lo), lo.hi, hi.lo, ph.hi, end.lo - ph.hi)
    return tuple(_slots(*x, stride, q0.shape) for x in (union, common))


def _slots(live: Tensor, lo: Tensor, hi: Tensor, ph: Tensor, ln: Tensor,
           stride: int, rows: torch.Size) -> tuple[Tensor, ...]:
    """Slots as ``Rows`` tensors: dead ones [0, 0), broadcast to at least the rows' shape."""
    keep = live & (lo < hi) & (ln > 0)
    shape = torch.broadcast_shapes(keep.shape, lo.shape, hi.shape, ph.shape, ln.shape, rows)
    st = torch.full(shape, stride, dtype=torch.long, device=lo.device)
    return (torch.where(keep, lo, 0).expand(shape), torch.where(keep, hi, 0).expand(shape),
            ph.expand(shape), st, torch.where(keep, ln, 0).expand(shape))


def block_slots(ctx: BuildContext, n_blocks: int) -> tuple[Rows, Rows]:
    """The ``union`` and ``common`` virtual rows of the first ``n_blocks`` row blocks, as
    ``Rows`` of one row per block (B', H', n_blocks, K), slots laid out as
    ``lower.row_slots`` lays out a real row's, with a family plan that bounds their pieces
    (a union's hull spans more periods than any one row's)."""
    q_bs = ctx.block_size[0]
    r0 = torch.arange(n_blocks, device=ctx.device) * q_bs
    env = _Env(lower.row_env(ctx.sizes, ctx.inputs, ctx.device, r0),
               lower.row_env(ctx.sizes, ctx.inputs, ctx.device, r0 + q_bs - 1),
               ctx.mask.sorted_inputs, ctx.mask.value_ranges(ctx.sizes))
    lead = lower.lead_shape(ctx.mask, ctx.sizes)
    parts: tuple[list[list[Tensor]], ...] = ([[] for _ in range(5)], [[] for _ in range(5)])
    for t in ctx.mask.terms:
        for out, slots in zip(parts, _term(t.program, env, loop_counts(t.program, ctx.sizes)),
                              strict=True):
            for o, x in zip(out, slots, strict=True):
                o.append(x.expand(*lead, n_blocks, x.shape[-1]))
    plan = lower.family_plan(ctx.mask, ctx.sizes)
    rows = [Rows(*(lower.concat(p) for p in part)) for part in parts]
    return tuple(Rows(*r.tensors(), family=_plan(plan, r)) for r in rows)  # type: ignore


def _plan(plan: FamilyPlan, rows: Rows) -> FamilyPlan:
    """``plan`` with ``pieces`` bounding the periods any family slot of ``rows`` meets."""
    if plan.level is None:
        return plan
    c0, c1 = plan.cols
    width = (rows.hi[..., c0:c1] - rows.lo[..., c0:c1]).amax() if c1 > c0 else 0
    pieces = math.ceil(int(width) / plan.stride) + 2
    return FamilyPlan(plan.level, plan.cols, pieces, (plan.stride, plan.stride), plan.stride)
