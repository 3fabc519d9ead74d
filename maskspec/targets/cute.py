"""CuTe DSL target: FlashAttention-4's element mask_mod, generated from the IR as readable source.

The generated module is a header comment, a prelude of small helpers and one function whose
body has a line per primitive and per condition. Two preludes define the helpers: ``cute``
(Int32 TensorSSA values, what FA4 compiles) and ``python`` (plain ints, what CPU tests run
against ``dense``). The function body is the same text in both, so every IR node's translation
is checked on CPU; only a few leaf helpers (``_rem``, ``_min``, ``_max``, ``_ld``) differ.

FA4 calls ``mask_mod(batch, head, m_idx, n_idx, seqlen_info, aux_tensors)``. Q_LEN, KV_LEN, B,
H and params are baked in as constants (one function, and one FA4 kernel, per spec and sizes);
runtime inputs arrive in ``aux_tensors`` as int32 tensors in the spec's declaration order.
"""

from __future__ import annotations

import hashlib
import keyword
import linecache
from collections.abc import Callable, Mapping
from typing import Any

import torch

from maskspec import ir

DIALECTS = ("cute", "python")
SIGNATURE = "batch, head, m_idx, n_idx, seqlen_info, aux_tensors"

_SHARED = '''

def _mod(a, k):
    """Floor modulo (Python's %, the spec's meaning) from a remainder that may truncate."""
    return _rem(_rem(a, k) + k, k)


def _clamp(i, n):
    """An index kept inside [0, n): rows past Q_LEN in a ragged tile must not read out of bounds."""
    return _min(_max(i, 0), n - 1)
'''

_PRELUDES = {
    "cute": '''import cutlass
import cutlass.cute as cute
from flash_attn.cute.utils import scalar_to_ssa


def _rem(a, k):
    return a % k  # Int32 remainder: truncates toward zero, as in C


def _ssa(*xs):
    return any(isinstance(x, cute.TensorSSA) for x in xs)


def _min(a, b):
    return cute.where(a < b, a, b) if _ssa(a, b) else min(a, b)


def _max(a, b):
    return cute.where(a > b, a, b) if _ssa(a, b) else max(a, b)


def _scalar(i):
    return i[0] if _ssa(i) else i


def _ld(t, *idx):
    """An aux tensor read at (batch, head, query...) indices, as an Int32 TensorSSA."""
    at = tuple(_scalar(i) for i in idx)
    return scalar_to_ssa(t[at[0]] if len(at) == 1 else t[at], cutlass.Int32)
''',
    "python": '''def _rem(a, k):
    r = abs(a) % abs(k)  # C remainder (truncates toward zero), as CuTe's Int32 %
    return r if a >= 0 else -r


_min, _max = min, max


def _ld(t, *idx):
    return int(t[idx])
''',
}

_PREC = {"+": 1, "-": 1, "*": 2, "//": 2}


def _ident(name: str) -> str:
    """A spec name as a safe Python local (keywords and helper-like names get a suffix)."""
    return name + "_" if keyword.iskeyword(name) or name.startswith("_") else name


class _Emitter:
    """Translates IR expressions and conditions to source over the prelude's helpers."""

    def __init__(self, mask: ir.MaskIR, sizes: Mapping[str, int]) -> None:
        self.sizes = dict(sizes)
        self.dims = {
            d.name: tuple(ir.const_value(s, sizes) for s in d.shape) for d in mask.inputs
        }
        self.used_sizes: set[str] = set()

    def expr(self, e: ir.Expr, prec: int = 0) -> str:
        """``e`` as source; parenthesized when its operator binds looser than ``prec``."""
        if isinstance(e, ir.Const):
            return f"({e.value})" if e.value < 0 and prec > 0 else str(e.value)
        if isinstance(e, ir.Var):
            return e.name
        if isinstance(e, ir.Size):
            self.used_sizes.add(e.name)
            return e.name
        if isinstance(e, ir.Load):
            return self.load(e)
        assert isinstance(e, ir.Bin)
        if e.op in ("min", "max"):
            return f"_{e.op}({self.expr(e.a)}, {self.expr(e.b)})"
        if e.op == "%":
            return f"_mod({self.expr(e.a)}, {self.expr(e.b)})"
        p = _PREC[e.op]
        text = f"{self.expr(e.a, p)} {e.op} {self.expr(e.b, p + 1)}"
        return f"({text})" if p < prec else text

    def load(self, e: ir.Load) -> str:
        """``input[args]`` read through ``_ld``; indices that move with q or kv are clamped."""
        args = []
        for dim, a in enumerate(e.args):
            text = self.expr(a)
            if ir.uses(a, ir.Var, "q") or ir.uses(a, ir.Var, "kv"):
                text = f"_clamp({text}, {self.dims[e.input][dim]})"
            args.append(text)
        return f"_ld({_ident(e.input)}, {', '.join(args)})"

    def cond(self, c: ir.Cmp) -> str:
        return f"{self.expr(c.left)} {c.op} {self.expr(c.right)}"


def function_name(mask: ir.MaskIR) -> str:
    return f"{mask.name}_mask_mod"


def _body(mask: ir.MaskIR, em: _Emitter) -> list[str]:
    """The function's statements: input bindings, then per term one line per prim/cond."""
    lines = [f"{_ident(d.name)} = aux_tensors[{i}]" for i, d in enumerate(mask.inputs)]
    for t in mask.terms:
        var = f"in_{t.name}"
        lines.append(f"# region {t.name}")
        parts = [em.cond(c) for c in t.element_conds()] or ["kv >= 0"]  # `full`: every key
        lines.append(f"{var} = {parts[0]}")
        lines += [f"{var} = {var} & ({x})" for x in parts[1:]]
    lines.append("return " + " | ".join(f"in_{t.name}" for t in mask.terms))
    return lines


def _header(mask: ir.MaskIR, sizes: Mapping[str, int], baked: list[str]) -> list[str]:
    shapes = _Emitter(mask, sizes)
    aux = ", ".join(
        f"[{i}] {d.name}: {d.dtype}[{', '.join(shapes.expr(s) for s in d.shape)}]"
        for i, d in enumerate(mask.inputs)
    ) or "none"
    params = ", ".join(f"{k}={v}" for k, v in mask.params.items()) or "none"
    consts = ", ".join(f"{k}={sizes[k]}" for k in baked) or "none"
    terms = " | ".join(t.name for t in mask.terms)
    return [
        f"# FlashAttention-4 mask_mod for mask `{mask.name}` ({mask.path}), generated by maskspec.",
        f"# mask(b, h, q, kv) = {terms}: each region ANDs one line per primitive and condition.",
        f"# Sizes baked in: {consts}; params: {params}.",
        f"# aux_tensors (as int32, in this order): {aux}.",
    ]


def source(mask: ir.MaskIR, sizes: Mapping[str, int], dialect: str = "cute") -> str:
    """The generated module: header comment, the dialect's helpers, the mask_mod function.

    It depends on the sizes only through what the mask reads (usually Q_LEN and KV_LEN, not
    B or H), so equal sources, and FA4 kernels, are shared across batch and head counts.
    """
    if dialect not in DIALECTS:
        raise ValueError(f"dialect must be one of {DIALECTS}, got {dialect!r}")
    em = _Emitter(mask, sizes)
    body = _body(mask, em)
    baked = sorted(em.used_sizes, key=ir.SIZES.index)
    if baked:
        body.insert(0, f"{', '.join(baked)} = {', '.join(str(sizes[k]) for k in baked)}")
    body.insert(0, "b, h, q, kv = batch, head, m_idx, n_idx")
    deco = "@cute.jit\n" if dialect == "cute" else ""
    func = f"{deco}def {function_name(mask)}({SIGNATURE}):\n" + "".join(
        f"    {line}\n" for line in body
    )
    head = "\n".join(_header(mask, sizes, baked))
    return f"{head}\n{_PRELUDES[dialect]}{_SHARED}\n\n{func}"


def load_source(src: str, name: str) -> Callable[..., Any]:
    """Execute generated source and return function ``name``, its source findable by inspect.

    The DSL's preprocessor and FA4's compile cache read the function's source, so it is
    registered in linecache; ``__cute_hash__`` (FA4's cache key) hashes the whole module,
    constants included.
    """
    digest = hashlib.sha256(src.encode()).hexdigest()
    filename = f"<maskspec {name} {digest[:12]}>"
    linecache.cache[filename] = (len(src), None, src.splitlines(True), filename)
    namespace: dict[str, Any] = {"__name__": f"maskspec_generated_{digest[:12]}"}
    exec(compile(src, filename, "exec"), namespace)
    fn = namespace[name]
    fn.__cute_hash__ = digest
    return fn


_COMPILED: dict[str, Callable[..., Any]] = {}


def mask_mod(mask: ir.MaskIR, sizes: Mapping[str, int]) -> Callable[..., Any]:
    """FA4's mask_mod for ``mask`` at ``sizes`` (needs flash-attn-4), built once per source."""
    src = source(mask, sizes, "cute")
    if src not in _COMPILED:
        _COMPILED[src] = load_source(src, function_name(mask))
    return _COMPILED[src]


def aux_tensors(mask: ir.MaskIR, inputs: Mapping[str, torch.Tensor]) -> list[torch.Tensor] | None:
    """The bound inputs as FA4 aux_tensors: int32, contiguous, in declaration order."""
    out = [inputs[d.name].to(torch.int32).contiguous() for d in mask.inputs]
    return out or None
