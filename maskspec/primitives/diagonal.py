"""``diagonal(period, offset = 0)``: kv ≡ q + offset (mod period), one key per round."""

from typing import ClassVar

from maskspec import ir
from maskspec.primitives import KV, Args, Fmt, PrimitiveKind, Q, register


@register
class Diagonal(PrimitiveKind):
    name = "diagonal"
    params: ClassVar[dict[str, int | str | None]] = {"period": None, "offset": 0}
    constant = frozenset({"period", "offset"})
    positive = frozenset({"period"})
    summary = "kv ≡ q + offset (mod period)"

    def meaning(self, a: Args) -> tuple[ir.Cmp, ...]:
        lag = ir.sub(ir.sub(KV, Q), a["offset"])
        return (ir.Cmp("==", ir.Bin("%", lag, a["period"]), ir.Const(0)),)

    def lower(self, a: Args) -> tuple[ir.Clip | ir.Level, ...]:
        """A level of length 1: every period's key at q + offset's residue."""
        phase = ir.Bin("%", ir.add(Q, a["offset"]), a["period"])
        return (ir.Level(a["period"], phase, ir.Const(1)),)

    def explain(self, a: Args, fmt: Fmt) -> str:
        return (f"kv ≡ {fmt(ir.add(Q, a['offset']))} (mod {fmt(a['period'])}): one key per "
                "round, a strided family")
