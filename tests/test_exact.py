"""Exactness: maskspec's BlockMask equals create_block_mask's, and mask_mod equals dense."""

import random

import pytest
import torch
from conftest import examples, spec
from hypothesis import given, settings
from hypothesis import strategies as st

from maskspec.verify import random_inputs, validate

BLOCK_SIZES = [16, 32, 64, 128, (64, 32), (256, 128)]
MAX_ELEMENTS = 6_000_000  # keeps create_block_mask's dense reference quick on 2 CPU cores


@st.composite
def shapes(draw: st.DrawFn) -> tuple[int, int, int, object]:
    q = draw(st.integers(1, 2048))
    b = draw(st.integers(1, 3))
    budget = max(1, MAX_ELEMENTS // (b * q))  # keys that keep the dense reference cheap
    if draw(st.booleans()):  # KV a multiple of Q: whole draft rounds
        kv = q * draw(st.integers(1, max(1, min(6, budget // q))))
    else:
        kv = draw(st.integers(1, max(1, min(6 * 2048, budget))))
    return b, q, kv, draw(st.sampled_from(BLOCK_SIZES))


def _check(name: str, b: int, q: int, kv: int, bs: object, seed: int, padded: bool) -> None:
    mask = spec(name)
    inputs = random_inputs(mask, b, 1, q, kv, random.Random(seed)) if padded else {}
    rep = validate(mask, b, 1, q, kv, bs, **inputs)
    assert rep.ok, (name, b, q, kv, bs, inputs, rep.problems)


@pytest.mark.slow
@settings(max_examples=examples(200))
@given(shapes(), st.integers(0, 2**31), st.booleans())
def test_eagle3_matches_create_block_mask(shape, seed, padded):
    _check("eagle3", *shape, seed, padded)


@settings(max_examples=examples(100))
@given(shapes(), st.integers(0, 2**31))
def test_causal_matches_create_block_mask(shape, seed):
    _check("causal", *shape, seed, False)


@pytest.mark.parametrize(
    ("q", "kv", "bs"),
    [(1000, 4500, (256, 128)), (128, 640, 128), (1, 1, 128), (1, 7, 16), (129, 129, 64),
     (2048, 12288, 128), (300, 301, 32)],
)
def test_eagle3_named_shapes(q, kv, bs):
    _check("eagle3", 2, q, kv, bs, 7, True)


def test_eagle3_partial_last_round_sees_its_slot():
    mask = spec("eagle3")
    d = mask.dense(1, 1, 1000, 4500, seq_len=torch.tensor([900]))
    # Last (partial) round covers keys 4000..4499: slots 0..499.
    assert d[0, 0, 10, 4010] and not d[0, 0, 600, 4000]
    assert d[0, 0, 899, 3899] and not d[0, 0, 899, 4000:].any()  # no slot 899 in the last round
    assert not d[0, 0, 950].any()  # padded query sees nothing
    assert not d[0, 0, :, 950].any()  # padded context key is seen by no one
    assert d[0, 0, 5, :6].all() and not d[0, 0, 5, 6:1000].any()


def test_validate_reports_a_wrong_block_mask(eagle3):
    """The comparison itself must catch a corrupted mask (guards against a vacuous check)."""
    from torch.nn.attention.flex_attention import create_block_mask

    from maskspec.verify import first_difference

    bm = eagle3.block_mask(1, 1, 256, 768, "cpu", 64)
    mm = eagle3.mask_mod(Q_LEN=256, KV_LEN=768)
    ref = create_block_mask(mm, 1, 1, 256, 768, device="cpu", BLOCK_SIZE=64)
    assert first_difference(bm, ref) is None
    bm.full_kv_num_blocks[0, 0, 3] -= 1
    assert "full_kv_indices" in first_difference(bm, ref)
