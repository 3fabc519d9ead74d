"""Sorts along the last dim for the build's small sorts of range ends, and the repeat that
writes index tensors from runs: numpy's on the CPU, torch's elsewhere.

A build sorts rows of a few to a few thousand range ends. On the CPU torch's sort costs
several times numpy's on such rows (a 2-core x86 machine, torch 2.13, numpy 2.4: 360 µs
against 130 µs with the order, 30 µs without, for 384 rows of 106; 250 µs against 18 µs for
one row of 7680), enough to be a visible part of a build of a few milliseconds. Ties come
in any order, as with torch's default (unstable) sort; callers never depend on it.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def _on_numpy(x: Tensor) -> bool:
    """Whether numpy can sort x in place of torch: a plain CPU tensor, outside tracing."""
    return x.device.type == "cpu" and not x.requires_grad \
        and not torch.compiler.is_compiling()


def sorted_values(x: Tensor) -> Tensor:
    """``x.sort(-1).values``."""
    if _on_numpy(x):
        return torch.from_numpy(np.sort(x.numpy(), axis=-1))
    return x.sort(-1).values


def sorted_with_order(x: Tensor) -> tuple[Tensor, Tensor]:
    """``x.sort(-1)``: the values and the order that takes x to them. On the CPU, where the
    values' range times the row length fits in 62 bits, each value carries its index in
    its low bits through a sort of values alone (numpy's argsort costs 4× its sort)."""
    if _on_numpy(x) and x.numel() and not x.dtype.is_floating_point:
        lo, hi = (int(v) for v in torch.aminmax(x))
        bits = max(x.shape[-1] - 1, 1).bit_length()
        if (hi - lo + 1) << bits < 1 << 62:
            index = torch.arange(x.shape[-1], device=x.device)
            key = sorted_values(((x.long() - lo) << bits) | index)
            return ((key >> bits) + lo).to(x.dtype), key & ((1 << bits) - 1)
        order = torch.from_numpy(np.argsort(x.numpy(), axis=-1))
        return x.gather(-1, order), order
    values, order = x.sort(-1)
    return values, order


def repeated(values: Tensor, counts: Tensor, total: int) -> Tensor:
    """``values.repeat_interleave(counts)``, ``total`` entries: numpy's repeat on the CPU
    (for 737K int32 entries from 1.5K runs, 2-core x86: 0.09 ms against torch's 0.75)."""
    if _on_numpy(values):
        return torch.from_numpy(np.repeat(values.numpy(), counts.numpy()))
    return values.repeat_interleave(counts, output_size=total)
