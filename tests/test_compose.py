"""The spec printer and composition: a compiled mask written back as a spec compiles to the
same mask, and ``a | b`` / ``a & b`` mean the union / intersection of the two masks, built
analytically and exactly."""

import random
import warnings

import pytest
import torch
from conftest import PARAMS, examples, spec
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import valid_specs

import maskspec
from maskspec.api import shipped_specs
from maskspec.targets import spec as spec_target
from maskspec.verify import random_inputs, validate


def _same_mask(a, b, shape, seed) -> None:
    """Dense masks equal on random inputs, and b's BlockMask exact (validate)."""
    bsz, h, q, kv = shape
    inputs = random_inputs(a, bsz, h, q, kv, random.Random(seed))
    assert torch.equal(a.dense(bsz, h, q, kv, **inputs), b.dense(bsz, h, q, kv, **inputs))
    assert validate(b, bsz, h, q, kv, (16, 32), **inputs).ok


@pytest.mark.parametrize("name", sorted(shipped_specs()))
def test_printed_shipped_specs_compile_to_the_same_mask(name):
    mask = spec(name, **PARAMS.get(name, {}))
    again = maskspec.compile(spec_target.source(mask.ir), "printed.mask")
    for seed, shape in enumerate([(2, 2, 100, 300), (1, 3, 77, 77), (2, 1, 1, 50)]):
        _same_mask(mask, again, shape, seed)


@settings(max_examples=examples(60), deadline=None)
@given(valid_specs(), st.integers(1, 120), st.integers(1, 200), st.integers(0, 99))
def test_printed_random_specs_compile_to_the_same_mask(generated, q, kv, seed):
    text, params = generated
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", maskspec.MaskSpecWarning)
        mask = maskspec.compile(text, "fuzz.mask", **params)
        again = maskspec.compile(spec_target.source(mask.ir), "printed.mask")
    _same_mask(mask, again, (2, 1, q, kv), seed)


PAIRS = [
    ("sliding_window", "document_causal"),
    ("causal", "prefix_lm"),
    ("eagle3", "sliding_window_with_sinks"),
    ("chunked_causal", "per_head_window"),
    ("dflash", "causal_bottom_right"),
]


@pytest.mark.parametrize(("left", "right"), PAIRS)
@pytest.mark.parametrize("op", ["|", "&"])
def test_union_and_intersection_mean_or_and(left, right, op):
    a, b = spec(left, **PARAMS.get(left, {})), spec(right, **PARAMS.get(right, {}))
    both = (a | b) if op == "|" else (a & b)
    for seed, (bsz, h, q, kv) in enumerate([(2, 2, 96, 288), (1, 1, 130, 130), (2, 3, 40, 65)]):
        inputs = random_inputs(both, bsz, h, q, kv, random.Random(seed))
        mine = {k: v for k, v in inputs.items() if k in a.input_names}
        theirs = {k: v for k, v in inputs.items() if k in b.input_names}
        da, db = a.dense(bsz, h, q, kv, **mine), b.dense(bsz, h, q, kv, **theirs)
        want = (da | db) if op == "|" else (da & db)
        assert torch.equal(both.dense(bsz, h, q, kv, **inputs), want)
        assert validate(both, bsz, h, q, kv, (32, 16), **inputs).ok


def test_inputs_declared_differently_are_refused():
    with pytest.raises(ValueError, match=r"both read an input `doc` but declare it differently"):
        spec("document_causal") & spec("eagle3_packed")


def test_composed_masks_say_what_they_are():
    both = spec("causal") | spec("sliding_window")
    assert both.name == "causal_or_sliding_window"
    assert [t.name for t in both.ir.terms] == ["causal_past", "sliding_window_local"]
    assert "CompiledMask(causal_or_sliding_window" in repr(both)
