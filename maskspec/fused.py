"""Row intervals → the eight BlockMask tensors in two Triton kernels, for CUDA builds.

The same classification as ``blocks.classify`` followed by ``flex.index_tensors``, fused so a
build is a handful of kernels instead of a hundred. One program per row block merges its rows'
intervals, counts the key blocks each row covers or touches with difference arrays (atomic
adds into its own zeroed output rows, read back after a barrier), and writes the kv-direction
indices plus one byte per block. One program per strip of key blocks reads those bytes down
the columns and writes the q-direction indices. The byte grid is the only scratch.
``classify`` picks this path on CUDA when Triton is importable and the shape fits in
registers, the torch path otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from maskspec import blocks, ir, lower
from maskspec.lower import Rows
from maskspec.targets import flex

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the torch path serves every build
    triton = None

MAX_BINS = 16384  # key blocks, rounded up to a power of two, held per program
MAX_ROW_BLOCKS = 8192  # row blocks per column strip, held per program
if triton is not None:
    _PARTIAL, _FULL = tl.constexpr(1), tl.constexpr(2)  # block classes in the byte grid

    @triton.jit
    def _maximum(a, b):
        return tl.maximum(a, b)

    @triton.jit
    def _add_ranges(row_ptr, first, last, ok, n_kv):
        """Add the difference array of the [first, last) block ranges (where ok) into the
        zeroed row (ends at n_kv are dropped: no block lies past it)."""
        tl.atomic_add(row_ptr + first, 1, mask=ok & (first < n_kv), sem="relaxed")
        tl.atomic_add(row_ptr + last, -1, mask=ok & (last < n_kv), sem="relaxed")

    @triton.jit
    def _store_ordered(flag, pos, real, num_ptrs, idx_ptrs, num_ok, AXIS: tl.constexpr):
        """Counts, and indices along AXIS: set positions first, ascending, then the unset ones
        (``blocks.ordered``'s layout: every index row is a permutation)."""
        flag = flag & real
        seen = tl.cumsum(flag.to(tl.int32), AXIS)
        count = tl.sum(flag.to(tl.int32), AXIS, keep_dims=True)
        slot = tl.where(flag, seen - 1, count + pos - seen)
        tl.store(idx_ptrs + slot, pos, mask=real)
        tl.store(num_ptrs, count, mask=num_ok)

    @triton.jit
    def _row_block_kernel(
        lo_ptr, hi_ptr, kv_num_ptr, kv_idx_ptr, full_kv_num_ptr, full_kv_idx_ptr, cls_ptr,
        q_len, kv_len, n_q, n_kv,
        K: tl.constexpr, KP: tl.constexpr, Q_BS: tl.constexpr, QP: tl.constexpr,
        KV_BS: tl.constexpr, NB: tl.constexpr,
    ):
        """One row block: merge each row's intervals, classify its key blocks, write kv_*."""
        qb = tl.program_id(0)
        bh = tl.program_id(1).to(tl.int64)
        r = tl.arange(0, QP)[:, None]
        j = tl.arange(0, KP)[None, :]
        row = qb * Q_BS + r
        ok = (r < Q_BS) & (row < q_len) & (j < K)
        offs = (bh * q_len + row) * K + j
        lo = tl.load(lo_ptr + offs, mask=ok, other=0).to(tl.int64)
        hi = tl.load(hi_ptr + offs, mask=ok, other=0).to(tl.int64)
        # Sort each row's intervals by start (end as tie-break), packed in one key.
        key = tl.sort((lo << 32) | hi, dim=1)
        lo64 = key >> 32
        lo, hi = lo64.to(tl.int32), (key - (lo64 << 32)).to(tl.int32)
        reach = tl.associative_scan(hi, 1, _maximum)
        jj = tl.broadcast_to(j, (QP, KP))
        before = tl.where(jj == 0, -1, tl.gather(reach, tl.maximum(jj - 1, 0), 1))
        opens = lo > before  # a merged group starts here
        start = tl.associative_scan(tl.where(opens, lo, -1), 1, _maximum)
        after = tl.gather(opens.to(tl.int32), tl.minimum(jj + 1, KP - 1), 1)
        closes = (jj == KP - 1) | (after != 0)  # the group's last interval: [start, reach)
        f0 = (start + KV_BS - 1) // KV_BS
        f1 = tl.minimum(reach // KV_BS, kv_len // KV_BS)
        # Difference arrays, accumulated in this block's own (zeroed) index rows: the
        # output doubles as scratch, read back after a barrier and overwritten after another.
        out = (bh * n_q + qb) * n_kv
        _add_ranges(full_kv_idx_ptr + out, f0, f1, closes & (f0 < f1), n_kv)
        _add_ranges(kv_idx_ptr + out, lo // KV_BS, (hi + KV_BS - 1) // KV_BS, lo < hi, n_kv)
        tl.debug_barrier()
        cols = tl.arange(0, NB)
        covered = tl.cumsum(tl.load(full_kv_idx_ptr + out + cols, mask=cols < n_kv, other=0,
                                    cache_modifier=".cg"), 0)
        touched = tl.cumsum(tl.load(kv_idx_ptr + out + cols, mask=cols < n_kv, other=0,
                                    cache_modifier=".cg"), 0)
        tl.debug_barrier()

        cols = tl.arange(0, NB)[None, :]
        real = cols < n_kv
        full = (covered[None, :] == Q_BS) & real
        partial = (touched[None, :] > 0) & ~full & real
        cls = tl.where(full, _FULL, tl.where(partial, _PARTIAL, 0)).to(tl.int8)
        tl.store(cls_ptr + out + cols, cls, mask=real)
        num = bh * n_q + qb + tl.zeros((1, 1), tl.int64)
        _store_ordered(partial, cols, real, kv_num_ptr + num, kv_idx_ptr + out, num >= 0, 1)
        _store_ordered(full, cols, real, full_kv_num_ptr + num, full_kv_idx_ptr + out, num >= 0, 1)

    @triton.jit
    def _column_strip_kernel(
        cls_ptr, q_num_ptr, q_idx_ptr, full_q_num_ptr, full_q_idx_ptr, n_q, n_kv,
        NQP: tl.constexpr, STRIP: tl.constexpr,
    ):
        """One strip of key blocks: read the block classes down the columns, write q_*."""
        bh = tl.program_id(1).to(tl.int64)
        qb = tl.arange(0, NQP)[:, None]
        kb = tl.program_id(0) * STRIP + tl.arange(0, STRIP)[None, :]
        real = (qb < n_q) & (kb < n_kv)
        cls = tl.load(cls_ptr + (bh * n_q + qb) * n_kv + kb, mask=real, other=0)
        num, idx = bh * n_kv + kb, (bh * n_kv + kb) * n_q
        _store_ordered(cls == _PARTIAL, qb, real, q_num_ptr + num, q_idx_ptr + idx, kb < n_kv, 0)
        _store_ordered(cls == _FULL, qb, real, full_q_num_ptr + num, full_q_idx_ptr + idx,
                       kb < n_kv, 0)

def _pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def fits(rows: Rows, q_len: int, kv_len: int, block_size: tuple[int, int]) -> bool:
    """Whether the fused kernels can classify these rows (else use the torch path)."""
    n_q, n_kv = -(-q_len // block_size[0]), -(-kv_len // block_size[1])
    return (
        triton is not None and _pow2(n_kv) <= MAX_BINS and _pow2(n_q) <= MAX_ROW_BLOCKS
        and kv_len < 2**31 and _pow2(block_size[0]) * _pow2(rows.lo.shape[-1]) <= 2**16
    )


def classify_rows(
    rows: Rows, q_len: int, kv_len: int, block_size: tuple[int, int], release: bool = False
) -> tuple[Tensor, ...]:
    """``flex.index_tensors(blocks.classify(rows, ...))``, equal tensor for tensor, fused.

    ``release=True`` empties ``rows`` once the first kernel has read them, so the q-direction
    outputs can take their memory (the build's peak is then about its own output).
    """
    q_bs, kv_bs = block_size
    n_q, n_kv = -(-q_len // q_bs), -(-kv_len // kv_bs)
    lead, k = rows.lo.shape[:-2], rows.lo.shape[-1]
    bh = lead.numel()
    lo, hi = rows.lo.contiguous(), rows.hi.contiguous()
    new = lo.new_empty
    kv_num, full_kv_num = new(*lead, n_q, dtype=torch.int32), new(*lead, n_q, dtype=torch.int32)
    kv_idx, full_kv_idx = torch.zeros(2, *lead, n_q, n_kv, dtype=torch.int32, device=lo.device)
    cls = new(*lead, n_q, n_kv, dtype=torch.int8)
    _row_block_kernel[(n_q, bh)](
        lo, hi, kv_num, kv_idx, full_kv_num, full_kv_idx, cls, q_len, kv_len, n_q, n_kv,
        K=k, KP=_pow2(k), Q_BS=q_bs, QP=_pow2(q_bs), KV_BS=kv_bs, NB=_pow2(n_kv),
        num_warps=8,
    )
    if release:
        del lo, hi
        rows.lo = rows.hi = rows.lo.new_empty(0)
    q_num, full_q_num = new(*lead, n_kv, dtype=torch.int32), new(*lead, n_kv, dtype=torch.int32)
    q_idx = new(*lead, n_kv, n_q, dtype=torch.int32)
    full_q_idx = torch.empty_like(q_idx)
    nqp = _pow2(n_q)
    strip = max(1, min(64, 4096 // nqp))
    _column_strip_kernel[(-(-n_kv // strip), bh)](
        cls, q_num, q_idx, full_q_num, full_q_idx, n_q, n_kv, NQP=nqp, STRIP=strip,
        num_warps=4,
    )
    return kv_num, kv_idx, full_kv_num, full_kv_idx, q_num, q_idx, full_q_num, full_q_idx


def classify(
    rows: Rows, q_len: int, kv_len: int, block_size: tuple[int, int], release: bool = False
) -> tuple[Tensor, ...]:
    """The eight BlockMask tensors of these rows: fused kernels on CUDA where they fit, else
    ``blocks.classify`` and ``flex.index_tensors`` (``release`` as in ``classify_rows``)."""
    if rows.lo.device.type == "cuda" and fits(rows, q_len, kv_len, block_size):
        return classify_rows(rows, q_len, kv_len, block_size, release)
    return flex.index_tensors(blocks.classify(rows, q_len, kv_len, *block_size))


def tensors(
    mask: ir.MaskIR, sizes: Mapping[str, int], inputs: Mapping[str, Tensor],
    device: torch.device, block_size: tuple[int, int],
) -> tuple[Tensor, ...]:
    """The spec's eight BlockMask tensors at these sizes and bound inputs."""
    rows = lower.row_intervals(mask, sizes, inputs, device)
    return classify(rows, sizes["Q_LEN"], sizes["KV_LEN"], block_size, release=True)
