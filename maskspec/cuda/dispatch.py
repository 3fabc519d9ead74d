"""Which path a CUDA build takes, and running it: the configuration's cached ``plans.Plan``
once its kernels are compiled, the torch path (``blocks``) while they compile on a worker
thread (``compiled``) so a first build never waits for Triton, off CUDA, or where the fused
kernels decline the shape (past ``plans.MAX_SLOTS`` slots per row, or past CUDA's grid
limits). Row slots given as tensors (``classify``) take the fixed count kernel instead of
the spec's generated one. A mask that needs the element fallback takes its own generated
kernel (``decide``): over every block where the pairs are few, else over the blocks its
classification by parts leaves undecided.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from typing import Any

import torch
from torch import Tensor

from maskspec import assemble, background, blocks, lower
from maskspec.context import BuildContext
from maskspec.cuda import decide, kernels, plans
from maskspec.cuda.kernels import triton
from maskspec.lower import Rows

log = logging.getLogger("maskspec")


def classify_rows(
    rows: Rows, q_len: int, kv_len: int, block_size: tuple[int, int], release: bool = False
) -> tuple[Tensor, ...]:
    """``blocks.index_tensors(blocks.classify(rows, ...))``, equal tensor for tensor, fused.

    ``release=True`` empties ``rows`` once the first kernel has read them, so the q-direction
    outputs can take their memory (the build's peak is then about its own output).
    """
    q_bs, kv_bs = block_size
    n_q, n_kv = blocks.counts(q_len, kv_len, q_bs, kv_bs)
    lead, k = tuple(rows.lo.shape[:-2]), rows.lo.shape[-1]
    fields = [x.expand(rows.lo.shape).contiguous() for x in rows.tensors()]
    scratch = plans.output_buffer(lead, n_q, n_kv, rows.lo.device)
    slots = plans.slots_held(k)
    kernels.rows_count_kernel[plans.count_grid(lead, n_q, q_bs, slots)](
        *fields, *scratch, q_len, n_q, n_kv, *rows.family.enumerated(kv_bs), K=k, KP=slots,
        Q_BS=q_bs, RC=plans.row_chunk(q_bs, slots), KV_BS=kv_bs,
        FAMILY=rows.family.level is not None, num_warps=plans.COUNT_WARPS,
    )
    if release:
        del fields
        empty = rows.lo.new_empty(0)
        rows.lo = rows.hi = rows.phase = rows.stride = rows.length = empty
    return plans.finish(scratch, n_q, n_kv)


def classify(
    rows: Rows, q_len: int, kv_len: int, block_size: tuple[int, int], release: bool = False
) -> tuple[Tensor, ...]:
    """The eight BlockMask tensors of these rows: fused kernels on CUDA where they fit, else
    ``blocks.classify`` and ``blocks.index_tensors`` (``release`` as in ``classify_rows``)."""
    k = rows.lo.shape[-1]
    if rows.lo.device.type == "cuda" and plans.fits(plans.slots_held(k), q_len, kv_len,
                                                    block_size, rows.family.stride):
        return classify_rows(rows, q_len, kv_len, block_size, release)
    return blocks.index_tensors(blocks.classify(rows, q_len, kv_len, *block_size))


def build(ctx: BuildContext) -> tuple[Tensor, ...] | None:
    """The eight tensors from the spec's generated count kernel (rows computed in registers,
    no row tensor) and ``plans.finish``, by the configuration's plan. None when the shape
    does not fit (see ``plans.fits``)."""
    p = plans.plan(ctx)
    return None if p is None else p.run(ctx.inputs)


def _compile(ctx: BuildContext) -> None:
    """Compile the build's kernels (three, and the two run-edge ones for documents) as
    ``build`` will launch them, and their launchers, without a CUDA call that a concurrent
    graph capture forbids (no launch, no allocation, no sync): the first launch then only
    loads them."""
    start = time.perf_counter()
    name = ctx.mask.name
    log.info("%s: compiling the build kernels (block size %s, %d slots, %s)", name,
             ctx.block_size, plans.generated(ctx.mask).slots(ctx.sizes), ctx.device)
    i32, i8 = torch.int32, torch.int8
    n_q, n_kv = blocks.counts(ctx.q_len, ctx.kv_len, *ctx.block_size)
    bh = math.prod(lower.lead_shape(ctx.mask, ctx.sizes))
    launches = [plans.count_launch(ctx, (i32, i32)),
                plans.finish_launch((i32, i32, i32, i32, i8), bh, n_q, n_kv),
                plans.column_launch((i8, i32, i32, i32, i32), bh, n_q, n_kv),
                *plans.edge_warm_launches(ctx)]
    plans.warm(launches, ctx.device)
    log.info("%s: build kernels compiled in %.1f s", name, time.perf_counter() - start)


_COMPILED = background.Once()
BACKGROUND_JIT = True  # a configuration's first builds take the torch path while it compiles


def compiled(ctx: BuildContext, wait: bool = False) -> bool:
    """Whether this build's kernels (spec, interval slots, block size, tiles, device) are
    compiled; if not, starts compiling them on a worker thread (``wait``: until done).
    Inside a CUDA graph capture it waits: the torch path would sync the device."""
    if ctx.mask.fallback or not plans.fits_build(ctx):
        return True  # the torch path builds it, or ``build`` declines the shape
    ctx = ctx.with_device(plans.indexed(ctx.device))
    g = plans.generated(ctx.mask)
    key = (id(g.kernel), g.slots(ctx.sizes), ctx.block_size, plans.TILES, ctx.device)
    wait = wait or not BACKGROUND_JIT or torch.cuda.is_current_stream_capturing()
    return _COMPILED.done(key, functools.partial(_compile, ctx.detached()), wait)


def decide_blocks(*args: Any) -> None:
    """``elements.decide``'s signature: the generated kernel on CUDA (``decide.decide``),
    compiled on the worker thread unless ``BACKGROUND_JIT`` is off."""
    decide.decide(*args, wait=not BACKGROUND_JIT)


def fallback(ctx: BuildContext) -> tuple[Tensor, ...]:
    """A CUDA build of a mask that needs the element fallback: every block decided by its
    generated kernel where the pairs are few (``decide.dense_fits``) and the kernel is
    compiled, else the torch path's classification by parts (its undecided blocks by the
    kernel once compiled)."""
    dev = plans.indexed(ctx.device)
    if decide.dense_fits(ctx) and decide.ready(ctx.mask, ctx.inputs, ctx.block_size, False,
                                               dev, not BACKGROUND_JIT, dense=True):
        return decide.build(ctx)
    return torch_path(ctx)


def torch_path(ctx: BuildContext) -> tuple[Tensor, ...]:
    """Lowering and classification, whole row blocks at once where they can be, the others
    a chunk of row blocks at a time (``assemble.tensors``): torch ops only, nothing to compile
    (the CPU's path, and a CUDA build's while its kernels compile); on CUDA the element
    fallback's undecided blocks by its generated kernel (``decide``)."""
    return assemble.tensors(ctx, decide_blocks)


def tensors(ctx: BuildContext) -> tuple[Tensor, ...]:
    """The spec's eight BlockMask tensors: the generated kernel on CUDA where it fits
    (``torch_path`` while it compiles, see ``compiled``; a configuration built before runs
    its cached plan at once), else lowering to row intervals and ``classify``
    (``torch_path`` off CUDA; ``fallback`` for a mask that needs the element fallback)."""
    if ctx.device.type != "cuda" or triton is None:
        return torch_path(ctx)
    if ctx.mask.fallback:  # the fused count kernels classify row programs alone
        return fallback(ctx)
    p = plans.cached(ctx)
    if p is not None:
        return p.run(ctx.inputs)
    if not compiled(ctx):
        log.info("%s: building on the torch path while the kernels compile", ctx.mask.name)
        return torch_path(ctx)
    out = build(ctx)
    if out is not None:
        return out
    rows = lower.row_slots(ctx)
    return classify(rows, ctx.q_len, ctx.kv_len, ctx.block_size, release=True)
