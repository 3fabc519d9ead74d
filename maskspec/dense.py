"""Dense reference evaluation: the spec's meaning as a bool tensor [B, H, Q_LEN, KV_LEN]."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from maskspec import ir


def dense(
    mask: ir.MaskIR, sizes: Mapping[str, int], inputs: Mapping[str, torch.Tensor],
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Evaluate every (b, h, q, kv): for tests and validation at small sizes only."""
    shape = (sizes["B"], sizes["H"], sizes["Q_LEN"], sizes["KV_LEN"])
    vars_ = {
        v: torch.arange(n, device=device).view([n if i == d else 1 for i in range(4)])
        for d, (v, n) in enumerate(zip(ir.VARS, shape, strict=True))
    }
    out = ir.element_mask(mask, ir.Env(vars=vars_, sizes=sizes, inputs=inputs))
    return torch.as_tensor(out, device=device).expand(shape).contiguous()
