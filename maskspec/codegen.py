"""IR expressions as source text, and loading generated modules: what the code generators share.

Each generator (``cute`` for FA4's mask_mod, ``triton`` for the fused build kernel) subclasses
``Emitter`` and overrides only the leaves its language spells differently: the helpers behind
``min``/``max``/``%``/``//`` and how an input is read.
"""

from __future__ import annotations

import hashlib
import keyword
import linecache
from collections.abc import Mapping
from typing import Any, ClassVar

from maskspec import ir

# Python's binding strengths (every target's syntax is Python's): 1 a sum, 2 a product, 3 a
# factor (the levels callers pass to ``expr``); the bit operations bind looser than sums.
_PREC = {"|": 0.25, "^": 0.5, "&": 0.75, "+": 1, "-": 1, "*": 2, "//": 2}


def ident(name: str) -> str:
    """A spec name as a safe Python local (keywords and helper-like names get a suffix)."""
    return name + "_" if keyword.iskeyword(name) or name.startswith("_") else name


class Emitter:
    """Translates IR expressions and conditions to Python-syntax source."""

    CALLS: ClassVar[Mapping[str, str]] = {"min": "_min", "max": "_max", "%": "_mod"}  # op → helper

    def __init__(self, names: Mapping[str, str] | None = None) -> None:
        self.names = dict(names or {})  # variables spelled differently in the output
        self.used_sizes: set[str] = set()

    def expr(self, e: ir.Expr, prec: float = 0) -> str:
        """``e`` as source; parenthesized when its operator binds looser than ``prec``."""
        if isinstance(e, ir.Const):
            return f"({e.value})" if e.value < 0 and prec > 0 else str(e.value)
        if isinstance(e, ir.Var):
            return self.names.get(e.name, e.name)
        if isinstance(e, ir.Size):
            self.used_sizes.add(e.name)
            return e.name
        if isinstance(e, ir.Load):
            return self.load(e)
        if isinstance(e, ir.Bin):
            if e.op in self.CALLS:
                return f"{self.CALLS[e.op]}({self.expr(e.a)}, {self.expr(e.b)})"
            p = _PREC[e.op]
            text = f"{self.expr(e.a, p)} {e.op} {self.expr(e.b, p + 1)}"
            return f"({text})" if p < prec else text
        return self.other(e)

    def load(self, e: ir.Load) -> str:
        raise NotImplementedError

    def other(self, e: ir.Expr) -> str:
        """Nodes only some targets meet (``DocEdge``)."""
        raise TypeError(f"{type(self).__name__} cannot emit {e!r}")

    def cond(self, c: ir.Cmp) -> str:
        return f"{self.expr(c.left)} {c.op} {self.expr(c.right)}"


def load_source(src: str, name: str) -> Any:
    """Execute generated source and return its global ``name``, with the source findable by
    ``inspect`` (the CuTe preprocessor and Triton's JIT read it back)."""
    digest = hashlib.sha256(src.encode()).hexdigest()
    filename = f"<maskspec {name} {digest[:12]}>"
    linecache.cache[filename] = (len(src), None, src.splitlines(True), filename)
    namespace: dict[str, Any] = {"__name__": f"maskspec_generated_{digest[:12]}"}
    exec(compile(src, filename, "exec"), namespace)
    return namespace[name]
