"""``window(left, right = 0)``: q − left ≤ kv ≤ q + right (a sliding window)."""

from typing import ClassVar

from maskspec import ir
from maskspec.primitives import KV, Args, Fmt, PrimitiveKind, Q, register


@register
class Window(PrimitiveKind):
    name = "window"
    params: ClassVar[dict[str, int | str | None]] = {"left": None, "right": 0}
    summary = "q − left ≤ kv ≤ q + right"

    def meaning(self, a: Args) -> tuple[ir.Cmp, ...]:
        return (ir.Cmp(">=", KV, ir.sub(Q, a["left"])), ir.Cmp("<=", KV, ir.add(Q, a["right"])))

    def lower(self, a: Args) -> tuple[ir.Clip | ir.Level, ...]:
        return (ir.Clip(ir.sub(Q, a["left"]), ir.add(ir.add(Q, a["right"]), ir.Const(1))),)

    def explain(self, a: Args, fmt: Fmt) -> str:
        (clip,) = self.lower(a)
        return f"kv in [{fmt(clip.lo)}, {fmt(clip.hi)})"
