"""Conditions read one side at a time (``maskspec.separable``): ids compared between q and
kv in any order, coordinates with no interval form ordered against the query's, lookups of
a table at a query index and a key index (tile maps, ancestor tables). Their blocks come
from per-block summaries of each side; only blocks two parts of a term cut at once are
left to the element evaluation.

References: create_block_mask over mask_mods written here from each condition's plain
meaning, random shapes, inputs and block sizes; CP rank masks against the dense mask;
counts of the blocks the element evaluation is given.
"""

from __future__ import annotations

import pytest
import torch
from conftest import examples
from helpers import assert_rank_masks_equal, union_of
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import shapes
from torch.nn.attention.flex_attention import create_block_mask, create_mask

import maskspec
from maskspec import analysis, elements, ir, separable
from maskspec.verify import first_difference, structure_problems

T = 5  # the tile of the tile maps

INPUTS = {
    "kimg": "int[B, KV_LEN] in [0, 5]",
    "qimg": "int[B, Q_LEN] in [0, 5]",
    "hk": "int[H, KV_LEN] in [0, 2]",
    "sel": f"bool[B, (Q_LEN + {T - 1}) // {T}, (KV_LEN + {T - 1}) // {T}]",
    "cnt": "int[B, H, (Q_LEN + 5) // 4, (KV_LEN + 5) // 6] in [0, 2]",
    "anc": "bool[B, Q_LEN, KV_LEN]",
    "odd": f"bool[B, 11, (KV_LEN + {T - 1}) // {T}]",
    "g": "bool[B, KV_LEN]",
}

# spec text and an independent condition of (b, h, q, kv, inputs) for each
SEPARABLE = {
    "ids": ("kimg[b, kv] == qimg[b, q]",
            lambda b, h, q, kv, x: x["kimg"][b, kv] == x["qimg"][b, q]),
    "ids differ": ("qimg[b, q] != kimg[b, kv]",
                   lambda b, h, q, kv, x: x["qimg"][b, q] != x["kimg"][b, kv]),
    "head ids": ("hk[h, kv] == q % 3", lambda b, h, q, kv, x: x["hk"][h, kv] == q % 3),
    # two digits on each side: no interval form read per row or per key (not transposed)
    "digits before": ("(kv // 3) % 4 + kv % 3 <= (q // 2) % 5 + q % 2",
                      lambda b, h, q, kv, x: (kv // 3) % 4 + kv % 3 <= (q // 2) % 5 + q % 2),
    "digits after": ("(q // 7) % 5 + q % 7 - kimg[b, kv] > (kv // 7) % 3 + kv % 7",
                     lambda b, h, q, kv, x: (q // 7) % 5 + q % 7 - x["kimg"][b, kv]
                     > (kv // 7) % 3 + kv % 7),
    "queries of a key": ("q >= 3 * kimg[b, kv]", lambda b, h, q, kv, x: q >= 3 * x["kimg"][b, kv]),
    "tile map": (f"sel[b, q // {T}, kv // {T}]",
                 lambda b, h, q, kv, x: x["sel"][b, q // T, kv // T]),
    "counted tiles": ("cnt[b, h, (q + 2) // 4, kv // 6] == 1",
                      lambda b, h, q, kv, x: x["cnt"][b, h, (q + 2) // 4, kv // 6] == 1),
    "shifted table": ("anc[b, q, max(kv - 4, 0)]",
                      lambda b, h, q, kv, x: x["anc"][b, q, torch.clamp(kv - 4, min=0)]),
    "other batch's map": (f"sel[B - 1 - b, q // {T}, kv // {T}]",  # an index, no variable
                          lambda b, h, q, kv, x: x["sel"][x["sel"].shape[0] - 1 - b, q // T,
                                                          kv // T]),
    "scattered rows": (f"odd[b, (q % 4) * 3, kv // {T}]",  # rows 0, 3, 6, 9: no range
                       lambda b, h, q, kv, x: x["odd"][b, (q % 4) * 3, kv // T]),
    "key flag": ("g[b, kv]", lambda b, h, q, kv, x: x["g"][b, kv]),  # a key set beside them
}
SHAPES = {
    "full": ("full", lambda b, h, q, kv, x: kv >= 0),
    "causal": ("causal", lambda b, h, q, kv, x: kv <= q),
    "window": ("window(left = 9, right = 4)", lambda b, h, q, kv, x: (kv >= q - 9) & (kv <= q + 4)),
    "early keys": ("full where kv < 37", lambda b, h, q, kv, x: kv < 37),
}


@st.composite
def separable_specs(draw: st.DrawFn):
    """(spec text, independent mask_mod of (b, h, q, kv, inputs)): 1–3 regions, each a
    shape cut by 1–2 of the conditions above (at least one separable)."""
    regions, mods = [], []
    for i in range(draw(st.integers(1, 3))):
        text, fn = SHAPES[draw(st.sampled_from(sorted(SHAPES)))]
        names = [draw(st.sampled_from(sorted(set(SEPARABLE) - {"key flag"})))]
        names += draw(st.lists(st.sampled_from(sorted(SEPARABLE)), max_size=1))
        conds = [SEPARABLE[k] for k in names]
        joiner = " and " if " where " in text else " where "
        regions.append(f"region r{i} = {text}{joiner}" + " and ".join(c[0] for c in conds))
        mods.append((fn, [c[1] for c in conds]))
    lines = ["mask separable", *(f"input {k}: {v}" for k, v in INPUTS.items()), *regions]
    return "\n".join(lines) + "\n", union_of(mods)


def _runs(b: int, n: int, gen: torch.Generator) -> torch.Tensor:
    """Ids in runs of random lengths, the runs' ids in any order (images of a batch)."""
    out = torch.empty(b, n, dtype=torch.long)
    for i in range(b):
        at = 0
        while at < n:
            length = int(torch.randint(1, max(2, n // 3), (), generator=gen))
            out[i, at:at + length] = int(torch.randint(0, 6, (), generator=gen))
            at += length
    return out


def _inputs(b: int, h: int, q: int, kv: int, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    density = torch.rand((), generator=gen).item()
    runs = bool(torch.rand((), generator=gen) < 0.7)
    ids = (lambda n: _runs(b, n, gen)) if runs else (
        lambda n: torch.randint(0, 6, (b, n), generator=gen))
    return {
        "kimg": ids(kv), "qimg": ids(q),
        "hk": torch.randint(0, 3, (h, kv), generator=gen),
        "sel": torch.rand(b, -(-q // T), -(-kv // T), generator=gen) < density,
        "cnt": torch.randint(0, 3, (b, h, (q + 5) // 4, (kv + 5) // 6), generator=gen),
        "anc": torch.rand(b, q, kv, generator=gen) < density,
        # the rows the query reads sparser than the rows between them
        "odd": (torch.rand(b, 11, -(-kv // T), generator=gen) < 0.8)
        & ((torch.arange(11) % 3 != 0).view(1, -1, 1)
           | (torch.rand(b, 11, -(-kv // T), generator=gen) < density / 4)),
        "g": torch.rand(b, kv, generator=gen) < max(density, 0.5),
    }


@settings(max_examples=examples(150))
@given(separable_specs(), shapes(), st.integers(0, 2**31))
def test_blocks_equal_create_block_mask_of_the_published_meaning(case, shape, seed):
    text, meaning = case
    b, h, q, kv, bs = shape
    mask = maskspec.compile(text)
    assert all(t.separable for t in mask.ir.terms), text
    x = _inputs(b, h, q, kv, seed)
    ours = mask.block_mask(b, h, q, kv, "cpu", bs, **x)
    def mm(b_, h_, q_, kv_):
        return meaning(b_, h_, q_, kv_, x)
    ref = create_block_mask(mm, b, h, q, kv, device="cpu", BLOCK_SIZE=bs)
    where = (text, b, h, q, kv, bs)
    assert first_difference(ours, ref) is None, (*where, first_difference(ours, ref))
    assert not structure_problems(ours), where
    assert torch.equal(mask.dense(b, h, q, kv, **x), create_mask(mm, b, h, q, kv, device="cpu"))


@pytest.mark.parametrize("bs", [16, (32, 8), 7, (5, 64)])
@pytest.mark.parametrize("name", sorted(set(SEPARABLE) - {"key flag"}))
def test_each_condition_alone_and_in_a_window(name, bs):
    """Each condition alone (its own part decides every block) and cut by a window (two
    parts), over seeds: equal to create_block_mask of its plain meaning."""
    text, fn = SEPARABLE[name]
    for shape, sep in (("full", " where "), ("window(left = 30, right = 11)", " where ")):
        mask = maskspec.compile("mask m\n" + "".join(f"input {k}: {v}\n" for k, v in
                                                     INPUTS.items())
                                + f"region r = {shape}{sep}{text}\n")
        for seed in range(3):
            x = _inputs(2, 2, 97, 131, seed)
            ours = mask.block_mask(2, 2, 97, 131, "cpu", bs, **x)
            def mm(b, h, q, kv, x=x, shape=shape):
                near = (kv >= q - 30) & (kv <= q + 11) if shape != "full" else kv >= 0
                return near & fn(b, h, q, kv, x)
            ref = create_block_mask(mm, 2, 2, 97, 131, device="cpu", BLOCK_SIZE=bs)
            assert first_difference(ours, ref) is None, (name, shape, seed)


@settings(max_examples=examples(40))
@given(separable_specs(), st.integers(2, 4), st.integers(0, 2**31))
def test_context_parallel_rank_masks(case, ws, seed):
    """Rank-local rows (query positions in the balancer's order): blocks equal
    create_block_mask over the dense mask re-indexed to the rank's rows and the keys."""
    mask = maskspec.compile(case[0])
    q_len = 64 * ws
    assert_rank_masks_equal(mask, 2, 2, q_len, ws, 16, _inputs(2, 2, q_len, q_len, seed))


def test_joins_and_edges_in_small_pieces_give_the_same_blocks(monkeypatch):
    """Ids joined a few block pairs at a time, and a table's prefix sums read at edges
    off every run's grid, give the same blocks."""
    mask = maskspec.compile("mask m\ninput img: int[B, KV_LEN]\ninput anc: bool[B, Q_LEN, KV_LEN]\n"
                            "region r = full where img[b, kv] == img[b, q % 50]\n"
                            "region s = causal where anc[b, q, max(kv - 3, 0)]\n")
    gen = torch.Generator().manual_seed(0)
    x = {"img": torch.randint(0, 4, (2, 300), generator=gen),
         "anc": torch.rand(2, 300, 300, generator=gen) < 0.05}
    whole = mask.grid(2, 1, 300, 300, BLOCK_SIZE=(16, 24), **x)
    monkeypatch.setattr(separable, "JOIN_BUDGET", 3)
    monkeypatch.setattr(separable, "SUM_BUDGET", 500)
    small = mask.grid(2, 1, 300, 300, BLOCK_SIZE=(16, 24), **x)
    assert torch.equal(whole.full, small.full) and torch.equal(whole.partial, small.partial)
    ref = create_block_mask(mask.mask_mod(B=2, H=1, Q_LEN=300, KV_LEN=300, **x), 2, 1, 300,
                            300, device="cpu", BLOCK_SIZE=(16, 24))
    assert first_difference(mask.block_mask(2, 1, 300, 300, "cpu", (16, 24), **x), ref) is None


@pytest.mark.parametrize(("decl", "cond", "b", "h"), [
    ("bool[B, Q_LEN, KV_LEN]", "tab[h, q, kv]", 3, 2),  # a B-long dimension read at h
    ("bool[3, Q_LEN, KV_LEN]", "tab[b, q, kv]", 2, 1),  # 3 entries read at b < B = 2
    ("int[2, Q_LEN, KV_LEN] in [0, 3]", "tab[b, 1, 0] + tab[b, q, kv] == 3", 2, 1),
])
def test_lookups_read_at_b_or_h_over_any_length(decl, cond, b, h):
    """A table dimension read at b or h need not hold B (or H) entries: the lookup reads
    it as the element meaning does (clamped)."""
    n = 40
    mask = maskspec.compile(f"mask m\ninput tab: {decl}\nregion r = causal where {cond}\n")
    assert mask.ir.terms[0].separable
    lead = decl.split("[")[1].split(",")[0]
    shape = (b if lead == "B" else int(lead), n, n)
    gen = torch.Generator().manual_seed(0)
    tab = torch.randint(0, 2 if decl.startswith("bool") else 4, shape, generator=gen)
    tab = tab.bool() if decl.startswith("bool") else tab
    ref = create_block_mask(mask.mask_mod(B=b, H=h, Q_LEN=n, KV_LEN=n, tab=tab), b, h, n, n,
                            device="cpu", BLOCK_SIZE=16)
    assert first_difference(mask.block_mask(b, h, n, n, "cpu", 16, tab=tab), ref) is None


def _undecided(monkeypatch) -> list[int]:
    """The number of blocks each build hands to the element evaluation."""
    seen: list[int] = []
    real = elements.decide

    def spy(*args, **kw):
        seen.append(int(args[5].sum()))
        return real(*args, **kw)
    monkeypatch.setattr(elements, "decide", spy)
    return seen


def test_ids_in_any_order_evaluate_no_pair(monkeypatch):
    """Images as runs of ids in any order (Flamingo-style packing, unsorted documents): a
    region of the ids alone is decided from the blocks' id sets; cut by causality, only the
    diagonal blocks whose rows and keys both hold several ids are evaluated."""
    ids = torch.tensor([3] * 100 + [1] * 150 + [3] * 50 + [0] * 212).view(1, -1)
    text = "mask m\ninput img: int[B, Q_LEN]\nregion r = {} where img[b, kv] == img[b, q]\n"
    seen = _undecided(monkeypatch)
    alone = maskspec.compile(text.format("full"))
    assert first_difference(
        alone.block_mask(1, 1, 512, 512, "cpu", 64, img=ids),
        create_block_mask(lambda b, h, q, kv: ids[b, q] == ids[b, kv], 1, 1, 512, 512,
                          device="cpu", BLOCK_SIZE=64)) is None
    causal = maskspec.compile(text.format("causal"))
    causal.block_mask(1, 1, 512, 512, "cpu", 64, img=ids)
    # diagonal blocks holding a change of id: rows 64–127 (100), 128–191 ... 256–319 (250, 300)
    assert seen == [0, 3]


def test_an_aligned_tree_evaluates_no_pair(monkeypatch):
    """The tree spec's ancestor table with a block-aligned prefix: every block from the
    table's rectangles, none evaluated."""
    mask = maskspec.load("tree")
    parents = torch.cat([torch.tensor([-1]), torch.arange(255) // 2]).view(1, -1)  # binary
    anc = maskspec.tree_ancestors(parents)
    seen = _undecided(monkeypatch)
    ours = mask.block_mask(1, 1, 256, 512, "cpu", 32, ancestor=anc)
    ref = create_block_mask(mask.mask_mod(B=1, H=1, Q_LEN=256, KV_LEN=512, ancestor=anc),
                            1, 1, 256, 512, device="cpu", BLOCK_SIZE=32)
    assert first_difference(ours, ref) is None and seen == [0]


def test_a_tile_map_at_block_tiles_evaluates_no_pair(monkeypatch):
    mask = maskspec.compile("mask m\ninput sel: bool[B, H, Q_LEN // 64, KV_LEN // 64]\n"
                            "region r = full where sel[b, h, q // 64, kv // 64]\n")
    sel = torch.rand(2, 3, 8, 16, generator=torch.Generator().manual_seed(0)) < 0.3
    seen = _undecided(monkeypatch)
    ours = mask.block_mask(2, 3, 512, 1024, "cpu", (128, 64), sel=sel)
    ref = create_block_mask(lambda b, h, q, kv: sel[b, h, q // 64, kv // 64], 2, 3, 512, 1024,
                            device="cpu", BLOCK_SIZE=(128, 64))
    assert first_difference(ours, ref) is None and seen == [0]


@pytest.mark.parametrize(("cond", "op"), [
    ("img[b, kv] == img[b, q]", "=="), ("img[b, q] == img[b, kv] + 1", "=="),
    ("kv % 3 + kv // 3 < q", "<"), ("q <= min(kv, 5) * 2", "<="), ("img[b, kv] != q", "!="),
    ("tab[b, q, kv] == 1", "lookup"), ("tab[b, q // 2, kv + 1] != 0", "lookup"),
])
def test_separable_readings_mean_the_condition(cond, op):
    """The reading's sides each read one variable, and ``key OP query`` (or the table at
    the two indices) holds exactly where the condition does."""
    src = "mask m\ninput img: int[B, Q_LEN]\ninput tab: int[B, Q_LEN, Q_LEN]\n" \
          f"region r = full where {cond}\n"
    (_, res), = maskspec.compile(src).ir.residuals()
    sep = res.separable
    assert sep is not None and sep.op == op
    assert not ir.uses(sep.key, ir.Var, "q") and not ir.uses(sep.query, ir.Var, "kv")
    gen = torch.Generator().manual_seed(0)
    x = {"img": torch.randint(0, 3, (1, 20), generator=gen),
         "tab": torch.randint(0, 2, (1, 20, 20), generator=gen)}
    q, kv = torch.arange(20).view(-1, 1), torch.arange(20).view(1, -1)
    env = ir.Env(vars={"b": 0, "h": 0, "q": q, "kv": kv}, sizes={"Q_LEN": 20, "KV_LEN": 20},
                 inputs=x)
    want = ir.holds(res.cmp, env)
    if op == "lookup":
        assert sep.dims == ("tab", 1, 2)
        i = ir.evaluate(sep.query, env).clamp(0, 19).expand(20, 20)
        j = ir.evaluate(sep.key, env).clamp(0, 19).expand(20, 20)
        table = ir.holds(sep.table, ir.Env(vars={"b": 0, "h": 0, "q": q, "kv": kv},
                                           sizes=env.sizes, inputs=x))
        got = table[i, j]
    else:
        got = ir.holds(ir.Cmp(op, sep.key, sep.query), env)
    assert torch.equal(torch.as_tensor(got).expand(20, 20), want.expand(20, 20))


@pytest.mark.parametrize("cond", ["min(kv, q) >= 3", "(q ^ kv) & 5 == 0",
                                  "tab[b, q, kv] == tab[b, kv, q]", "tab[b, q + kv, 0] == 1",
                                  "tab[b, q, kv] < q"])
def test_conditions_reading_both_sides_together_are_not_separable(cond):
    cmp = maskspec.compile("mask m\ninput tab: int[B, Q_LEN, Q_LEN]\n"
                           f"region r = full where {cond}\n").ir.terms[0].residual[0].cmp
    assert analysis.separable(cmp) is None
