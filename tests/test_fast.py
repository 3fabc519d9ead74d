"""The compiled builder (traced on CPU): same masks as the eager path, one graph for all KV_LEN."""

import weakref

import pytest
import torch
from torch._dynamo.utils import counters

from maskspec.fast import Builder
from maskspec.verify import first_difference


def test_builder_matches_eager_path_without_recompiling(eagle3):
    fast, q = Builder(eagle3, 64, compiled=True, backend="eager"), 256
    before = counters["stats"]["unique_graphs"]
    for kv in (q, 2 * q, 3 * q + 17, 7 * q, q + 1):  # KV == Q first: one round, then more
        for lens in ([q, 0], [3, 200]):
            seq_len = torch.tensor(lens)
            ours = fast(2, 1, q, kv, seq_len=seq_len)
            ref = eagle3.block_mask(2, 1, q, kv, None, 64, seq_len=seq_len)
            assert first_difference(ours, ref) is None
    assert counters["stats"]["unique_graphs"] - before == 1


@pytest.mark.parametrize("compiled", [False, pytest.param(True, marks=pytest.mark.slow)],
                         ids=["eager", "compiled"])  # compiled: a 15 s torch.compile
def test_a_dropped_builder_is_freed_at_once(eagle3, compiled):
    """No reference cycle: dropping a Builder frees it (and its graphs) immediately, not in
    a later garbage collection, which could run in the middle of another graph capture."""
    builder = Builder(eagle3, compiled=compiled)
    builder(1, 1, 256, 512, "cpu")
    ref = weakref.ref(builder)
    del builder
    assert ref() is None
