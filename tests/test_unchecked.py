"""Unchecked builds (``check_inputs=False``, also ``fast.Builder``'s) given values the checks would
refuse — out of their declared ranges, document ids that decrease — still give a BlockMask
that agrees with the mask_mod it carries: the values are sanitized (clamped, ids raised to
a running maximum), never trusted."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from conftest import examples
from helpers import SPECS_WITH_INPUTS as SPECS
from helpers import hostile
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.attention.flex_attention import create_block_mask

import maskspec
from maskspec import scan
from maskspec.fast import Builder
from maskspec.verify import first_difference

# fast.Builder refuses specs that need the element fallback (it never syncs to read back
# the blocks the fallback decides): those are tested with the plain call alone.
BUILDABLE = [n for n in SPECS if not maskspec.load(n).ir.fallback]
BENCH = Path(__file__).resolve().parent.parent / "specs"
BLOCKS = st.sampled_from([1, 8, 16, 128, (16, 8), (24, 40)])


def _agrees(bm, b: int, q: int, kv: int, bs) -> None:
    ref = create_block_mask(bm.mask_mod, b, 1, q, kv, device="cpu", BLOCK_SIZE=bs)
    assert first_difference(bm, ref) is None


@settings(max_examples=examples(60), deadline=None)
@given(st.sampled_from(SPECS), st.integers(1, 3), st.integers(1, 200), st.integers(1, 200),
       BLOCKS, st.integers(0, 10**6))
def test_unchecked_build_agrees_with_its_mask_mod(spec, b, q, kv, bs, seed):
    mask = maskspec.load(spec)
    inputs = hostile(mask, b, q, kv, seed)
    bm = mask.block_mask(b, 1, q, kv, "cpu", bs, check_inputs=False, **inputs)
    _agrees(bm, b, q, kv, bs)


def test_in_range_values_are_unchanged():
    """Sanitizing leaves values that pass the checks alone: the same mask either way."""
    mask = maskspec.load("eagle3")
    lens = torch.tensor([100, 3])
    checked = mask.block_mask(2, 1, 128, 256, "cpu", 16, seq_len=lens)
    unchecked = mask.block_mask(2, 1, 128, 256, "cpu", 16, check_inputs=False, seq_len=lens)
    assert first_difference(checked, unchecked) is None


def test_decreasing_document_ids_follow_the_running_maximum():
    """Documented behaviour: an unchecked id that drops below an earlier one joins that
    earlier (largest) id's document."""
    mask = maskspec.load("document_causal")
    ids = torch.tensor([[0, 0, 3, 1, 1, 4]])
    bm = mask.block_mask(1, 1, 6, 6, "cpu", 1, check_inputs=False, doc=ids)
    dense = torch.zeros(6, 6, dtype=torch.bool)
    for q, kv in [(0, 0), (1, 0), (1, 1), (5, 5)] + [(q, kv) for q in (2, 3, 4)
                                                     for kv in (2, 3, 4) if kv <= q]:
        dense[q, kv] = True
    assert torch.equal(bm.to_dense()[0, 0].bool(), dense)
    with pytest.raises(ValueError, match="non-decreasing"):
        mask.block_mask(1, 1, 6, 6, "cpu", 1, doc=ids)


@settings(max_examples=15, deadline=None)
@given(st.sampled_from(BUILDABLE), st.integers(1, 2), st.integers(1, 160), st.integers(1, 160),
       st.integers(0, 10**6))
def test_builder_sanitizes_like_the_plain_call(spec, b, q, kv, seed):
    """fast.Builder with its checks off: its masks agree with their mask_mods too; with
    them on (the default) it refuses what the plain call refuses."""
    mask = maskspec.load(spec)
    inputs = hostile(mask, b, q, kv, seed)
    bm = Builder(mask, 16, check_inputs=False)(b, 1, q, kv, "cpu", **inputs)
    _agrees(bm, b, q, kv, 16)
    try:
        mask.block_mask(b, 1, q, kv, "cpu", 16, **inputs)
    except ValueError as err:
        with pytest.raises(ValueError, match=re.escape(str(err))):
            Builder(mask, 16)(b, 1, q, kv, "cpu", **inputs)
    else:
        _agrees(Builder(mask, 16)(b, 1, q, kv, "cpu", **inputs), b, q, kv, 16)


def _cleaned_by_torch(t, lo, hi, running):
    """What an unchecked build reads, by its definition: clamped, then running maxima."""
    out = t.clamp(lo, hi)
    return out.cummax(-1).values if running else out


@settings(max_examples=examples(40), deadline=None)
@given(st.integers(1, 3), st.integers(1, 3000), st.integers(3, 8), st.integers(0, 10**6),
       st.sampled_from([torch.int32, torch.int64]), st.booleans(), st.booleans(),
       st.sampled_from(["wide", "inside", "narrow", "past"]))
def test_chunked_clean_is_clamp_then_cummax(rows, n, log_chunk, seed, dtype, running,
                                            flagged, bounds):
    """The kernels CUDA builds sanitize inputs with (run here by Triton's interpreter): equal
    to clamp then cummax for any values, bounds (past the dtype's, inside it, narrower than
    the values), row lengths and chunks (a chunk that does not divide the row, more chunks
    than a raising program reads at once); the flag is set exactly where a value changed."""
    g = torch.Generator().manual_seed(seed)
    info = torch.iinfo(dtype)
    t = torch.randint(info.min, info.max, (rows, n), generator=g, dtype=dtype)
    if seed % 2:  # mostly sorted runs with a few drops, as careless ids are
        t = t.sort(-1).values.roll(seed % n, -1)
    if seed % 3 == 0:  # already clean: nothing to flag
        t = t.cummax(-1).values
    lo, hi = {"wide": (-(1 << 62), 1 << 62), "inside": (info.min // 2, info.max // 2),
              "narrow": (-5, 5), "past": (info.min, info.max)}[bounds]
    if bounds == "narrow":
        t = t % 13 - 6
    flag = torch.zeros((), dtype=torch.int32) if flagged else None
    got = scan.chunked(t, lo, hi, running, flag, 1 << log_chunk)
    want = _cleaned_by_torch(t, max(lo, info.min), min(hi, info.max), running)
    assert torch.equal(got, want)
    if flagged:
        assert int(flag) == int(not torch.equal(want, t))
