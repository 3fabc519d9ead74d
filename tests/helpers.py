"""Shared checks of the test modules: the device the kernels run on, tensor-for-tensor
comparison of BlockMask index tensors, and a spec's generated build kernel against the torch
path."""

import random

import torch

import maskspec
from maskspec import blocks, lower
from maskspec.api import CompiledMask, shipped_specs
from maskspec.cuda import dispatch
from maskspec.verify import random_inputs

DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # else the interpreter


def on_dev(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: t.to(DEV) for k, t in inputs.items()}


NAMES = ("kv_num", "kv_idx", "full_kv_num", "full_kv_idx",
         "q_num", "q_idx", "full_q_num", "full_q_idx")


def assert_tensors_equal(got: tuple[torch.Tensor, ...], want: tuple[torch.Tensor, ...]) -> None:
    for name, a, b in zip(NAMES, got, want, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert torch.equal(a, b), f"{name} differs at {(a != b).nonzero()[:5].tolist()}"


def assert_generated_equal(mask: CompiledMask, b: int, h: int, q: int, kv: int,
                            bs: tuple[int, int], inputs: dict) -> bool:
    """The generated build kernel against lowering + torch classification; False if the
    shape does not fit the kernel (huge interval counts fall back to the torch path)."""
    ctx = mask._bind(b, h, q, kv, DEV, inputs, block_size=bs)
    got = dispatch.build(ctx)
    if got is None:
        return False
    rows = lower.row_slots(ctx)
    assert_tensors_equal(got, blocks.index_tensors(blocks.classify(rows, q, kv, *bs)))
    return True


SPECS_WITH_INPUTS = [n for n in sorted(shipped_specs()) if maskspec.load(n).ir.inputs]


def hostile(mask: CompiledMask, b: int, q: int, kv: int, seed: int) -> dict:
    """Inputs of the declared shapes whose integer values ignore every declared range and
    order: anywhere in [-2·KV, 2·KV]."""
    rng = random.Random(seed)
    out = random_inputs(mask, b, 1, q, kv, rng)
    gen = torch.Generator().manual_seed(seed)
    for d in mask.ir.inputs:
        if d.dtype == "int":
            out[d.name] = torch.randint(-2 * kv, 2 * kv + 1, out[d.name].shape, generator=gen)
    return out
