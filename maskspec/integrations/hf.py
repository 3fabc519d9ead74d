"""Hugging Face transformers: drive its flex_attention path with a maskspec BlockMask.

transformers' flex_attention layers take a ready BlockMask as ``attention_mask``. For packed
sequences (several documents in one row, told apart by ``position_ids`` restarting), its own
mask path finds the documents from ``position_ids`` (a new one wherever a position does not
follow the one before by 1, when no attention mask and no cache is given); ``document_ids``
applies the same rule, so a document spec built from them is the mask transformers would
use — computed analytically, once per batch, for every layer.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn.attention.flex_attention import BlockMask

from maskspec.api import CompiledMask, load


def document_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """Per-position document ids [B, N] from packed ``position_ids`` [B, N] (or [1, N]): a
    new document starts wherever a position is not the previous one plus 1."""
    starts = torch.ones_like(position_ids, dtype=torch.bool)
    starts[:, 1:] = position_ids[:, 1:] - position_ids[:, :-1] != 1
    return starts.cumsum(-1) - 1


def packed_block_mask(
    position_ids: torch.Tensor, mask: CompiledMask | str = "document_causal",
    BLOCK_SIZE: int | tuple[int, int] = 128, **inputs: Any,
) -> BlockMask:
    """The BlockMask of ``mask`` (a spec with a ``doc`` input: ``document_causal`` by
    default) over the documents packed in ``position_ids``, for
    ``model(..., attention_mask=block_mask)`` with ``attn_implementation="flex_attention"``."""
    spec = load(mask) if isinstance(mask, str) else mask
    b, n = position_ids.shape
    return spec.block_mask(b, 1, n, n, position_ids.device, BLOCK_SIZE,
                           doc=document_ids(position_ids), **inputs)
