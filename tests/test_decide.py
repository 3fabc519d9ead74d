"""The element fallback's generated Triton kernel (``cuda.decide``) against the torch path.

Per block: its allowed-pair count against the dense element meaning summed per block, for
the shipped specs that need the fallback, specs with conditions the row programs cannot
carry, and random specs of the language (every IR node the kernel prints). Whole builds:
``assemble.build_grid`` deciding by the kernel equals deciding by torch, with the rows taken
in chunks and as a context-parallel rank's positions, and every block decided by the
kernel then indexed by the finish kernels (the dense build). Without a GPU the kernel runs on
Triton's CPU interpreter (conftest sets it).
"""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch
from conftest import examples, spec
from helpers import DEV, assert_tensors_equal, on_dev
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import shapes, valid_specs

import maskspec
from maskspec import assemble, blocks, dense, lower
from maskspec.api import shipped_specs
from maskspec.cuda import decide, plans
from maskspec.verify import random_inputs

pytestmark = pytest.mark.skipif(plans.triton is None, reason="Triton is not installed")

FALLBACK = sorted(n for n in shipped_specs() if maskspec.load(n).ir.fallback)

# Conditions with no interval form in kv: inputs read at kv, `!=`, bits, kv in min/max.
RESIDUAL_SPECS = {
    "keyed": "input g: bool[B, KV_LEN]\nregion r = window(left = 9) where g[b, kv]",
    "ids": "input img: int[B, KV_LEN] in [0, 3]\nregion r = full where img[b, kv] == img[b, q]",
    "bits": "region r = causal where (kv & 3) != (q & 3)",
    "minmax": "region r = full where min(kv, 17) + max(q - kv, 2) < q // 2 + 9",
    "lookup": "input t: int[Q_LEN, KV_LEN] in [0, 1]\nregion r = full where t[q, kv] == 1\n"
              "region s = causal where kv % 5 == 0",
    "heads": "region r = causal where (kv & 3) != h % 4 and (q ^ kv) & b != 2",  # reads b, h
}


def _block_counts(m: maskspec.CompiledMask, b: int, h: int, q: int, kv: int,
                  bs: tuple[int, int], inputs: dict) -> torch.Tensor:
    """Allowed pairs per (b', h', row block, key block) from the dense meaning."""
    sizes = {"B": b, "H": h, "Q_LEN": q, "KV_LEN": kv}
    d = dense.dense(m.ir, sizes, inputs, DEV)
    lead = lower.lead_shape(m.ir, sizes)
    d = d[: lead[0], : lead[1]]
    n_q, n_kv = blocks.counts(q, kv, *bs)
    d = torch.nn.functional.pad(d, (0, n_kv * bs[1] - kv, 0, n_q * bs[0] - q))
    return d.view(*lead, n_q, bs[0], n_kv, bs[1]).sum((-1, -3), dtype=torch.int32)


def _check_counts(m: maskspec.CompiledMask, b: int, h: int, q: int, kv: int,
                  bs: tuple[int, int], seed: int) -> None:
    inputs = on_dev(random_inputs(m, b, h, q, kv, random.Random(seed)))
    ctx = m._bind(b, h, q, kv, DEV, inputs)
    want = _block_counts(m, b, h, q, kv, bs, ctx.inputs)
    where = torch.ones(want.shape, dtype=torch.bool, device=DEV).nonzero()
    got = decide.counts(m.ir, ctx.sizes, ctx.inputs, where, None, q, bs)
    assert torch.equal(got.view(want.shape), want)


@settings(max_examples=examples(32), deadline=None)
@given(name=st.sampled_from(FALLBACK + sorted(RESIDUAL_SPECS)), shape=shapes(),
       seed=st.integers(0, 99))
def test_block_counts_equal_the_dense_meaning(name, shape, seed):
    b, h, q, kv, bs = shape
    m = maskspec.compile(f"mask {name}\n{RESIDUAL_SPECS[name]}") if name in RESIDUAL_SPECS \
        else spec(name)
    kv = q if name in ("natten_morton", "natten_tiled") else max(kv, q)
    _check_counts(m, b, h, q, kv, bs, seed)


@settings(max_examples=examples(40), deadline=None)
@given(text=valid_specs(), shape=shapes(), seed=st.integers(0, 99))
def test_random_specs_block_counts_equal_the_dense_meaning(text, shape, seed):
    """Every construct of the language, printed into the kernel, means what torch reads."""
    src, params = text
    b, h, q, kv, bs = shape
    _check_counts(maskspec.compile(src, **params), b, h, q, kv, bs, seed)


def _grids_equal(m: maskspec.CompiledMask, b: int, h: int, q: int, kv: int,
                 bs: tuple[int, int], seed: int, positions: torch.Tensor | None) -> None:
    inputs = on_dev(random_inputs(m, b, h, q, kv, random.Random(seed)))
    ctx = m._bind(b, h, q, kv, DEV, inputs, block_size=bs)
    if positions is None:
        got, want = assemble.build_grid(ctx, decide.by_kernel), assemble.build_grid(ctx)
    else:
        n = positions.shape[-1]
        got = blocks.classify_at(ctx, positions, n, bs, decide.by_kernel)
        want = blocks.classify_at(ctx, positions, n, bs)
    assert torch.equal(got.full, want.full) and torch.equal(got.partial, want.partial)


@pytest.mark.slow
@settings(max_examples=12, deadline=None)
@given(name=st.sampled_from(FALLBACK), shape=shapes(), seed=st.integers(0, 99),
       budget=st.sampled_from([1, 1 << 17]))
def test_builds_decided_by_the_kernel_equal_the_torch_path(name, shape, seed, budget):
    """Whole grids, rows in one piece or a row block at a time (``ROW_BUDGET`` 1)."""
    b, h, q, kv, bs = shape
    kv = q if name in ("natten_morton", "natten_tiled") else max(kv, q)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(blocks, "ROW_BUDGET", budget)
        _grids_equal(spec(name), b, h, q, kv, bs, seed, None)


@settings(max_examples=examples(16), deadline=None)
@given(name=st.sampled_from(FALLBACK), shape=shapes(), seed=st.integers(0, 99),
       per_batch=st.booleans())
def test_rank_positions_decided_by_the_kernel_equal_the_torch_path(name, shape, seed,
                                                                   per_batch):
    """Rows at given query positions (a context-parallel rank's shard), shared or per batch."""
    b, h, q, kv, bs = shape
    kv = q if name in ("natten_morton", "natten_tiled") else max(kv, q)
    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(1, q + 1, (1,), generator=g))
    rows = [torch.randperm(q, generator=g)[:n].sort().values for _ in range(b if per_batch
                                                                            else 1)]
    _grids_equal(spec(name), b, h, q, kv, bs, seed, torch.stack(rows).to(DEV))


@pytest.mark.slow
@settings(max_examples=16, deadline=None)
@given(name=st.sampled_from(FALLBACK + sorted(RESIDUAL_SPECS)), shape=shapes(),
       seed=st.integers(0, 99))
def test_dense_builds_equal_the_torch_path(name, shape, seed):
    """Every block decided by the kernel, then the finish kernels from its byte grid: the
    eight tensors of the torch path's build, tensor for tensor."""
    b, h, q, kv, bs = shape
    m = maskspec.compile(f"mask {name}\n{RESIDUAL_SPECS[name]}") if name in RESIDUAL_SPECS \
        else spec(name)
    kv = q if name in ("natten_morton", "natten_tiled") else max(kv, q)
    inputs = on_dev(random_inputs(m, b, h, q, kv, random.Random(seed)))
    ctx = m._bind(b, h, q, kv, DEV, inputs, block_size=bs)
    assert decide.dense_fits(ctx)
    assert_tensors_equal(decide.build(ctx), blocks.index_tensors(assemble.build_grid(ctx)))


@pytest.mark.parametrize(("name", "q", "kv", "bs"), [
    ("tree", 40, 70, (16, 8)), ("natten_morton", 64, 64, (24, 16)),
    ("heads", 50, 333, (32, 192)),  # two key tiles per block, the second ragged
])
def test_a_dense_build_equals_the_torch_path(name, q, kv, bs):
    """The fast tier's passes through the dense build (the suite above draws many): B' and
    H' both 2 in ``heads``, a block wider than a key tile."""
    m = maskspec.compile(f"mask {name}\n{RESIDUAL_SPECS[name]}") if name in RESIDUAL_SPECS \
        else spec(name)
    ctx = m._bind(2, 2, q, kv, DEV, on_dev(random_inputs(m, 2, 2, q, kv, random.Random(1))),
                  block_size=bs)
    assert_tensors_equal(decide.build(ctx), blocks.index_tensors(assemble.build_grid(ctx)))


def test_dense_fits_bounds_the_pairs_and_the_grid():
    m = spec("tree")
    x = random_inputs(m, 1, 1, 64, 64, random.Random(0))
    ctx = m._bind(1, 1, 64, 64, "cpu", x)
    assert decide.dense_fits(ctx)
    edge = dataclasses.replace(ctx, sizes={**ctx.sizes, "Q_LEN": 1 << 15, "KV_LEN": 1 << 15})
    assert decide.dense_fits(edge)  # 2^30 pairs: the bound itself
    big = dataclasses.replace(ctx, sizes={**ctx.sizes, "Q_LEN": 1 << 16, "KV_LEN": 1 << 15})
    assert not decide.dense_fits(big)  # 2^31 pairs
    tall = dataclasses.replace(big, sizes={**ctx.sizes, "Q_LEN": 1 << 17, "KV_LEN": 8},
                               block_size=(1, 8))
    assert not decide.dense_fits(tall)  # 2^17 row blocks: past CUDA's grid


def test_off_cuda_the_torch_loop_decides(monkeypatch):
    """Off CUDA ``decide`` never reaches the kernel (the interpreter would be the slow path)."""
    monkeypatch.setattr(decide, "counts", lambda *a: pytest.fail("kernel called off CUDA"))
    m = spec("tree")
    ctx = m._bind(1, 1, 40, 60, "cpu", random_inputs(m, 1, 1, 40, 60, random.Random(0)))
    want = assemble.build_grid(ctx)
    got = assemble.build_grid(ctx, decide.decide)
    assert torch.equal(got.full, want.full) and torch.equal(got.partial, want.partial)


def test_the_kernel_source_reads_the_element_meaning():
    src = decide.source(spec("tree").ir)
    assert "# region path" in src and "in_ancestor" in src and "tl.store(count + i" in src
    compile(src, "<decide>", "exec")
