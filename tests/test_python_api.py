"""Python ergonomics: BlockMasks pickle and deep-copy, a CompiledMask prints as one line and
recompiles with other params."""

import copy
import pickle
import random

import pytest
import torch
from conftest import spec
from torch.nn.attention.flex_attention import flex_attention

from maskspec.verify import first_difference, random_inputs


@pytest.mark.parametrize("name", ["eagle3", "document_causal", "per_head_window"])
def test_block_masks_pickle_and_deep_copy(name):
    mask = spec(name)
    inputs = random_inputs(mask, 2, 2, 200, 600, random.Random(0))
    bm = mask.block_mask(2, 2, 200, 600, "cpu", 64, **inputs)
    q = torch.randn(2, 2, 200, 16)
    k = torch.randn(2, 2, 600, 16)
    want = flex_attention(q, k, k, block_mask=bm)
    for twin in (pickle.loads(pickle.dumps(bm)), copy.deepcopy(bm)):
        assert first_difference(twin, bm) is None
        torch.testing.assert_close(flex_attention(q, k, k, block_mask=twin), want)


def test_repr_is_one_line():
    text = repr(spec("eagle3"))
    assert "\n" not in text and len(text) < 200
    assert text.startswith("CompiledMask(eagle3: context | drafts; inputs seq_len; params none")


def test_with_params_recompiles_and_checks_names():
    base = spec("sliding_window")
    narrow = base.with_params(width=5)
    assert narrow.ir.params["width"] == 5 and base.ir.params["width"] == 256
    dense = narrow.dense(1, 1, 40, 40)[0, 0]
    q, kv = torch.arange(40).view(-1, 1), torch.arange(40).view(1, -1)
    assert torch.equal(dense, (kv <= q) & (kv >= q - 5))
    with pytest.raises(ValueError, match="did you mean `width`"):
        base.with_params(wdth=3)
