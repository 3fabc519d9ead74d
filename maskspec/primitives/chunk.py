"""``chunk(size, offset = 0)``: q // size == (kv − offset) // size (block-local attention)."""

from typing import ClassVar

from maskspec import ir
from maskspec.primitives import KV, Args, Fmt, PrimitiveKind, Q, register


@register
class Chunk(PrimitiveKind):
    name = "chunk"
    params: ClassVar[dict[str, int | str | None]] = {"size": None, "offset": 0}
    constant = frozenset({"size", "offset"})
    positive = frozenset({"size"})
    summary = "q // size == (kv − offset) // size"

    def meaning(self, a: Args) -> tuple[ir.Cmp, ...]:
        return (ir.Cmp("==", ir.floordiv(Q, a["size"]),
                       ir.floordiv(ir.sub(KV, a["offset"]), a["size"])),)

    def lower(self, a: Args) -> tuple[ir.Clip | ir.Level, ...]:
        start = ir.add(a["offset"], ir.mul(ir.floordiv(Q, a["size"]), a["size"]))
        return (ir.Clip(start, ir.add(start, a["size"])),)

    def explain(self, a: Args, fmt: Fmt) -> str:
        (clip,) = self.lower(a)
        return f"kv in [{fmt(clip.lo)}, {fmt(clip.hi)})"
