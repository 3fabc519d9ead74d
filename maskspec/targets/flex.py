"""flex_attention target: a torch BlockMask with all eight index tensors built directly."""

from __future__ import annotations

from torch import Tensor
from torch.nn.attention.flex_attention import BlockMask

from maskspec import assemble, blocks
from maskspec import mask_mod as element
from maskspec.blocks import BlockGrid
from maskspec.context import BuildContext
from maskspec.mask_mod import MaskMod


def from_tensors(
    tensors: tuple[Tensor, ...], q_len: int, kv_len: int, block_size: tuple[int, int],
    mask_mod: MaskMod,
) -> BlockMask:
    """Wrap the eight index tensors (``assemble.tensors``' order; no copy)."""
    return BlockMask((q_len, kv_len), *tensors, block_size, mask_mod)


def block_mask(
    grid: BlockGrid, q_len: int, kv_len: int, block_size: tuple[int, int], mask_mod: MaskMod
) -> BlockMask:
    """The BlockMask of a block grid."""
    return from_tensors(blocks.index_tensors(grid), q_len, kv_len, block_size, mask_mod)


def build(ctx: BuildContext) -> BlockMask:
    """The spec's BlockMask on the torch path: lower, classify, index (``assemble.tensors``)."""
    mm = element.mask_mod(ctx.mask, ctx.sizes, ctx.inputs)
    return from_tensors(assemble.tensors(ctx), ctx.q_len, ctx.kv_len, ctx.block_size, mm)
