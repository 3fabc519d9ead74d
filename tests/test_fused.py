"""The fused Triton classification against the torch one, tensor for tensor.

Without a GPU the kernels run on Triton's CPU interpreter (conftest sets it), so CI proves
the same kernel source that runs on CUDA; tests/test_gpu.py repeats this at large sizes.
"""

import random

import pytest
import torch
from conftest import spec
from hypothesis import given, settings
from hypothesis import strategies as st

from maskspec import blocks, fused, lower
from maskspec.api import shipped_specs
from maskspec.lower import Rows
from maskspec.targets import flex
from maskspec.verify import random_inputs

pytestmark = pytest.mark.skipif(fused.triton is None, reason="Triton is not installed")

BLOCKS = st.sampled_from(
    [(1, 8), (2, 16), (4, 4), (16, 16), (32, 16), (16, 48), (64, 32), (128, 128), (24, 40)]
)


def _assert_equal(rows: Rows, q_len: int, kv_len: int, bs: tuple[int, int]) -> None:
    want = flex.index_tensors(blocks.classify(rows, q_len, kv_len, *bs))
    got = fused.classify_rows(rows, q_len, kv_len, bs, release=True)
    assert rows.lo.numel() == rows.hi.numel() == 0  # released for the q-direction outputs
    names = ("kv_num", "kv_idx", "full_kv_num", "full_kv_idx",
             "q_num", "q_idx", "full_q_num", "full_q_idx")
    for name, a, b in zip(names, got, want, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert torch.equal(a, b), f"{name} differs at {(a != b).nonzero()[:5].tolist()}"


@settings(max_examples=25)
@given(name=st.sampled_from(sorted(shipped_specs())), b=st.integers(1, 2),
       q=st.integers(1, 160), extra=st.integers(0, 200), bs=BLOCKS, seed=st.integers(0, 99))
def test_shipped_specs(name, b, q, extra, bs, seed):
    mask = spec(name)
    kv = q + extra if mask.ir.sizes_used() & {"KV_LEN"} or name.startswith("eagle3") else q
    inputs = random_inputs(mask, b, 2, q, kv, random.Random(seed))
    sizes, bound, dev = mask._bind(b, 2, q, kv, "cpu", inputs)
    _assert_equal(lower.row_intervals(mask.ir, sizes, bound, dev), q, kv, bs)


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
    return Rows(lo.view(1, 1, q, k), hi.view(1, 1, q, k)), q, kv


@settings(max_examples=40)
@given(case=_rows(), bs=BLOCKS)
def test_arbitrary_intervals(case, bs):
    rows, q, kv = case
    _assert_equal(rows, q, kv, bs)


def test_dispatch_falls_back_off_cuda(eagle3):
    sizes, bound, dev = eagle3._bind(1, 1, 64, 200, "cpu", {})
    rows = lower.row_intervals(eagle3.ir, sizes, bound, dev)
    assert fused.fits(rows, 64, 200, (16, 16))
    assert not fused.fits(rows, 64, 16 * fused.MAX_BINS + 1, (16, 16))
    got = fused.classify(rows, 64, 200, (16, 16))  # CPU tensors: the torch path
    want = flex.index_tensors(blocks.classify(rows, 64, 200, 16, 16))
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
