"""The element-level mask_mod for flex_attention: (b, h, q_idx, kv_idx) -> bool."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from maskspec import ir

MaskMod = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def mask_mod(
    mask: ir.MaskIR, sizes: Mapping[str, int], inputs: Mapping[str, torch.Tensor]
) -> MaskMod:
    """A torch-traceable mask_mod closing over the sizes and the bound input tensors."""
    sizes, inputs = dict(sizes), dict(inputs)

    def spec_mask_mod(
        b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor
    ) -> torch.Tensor:
        env = ir.Env(vars={"b": b, "h": h, "q": q_idx, "kv": kv_idx}, sizes=sizes, inputs=inputs)
        return ir.element_mask(mask, env)

    spec_mask_mod.__name__ = f"{mask.name}_mask_mod"
    spec_mask_mod.__qualname__ = spec_mask_mod.__name__
    return spec_mask_mod
