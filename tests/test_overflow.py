"""No wrapped arithmetic: a constant past ±2**62 is refused when the spec compiles, and an
expression that sizes push past it is refused when the mask is built, each with the
expression's position — never a mask computed from wrapped 64-bit values."""

from __future__ import annotations

import random

import pytest
from conftest import examples
from hypothesis import given, settings
from hypothesis import strategies as st

import maskspec
from maskspec import MaskSpecError, ir
from maskspec.verify import random_inputs, validate


def _spec(body: str, **params: int) -> maskspec.CompiledMask:
    return maskspec.compile(f"mask m\n{body}\n", "m.mask", **params)


@pytest.mark.parametrize("body", [
    "region r = causal(offset = 2147483647 * 2147483647 * 4)",
    "region r = full where kv <= q + 2147483647 * 2147483647 * 2147483647",
    "param p: int = 2000000000\nregion r = full where kv <= q + p * p * p",
])
def test_overflowing_constants_are_refused_when_compiled(body):
    with pytest.raises(MaskSpecError, match=r"2\*\*62") as info:
        _spec(body)
    assert info.value.pos is not None


@pytest.mark.parametrize("body, small, large", [
    ("region r = full where kv <= q * 2000000000 * 2000000000 - 5", 2, 300),
    ("region r = full where kv <= q + " + " * ".join(["Q_LEN"] * 8), 2, 300),
    ("region r = window(left = Q_LEN * Q_LEN * Q_LEN * KV_LEN)", 100, 70000),
])
def test_sizes_that_overflow_are_refused_when_built(body, small, large):
    mask = _spec(body)
    assert validate(mask, 1, 1, small, small, 1).ok  # exact where it fits
    with pytest.raises(MaskSpecError, match=r"2\*\*62") as info:
        mask.block_mask(1, 1, large, large, "cpu", 128)
    assert info.value.pos is not None and info.value.pos.line == 2
    assert isinstance(info.value, ValueError)  # the sizes are the caller's arguments


@settings(max_examples=examples(60), deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1), st.integers(-(2**31 - 1), 2**31 - 1),
       st.integers(1, 64), st.integers(1, 64), st.integers(0, 99))
def test_refused_exactly_when_some_value_passes_the_limit(a, b, c, q, kv, seed):
    """The oracle, exact Python integers: the largest magnitude q·a, q·a·b and q·a·b + c
    reach over the rows. Past ±2**62 the build is refused; otherwise it is exact."""
    mask = _spec(f"region r = full where kv <= q * {a} * {b} + ({c})")
    top = q - 1
    far = max(abs(top * a), abs(top * a * b), abs(top * a * b + c), abs(c))
    inputs = random_inputs(mask, 1, 1, q, kv, random.Random(seed))
    if far > ir.MAX_VALUE:
        with pytest.raises(MaskSpecError, match=r"2\*\*62"):
            mask.block_mask(1, 1, q, kv, "cpu", 16)
    else:
        assert validate(mask, 1, 1, q, kv, 16, **inputs).ok
