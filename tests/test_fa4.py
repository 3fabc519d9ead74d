"""FlashAttention-4 target: the generated CuTe mask_mod and the block-sparse tensor layout.

On CPU the generated function body runs as plain Python over ints (the ``python`` dialect,
whose ``_rem`` truncates like CuTe's Int32 ``%`` and whose loads refuse out-of-range indices)
and must equal ``dense`` for every shipped spec. The FA4 run itself is the GPU test at the end.
"""

import ast
import inspect
import random
import sys
import types

import pytest
import torch
from conftest import PARAMS, SPECS, examples, spec
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.attention.flex_attention import create_block_mask

import maskspec
from maskspec.targets import cute, fa4
from maskspec.verify import random_inputs

SHIPPED = sorted(p.stem for p in SPECS.glob("*.mask"))


def _sizes(b: int, h: int, q: int, kv: int) -> dict[str, int]:
    return {"B": b, "H": h, "Q_LEN": q, "KV_LEN": kv}


def _function(src: str) -> ast.FunctionDef:
    fns = [n for n in ast.parse(src).body if isinstance(n, ast.FunctionDef)]
    return fns[-1]


def _body(src: str) -> list[str]:
    """The generated function's statements (the def line and decorator excluded)."""
    return ast.get_source_segment(src, _function(src)).splitlines()[1:]


@pytest.mark.parametrize("name", SHIPPED)
def test_cute_source_structure(name):
    mask = spec(name, **PARAMS.get(name, {}))
    sizes = _sizes(2, 3, 96, 320)
    src = cute.source(mask.ir, sizes)
    compile(src, f"{name}.py", "exec")
    lines = src.splitlines()
    assert f"mask `{name}`" in lines[0] and mask.ir.path in lines[0]
    fn = _function(src)
    assert fn.name == f"{name}_mask_mod"
    assert [a.arg for a in fn.args.args] == [
        "batch", "head", "m_idx", "n_idx", "seqlen_info", "aux_tensors"
    ]
    assert [ast.unparse(d) for d in fn.decorator_list] == ["cute.jit"]
    body = _body(src)
    for i, d in enumerate(mask.ir.inputs):
        assert f"    {d.name} = aux_tensors[{i}]" in body
    for t in mask.ir.terms:
        assert f"    # region {t.name}" in body
        mine = [x for x in body if x.startswith(f"    in_{t.name} = ")]
        assert len(mine) == max(1, len(t.element_conds()))  # one line per element condition
    ret = fn.body[-1]
    assert isinstance(ret, ast.Return)
    assert sorted(ast.unparse(ret.value).split(" | ")) == sorted(
        f"in_{t.name}" for t in mask.ir.terms
    )
    assert _body(cute.source(mask.ir, sizes, "python")) == body  # one translation, two preludes


def _lengths(q: int, kv: int) -> types.SimpleNamespace:
    """What FA4 passes as ``seqlen_info``: the lengths the mask_mod reads at run time."""
    return types.SimpleNamespace(seqlen_q=q, seqlen_k=kv)


def _evaluate(fn, b: int, h: int, q: int, kv: int, aux) -> torch.Tensor:
    out = torch.zeros(b, h, q, kv, dtype=torch.bool)
    lengths = _lengths(q, kv)
    for bi in range(b):
        for hi in range(h):
            for qi in range(q):
                out[bi, hi, qi] = torch.tensor(
                    [bool(fn(bi, hi, qi, ki, lengths, aux)) for ki in range(kv)]
                )
    return out


@pytest.mark.parametrize("name", SHIPPED)
@settings(max_examples=examples(25))
@given(
    q=st.integers(1, 40),
    kv_mode=st.sampled_from(["same", "multiple", "any"]),
    kv_any=st.integers(1, 90),
    k=st.integers(2, 3),
    b=st.integers(1, 2),
    h=st.integers(1, 2),
    seed=st.integers(0, 2**31),
)
def test_generated_expressions_equal_dense(name, q, kv_mode, kv_any, k, b, h, seed):
    """The emitted body, run over ints, is the spec's meaning; padded tail rows read in bounds."""
    kv = {"same": q, "multiple": q * k, "any": kv_any}[kv_mode]
    mask = spec(name, **PARAMS.get(name, {}))
    inputs = random_inputs(mask, b, h, q, kv, random.Random(seed))
    sizes = _sizes(b, h, q, kv)
    aux = cute.aux_tensors(mask.ir, mask._bind(b, h, q, kv, None, inputs).inputs)
    fn = cute.load_source(cute.source(mask.ir, sizes, "python"), cute.function_name(mask.ir))
    got = _evaluate(fn, b, h, q, kv, aux)
    want = mask.dense(b, h, q, kv, **inputs)
    assert torch.equal(got, want), (name, b, h, q, kv, inputs, (got != want).nonzero()[:5])
    for qi in range(q, q + 9):  # rows of a ragged tile past Q_LEN: evaluated, then discarded
        for ki in (0, kv - 1, kv + 5):
            fn(b - 1, h - 1, qi, ki, _lengths(q, kv), aux)


def test_floor_modulo_of_negative_values():
    """CuTe's Int32 % truncates toward zero; ``_mod`` must still give the spec's floor modulo."""
    mask = maskspec.compile(
        "mask neg_mod\nregion r = causal where kv >= q - (q - 7) % 5\nvalid (q - 7) % 5 < 3"
    )
    sizes = _sizes(1, 1, 20, 20)
    fn = cute.load_source(cute.source(mask.ir, sizes, "python"), cute.function_name(mask.ir))
    assert torch.equal(_evaluate(fn, 1, 1, 20, 20, None), mask.dense(1, 1, 20, 20))


def test_one_source_serves_every_sequence_length():
    """Q_LEN and KV_LEN come from seqlen_info at run time: one source (one FA4 kernel) per
    spec, whatever the lengths, batch or heads."""
    mask = spec("eagle3")
    a = cute.source(mask.ir, _sizes(1, 1, 64, 128))
    for sizes in (_sizes(4, 8, 64, 640), _sizes(1, 1, 1000, 5000), _sizes(2, 1, 6000, 6000)):
        assert cute.source(mask.ir, sizes) == a
    assert "Q_LEN = _size(seqlen_info.seqlen_q)" in a
    assert "64" not in a.split("def eagle3_mask_mod")[1]


def test_loaded_source_is_inspectable_and_hashed():
    """The DSL's preprocessor and FA4's compile cache read the source and __cute_hash__."""
    names = ("causal_bottom_right", "causal")
    srcs = [cute.source(spec(n).ir, _sizes(1, 1, 64, 256), "python") for n in names]
    fns = [cute.load_source(s, cute.function_name(spec(n).ir))
           for s, n in zip(srcs, names, strict=True)]
    assert inspect.getsource(fns[0]).startswith("def causal_bottom_right_mask_mod(")
    assert "KV_LEN - Q_LEN" in inspect.getsource(fns[0])
    assert fns[0].__cute_hash__ != fns[1].__cute_hash__


def test_bad_dialect():
    with pytest.raises(ValueError, match="dialect"):
        cute.source(spec("causal").ir, _sizes(1, 1, 4, 4), "triton")


def test_fa4_without_flash_attn_names_the_package(monkeypatch):
    for name in ("cutlass", "cutlass.cute", "flash_attn", "flash_attn.cute"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails as if not installed
    monkeypatch.setattr(cute, "_COMPILED", {})
    with pytest.raises(ImportError, match=r"pip install flash-attn-4"):
        spec("eagle3").fa4(1, 1, 256, 512, "cpu", arch=90)


def test_cute_mask_mod_built_once_per_source(fake_cutlass):
    mask = spec("eagle3")
    one = cute.mask_mod(mask.ir, _sizes(2, 8, 64, 128))
    assert cute.mask_mod(mask.ir, _sizes(1, 1, 64, 320)) is one
    assert cute.mask_mod(mask.ir, _sizes(2, 8, 96, 192)) is one  # lengths read at run time
    assert cute.mask_mod(spec("causal").ir, _sizes(2, 8, 96, 192)) is not one
    seq = [torch.tensor([40, 64], dtype=torch.int32)]
    at = _lengths(64, 128)
    assert one(1, 0, 39, 64 + 39, at, seq) and not one(0, 0, 40, 40, at, seq)


# ---------------------------------------------------------------- block-sparse layout


def _rows(cnt: torch.Tensor, idx: torch.Tensor) -> list:
    return [sorted(r[:c].tolist()) for c, r in zip(cnt.flatten(), idx.flatten(0, -2), strict=True)]


@pytest.mark.parametrize("arch", [90, 100])
@pytest.mark.parametrize(
    "name, b, h, q, kv",
    [("eagle3", 2, 2, 300, 1300), ("eagle3", 1, 1, 512, 2048), ("sliding_window", 1, 2, 700, 700),
     ("document_causal", 2, 1, 520, 520), ("causal_bottom_right", 1, 1, 200, 900)],
)
def test_fa4_tensors_match_create_block_mask(fake_cutlass, arch, name, b, h, q, kv):
    mask = spec(name, **PARAMS.get(name, {}))
    inputs = random_inputs(mask, b, h, q, kv, random.Random(7))
    args = mask.fa4(b, h, q, kv, "cpu", arch=arch, **inputs)
    bs = fa4.default_block_size(arch)
    ref = create_block_mask(mask.mask_mod(B=b, H=h, Q_LEN=q, KV_LEN=kv, **inputs), b, h, q, kv,
                            device="cpu", BLOCK_SIZE=bs)
    fwd, bwd = args.block_sparse_tensors, args.block_sparse_tensors_bwd
    nq, nkv = -(-q // bs[0]), -(-kv // bs[1])
    for t, shape in ((fwd, (b, h, nq)), (bwd, (b, h, nkv))):
        assert t.block_size == bs
        pairs = ((t.mask_block_cnt, t.mask_block_idx), (t.full_block_cnt, t.full_block_idx))
        for cnt, idx in pairs:
            assert cnt.dtype == idx.dtype == torch.int32
            assert tuple(cnt.shape) == shape and tuple(idx.shape[:3]) == shape
            assert idx.stride(-1) == 1  # rows contiguous; (B, H) may be a broadcast view
            assert bool(((idx >= 0) & (idx < idx.shape[-1])).all())
    assert _rows(fwd.mask_block_cnt, fwd.mask_block_idx) == _rows(ref.kv_num_blocks, ref.kv_indices)
    assert _rows(fwd.full_block_cnt, fwd.full_block_idx) == _rows(
        ref.full_kv_num_blocks, ref.full_kv_indices)
    assert _rows(bwd.mask_block_cnt, bwd.mask_block_idx) == _rows(ref.q_num_blocks, ref.q_indices)
    assert _rows(bwd.full_block_cnt, bwd.full_block_idx) == _rows(
        ref.full_q_num_blocks, ref.full_q_indices)
    assert [a.dtype for a in args.aux_tensors or []] == [torch.int32] * len(mask.ir.inputs)
    assert set(args.kwargs()) == {
        "mask_mod", "aux_tensors", "block_sparse_tensors", "block_sparse_tensors_bwd"
    }


def test_fa4_block_size_rules():
    assert fa4.default_block_size(90) == (128, 128)
    assert fa4.default_block_size(100) == (256, 128)
    mask = spec("causal")
    with pytest.raises(ValueError, match="multiple of 128"):
        mask.fa4_block_sparse(1, 1, 256, 256, "cpu", (128, 64), arch=90)
    with pytest.raises(ValueError, match="multiple of 256"):
        mask.fa4_block_sparse(1, 1, 256, 256, "cpu", (128, 128), arch=100)
    with pytest.raises(ValueError, match="arch=90"):
        mask.fa4(1, 1, 256, 256, "cpu")


# ---------------------------------------------------------------- FA4 on the GPU


def _fa4_available() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        from flash_attn.cute import flash_attn_func  # noqa: F401
    except Exception:
        return False
    return True


# Params that fit a spec's layout into the few hundred positions the fp32 reference holds.
SMALL = {"natten_morton": {"canvas_w": 16, "canvas_h": 16}, "natten_tiled": {"canvas_w": 16,
         "canvas_h": 16, "tile_w": 4, "tile_h": 4}, "natten": {"width": 16},
         "sta_2d": {"tile": 16, "nw": 4}, "sta_3d": {"tile": 16, "nh": 2, "nw": 2},
         "svg_spatial": {"prompt": 20, "frame": 40, "round": 16},
         "svg_temporal": {"prompt": 20, "frame": 40}, "vsa": {"tile": 16, "top_k": 4}}


@pytest.mark.gpu
@pytest.mark.skipif(not _fa4_available(), reason="needs CUDA and flash-attn-4")
@pytest.mark.parametrize("name", SHIPPED)
def test_fa4_matches_fp32_reference(name):
    """Every shipped spec, element-fallback ones included (inputs read at kv, lookups, bit
    operations): FA4 forward and backward with the generated CuTe mask_mod and the block
    tensors against an fp32 reference over the dense mask."""
    from flash_attn.cute import flash_attn_func

    q, d = 256 if name == "natten_morton" else 300, 128
    kv = 900 if name.startswith("eagle3") or name == "dflash" else (
        q + 200 if name in ("tree", "jetspec_training") else q)
    b, h = 2, 2
    dev = torch.device("cuda", torch.cuda.current_device())
    mask = spec(name, **SMALL.get(name, PARAMS.get(name, {})))
    inputs = {k: v.to(dev) for k, v in random_inputs(mask, b, h, q, kv, random.Random(1)).items()}
    allowed = mask.dense(b, h, q, kv, dev, **inputs)
    qkv = [torch.randn(b, n, h, d, device=dev, dtype=torch.bfloat16, requires_grad=True)
           for n in (q, kv, kv)]
    out, _ = flash_attn_func(*qkv, **mask.fa4(b, h, q, kv, dev, **inputs).kwargs())
    grad = torch.randn_like(out)
    got = [out, *torch.autograd.grad(out, qkv, grad)]
    ref_in = [t.detach().float().requires_grad_() for t in qkv]
    s = torch.einsum("bqhd,bkhd->bhqk", ref_in[0], ref_in[1]) / d**0.5
    p = torch.softmax(s.masked_fill(~allowed, float("-inf")), -1).nan_to_num(0.0)
    ref = torch.einsum("bhqk,bkhd->bqhd", p, ref_in[2])
    want = [ref, *torch.autograd.grad(ref, ref_in, grad.float())]
    for g, w in zip(got, want, strict=True):
        err = (g.float() - w).norm() / w.norm()
        assert err < 2e-2, (name, float(err))
