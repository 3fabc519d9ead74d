"""Region primitives, one class per file: signature, argument checks, meaning, lowering, text.

A primitive class declares its arguments (``params``: name → default: a number, None =
required, or another argument's name, whose value it then copies; ``constant``: those that
must be build-time constants; ``positive``: those that must be ≥ 1) and gives, for
resolved arguments, its element ``meaning`` (conditions on (q, kv): the definition), its
``lower``ing (clips and levels of the row program, ``ir.Clip`` / ``ir.Level``) and an
``explain`` line. Every module of this package is imported on first use and its
``@register``ed classes join the registry: adding a primitive is one file.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import Any, ClassVar

from maskspec import ir

Q, KV = ir.Var("q"), ir.Var("kv")
Args = dict[str, ir.Expr]
Fmt = Callable[[ir.Expr], str]  # prints an expression (for people, or as spec source)


class PrimitiveKind:
    """One region primitive (subclass it in a module of this package and ``@register``)."""

    name: ClassVar[str]
    params: ClassVar[dict[str, int | str | None]] = {}
    constant: ClassVar[frozenset[str]] = frozenset()
    positive: ClassVar[frozenset[str]] = frozenset()
    summary: ClassVar[str] = ""  # one line for the README-style tables and hints

    def bind(self, resolver: Any, call: Any) -> Args | None:
        """Arguments resolved by hand, for primitives whose arguments are not expressions
        (``document`` names an input); None: the compiler binds ``params`` itself."""
        return None

    def meaning(self, a: Args) -> tuple[ir.Cmp, ...]:
        """The element meaning, as conditions on (q, kv)."""
        raise NotImplementedError

    def lower(self, a: Args) -> tuple[ir.Clip | ir.Level, ...]:
        """The keys of row q as clips and levels; exactly ``meaning``'s keys."""
        raise NotImplementedError

    def explain(self, a: Args, fmt: Fmt) -> str:
        """The allowed keys of row q in plain terms (``fmt`` prints an expression)."""
        raise NotImplementedError

    def sorted_inputs(self, a: Args) -> tuple[str, ...]:
        """Inputs whose rows must be non-decreasing (document ids)."""
        return ()

    def spell(self, a: Args, fmt: Fmt) -> str:
        """The primitive as spec source, arguments by name (``fmt`` writes an expression in
        the language): what the spec printer writes and the compiler reads back."""
        if not self.params:
            return self.name
        return f"{self.name}({', '.join(f'{k} = {fmt(a[k])}' for k in self.params)})"


_REGISTRY: dict[str, PrimitiveKind] = {}


def register(cls: type[PrimitiveKind]) -> type[PrimitiveKind]:
    """Class decorator: make ``cls`` a primitive of the language."""
    _REGISTRY[cls.name] = cls()
    return cls


def registry() -> dict[str, PrimitiveKind]:
    """Every primitive by name (the package's modules are imported on first call)."""
    if not _REGISTRY:
        for info in pkgutil.iter_modules(__path__):
            importlib.import_module(f"{__name__}.{info.name}")
    return _REGISTRY


def get(name: str) -> PrimitiveKind | None:
    return registry().get(name)
