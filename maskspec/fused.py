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
from typing import Any

import torch
from torch import Tensor

from maskspec import blocks, ir, lower
from maskspec.lower import Rows
from maskspec.targets import codegen, flex, triton_rows

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the torch path serves every build
    triton = None

MAX_BINS = 16384  # key blocks, rounded up to a power of two, held per program
MAX_ROW_BLOCKS = 8192  # row blocks per column strip, held per program
MAX_SLOTS = 2**15  # rows × interval slots per program (its sort and gathers use shared memory)
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
    def classify_block(
        lo, hi, bh, qb, q_len, kv_len, n_q, n_kv,
        kv_num_ptr, kv_idx_ptr, full_kv_num_ptr, full_kv_idx_ptr, cls_ptr,
        KP: tl.constexpr, Q_BS: tl.constexpr, QP: tl.constexpr, KV_BS: tl.constexpr,
        NB: tl.constexpr,
    ):
        """One row block's (QP, KP) intervals → its kv_* rows and class bytes: merge each
        row's intervals, count the key blocks each row covers or touches, classify."""
        bh = bh.to(tl.int64)
        r = tl.arange(0, QP)[:, None]
        ok = (r < Q_BS) & (qb * Q_BS + r < q_len)  # padding rows of the block hold nothing
        lo, hi = tl.where(ok, lo, 0).to(tl.int64), tl.where(ok, hi, 0).to(tl.int64)
        # Sort each row's intervals by start (end as tie-break), packed in one key.
        key = tl.sort((lo << 32) | hi, dim=1)
        lo64 = key >> 32
        lo, hi = lo64.to(tl.int32), (key - (lo64 << 32)).to(tl.int32)
        reach = tl.associative_scan(hi, 1, _maximum)
        jj = tl.broadcast_to(tl.arange(0, KP)[None, :], (QP, KP))
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
    def _row_block_kernel(
        lo_ptr, hi_ptr, kv_num_ptr, kv_idx_ptr, full_kv_num_ptr, full_kv_idx_ptr, cls_ptr,
        q_len, kv_len, n_q, n_kv,
        K: tl.constexpr, KP: tl.constexpr, Q_BS: tl.constexpr, QP: tl.constexpr,
        KV_BS: tl.constexpr, NB: tl.constexpr,
    ):
        """One row block of given intervals (B', H', Q_LEN, K): load, then classify_block."""
        bh = tl.program_id(0).to(tl.int64)
        qb = tl.program_id(1)
        row = qb * Q_BS + tl.arange(0, QP)[:, None]
        j = tl.arange(0, KP)[None, :]
        ok = (row < q_len) & (j < K)
        offs = (bh * q_len + row) * K + j
        lo = tl.load(lo_ptr + offs, mask=ok, other=0)
        hi = tl.load(hi_ptr + offs, mask=ok, other=0)
        classify_block(lo, hi, bh, qb, q_len, kv_len, n_q, n_kv, kv_num_ptr, kv_idx_ptr,
                       full_kv_num_ptr, full_kv_idx_ptr, cls_ptr, KP, Q_BS, QP, KV_BS, NB)

    # Helpers of the generated build kernels (targets/triton_rows.py): the spec's arithmetic
    # with Python's meaning (floor division; divisors are positive, the compiler checks).

    @triton.jit
    def floordiv(a, k):
        return tl.where(a >= 0, a // k, -((k - 1 - a) // k))

    @triton.jit
    def mod(a, k):
        return a - floordiv(a, k) * k

    @triton.jit
    def clamp(i, n):
        """An index kept inside [0, n), as ``ir.evaluate`` reads inputs."""
        return tl.minimum(tl.maximum(i, 0), n - 1)

    @triton.jit
    def search(row_ptr, stride, n, steps, target, RIGHT: tl.constexpr):
        """``torch.searchsorted`` over a non-decreasing row of n ids, for each target."""
        lo = tl.zeros_like(target)
        hi = lo + n
        for _ in range(steps):
            mid = (lo + hi) // 2
            v = tl.load(row_ptr + tl.minimum(mid, n - 1) * stride).to(tl.int64)
            go = (v <= target) if RIGHT else (v < target)
            live = lo < hi
            lo = tl.where(live & go, mid + 1, lo)
            hi = tl.where(live & ~go, mid, hi)
        return lo

    @triton.jit
    def _column_strip_kernel(
        cls_ptr, q_num_ptr, q_idx_ptr, full_q_num_ptr, full_q_idx_ptr, n_q, n_kv,
        NQP: tl.constexpr, STRIP: tl.constexpr,
    ):
        """One strip of key blocks: read the block classes down the columns, write q_*."""
        bh = tl.program_id(0).to(tl.int64)
        qb = tl.arange(0, NQP)[:, None]
        kb = tl.program_id(1) * STRIP + tl.arange(0, STRIP)[None, :]
        real = (qb < n_q) & (kb < n_kv)
        cls = tl.load(cls_ptr + (bh * n_q + qb) * n_kv + kb, mask=real, other=0)
        num, idx = bh * n_kv + kb, (bh * n_kv + kb) * n_q
        _store_ordered(cls == _PARTIAL, qb, real, q_num_ptr + num, q_idx_ptr + idx, kb < n_kv, 0)
        _store_ordered(cls == _FULL, qb, real, full_q_num_ptr + num, full_q_idx_ptr + idx,
                       kb < n_kv, 0)

def _pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def _slots(k: int) -> int:
    """Interval slots per row held by a program: at least 16, so that the few interval
    counts of a TTT sequence share one compiled kernel."""
    return max(16, _pow2(k))


def _bins(n_kv: int) -> int:
    """Key blocks held per program, likewise bucketed (at least 1024)."""
    return max(1024, _pow2(n_kv))


def fits(k: int, q_len: int, kv_len: int, block_size: tuple[int, int]) -> bool:
    """Whether the fused kernels can classify K intervals per row at this shape (else use the
    torch path): the per-program arrays must fit a Hopper SM's registers and shared memory."""
    n_q, n_kv = -(-q_len // block_size[0]), -(-kv_len // block_size[1])
    return (
        triton is not None and _bins(n_kv) <= MAX_BINS and _pow2(n_q) <= MAX_ROW_BLOCKS
        and kv_len < 2**31 and _pow2(block_size[0]) * _slots(k) <= MAX_SLOTS
    )


def _kv_outputs(lead: tuple[int, ...], n_q: int, n_kv: int, device: torch.device) -> list[Tensor]:
    """The row-block kernel's outputs: kv_num, kv_idx, full_kv_num, full_kv_idx (index rows
    zeroed: they are its scratch) and the class bytes."""
    kv_idx, full_kv_idx = torch.zeros(2, *lead, n_q, n_kv, dtype=torch.int32, device=device)
    num = [torch.empty(*lead, n_q, dtype=torch.int32, device=device) for _ in range(2)]
    cls = torch.empty(*lead, n_q, n_kv, dtype=torch.int8, device=device)
    return [num[0], kv_idx, num[1], full_kv_idx, cls]


def _with_q_direction(kv: list[Tensor], n_q: int, n_kv: int) -> tuple[Tensor, ...]:
    """All eight tensors: the q-direction ones read down the class bytes' columns."""
    kv_num, kv_idx, full_kv_num, full_kv_idx, cls = kv
    lead = cls.shape[:-2]
    q_num, full_q_num = (cls.new_empty(*lead, n_kv, dtype=torch.int32) for _ in range(2))
    q_idx = cls.new_empty(*lead, n_kv, n_q, dtype=torch.int32)
    full_q_idx = torch.empty_like(q_idx)
    nqp = _pow2(n_q)
    strip = max(1, min(64, 4096 // nqp))
    _column_strip_kernel[(lead.numel(), -(-n_kv // strip))](
        cls, q_num, q_idx, full_q_num, full_q_idx, n_q, n_kv, NQP=nqp, STRIP=strip,
        num_warps=4,
    )
    return kv_num, kv_idx, full_kv_num, full_kv_idx, q_num, q_idx, full_q_num, full_q_idx


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
    lo, hi = rows.lo.contiguous(), rows.hi.contiguous()
    kv = _kv_outputs(lead, n_q, n_kv, lo.device)
    _row_block_kernel[(lead.numel(), n_q)](
        lo, hi, *kv, q_len, kv_len, n_q, n_kv, K=k, KP=_slots(k), Q_BS=q_bs, QP=_pow2(q_bs),
        KV_BS=kv_bs, NB=_bins(n_kv), num_warps=8,
    )
    if release:
        del lo, hi
        rows.lo = rows.hi = rows.lo.new_empty(0)
    return _with_q_direction(kv, n_q, n_kv)


def classify(
    rows: Rows, q_len: int, kv_len: int, block_size: tuple[int, int], release: bool = False
) -> tuple[Tensor, ...]:
    """The eight BlockMask tensors of these rows: fused kernels on CUDA where they fit, else
    ``blocks.classify`` and ``flex.index_tensors`` (``release`` as in ``classify_rows``)."""
    k = rows.lo.shape[-1]
    if rows.lo.device.type == "cuda" and fits(k, q_len, kv_len, block_size):
        return classify_rows(rows, q_len, kv_len, block_size, release)
    return flex.index_tensors(blocks.classify(rows, q_len, kv_len, *block_size))


class _Generated:
    """A spec's generated build kernel, and its loop arguments per sizes (computed once)."""

    def __init__(self, mask: ir.MaskIR) -> None:
        self.mask = mask
        src = triton_rows.source(mask)
        if src not in _KERNELS:
            _KERNELS[src] = codegen.load_source(src, triton_rows.KERNEL)
        self.kernel = _KERNELS[src]
        self.plans: dict[tuple[int, ...], tuple[list[int], int]] = {}

    def plan(self, sizes: Mapping[str, int]) -> tuple[list[int], int]:
        key = tuple(sizes[k] for k in ir.SIZES)
        if key not in self.plans:
            self.plans[key] = triton_rows.plan(self.mask, sizes)
        return self.plans[key]


_KERNELS: dict[str, Any] = {}  # generated source → its JIT function (one per spec)
_GENERATED: dict[int, _Generated] = {}


def generated(mask: ir.MaskIR) -> _Generated:
    """The spec's generated kernel (built on first use; the IR is immutable)."""
    g = _GENERATED.get(id(mask))
    if g is None or g.mask is not mask:
        g = _GENERATED[id(mask)] = _Generated(mask)
    return g


def build(
    mask: ir.MaskIR, sizes: Mapping[str, int], inputs: Mapping[str, Tensor],
    device: torch.device, block_size: tuple[int, int],
) -> tuple[Tensor, ...] | None:
    """The eight tensors from the spec's generated kernel: rows computed in registers, no
    row tensor. None when the shape does not fit the kernel (see ``fits``)."""
    g = generated(mask)
    loops, k = g.plan(sizes)
    q_len, kv_len = sizes["Q_LEN"], sizes["KV_LEN"]
    if not fits(k, q_len, kv_len, block_size):
        return None
    q_bs, kv_bs = block_size
    n_q, n_kv = -(-q_len // q_bs), -(-kv_len // kv_bs)
    lead = lower.lead_shape(mask, sizes)
    kv = _kv_outputs(lead, n_q, n_kv, device)
    g.kernel[(lead[0] * lead[1], n_q)](
        *triton_rows.input_args(mask, inputs), *kv, sizes["B"], sizes["H"], q_len, kv_len,
        lead[1], n_q, n_kv, *loops, KP=_slots(k), Q_BS=q_bs, QP=_pow2(q_bs), KV_BS=kv_bs,
        NB=_bins(n_kv), num_warps=8,
    )
    return _with_q_direction(kv, n_q, n_kv)


def tensors(
    mask: ir.MaskIR, sizes: Mapping[str, int], inputs: Mapping[str, Tensor],
    device: torch.device, block_size: tuple[int, int],
) -> tuple[Tensor, ...]:
    """The spec's eight BlockMask tensors at these sizes and bound inputs: the generated
    kernel on CUDA where it fits, else lowering to row intervals and ``classify``."""
    if device.type == "cuda" and triton is not None:
        out = build(mask, sizes, inputs, device, block_size)
        if out is not None:
            return out
    rows = lower.row_intervals(mask, sizes, inputs, device)
    return classify(rows, sizes["Q_LEN"], sizes["KV_LEN"], block_size, release=True)
