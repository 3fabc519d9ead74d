"""The Triton generator: a spec's whole BlockMask build as one kernel, its row stage printed
from the terms' row programs.

``lower.row_slots`` evaluates every term's ``RowProgram`` with torch ops and writes the slots
out; here the same programs are printed as Triton source, so one program per chunk of a row
block's rows computes their slots in registers and hands them straight to
``kernels.count_rows``. The build is then this kernel and the two fixed ones (``plans``), with no
row tensor, no torch.compile and one Triton JIT per spec and block size, cached on disk
across processes.

Sizes, loop extents and input shapes are runtime arguments (not specialized), so neither
KV_LEN growing across TTT steps nor new input values recompile. Loops mirror ``lower``: one
per enumerated level of a program (its pieces, ``lower.loop_counts``); each innermost
iteration fills one slot of every row. A strided family is no loop: its slot holds it whole.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Set
from typing import Any, ClassVar

from maskspec import codegen, ir, lower

KERNEL = "count_kernel"
OUTPUTS = ("kv_idx", "full_kv_idx")  # zeroed; the difference arrays are added in place
SIZE_ARGS = ("B", "H", "Q_LEN", "KV_LEN", "H_ROWS", "n_q", "n_kv")
CONSTEXPRS = ("KP", "Q_BS", "RC", "KV_BS")
SLOT_FIELDS = ("lo", "hi", "ph", "st", "ln")  # a slot: keys in [lo, hi) in the window

_PRELUDE = """import triton
import triton.language as tl

from maskspec.cuda.kernels import clamp, count_rows, floordiv, mod
"""


class TritonEmitter(codegen.Emitter):
    """Triton's spelling: floor ``//`` and ``%`` through helpers, inputs read with clamped
    indices (as ``ir.evaluate`` reads them), document edges from their runs' edges
    (``plans.doc_edges``)."""

    CALLS: ClassVar[Mapping[str, str]] = {
        "min": "tl.minimum", "max": "tl.maximum", "%": "mod", "//": "floordiv"
    }

    def clamped(self, name: str, dim: int, a: ir.Expr) -> str:
        """One input index, clamped into the dim (a constant given a tensor's type)."""
        text = self.expr(a) if ir.uses(a, ir.Var) else f"zero + {self.expr(a, 1)}"
        return f"clamp({text}, {arg(name, 'd', dim)})"

    def index(self, name: str, dim: int, a: ir.Expr) -> str:
        """One input index, clamped into the dim, times its stride."""
        return f"{self.clamped(name, dim, a)} * {arg(name, 's', dim)}"

    def load(self, e: ir.Load) -> str:
        offs = " + ".join(self.index(e.input, i, a) for i, a in enumerate(e.args))
        return f"tl.load({arg(e.input)} + {offs}).to(tl.int64)"

    def other(self, e: ir.Expr) -> str:
        """A document edge: read from the input's run edges (``plans.doc_edges``, laid out
        (d0, d1) contiguous), at its clamped indices."""
        if not isinstance(e, ir.DocEdge):
            return super().other(e)
        name, (row, at) = e.ids.input, e.ids.args
        where = arg(name, "st" if e.side == "start" else "en")
        return (f"tl.load({where} + {self.clamped(name, 0, row)} * {arg(name, 'd', 1)} + "
                f"{self.clamped(name, 1, at)}).to(tl.int64)")


def arg(name: str, what: str = "", dim: int | None = None) -> str:
    """The kernel argument of an input: its pointer (``in_x``), a dim's size or stride
    (``d0_x``, ``s0_x``), its run edges (``st_x``, ``en_x``); prefixes keep two inputs'
    apart."""
    return f"{what or 'in'}{'' if dim is None else dim}_{name}"


def _loops(t: ir.Term, i: int) -> list[str]:
    """The kernel arguments holding the trip counts of the term's loops."""
    return [f"t{i}_s{k}" for k in range(len(t.program.loops))]


def _term_args(t: ir.Term, i: int) -> list[str]:
    return [*_loops(t, i), f"t{i}_col"]


def input_names(mask: ir.MaskIR, searched: Set[str] | None = None
                ) -> tuple[list[str], list[str]]:
    """Every input's kernel arguments, and those of them that are sizes (not specialized);
    ``searched`` as in ``input_args``."""
    out, sizes = [], []
    searched = searched_inputs(mask) if searched is None else searched
    for d in mask.inputs:
        dims = [arg(d.name, "d", k) for k in range(len(d.shape))]
        edges = [arg(d.name, "st"), arg(d.name, "en")] if d.name in searched else []
        out += [arg(d.name), *dims, *(arg(d.name, "s", k) for k in range(len(d.shape))),
                *edges]
        sizes += dims
    return out, sizes


def searched_inputs(mask: ir.MaskIR) -> set[str]:
    """Inputs whose document edges a row program reads (their run edges are passed)."""
    return {n.ids.input for t in mask.terms for e in t.program.exprs() for n in e.walk()
            if isinstance(n, ir.DocEdge)}


def _term_body(t: ir.Term, i: int, em: TritonEmitter) -> list[str]:
    """One term: guards and clip, the family's window, then nested loops over the enumerated
    levels, each innermost iteration filling one slot."""
    prog = t.program
    lines = [f"# region {t.name}", "ok = zero == 0", "lo0 = zero", "hi0 = zero + KV_LEN"]
    lines += [f"ok = ok & ({em.cond(c)})" for c in prog.guards]
    lines += [f"lo0 = tl.maximum(lo0, {em.expr(e)})" for e in prog.lows]
    lines += [f"hi0 = tl.minimum(hi0, {em.expr(e)})" for e in prog.highs]
    fam = prog.family
    window = ("zero", "zero + 1", "zero + 1") if fam is None else (
        f"zero + {em.expr(fam.phase)}", f"zero + {em.expr(fam.stride)}",
        f"zero + {em.expr(fam.length)}")
    lines += [f"f_{n} = {w}" for n, w in zip(("ph", "st", "ln"), window, strict=True)]
    for k, lv in enumerate(prog.loops):
        lines += [f"a{k} = zero + {em.expr(lv.phase)}", f"w{k} = zero + {em.expr(lv.length)}"]
    body, depth = [], 0

    def put(line: str) -> None:
        body.append("    " * depth + line)

    extents = _loops(t, i)
    for k, (lv, n) in enumerate(zip(prog.loops, extents, strict=True)):
        put(f"for s{k} in range({n}):")
        depth += 1
        p = em.expr(lv.stride, 3)  # a factor: parenthesized unless atomic
        put(f"base = (floordiv(lo{k}, {p}) + s{k}) * {p}")
        put(f"lo{k + 1} = tl.maximum(lo{k}, base + a{k})")
        put(f"hi{k + 1} = tl.minimum(hi{k}, base + a{k} + w{k})")
    index = ""
    for k, n in enumerate(extents):
        index = f"s{k}" if not index else f"({index}) * {n} + s{k}"
    last = len(prog.loops)
    put(f"col = t{i}_col + {index}" if index else f"col = t{i}_col")
    put(f"keep = ok & (lo{last} < hi{last}) & (f_ln > 0)")
    put("at = slot == col")
    put(f"lo = tl.where(at, tl.where(keep, lo{last}, 0), lo)")
    put(f"hi = tl.where(at, tl.where(keep, hi{last}, 0), hi)")
    for n in ("ph", "st", "ln"):
        put(f"{n} = tl.where(at, f_{n}, {n})")
    return lines + body


def source(mask: ir.MaskIR) -> str:
    """The generated module: imports, then the build kernel with one block per term."""
    if mask.fallback:
        raise ValueError(
            f"spec `{mask.name}` needs the element fallback, and the generated build kernel "
            "classifies row programs alone: its blocks are built on the torch path "
            "(`--emit python` writes that build)")
    em = TritonEmitter()
    inputs, input_sizes = input_names(mask)
    loops = [a for i, t in enumerate(mask.terms) for a in _term_args(t, i)]
    # values that change per call: never specialized
    fixed = [*input_sizes, *SIZE_ARGS, "pieces", "gap_pieces", *loops]
    rows = [
        "rows = row0 + tl.arange(0, RC)[:, None]",
        "q = qb.to(tl.int64) * Q_BS + rows",
        "zero = tl.zeros((RC, 1), tl.int64)",
        "lo = tl.zeros((RC, KP), tl.int64)",
        "hi = tl.zeros((RC, KP), tl.int64)",
        "ph = tl.zeros((RC, KP), tl.int64)",
        "st = tl.zeros((RC, KP), tl.int64) + 1",
        "ln = tl.zeros((RC, KP), tl.int64) + 1",
    ]
    for i, t in enumerate(mask.terms):
        rows += _term_body(t, i, em)
    rows.append("count_rows(lo, hi, ph, st, ln, (rows < Q_BS) & (q < Q_LEN), rows < Q_BS, "
                "kv_idx + out, full_kv_idx + out, n_kv, pieces, gap_pieces, KV_BS, FAMILY)")
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
    groups = [inputs, list(OUTPUTS), [*SIZE_ARGS, "pieces", "gap_pieces"], loops,
              [f"{c}: tl.constexpr" for c in (*CONSTEXPRS, "FAMILY")]]
    sig = ",\n    ".join(", ".join(g) for g in groups if g)
    terms = " | ".join(t.name for t in mask.terms)
    head = (f"# BlockMask count kernel for mask `{mask.name}` ({mask.path}), generated by "
            "maskspec.\n# One program per (batch·head, row block, chunk of its rows): every "
            f"row's allowed keys as slots,\n# region by region ({terms}), counted per key "
            "block (kernels.count_rows).\n")
    return (f"{head}{_PRELUDE}\n\n@triton.jit(do_not_specialize={fixed!r})\n"
            f"def {KERNEL}(\n    {sig},\n):\n" + "".join(f"    {x}\n" for x in body))


def plan(mask: ir.MaskIR, sizes: Mapping[str, int]) -> tuple[list[int], int]:
    """The per-term loop arguments at these sizes, in ``source``'s order, and the number of
    slots K they fill (each term's slots start where the last one's end)."""
    args: list[int] = []
    col = 0
    for t in mask.terms:
        counts = [max(int(n), 0) for n in lower.loop_counts(t.program, sizes)]
        args += [*counts, col]
        col += math.prod(counts)
    return args, col


def input_args(
    mask: ir.MaskIR, inputs: Mapping[str, Any], searched: Set[str] | None = None,
    edges: Callable[[Any], tuple[Any, Any]] | None = None,
) -> list[Any]:
    """The bound input tensors as ``source``'s arguments: each with its dims and strides
    (and, for the ``searched`` ones, document ids, ``edges`` of them: their run edges;
    ``searched`` found from the IR unless given)."""
    out: list[Any] = []
    searched = searched_inputs(mask) if searched is None else searched
    for d in mask.inputs:
        t = inputs[d.name]
        out += [t, *t.shape, *t.stride()]
        if d.name in searched:
            assert edges is not None, "document ids need their run edges"
            out += edges(t)
    return out
