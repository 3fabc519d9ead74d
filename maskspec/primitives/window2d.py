"""``window2d(width, left, right = left, up = left, down = up)``: a 2-D window on a canvas.

Positions are laid out row-major on a canvas ``width`` wide: position p sits at row
p // width, column p % width. Query q sees the keys whose row is within ``up`` above and
``down`` below its own and whose column is within ``left`` and ``right`` of its own (a
neighbourhood that is cut, not shifted, at the canvas edges; NATTEN's shifted form is a
spec, see ``specs/natten.mask``). It lowers to one strided family per row:
``up + down + 1`` pieces of up to ``left + right + 1`` keys, ``width`` keys apart.
"""

from typing import ClassVar

from maskspec import ir
from maskspec.primitives import KV, Args, Fmt, PrimitiveKind, Q, register


@register
class Window2d(PrimitiveKind):
    name = "window2d"
    params: ClassVar[dict[str, int | str | None]] = {
        "width": None, "left": None, "right": "left", "up": "left", "down": "up"}
    constant = frozenset({"width"})
    positive = frozenset({"width"})
    summary = "|row(kv) − row(q)| and |col(kv) − col(q)| within the window, on a canvas"

    @staticmethod
    def _sides(a: Args) -> tuple[ir.Expr, ir.Expr, ir.Expr, ir.Expr]:
        return a["left"], a["right"], a["up"], a["down"]

    def meaning(self, a: Args) -> tuple[ir.Cmp, ...]:
        w = a["width"]
        left, right, up, down = self._sides(a)
        row, col = ir.floordiv(Q, w), ir.Bin("%", Q, w)
        krow, kcol = ir.floordiv(KV, w), ir.Bin("%", KV, w)
        return (ir.Cmp(">=", krow, ir.sub(row, up)), ir.Cmp("<=", krow, ir.add(row, down)),
                ir.Cmp(">=", kcol, ir.sub(col, left)), ir.Cmp("<=", kcol, ir.add(col, right)))

    def lower(self, a: Args) -> tuple[ir.Clip | ir.Level, ...]:
        """Rows [row − up, row + down] as a clip; columns as a level of stride width."""
        w = a["width"]
        left, right, up, down = self._sides(a)
        row, col = ir.floordiv(Q, w), ir.Bin("%", Q, w)
        one, zero = ir.Const(1), ir.Const(0)
        clip = ir.Clip(ir.mul(ir.sub(row, up), w), ir.mul(ir.add(ir.add(row, down), one), w))
        first = ir.clamp(ir.sub(col, left), zero, w)
        end = ir.clamp(ir.add(ir.add(col, right), one), zero, w)
        return (clip, ir.Level(w, first, ir.sub(end, first)))

    def explain(self, a: Args, fmt: Fmt) -> str:
        w = a["width"]
        left, right, up, down = self._sides(a)
        return (f"canvas rows kv // {fmt(w)} in q // {fmt(w)} − {fmt(up)} .. + {fmt(down)}, "
                f"columns kv % {fmt(w)} in q % {fmt(w)} − {fmt(left)} .. + {fmt(right)}: "
                "one strided family")
