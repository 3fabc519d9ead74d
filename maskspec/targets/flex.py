"""flex_attention target: a torch BlockMask with all eight index tensors built directly."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.attention.flex_attention import BlockMask

from maskspec import blocks, ir
from maskspec import mask_mod as element
from maskspec.blocks import BlockGrid, ordered
from maskspec.mask_mod import MaskMod


def index_tensors(grid: BlockGrid) -> tuple[Tensor, ...]:
    """BlockMask's eight tensors, in its constructor's order (the part worth compiling).

    kv_* from the grid's rows, q_* from its columns: no dense transpose-and-argsort pass.
    """
    kv_num, kv_idx = ordered(grid.partial)
    full_kv_num, full_kv_idx = ordered(grid.full)
    q_num, q_idx = ordered(grid.partial.transpose(-1, -2))
    full_q_num, full_q_idx = ordered(grid.full.transpose(-1, -2))
    return kv_num, kv_idx, full_kv_num, full_kv_idx, q_num, q_idx, full_q_num, full_q_idx


def from_tensors(
    tensors: tuple[Tensor, ...], q_len: int, kv_len: int, block_size: tuple[int, int],
    mask_mod: MaskMod,
) -> BlockMask:
    """Wrap ``index_tensors``' output (no copy)."""
    return BlockMask((q_len, kv_len), *tensors, block_size, mask_mod)


def block_mask(
    grid: BlockGrid, q_len: int, kv_len: int, block_size: tuple[int, int], mask_mod: MaskMod
) -> BlockMask:
    """The BlockMask of a block grid."""
    return from_tensors(index_tensors(grid), q_len, kv_len, block_size, mask_mod)


def build(
    mask: ir.MaskIR, sizes: dict[str, int], inputs: dict[str, Tensor], device: torch.device,
    block_size: tuple[int, int],
) -> BlockMask:
    """The spec's BlockMask at these sizes and bound inputs: lower, classify, index."""
    grid = blocks.build_grid(mask, sizes, inputs, device, block_size)
    mm = element.mask_mod(mask, sizes, inputs)
    return block_mask(grid, sizes["Q_LEN"], sizes["KV_LEN"], block_size, mm)
