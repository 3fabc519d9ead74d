"""Every shipped spec: exact blocks against create_block_mask over random shapes and inputs."""

import random

import pytest
import torch
from conftest import PARAMS, SPECS, examples, spec
from hypothesis import given, settings
from hypothesis import strategies as st

import maskspec
from maskspec.verify import random_inputs, validate

SHIPPED = sorted(p.stem for p in SPECS.glob("*.mask"))
LIBRARY = [
    "causal", "causal_bottom_right", "sliding_window", "prefix_lm", "document_causal",
    "document_bidirectional", "chunked_causal", "sliding_window_with_sinks", "per_head_window",
    "dflash", "eagle3_packed", "eagle3",
]
BLOCK_SIZES = [8, 16, 32, 64, (64, 32), (32, 64), (16, 8), 128]


def test_every_library_spec_ships():
    assert set(LIBRARY) <= set(SHIPPED)


CATALOGUE = sorted(set(SHIPPED) - set(LIBRARY))  # attention-gym's; also tests/test_catalogue.py
CASES = {
    "q": st.integers(1, 400),
    "kv_mode": st.sampled_from(["same", "multiple", "any"]),
    "kv_any": st.integers(1, 1200),
    "k": st.integers(1, 4),
    "b": st.integers(1, 3),
    "h": st.integers(1, 3),
    "bs": st.sampled_from(BLOCK_SIZES),
    "seed": st.integers(0, 2**31),
}


def _matches(name: str, q: int, kv_mode: str, kv_any: int, k: int, b: int, h: int, bs,
             seed: int) -> None:
    kv = {"same": q, "multiple": q * k, "any": kv_any}[kv_mode]
    mask = spec(name, **PARAMS.get(name, {}))
    inputs = random_inputs(mask, b, h, q, kv, random.Random(seed))
    rep = validate(mask, b, h, q, kv, bs, **inputs)
    assert rep.ok, (name, b, h, q, kv, bs, inputs, rep.problems)


@pytest.mark.parametrize("name", LIBRARY)
@settings(max_examples=examples(100))
@given(**CASES)
def test_spec_matches_create_block_mask(name, q, kv_mode, kv_any, k, b, h, bs, seed):
    _matches(name, q, kv_mode, kv_any, k, b, h, bs, seed)


@pytest.mark.parametrize("name", CATALOGUE)
@settings(max_examples=examples(50))
@given(**CASES)
def test_catalogue_spec_matches_create_block_mask(name, q, kv_mode, kv_any, k, b, h, bs, seed):
    _matches(name, q, kv_mode, kv_any, k, b, h, bs, seed)


def _block_is_full(d: torch.Tensor, qb: int, kb: int, bs: int) -> bool:
    return bool(d[..., qb * bs:(qb + 1) * bs, kb * bs:(kb + 1) * bs].all())


def test_two_partial_pieces_make_a_full_block():
    """Sink [0, 4) and window [q-124, q] each miss part of block (1, 0); together they cover."""
    mask = spec("sliding_window_with_sinks", width=124, sinks=4)
    d = mask.dense(1, 1, 256, 256)
    assert _block_is_full(d, 1, 0, 64)
    grid = mask.grid(1, 1, 256, 256, "cpu", 64)
    assert bool(grid.full[0, 0, 1, 0]) and not bool(grid.partial[0, 0, 1, 0])
    assert validate(mask, 1, 1, 256, 256, 64).ok


def test_prefix_boundary_inside_a_block():
    mask = spec("prefix_lm")
    d = mask.dense(1, 1, 256, 256, prefix_len=[100])
    grid = mask.grid(1, 1, 256, 256, "cpu", 64, prefix_len=[100])
    for qb in range(4):
        for kb in range(4):
            full = _block_is_full(d, qb, kb, 64)
            any_ = bool(d[0, 0, qb * 64:(qb + 1) * 64, kb * 64:(kb + 1) * 64].any())
            assert bool(grid.full[0, 0, qb, kb]) == full
            assert bool(grid.partial[0, 0, qb, kb]) == (any_ and not full)


def test_per_head_window_gives_one_layout_per_head():
    mask = spec("per_head_window")
    bm = mask.block_mask(1, 3, 512, 512, "cpu", 64, window_size=[0, 100, 511])
    assert bm.kv_num_blocks.shape[:2] == (1, 3)
    total = (bm.kv_num_blocks + bm.full_kv_num_blocks).sum(-1)[0]
    assert total[0] < total[1] < total[2]


def test_per_head_window_default_fits_short_sequences():
    """The default width is min(256, KV_LEN), inside the input's own range at any length."""
    mask = spec("per_head_window")
    d = mask.dense(1, 2, 100, 100)
    q, kv = torch.arange(100).view(-1, 1), torch.arange(100).view(1, -1)
    assert torch.equal(d[0, 1], (kv <= q))  # a window of 100 keys back is all of causal
    assert validate(mask, 1, 2, 100, 100, 32).ok


def test_keys_past_the_document_ids_are_in_no_document():
    mask = maskspec.compile("mask m\ninput doc: int[B, Q_LEN]\nregion r = full & document(doc)\n")
    doc = torch.tensor([[0, 0, 1, 1]])
    d = mask.dense(1, 1, 4, 8, doc=doc)[0, 0]
    assert not d[:, 4:].any()
    assert d[:, :4].tolist() == (doc[0].view(-1, 1) == doc[0].view(1, -1)).tolist()
    assert validate(mask, 1, 1, 4, 8, 2, doc=doc).ok


def test_condition_whose_kv_terms_cancel_is_a_row_condition():
    mask = maskspec.compile("mask m\nregion r = full where kv - kv < q\n")
    assert mask.dense(1, 1, 3, 3)[0, 0].tolist() == [[False] * 3, [True] * 3, [True] * 3]
    assert validate(mask, 1, 1, 70, 50, 16).ok


def test_document_ids_from_offsets_with_empty_and_single_documents():
    ids = maskspec.document_ids(torch.tensor([0, 3, 3, 4, 8]), 10)
    # docs: [0,3) [3,3) empty, [3,4) length one, [4,8), then trailing padding [8,10)
    assert ids.tolist() == [[0, 0, 0, 2, 3, 3, 3, 3, 4, 4]]
    mask = spec("document_causal")
    d = mask.dense(1, 1, 10, 10, doc=ids)
    assert d[0, 0, 3].tolist() == [False] * 3 + [True] + [False] * 6
    assert not d[0, 0, 9, :8].any() and d[0, 0, 9, 8:].all()


def test_unsorted_document_ids_are_refused():
    mask = spec("document_causal")
    with pytest.raises(ValueError, match=r"`doc`.*non-decreasing"):
        mask.block_mask(1, 1, 4, 4, "cpu", 16, doc=torch.tensor([[0, 1, 0, 1]]))


def test_dflash_dropped_blocks_see_nothing():
    mask = spec("dflash", block=4)
    keep = torch.tensor([[True, False, True]])
    anchor = torch.tensor([[5, 8, 2]])
    d = mask.dense(1, 1, 12, 22, anchor=anchor, keep=keep)
    assert not d[0, 0, 4:8].any()
    assert d[0, 0, 0, :5].all() and not d[0, 0, 0, 5:10].any()  # context up to the anchor
    assert d[0, 0, 0, 10:14].all() and not d[0, 0, 0, 14:].any()  # its own draft block


@pytest.mark.parametrize("name", SHIPPED)
def test_cli_validate_random_passes_on_every_spec(name, capsys):
    from maskspec.cli import main

    params = [f"--param={k}={v}" for k, v in PARAMS.get(name, {}).items()]
    rc = main(["validate", str(SPECS / f"{name}.mask"), "--q-len", "300", "--kv-len", "900",
               "--random", "4", "--seed", "0", *params])
    out = capsys.readouterr()
    assert rc == 0, out.out + out.err
    assert "4 agree, 0 disagree" in out.out + out.err


def test_narrow_integer_inputs_do_not_wrap():
    """A uint8 input is read as the integer it holds: 200 * 2 is 400, not 144."""
    mask = maskspec.compile("mask m\ninput x: int[B]\nregion r = full where kv < x[b] * 2\n")
    x = torch.tensor([200], dtype=torch.uint8)
    assert int(mask.dense(1, 1, 2, 400, x=x)[0, 0, 0].sum()) == 400
    assert int(mask.block_mask(1, 1, 2, 400, BLOCK_SIZE=16, x=x).kv_num_blocks.sum()) == 25
    assert validate(mask, 1, 1, 2, 400, (16, 16), x=x).ok
