"""The row-block pass: block slots bound every row of their block, the pass is exact where it
claims to be, and it is taken where rows are interval-shaped.

The build itself is checked against create_block_mask everywhere else (test_fuzz, the
library suite); here the pass's two halves are checked apart, so that bounds that are
wrong but happen to meet on the tested shapes still fail."""

from __future__ import annotations

import random
import warnings
from unittest import mock

import pytest
import torch
from conftest import examples
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from strategies import shapes, valid_specs

import maskspec
from maskspec import assemble, blocks, lower, rowblocks
from maskspec.api import CompiledMask
from maskspec.verify import random_inputs


def _ctx(mask: CompiledMask, b: int, h: int, q: int, kv: int, bs: tuple[int, int],
         inputs: dict):
    return mask._bind(b, h, q, kv, "cpu", inputs, True, bs)


def _compiled(text: str, params: dict) -> CompiledMask:
    with warnings.catch_warnings():  # generated regions may be empty: not what is tested
        warnings.simplefilter("ignore", maskspec.MaskSpecWarning)
        return maskspec.compile(text, "fuzz.mask", **params)


def _keys(rows: lower.Rows, kv_len: int) -> torch.Tensor:
    """(B', H', N, K, KV_LEN): which keys each slot of each row allows."""
    k = torch.arange(kv_len)
    lo, hi, ph, st, ln = (x.unsqueeze(-1) for x in rows.tensors())
    return (k >= lo) & (k < hi) & ((k - ph) % st < ln)


@settings(max_examples=examples(300), deadline=None)
@given(valid_specs(), shapes(), st.integers(0, 2**31))
def test_block_slots_bound_every_row_of_their_block(spec, shape, seed):
    """Slot by slot: every row's keys lie in its block's union slot, and hold its common
    slot, for random specs, shapes, block sizes and inputs."""
    text, params = spec
    b, h, q, kv, bs = shape
    mask = _compiled(text, params)
    assume(not mask.ir.fallback and q >= bs[0])
    ctx = _ctx(mask, b, h, q, kv, bs, random_inputs(mask, b, h, q, kv, random.Random(seed)))
    n = q // bs[0]
    union, common = rowblocks.block_slots(ctx, n)
    rows = lower.row_slots(ctx, torch.arange(n * bs[0]))
    each = _keys(rows, kv).unflatten(2, (n, bs[0]))  # (B', H', n, Q_BS, K, KV)
    u = _keys(union, kv).unsqueeze(3)
    c = _keys(common, kv).unsqueeze(3)
    assert not (each & ~u).any(), (text, params, shape)
    assert not (c & ~each).any(), (text, params, shape)


@settings(max_examples=examples(300), deadline=None)
@given(valid_specs(), shapes(), st.integers(0, 2**31))
def test_row_blocks_it_calls_exact_equal_their_rows(spec, shape, seed):
    """Where ``coarse`` says a row block is exact, its classes are the row-by-row ones; and
    a build that takes the pass (rows in many chunks) equals the rows' classes throughout."""
    text, params = spec
    b, h, q, kv, bs = shape
    mask = _compiled(text, params)
    assume(not mask.ir.fallback and q >= 2 * bs[0])
    ctx = _ctx(mask, b, h, q, kv, bs, random_inputs(mask, b, h, q, kv, random.Random(seed)))
    runs, exact = assemble.coarse(ctx)
    grid = assemble.dense(runs, blocks.counts(q, kv, *bs)[1])
    want = blocks.classify(lower.row_slots(ctx), q, kv, *bs)
    n = exact.shape[0]
    for got, ref in ((grid.partial, want.partial), (grid.full, want.full)):
        ref = ref[..., :n, :].expand_as(got)
        assert torch.equal(got[..., exact, :], ref[..., exact, :]), (text, params, shape)
    with mock.patch.object(blocks, "ROW_BUDGET", 1):  # a chunk per row block: the pass runs
        built = assemble.build_grid(ctx)
    for got, ref in ((built.partial, want.partial), (built.full, want.full)):
        assert torch.equal(got, ref.expand_as(got)), (text, params, shape)


@pytest.mark.parametrize("name, q, kv", [
    ("eagle3", 4096, 5 * 4096), ("causal", 4096, 4096), ("sliding_window", 4096, 4096),
    ("document_causal", 4096, 4096), ("prefix_lm", 4096, 4096), ("chunked_causal", 4096, 4096),
])
def test_interval_rows_take_the_row_block_pass(name, q, kv):
    """At aligned sizes, every row block of an interval-shaped spec is classified at once
    (none goes row by row), and the build still equals the rows'."""
    mask = maskspec.load(name)
    inputs = random_inputs(mask, 1, 1, q, kv, random.Random(0))
    if name == "document_causal":  # few long documents: most row blocks inside one
        inputs = {n: torch.arange(q).view(1, q) // 1000 for n in inputs}
    ctx = _ctx(mask, 1, 1, q, kv, (128, 128), inputs)
    _, exact = assemble.coarse(ctx)
    assert bool(exact.all()) if name != "document_causal" else float(exact.float().mean()) > 0.8
    want = blocks.classify(lower.row_slots(ctx), q, kv, 128, 128)
    with mock.patch.object(blocks, "ROW_BUDGET", 1):
        got = assemble.build_grid(ctx)
    assert torch.equal(got.partial, want.partial) and torch.equal(got.full, want.full)


def test_no_pass_without_a_whole_row_block():
    """Fewer rows than a block, blocks of one row, and fallback masks skip the pass."""
    mask = maskspec.load("causal")
    assert assemble.coarse(_ctx(mask, 1, 1, 100, 300, (128, 128), {})) is None
    assert assemble.coarse(_ctx(mask, 1, 1, 100, 300, (1, 16), {})) is None
    tree = maskspec.load("global_sliding_window")
    inputs = random_inputs(tree, 1, 1, 512, 512, random.Random(0))
    assert assemble.coarse(_ctx(tree, 1, 1, 512, 512, (128, 128), inputs)) is None
