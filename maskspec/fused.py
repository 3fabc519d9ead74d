"""Row slots → the eight BlockMask tensors in three Triton kernels, for CUDA builds: dispatch,
launches and caches (the kernels are in ``kernels``, the generated one in
``targets/triton_rows``).

The same classification as ``blocks.classify`` followed by ``flex.index_tensors``, fused so a
build is three kernels instead of a hundred. One program per chunk of a row block's rows
(``kernels.count_rows``) finds, per row, the key blocks its slots touch and those the gaps
of their union touch, and adds both as difference arrays (atomic adds) into the block's
zeroed kv_idx and full_kv_idx rows. One program per row block (``kernels.finish_kernel``)
scans those rows a chunk of key blocks at a time, writes one class byte per block, then the
ordered kv-direction indices over the scratch. One program per strip of key blocks reads the bytes
down the columns and writes the q-direction indices. The byte grid is the only scratch, and
no array in a program grows with the sequence: one compiled kernel serves every length.

The rows come from a tensor (``classify_rows``, ``classify``) or are computed inside the
count kernel, generated for the spec (``build``, ``tensors``; see targets/triton_rows.py).
Each picks the torch path off CUDA, past MAX_SLOTS intervals per row, or when the grid would
exceed CUDA's limits. ``tensors`` also takes it while a configuration's kernels compile on a
worker thread (``compiled``), so a first build never waits for Triton.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from maskspec import background, blocks, ir, kernels, lower
from maskspec.kernels import triton
from maskspec.lower import Rows
from maskspec.targets import codegen, flex, triton_rows

log = logging.getLogger("maskspec")

ROW_CHUNK = 16  # rows of a row block counted by one program (fewer when rows hold many slots)
COUNT_WARPS = 2
MAX_PAIRS = 2**12  # interval pairs one program compares (rows × slots²) in the gap search
MAX_SLOTS = 128  # interval slots per row past which the torch path classifies
MIN_SLOTS = 2  # slots per row a program holds at least


def _pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def _slots(k: int) -> int:
    """Slots per row held by a program: a power of two, at least MIN_SLOTS. The gap search
    costs slots² per row, so few slots are fast; strided families keep a spec's slot count
    fixed as KV_LEN grows (EAGLE-3: 2), so TTT steps share one compiled kernel."""
    return max(MIN_SLOTS, _pow2(k))


def _row_chunk(q_bs: int, slots: int) -> int:
    """Rows per count program: ROW_CHUNK, fewer for small blocks or many slots per row."""
    return min(ROW_CHUNK, _pow2(q_bs), max(1, MAX_PAIRS // slots**2))


def fits(slots: int, q_len: int, kv_len: int, block_size: tuple[int, int],
         stride: int = 0) -> bool:
    """Whether the fused kernels can classify rows of this many slots (else use the torch
    path): at most MAX_SLOTS, keys, block ends and the arithmetic of a family of this stride
    within int32, and a grid within CUDA's limits (65535 in y and z)."""
    n_q, n_kv = blocks.counts(q_len, kv_len, *block_size)
    chunks = -(-block_size[0] // _row_chunk(block_size[0], slots))
    return (triton is not None and n_q <= 65535 and chunks <= 65535
            and (2 * kv_len + 3 * stride if stride else kv_len) + block_size[1] < 2**31 - 1
            and -(-n_kv // TILES.strip) <= 65535 and slots <= MAX_SLOTS)


def _grid(lead: tuple[int, ...], n_q: int, q_bs: int, slots: int) -> tuple[int, int, int]:
    """The count kernels' grid: (batch·head, row block, chunk of its rows)."""
    return math.prod(lead), n_q, -(-q_bs // _row_chunk(q_bs, slots))


def _scratch(lead: tuple[int, ...], n_q: int, n_kv: int, device: torch.device) -> Tensor:
    """kv_idx and full_kv_idx, zeroed: the count kernels' difference arrays, in place."""
    return torch.zeros(2, *lead, n_q, n_kv, dtype=torch.int32, device=device)


@dataclass(frozen=True)
class Tiles:
    """Tile sizes and warps of the two fixed kernels (``benchmarks/tune_build.py`` times
    the alternatives)."""

    kv_chunk: int = 1024  # key blocks of a row scanned at a time (finish kernel)
    finish_warps: int = 4
    q_chunk: int = 256  # row blocks × key blocks: the column kernel's tile
    strip: int = 4
    column_warps: int = 4


TILES = Tiles()


Launch = tuple[Any, tuple[int, ...], tuple[Any, ...], dict[str, Any]]  # kernel, grid, args, kw


class _Kernel:
    """One kernel at a fixed grid and constexprs, launched through the compiled binary that
    Triton's JIT returned for the call's specialization (its first launch with a given
    ``key`` goes through the JIT, which also compiles; later ones skip the JIT's argument
    binding and cache lookup). ``key`` must tell apart every call
    Triton would specialize differently: the plans pass what can vary between their calls
    (input alignments and strides), all else being fixed per plan. Under Triton's
    interpreter every launch goes through the JIT."""

    def __init__(self, jit: Any, grid: tuple[int, ...], kw: dict[str, Any]) -> None:
        self.jit, self.kw = jit, kw
        self.grid = (*grid, *(1,) * (3 - len(grid)))
        # The launcher takes every parameter in order, constexprs too: ours come last and
        # are the parameters given by keyword.
        names = [n for n in jit.arg_names if n in kw]
        assert names == jit.arg_names[len(jit.arg_names) - len(names):], names
        self.tail = tuple(kw[n] for n in names)
        self.runners: dict[Any, Any] = {}

    def __call__(self, args: tuple[Any, ...], key: Any = (), stream: Any = None) -> None:
        """Launch on ``stream`` (a raw CUDA stream; None: the current one)."""
        runner = self.runners.get(key)
        if runner is not None:
            runner(*args, *self.tail, stream=stream)
            return
        binary = self.jit[self.grid](*args, **self.kw)
        if isinstance(binary, triton.compiler.CompiledKernel):
            self.runners[key] = binary[self.grid]


def _finish_launch(bufs: tuple[Any, ...], bh: int, n_q: int, n_kv: int) -> Launch:
    """The finish kernel over (kv_num, kv_idx, full_kv_num, full_kv_idx, cls): tensors, or
    their dtypes (to compile only)."""
    return (kernels.finish_kernel, (bh, n_q), (*bufs, n_q, n_kv),
            {"CHUNK": TILES.kv_chunk, "num_warps": TILES.finish_warps})


def _column_launch(bufs: tuple[Any, ...], bh: int, n_q: int, n_kv: int) -> Launch:
    """The column kernel over (cls, q_num, q_idx, full_q_num, full_q_idx)."""
    return (kernels.column_strip_kernel, (bh, -(-n_kv // TILES.strip)), (*bufs, n_q, n_kv),
            {"QC": TILES.q_chunk, "STRIP": TILES.strip, "num_warps": TILES.column_warps})


def _finish(scratch: Tensor, n_q: int, n_kv: int, stream: Any = None) -> tuple[Tensor, ...]:
    """All eight tensors from the counted difference arrays: classes and kv_* per row
    block (kv_idx and full_kv_idx in scratch's place), then the q-direction ones read down
    the class bytes' columns (launched on ``stream``, a raw CUDA stream; None: the current
    one)."""
    kv_idx, full_kv_idx = scratch[0], scratch[1]
    lead = kv_idx.shape[:-2]
    kv_num, full_kv_num = (kv_idx.new_empty(*lead, n_q) for _ in range(2))
    cls = kv_idx.new_empty(*lead, n_q, n_kv, dtype=torch.int8)
    kv = (kv_num, kv_idx, full_kv_num, full_kv_idx)
    finish, column = _fixed_kernels(lead.numel(), n_q, n_kv)
    finish((*kv, cls, n_q, n_kv), cls.device, stream)
    q_num, full_q_num = (cls.new_empty(*lead, n_kv, dtype=torch.int32) for _ in range(2))
    q_idx = cls.new_empty(*lead, n_kv, n_q, dtype=torch.int32)
    full_q_idx = torch.empty_like(q_idx)
    q = (q_num, q_idx, full_q_num, full_q_idx)
    column((cls, *q, n_q, n_kv), cls.device, stream)
    return (*kv, *q)


@functools.lru_cache(maxsize=1024)
def _fixed_kernels(bh: int, n_q: int, n_kv: int) -> tuple[_Kernel, _Kernel]:
    """The finish and column kernels at this grid, keyed by device when called (their
    tensors are allocated by ``_finish``: aligned alike on every call)."""
    launches = (make((None,) * 5, bh, n_q, n_kv) for make in (_finish_launch, _column_launch))
    finish, column = (_Kernel(kernel, grid, kw) for kernel, grid, _, kw in launches)
    return finish, column


def classify_rows(
    rows: Rows, q_len: int, kv_len: int, block_size: tuple[int, int], release: bool = False
) -> tuple[Tensor, ...]:
    """``flex.index_tensors(blocks.classify(rows, ...))``, equal tensor for tensor, fused.

    ``release=True`` empties ``rows`` once the first kernel has read them, so the q-direction
    outputs can take their memory (the build's peak is then about its own output).
    """
    q_bs, kv_bs = block_size
    n_q, n_kv = blocks.counts(q_len, kv_len, q_bs, kv_bs)
    lead, k = rows.lo.shape[:-2], rows.lo.shape[-1]
    fields = [x.expand(rows.lo.shape).contiguous() for x in rows.tensors()]
    scratch = _scratch(tuple(lead), n_q, n_kv, rows.lo.device)
    slots = _slots(k)
    kernels.rows_count_kernel[_grid(tuple(lead), n_q, q_bs, slots)](
        *fields, *scratch, q_len, n_q, n_kv, *rows.family.enumerated(kv_bs), K=k, KP=slots,
        Q_BS=q_bs, RC=_row_chunk(q_bs, slots), KV_BS=kv_bs, FAMILY=rows.family.level is not None,
        num_warps=COUNT_WARPS,
    )
    if release:
        del fields
        empty = rows.lo.new_empty(0)
        rows.lo = rows.hi = rows.phase = rows.stride = rows.length = empty
    return _finish(scratch, n_q, n_kv)


def classify(
    rows: Rows, q_len: int, kv_len: int, block_size: tuple[int, int], release: bool = False
) -> tuple[Tensor, ...]:
    """The eight BlockMask tensors of these rows: fused kernels on CUDA where they fit, else
    ``blocks.classify`` and ``flex.index_tensors`` (``release`` as in ``classify_rows``)."""
    k = rows.lo.shape[-1]
    if rows.lo.device.type == "cuda" and fits(_slots(k), q_len, kv_len, block_size,
                                              rows.family.stride):
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
        self.families: dict[tuple[int, ...], lower.FamilyPlan] = {}

    def family(self, sizes: Mapping[str, int]) -> lower.FamilyPlan:
        """The strided family's plan at these sizes (cached: a build does no analysis)."""
        key = tuple(sizes[k] for k in ir.SIZES)
        if key not in self.families:
            self.families[key] = lower.family_plan(self.mask, sizes)
        return self.families[key]

    def slots(self, sizes: Mapping[str, int]) -> int:
        """Interval slots per row a program holds at these sizes."""
        return _slots(self.plan(sizes)[1])

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


def _count_parts(
    mask: ir.MaskIR, sizes: Mapping[str, int], block_size: tuple[int, int]
) -> Launch:
    """The spec's generated count kernel, its grid, the arguments after the inputs and
    scratch (sizes, the family's, the loops') and its constexprs: fixed per sizes."""
    g = generated(mask)
    loops, slots = g.plan(sizes)[0], g.slots(sizes)  # cached per sizes: no per-call analysis
    (q_bs, kv_bs), lead = block_size, lower.lead_shape(mask, sizes)
    n_q, n_kv = blocks.counts(sizes["Q_LEN"], sizes["KV_LEN"], q_bs, kv_bs)
    tail = (sizes["B"], sizes["H"], sizes["Q_LEN"], sizes["KV_LEN"], lead[1], n_q, n_kv,
            *g.family(sizes).enumerated(kv_bs), *loops)
    kw = {"KP": slots, "Q_BS": q_bs, "RC": _row_chunk(q_bs, slots), "KV_BS": kv_bs,
          "FAMILY": mask.has_families(), "num_warps": COUNT_WARPS}
    return g.kernel, _grid(lead, n_q, q_bs, slots), tail, kw


def _count_launch(
    mask: ir.MaskIR, sizes: Mapping[str, int], inputs: Mapping[str, Tensor],
    scratch: tuple[Any, Any], block_size: tuple[int, int],
) -> Launch:
    """The spec's generated count kernel into scratch (tensors, or dtypes to compile only)."""
    kernel, grid, tail, kw = _count_parts(mask, sizes, block_size)
    return kernel, grid, (*triton_rows.input_args(mask, inputs), *scratch, *tail), kw


def _fits(mask: ir.MaskIR, sizes: Mapping[str, int], block_size: tuple[int, int]) -> bool:
    g = generated(mask)
    return fits(g.slots(sizes), sizes["Q_LEN"], sizes["KV_LEN"], block_size,
                g.family(sizes).stride)


@dataclass(frozen=True)
class Plan:
    """One configuration's build (spec, sizes, block size, device) worked out once: output
    shapes, the count kernel's grid and size and loop arguments, its launcher. ``run``
    only allocates and launches, so a repeated build does no analysis and skips Triton's
    argument binding (``_Kernel``)."""

    mask: ir.MaskIR
    device: torch.device
    lead: tuple[int, ...]
    n_q: int
    n_kv: int
    count: _Kernel
    tail: tuple[Any, ...]  # the count kernel's arguments after the inputs and scratch
    searched: frozenset[str]  # inputs the kernel binary-searches (``triton_rows``)

    def run(self, inputs: Mapping[str, Tensor]) -> tuple[Tensor, ...]:
        """The eight tensors from these bound inputs (on the plan's device)."""
        scratch = _scratch(self.lead, self.n_q, self.n_kv, self.device)
        args = triton_rows.input_args(self.mask, inputs, self.searched)
        # What Triton specializes on and may differ between calls: the inputs' alignment
        # and strides (their shapes and dtypes are fixed by the sizes and the spec).
        key = tuple((t.data_ptr() % 16, t.stride()) for t in inputs.values())
        stream = (torch.cuda.current_stream(self.device).cuda_stream
                  if self.device.type == "cuda" else None)
        self.count((*args, scratch[0], scratch[1], *self.tail), key, stream)
        return _finish(scratch, self.n_q, self.n_kv, stream)


_PLANS: dict[tuple[Any, ...], Plan | None] = {}
MAX_PLANS = 1024  # configurations remembered; past that the cache starts again


def _plan_key(mask: ir.MaskIR, sizes: Mapping[str, int], device: torch.device,
              block_size: tuple[int, int]) -> tuple[Any, ...]:
    return (id(mask), sizes["B"], sizes["H"], sizes["Q_LEN"], sizes["KV_LEN"], block_size,
            device)


def plan(
    mask: ir.MaskIR, sizes: Mapping[str, int], device: torch.device,
    block_size: tuple[int, int],
) -> Plan | None:
    """The build plan of this configuration (cached), None when the fused kernels decline
    its shape (``fits``). Its kernels should be compiled first (``compiled``), else its
    first run compiles them."""
    device = indexed(device)
    key = _plan_key(mask, sizes, device, block_size)
    if key in _PLANS and (_PLANS[key] is None or _PLANS[key].mask is mask):
        return _PLANS[key]
    made = None
    if _fits(mask, sizes, block_size):
        kernel, grid, tail, kw = _count_parts(mask, sizes, block_size)
        n_q, n_kv = blocks.counts(sizes["Q_LEN"], sizes["KV_LEN"], *block_size)
        made = Plan(mask, device, lower.lead_shape(mask, sizes), n_q, n_kv,
                    _Kernel(kernel, grid, kw), tail, frozenset(triton_rows.searched_inputs(mask)))
    if len(_PLANS) >= MAX_PLANS:
        _PLANS.clear()
    _PLANS[key] = made
    return made


def indexed(device: torch.device) -> torch.device:
    """A CUDA device with its index (``cuda`` is the current one)."""
    if device.index is None and device.type == "cuda":
        return torch.device(device.type, torch.cuda.current_device())
    return device


def build(
    mask: ir.MaskIR, sizes: Mapping[str, int], inputs: Mapping[str, Tensor],
    device: torch.device, block_size: tuple[int, int],
) -> tuple[Tensor, ...] | None:
    """The eight tensors from the spec's generated count kernel (rows computed in registers,
    no row tensor) and ``_finish``, by the configuration's ``plan``. None when the shape
    does not fit (see ``fits``)."""
    p = plan(mask, sizes, device, block_size)
    return None if p is None else p.run(inputs)


def _compile(mask: ir.MaskIR, sizes: Mapping[str, int], inputs: Mapping[str, Tensor],
             device: torch.device, block_size: tuple[int, int]) -> None:
    """Compile the build's three kernels as ``build`` will launch them, and their launchers,
    without a CUDA call that a concurrent graph capture forbids (no launch, no allocation,
    no sync): the first launch then only loads them."""
    start = time.perf_counter()
    log.info("%s: compiling the build kernels (block size %s, %d slots, %s)", mask.name,
             block_size, generated(mask).slots(sizes), device)
    i32, i8 = torch.int32, torch.int8
    n_q, n_kv = blocks.counts(sizes["Q_LEN"], sizes["KV_LEN"], *block_size)
    bh = math.prod(lower.lead_shape(mask, sizes))
    launches = [_count_launch(mask, sizes, inputs, (i32, i32), block_size),
                _finish_launch((i32, i32, i32, i32, i8), bh, n_q, n_kv),
                _column_launch((i8, i32, i32, i32, i32), bh, n_q, n_kv)]
    with torch.cuda.device(device):
        launcher = getattr(triton.runtime.driver.active, "launcher_cls", None)
        for kernel, grid, args, kw in launches:
            binary = kernel.warmup(*args, grid=grid, **kw)
            if launcher is not None:  # builds (and caches) the binary's launcher
                launcher(binary.src, binary.metadata)
    log.info("%s: build kernels compiled in %.1f s", mask.name, time.perf_counter() - start)


_COMPILED = background.Once()
BACKGROUND_JIT = True  # a configuration's first builds take the torch path while it compiles


def compiled(
    mask: ir.MaskIR, sizes: Mapping[str, int], inputs: Mapping[str, Tensor],
    device: torch.device, block_size: tuple[int, int], wait: bool = False,
) -> bool:
    """Whether this build's kernels (spec, interval slots, block size, tiles, device) are
    compiled; if not, starts compiling them on a worker thread (``wait``: until done).
    Inside a CUDA graph capture it waits: the torch path would sync the device."""
    if not _fits(mask, sizes, block_size):
        return True  # ``build`` declines the shape: nothing to compile
    device = indexed(device)
    g = generated(mask)
    key = (id(g.kernel), g.slots(sizes), block_size, TILES, device)
    wait = wait or not BACKGROUND_JIT or torch.cuda.is_current_stream_capturing()
    work = functools.partial(_compile, mask, dict(sizes), dict(inputs), device, block_size)
    return _COMPILED.done(key, work, wait)


def torch_path(
    mask: ir.MaskIR, sizes: Mapping[str, int], inputs: Mapping[str, Tensor],
    device: torch.device, block_size: tuple[int, int],
) -> tuple[Tensor, ...]:
    """Lowering and ``blocks.classify`` a chunk of row blocks at a time
    (``blocks.build_grid``): torch ops only, nothing to compile (the CPU's path, and a CUDA
    build's while its kernels compile)."""
    return flex.index_tensors(blocks.build_grid(mask, sizes, inputs, device, block_size))


def tensors(
    mask: ir.MaskIR, sizes: Mapping[str, int], inputs: Mapping[str, Tensor],
    device: torch.device, block_size: tuple[int, int],
) -> tuple[Tensor, ...]:
    """The spec's eight BlockMask tensors at these sizes and bound inputs: the generated
    kernel on CUDA where it fits (``torch_path`` while it compiles, see ``compiled``; a
    configuration built before runs its cached ``plan`` at once), else lowering to row
    intervals and ``classify`` (``torch_path`` off CUDA)."""
    if device.type != "cuda" or triton is None:
        return torch_path(mask, sizes, inputs, device, block_size)
    p = _PLANS.get(_plan_key(mask, sizes, indexed(device), block_size))
    if p is not None and p.mask is mask:
        return p.run(inputs)
    if not compiled(mask, sizes, inputs, device, block_size):
        log.info("%s: building on the torch path while the kernels compile", mask.name)
        return torch_path(mask, sizes, inputs, device, block_size)
    out = build(mask, sizes, inputs, device, block_size)
    if out is not None:
        return out
    rows = lower.row_slots(mask, sizes, inputs, device)
    return classify(rows, sizes["Q_LEN"], sizes["KV_LEN"], block_size, release=True)
