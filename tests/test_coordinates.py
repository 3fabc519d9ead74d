"""Key coordinates of mixed-radix and offset layouts build analytically and exactly:
``(kv + c) // d``, ``(kv // a) % b``, ``(kv % P) // a``, ``(kv + c) % P == x``, and windows
of ``(kv + c) % P`` that wrap around the period (split into two that do not).

Each random condition is checked three ways: it must compile to an analytic term (no
element fallback), its blocks must equal create_block_mask over the spec's own element
mask_mod (``validate``), and the generated Triton kernel must equal the torch path.
"""

from __future__ import annotations

import pytest
import torch
from conftest import examples
from helpers import assert_generated_equal
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.attention.flex_attention import create_block_mask, create_mask

import maskspec
from maskspec.verify import first_difference, validate

BLOCKS = st.sampled_from([1, 3, 8, 16, 32, (16, 8), (8, 48), (24, 40)])
CMPS = st.sampled_from(["<", "<=", ">", ">=", "=="])


@st.composite
def coordinate(draw: st.DrawFn) -> str:
    """A key coordinate: a digit of kv (with an offset) in some radix."""
    a, b = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    c = draw(st.integers(-20, 20))
    return draw(st.sampled_from([
        f"(kv + {c}) // {a}", f"(kv // {a}) % {b}", f"(kv % {a * b}) // {a}",
        f"(kv - q + {c}) // {a}", f"((kv // {a}) % {a * b}) // {b}", f"(kv + {c}) // {a} // {b}",
    ]))


@st.composite
def row_side(draw: st.DrawFn) -> str:
    """What the coordinate is compared with: an expression of q (and a constant)."""
    k, m = draw(st.integers(1, 7)), draw(st.integers(-6, 6))
    return draw(st.sampled_from([f"q // {k} + {m}", f"q % {k} + {m}", str(m), f"(q + {m}) % {k}"]))


@st.composite
def spec(draw: st.DrawFn) -> str:
    conds = [f"{draw(coordinate())} {draw(CMPS)} {draw(row_side())}"
             for _ in range(draw(st.integers(1, 3)))]
    text = "mask m\nregion r = full where " + " and ".join(conds) + "\n"
    if draw(st.booleans()):
        text += "region s = window(left = 5)\n"
    return text


def residue_spec(p: int, c: int, x: str) -> str:
    return f"mask m\nregion r = causal where (kv + {c}) % {p} == {x}\n"


@settings(max_examples=examples(150), deadline=None)
@given(spec(), st.integers(1, 120), st.integers(1, 160), BLOCKS)
def test_digits_of_kv_are_analytic_and_exact(text, q_len, kv_len, bs):
    mask = maskspec.compile(text)
    assert all(t.analytic for t in mask.ir.terms), text
    rep = validate(mask, 1, 1, q_len, kv_len, bs)
    assert rep.ok, (text, rep.problems)


@settings(max_examples=examples(80), deadline=None)
@given(st.integers(1, 9), st.integers(-30, 30),
       st.sampled_from(["q % 5", "q", "q // 3 - 4", "q % 7 - 2", "3"]),
       st.integers(1, 120), st.integers(1, 160), BLOCKS)
def test_a_shifted_residue_is_one_key_per_period(p, c, x, q_len, kv_len, bs):
    """``(kv + c) % P == x`` with x anywhere (outside [0, P) no key meets it)."""
    mask = maskspec.compile(residue_spec(p, c, x))
    assert mask.ir.terms[0].analytic
    rep = validate(mask, 1, 1, q_len, kv_len, bs)
    assert rep.ok, rep.problems


OPS = {"<": torch.lt, "<=": torch.le, ">": torch.gt, ">=": torch.ge, "==": torch.eq}


@settings(max_examples=examples(100), deadline=None)
@given(st.lists(st.tuples(st.integers(1, 9), st.integers(1, 3), st.integers(-30, 30), CMPS,
                          st.integers(1, 6), st.integers(-8, 8)), min_size=1, max_size=3),
       st.integers(0, 30), st.integers(1, 120), st.integers(1, 160), BLOCKS)
def test_shifted_windows_split_into_halves_that_do_not_wrap(conds, w, q_len, kv_len, bs):
    """``((kv + c) // a) % P OP (q % k + m)`` inside a window of ±w keys: a window of a
    shifted residue, which may wrap around its period, builds analytically as the union of
    its two halves, exactly as a mask_mod evaluating the condition itself."""
    text = f"mask m\nregion r = window(left = {w}, right = {w}) where " + " and ".join(
        f"((kv + {c}) // {a}) % {p} {op} q % {k} + {m}" for p, a, c, op, k, m in conds) + "\n"
    mask = maskspec.compile(text)
    assert all(t.analytic for t in mask.ir.terms), text

    def published(b, h, q, kv):
        ok = (kv >= q - w) & (kv <= q + w)
        for p, a, c, op, k, m in conds:
            ok = ok & OPS[op](((kv + c) // a) % p, q % k + m)
        return ok
    ours = mask.block_mask(1, 1, q_len, kv_len, "cpu", bs)
    ref = create_block_mask(published, 1, 1, q_len, kv_len, device="cpu", BLOCK_SIZE=bs)
    assert first_difference(ours, ref) is None, (text, first_difference(ours, ref))
    assert torch.equal(mask.dense(1, 1, q_len, kv_len)[0, 0],
                       create_mask(published, 1, 1, q_len, kv_len, device="cpu")[0, 0])


def test_a_split_that_would_enumerate_long_rows_stays_with_the_fallback():
    """Halves are enumerated piece by piece: a fine period over whole rows (thousands of
    pieces) is cheaper decided by the element fallback, which it is, exactly."""
    mask = maskspec.compile("mask m\nregion r = full where (kv - 5) % 7 < 3\n")
    assert [t.name for t in mask.ir.terms] == ["r"] and mask.ir.fallback
    assert validate(mask, 1, 1, 60, 90, 8).ok
    coarse = maskspec.compile("mask m\nregion r = full where (kv - 5) % 4096 < 3000\n")
    assert [t.name for t in coarse.ir.terms] == ["r_wrap0", "r_wrap1"]
    assert not coarse.ir.fallback


def test_past_three_wrapping_windows_the_rest_stay_with_the_fallback():
    conds = " and ".join(f"(kv + 1) % {p} < 2" for p in (4, 5, 6, 7))
    mask = maskspec.compile(f"mask m\nregion r = window(left = 9) where {conds}\n")
    assert len(mask.ir.terms) == 8
    assert {res.why for _, res in mask.ir.residuals()} == {
        "a window of `(kv + c) % P` may wrap around its period"}
    assert validate(mask, 1, 1, 60, 90, 8).ok


@pytest.mark.slow
@settings(max_examples=examples(8), deadline=None)
@given(spec(), st.integers(1, 200), st.integers(1, 300), BLOCKS)
def test_digits_of_kv_in_the_generated_kernel(text, q_len, kv_len, bs):
    mask = maskspec.compile(text)
    bs = bs if isinstance(bs, tuple) else (bs, bs)
    assert_generated_equal(mask, 1, 1, q_len, kv_len, bs, {})
