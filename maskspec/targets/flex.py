"""flex_attention target: a torch BlockMask with all eight index tensors built directly."""

from __future__ import annotations

from torch.nn.attention.flex_attention import BlockMask

from maskspec.blocks import BlockGrid, ordered
from maskspec.mask_mod import MaskMod


def block_mask(
    grid: BlockGrid, q_len: int, kv_len: int, block_size: tuple[int, int], mask_mod: MaskMod
) -> BlockMask:
    """kv_* from the grid's rows, q_* from its columns: no dense transpose-and-argsort pass."""
    kv_num, kv_idx = ordered(grid.partial)
    full_kv_num, full_kv_idx = ordered(grid.full)
    q_num, q_idx = ordered(grid.partial.transpose(-1, -2))
    full_q_num, full_q_idx = ordered(grid.full.transpose(-1, -2))
    return BlockMask(
        (q_len, kv_len),
        kv_num,
        kv_idx,
        full_kv_num,
        full_kv_idx,
        q_num,
        q_idx,
        full_q_num,
        full_q_idx,
        block_size,
        mask_mod,
    )
