"""One build's context: the compiled mask, its sizes, the block size, the device and the
bound inputs, made once where a build starts (``api``, ``fast.Builder``, ``custom_op``) and
passed down every stage, so no stage re-derives or re-checks them."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from maskspec import ir


@dataclass(frozen=True)
class BuildContext:
    """What a build is of: ``sizes`` (B, H, Q_LEN, KV_LEN, checked), ``inputs`` (bound:
    every declared input as a tensor on ``device``, checked or sanitized), ``block_size``
    (query rows, keys) per block."""

    mask: ir.MaskIR
    sizes: Mapping[str, int]
    inputs: Mapping[str, Tensor]
    device: torch.device
    block_size: tuple[int, int] = (128, 128)

    @property
    def q_len(self) -> int:
        return self.sizes["Q_LEN"]

    @property
    def kv_len(self) -> int:
        return self.sizes["KV_LEN"]

    def size_key(self) -> tuple[int, ...]:
        """The sizes as a tuple in ``ir.SIZES`` order (a cache key)."""
        return ir.size_key(self.sizes)

    def with_inputs(self, inputs: Mapping[str, Tensor]) -> BuildContext:
        """The same build over other bound inputs (a CUDA graph's static copies)."""
        return dataclasses.replace(self, inputs=inputs)

    def with_device(self, device: torch.device) -> BuildContext:
        """The same build placed on ``device`` (an indexed CUDA device, for cache keys)."""
        return dataclasses.replace(self, device=device)

    def detached(self) -> BuildContext:
        """A copy owning its mappings, for a worker thread that reads it later."""
        return dataclasses.replace(self, sizes=dict(self.sizes), inputs=dict(self.inputs))
