"""IR → row intervals: for every query row, the allowed keys as a union of [lo, hi) intervals.

Each term becomes a family of intervals per row (one per diagonal round and per
period slot of a ``kv % P`` condition), clipped by its kv bounds and emptied on
rows its row conditions reject. Nothing here is evaluated per (q, kv) pair:
the work is O(B·H·Q·K) for K intervals per row.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from maskspec import ir
from maskspec.model import Pos

_KV = ("kv",)


class _NotAffine(Exception):
    def __init__(self, node: ir.Expr, why: str) -> None:
        self.node, self.why = node, why


@dataclass(frozen=True)
class RowCond:
    """A condition without kv: it keeps or drops whole rows."""

    cmp: ir.Cmp


@dataclass(frozen=True)
class KvRange:
    """kv ∈ [lo, hi) (either end may be open)."""

    lo: ir.Expr | None
    hi: ir.Expr | None


@dataclass(frozen=True)
class ModRange:
    """kv % period ∈ [lo, hi)."""

    period: ir.Expr
    lo: ir.Expr | None
    hi: ir.Expr | None


CondForm = RowCond | KvRange | ModRange
_Form = tuple[tuple | None, int, ir.Expr]  # (atom, coefficient, rest): coef·atom + rest


def _kv_form(e: ir.Expr) -> _Form:
    """Write e as coef·atom + rest, atom being kv, kv % P or kv // d (or None)."""
    if isinstance(e, ir.Var) and e.name == "kv":
        return (_KV, 1, ir.Const(0))
    if not ir.uses(e, ir.Var, "kv"):
        return (None, 0, e)
    if not isinstance(e, ir.Bin):
        raise _NotAffine(e, "kv appears where it cannot be lowered")
    if e.op in ("+", "-"):
        (aa, ac, ar), (ba, bc, br) = _kv_form(e.a), _kv_form(e.b)
        if aa is not None and ba is not None and aa != ba:
            raise _NotAffine(e, "two different kv terms (e.g. kv and kv % P) in one comparison")
        sign = 1 if e.op == "+" else -1
        rest = ir.add(ar, br) if sign == 1 else ir.sub(ar, br)
        return (aa or ba, ac + sign * bc, rest)
    if e.op == "*":
        for k, other in ((e.a, e.b), (e.b, e.a)):
            if ir.is_constant(k) and not ir.uses(k, ir.Size):  # a number, maybe as -2 or (1 + 2)
                k = ir.Const(ir.const_value(k, {}))
                atom, c, rest = _kv_form(other)
                return (atom, c * k.value, ir.mul(k, rest))
        raise _NotAffine(e, "kv may only be multiplied by a number")
    if e.op in ("//", "%"):
        if isinstance(e.a, ir.Var) and e.a.name == "kv":
            return (("div" if e.op == "//" else "mod", e.b), 1, ir.Const(0))
        raise _NotAffine(e, f"only `kv {e.op} N` itself can be lowered, not an expression of kv")
    raise _NotAffine(e, f"kv inside {e.op}() cannot be lowered to intervals")


_FLIP = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}


def _solve(op: str, c: int, rest: ir.Expr) -> tuple[ir.Expr | None, ir.Expr | None]:
    """Solve c·A + rest OP 0 (c > 0) for A as A ∈ [lo, hi)."""
    x = ir.neg(rest)  # c·A OP x
    floor = ir.floordiv(x, ir.Const(c))
    ceil = ir.neg(ir.floordiv(rest, ir.Const(c)))
    one = ir.Const(1)
    return {
        "<": (None, ceil),
        "<=": (None, ir.add(floor, one)),
        ">": (ir.add(floor, one), None),
        ">=": (ceil, None),
        "==": (ceil, ir.add(floor, one)),
    }[op]


ErrorFactory = Callable[..., Exception]


def analyze_cond(cmp: ir.Cmp, error: ErrorFactory) -> CondForm:
    """Classify a comparison as a row condition, a kv range or a kv-modulo range.

    Raises ``error(message, pos, hint=...)`` for comparisons that are not affine in kv.
    """
    try:
        atom, c, rest = _kv_form(ir.sub(cmp.left, cmp.right))
    except _NotAffine as err:
        raise error(
            f"condition is not affine in kv: {err.why}", err.node.pos or cmp.pos,
            hint="compare kv (or kv % N, kv // N) with an expression of b, h, q, sizes, "
            "params and inputs, e.g. `kv < q + 4`",
        ) from None
    if atom is None:
        return RowCond(cmp)
    if c == 0:  # kv cancels out (`kv - kv < q`): a row condition on what is left
        return RowCond(ir.Cmp(cmp.op, rest, ir.const(0), pos=cmp.pos))
    op = cmp.op
    if op == "!=":
        raise error(
            "`!=` on kv would split a row's keys in two", cmp.pos,
            hint="write two regions, one with `<` and one with `>`",
        )
    if c < 0:
        c, rest, op = -c, ir.neg(rest), _FLIP[op]
    lo, hi = _solve(op, c, rest)
    if atom == _KV:
        return KvRange(lo, hi)
    kind, d = atom
    if kind == "div":
        return KvRange(None if lo is None else ir.mul(lo, d), None if hi is None else ir.mul(hi, d))
    return ModRange(d, lo, hi)


def _raise(msg: str, pos: Pos | None = None, hint: str | None = None) -> Exception:
    return ValueError(msg + (f" ({hint})" if hint else ""))


def cond_form(cmp: ir.Cmp) -> CondForm:
    """analyze_cond for conditions the compiler has already accepted (they cannot fail)."""
    return analyze_cond(cmp, _raise)


# ---------------------------------------------------------------- row intervals


@dataclass
class Rows:
    """Per-row intervals: lo, hi of shape (B', H', Q_LEN, K); empty ones are [0, 0)."""

    lo: torch.Tensor
    hi: torch.Tensor


def _outer(a: torch.Tensor, b: torch.Tensor, f: Callable) -> torch.Tensor:
    """Pair every interval of a with every one of b along the last dim."""
    x, y = torch.broadcast_tensors(a.unsqueeze(-1), b.unsqueeze(-2))
    return f(x, y).flatten(-2)


def rounds(p: ir.Primitive, sizes: Mapping[str, int], t: ir.Term) -> tuple[int, int]:
    """A diagonal's first round and round count (maybe ≤ 0): the rounds r whose keys
    q + offset + r·period can fall in [0, KV_LEN) and in the term's kv ranges for some row
    (``reach_exprs``): a round no row can reach holds no interval slot. Plain arithmetic,
    so KV_LEN stays symbolic under torch.compile."""
    period = ir.const_value(p.args["period"], sizes)
    off = ir.const_value(p.args["offset"], sizes)
    first = -((off + sizes["Q_LEN"] - 1) // period)  # ceil((-off - (Q_LEN - 1)) / period)
    last = (sizes["KV_LEN"] - 1 - off) // period
    lows, highs = t.reach
    for e in lows:  # off + r·period >= lo - q for some q
        least = _over_rows(e, sizes)[0]
        if math.isfinite(least):
            first = max(first, -((off - math.ceil(least)) // period))
    for e in highs:  # off + r·period < hi - q for some q
        most = _over_rows(e, sizes)[1]
        if math.isfinite(most):
            last = torch.sym_min(last, (math.floor(most) - 1 - off) // period)
    return first, last + 1 - first


def _rounds(p: ir.Primitive, env: ir.Env, t: ir.Term) -> torch.Tensor:
    """``rounds`` as a tensor along the last dim, with at least one extra round past the
    last (it clips to empty): the round dim never has size 0 or 1, whose branches
    torch.compile would specialize, recompiling as KV_LEN grows."""
    r0, n = rounds(p, env.sizes, t)
    count = torch.sym_max(n, 1) + 1
    return (torch.arange(count, device=env.vars["q"].device) + r0).view(1, 1, 1, -1)


def _prim_rows(p: ir.Primitive, env: ir.Env, t: ir.Term) -> tuple[torch.Tensor, torch.Tensor]:
    """The primitive's interval(s) per row, with a trailing dim of rounds."""
    if p.kind == "diagonal":
        env = ir.Env(vars={**env.vars, "r": _rounds(p, env, t)}, sizes=env.sizes,
                     inputs=env.inputs)
    zero = torch.zeros_like(env.vars["q"])
    lo, hi = (zero + ir.evaluate(e, env) for e in ir.interval(p))
    return lo, hi


def _kv_ranges(conds: tuple[ir.Cmp, ...]) -> list[KvRange]:
    """The conditions that bound kv by expressions of the row."""
    return [f for f in map(cond_form, conds) if isinstance(f, KvRange)]


def _over_rows(e: ir.Expr, sizes: Mapping[str, int]) -> tuple[float, float]:
    """Bounds of e over every row q in [0, Q_LEN)."""
    return ir.bounds(e, {"q": (0, sizes["Q_LEN"] - 1)}, sizes, {})


def width_exprs(prims: tuple[ir.Primitive, ...], conds: tuple[ir.Cmp, ...]) -> tuple[ir.Expr, ...]:
    """Expressions that bound a term's interval widths (q cancelled): found once, at compile
    time, so building only evaluates them."""
    pairs = [ir.interval(p) for p in prims]
    pairs += [(f.lo, f.hi) for f in _kv_ranges(conds) if None not in (f.lo, f.hi)]
    return tuple(ir.difference(hi, lo) for lo, hi in pairs)


def _plain(e: ir.Expr) -> bool:
    """Whether e depends on nothing but q, constants and fixed sizes: its bounds over the
    rows are then plain numbers, also while torch.compile holds KV_LEN symbolic."""
    return all(isinstance(n, ir.Const | ir.Bin) or n == ir.Var("q")
               or (isinstance(n, ir.Size) and n.name != "KV_LEN") for n in e.walk())


Bounds = tuple[tuple[ir.Expr, ...], tuple[ir.Expr, ...]]  # expressions below / above kv


def reach_exprs(conds: tuple[ir.Cmp, ...]) -> Bounds:
    """The term's plain kv bounds less q (lo - q, hi - q): they limit a diagonal's rounds
    (``rounds``). Found once, at compile time."""
    forms = _kv_ranges(conds)
    q = ir.Var("q")
    return (tuple(ir.difference(f.lo, q) for f in forms if f.lo is not None and _plain(f.lo)),
            tuple(ir.difference(f.hi, q) for f in forms if f.hi is not None and _plain(f.hi)))


def extent_exprs(prims: tuple[ir.Primitive, ...], conds: tuple[ir.Cmp, ...]) -> Bounds:
    """The term's plain kv bounds (primitives' and conditions'): every interval of the term
    lies between them, which limits the period slots it meets (``spans``)."""
    pairs = [ir.interval(p) for p in prims if p.kind != "diagonal"]
    pairs += [(f.lo, f.hi) for f in _kv_ranges(conds)]
    return (tuple(lo for lo, _ in pairs if lo is not None and _plain(lo)),
            tuple(hi for _, hi in pairs if hi is not None and _plain(hi)))


def _width_bound(t: ir.Term, sizes: Mapping[str, int]) -> float:
    """An upper bound on the width of any of the term's intervals at these sizes."""
    widths = [_over_rows(w, sizes)[1] for w in t.widths]
    return min([float(sizes["KV_LEN"]), *widths])


def spans(t: ir.Term, f: ModRange, sizes: Mapping[str, int]) -> int:
    """How many period slots one of the term's intervals can meet: the pieces a
    ``kv % P`` condition cuts it into. Bounded by the widths and by the slots between the
    term's extent (an interval inside [0, P) meets one, however wide)."""
    period, width = ir.const_value(f.period, sizes), _width_bound(t, sizes)
    n = 1 if width <= 1 else math.ceil((width - 1) / period) + 1
    lows, highs = t.extent
    least = max([0.0, *(_over_rows(e, sizes)[0] for e in lows)])
    most = min([math.inf, *(_over_rows(e, sizes)[1] for e in highs)])
    if math.isfinite(least) and math.isfinite(most):
        n = min(n, max(1, (math.ceil(most) - 1) // period - math.floor(least) // period + 1))
    return int(min(n, sizes["KV_LEN"] // period + 2))


def _split_by_period(
    lo: torch.Tensor, hi: torch.Tensor, f: ModRange, env: ir.Env, n: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Intersect each interval with {kv : kv % P ∈ [a, b)}: one piece per period it spans."""
    period = ir.const_value(f.period, env.sizes)
    a = 0 if f.lo is None else ir.evaluate(f.lo, env)
    b = period if f.hi is None else ir.evaluate(f.hi, env)
    a = (lo.new_zeros(()) + a).clamp(0, period)  # on lo's device without a host copy
    b = (lo.new_zeros(()) + b).clamp(0, period)
    s = torch.arange(n, device=lo.device)
    base = ((lo // period).unsqueeze(-1) + s) * period
    nlo = torch.maximum(lo.unsqueeze(-1), base + a.unsqueeze(-1))
    nhi = torch.minimum(hi.unsqueeze(-1), base + b.unsqueeze(-1))
    return nlo.flatten(-2), nhi.flatten(-2)


def _term_rows(t: ir.Term, env: ir.Env) -> tuple[torch.Tensor, torch.Tensor]:
    forms = [cond_form(c) for c in t.conds]
    lo, hi = None, None
    for p in t.prims:
        rows = _prim_rows(p, env, t)
        if lo is None:
            lo, hi = rows
        else:
            lo, hi = _outer(lo, rows[0], torch.maximum), _outer(hi, rows[1], torch.minimum)
    assert lo is not None and hi is not None
    ok = torch.ones((), dtype=torch.bool, device=lo.device)
    for f in forms:
        if isinstance(f, RowCond):
            ok = ok & ir.holds(f.cmp, env)
        elif isinstance(f, KvRange):
            lo = lo if f.lo is None else lo.clamp(min=ir.evaluate(f.lo, env))
            hi = hi if f.hi is None else hi.clamp(max=ir.evaluate(f.hi, env))
    lo, hi = lo.clamp(min=0), hi.clamp(max=env.sizes["KV_LEN"])
    for f in forms:
        if isinstance(f, ModRange):
            lo, hi = _split_by_period(lo, hi, f, env, spans(t, f, env.sizes))
    keep = ok & (lo < hi)
    return torch.where(keep, lo, 0), torch.where(keep, hi, 0)


def row_env(
    sizes: Mapping[str, int], inputs: Mapping[str, torch.Tensor], device: torch.device,
    q_positions: torch.Tensor | None = None,
) -> ir.Env:
    """Variables for row-wise evaluation: b, h, q as broadcastable aranges (no kv).

    ``q_positions`` ((N,) or (B, N) query positions) evaluates only those rows, in that
    order, instead of all Q_LEN: a context-parallel rank's shard.
    """
    def ar(n: int, dim: int) -> torch.Tensor:
        shape = [1, 1, 1, 1]
        shape[dim] = n
        return torch.arange(n, device=device).view(shape)

    q = ar(sizes["Q_LEN"], 2) if q_positions is None else (
        q_positions.to(device=device, dtype=torch.long).reshape(-1, 1, q_positions.shape[-1], 1)
    )
    vars_ = {"b": ar(sizes["B"], 0), "h": ar(sizes["H"], 1), "q": q}
    return ir.Env(vars=vars_, sizes=sizes, inputs=inputs)


def lead_shape(
    mask: ir.MaskIR, sizes: Mapping[str, int], per_batch: bool = False
) -> tuple[int, int]:
    """(B', H'): B when the mask reads ``b`` (or its rows differ per batch), else 1; likewise H."""
    return (
        sizes["B"] if mask.depends_on("b") or per_batch else 1,
        sizes["H"] if mask.depends_on("h") else 1,
    )


def row_intervals(
    mask: ir.MaskIR, sizes: Mapping[str, int], inputs: Mapping[str, torch.Tensor],
    device: torch.device, q_positions: torch.Tensor | None = None,
) -> Rows:
    """Every row's allowed keys as K intervals, broadcast to (B', H', Q_LEN, K).

    B' is B when the mask reads ``b`` (or ``q_positions`` differ per batch) and 1
    otherwise; likewise H'. With ``q_positions`` the rows are those positions (see row_env).
    """
    env = row_env(sizes, inputs, device, q_positions)
    q = env.vars["q"]
    shape = (*lead_shape(mask, sizes, q.shape[0] > 1), q.shape[2])
    los, his = [], []
    for t in mask.terms:
        lo, hi = _term_rows(t, env)
        los.append(lo.expand(*shape, lo.shape[-1]))
        his.append(hi.expand(*shape, hi.shape[-1]))
    return Rows(_concat(los), _concat(his))


def _concat(parts: list[torch.Tensor]) -> torch.Tensor:
    """torch.cat along the last dim, written into one buffer: torch 2.11's inductor fails to
    compile a pointwise cat of these clamped pieces (``'…*((0))' is not comparable``)."""
    out = parts[0].new_empty(*parts[0].shape[:-1], sum(p.shape[-1] for p in parts))
    at = 0
    for p in parts:
        out[..., at:at + p.shape[-1]] = p
        at += p.shape[-1]
    return out
