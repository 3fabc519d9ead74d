"""The element fallback: conditions with no interval form in kv (inputs read at kv, ``!=`` on
kv, bit operations, mixed-radix key coordinates, kv inside min/max) build exactly.

References: create_block_mask over mask_mods written here from each condition's plain
meaning (not from the spec's IR), and over the spec's own mask_mod (``validate``); the CP
rank masks against the dense mask; random shapes, inputs and block sizes throughout.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from conftest import examples, spec
from helpers import assert_rank_masks_equal, union_of
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import shapes, valid_specs
from torch.nn.attention.flex_attention import create_block_mask, create_mask

import maskspec
from maskspec import elements
from maskspec.api import shipped_specs
from maskspec.errors import MaskSpecError
from maskspec.verify import first_difference, random_inputs, structure_problems, validate

T = 5  # the tile of the tile map below

INPUTS = {
    "g": "bool[B, KV_LEN]",
    "gq": "bool[B, Q_LEN]",
    "kimg": "int[B, KV_LEN] in [0, 3]",
    "qimg": "int[B, Q_LEN] in [0, 3]",
    "sel": f"bool[B, (Q_LEN + {T - 1}) // {T}, (KV_LEN + {T - 1}) // {T}]",
}

# Conditions with no interval form in kv, as spec text and as an independent mask_mod
# condition (b, h, q, kv: 0-d tensors under create_block_mask's vmap; x: the inputs).
RESIDUAL = {
    "key flag": ("g[b, kv]", lambda b, h, q, kv, x: x["g"][b, kv]),
    "ids of q and kv": ("kimg[b, kv] == qimg[b, q]",
                        lambda b, h, q, kv, x: x["kimg"][b, kv] == x["qimg"][b, q]),
    "tile map": (f"sel[b, q // {T}, kv // {T}]",
                 lambda b, h, q, kv, x: x["sel"][b, q // T, kv // T]),
    "not equal": ("kv != q - 2", lambda b, h, q, kv, x: kv != q - 2),
    "xor": ("(q ^ kv) & 5 == 0", lambda b, h, q, kv, x: ((q ^ kv) & 5) == 0),
    "or": ("kv | 3 <= q", lambda b, h, q, kv, x: (kv | 3) <= q),
    "two digits": ("(kv // 3) % 4 + kv % 3 < 4",
                   lambda b, h, q, kv, x: (kv // 3) % 4 + kv % 3 < 4),
    "offset mod": ("(kv - 2) % 5 != 0", lambda b, h, q, kv, x: (kv - 2) % 5 != 0),
    "shifted bits": ("(kv >> 2) & 5 == h", lambda b, h, q, kv, x: ((kv // 4) & 5) == h),
    "kv in min": ("min(kv, q) >= 3", lambda b, h, q, kv, x: torch.minimum(kv, q) >= 3),
    "queries from a key's id": ("q >= 3 * kimg[b, kv]",
                                lambda b, h, q, kv, x: q >= 3 * x["kimg"][b, kv]),
    "queries up to a key's id": ("q < 40 * kimg[b, kv] + 5",
                                 lambda b, h, q, kv, x: q < 40 * x["kimg"][b, kv] + 5),
}
ANALYTIC = {
    "full": ("full", lambda b, h, q, kv, x: kv >= 0),
    "causal": ("causal", lambda b, h, q, kv, x: kv <= q),
    "window": ("window(left = 9, right = 4)", lambda b, h, q, kv, x: (kv >= q - 9) & (kv <= q + 4)),
    "q flag": ("full where gq[b, q]", lambda b, h, q, kv, x: x["gq"][b, q]),
    "early keys": ("full where kv < 7", lambda b, h, q, kv, x: kv < 7),
}


@st.composite
def fallback_specs(draw: st.DrawFn):
    """(spec text, independent mask_mod of (b, h, q, kv, inputs)): 1–3 regions, each an
    analytic shape restricted by 0–2 residual conditions, and sometimes a residual valid."""
    regions, mods = [], []
    for i in range(draw(st.integers(1, 3))):
        text, fn = ANALYTIC[draw(st.sampled_from(sorted(ANALYTIC)))]
        conds = [RESIDUAL[k] for k in draw(st.lists(st.sampled_from(sorted(RESIDUAL)),
                                                    max_size=2))]
        if i == 0 and not conds:
            conds = [RESIDUAL[draw(st.sampled_from(sorted(RESIDUAL)))]]
        where = " and ".join(c[0] for c in conds)
        joiner = " and " if " where " in text else " where "
        regions.append(f"region r{i} = {text}" + (joiner + where if where else ""))
        mods.append((fn, [c[1] for c in conds]))
    valid = RESIDUAL[draw(st.sampled_from(sorted(RESIDUAL)))] if draw(st.booleans()) else None
    lines = ["mask fallback", *(f"input {k}: {v}" for k, v in INPUTS.items()), *regions]
    if valid is not None:
        lines.append(f"valid {valid[0]}")
    union = union_of(mods)

    def meaning(b, h, q, kv, x):
        out = union(b, h, q, kv, x)
        return out & valid[1](b, h, q, kv, x) if valid is not None else out
    return "\n".join(lines) + "\n", meaning


def _inputs(b: int, q: int, kv: int, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    density = torch.rand((), generator=gen).item()  # sparse to dense key sets
    return {
        "g": torch.rand(b, kv, generator=gen) < density,
        "gq": torch.rand(b, q, generator=gen) < 0.3,
        "kimg": torch.randint(0, 4, (b, kv), generator=gen),
        "qimg": torch.randint(0, 4, (b, q), generator=gen),
        "sel": torch.rand(b, -(-q // T), -(-kv // T), generator=gen) < density,
    }


def _check(mask: maskspec.CompiledMask, meaning, b, h, q, kv, bs, x) -> None:
    ours = mask.block_mask(b, h, q, kv, "cpu", bs, **x)
    def mm(b_, h_, q_, kv_):
        return meaning(b_, h_, q_, kv_, x)
    ref = create_block_mask(mm, b, h, q, kv, device="cpu", BLOCK_SIZE=bs)
    where = (mask.ir.source, b, h, q, kv, bs)
    assert first_difference(ours, ref) is None, (*where, first_difference(ours, ref))
    assert not structure_problems(ours), where
    assert torch.equal(mask.dense(b, h, q, kv, **x), create_mask(mm, b, h, q, kv, device="cpu"))


@settings(max_examples=examples(150))
@given(fallback_specs(), shapes(), st.integers(0, 2**31))
def test_blocks_equal_create_block_mask_of_the_published_meaning(case, shape, seed):
    text, meaning = case
    b, h, q, kv, bs = shape
    mask = maskspec.compile(text)
    assert mask.ir.fallback
    _check(mask, meaning, b, h, q, kv, bs, _inputs(b, q, kv, seed))


@settings(max_examples=examples(60))
@given(valid_specs(), st.sampled_from(sorted(RESIDUAL)), shapes(), st.integers(0, 2**31))
def test_any_spec_with_a_residual_clause_validates(spec_case, which, shape, seed):
    """The language's other constructs (primitives, families, guards, padding) with a
    residual condition in a valid clause: blocks equal create_block_mask of the spec's own
    mask_mod, which equals its dense evaluation."""
    text, params = spec_case
    decls = "".join(f"input {k}: {v}\n" for k, v in INPUTS.items())
    head, rest = text.split("\n", 1)
    mask = maskspec.compile(f"{head}\n{decls}{rest}valid {RESIDUAL[which][0]}\n", **params)
    b, h, q, kv, bs = shape
    x = {**random_inputs(mask, b, h, q, kv, random.Random(seed)), **_inputs(b, q, kv, seed)}
    rep = validate(mask, b, h, q, kv, bs, **x)
    assert rep.ok, (mask.ir.source, shape, rep.problems)


def test_chunks_of_the_budget_give_the_same_blocks(monkeypatch):
    """Decided a few blocks at a time (a tiny budget), the grid is the same."""
    mask = maskspec.compile("mask m\ninput g: bool[B, KV_LEN]\nregion r = causal where g[b, kv]\n")
    x = {"g": torch.rand(2, 300, generator=torch.Generator().manual_seed(1)) < 0.02}
    whole = mask.grid(2, 1, 300, 300, BLOCK_SIZE=16, **x)
    monkeypatch.setattr(elements, "BUDGET", 16 * 16 * 3)
    small = mask.grid(2, 1, 300, 300, BLOCK_SIZE=16, **x)
    assert torch.equal(whole.full, small.full) and torch.equal(whole.partial, small.partial)


def _undecided_per_build(monkeypatch) -> list[int]:
    """The number of blocks each later build leaves to the element evaluation."""
    seen: list[int] = []
    real = elements.decide

    def spy(*args, **kw):
        seen.append(int(args[5].sum()))  # the undecided grid
        return real(*args, **kw)
    monkeypatch.setattr(elements, "decide", spy)
    return seen


def test_only_the_blocks_the_superset_touches_are_evaluated(monkeypatch):
    """A window restricted by a condition on q and kv: the fallback sees the window's
    blocks alone."""
    mask = maskspec.compile(
        "mask m\ninput g: int[KV_LEN]\nregion r = window(left = 20) where g[kv] == q % 3\n")
    seen = _undecided_per_build(monkeypatch)
    mask.block_mask(1, 1, 1024, 1024, BLOCK_SIZE=64, g=torch.zeros(1024, dtype=torch.long))
    assert seen == [16 + 15]  # the diagonal blocks and those just below it, of 256


def test_a_key_set_is_classified_without_evaluating_pairs(monkeypatch):
    """Conditions on kv alone (a flag read at kv, bits of kv) cut the row's intervals by one
    key set: exact from per-key counts, and the element evaluation decides nothing, unless
    another region also touches the block (together they might cover it)."""
    mask = maskspec.compile(
        "mask m\ninput g: bool[KV_LEN]\nregion r = window(left = 20) where g[kv]\n"
        "region s = causal where (kv >> 2) & 5 == 0 and kv != 7\n")
    assert all(t.keyed for t in mask.ir.terms)
    seen = _undecided_per_build(monkeypatch)
    g = torch.rand(1024, generator=torch.Generator().manual_seed(0)) < 0.5
    mask.block_mask(1, 1, 1024, 1024, BLOCK_SIZE=64, g=g)
    assert seen == [16 + 15]  # the window's blocks, which the causal region also touches
    one = maskspec.compile(
        "mask m\ninput g: bool[KV_LEN]\nregion r = window(left = 20) where g[kv]\n")
    one.block_mask(1, 1, 1024, 1024, BLOCK_SIZE=64, g=g)
    assert seen[-1] == 0


def test_an_interval_of_queries_per_key_is_classified_transposed(monkeypatch):
    """Flamingo: each image's keys are seen by an interval of queries read at the key. Read
    per key that is plain intervals, classified exactly with q and kv exchanged."""
    mask = maskspec.load(BENCH / "flamingo.mask", tokens=16)
    assert mask.ir.terms[0].transposed is not None
    seen = _undecided_per_build(monkeypatch)
    starts, ends = torch.tensor([0, 100, 100, 250]), torch.tensor([100, 100, 250, 300])
    grid = mask.grid(1, 1, 300, 64, BLOCK_SIZE=(32, 16), starts=starts, ends=ends)
    assert seen == [0]
    dense = mask.dense(1, 1, 300, 64, starts=starts, ends=ends)[0, 0]
    assert grid.full[0, 0, 0, 0] and not grid.full[0, 0, 3, 0] and grid.partial[0, 0, 3, 0]
    assert dense[:100, :16].all() and not dense[:, 16:32].any()


BENCH = Path(__file__).resolve().parent.parent / "specs"


@settings(max_examples=examples(30))
@given(st.integers(1, 600), st.sampled_from([16, 32, 128, (16, 48), (64, 32)]),
       st.integers(0, 40), st.integers(0, 2**31))
def test_global_sliding_window_equals_attention_gym(n, bs, width, seed):
    pytest.importorskip("attn_gym")
    from attn_gym.masks.global_sliding_window import generate_global_sliding_window
    mask = maskspec.load(BENCH / "global_sliding_window.mask", width=width)
    g = torch.rand(n, generator=torch.Generator().manual_seed(seed)) < 0.03
    ref = create_block_mask(generate_global_sliding_window(width, g), 1, 1, n, n,
                            device="cpu", BLOCK_SIZE=bs)
    assert first_difference(mask.block_mask(1, 1, n, n, BLOCK_SIZE=bs, is_global=g), ref) is None


@pytest.mark.parametrize(("w", "h", "kw", "kh"), [(16, 16, 5, 3), (32, 32, 7, 7), (8, 16, 3, 5)])
@pytest.mark.parametrize("bs", [16, 64, (32, 128)])
def test_natten_morton_equals_attention_gym(w, h, kw, kh, bs):
    """attention-gym's Morton-curve NATTEN (square power-of-two canvases and a 8×16 one)."""
    pytest.importorskip("attn_gym")
    from attn_gym.masks.natten import generate_morton_natten
    mask = maskspec.load(BENCH / "natten_morton.mask", canvas_w=w, canvas_h=h, kernel_w=kw,
                         kernel_h=kh)
    n = max(w, h) ** 2  # the Morton codes of the canvas's cells
    ref = create_block_mask(generate_morton_natten(w, h, kw, kh), 1, 1, n, n, device="cpu",
                            BLOCK_SIZE=bs)
    assert first_difference(mask.block_mask(1, 1, n, n, BLOCK_SIZE=bs), ref) is None


@settings(max_examples=examples(30))
@given(st.integers(1, 8), st.sampled_from([3, 16, 64]), st.integers(1, 400),
       st.sampled_from([16, 32, (16, 64)]), st.integers(0, 2**31))
def test_flamingo_equals_attention_gym(images, tokens, q_len, bs, seed):
    pytest.importorskip("attn_gym")
    from attn_gym.masks.flamingo import generate_vision_cross_attention_mask_mod
    gen = torch.Generator().manual_seed(seed)
    cuts = torch.randint(0, q_len + 1, (images + 1,), generator=gen).sort().values
    intervals = torch.stack([cuts[:-1], cuts[1:]], -1)
    kv_len = images * tokens
    mask = maskspec.load(BENCH / "flamingo.mask", tokens=tokens)
    ours = mask.block_mask(1, 1, q_len, kv_len, BLOCK_SIZE=bs, starts=intervals[:, 0],
                           ends=intervals[:, 1])
    ref = create_block_mask(generate_vision_cross_attention_mask_mod(intervals, tokens), 1, 1,
                            q_len, kv_len, device="cpu", BLOCK_SIZE=bs)
    assert first_difference(ours, ref) is None


def test_context_parallel_rank_masks():
    """Rank-local masks of a fallback spec: blocks equal create_block_mask over the global
    dense mask re-indexed to the rank's queries and the gathered keys."""
    mask = maskspec.compile(
        "mask m\ninput g: bool[B, KV_LEN]\nregion r = causal where g[b, kv] and kv != q - 1\n"
        "region s = window(left = 3)\n")
    x = {"g": torch.rand(2, 256, generator=torch.Generator().manual_seed(3)) < 0.1}
    assert_rank_masks_equal(mask, 2, 1, 256, 4, 32, x)


def test_strict_refuses_with_the_condition_located():
    text = "mask m\ninput g: bool[KV_LEN]\nregion r = causal where g[kv] and kv < 9\n"
    assert maskspec.compile(text).ir.fallback
    with pytest.raises(MaskSpecError) as err:
        maskspec.compile(text, strict=True)
    e = err.value
    assert (e.pos.line, e.pos.column) == (3, 25)
    assert "element fallback" in e.message and "input read at kv" in e.message


# Shipped specs whose conditions have no interval form, and why: every other shipped spec is
# analytic throughout (and compiles under strict). Each of these terms is still classified
# alone (a key set, transposed, or read one side at a time): the element evaluation only
# sees blocks where two parts meet.
NEEDS_ELEMENTS = {
    "natten_morton": "kv inside `|` has no interval form",  # bit interleaving
    "natten_tiled": "two different kv terms",  # a column is two digits of the position
    "tree": "an input read at kv has no interval form",  # the ancestor table
    "global_sliding_window": "an input read at kv has no interval form",  # a key set
    "flamingo": "an input read at kv has no interval form",  # transposed
}


@pytest.mark.parametrize("name", sorted(shipped_specs()))
def test_shipped_specs_never_use_the_fallback(name):
    """The fallback is used only where no analytic form exists: a shipped spec is analytic,
    or each of its residual conditions is one the analysis cannot lower, for the reason
    recorded here."""
    mask = spec(name)
    if name not in NEEDS_ELEMENTS:
        assert not mask.ir.fallback
        maskspec.load(name, strict=True)
        return
    reasons = {res.why for _, res in mask.ir.residuals()}
    assert reasons and all(NEEDS_ELEMENTS[name] in why for why in reasons), reasons
    assert all(t.analytic or t.keyed or t.separable or t.transposed for t in mask.ir.terms)


def test_analytic_forms_are_not_left_to_the_fallback():
    """Conditions with an interval form stay in the row program, bit forms included."""
    for cond in ("kv < q", "kv % 4 < 2", "kv // 8 == q // 8", "kv & 7 < 3", "kv >> 3 == q >> 3",
                 "(kv << 1) <= q", "q ^ 5 > 2"):
        mask = maskspec.compile(f"mask m\nregion r = full where {cond}\n")
        assert not mask.ir.fallback, cond


def test_builder_and_generated_kernel_refuse_it():
    from maskspec import fast
    from maskspec.cuda import generator
    mask = maskspec.compile("mask m\ninput g: bool[KV_LEN]\nregion r = causal where g[kv]\n")
    with pytest.raises(ValueError, match="element fallback"):
        fast.Builder(mask)
    with pytest.raises(ValueError, match="element fallback"):
        generator.source(mask.ir)


def test_key_index_out_of_the_input_is_a_located_error():
    mask = maskspec.compile("mask m\ninput g: bool[Q_LEN]\nregion r = causal where g[kv]\n")
    with pytest.raises(ValueError, match="index 0 of `g`") as err:
        mask.block_mask(1, 1, 64, 128, g=torch.ones(64, dtype=torch.bool))
    assert "3:" in str(err.value)


LONGFORMER = ("mask longformer\ninput is_global: bool[KV_LEN] = 0\nparam w: int = 8\n"
              "region local = window(left = w, right = w)\n"
              "region to_global = full where is_global[kv]\n"
              "region from_global = full where is_global[q]\n")


def test_explain_names_the_fallback_and_its_cost(tmp_path, capsys, monkeypatch):
    from maskspec import cli
    monkeypatch.setenv("COLUMNS", "150")
    path = tmp_path / "longformer.mask"
    path.write_text(LONGFORMER)
    assert cli.main(["explain", str(path), "--q-len", "256", "--kv-len", "256",
                     "--block-size", "32", "--input", "is_global=" + ",".join(
                         "1" if i in (5, 200) else "0" for i in range(256))]) == 0
    out = capsys.readouterr().out
    assert "cut by key sets (exact from per-key counts): `to_global`" in out
    assert "key set (an input read at kv has no interval form)" in out
    mask = maskspec.compile(LONGFORMER)
    g = torch.zeros(256, dtype=torch.bool)
    g[[5, 200]] = True
    dense = mask.dense(1, 1, 256, 256, is_global=g)
    assert f"exact: {dense.float().mean().item():.4%}" in out
    undecided = int(out.split("  element fallback: ")[-1].split(" block")[0])
    # the global keys' column blocks (0 and 6) where another region also touches: the
    # window's band (rows 0, 1 and 5, 6, 7) and the global queries' row blocks (0 and 6)
    assert undecided == 3 + 4
    assert cli.main(["explain", str(path), "--strict"]) != 0
    assert "needs the element fallback" in capsys.readouterr().err


@settings(max_examples=examples(40))
@given(fallback_specs(), st.integers(1, 24), st.integers(1, 40), st.integers(0, 2**31))
def test_cute_mask_mod_equals_dense(case, q, kv, seed):
    """FA4's generated mask_mod (its body run over ints) reads key-side inputs and bit
    operations as dense does."""
    from maskspec.targets import cute
    text, _ = case
    mask = maskspec.compile(text)
    x = _inputs(2, q, kv, seed)
    aux = cute.aux_tensors(mask.ir, mask._bind(2, 2, q, kv, None, x).inputs)
    fn = cute.load_source(cute.source(mask.ir, {"B": 2, "H": 2, "Q_LEN": q, "KV_LEN": kv},
                                      "python"), cute.function_name(mask.ir))
    lengths = type("Lengths", (), {"seqlen_q": q, "seqlen_k": kv})()
    want = mask.dense(2, 2, q, kv, **x)
    for b, h in ((0, 0), (1, 1)):
        got = torch.tensor([[bool(fn(b, h, i, j, lengths, aux)) for j in range(kv)]
                            for i in range(q)])
        assert torch.equal(got, want[b, h]), text


def test_standalone_module_builds_it(tmp_path):
    import importlib.util
    import sys

    from maskspec.standalone import python_module
    mask = maskspec.compile(LONGFORMER)
    path = tmp_path / "longformer_mask.py"
    path.write_text(python_module(mask.ir))
    loader = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(loader)
    sys.modules[path.stem] = module
    loader.loader.exec_module(module)
    for n, seed in ((100, 0), (300, 1)):
        g = torch.rand(n, generator=torch.Generator().manual_seed(seed)) < 0.05
        ours = mask.block_mask(1, 1, n, n, "cpu", 32, is_global=g)
        theirs = module.make_block_mask(1, 1, n, n, "cpu", 32, is_global=g)
        assert first_difference(ours, theirs) is None


@st.composite
def _exprs(draw: st.DrawFn, depth: int = 0):
    """Random IR expressions of q and kv over every operator the printers spell."""
    from maskspec import ir
    if depth > 3 or draw(st.integers(0, 3)) == 0:
        return draw(st.sampled_from([ir.Var("q"), ir.Var("kv"), ir.Const(draw(
            st.integers(-9, 9)))]))
    op = draw(st.sampled_from(["+", "-", "*", "//", "%", "&", "|", "^"]))
    a, b = draw(_exprs(depth + 1)), draw(_exprs(depth + 1))
    if op in ("*", "//", "%"):
        b = ir.Const(draw(st.integers(1, 5)))
    return ir.Bin(op, a, b)


@settings(max_examples=examples(300))
@given(_exprs(), st.integers(-50, 50), st.integers(-50, 50))
def test_printed_expressions_mean_what_they_evaluate_to(e, q, kv):
    """The source every generator prints (Triton, CuTe, spec text) binds as the IR does:
    sums inside products, bit operations looser than sums."""
    from maskspec import codegen, ir
    from maskspec.targets.spec import _Spec
    want = ir.evaluate(e, ir.Env(vars={"q": q, "kv": kv}, sizes={}))
    for em in (codegen.Emitter(), _Spec()):
        text = em.expr(e)
        got = eval(text, {"_min": min, "_max": max, "_mod": lambda a, k: a % k}, {"q": q, "kv": kv})
        assert got == want, (text, e)


def test_inside_torch_compile():
    """The default call in a compiled region: the fallback runs inside the build op."""
    mask = maskspec.compile(LONGFORMER)
    g = torch.zeros(300, dtype=torch.bool)
    g[[3, 170]] = True

    @torch.compile(fullgraph=True, backend="eager")
    def build(flags: torch.Tensor):
        return mask.block_mask(1, 1, 300, 300, BLOCK_SIZE=32, is_global=flags)
    assert first_difference(build(g), mask.block_mask(1, 1, 300, 300, BLOCK_SIZE=32,
                                                      is_global=g)) is None
