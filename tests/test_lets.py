"""``let NAME = expr``: named expressions, resolved where they are used. A spec written with
lets compiles to the same IR as the spec with every let written out, builds the same masks,
and every misuse (a let used before it is defined, a name clash, a body its use site does
not allow) is a located error."""

import random
from pathlib import Path

import pytest
import torch
from conftest import examples
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.attention.flex_attention import create_block_mask

import maskspec
from maskspec.errors import MaskSpecError
from maskspec.targets import spec as spec_target
from maskspec.verify import first_difference, random_inputs

BENCH = Path(__file__).resolve().parent.parent / "specs"

# attention-gym's NATTEN (specs/natten.mask) with its clamped centre named once
# per axis instead of written out twice each.
NATTEN_LETS = """mask natten
param width: int = 32
param kernel: int = 7
let r = kernel // 2
let row = min(max(q // width, r), Q_LEN // width - 1 - r)
let col = min(max(q % width, r), width - 1 - r)
region neighborhood = full where kv // width >= row - r and kv // width <= row + r
    and kv % width >= col - r and kv % width <= col + r
"""

EAGLE3_LETS = """mask eagle3
input seq_len: int[B] in [0, Q_LEN] = Q_LEN
let n = seq_len[b]
let slot = kv % Q_LEN
region context = causal where kv < Q_LEN
region drafts = diagonal(period = Q_LEN) where kv >= Q_LEN
valid q < n and slot < n
"""


def _bench(name: str, **params) -> maskspec.CompiledMask:
    return maskspec.load(BENCH / f"{name}.mask", **params)


@pytest.mark.parametrize("text, written_out", [
    (NATTEN_LETS, lambda **p: _bench("natten", **p)),
    (EAGLE3_LETS, lambda **p: maskspec.load("eagle3")),
])
def test_lets_compile_to_the_written_out_ir(text, written_out):
    params = {"width": 16, "kernel": 5} if "width" in text else {}
    a, b = maskspec.compile(text, "lets.mask", **params), written_out(**params)
    for ta, tb in zip(a.ir.terms, b.ir.terms, strict=True):
        assert ta.program == tb.program and ta.prims == tb.prims
    assert spec_target.source(a.ir).split("\n", 1)[1] == spec_target.source(b.ir).split("\n", 1)[1]


@settings(max_examples=examples(30), deadline=None)
@given(st.sampled_from(["natten", "eagle3"]), st.integers(1, 2), st.integers(1, 12),
       st.sampled_from([1, 3, 5]), st.sampled_from([8, 16, (16, 8), 24]), st.integers(0, 99))
def test_lets_build_what_create_block_mask_builds(which, b, rows, kernel, bs, seed):
    if which == "natten":
        width = 8
        mask = maskspec.compile(NATTEN_LETS, "lets.mask", width=width, kernel=kernel)
        q = kv = width * max(rows, kernel)
    else:
        mask = maskspec.compile(EAGLE3_LETS, "lets.mask")
        q, kv = 8 * rows, 8 * rows * (1 + seed % 3)
    inputs = random_inputs(mask, b, 1, q, kv, random.Random(seed))
    ours = mask.block_mask(b, 1, q, kv, "cpu", bs, **inputs)
    ref = create_block_mask(mask.mask_mod(B=b, H=1, Q_LEN=q, KV_LEN=kv, **inputs), b, 1, q, kv,
                            device="cpu", BLOCK_SIZE=bs)
    assert first_difference(ours, ref) is None
    written = (_bench("natten", width=8, kernel=kernel) if which == "natten"
               else maskspec.load("eagle3"))
    assert torch.equal(mask.dense(b, 1, q, kv, **inputs), written.dense(b, 1, q, kv, **inputs))


@pytest.mark.parametrize("text, message, where", [
    ("let c = kv + 1\nregion r = window(left = c)\n",
     "`kv` cannot be used in a primitive argument", "2:9"),
    ("let a = b2 + 1\nlet b2 = 3\nregion r = causal where kv < a\n",
     "let `a` uses `b2`, defined after it", "2:9"),
    ("let a = a + 1\nregion r = causal where kv < a\n", "let `a` uses itself", "2:9"),
    ("let q = 3\nregion r = causal\n", "`q` is a built-in name and cannot name a let", "2:1"),
    ("param p: int = 2\nlet p = 3\nregion r = causal\n", "`p` is already declared as a param",
     "3:1"),
    ("let a = zz + 1\nregion r = causal where kv < a\n", "unknown name `zz`", "2:9"),
    ("region let = causal\n", "`let` is a keyword, not a name", "2:8"),
])
def test_misused_lets_are_located_errors(text, message, where):
    with pytest.raises(MaskSpecError) as err:
        maskspec.compile("mask m\n" + text, "m.mask")
    first = str(err.value).splitlines()[0]
    assert first.startswith(f"m.mask:{where}: error:") and message in first, str(err.value)


def test_an_error_inside_a_let_says_where_it_is_used():
    with pytest.raises(MaskSpecError) as err:
        maskspec.compile("mask m\nlet c = kv + 1\nregion r = window(left = c)\n", "m.mask")
    assert "hint: `c` is used in a primitive argument at line 3, column 26" in str(err.value)
