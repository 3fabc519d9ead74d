"""``full``: every key."""

from maskspec import ir
from maskspec.primitives import Args, Fmt, PrimitiveKind, register


@register
class Full(PrimitiveKind):
    name = "full"
    summary = "every key"

    def meaning(self, a: Args) -> tuple[ir.Cmp, ...]:
        return ()

    def lower(self, a: Args) -> tuple[ir.Clip | ir.Level, ...]:
        return ()

    def explain(self, a: Args, fmt: Fmt) -> str:
        return "every key: kv in [0, KV_LEN)"
