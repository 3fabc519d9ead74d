"""The build's assembly: runs of key blocks read from sorted range ends equal the dense sums,
and the eight tensors written from set blocks (or from the dense grid) equal the rows' own,
entry for entry (create_block_mask's layout, padding included), whichever route a build
takes."""

from __future__ import annotations

import itertools
import random
import warnings
from unittest import mock

import pytest
import torch
from conftest import examples
from helpers import DEV, assert_tensors_equal, on_dev
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from strategies import shapes, valid_specs

import maskspec
from maskspec import assemble, blocks, lower
from maskspec.api import CompiledMask
from maskspec.verify import random_inputs


def _compiled(text: str, params: dict) -> CompiledMask:
    with warnings.catch_warnings():  # generated regions may be empty: not what is tested
        warnings.simplefilter("ignore", maskspec.MaskSpecWarning)
        return maskspec.compile(text, "fuzz.mask", **params)


def _row_by_row(ctx) -> tuple[torch.Tensor, ...]:
    rows = lower.row_slots(ctx)
    return blocks.index_tensors(blocks.classify(rows, ctx.q_len, ctx.kv_len, *ctx.block_size))


def _routes():
    """Every route of ``assemble.tensors`` once the pass runs: set blocks written one by one
    (SPARSE 0), the dense grid (SPARSE huge)."""
    return [mock.patch.object(assemble, "SPARSE", s) for s in (0, 1 << 40)]


@settings(max_examples=examples(300), deadline=None)
@given(valid_specs(), shapes(), st.integers(0, 2**31), st.booleans())
def test_assembled_tensors_equal_the_rows(spec, shape, seed, sparse):
    """For random specs, shapes, block sizes and inputs, with the whole-row-block pass taken
    (a chunk per row block) by either route: the rows' own tensors."""
    text, params = spec
    b, h, q, kv, bs = shape
    mask = _compiled(text, params)
    assume(q >= 2 * bs[0])
    ctx = mask._bind(b, h, q, kv, "cpu", random_inputs(mask, b, h, q, kv, random.Random(seed)),
                     True, bs)
    with mock.patch.object(blocks, "ROW_BUDGET", 1), \
            mock.patch.object(assemble, "SPARSE", 0 if sparse else 1 << 40), \
            mock.patch.object(assemble, "_FRUITLESS", assemble.PerMask(1)):
        got = assemble.tensors(ctx)
    assert_tensors_equal(got, _row_by_row(ctx))


@settings(max_examples=examples(200), deadline=None)
@given(st.integers(1, 3), st.integers(1, 120), st.integers(1, 4), st.integers(1, 12),
       st.integers(0, 2**31))
def test_runs_read_the_dense_sums(n_rows, n_kv, n_sums, per_row, seed):
    """``_runs``: the value of each packed sum over each run equals the dense tally of its
    ranges over the run's key blocks, for random ranges and signed weights (and rows with
    more range ends than key blocks are left to the dense sums)."""
    g = torch.Generator().manual_seed(seed)
    sums = []
    for _ in range(n_sums):
        a = torch.randint(0, n_kv + 1, (1, 1, n_rows, per_row), generator=g)
        c = torch.randint(0, n_kv + 1, (1, 1, n_rows, per_row), generator=g)
        w = torch.randint(-3, 4, (1, 1, n_rows, per_row), generator=g)
        sums.append((torch.minimum(a, c), torch.maximum(a, c), w))
    found = assemble._runs(sums, n_kv)
    assert (found is None) == (2 * n_sums * per_row > n_kv)
    assume(found is not None)
    pos, length, values = found
    for (first, last, w), value in zip(sums, values, strict=True):
        dense = blocks.tally(first, last, w, 1, n_rows, n_kv)
        col = torch.arange(n_kv)
        inside = (col >= pos.unsqueeze(-1)) & (col < (pos + length).unsqueeze(-1))
        seen = torch.where(inside, value.unsqueeze(-1), 0).sum(-2)  # runs tile the keys
        covered = inside.sum(-2)
        assert torch.equal(torch.where(covered > 0, seen, 0), torch.where(covered > 0, dense, 0))
        assert bool((dense[covered == 0] == 0).all())  # keys before the first end: none


@pytest.mark.parametrize("name, q, kv", [
    ("eagle3", 8192, 5 * 8192), ("causal", 8192, 8192), ("sliding_window", 8192, 8192),
    ("document_causal", 8000, 8000), ("sta_3d", 4096, 4096), ("svg_temporal", 4096, 4096),
    ("dilated_sliding_window", 4096, 4100), ("vsa", 2048, 2048),
])
def test_shipped_specs_by_both_routes(name, q, kv):
    """Shipped specs at sizes that take the pass by default: both routes build the rows'
    blocks, for a batch of random inputs and rectangular blocks."""
    mask = maskspec.load(name)
    inputs = random_inputs(mask, 2, 1, q, kv, random.Random(1))
    for bs in ((128, 128), (64, 128)):
        ctx = mask._bind(2, 1, q, kv, "cpu", inputs, True, bs)
        want = _row_by_row(ctx)
        for route in _routes():
            with route, mock.patch.object(assemble, "WHOLE_BLOCKS", 1):
                assert_tensors_equal(assemble.tensors(ctx), want)


def test_the_default_call_writes_set_blocks_for_eagle3():
    """EAGLE-3 over long rounds is the sparse route's case: few set blocks, every row block
    exact; its BlockMask equals create_block_mask's."""
    from torch.nn.attention.flex_attention import create_block_mask

    mask, q = maskspec.load("eagle3"), 16 * 130
    written = []
    real = assemble._from_entries
    with mock.patch.object(assemble, "_from_entries",
                           lambda *a: written.append(1) or real(*a)):
        bm = mask.block_mask(1, 1, q, 5 * q, "cpu", 16)
    assert written
    ref = create_block_mask(mask.mask_mod(Q_LEN=q, KV_LEN=5 * q), 1, 1, q, 5 * q, device="cpu",
                            BLOCK_SIZE=16)
    assert_tensors_equal(bm.as_tuple()[2:10], ref.as_tuple()[2:10])  # padding too


def test_a_fruitless_pass_is_not_repeated():
    """Where the pass finds almost no exact row block (``shared_prefix``: its windows turn
    inside every block), the next build of the mask at those sizes skips it, and both build
    the rows' blocks."""
    mask, q = maskspec.load("shared_prefix"), 128 * 130
    inputs = random_inputs(mask, 1, 1, q, q, random.Random(0))
    ctx = mask._bind(1, 1, q, q, "cpu", inputs, True, (128, 128))
    calls = []
    real = assemble.coarse
    with mock.patch.object(assemble, "coarse", lambda c: calls.append(1) or real(c)), \
            mock.patch.object(assemble, "_FRUITLESS", assemble.PerMask(8)):
        first, second = assemble.tensors(ctx), assemble.tensors(ctx)
    assert calls == [1]
    want = _row_by_row(ctx)
    assert_tensors_equal(first, want)
    assert_tensors_equal(second, want)


@pytest.mark.parametrize("name", ["eagle3", "document_causal", "sta_3d", "svg_temporal"])
def test_dense_route_equals_the_rows_entry_for_entry(name):
    """The pass with the dense grid (every route on CUDA, where the fused kernels' tensors
    must be matched padding and all): the rows' ordered tensors exactly, on the device."""
    mask, q = maskspec.load(name), 4096
    kv = 5 * q if name == "eagle3" else q
    inputs = on_dev(random_inputs(mask, 2, 1, q, kv, random.Random(2)))
    ctx = mask._bind(2, 1, q, kv, DEV, inputs, True, (128, 128))
    with mock.patch.object(assemble, "WHOLE_BLOCKS", 1), \
            mock.patch.object(assemble, "SPARSE", 1 << 40):
        assert assemble._fast(ctx) is not None
        assert_tensors_equal(assemble.tensors(ctx), _row_by_row(ctx))


def _random_spans(grid: torch.Tensor, seed: int) -> assemble.Spans:
    """A (rows, cols) grid's set blocks as spans: each maximal run cut at random points, so
    spans touch as those of adjacent runs of key blocks do."""
    rng, row, start, length = random.Random(seed), [], [], []
    for r, line in enumerate(grid.tolist()):
        c = 0
        while c < len(line):
            if not line[c]:
                c += 1
                continue
            end = c
            while end < len(line) and line[end]:
                end += 1
            cuts = sorted({c, end, *(rng.randrange(c, end) for _ in range(rng.randrange(3)))})
            for a, b in itertools.pairwise(cuts):
                row.append(r)
                start.append(a)
                length.append(b - a)
            c = end
    return assemble.Spans(*(torch.tensor(x, dtype=torch.long) for x in (row, start, length)))


def _grid_of(spans: assemble.Spans, n_rows: int, n_cols: int) -> torch.Tensor:
    grid = torch.zeros(n_rows, n_cols, dtype=torch.bool)
    for r, a, n in zip(spans.row.tolist(), spans.start.tolist(), spans.length.tolist(),
                       strict=True):
        assert n > 0 and not grid[r, a:a + n].any()
        grid[r, a:a + n] = True
    return grid


_grids = st.tuples(st.integers(1, 6), st.integers(1, 40), st.floats(0, 1), st.integers(0, 2**31))


@settings(max_examples=examples(200), deadline=None)
@given(_grids)
def test_set_blocks_are_written_in_create_block_masks_layout(grid_args):
    """``_written`` from a random grid's set blocks as touching spans: ``blocks.ordered``'s
    tensors (set columns ascending, then the unset ones ascending), empty and full rows
    included, from spans of either integer dtype."""
    n_rows, n_cols, density, seed = grid_args
    g = torch.Generator().manual_seed(seed)
    grid = torch.rand(1, 1, n_rows, n_cols, generator=g) < density
    spans = _random_spans(grid[0, 0], seed)
    if seed % 2:
        spans = assemble.Spans(*(x.to(torch.int32) for x in (spans.row, spans.start,
                                                              spans.length)))
    got = assemble._written(spans, (1, 1, n_rows), n_cols)
    want = blocks.ordered(grid)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@settings(max_examples=examples(200), deadline=None)
@given(_grids, st.integers(1, 3))
def test_spans_read_down_the_columns_are_the_transposed_grid(grid_args, n_lead):
    """``_transposed`` of a random grid's spans (several lead rows, touching spans): sorted,
    disjoint, non-empty spans of exactly the transposed grid's blocks."""
    n_rows, n_cols, density, seed = grid_args
    g = torch.Generator().manual_seed(seed)
    grid = torch.rand(n_lead * n_rows, n_cols, generator=g) < density
    got = assemble._transposed(_random_spans(grid, seed), n_rows, n_cols)
    key = got.row * (n_rows + 1) + got.start
    assert torch.equal(key, key.sort().values)
    want = grid.view(n_lead, n_rows, n_cols).transpose(1, 2).reshape(-1, n_rows)
    assert torch.equal(_grid_of(got, n_lead * n_cols, n_rows), want)
