"""IR → row slots: every query row's allowed keys, evaluated from the terms' row programs.

A slot is a key range [lo, hi) and a strided window: the keys k in it with
(k - phase) mod stride < length (an interval is stride 1, length 1). Each term gives one
slot per row, or one per piece of the levels its program enumerates (``plan`` bounds how
many at given sizes); its strided family, if it keeps one, stays whole in the slot however
many keys apart its pieces are. Rows its guards reject get empty slots [0, 0). Nothing here
is evaluated per (q, kv) pair: the work is O(B·H·Q·K) for K slots per row.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from maskspec import ir
from maskspec.analysis import loop_counts, pieces
from maskspec.context import BuildContext


@dataclass(frozen=True)
class FamilyPlan:
    """A mask's strided family at given sizes: its ``level`` (None: plain intervals), the
    slot columns ``cols`` its term fills, a bound on the ``pieces`` (and gaps) of any of its
    slots, its largest gap and largest piece (``spans``, bounds from the inputs' declared
    ranges) and its ``stride``."""

    level: ir.Level | None = None
    cols: tuple[int, int] = (0, 0)
    pieces: int = 0
    spans: tuple[float, float] = (0, 0)
    stride: int = 0

    def enumerated(self, kv_bs: int) -> tuple[int, int]:
        """The pieces the count kernel enumerates at this key block size, for the family's
        pieces and for its gaps: none where every gap (piece) is shorter than a block, since
        the blocks its pieces (gaps) touch are then one range."""
        gap, piece = self.spans
        return (self.pieces if kv_bs <= gap else 0, self.pieces if kv_bs <= piece else 0)


@dataclass
class Rows:
    """Per-row slots, each (B', H', Q_LEN, K) int64: keys k in [lo, hi) with
    (k - phase) mod stride < length, and the mask's ``FamilyPlan`` at these sizes (block
    classification enumerates a family's pieces where they are a key block or more
    apart)."""

    lo: torch.Tensor
    hi: torch.Tensor
    phase: torch.Tensor
    stride: torch.Tensor
    length: torch.Tensor
    family: FamilyPlan = field(default_factory=FamilyPlan)

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.lo, self.hi, self.phase, self.stride, self.length)

    @classmethod
    def intervals(cls, lo: torch.Tensor, hi: torch.Tensor) -> Rows:
        """Plain intervals [lo, hi) (stride 1, length 1)."""
        one = torch.ones_like(lo)
        return cls(lo, hi, torch.zeros_like(lo), one, one)


def family_plan(mask: ir.MaskIR, sizes: Mapping[str, int]) -> FamilyPlan:
    """The mask's ``FamilyPlan`` at these sizes (plain numbers: called outside
    torch.compile's trace)."""
    at = 0
    for t in mask.terms:
        p = t.program
        n = math.prod(loop_counts(p, sizes))
        if p.family is None:
            at += n
            continue
        stride = ir.const_value(p.family.stride, sizes)
        width = ir.const_value(p.loops[-1].stride, sizes) if p.loops else math.inf
        q_rows = {"q": (0, sizes["Q_LEN"] - 1)}
        lo, hi = ir.bounds(p.family.length, q_rows, sizes, mask.value_ranges(sizes))
        return FamilyPlan(p.family, (at, at + n), int(pieces(p, p.family.stride, sizes, width)) + 1,
                          (stride - max(lo, 1), min(hi, stride)), stride)
    return FamilyPlan()


def slot_count(mask: ir.MaskIR, sizes: Mapping[str, int]) -> int:
    """K, the slots per row at these sizes: one per term and enumerated piece."""
    return sum(math.prod(loop_counts(t.program, sizes)) for t in mask.terms)


def _term_rows(prog: ir.RowProgram, env: ir.Env, counts: list[int]) -> tuple[torch.Tensor, ...]:
    """One term's slots per row: (lo, hi, phase, stride, length), slots along the last dim."""
    q = env.vars["q"]
    zero = torch.zeros_like(q)
    ok = torch.ones((), dtype=torch.bool, device=q.device)
    for c in prog.guards:
        ok = ok & ir.holds(c, env)
    lo, hi = zero, zero + env.sizes["KV_LEN"]
    for e in prog.lows:
        lo = torch.maximum(lo, zero + ir.evaluate(e, env))
    for e in prog.highs:
        hi = torch.minimum(hi, zero + ir.evaluate(e, env))
    for lv, n in zip(prog.loops, counts, strict=True):  # q's trailing dim holds the slots
        period = ir.const_value(lv.stride, env.sizes)
        ph = (zero + ir.evaluate(lv.phase, env)).unsqueeze(-1)
        ln = (zero + ir.evaluate(lv.length, env)).unsqueeze(-1)
        base = ((lo // period).unsqueeze(-1) + torch.arange(n, device=q.device)) * period
        lo = torch.maximum(lo.unsqueeze(-1), base + ph).flatten(-2)
        hi = torch.minimum(hi.unsqueeze(-1), base + ph + ln).flatten(-2)
    lv = prog.family
    if lv is None:
        phase, stride, length = zero, zero + 1, zero + 1
    else:
        phase = zero + ir.evaluate(lv.phase, env)
        stride = zero + ir.const_value(lv.stride, env.sizes)
        length = zero + ir.evaluate(lv.length, env)
    keep = ok & (lo < hi) & (length > 0)
    shape = torch.broadcast_shapes(lo.shape, keep.shape)
    return (torch.where(keep, lo, 0), torch.where(keep, hi, 0),
            *(x.expand(shape) for x in (phase, stride, length)))


def row_env(
    sizes: Mapping[str, int], inputs: Mapping[str, torch.Tensor], device: torch.device,
    q_positions: torch.Tensor | None = None,
) -> ir.Env:
    """Variables for row-wise evaluation: b, h, q as broadcastable aranges (no kv).

    ``q_positions`` ((N,) or (B, N) query positions) evaluates only those rows, in that
    order, instead of all Q_LEN: a context-parallel rank's shard.
    """
    def ar(n: int, dim: int) -> torch.Tensor:
        shape = [1, 1, 1, 1]
        shape[dim] = n
        return torch.arange(n, device=device).view(shape)

    q = ar(sizes["Q_LEN"], 2) if q_positions is None else (
        q_positions.to(device=device, dtype=torch.long).reshape(-1, 1, q_positions.shape[-1], 1)
    )
    vars_ = {"b": ar(sizes["B"], 0), "h": ar(sizes["H"], 1), "q": q}
    return ir.Env(vars=vars_, sizes=sizes, inputs=inputs)


def lead_shape(
    mask: ir.MaskIR, sizes: Mapping[str, int], per_batch: bool = False
) -> tuple[int, int]:
    """(B', H'): B when the mask reads ``b`` (or its rows differ per batch), else 1; likewise H."""
    return (
        sizes["B"] if mask.depends_on("b") or per_batch else 1,
        sizes["H"] if mask.depends_on("h") else 1,
    )


def row_slots(ctx: BuildContext, q_positions: torch.Tensor | None = None) -> Rows:
    """Every row's allowed keys as K slots, broadcast to (B', H', Q_LEN, K), with the
    mask's family plan at these sizes.

    B' is B when the mask reads ``b`` (or ``q_positions`` differ per batch) and 1
    otherwise; likewise H'. With ``q_positions`` the rows are those positions (see row_env).
    """
    tensors = slot_tensors(ctx.mask, ctx.sizes, ctx.inputs, ctx.device, q_positions)
    return Rows(*tensors, family=family_plan(ctx.mask, ctx.sizes))


def slot_tensors(
    mask: ir.MaskIR, sizes: Mapping[str, int], inputs: Mapping[str, torch.Tensor],
    device: torch.device, q_positions: torch.Tensor | None = None,
) -> tuple[torch.Tensor, ...]:
    """``row_slots``' (lo, hi, phase, stride, length): tensor work only, which
    torch.compile traces with KV_LEN symbolic (plain arguments, not a ``BuildContext``:
    the trace then guards on what it reads alone)."""
    env = row_env(sizes, inputs, device, q_positions)
    q = env.vars["q"]
    shape = (*lead_shape(mask, sizes, q.shape[0] > 1), q.shape[2])
    parts: list[list[torch.Tensor]] = [[] for _ in range(5)]
    for t in mask.terms:
        slots = _term_rows(t.program, env, loop_counts(t.program, sizes))
        for out, x in zip(parts, slots, strict=True):
            out.append(x.expand(*shape, x.shape[-1]))
    return tuple(concat(p) for p in parts)


def concat(parts: list[torch.Tensor]) -> torch.Tensor:
    """torch.cat along the last dim, written into one buffer: torch 2.11's inductor fails to
    compile a pointwise cat of these clamped pieces (``'…*((0))' is not comparable``)."""
    out = parts[0].new_empty(*parts[0].shape[:-1], sum(p.shape[-1] for p in parts))
    at = 0
    for p in parts:
        out[..., at:at + p.shape[-1]] = p
        at += p.shape[-1]
    return out
