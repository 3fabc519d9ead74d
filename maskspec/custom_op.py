"""The build as a torch custom op, so ``block_mask`` works inside ``torch.compile``.

Dynamo cannot trace the build itself: the value checks read the inputs (data-dependent
guards), the per-sizes checks key a cache on concrete sizes, and the lowering's Python
loops would unroll into a long trace per shape. Inside a compiled region the build is
instead one opaque op, ``maskspec::block_tensors``, whose fake implementation gives the
eight output shapes from the (possibly symbolic) sizes alone. The real implementation runs
the same code as an eager build — the checks, then ``dispatch.tensors`` — on concrete sizes
and values, so the compiled graph has no graph break, no guard on values, and one entry for
every sequence length once the sizes are dynamic.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from maskspec import blocks, ir, lower
from maskspec.context import BuildContext
from maskspec.cuda import dispatch
from maskspec.inputs import check_bound

# Op arguments must be plain values: each mask is passed by a key into this table (the entry
# keeps the mask alive, so its id is never reused for another one).
_MASKS: dict[str, ir.MaskIR] = {}


def key_of(mask: ir.MaskIR) -> str:
    """The op argument that names ``mask``."""
    key = f"{mask.name}@{id(mask):x}"
    _MASKS.setdefault(key, mask)
    return key


@torch.library.custom_op("maskspec::block_tensors", mutates_args=())
def block_tensors(
    key: str, sizes: Sequence[int], block_size: Sequence[int], values: Sequence[Tensor],
    check: bool, device: torch.device,
) -> list[Tensor]:
    """BlockMask's eight tensors for the mask named ``key`` at ``sizes`` (B, H, Q_LEN,
    KV_LEN) from its inputs in declaration order, as converted by ``inputs.convert_inputs``:
    checked (``check``) or sanitized first, exactly as an eager build does."""
    mask = _MASKS[key]
    at = dict(zip(ir.SIZES, sizes, strict=True))
    given = dict(zip((d.name for d in mask.inputs), values, strict=True))
    ctx = BuildContext(mask, at, check_bound(mask, at, given, check), device,
                       (block_size[0], block_size[1]))
    return _unaliased(dispatch.tensors(ctx))


def _unaliased(tensors: Sequence[Tensor]) -> list[Tensor]:
    """The outputs with none sharing memory, as a custom op's must: the fused build writes
    kv_idx and full_kv_idx into halves of one buffer, so the second half is copied."""
    seen: set[int] = set()
    out = []
    for t in tensors:
        ptr = t.untyped_storage().data_ptr()
        out.append(t.clone() if ptr in seen else t)
        seen.add(ptr)
    return out


@block_tensors.register_fake
def _shapes(
    key: str, sizes: Sequence[int], block_size: Sequence[int], values: Sequence[Tensor],
    check: bool, device: torch.device,
) -> list[Tensor]:
    """Empty tensors of the output shapes: (B', H', Q_blocks[, KV_blocks]) for the kv
    direction, transposed for the q direction, int32."""
    mask = _MASKS[key]
    at = dict(zip(ir.SIZES, sizes, strict=True))
    lead = lower.lead_shape(mask, at)
    n_q, n_kv = blocks.counts(at["Q_LEN"], at["KV_LEN"], block_size[0], block_size[1])

    def pair(rows: int, cols: int) -> list[Tensor]:
        return [torch.empty((*lead, *shape), dtype=torch.int32, device=device)
                for shape in ((rows,), (rows, cols))]
    return [*pair(n_q, n_kv), *pair(n_q, n_kv), *pair(n_kv, n_q), *pair(n_kv, n_q)]
