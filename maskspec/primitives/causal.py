"""``causal(offset = 0)``: kv ≤ q + offset (``offset = KV_LEN - Q_LEN``: bottom-right)."""

from typing import ClassVar

from maskspec import ir
from maskspec.primitives import KV, Args, Fmt, PrimitiveKind, Q, register


@register
class Causal(PrimitiveKind):
    name = "causal"
    params: ClassVar[dict[str, int | str | None]] = {"offset": 0}
    summary = "kv ≤ q + offset"

    def meaning(self, a: Args) -> tuple[ir.Cmp, ...]:
        return (ir.Cmp("<=", KV, ir.add(Q, a["offset"])),)

    def lower(self, a: Args) -> tuple[ir.Clip | ir.Level, ...]:
        return (ir.Clip(None, ir.add(ir.add(Q, a["offset"]), ir.Const(1))),)

    def explain(self, a: Args, fmt: Fmt) -> str:
        return f"kv in [0, {fmt(ir.add(ir.add(Q, a['offset']), ir.Const(1)))})"
