"""Validation: a built BlockMask against torch's create_block_mask and the dense meaning."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, create_mask

from maskspec import ir
from maskspec.api import CompiledMask
from maskspec.documents import document_ids
from maskspec.inputs import block_size_of, sizes_of

PAIRS = (
    ("kv_num_blocks", "kv_indices"),
    ("full_kv_num_blocks", "full_kv_indices"),
    ("q_num_blocks", "q_indices"),
    ("full_q_num_blocks", "full_q_indices"),
)


def block_set(num: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """The bool grid a (counts, indices) pair lists: only the first ``num`` entries count."""
    n = idx.shape[-1]
    valid = torch.arange(n, device=idx.device) < num.unsqueeze(-1)
    out = torch.zeros(*idx.shape[:-1], n + 1, dtype=torch.bool, device=idx.device)
    out.scatter_(-1, torch.where(valid, idx.long(), n), True)
    return out[..., :n]


def structure_problems(bm: BlockMask) -> list[str]:
    """Layout contract: int32, contiguous, in-range entries, valid entries strictly ascending."""
    problems = []
    for num_name, idx_name in PAIRS:
        num, idx = getattr(bm, num_name), getattr(bm, idx_name)
        for name, t in ((num_name, num), (idx_name, idx)):
            if t.dtype != torch.int32 or not t.is_contiguous():
                problems.append(f"{name}: dtype {t.dtype}, contiguous={t.is_contiguous()}")
        n = idx.shape[-1]
        if bool(((idx < 0) | (idx >= n)).any()):
            problems.append(f"{idx_name}: entries outside [0, {n})")
        valid = torch.arange(n, device=idx.device) < num.unsqueeze(-1)
        steps = (idx[..., 1:] > idx[..., :-1]) | ~valid[..., 1:]
        if not bool(steps.all()):
            problems.append(f"{idx_name}: valid entries do not ascend")
        if bool((num > n).any()) or bool((num < 0).any()):
            problems.append(f"{num_name}: counts outside [0, {n}]")
    return problems


def first_difference(ours: BlockMask, ref: BlockMask) -> str | None:
    """The first block the two masks classify differently, in words; None if they agree."""
    for num_name, idx_name in PAIRS:
        a = block_set(getattr(ours, num_name), getattr(ours, idx_name))
        b = block_set(getattr(ref, num_name), getattr(ref, idx_name))
        if a.shape[-2:] != b.shape[-2:]:
            return f"{idx_name}: grid {tuple(a.shape)} vs torch's {tuple(b.shape)}"
        a = a.expand_as(b)
        diff = a != b
        if bool(diff.any()):
            bi, hi, r, c = (int(x) for x in diff.nonzero()[0])
            kind = "FULL" if "full" in idx_name else "PARTIAL"
            rowdir = "q" if idx_name.startswith(("kv", "full_kv")) else "kv"
            return (
                f"{idx_name}[b={bi}, h={hi}, {rowdir}_block={r}] block {c}: maskspec says "
                f"{'' if a[bi, hi, r, c] else 'not '}{kind}, create_block_mask says "
                f"{'' if b[bi, hi, r, c] else 'not '}{kind}"
            )
    return None


@dataclass
class Report:
    """The outcome of one validation: block counts and every disagreement found."""

    q_len: int
    kv_len: int
    block_size: tuple[int, int]
    inputs: dict[str, list] = field(default_factory=dict)
    full: int = 0
    partial: int = 0
    empty: int = 0
    density: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def validate(
    mask: CompiledMask, B: int, H: int, Q_LEN: int, KV_LEN: int,
    BLOCK_SIZE: int | tuple[int, int] = 128, **inputs: Any,
) -> Report:
    """Build analytically, densely and with create_block_mask on CPU; compare all three."""
    bs = block_size_of(BLOCK_SIZE)
    rep = Report(Q_LEN, KV_LEN, bs, {k: torch.as_tensor(v).tolist() for k, v in inputs.items()})
    ours = mask.block_mask(B, H, Q_LEN, KV_LEN, "cpu", bs, **inputs)
    mm = mask.mask_mod(B=B, H=H, Q_LEN=Q_LEN, KV_LEN=KV_LEN, **inputs)
    ref = create_block_mask(mm, B, H, Q_LEN, KV_LEN, device="cpu", BLOCK_SIZE=bs)
    dense = mask.dense(B, H, Q_LEN, KV_LEN, **inputs)
    if not torch.equal(dense, create_mask(mm, B, H, Q_LEN, KV_LEN, device="cpu")):
        rep.problems.append("mask_mod disagrees with the dense evaluation")
    rep.problems += structure_problems(ours)
    diff = first_difference(ours, ref)
    if diff:
        rep.problems.append(diff)
    full = block_set(ours.full_kv_num_blocks, ours.full_kv_indices).expand(B, H, -1, -1)
    part = block_set(ours.kv_num_blocks, ours.kv_indices).expand(B, H, -1, -1)
    rep.full, rep.partial = int(full.sum()), int(part.sum())
    rep.empty = full.numel() - rep.full - rep.partial
    rep.density = float(dense.float().mean())
    return rep


def random_inputs(mask: CompiledMask, B: int, H: int, Q_LEN: int, KV_LEN: int,
                  rng: random.Random) -> dict[str, torch.Tensor]:
    """Random values for every declared input: within its declared range, else [0, KV_LEN]."""
    sizes = sizes_of(B, H, Q_LEN, KV_LEN)
    gen = torch.Generator().manual_seed(rng.randrange(2**31))
    out = {}
    for d in mask.ir.inputs:
        shape = tuple(ir.const_value(s, sizes) for s in d.shape)
        if d.name in mask.ir.document_inputs():
            most = 64 if d.range is None else min(64, ir.const_value(d.range[1], sizes))
            out[d.name] = _random_documents(shape, gen, most)
            continue
        if d.dtype == "bool":
            out[d.name] = torch.rand(shape, generator=gen) < 0.7
            continue
        lo, hi = (0, KV_LEN) if d.range is None else (ir.const_value(e, sizes) for e in d.range)
        t = torch.randint(lo, hi + 1, shape, generator=gen)
        # Extremes matter most: make a third of the values the range's ends.
        pick = torch.rand(shape, generator=gen)
        out[d.name] = torch.where(pick < 0.15, lo, torch.where(pick > 0.85, hi, t))
    return out


def _random_documents(shape: tuple[int, ...], gen: torch.Generator, most: int) -> torch.Tensor:
    """Sorted document ids with random boundaries, ids at most ``most``: empty and length-1
    documents included."""
    n = shape[-1]
    rows = []
    for _ in range(shape[0]):
        docs = int(torch.randint(min(1, most), max(1, min(most, n)) + 1, (), generator=gen))
        cuts = torch.randint(0, n + 1, (docs,), generator=gen).sort().values
        rows.append(document_ids(torch.cat([torch.zeros(1, dtype=cuts.dtype), cuts]), n)[0])
    return torch.stack(rows)
