"""Triton target: a spec's whole BlockMask build as one kernel, its row stage generated from the IR.

``lower.row_intervals`` evaluates every row's intervals with torch ops and writes them out;
here the same lowering is printed as Triton source, so one program per chunk of a row
block's rows computes their intervals in registers and hands them straight to
``fused.count_rows``. The build is then this kernel and ``fused``'s two fixed ones, with no
row tensor, no torch.compile and one Triton JIT per spec and block size, cached on disk
across processes.

Sizes, loop extents and input shapes are runtime arguments (not specialized), so neither
KV_LEN growing across TTT steps nor new input values recompile. Loops mirror ``lower``: one
per diagonal (its rounds, ``lower.rounds``) and one per ``kv % P`` condition (its pieces,
``lower.spans``); each innermost iteration fills one interval slot of every row.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from maskspec import ir, lower
from maskspec.lower import KvRange, ModRange, RowCond
from maskspec.targets import codegen

KERNEL = "count_kernel"
OUTPUTS = ("kv_idx", "full_kv_idx")  # zeroed; the difference arrays are added in place
SIZE_ARGS = ("B", "H", "Q_LEN", "KV_LEN", "H_ROWS", "n_q", "n_kv")
CONSTEXPRS = ("KP", "Q_BS", "RC", "KV_BS")

_PRELUDE = """import triton
import triton.language as tl

from maskspec.fused import clamp, count_rows, floordiv, mod, search
"""


class _Emitter(codegen.Emitter):
    """Triton's spelling: floor ``//`` and ``%`` through helpers, inputs read with clamped
    indices (as ``ir.evaluate`` reads them), document edges by binary search."""

    CALLS: ClassVar[Mapping[str, str]] = {
        "min": "tl.minimum", "max": "tl.maximum", "%": "mod", "//": "floordiv"
    }

    def index(self, name: str, dim: int, a: ir.Expr) -> str:
        """One input index, clamped into the dim, times its stride."""
        text = self.expr(a)
        if not ir.uses(a, ir.Var):  # a constant: give it a tensor's type
            text = f"zero + {self.expr(a, 1)}"
        return f"clamp({text}, {arg(name, 'd', dim)}) * {arg(name, 's', dim)}"

    def load(self, e: ir.Load) -> str:
        offs = " + ".join(self.index(e.input, i, a) for i, a in enumerate(e.args))
        return f"tl.load({arg(e.input)} + {offs}).to(tl.int64)"

    def other(self, e: ir.Expr) -> str:
        if not isinstance(e, ir.DocEdge):
            return super().other(e)
        ids = e.ids
        row = self.index(ids.input, 0, ids.args[0])
        right = e.side == "end"
        return (f"search({arg(ids.input)} + {row}, {arg(ids.input, 's', 1)}, "
                f"{arg(ids.input, 'd', 1)}, {arg(ids.input, 'bits')}, {self.load(ids)}, {right})")


def arg(name: str, what: str = "", dim: int | None = None) -> str:
    """The kernel argument of an input: its pointer (``in_x``), a dim's size or stride
    (``d0_x``, ``s0_x``), search steps (``bits_x``); prefixes keep two inputs' apart."""
    return f"{what or 'in'}{'' if dim is None else dim}_{name}"


@dataclass(frozen=True)
class _Loop:
    """A loop of a term: over a diagonal's rounds (prim) or a modulo condition's pieces."""

    var: str
    extent: str  # the kernel argument holding its trip count
    start: str | None = None  # rounds: the argument holding the first round


def _loops(t: ir.Term, i: int) -> tuple[list[_Loop], list[_Loop]]:
    """The term's round loops (one per diagonal) and piece loops (one per ``kv % P``)."""
    rounds = [_Loop(f"i{k}", f"t{i}_n{k}", f"t{i}_r{k}")
              for k, p in enumerate(t.prims) if p.kind == "diagonal"]
    pieces = [_Loop(f"s{k}", f"t{i}_s{k}") for k, c in enumerate(t.conds)
              if isinstance(lower.cond_form(c), ModRange)]
    return rounds, pieces


def loops_grow(mask: ir.MaskIR) -> bool:
    """Whether the spec's interval count depends on the sizes (it has diagonals or
    ``kv % P`` conditions, each a loop); else it is the number of regions."""
    return any(lp for i, t in enumerate(mask.terms) for lp in _loops(t, i))


def _term_args(t: ir.Term, i: int) -> list[str]:
    rounds, pieces = _loops(t, i)
    return [a for lp in rounds for a in (lp.start, lp.extent)] + \
        [lp.extent for lp in pieces] + [f"t{i}_col"]


def _input_args(mask: ir.MaskIR) -> tuple[list[str], list[str]]:
    """Every input's kernel arguments, and those of them that are sizes (not specialized)."""
    out, sizes = [], []
    for d in mask.inputs:
        dims = [arg(d.name, "d", k) for k in range(len(d.shape))]
        bits = [arg(d.name, "bits")] if d.name in mask.document_inputs() else []
        out += [arg(d.name), *dims, *(arg(d.name, "s", k) for k in range(len(d.shape))), *bits]
        sizes += dims + bits
    return out, sizes


def _term_body(t: ir.Term, i: int, em: _Emitter) -> list[str]:
    """One term: row conditions and kv bounds, then nested loops filling its slots."""
    forms = [lower.cond_form(c) for c in t.conds]
    lines = [f"# region {t.name}", "ok = zero == 0", "kv_lo = zero", "kv_hi = zero + KV_LEN"]
    for f in forms:
        if isinstance(f, RowCond):
            lines.append(f"ok = ok & ({em.cond(f.cmp)})")
        elif isinstance(f, KvRange):
            lines += [f"kv_lo = tl.maximum(kv_lo, {em.expr(f.lo)})"] if f.lo else []
            lines += [f"kv_hi = tl.minimum(kv_hi, {em.expr(f.hi)})"] if f.hi else []
    mods = [f for f in forms if isinstance(f, ModRange)]
    for k, f in enumerate(mods):
        p = em.expr(f.period, 3)  # a factor: parenthesized unless atomic
        a, b = ("0" if x is None else em.expr(x) for x in (f.lo, f.hi))
        lines.append(f"a{k} = tl.minimum(tl.maximum(zero + {a}, 0), {p})" if f.lo else f"a{k} = 0")
        lines.append(f"b{k} = tl.minimum(tl.maximum(zero + {b}, 0), {p})" if f.hi
                     else f"b{k} = zero + {p}")
    rounds, pieces = _loops(t, i)
    body, depth = [], 0

    def put(line: str) -> None:
        body.append("    " * depth + line)

    for lp in rounds:
        put(f"for {lp.var} in range({lp.extent}):")
        depth += 1
        put(f"r{lp.var[1:]} = zero + {lp.start} + {lp.var}")
    for k, p in enumerate(t.prims):
        em.names["r"] = f"r{k}"
        lo, hi = (em.expr(x) for x in ir.interval(p))
        put(f"lo0 = zero + {lo}" if k == 0 else f"lo0 = tl.maximum(lo0, {lo})")
        put(f"hi0 = zero + {hi}" if k == 0 else f"hi0 = tl.minimum(hi0, {hi})")
    put("lo0 = tl.maximum(lo0, kv_lo)")
    put("hi0 = tl.minimum(hi0, kv_hi)")
    for k, (lp, f) in enumerate(zip(pieces, mods, strict=True)):
        put(f"for {lp.var} in range({lp.extent}):")
        depth += 1
        p = em.expr(f.period, 3)  # a factor: parenthesized unless atomic
        put(f"base = (floordiv(lo{k}, {p}) + {lp.var}) * {p}")
        put(f"lo{k + 1} = tl.maximum(lo{k}, base + a{k})")
        put(f"hi{k + 1} = tl.minimum(hi{k}, base + b{k})")
    slot = f"t{i}_col"
    index = ""
    for lp in rounds + pieces:
        index = lp.var if not index else f"({index}) * {lp.extent} + {lp.var}"
    last = len(mods)
    put(f"col = {slot} + {index}" if index else f"col = {slot}")
    put(f"keep = ok & (lo{last} < hi{last})")
    put(f"lo = tl.where(slot == col, tl.where(keep, lo{last}, 0), lo)")
    put(f"hi = tl.where(slot == col, tl.where(keep, hi{last}, 0), hi)")
    return lines + body


def source(mask: ir.MaskIR) -> str:
    """The generated module: imports, then the build kernel with one block per term."""
    em = _Emitter()
    inputs, input_sizes = _input_args(mask)
    loops = [a for i, t in enumerate(mask.terms) for a in _term_args(t, i)]
    fixed = [*input_sizes, *SIZE_ARGS, *loops]  # values that change per call: never specialized
    rows = [
        "rows = row0 + tl.arange(0, RC)[:, None]",
        "q = qb.to(tl.int64) * Q_BS + rows",
        "zero = tl.zeros((RC, 1), tl.int64)",
        "lo = tl.zeros((RC, KP), tl.int64)",
        "hi = tl.zeros((RC, KP), tl.int64)",
    ]
    for i, t in enumerate(mask.terms):
        rows += _term_body(t, i, em)
    rows.append("count_rows(lo, hi, (rows < Q_BS) & (q < Q_LEN), rows < Q_BS, kv_idx + out, "
                "full_kv_idx + out, n_kv, KV_BS)")
    body = [
        "bh = tl.program_id(0)",
        "qb = tl.program_id(1)",
        "# sizes as int64: arithmetic on them must not wrap (Python ints do not)",
        *(f"{n} = {n}.to(tl.int64)" for n in SIZE_ARGS[:4]),
        "b = (bh // H_ROWS).to(tl.int64)",
        "h = (bh % H_ROWS).to(tl.int64)",
        "out = (bh.to(tl.int64) * n_q + qb) * n_kv",
        "slot = tl.arange(0, KP)[None, :]",
        "row0 = tl.program_id(2) * RC",
        *rows,
    ]
    groups = [inputs, list(OUTPUTS), list(SIZE_ARGS), loops,
              [f"{c}: tl.constexpr" for c in CONSTEXPRS]]
    sig = ",\n    ".join(", ".join(g) for g in groups if g)
    terms = " | ".join(t.name for t in mask.terms)
    head = (f"# BlockMask count kernel for mask `{mask.name}` ({mask.path}), generated by "
            "maskspec.\n# One program per (batch·head, row block, chunk of its rows): every "
            f"row's allowed keys as intervals,\n# region by region ({terms}), counted per key "
            "block (fused.count_rows).\n")
    return (f"{head}{_PRELUDE}\n\n@triton.jit(do_not_specialize={fixed!r})\n"
            f"def {KERNEL}(\n    {sig},\n):\n" + "".join(f"    {x}\n" for x in body))


def plan(mask: ir.MaskIR, sizes: Mapping[str, int]) -> tuple[list[int], int]:
    """The per-term loop arguments at these sizes, in ``source``'s order, and the number of
    interval slots K they fill (each term's slots start where the last one's end)."""
    args: list[int] = []
    col = 0
    for t in mask.terms:
        n = 1
        for p in t.prims:
            if p.kind == "diagonal":
                r0, count = lower.rounds(p, sizes, t)
                args += [r0, max(count, 0)]
                n *= max(count, 0)
        for c in t.conds:
            f = lower.cond_form(c)
            if isinstance(f, ModRange):
                s = lower.spans(t, f, sizes)
                args.append(s)
                n *= s
        args.append(col)
        col += n
    return args, col


def input_args(mask: ir.MaskIR, inputs: Mapping[str, Any]) -> list[Any]:
    """The bound input tensors as ``source``'s arguments: each with its dims and strides
    (and, for document ids, the steps of a binary search over a row)."""
    out: list[Any] = []
    for d in mask.inputs:
        t = inputs[d.name]
        out += [t, *t.shape, *t.stride()]
        if d.name in mask.document_inputs():
            out.append(t.shape[1].bit_length())
    return out
