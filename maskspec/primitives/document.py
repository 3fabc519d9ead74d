"""``document(ids)``: kv in q's document, ``ids`` an input int[B, N] of per-position ids."""

from typing import Any, ClassVar

from maskspec import ir
from maskspec.primitives import KV, Args, Fmt, PrimitiveKind, register


@register
class Document(PrimitiveKind):
    name = "document"
    params: ClassVar[dict[str, int | str | None]] = {"ids": None}
    summary = "kv in q's document (non-decreasing per-position ids)"

    def bind(self, resolver: Any, call: Any) -> Args:
        """``ids`` names an input declared int[B, N]: the lookup ``ids[b, q]`` and N."""
        from maskspec import model as m  # the spec model, for the argument's node types

        arg = call.args[0].value if len(call.args) == 1 else None
        decl = resolver.inputs.get(arg.id) if isinstance(arg, m.Name) else None
        if decl is None or decl.dtype != "int" or len(decl.shape) != 2:
            raise resolver.error(
                "`document` takes one argument: the name of an input declared as int[B, N] "
                "holding each position's document id", call.pos,
                hint="e.g. `input doc: int[B, KV_LEN]` then `causal & document(doc)`",
            )
        first = decl.shape[0]
        if not (isinstance(first, m.Name) and first.id == "B"):
            raise resolver.error(
                f"the ids of `document` are one row per batch element: declare `{decl.name}` "
                f"as int[B, N]", first.pos, hint="e.g. `input doc: int[B, KV_LEN]`",
            )
        load = ir.Load(decl.name, (ir.Var("b"), ir.Var("q")), pos=arg.pos)
        return {"ids": load, "n": resolver.constant(decl.shape[1])}

    def meaning(self, a: Args) -> tuple[ir.Cmp, ...]:
        ids = a["ids"]
        assert isinstance(ids, ir.Load)
        return (ir.Cmp("<", KV, a["n"]), ir.Cmp("==", ir.Load(ids.input, (ids.args[0], KV)), ids))

    def lower(self, a: Args) -> tuple[ir.Clip | ir.Level, ...]:
        """The run of positions holding q's id: its two edges (``ir.DocEdge``)."""
        ids = a["ids"]
        assert isinstance(ids, ir.Load)
        return (ir.Clip(ir.DocEdge(ids, "start"), ir.DocEdge(ids, "end")),)

    def explain(self, a: Args, fmt: Fmt) -> str:
        (clip,) = self.lower(a)
        return (f"kv in [{fmt(clip.lo)}, {fmt(clip.hi)}): the run of positions whose id "
                f"equals {fmt(a['ids'])}")

    def spell(self, a: Args, fmt: Fmt) -> str:
        ids = a["ids"]
        assert isinstance(ids, ir.Load)
        return f"document({ids.input})"

    def sorted_inputs(self, a: Args) -> tuple[str, ...]:
        ids = a["ids"]
        assert isinstance(ids, ir.Load)
        return (ids.input,)
