"""Region families, ``region r[i in lo .. hi) = …``: one region per member, the count a
param or data bounded by an input's declared range. Checked block for block against
create_block_mask over mask_mods written here from each mask's definition."""

from __future__ import annotations

import torch
from conftest import examples
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.attention.flex_attention import create_block_mask

import maskspec
from maskspec import cli
from maskspec.targets import spec as spec_target
from maskspec.verify import first_difference, structure_problems

BLOCKS = st.sampled_from([8, 16, 32, (16, 8), (8, 48), (24, 40)])

TOP_K = """mask top_k
param tile: int = 16
param k: int = 3
input topk: int[B, H, (Q_LEN + tile - 1) // tile, k] in [0, (KV_LEN + tile - 1) // tile - 1]
region selected[i in 0 .. k) = full where kv // tile == topk[b, h, q // tile, i]
"""

GLOBALS = """mask globals
param width: int = 8
input n: int[B] in [0, 5]
input pos: int[B, 5] in [0, KV_LEN - 1]
region global_keys[j in 0 .. n[b]) = full where kv == pos[b, j]
region global_rows[j in 0 .. n[b]) = full where q == pos[b, j]
region local = window(left = width)
"""

SHIFTED = """mask shifted
param rounds: int = 3
region round[r in 1 .. rounds + 1) = diagonal(period = 7 * r) where kv <= q - 5 * r
"""


def _equal(mask: maskspec.CompiledMask, mod, b: int, h: int, q: int, kv: int, bs,
           **inputs: torch.Tensor) -> None:
    ours = mask.block_mask(b, h, q, kv, "cpu", bs, **inputs)
    ref = create_block_mask(mod, b, h, q, kv, device="cpu", BLOCK_SIZE=bs)
    assert first_difference(ours, ref) is None, (q, kv, bs, first_difference(ours, ref))
    assert not structure_problems(ours)


@settings(max_examples=examples(40), deadline=None)
@given(st.integers(1, 2), st.integers(1, 2), st.integers(1, 200), st.integers(1, 300),
       BLOCKS, st.integers(1, 4), st.integers(0, 2**31))
def test_top_k_tiles_per_query_tile(b, h, q, kv, bs, k, seed):
    """Video sparse attention's selection: each query tile sees its k chosen key tiles."""
    mask = maskspec.compile(TOP_K, k=k)
    assert all(t.analytic for t in mask.ir.terms) and len(mask.ir.terms) == k
    tiles = -(-kv // 16)
    topk = torch.randint(0, tiles, (b, h, -(-q // 16), k),
                         generator=torch.Generator().manual_seed(seed))

    def mod(b_, h_, q_, kv_):
        return (topk[b_, h_, q_ // 16] == kv_ // 16).any()
    _equal(mask, mod, b, h, q, kv, bs, topk=topk)


@settings(max_examples=examples(40), deadline=None)
@given(st.integers(1, 3), st.integers(1, 200), BLOCKS, st.integers(0, 2**31))
def test_a_count_read_from_an_input(b, n, bs, seed):
    """Longformer with a per-sample number of global tokens at given positions: the family
    unrolls to the declared maximum (5), members past ``n[b]`` allow nothing."""
    mask = maskspec.compile(GLOBALS)
    assert len(mask.ir.terms) == 11
    gen = torch.Generator().manual_seed(seed)
    count = torch.randint(0, 6, (b,), generator=gen)
    pos = torch.randint(0, n, (b, 5), generator=gen)

    def mod(b_, h_, q_, kv_):
        live = torch.arange(5) < count[b_]
        hit = (live & ((pos[b_] == kv_) | (pos[b_] == q_))).any()
        return hit | ((kv_ <= q_) & (kv_ >= q_ - 8))
    _equal(mask, mod, b, 1, n, n, bs, n=count, pos=pos)


@settings(max_examples=examples(30), deadline=None)
@given(st.integers(1, 300), st.integers(1, 300), BLOCKS, st.integers(1, 4))
def test_the_member_index_in_arguments_and_conditions(q, kv, bs, rounds):
    mask = maskspec.compile(SHIFTED, rounds=rounds)
    assert [t.name for t in mask.ir.terms] == [f"round_{r}" for r in range(1, rounds + 1)]

    def mod(b_, h_, q_, kv_):
        out = kv_ < 0
        for r in range(1, rounds + 1):
            out = out | (((kv_ - q_) % (7 * r) == 0) & (kv_ <= q_ - 5 * r))
        return out
    _equal(mask, mod, 1, 1, q, kv, bs)


def test_a_family_prints_as_its_members():
    """``compile --emit mask`` writes each member as a region of its own (``global_keys_0``),
    which parses back to the same mask."""
    mask = maskspec.compile(GLOBALS)
    text = spec_target.source(mask.ir)
    assert "region global_keys_0 = full where kv == pos[b, 0] and 0 < n[b]" in text
    again = maskspec.compile(text)
    x = {"n": torch.tensor([2, 4]), "pos": torch.tensor([[3, 90, 0, 0, 0], [5, 6, 7, 99, 1]])}
    assert torch.equal(again.dense(2, 1, 100, 100, **x), mask.dense(2, 1, 100, 100, **x))


def test_explain_names_each_member(tmp_path, capsys):
    path = tmp_path / "g.mask"
    path.write_text(GLOBALS)
    assert cli.main(["explain", str(path), "--q-len", "64", "--kv-len", "64"]) == 0
    out = capsys.readouterr().out
    assert "mask(b, h, q, kv) = global_keys_0 ∨ global_keys_1" in out
    assert "region global_rows_4:  region global_rows[j in 0 .. n[b]) = full" in out
