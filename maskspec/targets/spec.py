"""The spec language as a target: a compiled mask written back as ``.mask`` source, and the
unions and intersections of two masks written as one spec.

The printed spec has the mask's meaning with everything resolved: params folded into
constants, regions named by other regions expanded into their primitives, and every
``valid`` clause moved into each region's ``where`` (the same meaning: valid is ANDed into
every region). Composing two masks goes through source so the result is compiled, analysed
and built like any spec — analytically, or refused with a located error where the analysis
cannot build it exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import ClassVar

from maskspec import codegen, ir, primitives


class _Spec(codegen.Emitter):
    """Expressions in the mask language: ``min``/``max`` calls, ``%`` and ``//`` as written."""

    CALLS: ClassVar[Mapping[str, str]] = {"min": "min", "max": "max"}

    def expr(self, e: ir.Expr, prec: float = 0) -> str:
        if isinstance(e, ir.Bin) and e.op == "%":
            text = f"{self.expr(e.a, 2)} % {self.expr(e.b, 3)}"
            return f"({text})" if prec > 2 else text
        return super().expr(e, prec)

    def load(self, e: ir.Load) -> str:
        return f"{e.input}[{', '.join(self.expr(a) for a in e.args)}]"


_EMIT = _Spec()


def _input(d: ir.InputDecl) -> str:
    shape = ", ".join(_EMIT.expr(s) for s in d.shape)
    text = f"input {d.name}: {d.dtype}[{shape}]"
    if d.range is not None:
        text += f" in [{_EMIT.expr(d.range[0])}, {_EMIT.expr(d.range[1])}]"
    return text + ("" if d.default is None else f" = {_EMIT.expr(d.default)}")


def _region(name: str, prims: Iterable[ir.Primitive], conds: Iterable[ir.Cmp]) -> str:
    kinds = primitives.registry()
    text = f"region {name} = " + " & ".join(
        kinds[p.kind].spell(dict(p.args), _EMIT.expr) for p in prims)
    where = [_EMIT.cond(c) for c in conds]
    return text + (f" where {' and '.join(where)}" if where else "")


def source(mask: ir.MaskIR, name: str | None = None) -> str:
    """``mask`` as one self-contained spec (no params, no valid line: see the module doc)."""
    lines = [f"mask {name or mask.name}", *map(_input, mask.inputs)]
    lines += [_region(t.name, t.prims, t.conds) for t in mask.terms]
    return "\n".join(lines) + "\n"


def _inputs(a: ir.MaskIR, b: ir.MaskIR) -> list[ir.InputDecl]:
    """Both masks' inputs; one name declared by both must be declared alike."""
    out = {d.name: d for d in a.inputs}
    for d in b.inputs:
        if d.name in out and out[d.name] != d:
            raise ValueError(
                f"`{a.name}` and `{b.name}` both read an input `{d.name}` but declare it "
                f"differently ({_input(out[d.name])} against {_input(d)}); rename one in its "
                "spec to combine them")
        out.setdefault(d.name, d)
    return list(out.values())


def _named(regions: list[tuple[str, tuple[ir.Primitive, ...], tuple[ir.Cmp, ...]]]) -> list[str]:
    """Region lines, a name taken twice made unique with a suffix."""
    seen: dict[str, int] = {}
    lines = []
    for name, prims, conds in regions:
        seen[name] = seen.get(name, 0) + 1
        lines.append(_region(name if seen[name] == 1 else f"{name}_{seen[name]}", prims, conds))
    return lines


def _combined(name: str, a: ir.MaskIR, b: ir.MaskIR, regions: list) -> str:
    return "\n".join([f"mask {name}", *map(_input, _inputs(a, b)), *_named(regions)]) + "\n"


def union(a: ir.MaskIR, b: ir.MaskIR) -> str:
    """A spec allowing (q, kv) where ``a`` or ``b`` allows it: every region of each, with its
    mask's valid clauses in its own where."""
    regions = [(f"{m.name}_{t.name}", t.prims, t.conds) for m in (a, b) for t in m.terms]
    return _combined(f"{a.name}_or_{b.name}", a, b, regions)


def intersection(a: ir.MaskIR, b: ir.MaskIR) -> str:
    """A spec allowing (q, kv) where both allow it: a region per pair of their regions (their
    primitives and conditions together), as ``(∪ Aᵢ) ∩ (∪ Bⱼ) = ∪ (Aᵢ ∩ Bⱼ)``."""
    regions = [(f"{ta.name}_and_{tb.name}", ta.prims + tb.prims, ta.conds + tb.conds)
               for ta in a.terms for tb in b.terms]
    return _combined(f"{a.name}_and_{b.name}", a, b, regions)
