"""Strided families: rows whose keys are many short pieces (dilations, ``kv % P``, 2-D and
3-D windows) build exactly, on the torch path and in the Triton kernels.

Three independent references: create_block_mask over the spec's own mask_mod (``validate``),
mask_mods written here from each mask's published definition (attention-gym's NATTEN, STA,
Sparse-VideoGen), and a brute-force evaluation of random slot rows key by key.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from conftest import examples
from helpers import DEV, assert_generated_equal
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.attention.flex_attention import create_block_mask

import maskspec
from maskspec import blocks, lower, render
from maskspec.api import shipped_specs
from maskspec.context import BuildContext
from maskspec.cuda import dispatch, plans
from maskspec.lower import Rows
from maskspec.verify import first_difference, random_inputs, validate

BENCH = Path(__file__).resolve().parent.parent / "specs"
BLOCKS = st.sampled_from([1, 3, 8, 16, 32, 128, (16, 8), (8, 48), (24, 40)])


def bench(name: str, **params: int) -> maskspec.CompiledMask:
    return maskspec.load(BENCH / f"{name}.mask", **params)


# ---------------------------------------------------------------- published definitions


def natten_mod(width: int, height: int, kernel: int):
    """attention-gym's NATTEN: the kernel window around q, shifted inside the canvas."""
    def mod(b, h, q, kv):
        qr, qc, kr, kc = q // width, q % width, kv // width, kv % width
        cr = qr.clamp(kernel // 2, height - 1 - kernel // 2)
        cc = qc.clamp(kernel // 2, width - 1 - kernel // 2)
        return ((cr - kr).abs() <= kernel // 2) & ((cc - kc).abs() <= kernel // 2)
    return mod


def sta_mod(tile: int, nh: int, nw: int, frames: int, k: tuple[int, int, int]):
    """STA 3-D: tiles on a (frames, nh, nw) grid; the window of tiles around q's tile
    (an even kernel reaching one tile further back than forward)."""
    def coords(x):
        t = x // tile
        return t // (nh * nw), (t // nw) % nh, t % nw

    def mod(b, h, q, kv):  # kk // 2 tiles back, kk - 1 - kk // 2 forward
        ok = kv >= 0
        for qa, ka, n, kk in zip(coords(q), coords(kv), (frames, nh, nw), k, strict=True):
            back, fwd = kk // 2, kk - 1 - kk // 2
            c = qa.clamp(back, n - 1 - fwd)
            ok = ok & (ka >= c - back) & (ka <= c + fwd)
        return ok
    return mod


def svg_temporal_mod(prompt: int, frame: int):
    """Sparse-VideoGen's temporal head: dense text, same spatial token in every frame."""
    def mod(b, h, q, kv):
        video = (q >= prompt) & (kv >= prompt)
        same = (q - prompt) % frame == (kv - prompt) % frame
        return (q < prompt) | (kv < prompt) | (video & same)
    return mod


def dilated_mod(reach: int, dilation: int):
    def mod(b, h, q, kv):
        return ((q - kv).abs() <= reach) & ((q - kv) % dilation == 0)
    return mod


def _against(mask: maskspec.CompiledMask, mod, q: int, kv: int, bs) -> None:
    """The spec's BlockMask equals create_block_mask over the independent mask_mod, and its
    dense mask equals that mask_mod's, element for element."""
    bm = mask.block_mask(1, 1, q, kv, "cpu", bs)
    ref = create_block_mask(mod, 1, 1, q, kv, device="cpu", BLOCK_SIZE=bs)
    assert first_difference(bm, ref) is None
    qi = torch.arange(q).view(-1, 1)
    ki = torch.arange(kv).view(1, -1)
    zero = torch.zeros((), dtype=torch.long)
    assert torch.equal(mask.dense(1, 1, q, kv)[0, 0], mod(zero, zero, qi, ki).expand(q, kv))


@settings(max_examples=25)
@given(width=st.integers(7, 40), height=st.integers(7, 30), kernel=st.sampled_from([1, 3, 5, 7]),
       bs=BLOCKS)
def test_natten_matches_its_published_definition(width, height, kernel, bs):
    n = width * height
    _against(bench("natten", width=width, kernel=kernel), natten_mod(width, height, kernel), n, n,
             bs)


@settings(max_examples=20)
@given(tile=st.integers(1, 6), nh=st.integers(3, 5), nw=st.integers(3, 5),
       frames=st.integers(3, 5), k=st.tuples(*[st.sampled_from([1, 2, 3]) for _ in range(3)]),
       bs=BLOCKS)
def test_sta_3d_matches_its_published_definition(tile, nh, nw, frames, k, bs):
    n = tile * nh * nw * frames
    mask = bench("sta_3d", tile=tile, nh=nh, nw=nw, kt=k[0], kh=k[1], kw=k[2])
    _against(mask, sta_mod(tile, nh, nw, frames, k), n, n, bs)


@settings(max_examples=25)
@given(prompt=st.integers(0, 40), frame=st.integers(1, 30), n=st.integers(1, 400), bs=BLOCKS)
def test_svg_temporal_matches_its_published_definition(prompt, frame, n, bs):
    _against(bench("svg_temporal", prompt=prompt, frame=frame), svg_temporal_mod(prompt, frame),
             n, n, bs)


@settings(max_examples=25)
@given(reach=st.integers(0, 80), dilation=st.integers(1, 9), q=st.integers(1, 300),
       kv=st.integers(1, 300), bs=BLOCKS)
def test_dilated_window_matches_its_definition(reach, dilation, q, kv, bs):
    _against(bench("dilated_sliding_window", reach=reach, dilation=dilation),
             dilated_mod(reach, dilation), q, kv, bs)


def window2d_mod(width: int, left: int, right: int, up: int, down: int):
    """A 2-D window on a row-major canvas, cut at its edges."""
    def mod(b, h, q, kv):
        dr, dc = kv // width - q // width, kv % width - q % width
        return (dr >= -up) & (dr <= down) & (dc >= -left) & (dc <= right)
    return mod


@settings(max_examples=25)
@given(width=st.integers(1, 30), sides=st.tuples(*[st.integers(0, 6) for _ in range(4)]),
       n=st.integers(1, 300), bs=BLOCKS)
def test_window2d_matches_its_definition(width, sides, n, bs):
    left, right, up, down = sides
    mask = maskspec.compile(f"mask m\nregion r = window2d(width = {width}, left = {left}, "
                            f"right = {right}, up = {up}, down = {down})\n")
    _against(mask, window2d_mod(width, left, right, up, down), n, n, bs)


def test_window2d_defaults_and_explain():
    mask = maskspec.compile("mask m\nregion r = window2d(width = 8, left = 2)\n")
    assert {k: v.value for k, v in mask.ir.terms[0].prims[0].args.items()} == {
        "width": 8, "left": 2, "right": 2, "up": 2, "down": 2}
    text = "\n".join(render.describe(mask.ir))
    assert "one strided family" in text and "kv % 8" in text


def test_benchmark_specs_keep_one_family_per_row():
    """The lowering these specs exist for: one strided family, O(1) slots per row however
    many pieces (STA enumerates only its frames)."""
    sizes = {"B": 1, "H": 1, "Q_LEN": 4096, "KV_LEN": 4096}
    for name, slots in [("dilated_sliding_window", 1), ("natten", 1), ("sta_3d", 4),
                        ("svg_temporal", 3)]:
        mask = bench(name, **({"frame": 3} if name == "svg_temporal" else {}))
        rows = lower.row_slots(BuildContext(mask.ir, sizes, {}, torch.device("cpu")))
        assert mask.ir.has_families() and rows.lo.shape[-1] == slots, name


# ---------------------------------------------------------------- random strided specs

SPECS = [
    "mask m\nregion r = diagonal(period = {p}, offset = {o}) & window(left = {a}, right = {c})\n",
    "mask m\nregion r = full where kv % {p} >= {a} % {p} and kv % {p} < {c}\n",
    "mask m\nregion r = causal where kv % {p} == q % {p}\nregion s = window(left = {a})\n",
    # a family whose gaps another region fills exactly: blocks full only jointly
    "mask m\nregion even = full where kv % 2 == 0\nregion odd = full where kv % 2 == 1\n",
    "mask m\nregion lo = full where kv % {p} < {a}\nregion up = full where kv % {p} >= {a}\n",
    # two strided regions: one keeps its family, the other is enumerated
    "mask m\nregion d = diagonal(period = {p}) & causal\nregion m3 = full where kv % 3 == 1\n",
    # nested strides: the finer one is the family, the coarser one enumerated
    "mask m\nregion r = full where kv % ({p} * 4) < {p} * 2 and kv % {p} >= {a} % {p}\n",
    "mask m\nregion r = window2d(width = {p}, left = {a}, right = {o}, up = 1, down = 2)"
    " where kv < q + {c}\n",
    "mask m\ninput n: int[B] in [0, 50] = 7\nregion r = diagonal(period = {p}) where kv < q + {c}"
    " and kv % {p} < n[b]\nregion s = causal where kv < n[b]\n",
]


@st.composite
def strided_specs(draw: st.DrawFn) -> str:
    text = draw(st.sampled_from(SPECS))
    p = draw(st.integers(1, 70))
    return text.format(p=p, o=draw(st.integers(-5, 5)), a=draw(st.integers(0, 60)),
                       c=draw(st.integers(0, 90)))


@pytest.mark.slow
@settings(max_examples=examples(120))
@given(strided_specs(), st.integers(1, 3), st.integers(1, 260), st.integers(1, 260), BLOCKS,
       st.integers(0, 99))
def test_strided_specs_match_create_block_mask(text, b, q, kv, bs, seed):
    mask = maskspec.compile(text, "m.mask")
    inputs = random_inputs(mask, b, 1, q, kv, random.Random(seed))
    rep = validate(mask, b, 1, q, kv, bs, **inputs)
    assert rep.ok, (text, b, q, kv, bs, inputs, rep.problems)


CHUNKED = sorted(shipped_specs())


@settings(max_examples=examples(40), deadline=None)
@given(st.sampled_from(CHUNKED), st.integers(1, 2), st.integers(1, 300), st.integers(1, 300),
       BLOCKS, st.integers(1, 64), st.integers(0, 99))
def test_row_chunks_build_the_same_mask(spec, b, q, kv, bs, order_chunk, seed):
    """The CPU path a chunk of row blocks at a time (one block per chunk here) and index
    rows a few at a time: the same BlockMask as create_block_mask over the spec's
    mask_mod."""
    mask = maskspec.load(spec)
    inputs = random_inputs(mask, b, 1, q, kv, random.Random(seed))
    saved = blocks.ROW_BUDGET, blocks.ORDER_CHUNK
    blocks.ROW_BUDGET, blocks.ORDER_CHUNK = 1, order_chunk
    try:
        rep = validate(mask, b, 1, q, kv, bs, **inputs)
    finally:
        blocks.ROW_BUDGET, blocks.ORDER_CHUNK = saved
    assert rep.ok, (spec, b, q, kv, bs, inputs, rep.problems)


def test_jointly_covered_blocks_are_full():
    """Two families that only together cover every key: every block FULL, none PARTIAL."""
    mask = maskspec.compile("mask m\nregion even = full where kv % 2 == 0\n"
                            "region odd = full where kv % 2 == 1\n")
    grid = mask.grid(1, 1, 64, 64, "cpu", 16)
    assert grid.full.all() and not grid.partial.any()


# ---------------------------------------------------------------- random slot rows


@st.composite
def family_rows(draw: st.DrawFn) -> tuple[Rows, int, int]:
    """Rows of k interval slots and one strided slot (so strided hulls never overlap)."""
    q, kv, k = draw(st.integers(1, 40)), draw(st.integers(1, 300)), draw(st.integers(0, 4))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    lo = torch.randint(0, kv + 1, (q, k + 1), generator=gen)
    hi = (lo + torch.randint(-3, kv + 1, (q, k + 1), generator=gen)).clamp(0, kv)
    stride = draw(st.integers(1, 80))
    ph = torch.randint(0, stride, (q,), generator=gen)
    ln = torch.randint(-1, stride + 1, (q,), generator=gen).clamp(max=stride - ph)
    one = torch.ones(q, k + 1, dtype=torch.long)
    phase, st_, length = torch.zeros_like(one), one.clone(), one.clone()
    phase[:, k], st_[:, k], length[:, k] = ph, stride, ln
    rows = Rows(*(x.view(1, 1, q, k + 1) for x in (lo, hi, phase, st_, length)))
    # any level: classification reads the columns and the bounds
    rows.family = lower.FamilyPlan(object(), (k, k + 1), -(-kv // stride) + 2, (stride, stride),
                                   stride)
    return rows, q, kv


def _brute(rows: Rows, q_len: int, kv_len: int, q_bs: int, kv_bs: int) -> blocks.BlockGrid:
    """Key by key: the allowed set of every row, then blocks by reduction."""
    k = torch.arange(kv_len).view(1, 1, 1, 1, -1)
    lo, hi, ph, st_, ln = (x.unsqueeze(-1) for x in rows.tensors())
    allowed = ((k >= lo) & (k < hi) & ((k - ph) % st_ < ln)).any(-2)[0, 0]
    n_q, n_kv = blocks.counts(q_len, kv_len, q_bs, kv_bs)
    pad = torch.zeros(n_q * q_bs, n_kv * kv_bs, dtype=torch.bool)
    real = torch.zeros_like(pad)
    pad[:q_len, :kv_len], real[:q_len, :kv_len] = allowed, True
    cells = pad.view(n_q, q_bs, n_kv, kv_bs)
    full = (cells | ~real.view(n_q, q_bs, n_kv, kv_bs)).all(3).all(1)
    full &= real.view(n_q, q_bs, n_kv, kv_bs).all(3).all(1)
    touched = cells.any(3).any(1)
    return blocks.BlockGrid(partial=(touched & ~full)[None, None], full=full[None, None])


@settings(max_examples=examples(150))
@given(family_rows(), BLOCKS)
def test_family_classification_matches_brute_force(case, bs):
    rows, q, kv = case
    q_bs, kv_bs = (bs, bs) if isinstance(bs, int) else bs
    got, want = blocks.classify(rows, q, kv, q_bs, kv_bs), _brute(rows, q, kv, q_bs, kv_bs)
    assert torch.equal(got.full, want.full) and torch.equal(got.partial, want.partial)
    lo, hi, ph, st_, ln = rows.tensors()
    k = torch.arange(kv).view(1, 1, 1, 1, -1)
    n = ((k >= lo.unsqueeze(-1)) & (k < hi.unsqueeze(-1))
         & ((k - ph.unsqueeze(-1)) % st_.unsqueeze(-1) < ln.unsqueeze(-1))).any(-2).sum(-1)
    assert torch.equal(blocks.allowed_per_row(rows, kv), n)


@pytest.mark.slow
@pytest.mark.skipif(plans.triton is None, reason="Triton is not installed")
@settings(max_examples=30)
@given(family_rows(), BLOCKS)
def test_fused_family_classification_matches_torch(case, bs):
    rows, q, kv = case
    for f in ("lo", "hi", "phase", "stride", "length"):
        setattr(rows, f, getattr(rows, f).to(DEV))
    bs = (bs, bs) if isinstance(bs, int) else bs
    want = blocks.index_tensors(blocks.classify(rows, q, kv, *bs))
    got = dispatch.classify_rows(rows, q, kv, bs)
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)


@pytest.mark.slow
@pytest.mark.skipif(plans.triton is None, reason="Triton is not installed")
@settings(max_examples=30)
@given(st.one_of(strided_specs(), st.sampled_from([
    (BENCH / f"{n}.mask").read_text() for n in
    ("dilated_sliding_window", "natten", "sta_3d", "svg_temporal")])),
    st.integers(1, 2), st.integers(1, 200), st.integers(1, 200), BLOCKS, st.integers(0, 99))
def test_generated_kernel_builds_strided_specs(text, b, q, kv, bs, seed):
    """The spec's generated Triton kernel (families and enumerated levels printed from the
    row program) against the torch evaluation of the same program."""
    mask = maskspec.compile(text, "m.mask", **({"tile": 2, "nh": 3, "nw": 4} if "tile" in text
                                               else {}))
    inputs = random_inputs(mask, b, 1, q, kv, random.Random(seed))
    inputs = {k: v.to(DEV) for k, v in inputs.items()}
    bs = (bs, bs) if isinstance(bs, int) else bs
    assert assert_generated_equal(mask, b, 1, q, kv, bs, inputs)
