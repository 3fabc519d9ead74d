"""TorchSpec's EAGLE-3 mask from the shipped ``eagle3`` spec, with TorchSpec's call.

TorchSpec (an EAGLE-3 draft-model trainer) builds its training-time-test mask with
``eagle3_block_mask(Q_LEN, KV_LEN, B=, H=, device=, BLOCK_SIZE=)``: an analytic builder for
aligned shapes, create_block_mask otherwise, and no padding. This function takes the same
arguments plus the per-sample lengths its attention layers compute, and builds the exact
BlockMask at every shape (ragged, padded, rectangular blocks) from the spec.

The lengths are read as TorchSpec's padded mask_mod reads them (``kv < seq_lengths[b]``,
``q < seq_lengths[b]``, ``kv % Q_LEN < seq_lengths[b]``): float or integer; a float ``x``
allows the positions below ``ceil(x)``; a negative length allows none (their
``attention_mask.sum(-1) - lck`` goes negative for samples shorter than the cached rounds);
lengths above Q_LEN allow all Q_LEN. So they are rounded up and clamped into [0, Q_LEN],
which is the spec's declared range.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn.attention.flex_attention import BlockMask

from maskspec.api import CompiledMask, load

_EAGLE3: list[CompiledMask] = []  # loaded on first use


def _eagle3() -> CompiledMask:
    if not _EAGLE3:
        _EAGLE3.append(load("eagle3"))
    return _EAGLE3[0]


def valid_lengths(seq_lengths: Any, q_len: int) -> torch.Tensor:
    """TorchSpec's per-sample lengths as the spec's ``seq_len``: rounded up, clamped into
    [0, Q_LEN], int64 (see the module doc)."""
    t = torch.as_tensor(seq_lengths)
    if t.is_floating_point():
        t = torch.ceil(t)
    return t.to(torch.int64).clamp(0, q_len)


def eagle3_block_mask(
    Q_LEN: int, KV_LEN: int, B: int = 1, H: int = 1, device: Any = "cuda",
    BLOCK_SIZE: int | tuple[int, int] = 128, seq_lengths: Any = None, lck: int = 0,
) -> BlockMask:
    """The EAGLE-3 BlockMask as TorchSpec defines it (causal context, one diagonal per draft
    round), padded by ``seq_lengths`` ([B], float or int) when given. ``lck`` (completed
    rounds) is accepted for TorchSpec's signature; it only names their fallback's mask_mod.
    The batch dimension is B when lengths are given, else 1 (flex_attention broadcasts it),
    and the head dimension 1."""
    del lck
    inputs = {}
    if seq_lengths is not None:
        inputs["seq_len"] = valid_lengths(seq_lengths, Q_LEN).to(device)
    return _eagle3().block_mask(B, H, Q_LEN, KV_LEN, device, BLOCK_SIZE, **inputs)
