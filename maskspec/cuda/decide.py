"""The element fallback as one generated Triton kernel: the allowed pairs of a block,
counted from the element meaning in registers.

``elements.decide`` evaluates the meaning with torch ops on chunks of pairs, a few dozen
launches per chunk: on a GPU that loop, not the pairs, is the cost (hundreds of ms at 16K
where compiled create_block_mask takes about one). Here the same conditions
(``ir.Term.element_conds``, printed by the build generator's ``TritonEmitter``) are source for
one program per block, which walks the block in tiles and counts its allowed pairs: FULL
where that is the block's area (a ragged edge block never reaches it), PARTIAL where it is
more than zero. Two modes of one kernel: the blocks a classification by parts leaves
undecided (``counts``), or every block, written as the finish kernels' byte grid
(``classes``, ``build``: a small build's whole fallback in three launches). Nothing is
materialized per pair; a block costs its pairs however many blocks there are.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from maskspec import background, blocks, codegen, elements, ir, lower
from maskspec.caches import MISSING, PerMask
from maskspec.context import BuildContext
from maskspec.cuda import generator, plans
from maskspec.cuda.kernels import triton

log = logging.getLogger("maskspec")

KERNEL = "decide_kernel"
SIZE_ARGS = ("B", "H", "Q_LEN", "KV_LEN", "n_rows", "pos_rows", "pos_stride", "H_ROWS", "n_q",
             "n_kv")
CONSTEXPRS = ("Q_BS", "KV_BS", "RC", "KC", "HAS_POS", "DENSE")
TILE = 1024  # pairs a program evaluates at a time (int64 registers per value)
WARPS = 2
# A build whose blocks hold at most this many pairs (B'·H'·Q_LEN·KV_LEN) decides every block
# by the kernel (``dense``): below it the split's host work costs more than its pairs.
DENSE_PAIRS = 1 << 30
MAX_GRID = 65535  # CUDA's limit on a grid's second and third dims

_PRELUDE = """import triton
import triton.language as tl

from maskspec.cuda.kernels import clamp, floordiv, mod
"""


def _meaning(mask: ir.MaskIR, em: generator.TritonEmitter) -> list[str]:
    """The tile's allowed pairs: a line per condition of each region, the regions OR'd
    into ``ok``."""
    lines = []
    for i, t in enumerate(mask.terms):
        lines += [f"# region {t.name}", f"t{i} = zero == 0"]
        lines += [f"t{i} = t{i} & ({em.cond(c)})" for c in t.element_conds()]
    return [*lines, "ok = " + " | ".join(f"t{i}" for i in range(len(mask.terms)))]


def source(mask: ir.MaskIR) -> str:
    """The generated module: one program per block of ``where`` (b', h', row block, key
    block), its allowed pairs summed tile by tile into ``count``."""
    em = generator.TritonEmitter()
    meaning = _meaning(mask, em)
    inputs, input_sizes = generator.input_names(mask, set())  # no document search here
    tile = [
        "c = c0 + tl.arange(0, KC)[None, :]",
        "kv = kb * KV_BS + c",
        "zero = tl.zeros((RC, KC), tl.int64)",
        "real = (r < Q_BS) & (row < n_rows) & (c < KV_BS) & (kv < KV_LEN)",
        *meaning,
        "total += (real & ok).to(tl.int32)",
    ]
    body = [
        *(f"{n} = {n}.to(tl.int64)" for n in SIZE_ARGS),
        "if DENSE:  # every block: program (b'·h', row block, key block)",
        "    bh = tl.program_id(0).to(tl.int64)",
        "    b, h = bh // H_ROWS, bh % H_ROWS",
        "    rb = tl.program_id(1).to(tl.int64)",
        "    kb = tl.program_id(2).to(tl.int64)",
        "else:  # the blocks listed in where",
        "    i = tl.program_id(0).to(tl.int64)",
        "    b = tl.load(where + i * 4)",
        "    h = tl.load(where + i * 4 + 1)",
        "    rb = tl.load(where + i * 4 + 2)",
        "    kb = tl.load(where + i * 4 + 3)",
        "total = tl.zeros((RC, KC), tl.int32)",
        "for r0 in range(0, Q_BS, RC):",
        "    r = r0 + tl.arange(0, RC)[:, None]",
        "    row = rb * Q_BS + r",
        "    if HAS_POS:  # row r of the build is query pos[b or 0, r]",
        "        at = tl.where(pos_rows > 1, b, 0) * pos_stride + clamp(row, n_rows)",
        "        q = tl.load(pos + at).to(tl.int64)",
        "    else:",
        "        q = row",
        "    for c0 in range(0, KV_BS, KC):",
        *(f"        {x}" for x in tile),
        "n = tl.sum(tl.sum(total, 1), 0)",
        "if DENSE:  # the class byte: 2 FULL, 1 PARTIAL, 0 EMPTY",
        "    cls = tl.where(n == Q_BS * KV_BS, 2, tl.where(n > 0, 1, 0)).to(tl.int8)",
        "    tl.store(count + (bh * n_q + rb) * n_kv + kb, cls)",
        "else:",
        "    tl.store(count + i, n)",
    ]
    fixed = [*input_sizes, *SIZE_ARGS]
    groups = [inputs, ["where", "count", "pos"], list(SIZE_ARGS),
              [f"{c}: tl.constexpr" for c in CONSTEXPRS]]
    sig = ",\n    ".join(", ".join(g) for g in groups if g)
    head = (f"# Element-fallback kernel for mask `{mask.name}` ({mask.path}), generated by "
            "maskspec.\n# One program per block (every block, or those listed): its allowed "
            "pairs counted tile\n# by tile from the element meaning, region by region "
            f"({' | '.join(t.name for t in mask.terms)}).\n")
    return (f"{head}{_PRELUDE}\n\n@triton.jit(do_not_specialize={fixed!r})\n"
            f"def {KERNEL}(\n    {sig},\n):\n" + "".join(f"    {x}\n" for x in body))


@functools.cache
def _kernel(src: str) -> Any:
    return codegen.load_source(src, KERNEL)


_SOURCES = PerMask(1024)


def kernel(mask: ir.MaskIR) -> Any:
    """The mask's decide kernel (one JIT function per generated source, the source printed
    once per compiled mask: builds look it up)."""
    src = _SOURCES.get(mask, None, MISSING)
    if src is MISSING:
        src = _SOURCES.put(mask, None, source(mask))
    return _kernel(src)


def tiles(block_size: tuple[int, int]) -> tuple[int, int]:
    """(RC, KC): the rows and keys of a tile, powers of two (Triton's ranges), at most
    ``TILE`` pairs, no wider than the block needs."""
    kc = min(plans.pow2(block_size[1]), 128)
    return min(plans.pow2(block_size[0]), max(1, TILE // kc)), kc


def _launch(mask: ir.MaskIR, grid: tuple[int, ...], args: list[Any], block_size: tuple[int, int],
            has_pos: bool, dense: bool) -> plans.Launch:
    """The kernel's launch (``plans.Launch``) for these arguments, mode and block size."""
    rc, kc = tiles(block_size)
    kw = {"Q_BS": block_size[0], "KV_BS": block_size[1], "RC": rc, "KC": kc,
          "HAS_POS": has_pos, "DENSE": dense, "num_warps": WARPS}
    return kernel(mask), grid, tuple(args), kw


def _run(launch: plans.Launch) -> None:
    jit, grid, args, kw = launch
    jit[grid](*args, **kw)


def counts(mask: ir.MaskIR, sizes: Mapping[str, int], inputs: Mapping[str, Tensor],
           where: Tensor, q_positions: Tensor | None, n_rows: int,
           block_size: tuple[int, int]) -> Tensor:
    """The allowed pairs (int32) of each block of ``where`` ((n, 4) int64: b', h', row
    block, key block; row r is query ``q_positions[.., r]``, None: query r)."""
    count = torch.empty(where.shape[0], dtype=torch.int32, device=where.device)
    if where.shape[0] == 0:
        return count
    pos = None if q_positions is None else (  # rows contiguous: the kernel reads pos + row
        q_positions.reshape(-1, q_positions.shape[-1]).to(where.device, torch.int64)
        .contiguous())
    pos_args = (1, 0) if pos is None else (pos.shape[0], pos.stride(0))
    args = [*generator.input_args(mask, inputs, set()), where.contiguous(), count,
            where if pos is None else pos,  # (a placeholder pointer when unread)
            *(sizes[k] for k in ir.SIZES), n_rows, *pos_args,
            1, 0, 0]
    _run(_launch(mask, (where.shape[0],), args, block_size, pos is not None, False))
    return count


def classes(mask: ir.MaskIR, sizes: Mapping[str, int], inputs: Mapping[str, Tensor],
            lead: tuple[int, int], block_size: tuple[int, int], device: torch.device) -> Tensor:
    """Every block's class as a byte grid (B', H', Q_blocks, KV_blocks) int8: 2 FULL,
    1 PARTIAL, 0 EMPTY (``plans.finish``'s), deciding each block from its pairs."""
    n_q, n_kv = blocks.counts(sizes["Q_LEN"], sizes["KV_LEN"], *block_size)
    cls = torch.empty(*lead, n_q, n_kv, dtype=torch.int8, device=device)
    if cls.numel():
        args = [*generator.input_args(mask, inputs, set()), cls, cls, cls,
                *(sizes[k] for k in ir.SIZES), sizes["Q_LEN"], 1, 0, lead[1], n_q, n_kv]
        _run(_launch(mask, (lead[0] * lead[1], n_q, n_kv), args, block_size, False, True))
    return cls


def dense_fits(ctx: BuildContext) -> bool:
    """Whether ``build`` takes this build: few enough pairs (``DENSE_PAIRS``), a grid CUDA
    launches."""
    lead = lower.lead_shape(ctx.mask, ctx.sizes)
    n_q, n_kv = blocks.counts(ctx.q_len, ctx.kv_len, *ctx.block_size)
    return (lead[0] * lead[1] * ctx.q_len * ctx.kv_len <= DENSE_PAIRS
            and max(n_q, n_kv) <= MAX_GRID and fits(ctx.block_size))


def fits(block_size: tuple[int, int]) -> bool:
    """Whether a block's pair count fits the kernel's int32 counts."""
    return block_size[0] * block_size[1] < 2**31


def build(ctx: BuildContext) -> tuple[Tensor, ...]:
    """The eight BlockMask tensors of a fallback mask with every block decided by the
    kernel, then ``plans.finish`` from the byte grid: three launches, no host work per
    block (``dense_fits`` says when this beats classifying by parts)."""
    lead = lower.lead_shape(ctx.mask, ctx.sizes)
    cls = classes(ctx.mask, ctx.sizes, ctx.inputs, lead, ctx.block_size, ctx.device)
    scratch = torch.empty(2, *cls.shape, dtype=torch.int32, device=ctx.device)
    return plans.finish(scratch, *cls.shape[-2:], cls=cls)


def _compile(mask: ir.MaskIR, inputs: Mapping[str, torch.dtype], block_size: tuple[int, int],
             has_pos: bool, dense: bool, device: torch.device) -> None:
    """Compile the kernel for this signature without launching it (``plans.warm``); for
    ``dense`` builds the finish kernels that read its byte grid too."""
    start = time.perf_counter()
    i64, i32, i8 = torch.int64, torch.int32, torch.int8
    dims = [x for d in mask.inputs for x in (inputs[d.name], *[1] * (2 * len(d.shape)))]
    out = (i8, i8, i8) if dense else (i64, i32, i64)
    launches = [_launch(mask, (1, 1, 1), [*dims, *out, *[1] * len(SIZE_ARGS)], block_size,
                        has_pos, dense)]
    if dense:
        launches += [plans.finish_launch((i32, i32, i32, i32, i8), 1, 1, 1, True),
                     plans.column_launch((i8, i32, i32, i32, i32), 1, 1, 1)]
    plans.warm(launches, device)
    log.info("%s: element-fallback kernel compiled in %.1f s", mask.name,
             time.perf_counter() - start)


_COMPILED = background.Once()


def ready(mask: ir.MaskIR, inputs: Mapping[str, Tensor], block_size: tuple[int, int],
          has_pos: bool, device: torch.device, wait: bool = False, dense: bool = False) -> bool:
    """Whether the kernel for this configuration is compiled; if not, starts compiling it
    on the worker thread (``wait``: until done; see ``dispatch.compiled``)."""
    dtypes = {d.name: inputs[d.name].dtype for d in mask.inputs}
    key = (kernel(mask), tuple(dtypes.values()), block_size, has_pos, dense, TILE, WARPS,
           device)
    wait = wait or torch.cuda.is_current_stream_capturing()
    return _COMPILED.done(key, functools.partial(
        _compile, mask, dtypes, block_size, has_pos, dense, device), wait)


def decide(mask: ir.MaskIR, sizes: Mapping[str, int], inputs: Mapping[str, Tensor],
           partial: Tensor, full: Tensor, undecided: Tensor, q_positions: Tensor | None,
           n_rows: int, block_size: tuple[int, int], wait: bool = False) -> None:
    """``elements.decide``, on CUDA by the generated kernel once it is compiled (the torch
    loop meanwhile, unless ``wait``, and off CUDA). No block undecided: nothing runs."""
    dev = undecided.device
    if dev.type != "cuda" or triton is None or not fits(block_size):
        elements.decide(mask, sizes, inputs, partial, full, undecided, q_positions, n_rows,
                        block_size)
        return
    where = undecided.nonzero()
    if where.shape[0] == 0:
        return
    if where.shape[0] < 2**31 and ready(mask, inputs, block_size, q_positions is not None,
                                        dev, wait):
        _apply(mask, sizes, inputs, partial, full, where, q_positions, n_rows, block_size)
    else:
        elements.decide(mask, sizes, inputs, partial, full, undecided, q_positions, n_rows,
                        block_size)


def by_kernel(mask: ir.MaskIR, sizes: Mapping[str, int], inputs: Mapping[str, Tensor],
              partial: Tensor, full: Tensor, undecided: Tensor, q_positions: Tensor | None,
              n_rows: int, block_size: tuple[int, int]) -> None:
    """``elements.decide`` by the generated kernel, on any device Triton runs on (its CPU
    interpreter included)."""
    _apply(mask, sizes, inputs, partial, full, undecided.nonzero(), q_positions, n_rows,
           block_size)


def _apply(mask: ir.MaskIR, sizes: Mapping[str, int], inputs: Mapping[str, Tensor],
           partial: Tensor, full: Tensor, where: Tensor, q_positions: Tensor | None,
           n_rows: int, block_size: tuple[int, int]) -> None:
    """Set the blocks at ``where`` to their classes from the kernel's pair counts."""
    n = counts(mask, sizes, inputs, where, q_positions, n_rows, block_size)
    at = tuple(where.unbind(-1))
    every = n == block_size[0] * block_size[1]
    full[at] = every
    partial[at] = (n > 0) & ~every
