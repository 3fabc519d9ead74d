"""The element-level mask_mod for flex_attention: (b, h, q_idx, kv_idx) -> bool."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from maskspec import ir

MaskMod = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class SpecMaskMod:
    """A spec's element mask_mod at fixed sizes and bound inputs: (b, h, q_idx, kv_idx) ->
    bool, torch-traceable. An object rather than a closure so that a BlockMask carrying it
    pickles and deep-copies (checkpoints, multiprocessing data loaders)."""

    def __init__(
        self, mask: ir.MaskIR, sizes: Mapping[str, int], inputs: Mapping[str, torch.Tensor]
    ) -> None:
        self.mask, self.sizes, self.inputs = mask, dict(sizes), dict(inputs)
        self.__name__ = self.__qualname__ = f"{mask.name}_mask_mod"

    def __call__(
        self, b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor
    ) -> torch.Tensor:
        env = ir.Env(vars={"b": b, "h": h, "q": q_idx, "kv": kv_idx}, sizes=self.sizes,
                     inputs=self.inputs)
        return ir.element_mask(self.mask, env)

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={v}" for k, v in self.sizes.items())
        return f"<mask_mod of spec `{self.mask.name}` at {sizes}>"


def mask_mod(
    mask: ir.MaskIR, sizes: Mapping[str, int], inputs: Mapping[str, torch.Tensor]
) -> MaskMod:
    """A torch-traceable mask_mod closing over the sizes and the bound input tensors."""
    return SpecMaskMod(mask, sizes, inputs)
