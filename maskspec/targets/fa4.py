"""FlashAttention-4 target: block-sparse tensors for the forward (kv) and backward (q) passes."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch


class BlockSparseTensors(NamedTuple):
    """Field-compatible stand-in for flash_attn.cute.block_sparsity.BlockSparseTensorsTorch."""

    mask_block_cnt: torch.Tensor
    mask_block_idx: torch.Tensor
    full_block_cnt: torch.Tensor | None
    full_block_idx: torch.Tensor | None
    block_size: tuple[int, int] | None = None


@functools.cache
def _tensors_class() -> Any:
    """FA4's tensors class, else the stand-in (looked up once: a failed import is slow)."""
    try:
        from flash_attn.cute.block_sparsity import BlockSparseTensorsTorch
    except Exception:  # flash-attn-4 absent or unusable here: same fields, plain tuple
        return BlockSparseTensors
    return BlockSparseTensorsTorch


def sm_arch(device: torch.device | str | None, arch: int | None) -> int:
    """The SM architecture (90, 100 ...) whose block-size rules apply: ``arch`` as given (an
    int, 90 or newer: FA4 runs on Hopper and Blackwell), else the CUDA device's."""
    if arch is not None:
        if not isinstance(arch, int) or isinstance(arch, bool) or arch < 90:
            raise ValueError(f"arch must be an SM version FA4 runs on, as an int: 90 (Hopper) "
                             f"or 100 and up (Blackwell), got {arch!r}")
        return arch
    dev = torch.device(device) if device is not None else None
    if dev is not None and dev.type == "cuda" and torch.cuda.is_available():
        major, minor = _capability(dev.index if dev.index is not None else
                                   torch.cuda.current_device())
        if major < 9:
            raise ValueError(f"FA4 runs on sm90 (Hopper) and newer; {dev} is "
                             f"sm{major}{minor}")
        return major * 10 + minor
    raise ValueError(
        "FA4 block sizes depend on the GPU architecture; build on a CUDA device or pass "
        "arch=90 (Hopper) or arch=100 (Blackwell)"
    )


@functools.cache
def _capability(index: int) -> tuple[int, int]:
    """A CUDA device's compute capability (asked once: FA4 builds ask on every call)."""
    return torch.cuda.get_device_capability(index)


def q_tile(arch: int) -> int:
    """Query rows FA4's forward takes per sparse block: 2 stages of 128 on sm100+, else 128."""
    return 256 if arch >= 100 else 128


def default_block_size(arch: int) -> tuple[int, int]:
    """The smallest (Q, KV) block size FA4 tiles on ``arch``: finest sparsity, fewest skips lost."""
    return (q_tile(arch), 128)


def check_block_size(block_size: tuple[int, int], arch: int) -> None:
    """Refuse block sizes FA4's kernels cannot tile, saying why."""
    q_bs, kv_bs = block_size
    if kv_bs % 128:
        raise ValueError(
            f"FA4 needs the KV block size to be a multiple of 128 (its n-tile); got {kv_bs}"
        )
    tile = q_tile(arch)
    if q_bs % tile:
        raise ValueError(
            f"FA4 on sm{arch} processes queries in tiles of {tile} rows, so the Q block "
            f"size must be a multiple of {tile}; got {q_bs}"
        )


def _expand(t: torch.Tensor, b: int, h: int) -> torch.Tensor:
    """``t`` seen at FA4's (B, H) leading shape: a broadcast view (FA4 reads the zero
    strides as broadcast dims), no copy; ``t`` itself where it has that shape."""
    shape = t.shape
    return t if shape[0] == b and shape[1] == h else t.expand(b, h, *shape[2:])


def block_sparse(
    tensors: tuple[torch.Tensor, ...], b: int, h: int, block_size: tuple[int, int]
) -> tuple[Any, Any]:
    """(forward, backward) from a build's eight BlockMask tensors (``dispatch.tensors``, in
    BlockMask's order): the kv-direction ones per query block, the q-direction ones per key
    block, expanded to FA4's (B, H) leading shape."""
    cls = _tensors_class()
    return tuple(  # type: ignore[return-value]
        cls(mask_block_cnt=_expand(cnt, b, h), mask_block_idx=_expand(idx, b, h),
            full_block_cnt=_expand(fcnt, b, h), full_block_idx=_expand(fidx, b, h),
            block_size=block_size)
        for cnt, idx, fcnt, fidx in (tensors[:4], tensors[4:])
    )


@dataclass(frozen=True)
class FA4Args:
    """What ``flash_attn.cute.flash_attn_func`` needs for one mask: ``**args.kwargs()``."""

    mask_mod: Callable[..., Any]
    aux_tensors: list[torch.Tensor] | None
    block_sparse_tensors: Any
    block_sparse_tensors_bwd: Any

    def kwargs(self) -> dict[str, Any]:
        return {
            "mask_mod": self.mask_mod,
            "aux_tensors": self.aux_tensors,
            "block_sparse_tensors": self.block_sparse_tensors,
            "block_sparse_tensors_bwd": self.block_sparse_tensors_bwd,
        }
