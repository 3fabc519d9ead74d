"""The fused Triton kernels against the torch path, tensor for tensor: the classification of
given rows, and each spec's generated build kernel, which computes its rows itself.

Without a GPU the kernels run on Triton's CPU interpreter (conftest sets it), so CI proves
the same kernel source that runs on CUDA; tests/test_gpu.py repeats this at large sizes.
"""

import itertools
import random

import pytest
import torch
from conftest import examples, spec
from helpers import DEV, assert_generated_equal, assert_tensors_equal, on_dev
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from strategies import shapes, valid_specs

import maskspec
from maskspec import blocks, lower
from maskspec.api import shipped_specs
from maskspec.cuda import dispatch, generator, plans
from maskspec.lower import Rows
from maskspec.verify import random_inputs

pytestmark = pytest.mark.skipif(plans.triton is None, reason="Triton is not installed")

BLOCKS = st.sampled_from(
    [(1, 8), (2, 16), (4, 4), (16, 16), (32, 16), (16, 48), (64, 32), (128, 128), (24, 40)]
)


def _assert_equal(rows: Rows, q_len: int, kv_len: int, bs: tuple[int, int]) -> None:
    want = blocks.index_tensors(blocks.classify(rows, q_len, kv_len, *bs))
    got = dispatch.classify_rows(rows, q_len, kv_len, bs, release=True)
    assert rows.lo.numel() == rows.hi.numel() == 0  # released for the q-direction outputs
    assert_tensors_equal(got, want)


@pytest.mark.slow
@settings(max_examples=25)
@given(name=st.sampled_from(sorted(shipped_specs())), b=st.integers(1, 2),
       q=st.integers(1, 160), extra=st.integers(0, 200), bs=BLOCKS, seed=st.integers(0, 99))
def test_shipped_specs(name, b, q, extra, bs, seed):
    mask = spec(name)
    kv = q + extra if mask.ir.sizes_used() & {"KV_LEN"} or name.startswith("eagle3") else q
    inputs = on_dev(random_inputs(mask, b, 2, q, kv, random.Random(seed)))
    _assert_equal(lower.row_slots(mask._bind(b, 2, q, kv, DEV, inputs)), q, kv, bs)


@st.composite
def _rows(draw):
    """Rows sharing k template intervals, each row jittered: overlapping, touching (a piece
    ending where the next starts), nested, empty and reversed intervals, with enough
    agreement between rows that FULL blocks occur."""
    q, kv, k = draw(st.integers(1, 70)), draw(st.integers(1, 300)), draw(st.integers(1, 9))
    lo = torch.tensor(draw(st.lists(st.integers(0, kv), min_size=k, max_size=k)))
    width = torch.tensor(draw(st.lists(st.integers(-3, kv), min_size=k, max_size=k)))
    hi = lo + width
    touch = torch.tensor(draw(st.lists(st.booleans(), min_size=k, max_size=k)))
    hi = torch.where(touch, lo.roll(-1), hi)
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    jitter = draw(st.sampled_from([0, 0, 1, 5]))
    noise = torch.randint(-jitter, jitter + 1, (2, q, k), generator=gen)
    lo, hi = (lo + noise[0]).clamp(0, kv), (hi + noise[1]).clamp(0, kv)
    return Rows.intervals(lo.view(1, 1, q, k).to(DEV), hi.view(1, 1, q, k).to(DEV)), q, kv


@pytest.mark.slow
@settings(max_examples=examples(40))
@given(case=_rows(), bs=BLOCKS)
def test_arbitrary_intervals(case, bs):
    rows, q, kv = case
    _assert_equal(rows, q, kv, bs)


def test_dispatch_falls_back_off_cuda(eagle3):
    rows = lower.row_slots(eagle3._bind(1, 1, 64, 200, "cpu", {}))  # CPU: the torch path
    k = rows.lo.shape[-1]
    assert plans.fits(k, 64, 200, (16, 16))
    assert not plans.fits(k, 64, 2**31, (16, 16))
    assert plans.fits(plans.MAX_SLOTS, 64, 200, (16, 16))
    assert not plans.fits(plans.MAX_SLOTS + 1, 64, 200, (16, 16))
    got = dispatch.classify(rows, 64, 200, (16, 16))  # CPU tensors: the torch path
    want = blocks.index_tensors(blocks.classify(rows, 64, 200, 16, 16))
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
    # A second strided region is enumerated piece by piece: 64000 slots, too many.
    two = maskspec.compile("mask m\nregion even = full where kv % 2 == 0\n"
                           "region thirds = full where kv % 3 == 0\n")
    assert len(two.ir.terms[1].program.loops) == 1 and two.ir.terms[0].program.family
    assert dispatch.build(two._bind(1, 1, 64, 64 * 3000, "cpu", {}, block_size=(16, 16))) is None


# The generated build kernel classifies row programs alone: specs needing the element
# fallback build on the torch path (tests/test_fallback.py), and the generator refuses them.
ANALYTIC = sorted(n for n in shipped_specs() if not spec(n).ir.fallback)


@pytest.mark.slow
@settings(max_examples=15)
@given(name=st.sampled_from(ANALYTIC), b=st.integers(1, 2), h=st.integers(1, 2),
       q=st.integers(1, 130), extra=st.integers(0, 200), bs=BLOCKS, seed=st.integers(0, 99))
def test_generated_kernel_matches_lowering(name, b, h, q, extra, bs, seed):
    mask = spec(name)
    kv = q + extra if mask.ir.sizes_used() & {"KV_LEN"} or name.startswith("eagle3") else q
    inputs = on_dev(random_inputs(mask, b, h, q, kv, random.Random(seed)))
    assert assert_generated_equal(mask, b, h, q, kv, bs, inputs)


@pytest.mark.slow
@settings(max_examples=20)
@given(valid_specs(), shapes(), st.integers(0, 2**31))
def test_generated_kernel_builds_fuzzed_specs(spec_text, shape, seed):
    """Random specs from the whole language: every IR node's Triton spelling is exercised."""
    text, params = spec_text
    b, h, q, kv, bs = shape
    mask = maskspec.compile(text, "fuzz.mask", **params)
    inputs = on_dev(random_inputs(mask, b, h, q, kv, random.Random(seed)))
    assume(assert_generated_equal(mask, b, h, q, kv, bs, inputs))


SMALL = (2, 90, 150, (16, 32))  # B, Q_LEN, KV_LEN, BLOCK_SIZE


@pytest.mark.slow
@pytest.mark.parametrize(("text", "shape"), [
    # floor division and modulo of negative values (Triton's own // and % truncate)
    ("mask m\nregion r = window(left = 3, right = (q - 50) // 7 + 9)"
     " where kv % 5 >= (q - 40) % 5\n", SMALL),
    # several diagonals and kv % P conditions in one region: nested loops, slots in order
    ("mask m\nregion r = diagonal(period = 40) & diagonal(period = 30, offset = -2)"
     " where kv % 4 < 3 and kv % 9 >= 2\nregion s = causal where kv // 16 == q // 16\n", SMALL),
    # a period that is a sum: a factor of the piece arithmetic, so it needs parentheses
    ("mask m\nregion r = causal where kv % (KV_LEN - Q_LEN) >= 2\n", (1, 16, 64, (8, 8))),
    # size arithmetic past 2**31 must not wrap in int32
    ("mask m\nregion r = full where kv < 2 * KV_LEN - 3\n", (1, 4, 2**31 - 2**25, (4, 2**24))),
    ("mask m\nregion r = causal where 100 * kv < 99 * KV_LEN\n", (1, 8, 30_000_000, (8, 2**18))),
    # inputs whose names extend another's: distinct kernel arguments
    ("mask m\ninput x: int[B] = 5\ninput x_d0: int[B] = 7\n"
     "region r = window(left = x[b]) where kv < q + x_d0[b]\n", SMALL),
    # kv terms that cancel leave a row condition
    ("mask m\nregion r = full where kv - kv < q - 20 and 2 * kv - kv - kv <= q\n", SMALL),
    # a lookup indexed through another input
    ("mask m\ninput which: int[B] = 1\ninput lens: int[3] = 60\n"
     "region r = causal where kv >= q - lens[which[b]]\n", SMALL),
])
def test_generated_kernel_edge_cases(text, shape):
    b, q, kv, bs = shape
    assert assert_generated_equal(maskspec.compile(text, "m.mask"), b, 1, q, kv, bs, {})


@pytest.mark.slow
@pytest.mark.parametrize("name", ["eagle3", "document_causal", "sliding_window", "prefix_lm"])
def test_scans_carry_across_chunks(monkeypatch, name):
    """Rows, key blocks and row blocks taken a few at a time, so every scan carries counts
    from one chunk to the next (at real sizes the chunks hold 16 rows, 512 key blocks...)."""
    monkeypatch.setattr(plans, "ROW_CHUNK", 2)
    monkeypatch.setattr(plans, "TILES", plans.Tiles(kv_chunk=4, q_chunk=2, strip=2))
    mask, q = spec(name), 70
    kv = 3 * q + 5 if name == "eagle3" else q
    inputs = on_dev(random_inputs(mask, 2, 1, q, kv, random.Random(3)))
    assert assert_generated_equal(mask, 2, 1, q, kv, (8, 4), inputs)
    _assert_equal(lower.row_slots(mask._bind(2, 1, q, kv, DEV, inputs)), q, kv, (8, 4))


@pytest.mark.slow
def test_many_intervals_per_row():
    """A second strided region enumerated round by round (K = 43, 64 slots): one row per
    count program, still exact."""
    mask = maskspec.compile("mask m\ninput n: int[B] in [0, 40] = 40\n"
                            "region d = diagonal(period = Q_LEN)\n"
                            "region e = diagonal(period = Q_LEN, offset = 3)"
                            " where kv < q + n[b]\n")
    q, kv = 40, 40 * 41 + 7
    inputs = on_dev({"n": torch.tensor([40, 23])})
    _, k = plans.generated(mask.ir).plan({"B": 2, "H": 1, "Q_LEN": q, "KV_LEN": kv})
    assert plans.slots_held(k) == 64 and plans.row_chunk(16, plans.slots_held(k)) == 1
    assert assert_generated_equal(mask, 2, 1, q, kv, (16, 64), inputs)


def test_generated_source_is_one_kernel_per_spec(eagle3):
    """Sizes and loop extents are arguments, never baked in or specialized: one source (one
    JIT) for every shape, and TTT steps share a compiled kernel."""
    src = generator.source(eagle3.ir)
    assert src.count("\n    # region ") == len(eagle3.ir.terms)
    assert plans.generated(eagle3.ir).kernel is plans.generated(spec("eagle3").ir).kernel
    for name in ("Q_LEN", "KV_LEN", "n_kv", "t0_s0", "d0_seq_len", "pieces"):
        assert f"'{name}'" in src.split("do_not_specialize=")[1].split(")")[0]
    g = plans.generated(eagle3.ir)
    ks = [g.plan({"B": 1, "H": 1, "Q_LEN": 4096, "KV_LEN": 4096 * s + extra})[1]
          for s in range(1, 8) for extra in (0, 100)]
    # the draft rounds are one strided family, the context one piece: two slots at every step
    assert set(ks) == {2} and {g.slots({"B": 1, "H": 1, "Q_LEN": 4096, "KV_LEN": 4096 * s})
                               for s in range(1, 8)} == {max(2, plans.MIN_SLOTS)}


def test_specs_without_loops_hold_few_slots():
    """A spec whose interval count is fixed holds just its slots (at least MIN_SLOTS): the
    gap search costs slots² per row."""
    g = plans.generated(spec("causal").ir)
    sizes = {"B": 1, "H": 1, "Q_LEN": 64, "KV_LEN": 640}
    assert g.slots(sizes) == plans.MIN_SLOTS and g.plan(sizes)[1] == 1



@settings(max_examples=examples(12), deadline=None)
@given(st.integers(1, 2), st.integers(1, 300), st.integers(1, 60), st.booleans(),
       st.integers(0, 10**6))
def test_document_run_edges_are_searchsorted(rows, n, n_ids, strided, seed):
    """The run edges generated kernels read for document edges (two kernels over chunks)
    equal torch.searchsorted of each id in its row, left and right: any run lengths (one
    id, runs crossing chunks, runs of one), strided ids, more chunks than a completing
    program reads at once."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, n_ids, (rows, n), generator=g).sort(-1).values
    if strided:  # every other column of a wider tensor
        ids = torch.stack([ids, ids], -1).flatten(-2)[:, ::2]
    ids = ids.to(DEV)
    chunk, tops = plans.EDGE_CHUNK, plans.EDGE_TOPS
    try:  # small chunks: many per row under the interpreter too
        plans.EDGE_CHUNK, plans.EDGE_TOPS = 8, 4
        plans._edge_kernels.cache_clear()
        starts, ends = plans.doc_edges(ids)
    finally:
        plans.EDGE_CHUNK, plans.EDGE_TOPS = chunk, tops
        plans._edge_kernels.cache_clear()
    flat = ids.contiguous()
    assert torch.equal(starts.long(), torch.searchsorted(flat, flat, right=False))
    assert torch.equal(ends.long(), torch.searchsorted(flat, flat, right=True))


def test_run_edges_of_more_rows_than_a_grid_holds(monkeypatch):
    """Past CUDA's grid limit on rows (B > 65535) the run edges come from torch's search:
    the same tensors (the limit lowered here to reach it)."""
    ids = torch.tensor([[0, 0, 1, 1, 1, 4], [2, 2, 2, 2, 3, 3], [0, 1, 2, 3, 4, 5]]).to(DEV)
    want = plans.doc_edges(ids)
    monkeypatch.setattr(plans.scan, "MAX_GRID", 2)
    got = plans.doc_edges(ids)
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
    assert torch.equal(got[0][0].cpu(), torch.tensor([0, 0, 2, 2, 2, 5], dtype=torch.int32))
    assert torch.equal(got[1][1].cpu(), torch.tensor([4, 4, 4, 4, 6, 6], dtype=torch.int32))


@pytest.mark.parametrize("name,n_b", [("eagle3", 1), ("document_causal", 3)])
def test_fused_outputs_share_one_buffer_that_a_graph_copies_whole(name, n_b):
    """The fused build's eight tensors are views of one int32 buffer, each 128-byte aligned
    and none overlapping another; a graph's packed copy is that buffer itself, and a
    copy of it seen through the graph's views holds the same eight tensors."""
    from maskspec.cuda import graphs

    mask, q, kv, bs = spec(name), 200, 328, (16, 16)
    inputs = on_dev(random_inputs(mask, n_b, 1, q, kv, random.Random(1)))
    rows = lower.row_slots(mask._bind(n_b, 1, q, kv, DEV, inputs, True, bs))
    out = dispatch.classify_rows(rows, q, kv, bs)
    flat = graphs.packed_copy(out)
    spans = sorted((t.storage_offset(), t.storage_offset() + t.numel()) for t in out)
    assert all(t.untyped_storage().data_ptr() == flat.data_ptr() for t in out)
    assert all(t.storage_offset() % plans.ALIGN == 0 and t.is_contiguous() for t in out)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))
    assert spans[-1][1] <= flat.numel()
    views = graphs._places(out, flat)
    copy = flat.clone()
    assert_tensors_equal(tuple(copy.as_strided(*v) for v in views), out)
