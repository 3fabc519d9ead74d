"""Launch plans and caches of CUDA builds: the fixed kernels at their grids, each spec's
generated count kernel, and one ``Plan`` per configuration (spec, sizes, block size,
device) worked out once, so a repeated build only allocates and launches.

A build is three kernels (``kernels``): the spec's generated count kernel
(``generator``) turns each row block's rows into difference arrays in the zeroed kv_idx and
full_kv_idx; ``finish_kernel`` classifies each row block's key blocks into a byte grid and
writes the ordered kv-direction indices over the scratch; ``column_strip_kernel`` reads the
bytes down the columns and writes the q-direction ones. The byte grid is the only scratch,
and no array in a program grows with the sequence: one compiled kernel serves every length.
``dispatch`` decides when these run and when the torch path does.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from maskspec import blocks, codegen, ir, lower, scan
from maskspec.caches import MISSING, PerMask
from maskspec.context import BuildContext
from maskspec.cuda import generator, kernels
from maskspec.cuda.kernels import triton

ROW_CHUNK = 16  # rows of a row block counted by one program (fewer when rows hold many slots)
COUNT_WARPS = 2
MAX_PAIRS = 2**12  # interval pairs one program compares (rows × slots²) in the gap search
MAX_SLOTS = 128  # interval slots per row past which the torch path classifies
MIN_SLOTS = 2  # slots per row a program holds at least


def pow2(n: int) -> int:
    """The least power of two at least n (Triton's ranges are powers of two)."""
    return 1 << max(0, n - 1).bit_length()


def slots_held(k: int) -> int:
    """Slots per row held by a program: a power of two, at least MIN_SLOTS. The gap search
    costs slots² per row, so few slots are fast; strided families keep a spec's slot count
    fixed as KV_LEN grows (EAGLE-3: 2), so TTT steps share one compiled kernel."""
    return max(MIN_SLOTS, pow2(k))


def row_chunk(q_bs: int, slots: int) -> int:
    """Rows per count program: ROW_CHUNK, fewer for small blocks or many slots per row."""
    return min(ROW_CHUNK, pow2(q_bs), max(1, MAX_PAIRS // slots**2))


def fits(slots: int, q_len: int, kv_len: int, block_size: tuple[int, int],
         stride: int = 0) -> bool:
    """Whether the fused kernels can classify rows of this many slots (else use the torch
    path): at most MAX_SLOTS, keys, block ends and the arithmetic of a family of this stride
    within int32, and a grid within CUDA's limits (65535 in y and z)."""
    n_q, n_kv = blocks.counts(q_len, kv_len, *block_size)
    chunks = -(-block_size[0] // row_chunk(block_size[0], slots))
    return (triton is not None and n_q <= 65535 and chunks <= 65535
            and (2 * kv_len + 3 * stride if stride else kv_len) + block_size[1] < 2**31 - 1
            and -(-n_kv // TILES.strip) <= 65535 and slots <= MAX_SLOTS)


def count_grid(lead: tuple[int, ...], n_q: int, q_bs: int, slots: int) -> tuple[int, int, int]:
    """The count kernels' grid: (batch·head, row block, chunk of its rows)."""
    return math.prod(lead), n_q, -(-q_bs // row_chunk(q_bs, slots))


ALIGN = 32  # int32 entries: each output starts 128 bytes in, as its own allocation would


def aligned(n: int) -> int:
    """n entries rounded up to the next output's start."""
    return -(-n // ALIGN) * ALIGN


def _rest_shapes(lead: tuple[int, ...], n_q: int, n_kv: int) -> tuple[tuple[int, ...], ...]:
    """kv_num, full_kv_num, q_num, full_q_num, q_idx, full_q_idx: ``finish``'s outputs after
    the scratch pair, in their order in the buffer."""
    return ((*lead, n_q), (*lead, n_q), (*lead, n_kv), (*lead, n_kv), (*lead, n_kv, n_q),
            (*lead, n_kv, n_q))


def output_buffer(lead: tuple[int, ...], n_q: int, n_kv: int, device: torch.device,
                  zeroed: bool = True) -> Tensor:
    """kv_idx and full_kv_idx as (2, *lead, n_q, n_kv), ``zeroed`` (the count kernels'
    difference arrays, in place): the front of one int32 buffer that ``finish`` lays the
    other six outputs in, so a build's eight tensors are one allocation (a CUDA graph's
    replay copies them out in one copy, with no packing copy inside the graph)."""
    one = aligned(math.prod(lead) * n_q * n_kv)
    total = 2 * one + sum(aligned(math.prod(s)) for s in _rest_shapes(lead, n_q, n_kv))
    flat = torch.empty(total, dtype=torch.int32, device=device)
    if zeroed:
        flat[:2 * one].zero_()
    return flat.as_strided((2, *lead, n_q, n_kv), (one, *contiguous_strides((*lead, n_q, n_kv))))


def contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    """A contiguous tensor's strides at this shape."""
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= n
    return tuple(reversed(strides))


def _rest(scratch: Tensor, n_q: int, n_kv: int) -> list[Tensor]:
    """``_rest_shapes``' tensors as views of the buffer behind ``output_buffer``'s scratch."""
    flat = scratch.new_empty(0).set_(scratch.untyped_storage())
    at, out = 2 * scratch.stride(0), []
    for shape in _rest_shapes(tuple(scratch.shape[1:-2]), n_q, n_kv):
        n = math.prod(shape)
        out.append(flat[at:at + n].view(shape))
        at += aligned(n)
    assert scratch.storage_offset() == 0 and at <= flat.numel(), "not an output_buffer"
    return out


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


def warm(launches: list[Launch], device: torch.device) -> None:
    """Compile each launch's kernel for its arguments (tensors or dtypes) and build its
    launcher, with no CUDA call that a concurrent graph capture forbids (no launch, no
    allocation, no sync): the first launch then only loads them."""
    with torch.cuda.device(device):
        launcher = getattr(triton.runtime.driver.active, "launcher_cls", None)
        for kernel, grid, args, kw in launches:
            binary = kernel.warmup(*args, grid=grid, **kw)
            if launcher is not None:  # builds (and caches) the binary's launcher
                launcher(binary.src, binary.metadata)


def finish_launch(bufs: tuple[Any, ...], bh: int, n_q: int, n_kv: int,
                  from_cls: bool = False) -> Launch:
    """The finish kernel over (kv_num, kv_idx, full_kv_num, full_kv_idx, cls): tensors, or
    their dtypes (to compile only); ``from_cls``: reading a written byte grid."""
    return (kernels.finish_kernel, (bh, n_q), (*bufs, n_q, n_kv),
            {"CHUNK": TILES.kv_chunk, "FROM_CLS": from_cls, "num_warps": TILES.finish_warps})


def column_launch(bufs: tuple[Any, ...], bh: int, n_q: int, n_kv: int) -> Launch:
    """The column kernel over (cls, q_num, q_idx, full_q_num, full_q_idx)."""
    return (kernels.column_strip_kernel, (bh, -(-n_kv // TILES.strip)), (*bufs, n_q, n_kv),
            {"QC": TILES.q_chunk, "STRIP": TILES.strip, "num_warps": TILES.column_warps})


def finish(scratch: Tensor, n_q: int, n_kv: int, stream: Any = None,
           cls: Tensor | None = None) -> tuple[Tensor, ...]:
    """All eight tensors from the counted difference arrays (``scratch``, an
    ``output_buffer``, whose buffer holds them all): classes and kv_* per row
    block (kv_idx and full_kv_idx in scratch's place), then the q-direction ones read down
    the class bytes' columns (launched on ``stream``, a raw CUDA stream; None: the current
    one). Given ``cls``, a written byte grid (1 PARTIAL, 2 FULL), the classes are those and
    scratch is only the kv_idx pair's room."""
    kv_idx, full_kv_idx = scratch[0], scratch[1]
    lead = kv_idx.shape[:-2]
    kv_num, full_kv_num, q_num, full_q_num, q_idx, full_q_idx = _rest(scratch, n_q, n_kv)
    from_cls = cls is not None
    if cls is None:
        cls = kv_idx.new_empty(*lead, n_q, n_kv, dtype=torch.int8)
    kv = (kv_num, kv_idx, full_kv_num, full_kv_idx)
    finish, column = _fixed_kernels(lead.numel(), n_q, n_kv, from_cls)
    finish((*kv, cls, n_q, n_kv), cls.device, stream)
    q = (q_num, q_idx, full_q_num, full_q_idx)
    column((cls, *q, n_q, n_kv), cls.device, stream)
    return (*kv, *q)


EDGE_CHUNK = 2048  # ids one program of the run-edge kernels reads
EDGE_TOPS = 256  # chunk summaries a completing program reads at a time


def edges_launches(bufs: tuple[Any, ...], rows: int, n: int) -> list[Launch]:
    """The two run-edge kernels over (ids, starts, ends, lows, highs): tensors, or dtypes
    (to compile only); the ids' strides come from them when given, else are placeholders."""
    ids, starts, ends, lows, highs = bufs
    strides = ids.stride() if isinstance(ids, Tensor) else (n, 1)
    chunks, grid = -(-n // EDGE_CHUNK), (-(-n // EDGE_CHUNK), rows)
    return [(kernels.edges_chunk_kernel, grid,
             (ids, *strides, starts, ends, lows, highs, n, chunks), {"CHUNK": EDGE_CHUNK}),
            (kernels.edges_fix_kernel, grid, (starts, ends, lows, highs, n, chunks),
             {"CHUNK": EDGE_CHUNK, "TOPS": EDGE_TOPS})]


@functools.lru_cache(maxsize=1024)
def _edge_kernels(rows: int, n: int, device: torch.device) -> tuple[_Kernel, _Kernel]:
    """The run-edge kernels at this grid on this device (a launcher is bound to the device
    it was loaded on; keyed by the ids' alignment, strides, dtype)."""
    return tuple(_Kernel(k, grid, kw) for k, grid, _, kw in  # type: ignore[return-value]
                 edges_launches((None,) * 5, rows, n))


def doc_edges(ids: Tensor, stream: Any = None) -> tuple[Tensor, Tensor]:
    """Where each position's run of equal ids starts and ends (one past), (rows, n) int32
    for (rows, n) non-decreasing ids: what the generated kernels read for document edges
    (``torch.searchsorted`` of each id, left and right, in its row), two launches."""
    rows, n = ids.shape
    starts = torch.empty(rows, n, dtype=torch.int32, device=ids.device)
    ends = torch.empty_like(starts)
    if starts.numel() == 0:
        return starts, ends
    if rows > scan.MAX_GRID:  # the kernels' rows are a grid dim CUDA caps: torch's search
        flat = ids.contiguous()
        return tuple(torch.searchsorted(flat, flat, right=right).to(torch.int32)
                     for right in (False, True))  # type: ignore[return-value]
    chunks = -(-n // EDGE_CHUNK)
    lows, highs = (starts.new_empty(rows, chunks) for _ in range(2))
    runs, fix = _edge_kernels(rows, n, ids.device)
    key = (ids.data_ptr() % 16, ids.stride(), ids.dtype)
    with scan.on_device(ids.device):
        runs((ids, *ids.stride(), starts, ends, lows, highs, n, chunks), key, stream)
        fix((starts, ends, lows, highs, n, chunks), (), stream)
    return starts, ends


@functools.lru_cache(maxsize=1024)
def _fixed_kernels(bh: int, n_q: int, n_kv: int, from_cls: bool = False
                   ) -> tuple[_Kernel, _Kernel]:
    """The finish and column kernels at this grid, keyed by device when called (their
    tensors are allocated by ``finish``: aligned alike on every call)."""
    launches = (finish_launch((None,) * 5, bh, n_q, n_kv, from_cls),
                column_launch((None,) * 5, bh, n_q, n_kv))
    finish, column = (_Kernel(kernel, grid, kw) for kernel, grid, _, kw in launches)
    return finish, column


class _Generated:
    """A spec's generated build kernel, and its loop arguments per sizes (computed once)."""

    def __init__(self, mask: ir.MaskIR) -> None:
        self.mask = mask
        src = generator.source(mask)
        if src not in _KERNELS:
            _KERNELS[src] = codegen.load_source(src, generator.KERNEL)
        self.kernel = _KERNELS[src]
        self.plans: dict[tuple[int, ...], tuple[list[int], int]] = {}
        self.families: dict[tuple[int, ...], lower.FamilyPlan] = {}

    def family(self, sizes: Mapping[str, int]) -> lower.FamilyPlan:
        """The strided family's plan at these sizes (cached: a build does no analysis)."""
        key = ir.size_key(sizes)
        if key not in self.families:
            self.families[key] = lower.family_plan(self.mask, sizes)
        return self.families[key]

    def slots(self, sizes: Mapping[str, int]) -> int:
        """Interval slots per row a program holds at these sizes."""
        return slots_held(self.plan(sizes)[1])

    def plan(self, sizes: Mapping[str, int]) -> tuple[list[int], int]:
        key = ir.size_key(sizes)
        if key not in self.plans:
            self.plans[key] = generator.plan(self.mask, sizes)
        return self.plans[key]


_KERNELS: dict[str, Any] = {}  # generated source → its JIT function (one per spec)
_GENERATED = PerMask(1024)


def generated(mask: ir.MaskIR) -> _Generated:
    """The spec's generated kernel (built on first use; the IR is immutable)."""
    g = _GENERATED.get(mask, None)
    return _GENERATED.put(mask, None, _Generated(mask)) if g is None else g


def _count_parts(ctx: BuildContext) -> Launch:
    """The spec's generated count kernel, its grid, the arguments after the inputs and
    scratch (sizes, the family's, the loops') and its constexprs: fixed per sizes."""
    mask, sizes = ctx.mask, ctx.sizes
    g = generated(mask)
    loops, slots = g.plan(sizes)[0], g.slots(sizes)  # cached per sizes: no per-call analysis
    (q_bs, kv_bs), lead = ctx.block_size, lower.lead_shape(mask, sizes)
    n_q, n_kv = blocks.counts(ctx.q_len, ctx.kv_len, q_bs, kv_bs)
    tail = (sizes["B"], sizes["H"], ctx.q_len, ctx.kv_len, lead[1], n_q, n_kv,
            *g.family(sizes).enumerated(kv_bs), *loops)
    kw = {"KP": slots, "Q_BS": q_bs, "RC": row_chunk(q_bs, slots), "KV_BS": kv_bs,
          "FAMILY": mask.has_families(), "num_warps": COUNT_WARPS}
    return g.kernel, count_grid(lead, n_q, q_bs, slots), tail, kw


def count_launch(ctx: BuildContext, scratch: tuple[Any, Any]) -> Launch:
    """The spec's generated count kernel into scratch (tensors, or dtypes to compile only)."""
    kernel, grid, tail, kw = _count_parts(ctx)
    args = generator.input_args(ctx.mask, ctx.inputs, edges=_edge_dtypes)
    return kernel, grid, (*args, *scratch, *tail), kw


def _edge_dtypes(ids: Any) -> tuple[torch.dtype, torch.dtype]:
    return (torch.int32, torch.int32)


def edge_warm_launches(ctx: BuildContext) -> list[Launch]:
    """The run-edge kernels as the build's documents launch them (to compile only)."""
    i32 = torch.int32
    return [launch for name in sorted(generator.searched_inputs(ctx.mask))
            for launch in edges_launches((ctx.inputs[name], i32, i32, i32, i32),
                                         *ctx.inputs[name].shape)]


def fits_build(ctx: BuildContext) -> bool:
    """``fits`` for the spec's generated kernel at the build's sizes."""
    g = generated(ctx.mask)
    return fits(g.slots(ctx.sizes), ctx.q_len, ctx.kv_len, ctx.block_size,
                g.family(ctx.sizes).stride)


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
    searched: frozenset[str]  # inputs whose run edges the kernel reads (``generator``)

    def run(self, inputs: Mapping[str, Tensor]) -> tuple[Tensor, ...]:
        """The eight tensors from these bound inputs (on the plan's device)."""
        scratch = output_buffer(self.lead, self.n_q, self.n_kv, self.device)
        stream = (torch.cuda.current_stream(self.device).cuda_stream
                  if self.device.type == "cuda" else None)
        args = generator.input_args(self.mask, inputs, self.searched,
                                    lambda ids: doc_edges(ids, stream))
        # What Triton specializes on and may differ between calls: the inputs' alignment
        # and strides (their shapes and dtypes are fixed by the sizes and the spec).
        key = tuple((t.data_ptr() % 16, t.stride()) for t in inputs.values())
        self.count((*args, scratch[0], scratch[1], *self.tail), key, stream)
        return finish(scratch, self.n_q, self.n_kv, stream)


_PLANS = PerMask(1024)  # configurations remembered; past that the cache starts again


def _plan_key(ctx: BuildContext, device: torch.device) -> tuple[Any, ...]:
    return (*ctx.size_key(), ctx.block_size, device)


def cached(ctx: BuildContext) -> Plan | None:
    """The configuration's plan if one was made (a CUDA build's first look)."""
    return _PLANS.get(ctx.mask, _plan_key(ctx, indexed(ctx.device)))


def plan(ctx: BuildContext) -> Plan | None:
    """The build plan of this configuration (cached), None when the fused kernels decline
    its shape (``fits``). Its kernels should be compiled first (``dispatch.compiled``),
    else its first run compiles them."""
    device = indexed(ctx.device)
    key = _plan_key(ctx, device)
    found = _PLANS.get(ctx.mask, key, MISSING)
    if found is not MISSING:
        return found
    made = None
    if fits_build(ctx):
        kernel, grid, tail, kw = _count_parts(ctx)
        n_q, n_kv = blocks.counts(ctx.q_len, ctx.kv_len, *ctx.block_size)
        made = Plan(ctx.mask, device, lower.lead_shape(ctx.mask, ctx.sizes), n_q, n_kv,
                    _Kernel(kernel, grid, kw), tail,
                    frozenset(generator.searched_inputs(ctx.mask)))
    return _PLANS.put(ctx.mask, key, made)


def indexed(device: torch.device) -> torch.device:
    """A CUDA device with its index (``cuda`` is the current one)."""
    if device.index is None and device.type == "cuda":
        return torch.device(device.type, torch.cuda.current_device())
    return device
