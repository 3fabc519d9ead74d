"""The IR: resolved integer expressions, conditions, and each term's two readings.

A mask is a union of terms; a term is an intersection of primitives (``causal``,
``diagonal`` ...) restricted by conditions (its region's ``where`` and every
``valid`` clause). The compiler gives every term two forms, made once: ``meaning``,
element-level conditions on (q, kv) — the definition that dense, mask_mod and the CuTe
mask_mod evaluate — and a ``RowProgram``, its keys per query row as a strided family
(``Level``) inside a key range, which the torch evaluator (``lower``) and the Triton
generator (``cuda/generator``) both read. Tests hold the two equal.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Union

import torch

from maskspec.model import Pos

Value = Union[int, torch.Tensor]  # noqa: UP007 (runtime alias)

VARS = ("b", "h", "q", "kv")
SIZES = ("B", "H", "Q_LEN", "KV_LEN")


def size_key(sizes: Mapping[str, int]) -> tuple[int, ...]:
    """The sizes as a tuple in ``SIZES`` order (a cache key)."""
    return tuple(sizes[k] for k in SIZES)
# The largest magnitude of a literal, a param or an input value: sums and small products of
# them stay far from int64's limits (and BlockMask indices are int32 anyway).
MAX_NUMBER = 2**31 - 1
# Largest magnitude a mask's arithmetic may reach: 64-bit integers with a margin of 2×.
MAX_VALUE = 2**62


# ---------------------------------------------------------------- expressions


@dataclass(frozen=True)
class Expr:
    """An integer expression over b, h, q, kv, sizes and runtime inputs."""

    pos: Pos | None = field(default=None, compare=False, repr=False, kw_only=True)

    def children(self) -> tuple[Expr, ...]:
        return ()

    def walk(self) -> Iterator[Expr]:
        yield self
        for c in self.children():
            yield from c.walk()


@dataclass(frozen=True)
class Const(Expr):
    value: int


@dataclass(frozen=True)
class Var(Expr):
    name: str  # one of VARS


@dataclass(frozen=True)
class Size(Expr):
    name: str  # one of SIZES


@dataclass(frozen=True)
class Load(Expr):
    """``input[args]``: a runtime tensor read at integer indices."""

    input: str
    args: tuple[Expr, ...]

    def children(self) -> tuple[Expr, ...]:
        return self.args


@dataclass(frozen=True)
class Bin(Expr):
    op: str  # + - * // % min max
    a: Expr
    b: Expr

    def children(self) -> tuple[Expr, ...]:
        return (self.a, self.b)


@dataclass(frozen=True)
class DocEdge(Expr):
    """Start (or end) of the run of positions holding ``ids[b, q]`` (torch: a binary search;
    generated kernels: the runs' edges, computed once per build).

    Only the row-interval lowering of ``document`` uses it; ids are non-decreasing.
    """

    ids: Load
    side: str  # "start" | "end"

    def children(self) -> tuple[Expr, ...]:
        return (self.ids,)


def _tmin(a: Value, b: Value) -> Value:
    if isinstance(a, int) and isinstance(b, int):
        return min(a, b)
    return torch.minimum(torch.as_tensor(a), torch.as_tensor(b))


def _tmax(a: Value, b: Value) -> Value:
    if isinstance(a, int) and isinstance(b, int):
        return max(a, b)
    return torch.maximum(torch.as_tensor(a), torch.as_tensor(b))


BIN_OPS: dict[str, Callable[[Any, Any], Any]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "//": operator.floordiv,
    "%": operator.mod,
    "min": _tmin,
    "max": _tmax,
    "&": operator.and_,
    "|": operator.or_,
    "^": operator.xor,
}
BIT_OPS = ("&", "|", "^")


def const(v: int) -> Const:
    return Const(v)


def add(a: Expr, b: Expr) -> Expr:
    """a + b, folding constants (keeps lowered expressions small and readable)."""
    if isinstance(a, Const) and isinstance(b, Const):
        return Const(a.value + b.value)
    if isinstance(b, Const) and b.value == 0:
        return a
    if isinstance(a, Const) and a.value == 0:
        return b
    return Bin("+", a, b)


def sub(a: Expr, b: Expr) -> Expr:
    if isinstance(a, Const) and isinstance(b, Const):
        return Const(a.value - b.value)
    if isinstance(b, Const) and b.value == 0:
        return a
    return Bin("-", a, b)


def mul(a: Expr, b: Expr) -> Expr:
    if isinstance(a, Const) and isinstance(b, Const):
        return Const(a.value * b.value)
    for x, y in ((a, b), (b, a)):
        if isinstance(x, Const) and x.value == 1:
            return y
        if isinstance(x, Const) and x.value == 0:
            return Const(0)
    return Bin("*", a, b)


def neg(a: Expr) -> Expr:
    return mul(Const(-1), a) if not isinstance(a, Const) else Const(-a.value)


def clamp(e: Expr, lo: Expr, hi: Expr) -> Expr:
    """min(max(e, lo), hi): e kept inside [lo, hi]."""
    return Bin("min", Bin("max", e, lo), hi)


def floordiv(a: Expr, b: Expr) -> Expr:
    if isinstance(a, Const) and isinstance(b, Const) and b.value != 0:
        return Const(a.value // b.value)
    if isinstance(b, Const) and b.value == 1:
        return a
    return Bin("//", a, b)


def linear(e: Expr) -> dict[Expr | None, int]:
    """e as a sum of integer multiples of atoms (None: the constant): cancels like terms."""
    if isinstance(e, Const):
        return {None: e.value}
    if isinstance(e, Bin) and e.op in ("+", "-"):
        out = dict(linear(e.a))
        for k, v in linear(e.b).items():
            out[k] = out.get(k, 0) + (v if e.op == "+" else -v)
        return {k: v for k, v in out.items() if v}
    if isinstance(e, Bin) and e.op == "*":
        for k, other in ((e.a, e.b), (e.b, e.a)):
            if isinstance(k, Const):
                return {a: k.value * v for a, v in linear(other).items() if k.value * v}
    return {e: 1}


def from_linear(terms: Mapping[Expr | None, int]) -> Expr:
    """The expression of a ``linear`` decomposition."""
    out: Expr = Const(terms.get(None, 0))
    for atom, c in terms.items():
        if atom is not None:
            out = add(out, mul(Const(c), atom))
    return out


def difference(a: Expr, b: Expr) -> Expr:
    """a - b with like terms cancelled: the width of [b, a) without q in it, when possible."""
    terms = dict(linear(a))
    for k, v in linear(b).items():
        terms[k] = terms.get(k, 0) - v
    return from_linear({k: v for k, v in terms.items() if v})


def substituted(e: Expr, old: Expr, new: Expr) -> Expr:
    """``e`` with every node equal to ``old`` replaced by ``new``."""
    if e == old:
        return new
    if isinstance(e, Load):
        return replace(e, args=tuple(substituted(a, old, new) for a in e.args))
    if isinstance(e, Bin):
        return replace(e, a=substituted(e.a, old, new), b=substituted(e.b, old, new))
    return e


def _nodes(e: Expr) -> int:
    return sum(1 for _ in e.walk())


def _nonnegative(e: Expr) -> bool:
    """Provably ≥ 0 for every value of its atoms: a constant, a size, or a remainder by
    one of those (Python's ``%`` by a positive divisor)."""
    if isinstance(e, Const):
        return e.value >= 0
    if isinstance(e, Size):
        return True
    return isinstance(e, Bin) and e.op == "%" and _nonnegative(e.b)


def simplified(e: Expr) -> Expr:
    """``e`` with constants folded, sums rewritten in their linear form where that has
    fewer nodes (``-1 * (0 - Q_LEN)`` is ``Q_LEN``), ``max(x, 0)`` dropped where x is never
    negative and ``min(x, x)`` / ``max(x, x)`` taken as x. Equal to ``e`` for every value of
    its atoms (integer identities only: no input's declared range is assumed), so every
    evaluator of a row program reads fewer operations."""
    if isinstance(e, Load):
        return replace(e, args=tuple(simplified(a) for a in e.args))
    if not isinstance(e, Bin):
        return e
    a, b = simplified(e.a), simplified(e.b)
    if isinstance(a, Const) and isinstance(b, Const) and e.op not in BIT_OPS \
            and not (e.op in ("//", "%") and b.value == 0):
        return Const(BIN_OPS[e.op](a.value, b.value), pos=e.pos)
    out = replace(e, a=a, b=b)
    if e.op in ("+", "-", "*"):
        flat = from_linear(linear(out))
        return flat if _nodes(flat) < _nodes(out) else out
    if e.op in ("min", "max") and a == b:
        return a
    if e.op == "max":
        for x, y in ((a, b), (b, a)):
            if y == Const(0) and _nonnegative(x):
                return x
    return out


def uses(e: Expr, kind: type, name: str | None = None) -> bool:
    """Whether ``e`` contains a node of ``kind`` (with ``name``, for Var/Size/Load)."""
    for n in e.walk():
        if isinstance(n, kind) and (name is None or getattr(n, "name", None) == name
                                    or getattr(n, "input", None) == name):
            return True
    return False


def is_constant(e: Expr) -> bool:
    """Known at build time: no variables and no runtime inputs."""
    return not any(isinstance(n, (Var, Load)) for n in e.walk())


@dataclass
class Env:
    """Values for evaluation: variables (broadcastable tensors or ints), sizes, inputs."""

    vars: Mapping[str, Value]
    sizes: Mapping[str, int]
    inputs: Mapping[str, torch.Tensor] = field(default_factory=dict)


def evaluate(e: Expr, env: Env) -> Value:
    """Evaluate with torch broadcasting; input indices are clamped into the tensor's range.

    Clamping keeps the generated mask_mod safe on the padded tail of ragged
    blocks (flex_attention evaluates those positions and then discards them);
    build-time checks (``check_index_bounds``) guarantee real positions are in range.
    """
    if isinstance(e, Const):
        return e.value
    if isinstance(e, Var):
        return env.vars[e.name]
    if isinstance(e, Size):
        return env.sizes[e.name]
    if isinstance(e, Bin):
        return BIN_OPS[e.op](evaluate(e.a, env), evaluate(e.b, env))
    if isinstance(e, DocEdge):
        return _doc_edge(e, env)
    if isinstance(e, Load):
        t = env.inputs[e.input]
        idx = []
        for dim, a in enumerate(e.args):
            v = evaluate(a, env)
            v = torch.as_tensor(v, device=t.device)
            top = t.shape[dim] - 1  # where, not clamp: every flex backend can lower it
            idx.append(torch.where(v < 0, 0, torch.where(v > top, top, v)))
        return t[tuple(idx)]
    raise TypeError(f"cannot evaluate {e!r}")


def _doc_edge(e: DocEdge, env: Env) -> torch.Tensor:
    ids = env.inputs[e.ids.input].contiguous()
    mine = torch.as_tensor(evaluate(e.ids, env))
    shape = (ids.shape[0], *mine.shape[1:])
    flat = mine.expand(shape).reshape(ids.shape[0], -1).contiguous()
    return torch.searchsorted(ids, flat, right=e.side == "end").view(shape)


def const_value(e: Expr, sizes: Mapping[str, int]) -> int:
    """The integer value of a constant expression at the given sizes."""
    v = evaluate(e, Env(vars={}, sizes=sizes))
    return int(v)


Interval = tuple[float, float]  # inclusive (min, max); infinite ends: unknown


def bounds(
    e: Expr, ranges: Mapping[str, Interval], sizes: Mapping[str, int],
    input_ranges: Mapping[str, Interval], lengths: Mapping[str, int] | None = None,
    visit: Callable[[Expr, Interval], None] | None = None,
) -> Interval:
    """Interval arithmetic: inclusive (min, max) of ``e`` given the variables' ranges, the
    inputs' value ranges and (for document edges) the inputs' last dimensions. ``visit``
    sees every compound node with its interval, children first."""
    if isinstance(e, Const):
        return (e.value, e.value)
    if isinstance(e, Size):
        return (sizes[e.name], sizes[e.name])
    if isinstance(e, Var):
        return ranges.get(e.name, (-math.inf, math.inf))
    if isinstance(e, Load):
        for a in e.args:
            bounds(a, ranges, sizes, input_ranges, lengths, visit)
        out = input_ranges.get(e.input, (-math.inf, math.inf))
    elif isinstance(e, DocEdge):
        bounds(e.ids, ranges, sizes, input_ranges, lengths, visit)
        out = (0, (lengths or {}).get(e.ids.input, math.inf))
    elif isinstance(e, Bin):
        out = _bin_bounds(e.op, bounds(e.a, ranges, sizes, input_ranges, lengths, visit),
                          bounds(e.b, ranges, sizes, input_ranges, lengths, visit))
    else:
        return (-math.inf, math.inf)
    if visit is not None:
        visit(e, out)
    return out


def _bin_bounds(op: str, a: Interval, b: Interval) -> Interval:
    """The interval of ``a op b``; divisions only by divisors known to be positive."""
    if op == "+":
        return (a[0] + b[0], a[1] + b[1])
    if op == "-":
        return (a[0] - b[1], a[1] - b[0])
    if op in ("min", "max"):
        f = min if op == "min" else max
        return (f(a[0], b[0]), f(a[1], b[1]))
    finite = not any(math.isinf(x) for x in (*a, *b))
    if op == "*" and finite:
        prods = [x * y for x in a for y in b]
        return (min(prods), max(prods))
    if op == "%" and b[0] >= 1 and not math.isinf(b[1]):
        return (0, b[1] - 1)
    if op == "//" and b[0] >= 1 and not math.isinf(b[1]):  # monotone for positive divisors
        lo = min(a[0] // b[0], a[0] // b[1]) if not math.isinf(a[0]) else -math.inf
        hi = max(a[1] // b[0], a[1] // b[1]) if not math.isinf(a[1]) else math.inf
        return (lo, hi)
    if op in BIT_OPS and finite and a[0] >= 0 and b[0] >= 0:
        if op == "&":
            return (0, min(a[1], b[1]))
        return (0, 2 ** int(max(a[1], b[1])).bit_length() - 1)  # no bit above both operands'
    return (-math.inf, math.inf)


# ---------------------------------------------------------------- conditions


@dataclass(frozen=True)
class Cmp:
    """``left OP right`` evaluated elementwise."""

    op: str
    left: Expr
    right: Expr
    pos: Pos | None = field(default=None, compare=False, repr=False)

    def exprs(self) -> tuple[Expr, Expr]:
        return (self.left, self.right)

    def reads(self, var: str) -> bool:
        """Whether either side reads variable ``var``."""
        return any(uses(e, Var, var) for e in self.exprs())


CMP_OPS: dict[str, Callable[[Any, Any], Any]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}


def holds(c: Cmp, env: Env) -> Value:
    return CMP_OPS[c.op](evaluate(c.left, env), evaluate(c.right, env))


# ---------------------------------------------------------------- primitives


@dataclass(frozen=True)
class Primitive:
    """A region primitive with resolved arguments (``maskspec.primitives`` defines each kind:
    its signature, meaning and lowering)."""

    kind: str
    args: Mapping[str, Expr]
    pos: Pos | None = field(default=None, compare=False, repr=False)

    def exprs(self) -> tuple[Expr, ...]:
        return tuple(self.args.values())


# ---------------------------------------------------------------- row programs


@dataclass(frozen=True)
class Clip:
    """kv ∈ [lo, hi) (None: that end open): what an interval primitive or a kv bound adds."""

    lo: Expr | None
    hi: Expr | None


@dataclass(frozen=True)
class Level:
    """The keys with (kv - phase) mod stride < length: one window of ``length`` keys in every
    period of ``stride`` keys. ``stride`` is a build-time constant; ``phase`` and ``length``
    are expressions of the row, with 0 <= phase and phase + length <= stride (windows never
    wrap), length <= 0 allowing nothing. A diagonal is a level of length 1; ``kv % P < n``
    one of length n."""

    stride: Expr
    phase: Expr
    length: Expr

    def exprs(self) -> tuple[Expr, ...]:
        return (self.stride, self.phase, self.length)


Bounds = tuple[tuple[Expr, ...], tuple[Expr, ...]]  # expressions below / above kv


@dataclass(frozen=True)
class RowProgram:
    """One term's keys in row (b, h, q), analysed once at compile time.

    Rows failing a ``guard`` allow nothing. The others allow the keys in
    [max(0, *lows), min(KV_LEN, *highs)) that lie in every level: the ``loops`` are
    enumerated period by period (each piece of the clip is one slot of the row), the
    ``family`` is kept whole (a slot is then a strided family of intervals, classified in
    O(1) per row when its gaps or pieces are shorter than a key block). ``widths`` bound
    the clip's width (q cancelled) and ``extent`` holds its plain ends: with them ``lower``
    bounds the pieces of a loop at given sizes.
    """

    guards: tuple[Cmp, ...]
    lows: tuple[Expr, ...]
    highs: tuple[Expr, ...]
    loops: tuple[Level, ...] = ()
    family: Level | None = None
    widths: tuple[Expr, ...] = ()
    extent: Bounds = ((), ())

    def exprs(self) -> Iterator[Expr]:
        for c in self.guards:
            yield from c.exprs()
        yield from (*self.lows, *self.highs)
        for lv in (*self.loops, *((self.family,) if self.family else ())):
            yield from lv.exprs()


# ---------------------------------------------------------------- the mask


@dataclass(frozen=True)
class InputDecl:
    name: str
    dtype: str  # "int" | "bool"
    shape: tuple[Expr, ...]
    range: tuple[Expr, Expr] | None
    default: Expr | None
    pos: Pos | None = field(default=None, compare=False, repr=False)

    def value_range(self, sizes: Mapping[str, int]) -> tuple[int, int]:
        """The input's value range at these sizes: declared, [0, 1] for bool, else
        ±MAX_NUMBER (what a checked build verifies and an unchecked one clamps to)."""
        if self.range is not None:
            return (const_value(self.range[0], sizes), const_value(self.range[1], sizes))
        return (0, 1) if self.dtype == "bool" else (-MAX_NUMBER, MAX_NUMBER)


@dataclass(frozen=True)
class Separable:
    """A condition that reads q and kv on separate sides: ``key OP query``, ``key`` reading
    kv (and b, h, inputs) but not q, ``query`` reading q but not kv — ids compared between
    the two sides (``img[b, kv] == img[b, q]``), two coordinates ordered (a tiled layout's
    column against the query's window). Or, with ``op == "lookup"``, a condition on one
    input read at (``query``, ``key``) in its dimensions ``dims`` (an ancestor table, a
    tile map): ``table`` is the condition with those two indices written as q and kv, so
    evaluating it over index grids gives the table's truth values.

    Over a block of rows × keys the pairs are every row's value against every key's: its
    class follows from per-block summaries of each side (``maskspec.separable``)."""

    op: str  # a comparison operator, or "lookup"
    key: Expr
    query: Expr
    table: Cmp | None = None
    dims: tuple[str, int, int] | None = None  # (input, query's dim, key's dim)


@dataclass(frozen=True)
class Residual:
    """A condition the row program leaves out, and why: one with no interval form in kv
    (an input read at kv, ``kv != ...``, bit operations on kv ...). The term's program then
    allows a superset of its keys, and the element fallback decides the blocks it touches
    unless the condition is ``separable`` (or reads no q: a key set)."""

    cmp: Cmp
    why: str
    pos: Pos | None = field(default=None, compare=False, repr=False)  # the node that stops it
    separable: Separable | None = None


@dataclass(frozen=True)
class Term:
    """One region with every ``valid`` clause pushed in: prims ∩ where ∩ valid.

    ``program`` is exact unless ``residual`` names conditions it leaves out."""

    name: str
    prims: tuple[Primitive, ...]
    where: tuple[Cmp, ...]
    valid: tuple[Cmp, ...]
    meaning: tuple[Cmp, ...]  # the primitives' element meaning
    program: RowProgram
    pos: Pos | None = field(default=None, compare=False, repr=False)
    residual: tuple[Residual, ...] = ()
    # The term's keys per *key* (q and kv, Q_LEN and KV_LEN swapped), where that reading has
    # interval form and this one does not (Flamingo: each image's keys seen by an interval
    # of queries): ``blocks`` classifies it transposed, exactly. Only on residual terms.
    transposed: RowProgram | None = None

    @property
    def analytic(self) -> bool:
        """Whether the row program alone is the term's keys (no element fallback)."""
        return not self.residual

    @property
    def keyed(self) -> bool:
        """Whether the term is its row program's plain intervals cut by a *key set*: its
        residual conditions read kv but never q (``is_global[b, kv]``, ``kv != 5``,
        ``kv & 5 == 1``), so they select the same keys in every row. Such a term is
        classified exactly from per-key counts, without the element fallback."""
        return bool(self.residual) and self.program.family is None and not any(
            r.cmp.reads("q") for r in self.residual)

    @property
    def separable(self) -> bool:
        """Whether every residual condition is ``Separable`` or a key set, some separable:
        the term is classified exactly per block from summaries of each side, and only the
        blocks where two of its parts are both PARTIAL (or a lookup's indices over the block
        are no range) go to the element fallback."""
        res = self.residual
        return any(r.separable for r in res) and all(
            r.separable or not r.cmp.reads("q") for r in res)

    @property
    def conds(self) -> tuple[Cmp, ...]:
        """The region's ``where`` conditions, then every ``valid`` clause."""
        return self.where + self.valid

    def exprs(self) -> Iterator[Expr]:
        for p in self.prims:
            yield from p.exprs()
        for c in self.conds:
            yield from c.exprs()

    def element_conds(self) -> tuple[Cmp, ...]:
        """Every condition an allowed (q, kv) meets: primitives' meanings, then conds."""
        return self.meaning + self.conds


@dataclass(frozen=True)
class MaskIR:
    """mask(b, h, q, kv) = OR over terms of (AND of prims and conds)."""

    name: str
    terms: tuple[Term, ...]
    inputs: tuple[InputDecl, ...]
    params: Mapping[str, int]
    source: str = ""
    path: str = "<spec>"
    sorted_inputs: tuple[str, ...] = ()  # per-position document ids (non-decreasing)
    # The variables (b, h, q, kv) the mask reads anywhere, and whether some term needs the
    # element fallback: computed once, plain attributes (torch.compile reads them without a
    # graph break).
    variables: frozenset[str] = field(init=False, compare=False, repr=False)
    fallback: bool = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        names = frozenset(n.name for e in self.exprs() for n in e.walk() if isinstance(n, Var))
        object.__setattr__(self, "variables", names)
        object.__setattr__(self, "fallback", any(t.residual for t in self.terms))

    def residuals(self) -> Iterator[tuple[Term, Residual]]:
        """Every condition some term's row program leaves out, with its term."""
        for t in self.terms:
            for r in t.residual:
                yield t, r

    def part(self, which: Callable[[Term], bool]) -> MaskIR:
        """The mask of the terms ``which`` picks (the parts ``blocks.split`` classifies
        apart)."""
        return replace(self, terms=tuple(t for t in self.terms if which(t)))

    def exprs(self) -> Iterator[Expr]:
        for t in self.terms:
            yield from t.exprs()

    def depends_on(self, var: str) -> bool:
        """Whether the mask reads variable ``var`` (b or h) anywhere."""
        return var in self.variables

    def inputs_indexed_by(self, var: str) -> set[str]:
        """Inputs some lookup indexes with an expression of ``var`` (b, h or q)."""
        return {n.input for e in self.exprs() for n in e.walk()
                if isinstance(n, Load) and any(uses(a, Var, var) for a in n.args)}

    def document_inputs(self) -> set[str]:
        """Inputs used as per-position document ids (they must be non-decreasing)."""
        return set(self.sorted_inputs)

    def value_ranges(self, sizes: Mapping[str, int]) -> dict[str, tuple[int, int]]:
        """Each input's ``InputDecl.value_range`` at these sizes."""
        return {d.name: d.value_range(sizes) for d in self.inputs}

    def has_families(self) -> bool:
        """Whether some term keeps a strided family (its rows are not plain intervals)."""
        return any(t.program.family is not None for t in self.terms)

    def sizes_used(self) -> set[str]:
        names = {n.name for e in self.exprs() for n in e.walk() if isinstance(n, Size)}
        for d in self.inputs:
            for e in (*d.shape, *(d.range or ()), *((d.default,) if d.default else ())):
                names |= {n.name for n in e.walk() if isinstance(n, Size)}
        return names


_SWAP = {"q": "kv", "kv": "q", "Q_LEN": "KV_LEN", "KV_LEN": "Q_LEN"}


def swapped(e: Expr) -> Expr:
    """``e`` with q and kv, and Q_LEN and KV_LEN, exchanged: the transposed reading."""
    if isinstance(e, (Var, Size)):
        return replace(e, name=_SWAP.get(e.name, e.name))
    if isinstance(e, Load):
        return replace(e, args=tuple(swapped(a) for a in e.args))
    if isinstance(e, Bin):
        return replace(e, a=swapped(e.a), b=swapped(e.b))
    if isinstance(e, DocEdge):
        return replace(e, ids=swapped(e.ids))
    return e


def element_mask(ir: MaskIR, env: Env) -> Value:
    """The meaning of the whole mask at the variables in ``env`` (broadcasting)."""
    out: Value | None = None
    for t in ir.terms:
        ok = env.vars["kv"] >= 0  # true everywhere, with the right shape and device
        for c in t.element_conds():
            ok = ok & holds(c, env)
        out = ok if out is None else (out | ok)
    return out
