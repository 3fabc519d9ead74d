"""Runtime arguments and inputs, as a careless or hostile caller passes them, to every build
entry point (``block_mask``, ``fa4_block_sparse``, ``cp_block_mask``, ``fast.Builder``):
either a ValueError that names what is wrong, or exactly the reference result."""

from __future__ import annotations

import pytest
import torch
from conftest import examples
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.attention.flex_attention import create_block_mask

import maskspec
from maskspec.fast import Builder
from maskspec.verify import first_difference

Q, KV, BS = 96, 288, 32


@pytest.mark.parametrize("call, needle", [
    (lambda m: m.block_mask(1, 1, Q, KV, "meta"), "'meta' holds no values"),
    (lambda m: m.block_mask(1, 1, Q, KV, seq_len=torch.tensor([5], device="meta")),
     "'meta' holds no values"),
    (lambda m: m.block_mask(1, 1, Q, KV, "nope"), "is not a torch device"),
    (lambda m: m.block_mask(1, 1, Q, KV, "cpu", True), "BLOCK_SIZE must be"),
    (lambda m: m.block_mask(1, 1, Q, KV, "cpu", (32, False)), "BLOCK_SIZE must be"),
    (lambda m: m.fa4_block_sparse(1, 1, 256, 512, "cpu", arch=80), "arch must be"),
    (lambda m: m.fa4_block_sparse(1, 1, 256, 512, "cpu", arch="90"), "arch must be"),
    (lambda m: m.fa4_block_sparse(1, 1, 256, 512, "cpu", arch=True), "arch must be"),
    (lambda m: maskspec.document_ids(torch.tensor([0, 3, 5]), -3), "length must be"),
    (lambda m: m.block_mask(True, 1, Q, KV, "cpu"), "B must be a positive int"),
    (lambda m: m.block_mask(1, 1, Q, KV, seq_len=[10**20]), "input `seq_len` cannot be"),
    (lambda m: m.block_mask(2, 1, Q, KV, seq_len=[[1, 2], [3]]), "input `seq_len` cannot be"),
])
def test_bad_arguments_say_what_is_accepted(call, needle):
    with pytest.raises(ValueError, match=needle.replace("(", r"\(")):
        call(maskspec.load("eagle3"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this torch has CUDA")
def test_cuda_on_a_torch_without_it_is_a_value_error():
    with pytest.raises(ValueError, match="no usable CUDA"):
        maskspec.load("eagle3").block_mask(1, 1, Q, KV, "cuda")


def _variants(draw: st.DrawFn, good: torch.Tensor) -> object:
    """The input as a caller might pass it: as is, in another dtype, as a list, reshaped,
    out of range, reordered, as floats or bools, on meta."""
    how = draw(st.sampled_from(["same", "int32", "int8", "list", "float", "bool", "shape",
                                "scalar", "huge", "negative", "shuffled", "meta"]))
    if how == "same":
        return good
    if how in ("int32", "int8"):
        return good.to(getattr(torch, how)) if good.abs().max() < 127 or how == "int32" \
            else good.to(torch.int32)
    if how == "list":
        return good.tolist()
    if how == "float":
        return good.float()
    if how == "bool":
        return good > 0
    if how == "shape":
        return torch.cat([good, good], -1)
    if how == "scalar":
        return 7
    if how == "huge":
        return good + 10**6
    if how == "negative":
        return good - 10**6
    if how == "shuffled":
        return good.flip(-1)
    return good.to("meta")


@st.composite
def calls(draw: st.DrawFn) -> tuple[str, dict[str, object]]:
    name = draw(st.sampled_from(["eagle3", "document_causal", "sliding_window_with_sinks"]))
    if name == "eagle3":
        good = torch.tensor([draw(st.integers(0, Q)), draw(st.integers(0, Q))])
        return name, {"seq_len": _variants(draw, good)}
    if name == "document_causal":
        cuts = sorted(draw(st.lists(st.integers(0, KV), min_size=2, max_size=2)))
        good = torch.stack([maskspec.document_ids(torch.tensor([0, *cuts]), KV)[0]] * 2)
        return name, {"doc": _variants(draw, good)}
    return name, {}


def _canonical(mask: maskspec.CompiledMask, inputs: dict[str, object]) -> dict:
    """The inputs as int64 tensors on CPU (what a correct call means)."""
    return {k: torch.as_tensor(v).to(torch.int64) for k, v in inputs.items()}


def _same(a: object, b: object) -> bool:
    """Equal tensors in equal nestings (FA4's block-sparse tuples)."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _named(err: ValueError, inputs: dict[str, object]) -> bool:
    return any(f"`{k}`" in str(err) for k in inputs)


@settings(max_examples=examples(80), deadline=None)
@given(calls())
def test_checked_builds_refuse_by_name_or_equal_the_reference(call):
    name, inputs = call
    mask = maskspec.load(name)
    try:
        bm = mask.block_mask(2, 1, Q, KV, None, BS, **inputs)
    except ValueError as err:
        assert _named(err, inputs) or "'meta'" in str(err), str(err)
        return
    canon = _canonical(mask, inputs)
    ref = create_block_mask(mask.mask_mod(B=2, Q_LEN=Q, KV_LEN=KV, **canon), 2, 1, Q, KV,
                            device="cpu", BLOCK_SIZE=BS)
    assert first_difference(bm, ref) is None
    fwd, bwd = mask.fa4_block_sparse(2, 1, Q, KV, "cpu", (128, 128), arch=90, **inputs)
    fwd2, bwd2 = mask.fa4_block_sparse(2, 1, Q, KV, "cpu", (128, 128), arch=90, **canon)
    assert _same((fwd, bwd), (fwd2, bwd2))
    for rank in range(2):
        cp = mask.cp_block_mask(2, 1, Q, KV, rank=rank, world_size=2, BLOCK_SIZE=BS, **inputs)
        cp2 = mask.cp_block_mask(2, 1, Q, KV, rank=rank, world_size=2, BLOCK_SIZE=BS, **canon)
        assert first_difference(cp, cp2) is None


@settings(max_examples=examples(60), deadline=None)
@given(calls())
def test_unchecked_builds_refuse_by_name_or_agree_with_their_mask_mod(call):
    """No value checks (Builder, check_inputs=False): shapes, dtypes and devices are still
    refused by name; any values give a mask equal to create_block_mask over its own
    mask_mod."""
    name, inputs = call
    mask = maskspec.load(name)
    for build in (lambda: Builder(mask, BS)(2, 1, Q, KV, None, **inputs),
                  lambda: mask.block_mask(2, 1, Q, KV, None, BS, check_inputs=False, **inputs)):
        try:
            bm = build()
        except ValueError as err:
            assert _named(err, inputs) or "'meta'" in str(err), str(err)
            continue
        ref = create_block_mask(bm.mask_mod, 2, 1, Q, KV, device="cpu", BLOCK_SIZE=BS)
        assert first_difference(bm, ref) is None
