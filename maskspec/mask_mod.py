"""The element-level mask_mod for flex_attention: (b, h, q_idx, kv_idx) -> bool."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

import torch

from maskspec import ir

MaskMod = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def element(
    mask: ir.MaskIR, sizes: Mapping[str, int], inputs: Mapping[str, torch.Tensor],
    b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor,
) -> torch.Tensor:
    """The mask's meaning at (b, h, q_idx, kv_idx) for these sizes and inputs."""
    env = ir.Env(vars={"b": b, "h": h, "q": q_idx, "kv": kv_idx}, sizes=sizes, inputs=inputs)
    return ir.element_mask(mask, env)


def mask_mod(
    mask: ir.MaskIR, sizes: Mapping[str, int], inputs: Mapping[str, torch.Tensor]
) -> MaskMod:
    """A torch-traceable mask_mod over the sizes and the bound input tensors: ``element``
    with them bound by ``functools.partial`` rather than a closure, so a BlockMask carrying
    it pickles and deep-copies (checkpoints, data-loader workers), and dynamo and inductor
    trace it as they trace a function."""
    return functools.partial(element, mask, dict(sizes), dict(inputs))
