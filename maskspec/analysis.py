"""Terms → row programs: each condition classified once, each term's keys per row analysed once.

A condition without kv keeps or drops rows (a guard); one affine in kv bounds it (a clip);
one on ``kv % P`` selects a window of every period (a ``Level``). Primitives contribute
clips and levels too (``maskspec.primitives``). ``program`` merges a term's levels of equal
stride and keeps one of them whole as the strided family of its slots; the others are
enumerated piece by piece. Nothing here runs at build time: the IR carries the result.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import torch

from maskspec import ir

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
    if isinstance(e, ir.Load):
        raise _NotAffine(e, "an input read at kv has no interval form")
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
        return (_digit(e), 1, ir.Const(0))
    what = f"`{e.op}`" if e.op in ir.BIT_OPS else f"{e.op}()"
    raise _NotAffine(e, f"kv inside {what} has no interval form")


def _digit(e: ir.Bin) -> tuple:
    """The atom of ``x // d`` or ``x % P`` over ``x = kv + off`` (off free of kv): the key
    coordinates of mixed-radix layouts. ``("div", d, off)`` is ``(kv + off) // d``;
    ``("mod", P, off, a)`` is ``((kv + off) % P) // a``, which ``(x // a) % b`` is too, as
    ``(x % (a·b)) // a`` (equal for every integer x; divisors are positive), and divisions
    compose (``(x // d) // e`` is ``x // (d·e)``)."""
    atom, c, rest = _kv_form(e.a)
    if atom == _KV and c == 1:
        return ("div", e.b, rest) if e.op == "//" else ("mod", e.b, rest, ir.Const(1))
    if atom is not None and c == 1 and rest == ir.Const(0):
        if e.op == "//" and atom[0] == "div":  # (x // d) // e is x // (d·e)
            return ("div", ir.mul(atom[1], e.b), atom[2])
        if e.op == "//":  # ((x % P) // a) // e is (x % P) // (a·e)
            return ("mod", atom[1], atom[2], ir.mul(atom[3], e.b))
        if e.op == "%" and atom[0] == "div":
            return ("mod", ir.mul(atom[1], e.b), atom[2], atom[1])
    raise _NotAffine(e, f"`{e.op}` here reads kv in a form with no interval (a key "
                     "coordinate is `(kv + c) // d`, `(kv + c) % P`, `(kv // a) % b` or "
                     "`(kv % P) // a`)")


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


def _solved(cmp: ir.Cmp) -> RowCond | ir.Residual | tuple[tuple, str, ir.Expr | None,
                                                         ir.Expr | None]:
    """The comparison solved for its kv atom, ``(atom, op, lo, hi)``: the atom lies in
    [lo, hi) (``op`` the operator once the atom's coefficient is made positive); or, where
    that is already the answer, a row condition or a residual."""
    try:
        atom, c, rest = _kv_form(ir.sub(cmp.left, cmp.right))
    except _NotAffine as err:
        return ir.Residual(cmp, err.why, err.node.pos or cmp.pos)
    if atom is None:
        return RowCond(cmp)
    if c == 0:  # kv cancels out (`kv - kv < q`): a row condition on what is left
        return RowCond(ir.Cmp(cmp.op, rest, ir.const(0), pos=cmp.pos))
    op = cmp.op
    if op == "!=":
        return ir.Residual(cmp, "`!=` on kv splits a row's keys in two", cmp.pos)
    if c < 0:
        c, rest, op = -c, ir.neg(rest), _FLIP[op]
    return (atom, op, *_solve(op, c, rest))


def cond_form(cmp: ir.Cmp) -> CondForm | ir.Residual:
    """Classify a comparison as a row condition, a kv range or a kv-modulo range; or, for
    one with no interval form in kv, say why, located at the node that stops it (an
    ``ir.Residual``, with its ``separable`` reading where it has one)."""
    form = _cond_form(cmp)
    if isinstance(form, ir.Residual) and cmp.reads("q"):
        return replace(form, separable=separable(cmp))
    return form


def _reads(e: ir.Expr) -> set[str]:
    return {n.name for n in e.walk() if isinstance(n, ir.Var) and n.name in ("q", "kv")}


def separable(cmp: ir.Cmp) -> ir.Separable | None:
    """``cmp`` as ``key OP query`` (its sum's atoms each reading kv or q, not both), or as
    a lookup (``_lookup``); None if it is neither."""
    key: dict[ir.Expr | None, int] = {}
    query: dict[ir.Expr | None, int] = {}
    for atom, c in ir.linear(ir.sub(cmp.left, cmp.right)).items():
        reads = set() if atom is None else _reads(atom)
        if len(reads) == 2:
            return _lookup(cmp)
        (key if reads == {"kv"} else query)[atom] = c
    if not any(_reads(a) for a in key if a is not None) or \
            not any(_reads(a) for a in query if a is not None):
        return None
    return ir.Separable(cmp.op, ir.from_linear(key),
                        ir.from_linear({a: -c for a, c in query.items()}))


def _lookup(cmp: ir.Cmp) -> ir.Separable | None:
    """``cmp`` as a condition on one input read at a q index and a kv index (the other
    indices reading neither, nothing outside the read reading q or kv): ``tab[b, q, kv -
    P]``, ``sel[b, h, q // T, kv // T] == 1``."""
    found = None
    for load in (n for e in cmp.exprs() for n in e.walk() if isinstance(n, ir.Load)):
        sides = [_reads(a) for a in load.args]
        if {"q"} in sides and {"kv"} in sides and all(len(r) <= 1 for r in sides) and \
                sides.count({"q"}) == 1 and sides.count({"kv"}) == 1:
            if found is not None and found != load:
                return None
            found = load
    if found is None:
        return None
    qd, kd = ([_reads(a) for a in found.args].index({v}) for v in ("q", "kv"))
    args = list(found.args)
    args[qd], args[kd] = ir.Var("q"), ir.Var("kv")
    table = ir.Cmp(cmp.op, *(ir.substituted(e, found, replace(found, args=tuple(args)))
                             for e in cmp.exprs()), pos=cmp.pos)
    rest = ir.Cmp(cmp.op, *(ir.substituted(e, found, ir.Const(0)) for e in cmp.exprs()))
    if rest.reads("q") or rest.reads("kv"):
        return None
    return ir.Separable("lookup", found.args[kd], found.args[qd], table,
                        (found.input, qd, kd))


def _cond_form(cmp: ir.Cmp) -> CondForm | ir.Residual:
    solved = _solved(cmp)
    if not isinstance(solved, tuple):
        return solved
    atom, op, lo, hi = solved
    if atom == _KV:
        return KvRange(lo, hi)
    if atom[0] == "div":  # (kv + off) // d ∈ [lo, hi)  ⇔  kv ∈ [lo·d − off, hi·d − off)
        _, d, off = atom
        return KvRange(*(None if x is None else ir.sub(ir.mul(x, d), off) for x in (lo, hi)))
    _, period, off, a = atom  # ((kv + off) % P) // a ∈ [lo, hi)  ⇔  (kv + off) % P ∈ [a·lo, a·hi)
    lo, hi = (None if x is None else ir.mul(x, a) for x in (lo, hi))
    if off == ir.Const(0):
        return ModRange(period, lo, hi)
    if op == "==" and a == ir.Const(1):
        return _residue(period, off, lo)
    return ir.Residual(cmp, "a window of `(kv + c) % P` may wrap around its period", cmp.pos)


def unwrapped(cmp: ir.Cmp) -> tuple[tuple[ir.Cmp, ...], tuple[ir.Cmp, ...]] | None:
    """A window of ``(kv + off) % P`` (or of ``((kv + off) % P) // a``) that may wrap around
    the period, as two windows of ``kv % P`` that do not: the conditions of each half, whose
    union is the condition (None for any other condition). The window [A, B) of the shifted
    residue is [s, s + len) of kv's own, s = (A − off) mod P, cut at P; the part past P wraps
    to [0, s + len − P)."""
    solved = _solved(cmp)
    if not isinstance(solved, tuple) or solved[0] == _KV or solved[0][0] != "mod":
        return None
    (_, period, off, a), op, lo, hi = solved
    if off == ir.Const(0) or (op == "==" and a == ir.Const(1)):
        return None  # a plain window, or one residue: cond_form has them
    zero = ir.Const(0)
    start = zero if lo is None else ir.clamp(ir.mul(lo, a), zero, period)
    end = period if hi is None else ir.clamp(ir.mul(hi, a), zero, period)
    length = ir.Bin("max", ir.sub(end, start), zero)
    s = ir.Bin("%", ir.sub(start, off), period)
    kv_mod = ir.Bin("%", ir.Var("kv"), period)
    first = (ir.Cmp(">=", kv_mod, s, pos=cmp.pos),
             ir.Cmp("<", kv_mod, ir.add(s, length), pos=cmp.pos))
    second = (ir.Cmp("<", kv_mod, ir.sub(ir.add(s, length), period), pos=cmp.pos),)
    return first, second


def _residue(period: ir.Expr, off: ir.Expr, x: ir.Expr) -> ModRange:
    """``(kv + off) % P == x`` as one residue of kv, ``(x − off) mod P``, which never wraps;
    moved a period up (out of the clamped window: no key) when x lies outside [0, P), where
    no key meets the condition."""
    turns = ir.floordiv(x, period)  # 0 exactly when 0 <= x < P
    zero, one = ir.Const(0), ir.Const(1)
    outside = ir.add(ir.clamp(turns, zero, one), ir.clamp(ir.neg(turns), zero, one))
    at = ir.add(ir.Bin("%", ir.sub(x, off), period), ir.mul(period, outside))
    return ModRange(period, at, ir.add(at, one))


# ---------------------------------------------------------------- row programs

Part = ir.Clip | ir.Level


def cond_part(f: KvRange | ModRange) -> Part:
    """A kv condition's contribution: a clip, or the window ``kv % P ∈ [lo, hi)`` as a level
    (both ends clamped into [0, P], so the window never wraps)."""
    if isinstance(f, KvRange):
        return ir.Clip(f.lo, f.hi)
    zero = ir.Const(0)
    a = zero if f.lo is None else ir.clamp(f.lo, zero, f.period)
    b = f.period if f.hi is None else ir.clamp(f.hi, zero, f.period)
    return ir.Level(f.period, a, ir.sub(b, a))


def _merge(a: ir.Level, b: ir.Level) -> ir.Level:
    """Two windows of one stride: their intersection, again one window."""
    phase = ir.Bin("max", a.phase, b.phase)
    end = ir.Bin("min", ir.add(a.phase, a.length), ir.add(b.phase, b.length))
    return ir.Level(a.stride, phase, ir.sub(end, phase))


def levels(parts: Sequence[Part]) -> list[ir.Level]:
    """The parts' levels, those of equal stride merged (first appearance order)."""
    out: list[ir.Level] = []
    for p in parts:
        if not isinstance(p, ir.Level):
            continue
        same = [i for i, lv in enumerate(out) if lv.stride == p.stride]
        if same:
            out[same[0]] = _merge(out[same[0]], p)
        else:
            out.append(p)
    return out


def stride_rank(lv: ir.Level) -> tuple[int, int]:
    """Finer strides first (their enumeration costs most): constants by value, then the
    strides made of sizes."""
    s = lv.stride
    if ir.is_constant(s) and not ir.uses(s, ir.Size):
        return (0, ir.const_value(s, {}))
    return (1, 0)


def _plain(e: ir.Expr) -> bool:
    """Whether e depends on nothing but q, constants and fixed sizes: its bounds over the
    rows are then plain numbers, also while torch.compile holds KV_LEN symbolic."""
    return all(isinstance(n, ir.Const | ir.Bin) or n == ir.Var("q")
               or (isinstance(n, ir.Size) and n.name != "KV_LEN") for n in e.walk())


def _over_rows(e: ir.Expr, sizes: Mapping[str, int]) -> tuple[float, float]:
    """Bounds of e over every row q in [0, Q_LEN)."""
    return ir.bounds(e, {"q": (0, sizes["Q_LEN"] - 1)}, sizes, {})


def pieces(prog: ir.RowProgram, stride: ir.Expr, sizes: Mapping[str, int],
           width: float = math.inf) -> int:
    """How many periods of ``stride`` one of the program's clips can meet (at most): bounded
    by the clip's widths (and ``width``), by the periods between its extent, and by KV_LEN.
    Under torch.compile (KV_LEN symbolic) a bound that does not read KV_LEN is taken alone,
    so the count stays a number and KV_LEN growing does not recompile."""
    period = ir.const_value(stride, sizes)
    kv_len = sizes["KV_LEN"]
    known = not torch.compiler.is_compiling()  # else KV_LEN is symbolic
    plain = []
    w = min([width, *(_over_rows(e, sizes)[1] for e in prog.widths)])
    if math.isfinite(w):
        plain.append(1 if w <= 1 else math.ceil((w - 1) / period) + 1)
    lows, highs = prog.extent
    least = max([0.0, *(_over_rows(e, sizes)[0] for e in lows)])
    most = min([float(kv_len) if known else math.inf,  # every clip ends by KV_LEN
                *(_over_rows(e, sizes)[1] for e in highs)])
    if math.isfinite(least) and math.isfinite(most):
        plain.append(max(1, (math.ceil(most) - 1) // period - math.floor(least) // period + 1))
    by_kv = kv_len // period + 2
    if not plain:
        return by_kv
    return min(*plain, by_kv) if known else min(plain)


def loop_counts(prog: ir.RowProgram, sizes: Mapping[str, int]) -> list[int]:
    """The pieces each enumerated level of the program spans: the slot counts of its loops
    (after the first, a clip lies inside one piece of the previous level)."""
    out, width = [], math.inf
    for lv in prog.loops:
        out.append(pieces(prog, lv.stride, sizes, width))
        width = ir.const_value(lv.stride, sizes)
    return out


# Sizes at which a compile-time choice weighs the cost of enumerating a level.
NOMINAL = {"B": 1, "H": 1, "Q_LEN": 4096, "KV_LEN": 8 * 4096}


def enumeration_cost(parts: Sequence[Part]) -> float:
    """The most pieces a term with these parts would enumerate for one of its levels at
    NOMINAL sizes (0 without levels; inf if unknown)."""
    return max((_enumeration_cost(parts, lv) for lv in levels(parts)), default=0.0)


def _enumeration_cost(parts: Sequence[Part], lv: ir.Level) -> float:
    """The pieces a term would enumerate for ``lv`` at NOMINAL sizes (inf if unknown)."""
    try:
        return float(pieces(program((), parts, False), lv.stride, NOMINAL))
    except (ZeroDivisionError, ValueError, TypeError):
        return math.inf


def family_term(parts: Sequence[Sequence[Part]]) -> int | None:
    """The one term of a mask that keeps its finest level as a strided family: the one whose
    enumeration would cost most (so at most one term's families stay whole; the others'
    levels are enumerated)."""
    costs = [(_enumeration_cost(ps, min(levels(ps), key=stride_rank)), -i)
             for i, ps in enumerate(parts) if levels(ps)]
    return -max(costs)[1] if costs else None


def program(guards: Sequence[ir.Cmp], parts: Sequence[Part], keep_family: bool) -> ir.RowProgram:
    """A term's row program: its guards, clip and levels; the finest level kept whole as
    the family when ``keep_family`` (at most one term of a mask keeps one, so strided
    families of one row never overlap), the others enumerated."""
    lows = tuple(ir.simplified(p.lo) for p in parts if isinstance(p, ir.Clip)
                 and p.lo is not None)
    highs = tuple(ir.simplified(p.hi) for p in parts if isinstance(p, ir.Clip)
                  and p.hi is not None)
    lvs = sorted((ir.Level(lv.stride, ir.simplified(lv.phase), ir.simplified(lv.length))
                  for lv in levels(parts)), key=stride_rank)
    guards = [replace(c, left=ir.simplified(c.left), right=ir.simplified(c.right))
              for c in guards]
    family = lvs[0] if keep_family and lvs else None
    loops = tuple(lvs[1:] if family is not None else lvs)
    widths = tuple(w for lo in (ir.Const(0), *lows) for hi in highs
                   if _plain(w := ir.difference(hi, lo)))
    extent = (tuple(e for e in lows if _plain(e)), tuple(e for e in highs if _plain(e)))
    return ir.RowProgram(tuple(guards), lows, highs, loops, family, widths, extent)


def transposed(conds: Sequence[ir.Cmp]) -> ir.RowProgram | None:
    """The row program of a term's element conditions read per key (q and kv, Q_LEN and
    KV_LEN swapped), if each has a plain interval form that way: guards and key clips only
    (a level would be enumerated over every query: left to the fallback). None otherwise."""
    guards, parts = [], []
    for c in conds:
        form = cond_form(ir.Cmp(c.op, ir.swapped(c.left), ir.swapped(c.right), pos=c.pos))
        if isinstance(form, ir.Residual | ModRange):
            return None
        if isinstance(form, RowCond):
            guards.append(form.cmp)
        else:
            parts.append(cond_part(form))
    return program(guards, parts, False)
