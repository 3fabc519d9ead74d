"""``block_mask`` inside ``torch.compile(fullgraph=True)``: one custom op, no graph break, no
guard on values, one compiled entry over a TTT sequence, the same tensors as an eager build
— with the default value checks, and with ``check_inputs=False`` on hostile values."""

import random

import pytest
import torch
from conftest import spec
from torch._dynamo.testing import CompileCounterWithBackend
from torch._dynamo.utils import counters
from torch.nn.attention.flex_attention import flex_attention

from maskspec.verify import random_inputs

NAMES = ("eagle3", "document_causal", "dflash", "per_head_window", "causal")


def _compiled(fn):
    torch._dynamo.reset()
    counters.clear()
    count = CompileCounterWithBackend("aot_eager")
    return torch.compile(fn, backend=count, fullgraph=True, dynamic=True), count


def _tensors(bm) -> tuple[torch.Tensor, ...]:
    return bm.as_tuple()[2:10]


def _assert_same(got, want) -> None:
    for a, b in zip(_tensors(got), _tensors(want), strict=True):
        assert a.shape == b.shape and torch.equal(a, b)


@pytest.mark.parametrize("name", NAMES)
def test_compiled_builds_equal_eager_over_a_ttt_sequence(name):
    mask = spec(name)
    rounds = 3 if name == "eagle3" else 1

    def build(q: torch.Tensor, **inputs):
        return mask.block_mask(2, 2, q.shape[-2], rounds * q.shape[-2], "cpu", 64, **inputs)

    fn, count = _compiled(build)
    rng = random.Random(0)
    for q_len in (100, 128, 257, 300, 512):
        inputs = random_inputs(mask, 2, 2, q_len, rounds * q_len, rng)
        _assert_same(fn(torch.empty(1, 1, q_len, 1), **inputs),
                     build(torch.empty(1, 1, q_len, 1), **inputs))
    assert count.frame_count == 1  # one entry for every length and every input value
    assert not counters["graph_break"]


def test_value_checks_run_inside_the_compiled_build():
    mask = spec("eagle3")
    fn, _ = _compiled(lambda lens: mask.block_mask(2, 1, 256, 768, "cpu", seq_len=lens))
    fn(torch.tensor([256, 10]))
    with pytest.raises(ValueError, match=r"input `seq_len` must lie in \[0, 256\] but "
                                         r"seq_len\[1\] = 300"):
        fn(torch.tensor([5, 300]))
    docs = spec("document_causal")
    fn, _ = _compiled(lambda doc: docs.block_mask(1, 1, 64, 64, "cpu", 16, doc=doc))
    with pytest.raises(ValueError, match=r"`doc` holds document ids and must be non-decreasing"):
        fn(torch.tensor([[0] * 32 + [1] * 16 + [0] * 16]))


def test_unchecked_compiled_builds_agree_with_their_mask_mod_on_hostile_values():
    mask = spec("document_causal")
    q = 96
    fn, count = _compiled(lambda doc: mask.block_mask(1, 1, q, q, "cpu", 16, check_inputs=False,
                                                      doc=doc))
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        doc = torch.randint(-5, 5, (1, q), generator=gen)  # unsorted, negative
        got = fn(doc)
        want = mask.block_mask(1, 1, q, q, "cpu", 16, check_inputs=False, doc=doc)
        _assert_same(got, want)
        dense = torch.stack([torch.stack([got.mask_mod(torch.tensor(0), torch.tensor(0),
                                                       torch.tensor(i), torch.tensor(j))
                                          for j in range(q)]) for i in range(q)])
        assert torch.equal(dense, mask.dense(1, 1, q, q, doc=doc.clamp(0).cummax(-1).values)[0, 0])
    assert count.frame_count == 1


def test_flex_attention_with_a_compiled_build_equals_eager():
    mask = spec("eagle3")

    def step(q, k, v, lens):
        bm = mask.block_mask(2, 1, q.shape[-2], k.shape[-2], "cpu", 128, seq_len=lens)
        return flex_attention(q, k, v, block_mask=bm)

    fn, _ = _compiled(step)
    gen = torch.Generator().manual_seed(0)
    for q_len in (256, 384):
        q = torch.randn(2, 1, q_len, 16, generator=gen)
        k, v = (torch.randn(2, 1, 3 * q_len, 16, generator=gen) for _ in range(2))
        lens = torch.tensor([q_len, q_len // 3])
        torch.testing.assert_close(fn(q, k, v, lens), step(q, k, v, lens))
    assert not counters["graph_break"]
