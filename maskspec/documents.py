"""Packed documents: convert between per-position document ids and per-sample offsets.

maskspec takes documents as per-position ids (``int[B, N]``, non-decreasing): the form
attention-gym and most packing collators produce, and the one a mask_mod reads in O(1)
per element. Offsets (cu_seqlens-style) convert with ``document_ids``.
"""

from __future__ import annotations

import torch


def document_ids(offsets: torch.Tensor, length: int) -> torch.Tensor:
    """Ids from offsets: ``offsets[b]`` = [0, end_0, end_1, ...] (non-decreasing).

    Position i gets the index of the document containing it; positions past the last
    offset form one trailing (padding) document. Empty documents (repeated offsets) and
    length-1 documents are fine. Accepts shape (D+1,) or (B, D+1); returns (B, length).
    """
    if not isinstance(length, int) or isinstance(length, bool) or length < 0:
        raise ValueError(f"length must be a non-negative int (positions per sequence), got "
                         f"{length!r}")
    offsets = torch.as_tensor(offsets)
    if offsets.dim() == 1:
        offsets = offsets.unsqueeze(0)
    if offsets.dim() != 2 or offsets.shape[-1] < 1:
        raise ValueError(f"offsets must have shape (D+1,) or (B, D+1), got {list(offsets.shape)}")
    if offsets.dtype == torch.bool or offsets.is_floating_point() or offsets.is_complex():
        raise ValueError(f"offsets must be integers, got {offsets.dtype}")
    if bool((offsets[..., 0] != 0).any()):
        raise ValueError("offsets must start at 0 (cu_seqlens-style: [0, end_0, end_1, ...])")
    if bool((offsets[..., 1:] < offsets[..., :-1]).any()):
        raise ValueError("offsets must be non-decreasing")
    pos = torch.arange(length, device=offsets.device).expand(offsets.shape[0], length)
    return torch.searchsorted(offsets[..., 1:].contiguous(), pos.contiguous(), right=True)

