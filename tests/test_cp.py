"""Context parallelism: each rank's BlockMask equals torch's ``_create_cp_block_mask`` and the
dense mask re-indexed by the same load-balanced order (EAGLE-3 rounds included)."""

import random

import pytest
import torch
from conftest import examples, spec
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.attention.flex_attention import create_block_mask, create_mask, flex_attention

import maskspec
from maskspec.verify import first_difference, random_inputs, structure_problems

try:  # torch >= 2.10 keeps the implementation here; older ones in _attention
    import torch.distributed.tensor.experimental._context_parallel._attention as cp_attention
except ImportError:  # pragma: no cover
    import torch.distributed.tensor.experimental._attention as cp_attention
from torch.distributed.tensor.experimental._attention import (
    _HeadTailLoadBalancer,
    _PerDocumentHeadTailLoadBalancer,
)


class _Mesh:
    """The three things ``_create_cp_block_mask`` asks of its 1-D device mesh."""

    device_type = "cpu"

    def __init__(self, rank: int, world_size: int) -> None:
        self.rank, self.world_size = rank, world_size

    def size(self) -> int:
        return self.world_size

    def get_local_rank(self) -> int:
        return self.rank


@pytest.fixture
def torch_cp(monkeypatch):
    """torch's ``_create_cp_block_mask`` with eager create_block_mask (same blocks, no compile)."""
    monkeypatch.setattr(cp_attention, "_compiled_create_block_mask", create_block_mask)
    return cp_attention


def _doc_lengths(q_len: int, unit: int, rng: random.Random) -> list[int]:
    """Random document lengths, each a multiple of ``unit`` (empty ones included), summing to q."""
    cuts = sorted(rng.randrange(0, q_len // unit + 1) * unit for _ in range(rng.randint(0, 6)))
    return [b - a for a, b in zip([0, *cuts], [*cuts, q_len], strict=True)]


def _ids(lengths: list[list[int]], n: int) -> torch.Tensor:
    """Per-position ids of documents with these lengths (trailing positions: one more doc)."""
    return torch.cat([maskspec.document_ids(torch.tensor([0, *row]).cumsum(0), n)
                      for row in lengths])


def _same_mask_mod(ours, ref, b: int, s: int, kv: int) -> bool:
    return torch.equal(create_mask(ours.mask_mod, b, 1, s, kv, device="cpu"),
                       create_mask(ref.mask_mod, b, 1, s, kv, device="cpu"))


CASES = [  # (spec, params, load balancer)
    ("causal", {}, "head_tail"),
    ("causal", {}, None),
    ("sliding_window", {"width": 200}, "head_tail"),
    ("document_causal", {}, "per_document"),
]


@pytest.mark.parametrize("world_size", [2, 4, 8])
@pytest.mark.parametrize(("name", "params", "balancer"), CASES)
def test_matches_torch_create_cp_block_mask(torch_cp, monkeypatch, name, params, balancer,
                                             world_size):
    """Every rank: same FULL/PARTIAL blocks both ways and same mask_mod as torch's CP mask.

    Q_LEN is 768·ws/2 for ws 2 and 4: head-tail chunks of 192 keys straddle 128-key blocks.
    """
    q_len = {2: 768, 4: 1536, 8: 2048}[world_size]
    mask = spec(name, **params)
    b, inputs, lb = 1, {}, None
    if balancer == "head_tail":
        lb = _HeadTailLoadBalancer(q_len, world_size, "cpu")
    elif balancer == "per_document":
        rng = random.Random(world_size)
        lengths = [_doc_lengths(q_len, 2 * world_size, rng) for _ in range(2)]
        b, inputs = 2, {"doc": _ids(lengths, q_len)}
        lb = _PerDocumentHeadTailLoadBalancer(lengths, world_size, "cpu")
    else:
        monkeypatch.setattr(torch_cp._cp_options, "enable_load_balance", False)
    for rank in range(world_size):
        ref = torch_cp._create_cp_block_mask(
            mask.mask_mod(B=b, Q_LEN=q_len, KV_LEN=q_len, **inputs), b, 1, q_len, q_len,
            _Mesh(rank, world_size), lb,
        )
        ours = mask.cp_block_mask(b, 1, q_len, q_len, rank=rank, world_size=world_size,
                                  load_balancer=balancer, **inputs)
        assert first_difference(ours, ref) is None, (rank, first_difference(ours, ref))
        assert not structure_problems(ours)
        assert _same_mask_mod(ours, ref, b, q_len // world_size, q_len), rank


def test_torch_load_balancer_object_and_order_tensor(eagle3):
    """A torch _LoadBalancer (or its order) gives the same mask as the named balancer."""
    lb = _HeadTailLoadBalancer(1536, 4, "cpu")
    kw = {"rank": 1, "world_size": 4, "BLOCK_SIZE": 64}
    ref = eagle3.cp_block_mask(1, 1, 1536, 3072, load_balancer="head_tail", **kw)
    for balancer in (lb, lb._generate_indices()):
        assert first_difference(eagle3.cp_block_mask(1, 1, 1536, 3072, load_balancer=balancer,
                                                     **kw), ref) is None


# ---------------------------------------------------------------- against the dense mask


def _order(balancer: str | None, q_len: int, ws: int, doc_lengths) -> torch.Tensor:
    """torch's rearrangement (1 or B, Q_LEN): slot i holds original position order[b, i]."""
    if balancer == "head_tail":
        return _HeadTailLoadBalancer(q_len, ws, "cpu")._generate_indices().long()
    if balancer == "per_document":
        return _PerDocumentHeadTailLoadBalancer(doc_lengths, ws, "cpu")._generate_indices().long()
    return torch.arange(q_len).unsqueeze(0)


def _gathered_keys(order: torch.Tensor, ws: int, rounds: int) -> torch.Tensor:
    """Global key of every all-gathered slot: for each rank, its shard of round 0, 1, ..."""
    q_len = order.shape[-1]
    shards = order.tensor_split(ws, dim=-1)
    return torch.cat([s + t * q_len for s in shards for t in range(rounds)], dim=-1)


def _local_dense(dense: torch.Tensor, q_pos: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """dense[b, h, q_pos[b], keys[b]] for every b (order rows broadcast over the batch)."""
    b = dense.shape[0]
    q_pos, keys = q_pos.expand(b, -1), keys.expand(b, -1)
    rows = dense.gather(2, q_pos[:, None, :, None].expand(-1, dense.shape[1], -1, dense.shape[3]))
    return rows.gather(3, keys[:, None, None, :].expand(-1, dense.shape[1], rows.shape[2], -1))


def _check_against_dense(mask, b, q_len, rounds, ws, rank, bs, balancer, inputs, doc_lengths):
    kv_len = rounds * q_len
    order = _order(balancer, q_len, ws, doc_lengths)
    s = q_len // ws
    q_pos, keys = order[:, rank * s:(rank + 1) * s], _gathered_keys(order, ws, rounds)
    local = _local_dense(mask.dense(b, 1, q_len, kv_len, **inputs), q_pos, keys)
    ref = create_block_mask(lambda b_, h, q, kv: local[b_, h, q, kv], b, 1, s, kv_len,
                            device="cpu", BLOCK_SIZE=bs)
    ours = mask.cp_block_mask(b, 1, q_len, kv_len, rank=rank, world_size=ws, BLOCK_SIZE=bs,
                              load_balancer=balancer, **inputs)
    where = (mask.name, b, q_len, kv_len, ws, rank, bs, balancer)
    assert first_difference(ours, ref) is None, (*where, first_difference(ours, ref))
    assert not structure_problems(ours), where
    assert torch.equal(create_mask(ours.mask_mod, b, 1, s, kv_len, device="cpu"), local), where


SPECS = ["causal", "sliding_window", "document_causal", "eagle3", "prefix_lm", "chunked_causal"]
BLOCK_SIZES = [16, 32, 64, 128, (32, 16), (16, 64)]


@st.composite
def cp_cases(draw: st.DrawFn):
    name = draw(st.sampled_from(SPECS))
    ws = draw(st.sampled_from([2, 4, 8]))
    balancer = draw(st.sampled_from(
        [None, "head_tail", *(["per_document"] if name == "document_causal" else [])]
    ))
    q_len = 2 * ws * draw(st.integers(1, 512 // (2 * ws)))
    rounds = draw(st.integers(1, 3))
    b = draw(st.integers(1, 2))
    return (name, b, q_len, rounds, ws, draw(st.integers(0, ws - 1)),
            draw(st.sampled_from(BLOCK_SIZES)), balancer, draw(st.integers(0, 2**31)))


@settings(max_examples=examples(120))
@given(cp_cases())
def test_rank_mask_matches_dense_in_load_balanced_order(case):
    """Random specs, shapes (Q_LEN not a multiple of ws·block too), rounds, ranks, blocks."""
    name, b, q_len, rounds, ws, rank, bs, balancer, seed = case
    params = {"width": 37} if name == "sliding_window" else {"size": 48} if "chunk" in name else {}
    mask = spec(name, **params)
    rng = random.Random(seed)
    inputs = random_inputs(mask, b, 1, q_len, rounds * q_len, rng)
    doc_lengths = None
    if balancer == "per_document":
        doc_lengths = [_doc_lengths(q_len, 2 * ws, rng) for _ in range(b)]
        inputs["doc"] = _ids(doc_lengths, rounds * q_len)
    _check_against_dense(mask, b, q_len, rounds, ws, rank, bs, balancer, inputs, doc_lengths)


@pytest.mark.parametrize("world_size", [2, 4, 8])
def test_eagle3_rounds_every_rank(eagle3, world_size):
    """EAGLE-3 with 3 rounds and padding: each rank holds its shard of every round."""
    q_len, seq_len = 96 * world_size, torch.tensor([90 * world_size + 5, 17])
    for rank in range(world_size):
        for bs in (128, 64):
            _check_against_dense(eagle3, 2, q_len, 3, world_size, rank, bs, "head_tail",
                                 {"seq_len": seq_len}, None)


def test_shape_torch_refuses(torch_cp, eagle3):
    """Q_LEN = 384 on 2 ranks: torch's builder refuses it, the layout is still well defined."""
    with pytest.raises(NotImplementedError):
        torch_cp._create_cp_block_mask(eagle3.mask_mod(Q_LEN=384, KV_LEN=384), 1, 1, 384, 384,
                                       _Mesh(0, 2))
    for rank in range(2):
        _check_against_dense(eagle3, 1, 384, 1, 2, rank, 128, "head_tail", {}, None)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_attention_over_gathered_rounds_equals_global(eagle3):
    """Attention of each rank's queries over keys gathered rank by rank, round by round,
    equals the global attention's rows for those queries (the layout, end to end)."""
    ws, q_len, rounds, d = 4, 128, 3, 16
    kv_len = rounds * q_len
    inputs = {"seq_len": torch.tensor([120])}
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, 1, q_len, d, generator=gen)
    k, v = (torch.randn(1, 1, kv_len, d, generator=gen) for _ in range(2))
    full = flex_attention(q, k, v, block_mask=eagle3.block_mask(1, 1, q_len, kv_len, **inputs))
    order = _order("head_tail", q_len, ws, None)[0]
    s = q_len // ws
    local_k = [torch.cat([k[..., t * q_len + order[r * s:(r + 1) * s], :] for t in range(rounds)],
                         dim=2) for r in range(ws)]  # what rank r holds: its shard of each round
    local_v = [torch.cat([v[..., t * q_len + order[r * s:(r + 1) * s], :] for t in range(rounds)],
                         dim=2) for r in range(ws)]
    gk, gv = torch.cat(local_k, dim=2), torch.cat(local_v, dim=2)  # the all-gather
    for r in range(ws):
        bm = eagle3.cp_block_mask(1, 1, q_len, kv_len, rank=r, world_size=ws, BLOCK_SIZE=32,
                                  **inputs)
        mine = order[r * s:(r + 1) * s]
        out = flex_attention(q[..., mine, :], gk, gv, block_mask=bm)
        torch.testing.assert_close(out, full[..., mine, :])


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"Q_LEN": 100, "KV_LEN": 100, "world_size": 4}, "2·world_size = 8"),
        ({"Q_LEN": 99, "KV_LEN": 99, "world_size": 4, "load_balancer": None}, "multiple of"),
        ({"Q_LEN": 128, "KV_LEN": 200, "world_size": 2}, "whole rounds"),
        ({"Q_LEN": 128, "KV_LEN": 128, "world_size": 2, "rank": 2}, "rank must be in"),
        ({"Q_LEN": 128, "KV_LEN": 128, "world_size": 2, "load_balancer": "per_document"},
         "document inputs"),
        ({"Q_LEN": 128, "KV_LEN": 128, "world_size": 2, "load_balancer": "zigzag"},
         "load_balancer must be"),
        ({"Q_LEN": 128, "KV_LEN": 128, "world_size": 0}, "rank must be in"),
        ({"Q_LEN": 8, "KV_LEN": 8, "world_size": 2,
          "load_balancer": torch.tensor([0, 1, 2, 3, 4, 5, 6, 6])}, "row 0 does not"),
        ({"Q_LEN": 8, "KV_LEN": 8, "world_size": 2,
          "load_balancer": torch.tensor([0, 1, 2, 3, 4, 5, 6, 8])}, "once per row"),
        ({"Q_LEN": 8, "KV_LEN": 8, "world_size": 2, "load_balancer": torch.arange(6)},
         r"shape \(Q_LEN,\)"),
        ({"Q_LEN": 8, "KV_LEN": 8, "world_size": 2,
          "load_balancer": torch.arange(8).repeat(3, 1)}, r"\(B, Q_LEN\) = \(1, 8\)"),
    ],
)
def test_errors(kwargs, message):
    args = {"rank": 0, "load_balancer": "head_tail", **kwargs}
    with pytest.raises(ValueError, match=message):
        spec("causal").cp_block_mask(1, 1, **args)


def test_per_document_needs_aligned_documents():
    ids = _ids([[42, 86]], 128)
    with pytest.raises(ValueError, match="document of 42 tokens"):
        spec("document_causal").cp_block_mask(1, 1, 128, 128, rank=0, world_size=2,
                                              load_balancer="per_document", doc=ids)


def test_mesh_or_rank():
    with pytest.raises(ValueError, match="not both"):
        spec("causal").cp_block_mask(1, 1, 128, 128, _Mesh(0, 2), rank=0)
    with pytest.raises(ValueError, match="or rank"):
        spec("causal").cp_block_mask(1, 1, 128, 128)
    a = spec("causal").cp_block_mask(1, 1, 256, 256, _Mesh(1, 2))
    b = spec("causal").cp_block_mask(1, 1, 256, 256, rank=1, world_size=2)
    assert first_difference(a, b) is None
