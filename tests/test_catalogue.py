"""The shipped catalogue against attention-gym, block for block, over random shapes, params,
inputs and block sizes: each spec's BlockMask equals create_block_mask over attention-gym's
own mask_mod (or, for VSA, the BlockMask attention-gym constructs), and over a mask_mod
written here from the mask's published definition. attention-gym installs from PyPI (the
test extra); where it is absent the comparisons with it skip, the independent ones run."""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import examples, spec
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.attention.flex_attention import create_block_mask

import maskspec
from maskspec.verify import first_difference, structure_problems

BLOCKS = st.sampled_from([8, 16, 32, 128, (16, 8), (8, 48), (24, 40)])
SEEDS = st.integers(0, 2**31)


def gym(module: str):
    """An attention-gym mask module, or a skip where the package is absent."""
    pytest.importorskip("attn_gym")
    import importlib
    return importlib.import_module(f"attn_gym.masks.{module}")


def assert_blocks(ours, mod, b: int, h: int, q: int, kv: int, bs) -> None:
    ref = create_block_mask(mod, b, h, q, kv, device="cpu", BLOCK_SIZE=bs)
    assert first_difference(ours, ref) is None, (q, kv, bs, first_difference(ours, ref))
    assert not structure_problems(ours)


def both(ours, published, gym_mod, b: int, h: int, q: int, kv: int, bs) -> None:
    """Ours against the mask_mod written here, then against attention-gym's (if installed)."""
    assert_blocks(ours, published, b, h, q, kv, bs)
    try:
        import attn_gym  # noqa: F401
    except ImportError:
        return
    assert_blocks(ours, gym_mod(), b, h, q, kv, bs)


# ---------------------------------------------------------------- block diffusion


@settings(max_examples=examples(40), deadline=None)
@given(st.integers(1, 200), st.integers(1, 40), BLOCKS)
def test_block_diffusion(n, block, bs):
    def published(b, h, q, kv):  # BD3-LM §3.1: block diagonal, offset block causal, block causal
        qn, kn = q < n, kv < n
        qb, kb = (q % n) // block, (kv % n) // block
        return ((qb == kb) & (qn == kn)) | ((qb > kb) & qn & ~kn) | ((qb >= kb) & ~qn & ~kn)
    ours = spec("block_diffusion", block=block).block_mask(1, 1, 2 * n, 2 * n, BLOCK_SIZE=bs)
    both(ours, published,
         lambda: gym("block_diffusion").generate_block_diffusion_mask(n, block),
         1, 1, 2 * n, 2 * n, bs)


# ---------------------------------------------------------------- JetSpec


@settings(max_examples=examples(40), deadline=None)
@given(st.integers(0, 150), st.integers(1, 12), st.integers(1, 20), BLOCKS)
def test_jetspec_training(prefix, blocks, block, bs):
    q_len, kv_len = blocks * block, prefix + blocks * block

    def published(b, h, q, kv):  # the prefix, and own block's anchor up to q
        j = kv - prefix
        return (kv < prefix) | ((j >= 0) & (j // block == q // block) & (j <= q))
    ours = spec("jetspec_training", block=block).block_mask(1, 1, q_len, kv_len, BLOCK_SIZE=bs)
    both(ours, published,
         lambda: gym("jetspec").generate_jetspec_training_mask_mod(prefix, block),
         1, 1, q_len, kv_len, bs)


def _random_parents(n: int, gen: torch.Generator) -> torch.Tensor:
    """A random tree flattened parent before child: node i's parent is an earlier node."""
    parents = [-1] + [int(torch.randint(0, i, (), generator=gen)) for i in range(1, n)]
    return torch.tensor(parents)


@settings(max_examples=examples(40), deadline=None)
@given(st.integers(1, 150), st.integers(0, 120), BLOCKS, SEEDS)
def test_tree(nodes, prefix, bs, seed):
    parents = _random_parents(nodes, torch.Generator().manual_seed(seed))
    ancestor = maskspec.tree_ancestors(parents)

    def on_path(i: int, j: int) -> bool:  # walk up from i
        while i >= 0:
            if i == j:
                return True
            i = int(parents[i])
        return False
    table = torch.tensor([[on_path(i, j) for j in range(nodes)] for i in range(nodes)])
    assert torch.equal(ancestor[0], table)

    def published(b, h, q, kv):
        return (kv < prefix) | ((kv >= prefix) & table[q, (kv - prefix).clamp(0, nodes - 1)])
    ours = spec("tree").block_mask(1, 1, nodes, prefix + nodes, BLOCK_SIZE=bs, ancestor=ancestor)

    def gym_mod():
        jet = gym("jetspec")
        anc = jet.build_tree_ancestor_matrix(parents.tolist(), device="cpu")
        return jet.generate_jetspec_tree_causal_mask_mod(prefix, anc)
    both(ours, published, gym_mod, 1, 1, nodes, prefix + nodes, bs)


def test_tree_ancestors_refuses_a_child_before_its_parent():
    with pytest.raises(ValueError, match=r"parents\[0, 2\] = 3: a node's parent must be an"):
        maskspec.tree_ancestors(torch.tensor([-1, 0, 3, 1]))


# ---------------------------------------------------------------- shared prefix


def _lengths(total: int, docs: int, gen: torch.Generator) -> list[int]:
    cuts = torch.randint(0, total + 1, (docs - 1,), generator=gen).sort().values.tolist()
    edges = [0, *cuts, total]
    return [b - a for a, b in itertools.pairwise(edges)]


@settings(max_examples=examples(40), deadline=None)
@given(st.integers(1, 250), st.integers(1, 10), BLOCKS, SEEDS)
def test_shared_prefix(n, docs, bs, seed):
    gen = torch.Generator().manual_seed(seed)
    lengths = _lengths(n, docs, gen)
    offsets = torch.tensor([0, *lengths]).cumsum(0)
    # each document's prompt: itself (a prompt) or an earlier prompt document
    prefix_of = list(range(docs))
    for d in range(1, docs):
        if torch.rand((), generator=gen) < 0.6:
            prefix_of[d] = prefix_of[d - 1]
    prefix_of = torch.tensor(prefix_of)
    doc = maskspec.document_ids(offsets, n)[0]

    def published(b, h, q, kv):
        d = doc[q]
        p = prefix_of[d]
        own = (kv >= offsets[d]) & (kv <= q)
        return own | ((d != p) & (kv >= offsets[p]) & (kv < offsets[p + 1]))
    pad = 12  # the spec's `docs` bounds the documents; offsets repeat past the last one
    ours = spec("shared_prefix", docs=pad).block_mask(
        1, 1, n, n, BLOCK_SIZE=bs, doc=doc[None],
        offsets=torch.cat([offsets, offsets[-1:].expand(pad - docs)])[None],
        prefix_of=torch.cat([prefix_of, torch.zeros(pad - docs, dtype=torch.long)])[None])
    both(ours, published,
         lambda: gym("shared_prefix").generate_shared_prefix_mask_mod(offsets, prefix_of),
         1, 1, n, n, bs)


# ---------------------------------------------------------------- documents around a mask


@settings(max_examples=examples(40), deadline=None)
@given(st.integers(1, 250), st.integers(1, 8), st.integers(0, 40), BLOCKS, SEEDS)
def test_document_prefix_lm(n, docs, prefix, bs, seed):
    offsets = torch.tensor([0, *_lengths(n, docs, torch.Generator().manual_seed(seed))]).cumsum(0)
    doc = maskspec.document_ids(offsets, n)[0]

    def published(b, h, q, kv):
        start = offsets[doc[q]]
        return (doc[q] == doc[kv]) & ((kv - start < prefix) | (kv <= q))
    pad = 8
    ours = spec("document_prefix_lm", prefix=prefix, docs=pad).block_mask(
        1, 1, n, n, BLOCK_SIZE=bs, doc=doc[None],
        offsets=torch.cat([offsets, offsets[-1:].expand(pad - docs)])[None])

    def gym_mod():
        inner = gym("prefix_lm").generate_prefix_lm_mask(prefix)
        return gym("document_mask").generate_doc_mask_mod(inner, offsets)
    both(ours, published, gym_mod, 1, 1, n, n, bs)


# ---------------------------------------------------------------- video


@settings(max_examples=examples(30), deadline=None)
@given(st.integers(1, 2), st.integers(1, 2), st.integers(1, 12), st.integers(1, 12),
       st.sampled_from([4, 16]), st.integers(1, 4), SEEDS, st.booleans())
def test_vsa(b, h, q_tiles, kv_tiles, tile, top_k, seed, padded):
    """attention-gym builds VSA's BlockMask itself (top-k tiles as FULL blocks, padded tiles
    PARTIAL): ours at BLOCK_SIZE = tile equals it; at other block sizes, the mask_mod."""
    top_k = min(top_k, kv_tiles)
    gen = torch.Generator().manual_seed(seed)
    topk = torch.stack([torch.randperm(kv_tiles, generator=gen)[:top_k]
                        for _ in range(b * h * q_tiles)]).reshape(b, h, q_tiles, top_k)
    # a padded tile keeps 1 .. tile real tokens (attention-gym's metadata never has an empty
    # one; it would call such a selected tile PARTIAL where ours drops it, allowing nothing)
    tokens = torch.randint(1, tile + 1, (kv_tiles,), generator=gen) if padded else None
    q_len, kv_len = q_tiles * tile, kv_tiles * tile
    mask = spec("vsa", tile=tile, top_k=top_k)
    x = {"topk": topk} | ({"tokens": tokens} if padded else {})

    def published(b_, h_, q, kv):
        real = True if tokens is None else kv % tile < tokens[kv // tile]
        return (topk[b_, h_, q // tile] == kv // tile).any() & real
    assert_blocks(mask.block_mask(b, h, q_len, kv_len, BLOCK_SIZE=(16, 8), **x), published,
                  b, h, q_len, kv_len, (16, 8))
    ours = mask.block_mask(b, h, q_len, kv_len, BLOCK_SIZE=tile, **x)
    assert_blocks(ours, published, b, h, q_len, kv_len, tile)
    try:
        vsa = gym("vsa")
    except pytest.skip.Exception:
        return
    ref = vsa.create_vsa_block_mask(topk, tile, kv_tiles, tokens)
    assert first_difference(ours, ref) is None


@settings(max_examples=examples(30), deadline=None)
@given(st.sampled_from([(1, 1), (2, 2), (2, 4), (4, 2)]), st.integers(1, 5), st.integers(1, 5),
       st.integers(1, 4), st.integers(1, 4), st.integers(0, 50), BLOCKS)
def test_sta_2d(tile_hw, tiles_h, tiles_w, kh, kw, text, bs):
    th, tw = tile_hw
    kh, kw = min(kh, tiles_h), min(kw, tiles_w)
    canvas_h, canvas_w = tiles_h * th, tiles_w * tw
    n = canvas_h * canvas_w + text
    mask = spec("sta_2d", tile=th * tw, nw=tiles_w, kh=kh, kw=kw, text=text)
    image = canvas_h * canvas_w

    def published(b, h, q, kv):  # tiles row-major; the kernel's tile window, shifted inside
        qt, kt = q // (th * tw), kv // (th * tw)
        ok = (q < image) & (kv < image)
        for qa, ka, size, k in ((qt // tiles_w, kt // tiles_w, tiles_h, kh),
                                (qt % tiles_w, kt % tiles_w, tiles_w, kw)):
            back, fwd = k // 2, k // 2 + k % 2 - 1
            c = qa.clamp(back, size - 1 - fwd)
            ok = ok & (ka >= c - back) & (ka <= c + fwd)
        return ok | ((q < image) & (kv >= image) & (kv < n)) | ((q >= image) & (kv < n))
    both(mask.block_mask(1, 1, n, n, BLOCK_SIZE=bs), published,
         lambda: gym("sta").generate_sta_mask_mod_2d((canvas_h, canvas_w), (kh * th, kw * tw),
                                                     (th, tw), text), 1, 1, n, n, bs)


@settings(max_examples=examples(30), deadline=None)
@given(st.integers(0, 40), st.integers(1, 5), st.integers(1, 60), st.integers(1, 3),
       st.sampled_from([8, 16, 128]), st.booleans(), BLOCKS)
def test_svg_spatial(prompt, frames, frame, width, rnd, sink, bs):
    n = prompt + frames * frame
    reach = width * frame // rnd * rnd
    if reach == 0:
        return  # no spatial band at all: the spec warns that region is empty
    mask = spec("svg_spatial", prompt=prompt, frame=frame, frames=width, round=rnd,
                sink=int(sink))

    def published(b, h, q, kv):
        cols = kv < prompt + (frame if sink else 0)
        return (q < prompt) | cols | ((q - kv).abs() < reach)
    both(mask.block_mask(1, 1, n, n, BLOCK_SIZE=bs), published,
         lambda: gym("svg").generate_spatial_head_mask_mod(prompt, frames, frame, width, sink,
                                                           rnd), 1, 1, n, n, bs)


# ---------------------------------------------------------------- neighbourhoods


@settings(max_examples=examples(20), deadline=None)
@given(st.sampled_from([(2, 2), (4, 2), (2, 4), (4, 4)]), st.integers(1, 4), st.integers(1, 4),
       st.sampled_from([1, 3, 5]), st.sampled_from([1, 3, 5]), BLOCKS)
def test_natten_tiled(tile, tiles_w, tiles_h, kw, kh, bs):
    tw, th = tile
    w, hgt = tiles_w * tw, tiles_h * th
    kw, kh = min(kw, w - (1 - w % 2)), min(kh, hgt - (1 - hgt % 2))
    mask = spec("natten_tiled", canvas_w=w, canvas_h=hgt, kernel_w=kw, kernel_h=kh, tile_w=tw,
                tile_h=th)

    def xy(p):
        t, c = p // (tw * th), p % (tw * th)
        return (t % tiles_w) * tw + c % tw, (t // tiles_w) * th + c // tw

    def published(b, h, q, kv):
        (qx, qy), (kx, ky) = xy(q), xy(kv)
        cx = qx.clamp(kw // 2, w - 1 - kw // 2)
        cy = qy.clamp(kh // 2, hgt - 1 - kh // 2)
        return ((kx - cx).abs() <= kw // 2) & ((ky - cy).abs() <= kh // 2)
    n = w * hgt
    both(mask.block_mask(1, 1, n, n, BLOCK_SIZE=bs), published,
         lambda: gym("natten").generate_tiled_natten(w, hgt, kw, kh, tw, th), 1, 1, n, n, bs)


@settings(max_examples=examples(20), deadline=None)
@given(st.integers(2, 24), st.sampled_from([1, 3, 5, 7]), BLOCKS)
def test_natten_equals_attention_gym(w, k, bs):
    """Square canvases: attention-gym's NATTEN clamps a position's row by the canvas width
    (``idx // canvas_w`` against ``canvas_w - 1``), which is its height only when square."""
    k = min(k, w - (1 - w % 2))
    n = w * w
    ours = spec("natten", width=w, kernel=k).block_mask(1, 1, n, n, BLOCK_SIZE=bs)
    assert_blocks(ours, gym("natten").generate_natten(w, w, k, k), 1, 1, n, n, bs)


@settings(max_examples=examples(20), deadline=None)
@given(st.integers(1, 300), st.integers(0, 40), st.integers(1, 6), BLOCKS)
def test_dilated_sliding_window_equals_attention_gym(n, reach, dilation, bs):
    ours = spec("dilated_sliding_window", reach=reach, dilation=dilation).block_mask(
        1, 1, n, n, BLOCK_SIZE=bs)
    mod = gym("dilated_sliding_window").generate_dilated_sliding_window(reach, dilation)
    assert_blocks(ours, mod, 1, 1, n, n, bs)


@settings(max_examples=examples(30), deadline=None)
@given(st.sampled_from([(1, 1, 1), (2, 2, 2), (1, 2, 4)]), st.integers(1, 3), st.integers(1, 4),
       st.integers(1, 4), st.tuples(*[st.integers(1, 4)] * 3), BLOCKS)
def test_sta_3d_equals_attention_gym(tile, frames, nh, nw, k, bs):
    """attention-gym's STA 3-D (no text tokens), odd and even kernels."""
    tt, th, tw = tile
    kt, kh, kw = min(k[0], frames), min(k[1], nh), min(k[2], nw)
    n = frames * nh * nw * tt * th * tw
    ours = spec("sta_3d", tile=tt * th * tw, nh=nh, nw=nw, kt=kt, kh=kh, kw=kw).block_mask(
        1, 1, n, n, BLOCK_SIZE=bs)
    mod = gym("sta").generate_sta_mask_mod_3d((frames * tt, nh * th, nw * tw),
                                              (kt * tt, kh * th, kw * tw), tile)
    assert_blocks(ours, mod, 1, 1, n, n, bs)
