"""Shared checks of the test modules: the device the kernels run on, tensor-for-tensor
comparison of BlockMask index tensors, and a spec's generated build kernel against the torch
path."""

import random

import torch
from torch.nn.attention.flex_attention import create_block_mask

import maskspec
from maskspec import blocks, lower
from maskspec.api import CompiledMask, shipped_specs
from maskspec.cuda import dispatch
from maskspec.verify import first_difference, random_inputs

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


def assert_rank_masks_equal(mask: CompiledMask, b: int, h: int, q_len: int, ws: int, bs: int,
                            x: dict[str, torch.Tensor]) -> None:
    """Context-parallel rank masks (head-tail balancer) equal create_block_mask over the
    global dense mask re-indexed to each rank's rows and the gathered keys."""
    from maskspec.targets.cp import head_tail, key_order, local_positions
    dense = mask.dense(b, h, q_len, q_len, **x)
    sharding = head_tail(q_len, ws, torch.device("cpu"))
    keys = key_order(sharding, ws, 1)[0]
    for rank in range(ws):
        rows = local_positions(sharding.order, rank, ws)[0]
        local = dense[:, :, rows][..., keys]
        bm = mask.cp_block_mask(b, h, q_len, q_len, rank=rank, world_size=ws, BLOCK_SIZE=bs,
                                load_balancer="head_tail", **x)
        ref = create_block_mask(lambda b_, h_, q, kv, d=local: d[b_, h_, q, kv], b, h,
                                q_len // ws, q_len, device="cpu", BLOCK_SIZE=bs)
        assert first_difference(bm, ref) is None, (mask.ir.source, rank)


def union_of(regions: list) -> object:
    """An independent meaning (b, h, q, kv, inputs) of regions given as (shape's condition,
    [its other conditions]) pairs: the OR of each region's AND."""
    def meaning(b, h, q, kv, x):
        out = kv < 0
        for fn, conds in regions:
            ok = fn(b, h, q, kv, x)
            for c in conds:
                ok = ok & c(b, h, q, kv, x)
            out = out | ok
        return out
    return meaning
